//! Counts TCP bytes and packets with [`TcCounter`] on one interface until SIGTERM or SIGINT,
//! then prints the totals per direction and detaches (TCX links: nothing is left, even after
//! SIGKILL).
//! `bench/flows-tc.sh` runs it as the "TC only" mode.
//!
//! `sudo cargo run -p rampart-flows --example tc_only -- [INTERFACE]` (default `lo`)

use rampart_flows::{TcCounter, TcCounterOptions, TcDirection, TcStats};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let interface = std::env::args().nth(1).unwrap_or_else(|| "lo".to_owned());
    let counter = match TcCounter::attach(&interface, TcCounterOptions::default()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(1);
        }
    };
    println!(
        "attached {:?} to {interface} (ifindex {}, TCX); waiting for SIGTERM or SIGINT",
        counter.programs().collect::<Vec<_>>(),
        counter.ifindex(),
    );

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            _ = term.recv() => {}
            r = tokio::signal::ctrl_c() => r?,
        }
        Ok::<_, std::io::Error>(())
    })?;

    let snapshot = counter.snapshot()?;
    let (mut ingress, mut egress) = (TcStats::default(), TcStats::default());
    for (key, stats) in snapshot.iter() {
        match key.direction {
            TcDirection::Ingress => ingress += *stats,
            TcDirection::Egress => egress += *stats,
        }
    }
    println!("flows (5-tuple x hook): {}", snapshot.len());
    println!("ingress: {ingress:?}");
    println!("egress: {egress:?}");
    println!("{:?}", counter.counters()?);
    counter.detach();
    println!("detached");
    Ok(())
}

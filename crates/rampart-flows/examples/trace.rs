//! Prints TCP flow events for a few seconds, then the live flows and the counters.
//!
//! `sudo cargo run -p rampart-flows --example trace -- [SECONDS] [--mount-tracefs]`

use std::time::{Duration, Instant};

use rampart_flows::{FlowTracer, FlowTracerOptions};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let secs: u64 = args.iter().find_map(|a| a.parse().ok()).unwrap_or(5);
    let opts = FlowTracerOptions {
        mount_tracefs: args.iter().any(|a| a == "--mount-tracefs"),
        ..FlowTracerOptions::default()
    };
    let tracer = match FlowTracer::start(opts) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(1);
        }
    };
    let end = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < end {
        tracer.poll(Duration::from_millis(200), |ev| println!("{ev:?}"))?;
    }
    for f in tracer.snapshot()? {
        let (key, state, pid) = (f.flow.key, f.flow.state, f.flow.pid);
        println!(
            "live: {key} {state:?} pid {pid} age {:?} {:?}",
            f.age, f.stats
        );
    }
    println!("{:?}", tracer.counters()?);
    Ok(())
}

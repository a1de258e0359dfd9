//! `rampart-jepsen`: run the Jepsen-style test against a real `rampart` cluster in network
//! namespaces (root only), or check a recorded history.
//!
//! ```text
//! sudo rampart-jepsen run --duration 60s --nodes 3
//! rampart-jepsen check /tmp/rampart-jepsen-.../history.jsonl
//! ```
//!
//! Exits 0 when the history is proven linearizable (and, with the restart check, every
//! key survived a full-cluster crash), 1 on a violation or an unknown verdict, 2 when the
//! harness itself failed.
#![warn(clippy::unwrap_used)]

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};
use rampart_jepsen::harness::{self, Config, Fault, Schedule};

#[derive(Parser)]
#[command(about = "Jepsen-style tests for rampart-kv")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Start a cluster, run clients under a nemesis, check the history.
    Run(Box<RunArgs>),
    /// Check a history file recorded earlier.
    Check { history: PathBuf },
}

#[derive(Args)]
struct RunArgs {
    /// The store under test: rampart, or etcd (Debian's etcd-server, as a reference).
    #[arg(long, default_value = "rampart", value_parser = ["rampart", "etcd"])]
    server: String,
    /// The rampart binary [default: $RAMPART_BIN, else $CARGO_TARGET_DIR/debug/rampart,
    /// else target/debug/rampart].
    #[arg(long)]
    rampart_bin: Option<PathBuf>,
    /// Where the history, node data and logs go [default: a new directory under /tmp].
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Network namespace prefix; concurrent runs need different ones.
    #[arg(long, default_value = "rjepsen")]
    prefix: String,
    #[arg(long, default_value_t = 3)]
    nodes: usize,
    #[arg(long, default_value_t = 6)]
    clients: usize,
    #[arg(long, default_value_t = 3)]
    keys: usize,
    /// How long the clients run, e.g. 60s or 2m.
    #[arg(long, default_value = "60s", value_parser = duration)]
    duration: Duration,
    /// Faults to cycle through, comma-separated: kill, pause, partition-leader,
    /// partition-random, bridge.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "kill,pause,partition-leader,partition-random,bridge"
    )]
    nemesis: Vec<Fault>,
    /// How long each fault is held.
    #[arg(long, default_value = "4s", value_parser = duration)]
    fault_duration: Duration,
    /// Healthy time before the first fault and between faults.
    #[arg(long, default_value = "2s", value_parser = duration)]
    quiet: Duration,
    /// Per-request client timeout.
    #[arg(long, default_value = "1s", value_parser = duration)]
    request_timeout: Duration,
    /// Serializable (local, possibly stale) reads: the checker should catch them under
    /// partition, so expect a failure.
    #[arg(long)]
    serializable_minority: bool,
    /// Skip killing and restarting the whole cluster at the end.
    #[arg(long)]
    no_restart_check: bool,
    /// Rampart only: TLS on both ports (mutual between nodes) and auth on, clients logged in
    /// as root.
    #[arg(long)]
    secure: bool,
    /// Raft heartbeat interval of the nodes.
    #[arg(long, default_value = "100ms", value_parser = duration)]
    heartbeat_interval: Duration,
    /// Raft election timeout of the nodes (shorter than rampart's default, so that faults
    /// held for a few seconds force failovers).
    #[arg(long, default_value = "500ms", value_parser = duration)]
    election_timeout: Duration,
    /// Seed for every random choice [default: from the clock].
    #[arg(long)]
    seed: Option<u64>,
}

/// `500ms`, `4s`, `2m`.
fn duration(s: &str) -> Result<Duration, String> {
    let (num, unit) = s
        .find(|c: char| !c.is_ascii_digit())
        .map_or((s, "s"), |i| s.split_at(i));
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a duration like 500ms, 4s or 2m"))?;
    match unit {
        "ms" => Ok(Duration::from_millis(n)),
        "s" => Ok(Duration::from_secs(n)),
        "m" => Ok(Duration::from_secs(n * 60)),
        _ => Err(format!("{s:?}: unit must be ms, s or m")),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Cmd::Run(args) => run(*args),
        Cmd::Check { history } => check(&history),
    };
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("rampart-jepsen: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn check(history: &std::path::Path) -> Result<bool> {
    let report = rampart_jepsen::check_file(history)?;
    println!("{report}");
    Ok(report.is_ok())
}

fn run(args: RunArgs) -> Result<bool> {
    let seed = args.seed.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs())
    });
    let bin = harness::rampart_bin(
        args.rampart_bin
            .or_else(|| std::env::var_os("RAMPART_BIN").map(PathBuf::from)),
        std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from),
    );
    let dir = args.dir.unwrap_or_else(|| {
        std::env::temp_dir().join(format!("rampart-jepsen-{}-{seed}", args.prefix))
    });
    let mut cfg = Config::new(bin, dir);
    if args.server == "etcd" {
        cfg.server = harness::Server::Etcd;
    }
    cfg.prefix = args.prefix;
    cfg.nodes = args.nodes;
    cfg.clients = args.clients;
    cfg.keys = args.keys;
    cfg.duration = args.duration;
    cfg.schedule = Schedule {
        faults: args.nemesis,
        hold: args.fault_duration,
        quiet: args.quiet,
    };
    cfg.request_timeout = args.request_timeout;
    cfg.serializable_reads = args.serializable_minority;
    cfg.restart_check = !args.no_restart_check;
    cfg.secure = args.secure;
    cfg.heartbeat = args.heartbeat_interval;
    cfg.election_timeout = args.election_timeout;
    cfg.seed = seed;
    eprintln!("seed {seed}");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the runtime")?;
    let outcome = rt.block_on(harness::run(cfg))?;
    println!("{outcome}");
    if args.serializable_minority && outcome.has_violation() {
        println!(
            "(serializable reads were caught being stale: the checker works; this run is \
             expected to fail)"
        );
    }
    Ok(outcome.passed())
}

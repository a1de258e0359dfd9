//! The Jepsen-style test against a real `rampart` cluster (root only; CI runs as root).
//!
//! This test builds nothing: it runs the `rampart` binary from `$RAMPART_BIN`, else
//! `$CARGO_TARGET_DIR/debug/rampart`, else the workspace's `target/debug/rampart`, and fails
//! if it is missing (`cargo build -p rampart` first). The two runs share the machine's few
//! cores, so they take turns.

use std::io::Write as _;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;

use rampart_jepsen::harness::{self, Config, Fault, Outcome, Schedule};

/// One cluster at a time: two would compete for the cores and time out spuriously.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn missing_requirements() -> Option<String> {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let euid = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|ids| ids.split_whitespace().nth(1))
        .unwrap_or("unknown");
    (euid != "0").then(|| format!("effective uid is {euid}"))
}

macro_rules! require_root {
    ($name:literal) => {
        if let Some(why) = missing_requirements() {
            rampart_test_support::skip(
                $name,
                &format!("needs root for network namespaces and iptables ({why}); CI runs as root"),
            );
            return;
        }
    };
}

fn rampart_bin() -> PathBuf {
    let target_dir = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target"));
    let bin = harness::rampart_bin(
        std::env::var_os("RAMPART_BIN").map(PathBuf::from),
        Some(target_dir),
    );
    assert!(
        bin.is_file(),
        "the rampart binary {} does not exist: run `cargo build -p rampart` with the same \
         CARGO_TARGET_DIR first, or set RAMPART_BIN to its path",
        bin.display()
    );
    bin
}

fn config(name: &str) -> Config {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("jepsen-{name}"));
    // A previous run's data would be a different cluster's history.
    let _ = std::fs::remove_dir_all(&dir);
    let mut cfg = Config::new(rampart_bin(), dir);
    cfg.prefix = format!("rjt-{name}");
    cfg.seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    cfg
}

fn run(cfg: Config) -> Outcome {
    let _turn = ONE_AT_A_TIME
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    eprintln!("seed {}", cfg.seed);
    let outcome = rt.block_on(harness::run(cfg)).unwrap();
    // Printed in full whether or not the test passes, for the CI log.
    let _ = writeln!(std::io::stderr(), "{outcome}");
    outcome
}

#[test]
fn linearizable_under_kills_pauses_and_partitions() {
    require_root!("linearizable_under_kills_pauses_and_partitions");
    let mut cfg = config("faults");
    cfg.duration = Duration::from_secs(30);
    cfg.schedule = Schedule {
        faults: vec![
            Fault::Kill,
            Fault::PartitionLeader,
            Fault::Pause,
            Fault::PartitionRandom,
            Fault::Bridge,
        ],
        hold: Duration::from_secs(3),
        quiet: Duration::from_secs(2),
    };
    let outcome = run(cfg);
    assert!(outcome.passed(), "{outcome}");
    assert!(
        outcome.nemesis.faults >= 4,
        "too few faults to mean anything: {outcome}"
    );
    // Kill, pause and isolation of the leader (the first three are aimed at it at least
    // half the time; isolation always) should force at least one election.
    assert!(
        outcome.nemesis.failovers >= 1,
        "no fault forced a new leader; the faults are too short for the election timeout: \
         {outcome}"
    );
    assert!(
        outcome.ok > 100,
        "too few successful operations to mean anything: {outcome}"
    );
    // The watcher followed every revision once, in order, through the faults.
    assert!(outcome.watch_events.is_some(), "{outcome}");
}

#[test]
fn stale_serializable_reads_are_caught() {
    require_root!("stale_serializable_reads_are_caught");
    let mut cfg = config("serializable");
    cfg.duration = Duration::from_secs(12);
    cfg.serializable_reads = true;
    cfg.restart_check = false;
    cfg.schedule = Schedule {
        faults: vec![Fault::PartitionLeader],
        hold: Duration::from_secs(6),
        quiet: Duration::from_secs(2),
    };
    let outcome = run(cfg);
    // The isolated leader was really cut off: the majority elected another.
    assert_eq!(outcome.nemesis.failovers, 1, "{outcome}");
    assert!(
        outcome.has_violation(),
        "serializable reads from an isolated node should be stale: {outcome}"
    );
    assert!(!outcome.passed());
}

/// The leader is killed and restarted within an election timeout, so it resumes leadership
/// in the same term with a commit index that lags what it had acknowledged. Before the read
/// index waited for the leader's last log entry, reads here returned values older than
/// acknowledged writes (2 of 8 runs).
#[test]
fn leader_restarted_within_an_election_timeout_serves_no_stale_reads() {
    require_root!("leader_restarted_within_an_election_timeout_serves_no_stale_reads");
    let mut cfg = config("quick-kill");
    cfg.duration = Duration::from_secs(8);
    cfg.schedule = Schedule {
        faults: vec![Fault::Kill],
        hold: Duration::from_secs(1),
        quiet: Duration::from_secs(1),
    };
    let outcome = run(cfg);
    assert!(outcome.passed(), "{outcome}");
    assert!(outcome.nemesis.faults >= 2, "{outcome}");
}

#[test]
fn five_nodes_stay_linearizable_under_partitions_and_kills() {
    require_root!("five_nodes_stay_linearizable_under_partitions_and_kills");
    let mut cfg = config("five");
    cfg.nodes = 5;
    cfg.clients = 10;
    cfg.duration = Duration::from_secs(20);
    cfg.schedule = Schedule {
        faults: vec![Fault::PartitionRandom, Fault::Kill, Fault::Bridge],
        hold: Duration::from_secs(3),
        quiet: Duration::from_secs(2),
    };
    let outcome = run(cfg);
    assert!(outcome.passed(), "{outcome}");
    assert!(outcome.nemesis.faults >= 3, "{outcome}");
    assert!(outcome.watch_events.is_some(), "{outcome}");
}

/// The same faults with TLS on both ports (mutual between nodes), client certificates and
/// auth on: every client logs in as root, followers forward writes with the token and the
/// leader checks it again, tokens survive kills and the full restart.
#[test]
fn secure_cluster_stays_linearizable_under_kills_and_partitions() {
    require_root!("secure_cluster_stays_linearizable_under_kills_and_partitions");
    let mut cfg = config("secure");
    cfg.secure = true;
    cfg.duration = Duration::from_secs(20);
    cfg.schedule = Schedule {
        faults: vec![Fault::Kill, Fault::PartitionLeader, Fault::PartitionRandom],
        hold: Duration::from_secs(3),
        quiet: Duration::from_secs(2),
    };
    let outcome = run(cfg);
    assert!(outcome.passed(), "{outcome}");
    assert!(outcome.nemesis.faults >= 3, "{outcome}");
    assert!(
        outcome.ok > 100,
        "too few successful operations to mean anything: {outcome}"
    );
    assert!(outcome.watch_events.is_some(), "{outcome}");
}

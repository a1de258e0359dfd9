//! The Jepsen-style harness: a real `rampart` cluster in network namespaces, concurrent
//! clients recording a history, a nemesis injecting faults, and a verdict from the checker.
//!
//! One [`run`]:
//! 1. builds a [`Net`](crate::netns::Net) with a control link (so the clients, which run in
//!    this process in the root namespace, reach every node) and starts one
//!    `rampart kv serve` per node namespace, listening on the node's address;
//! 2. runs [`Config::clients`] workers, each bound to one node, doing random reads, writes
//!    of unique increasing integers and compare-and-sets on [`Config::keys`] keys, while the
//!    nemesis works through its [`Schedule`];
//! 3. heals everything, waits for the cluster to settle, and reads every key
//!    (linearizably; recorded like any other operation);
//! 4. optionally kills every node, restarts them all, and checks that each key still holds
//!    the value read in step 3: acknowledged writes survive a full-cluster crash;
//! 5. checks the history for linearizability.
//!
//! Outcomes are recorded the way Jepsen does: `fail` only when an operation certainly had no
//! effect (no leader, connection refused, a cas whose comparison failed, any failed read),
//! `info` when the client cannot know (timeouts above all). A process that saw `info` takes
//! a new process number.
//!
//! Needs root (namespaces, iptables), like [`crate::netns`]. Every wait is bounded.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use rampart_kv::client::Client;

use crate::checker::{self, Report, Verdict};
use crate::history::{EventType, HistoryWriter, Value};

mod cluster;
mod nemesis;
mod watcher;
mod workload;

pub use cluster::{CLIENT_PORT, PEER_PORT};
pub use nemesis::{Fault, NemesisLog, Schedule};

/// The store under test. etcd (Debian's `etcd-server`) runs the same workload and faults, as
/// a reference: the harness and checker must pass it too.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Server {
    Rampart,
    Etcd,
}

/// A run's parameters. [`Config::new`] gives the defaults used by the binary.
#[derive(Debug, Clone)]
pub struct Config {
    /// Which store the nodes run.
    pub server: Server,
    /// The `rampart` binary to run on every node.
    pub rampart_bin: PathBuf,
    /// Where the history, the nemesis log, node data and node logs go (kept afterwards).
    pub dir: PathBuf,
    /// Namespace prefix (see [`crate::netns`]); concurrent runs need different ones.
    pub prefix: String,
    /// Cluster size: 3 or 5 (at least 3, so that a majority survives one fault).
    pub nodes: usize,
    pub clients: usize,
    pub keys: usize,
    /// How long the clients run (the nemesis stops with them).
    pub duration: Duration,
    pub schedule: Schedule,
    /// Per-request timeout of the clients.
    pub request_timeout: Duration,
    /// Reads with `serializable: true`: expected to be caught as stale under partition.
    pub serializable_reads: bool,
    /// Kill and restart the whole cluster at the end, and compare every key before/after.
    pub restart_check: bool,
    /// Rampart only: mutual TLS between the nodes, TLS with client certificates on the
    /// client port, and auth enabled (every client logs in as `root`), so the run also
    /// covers the token checks on forwarded writes and the TLS transport under faults.
    pub secure: bool,
    pub heartbeat: Duration,
    pub election_timeout: Duration,
    /// The longest wait for the cluster to come up or to settle after the faults.
    pub settle_timeout: Duration,
    pub seed: u64,
}

impl Config {
    pub fn new(rampart_bin: PathBuf, dir: PathBuf) -> Self {
        Self {
            server: Server::Rampart,
            rampart_bin,
            dir,
            prefix: "rjepsen".to_owned(),
            nodes: 3,
            clients: 6,
            keys: 3,
            duration: Duration::from_secs(60),
            schedule: Schedule {
                faults: Fault::ALL.to_vec(),
                hold: Duration::from_secs(4),
                quiet: Duration::from_secs(2),
            },
            request_timeout: Duration::from_secs(1),
            serializable_reads: false,
            restart_check: true,
            secure: false,
            // Shorter than rampart's defaults (100ms/1s): a follower only stands for
            // election once the leader's lease (the election timeout's maximum) and its own
            // timeout have both passed, so with 1s a fault held for 4s rarely forces a
            // failover, and a failover is where consensus bugs live.
            heartbeat: Duration::from_millis(100),
            election_timeout: Duration::from_millis(500),
            settle_timeout: Duration::from_secs(30),
            seed: 0,
        }
    }

    fn validate(&self) -> Result<()> {
        if self.secure && self.server != Server::Rampart {
            bail!("secure: only the Rampart server is set up with TLS and auth here");
        }
        if !(3..=9).contains(&self.nodes) {
            bail!("nodes: {} is not in 3..=9 (use 3 or 5)", self.nodes);
        }
        if self.clients == 0 || self.keys == 0 {
            bail!("clients and keys must be at least 1");
        }
        if self.request_timeout.is_zero() || self.duration.is_zero() {
            bail!("request timeout and duration must be positive");
        }
        Ok(())
    }
}

/// The default path of the `rampart` binary: `rampart_bin` if given (the `RAMPART_BIN`
/// environment variable, say), else `<target_dir>/debug/rampart`, else
/// `target/debug/rampart`. The caller reads the environment; this only decides.
pub fn rampart_bin(rampart_bin: Option<PathBuf>, target_dir: Option<PathBuf>) -> PathBuf {
    rampart_bin.unwrap_or_else(|| {
        target_dir
            .unwrap_or_else(|| PathBuf::from("target"))
            .join("debug")
            .join("rampart")
    })
}

/// Everything a run found out.
#[derive(Debug)]
pub struct Outcome {
    pub history: PathBuf,
    pub dir: PathBuf,
    /// Client operations invoked during the faults, by outcome.
    pub ok: usize,
    pub fail: usize,
    pub info: usize,
    /// `(count, "outcome: error")`, most frequent first.
    pub errors: Vec<(usize, String)>,
    pub nemesis: NemesisLog,
    /// The linearizability verdict on the whole history (final reads included).
    pub report: Report,
    /// Each key's value as read after healing (`None`: absent). Missing keys could not be
    /// read within the settle timeout, which is listed in `problems`.
    pub final_values: BTreeMap<String, Option<i64>>,
    /// The same after the full restart, if [`Config::restart_check`] was set.
    pub after_restart: Option<BTreeMap<String, Option<i64>>>,
    /// Events the run's watcher saw, and events in the store's history read afterwards
    /// (checked to agree; `None` when the check could not run).
    pub watch_events: Option<(usize, usize)>,
    /// Anything besides the checker's verdict that makes the run a failure.
    pub problems: Vec<String>,
}

impl Outcome {
    /// True only if the history is proven linearizable and nothing else went wrong.
    pub fn passed(&self) -> bool {
        self.report.is_ok() && self.problems.is_empty()
    }

    /// True if the checker found a violation (not merely ran out of budget).
    pub fn has_violation(&self) -> bool {
        self.report
            .keys
            .iter()
            .any(|k| matches!(k.verdict, Verdict::Violation(_)))
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "operations: {} ({} ok, {} fail, {} info); faults: {} ({} forced a new leader)",
            self.ok + self.fail + self.info,
            self.ok,
            self.fail,
            self.info,
            self.nemesis.faults,
            self.nemesis.failovers,
        )?;
        for (n, e) in self.errors.iter().take(8) {
            writeln!(f, "  {n:6} x {e}")?;
        }
        writeln!(f, "nemesis:")?;
        for e in &self.nemesis.entries {
            writeln!(f, "  {e}")?;
        }
        writeln!(f, "final values: {:?}", self.final_values)?;
        if let Some(after) = &self.after_restart {
            writeln!(f, "after a full restart: {after:?}")?;
        }
        if let Some((seen, full)) = self.watch_events {
            writeln!(
                f,
                "watch: {seen} events seen by the watcher, each once and in order, of {full} in the store's history"
            )?;
        }
        for p in &self.problems {
            writeln!(f, "PROBLEM: {p}")?;
        }
        write!(f, "{}", self.report)?;
        writeln!(f, "history: {}", self.history.display())?;
        writeln!(f, "node logs and data: {}", self.dir.display())?;
        write!(
            f,
            "verdict: {}",
            if self.passed() { "PASS" } else { "FAIL" }
        )
    }
}

/// Runs one test. Errors are harness failures (the cluster never came up, a command to
/// set up the network failed); a misbehaving store is reported in the [`Outcome`].
pub async fn run(cfg: Config) -> Result<Outcome> {
    cfg.validate()?;
    let history_path = cfg.dir.join("history.jsonl");
    // Old node data would start the registers from old values, which the checker (whose
    // registers start absent) would rightly call a violation.
    if history_path.exists() || cfg.dir.join("n1").exists() {
        bail!(
            "{} already holds a run (history or node data): pick a new directory or delete it",
            cfg.dir.display()
        );
    }
    std::fs::create_dir_all(&cfg.dir).with_context(|| format!("creating {}", cfg.dir.display()))?;
    let settings = cluster::NodeSettings {
        server: cfg.server,
        bin: cfg.rampart_bin.clone(),
        dir: cfg.dir.clone(),
        heartbeat: cfg.heartbeat,
        election_timeout: cfg.election_timeout,
        server_request_timeout: cfg.request_timeout * 2,
        secure: cfg.secure,
    };
    let mut cluster = cluster::Cluster::start(&cfg.prefix, cfg.nodes, settings)?;
    cluster.wait_ready(cfg.settle_timeout).await?;
    if cfg.secure {
        cluster.enable_auth().await?;
    }
    let security = cluster.security();
    eprintln!(
        "cluster of {} up (data and logs in {}); running {} clients for {:?}",
        cfg.nodes,
        cluster.dir().display(),
        cfg.clients,
        cfg.duration
    );

    let history = HistoryWriter::create(&history_path)?;
    let shared = Arc::new(workload::Shared::new(history, cfg.keys, security.clone()));
    let client_settings = workload::ClientSettings {
        timeout: cfg.request_timeout,
        serializable_reads: cfg.serializable_reads,
    };
    let mut rng = fastrand::Rng::with_seed(cfg.seed);
    let stop_at = Instant::now() + cfg.duration;
    let mut workers = tokio::task::JoinSet::new();
    for w in 0..cfg.clients {
        let endpoint = cluster.client_url(w % cfg.nodes + 1);
        workers.spawn(workload::worker(
            shared.clone(),
            endpoint,
            client_settings,
            rng.u64(..),
            stop_at,
        ));
    }
    // Keys are "k0", "k1", ...: one watcher on the prefix follows all of them.
    let endpoints: Vec<String> = (1..=cfg.nodes).map(|i| cluster.client_url(i)).collect();
    let watch = tokio::spawn(watcher::follow(
        endpoints.clone(),
        "k",
        tokio::time::Instant::from_std(stop_at),
        None,
        cfg.request_timeout,
        security.clone(),
    ));
    let mut nemesis_log = NemesisLog::default();
    let nemesis_result = nemesis::run(
        &mut cluster,
        &cfg.schedule,
        &mut rng,
        &shared.history,
        stop_at,
        &mut nemesis_log,
    )
    .await;
    // Every operation is bounded, so the workers finish soon after `stop_at`.
    let mut worker_errors = Vec::new();
    while let Some(r) = workers.join_next().await {
        match r {
            Ok(Ok(())) => {}
            Ok(Err(e)) => worker_errors.push(format!("{e:#}")),
            Err(e) => worker_errors.push(format!("worker panicked: {e}")),
        }
    }
    nemesis_result.context("the nemesis failed")?;
    let (ok, fail, info) = (
        shared.tally.ok.load(Ordering::Relaxed),
        shared.tally.fail.load(Ordering::Relaxed),
        shared.tally.info.load(Ordering::Relaxed),
    );
    let errors = shared.tally.errors();
    let mut problems: Vec<String> = worker_errors
        .into_iter()
        .map(|e| format!("a client failed: {e}"))
        .collect();

    let mut watch_events = None;
    // Settle, then read every key through a healthy cluster.
    let final_values = match cluster.wait_ready(cfg.settle_timeout).await {
        Ok(()) => read_all(&cluster, &shared, client_settings, cfg.settle_timeout).await,
        Err(e) => {
            problems.push(format!("after healing: {e:#}"));
            BTreeMap::new()
        }
    };
    if final_values.len() < cfg.keys {
        problems.push(format!(
            "only {} of {} keys could be read after healing",
            final_values.len(),
            cfg.keys
        ));
    }

    // Every committed revision reached the watcher once and in order, across the faults.
    match watch.await {
        Ok(Ok(seen)) if problems.is_empty() => {
            match watcher::full_history(&endpoints, "k", cfg.settle_timeout, &security).await {
                Ok(full) => {
                    shared.history.flush()?;
                    let ops = crate::history::read_history(&history_path)?;
                    problems.extend(
                        watcher::compare(&seen, &full, &ops)
                            .into_iter()
                            .map(|p| format!("watch: {p}")),
                    );
                    watch_events = Some((seen.len(), full.len()));
                }
                Err(e) => problems.push(format!("watch: {e}")),
            }
        }
        Ok(Ok(_)) => {}
        Ok(Err(e)) => problems.push(format!("watch: {e}")),
        Err(e) => problems.push(format!("the watcher panicked: {e}")),
    }

    let mut after_restart = None;
    if cfg.restart_check && problems.is_empty() {
        eprintln!("killing and restarting every node");
        cluster.kill_all()?;
        cluster.revive_all()?;
        let after = match cluster.wait_ready(cfg.settle_timeout).await {
            Ok(()) => read_all(&cluster, &shared, client_settings, cfg.settle_timeout).await,
            Err(e) => {
                problems.push(format!("after a full restart: {e:#}"));
                BTreeMap::new()
            }
        };
        for (key, before) in &final_values {
            match after.get(key) {
                Some(v) if v == before => {}
                Some(v) => problems.push(format!(
                    "key {key} read {before:?} before the full restart and {v:?} after, \
                     with no writes in between: an acknowledged write was lost, or a \
                     linearizable read after the restart was stale"
                )),
                None => problems.push(format!("key {key} could not be read after the restart")),
            }
        }
        after_restart = Some(after);
    }
    shared.history.flush()?;
    drop(cluster);

    let path = history_path.clone();
    let report = tokio::task::spawn_blocking(move || checker::check_file(path))
        .await
        .context("the checker panicked")??;
    Ok(Outcome {
        history: history_path,
        dir: cfg.dir,
        ok,
        fail,
        info,
        errors,
        nemesis: nemesis_log,
        report,
        final_values,
        after_restart,
        watch_events,
        problems,
    })
}

/// Reads every key linearizably, recording each attempt, retrying until each read succeeds
/// or `within` passes. Returns the keys that were read.
async fn read_all(
    cluster: &cluster::Cluster,
    shared: &workload::Shared,
    mut settings: workload::ClientSettings,
    within: Duration,
) -> BTreeMap<String, Option<i64>> {
    settings.serializable_reads = false;
    let deadline = Instant::now() + within;
    let endpoints: Vec<String> = (1..=cluster.len()).map(|i| cluster.client_url(i)).collect();
    let mut values = BTreeMap::new();
    let Ok(mut client) =
        Client::with_security(&endpoints, settings.timeout, shared.security.clone())
    else {
        return values;
    };
    for (k, key) in shared.keys.iter().enumerate() {
        while Instant::now() < deadline {
            let process = shared.new_process();
            match workload::read(shared, &mut client, process, k, settings).await {
                Ok((EventType::Ok, v)) => {
                    let v = match v {
                        Value::Int(v) => Some(v),
                        Value::Null | Value::Pair(..) => None,
                    };
                    values.insert(key.clone(), v);
                    break;
                }
                Ok(_) => tokio::time::sleep(Duration::from_millis(200)).await,
                Err(e) => {
                    tracing::warn!(error = %e, "final read failed");
                    break;
                }
            }
        }
    }
    values
}

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
use tokio::task::{JoinHandle, JoinSet};

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
    let mut run = Run::start(cfg).await?;
    let mut rng = fastrand::Rng::with_seed(run.cfg.seed);
    let stop_at = Instant::now() + run.cfg.duration;
    let workers = run.spawn_workers(&mut rng, stop_at);
    let watch = run.spawn_watcher(stop_at);
    let nemesis_result = nemesis::run(
        &mut run.cluster,
        &run.cfg.schedule,
        &mut rng,
        &run.shared.history,
        stop_at,
    )
    .await;
    let worker_errors = join_workers(workers).await;
    let nemesis_log = nemesis_result.context("the nemesis failed")?;
    let tally = &run.shared.tally;
    let (ok, fail, info) = (
        tally.ok.load(Ordering::Relaxed),
        tally.fail.load(Ordering::Relaxed),
        tally.info.load(Ordering::Relaxed),
    );
    let errors = tally.errors();
    let mut problems: Vec<String> = worker_errors
        .into_iter()
        .map(|e| format!("a client failed: {e}"))
        .collect();

    // Settle, then read every key through a healthy cluster.
    let final_values = run
        .settle_and_read_all("after healing", &mut problems)
        .await;
    if final_values.len() < run.cfg.keys {
        problems.push(format!(
            "only {} of {} keys could be read after healing",
            final_values.len(),
            run.cfg.keys
        ));
    }
    let watch_events = run.check_watch(watch, &mut problems).await?;
    let mut after_restart = None;
    if run.cfg.restart_check && problems.is_empty() {
        after_restart = Some(run.restart_check(&final_values, &mut problems).await?);
    }
    run.shared.history.flush()?;
    let Run {
        cfg,
        cluster,
        history_path,
        ..
    } = run;
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

/// A run under way: its settings, the cluster, and what the clients share.
struct Run {
    cfg: Config,
    cluster: cluster::Cluster,
    shared: Arc<workload::Shared>,
    client_settings: workload::ClientSettings,
    /// Every node's client URL.
    endpoints: Vec<String>,
    history_path: PathBuf,
}

impl Run {
    /// Starts the cluster in the fresh directory `cfg.dir` (with auth when secure) and
    /// creates the history there.
    async fn start(cfg: Config) -> Result<Self> {
        let history_path = cfg.dir.join("history.jsonl");
        // Old node data would start the registers from old values, which the checker (whose
        // registers start absent) would rightly call a violation.
        if history_path.exists() || cfg.dir.join("n1").exists() {
            bail!(
                "{} already holds a run (history or node data): pick a new directory or delete it",
                cfg.dir.display()
            );
        }
        std::fs::create_dir_all(&cfg.dir)
            .with_context(|| format!("creating {}", cfg.dir.display()))?;
        let settings = cluster::NodeSettings {
            server: cfg.server,
            bin: cfg.rampart_bin.clone(),
            dir: cfg.dir.clone(),
            heartbeat: cfg.heartbeat,
            election_timeout: cfg.election_timeout,
            server_request_timeout: cfg.request_timeout * 2,
            secure: cfg.secure,
        };
        let cluster = cluster::Cluster::start(&cfg.prefix, cfg.nodes, settings)?;
        cluster.wait_ready(cfg.settle_timeout).await?;
        if cfg.secure {
            cluster.enable_auth().await?;
        }
        eprintln!(
            "cluster of {} up (data and logs in {}); running {} clients for {:?}",
            cfg.nodes,
            cluster.dir().display(),
            cfg.clients,
            cfg.duration
        );
        let history = HistoryWriter::create(&history_path)?;
        let shared = Arc::new(workload::Shared::new(history, cfg.keys, cluster.security()));
        let client_settings = workload::ClientSettings {
            timeout: cfg.request_timeout,
            serializable_reads: cfg.serializable_reads,
        };
        let endpoints = (1..=cfg.nodes).map(|i| cluster.client_url(i)).collect();
        Ok(Self {
            cfg,
            cluster,
            shared,
            client_settings,
            endpoints,
            history_path,
        })
    }

    /// The clients, each bound to one node, working until `stop_at`.
    fn spawn_workers(&self, rng: &mut fastrand::Rng, stop_at: Instant) -> JoinSet<Result<()>> {
        let mut workers = JoinSet::new();
        for w in 0..self.cfg.clients {
            let endpoint = self.cluster.client_url(w % self.cfg.nodes + 1);
            workers.spawn(workload::worker(
                self.shared.clone(),
                endpoint,
                self.client_settings,
                rng.u64(..),
                stop_at,
            ));
        }
        workers
    }

    /// The watcher, following every key until `stop_at`.
    fn spawn_watcher(&self, stop_at: Instant) -> JoinHandle<Result<Vec<watcher::Seen>, String>> {
        let nodes = watcher::Nodes {
            endpoints: self.endpoints.clone(),
            timeout: self.cfg.request_timeout,
            security: self.shared.security.clone(),
        };
        // Keys are "k0", "k1", ...: one watcher on the prefix follows all of them.
        tokio::spawn(watcher::follow(
            nodes,
            "k",
            tokio::time::Instant::from_std(stop_at),
            None,
        ))
    }

    /// Waits for the cluster to settle, then reads every key; a cluster that does not
    /// settle is a problem `when` (e.g. "after healing") and yields no values.
    async fn settle_and_read_all(
        &self,
        when: &str,
        problems: &mut Vec<String>,
    ) -> BTreeMap<String, Option<i64>> {
        match self.cluster.wait_ready(self.cfg.settle_timeout).await {
            Ok(()) => {
                read_all(
                    &self.cluster,
                    &self.shared,
                    self.client_settings,
                    self.cfg.settle_timeout,
                )
                .await
            }
            Err(e) => {
                problems.push(format!("{when}: {e:#}"));
                BTreeMap::new()
            }
        }
    }

    /// Every committed revision reached the watcher once and in order, across the faults.
    /// Returns the events the watcher saw and those in the store's history, when compared.
    async fn check_watch(
        &self,
        watch: JoinHandle<Result<Vec<watcher::Seen>, String>>,
        problems: &mut Vec<String>,
    ) -> Result<Option<(usize, usize)>> {
        match watch.await {
            Ok(Ok(seen)) if problems.is_empty() => {
                let security = &self.shared.security;
                let within = self.cfg.settle_timeout;
                match watcher::full_history(&self.endpoints, "k", within, security).await {
                    Ok(full) => {
                        self.shared.history.flush()?;
                        let ops = crate::history::read_history(&self.history_path)?;
                        problems.extend(
                            watcher::compare(&seen, &full, &ops)
                                .into_iter()
                                .map(|p| format!("watch: {p}")),
                        );
                        return Ok(Some((seen.len(), full.len())));
                    }
                    Err(e) => problems.push(format!("watch: {e}")),
                }
            }
            Ok(Ok(_)) => {}
            Ok(Err(e)) => problems.push(format!("watch: {e}")),
            Err(e) => problems.push(format!("the watcher panicked: {e}")),
        }
        Ok(None)
    }

    /// Kills and restarts every node, then checks that each key still reads as in
    /// `final_values`. Returns what it read after the restart.
    async fn restart_check(
        &mut self,
        final_values: &BTreeMap<String, Option<i64>>,
        problems: &mut Vec<String>,
    ) -> Result<BTreeMap<String, Option<i64>>> {
        eprintln!("killing and restarting every node");
        self.cluster.kill_all()?;
        self.cluster.revive_all()?;
        let after = self
            .settle_and_read_all("after a full restart", problems)
            .await;
        for (key, before) in final_values {
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
        Ok(after)
    }
}

/// Waits for every worker (each operation is bounded, so they finish soon after their
/// stop); returns their failures.
async fn join_workers(mut workers: JoinSet<Result<()>>) -> Vec<String> {
    let mut errors = Vec::new();
    while let Some(r) = workers.join_next().await {
        match r {
            Ok(Ok(())) => {}
            Ok(Err(e)) => errors.push(format!("{e:#}")),
            Err(e) => errors.push(format!("worker panicked: {e}")),
        }
    }
    errors
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
    let Ok(client) = Client::with_security(&endpoints, settings.timeout, shared.security.clone())
    else {
        return values;
    };
    let mut session = workload::Session {
        shared,
        client,
        settings,
    };
    for (k, key) in shared.keys.iter().enumerate() {
        while Instant::now() < deadline {
            let process = shared.new_process();
            match session.read(process, k).await {
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

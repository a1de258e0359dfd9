//! The nemesis: faults on a schedule. Each fault is applied, held, then undone, with a
//! quiet spell before the next, until the run's deadline.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use super::cluster::Cluster;
use crate::history::HistoryWriter;
use crate::netns::Net;

/// One kind of fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// `kill -9` a node (the leader half the time), restart it when the fault ends.
    Kill,
    /// SIGSTOP a node (the leader half the time), SIGCONT it when the fault ends.
    Pause,
    /// Cut the leader off from every other node.
    PartitionLeader,
    /// A random majority/minority split.
    PartitionRandom,
    /// Two halves that only one node (the bridge) can reach both of.
    Bridge,
}

impl Fault {
    pub const ALL: [Fault; 5] = [
        Fault::Kill,
        Fault::Pause,
        Fault::PartitionLeader,
        Fault::PartitionRandom,
        Fault::Bridge,
    ];

    fn name(self) -> &'static str {
        match self {
            Fault::Kill => "kill",
            Fault::Pause => "pause",
            Fault::PartitionLeader => "partition-leader",
            Fault::PartitionRandom => "partition-random",
            Fault::Bridge => "bridge",
        }
    }
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Fault {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Fault::ALL
            .into_iter()
            .find(|f| f.name() == s)
            .ok_or_else(|| {
                let names: Vec<_> = Fault::ALL.iter().map(|f| f.name()).collect();
                format!("unknown fault {s:?}; expected one of {}", names.join(", "))
            })
    }
}

/// The schedule: faults in order, cycled.
#[derive(Debug, Clone)]
pub struct Schedule {
    pub faults: Vec<Fault>,
    /// How long each fault is held.
    pub hold: Duration,
    /// Healthy time before the first fault and between faults.
    pub quiet: Duration,
}

/// What the nemesis did, with times on the history's clock (seconds since its start).
#[derive(Debug, Default, Clone)]
pub struct NemesisLog {
    pub entries: Vec<String>,
    /// Faults applied (each counted once, when it starts).
    pub faults: usize,
    /// Faults during which the cluster moved to a new term (a new leader was elected): the
    /// faults that forced a failover rather than merely slowing the cluster down.
    pub failovers: usize,
}

impl NemesisLog {
    fn note(&mut self, history: &HistoryWriter, what: &str) {
        #[allow(clippy::cast_precision_loss)] // seconds for people to read
        let secs = history.elapsed_ns() as f64 / 1e9;
        let line = format!("{secs:8.3}s {what}");
        tracing::info!("{line}");
        eprintln!("nemesis {line}");
        self.entries.push(line);
    }
}

/// What to undo when a fault ends.
enum Undo {
    Restart(usize),
    Resume(usize),
    Heal,
}

/// Runs the schedule until `stop_at`, returning what it did; always leaves the cluster
/// healed, every node running and unpaused, even when applying a fault fails.
pub(crate) async fn run(
    cluster: &mut Cluster,
    schedule: &Schedule,
    rng: &mut fastrand::Rng,
    history: &HistoryWriter,
    stop_at: Instant,
) -> Result<NemesisLog> {
    let result = run_inner(cluster, schedule, rng, history, stop_at).await;
    let healed = heal(cluster.net()).await;
    let revived = cluster.revive_all();
    // The first failure is the one reported: the run's own, then healing, then reviving.
    let log = result?;
    healed?;
    revived?;
    Ok(log)
}

async fn run_inner(
    cluster: &mut Cluster,
    schedule: &Schedule,
    rng: &mut fastrand::Rng,
    history: &HistoryWriter,
    stop_at: Instant,
) -> Result<NemesisLog> {
    let mut log = NemesisLog::default();
    if schedule.faults.is_empty() {
        sleep_until(stop_at).await;
        return Ok(log);
    }
    sleep_until((Instant::now() + schedule.quiet).min(stop_at)).await;
    for &fault in schedule.faults.iter().cycle() {
        // A fault that could not be held for its full time would end with the workers
        // already stopped; stop instead.
        if Instant::now() + schedule.hold > stop_at {
            break;
        }
        let before = cluster.leader().await;
        let (what, undo) = apply(cluster, fault, rng, before.map(|(l, _)| l)).await?;
        log.faults += 1;
        log.note(
            history,
            &format!("start {fault}: {what} (leader: {})", describe(before)),
        );
        sleep_until(Instant::now() + schedule.hold).await;
        let during = cluster.leader().await;
        let new_term = match (before, during) {
            (Some((_, t0)), Some((_, t1))) => t1 > t0,
            (None, Some(_)) => true,
            _ => false,
        };
        if new_term {
            log.failovers += 1;
        }
        log.note(
            history,
            &format!(
                "{fault} held: leader {}{}",
                describe(during),
                if new_term { ", a new term" } else { "" }
            ),
        );
        let what = revert(cluster, undo).await?;
        log.note(history, &format!("end {fault}: {what}"));
        sleep_until((Instant::now() + schedule.quiet).min(stop_at)).await;
        if Instant::now() >= stop_at {
            break;
        }
    }
    Ok(log)
}

/// Ends a fault; says what it did.
async fn revert(cluster: &mut Cluster, undo: Undo) -> Result<String> {
    Ok(match undo {
        Undo::Restart(i) => {
            cluster.spawn(i)?;
            format!("restarted node {i}")
        }
        Undo::Resume(i) => {
            cluster.pause(i, false)?;
            format!("resumed node {i}")
        }
        Undo::Heal => {
            heal(cluster.net()).await?;
            "healed the network".to_owned()
        }
    })
}

fn describe(leader: Option<(usize, u64)>) -> String {
    leader.map_or_else(
        || "unknown".to_owned(),
        |(l, term)| format!("node {l}, term {term}"),
    )
}

async fn apply(
    cluster: &mut Cluster,
    fault: Fault,
    rng: &mut fastrand::Rng,
    leader: Option<usize>,
) -> Result<(String, Undo)> {
    let n = cluster.len();
    // Half the time the leader (when one is known), otherwise any node.
    let mut target = || match leader {
        Some(l) if rng.bool() => l,
        _ => rng.usize(1..=n),
    };
    Ok(match fault {
        Fault::Kill => {
            let i = target();
            cluster.kill(i)?;
            (format!("killed node {i}"), Undo::Restart(i))
        }
        Fault::Pause => {
            let i = target();
            cluster.pause(i, true)?;
            (format!("paused node {i}"), Undo::Resume(i))
        }
        Fault::PartitionLeader => {
            let i = leader.unwrap_or_else(|| rng.usize(1..=n));
            let net = cluster.net();
            blocking(move || net.isolate(i).map_err(Into::into)).await?;
            (format!("isolated node {i}"), Undo::Heal)
        }
        Fault::PartitionRandom => {
            let mut nodes: Vec<usize> = (1..=n).collect();
            rng.shuffle(&mut nodes);
            let minority = nodes.split_off(n / 2 + 1);
            let what = format!("split {nodes:?} | {minority:?}");
            let net = cluster.net();
            blocking(move || net.partition(&[nodes, minority]).map_err(Into::into)).await?;
            (what, Undo::Heal)
        }
        Fault::Bridge => {
            let mut nodes: Vec<usize> = (1..=n).collect();
            rng.shuffle(&mut nodes);
            let right = nodes.split_off(n.div_ceil(2));
            let bridge = nodes.pop().context("a bridge needs at least 3 nodes")?;
            let left = nodes;
            let what = format!("bridge {left:?} <- {bridge} -> {right:?}");
            let net = cluster.net();
            blocking(move || {
                net.bridge_partition(&left, bridge, &right)
                    .map_err(Into::into)
            })
            .await?;
            (what, Undo::Heal)
        }
    })
}

pub(crate) async fn heal(net: Arc<Net>) -> Result<()> {
    blocking(move || net.heal().map_err(Into::into)).await
}

/// Runs a short blocking call (an `ip`/`iptables` command) off the async workers.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .context("a blocking nemesis task panicked")?
}

async fn sleep_until(t: Instant) {
    tokio::time::sleep_until(t.into()).await;
}

//! Linearizable reads: a read waits until this node has applied everything the leader had
//! committed when it confirmed its leadership (the read index). Concurrent readers share
//! one round of confirmation, led by one of them, as etcd batches its read-index requests.

use std::time::Duration;

use openraft::error::RaftError;
use tokio::sync::oneshot;
use tokio::time::Instant;

use super::KvNode;
use crate::error::KvError;
use crate::proto::peer::Empty;

/// Read-index rounds: whether one is running, and who waits for the next.
#[derive(Default)]
pub(super) struct ReadRounds {
    running: bool,
    waiting: Vec<oneshot::Sender<Turn>>,
}

enum Turn {
    Done(Result<u64, KvError>),
    /// Lead the next round (for yourself and everyone queued by then).
    Lead,
}

/// The round a caller leads. Dropped unfinished (the caller was cancelled), it puts its
/// batch back in the queue and hands the lead on, so no reader is stranded.
struct Round<'a> {
    node: &'a KvNode,
    batch: Vec<oneshot::Sender<Turn>>,
    finished: bool,
}

impl Round<'_> {
    fn finish(&mut self, result: &Result<u64, KvError>) {
        for tx in self.batch.drain(..) {
            let _ = tx.send(Turn::Done(result.clone()));
        }
        self.finished = true;
        self.hand_off();
    }

    fn hand_off(&mut self) {
        let mut b = self
            .node
            .reads
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        b.waiting.append(&mut self.batch);
        while let Some(tx) = b.waiting.pop() {
            if tx.send(Turn::Lead).is_ok() {
                return;
            }
        }
        b.running = false;
    }
}

impl Drop for Round<'_> {
    fn drop(&mut self) {
        if !self.finished {
            self.hand_off();
        }
    }
}

impl KvNode {
    /// Make the next local read linearizable: wait until this node has applied everything
    /// the leader had committed when it last confirmed its leadership.
    pub async fn linearize(&self) -> Result<(), KvError> {
        let deadline = self.deadline();
        let index = self.read_index().await?;
        self.wait_applied(index, deadline).await
    }

    /// A read index for this node's reads, shared: concurrent callers join one round (a
    /// quorum heartbeat on the leader, or one `ReadIndex` call to it), as etcd batches its
    /// read-index requests. Correct because every member of a round arrived before the round
    /// started, so the leadership it confirms is at least as recent as each of their
    /// requests. The caller that starts a round leads it; when it finishes, one of those who
    /// queued meanwhile leads the next (also if the leader's request is cancelled).
    pub async fn read_index(&self) -> Result<u64, KvError> {
        let queued = {
            let mut b = self
                .reads
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if b.running {
                let (tx, rx) = oneshot::channel();
                b.waiting.push(tx);
                Some(rx)
            } else {
                b.running = true;
                None
            }
        };
        if let Some(rx) = queued {
            match rx.await {
                Ok(Turn::Done(r)) => return r,
                Ok(Turn::Lead) => {}
                Err(_) => return Err(KvError::Internal("read-index round abandoned".into())),
            }
        }
        let mut round = Round {
            node: self,
            batch: std::mem::take(
                &mut self
                    .reads
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .waiting,
            ),
            finished: false,
        };
        let result = self.fetch_read_index().await;
        round.finish(&result);
        result
    }

    async fn fetch_read_index(&self) -> Result<u64, KvError> {
        let deadline = self.deadline();
        loop {
            let leader = self.wait_leader(deadline).await?;
            let index = if leader == self.id {
                self.read_index_local(deadline).await
            } else {
                self.forward_read_index(leader, deadline).await
            };
            match index {
                Err(KvError::NoLeader) if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                other => return other,
            }
        }
    }

    /// The leader's read index: the index a linearizable read must wait for.
    ///
    /// openraft's barrier is max(commit index, first entry of this term). That is too low
    /// when a node restarts and resumes leadership in the same term: its stored commit index
    /// may lag writes it had already acknowledged (storing it is not fsynced). The leader's
    /// last log index at this moment bounds every acknowledged write (a leader holds every
    /// committed entry), so the read waits for that, after leadership is confirmed. Found by
    /// the Jepsen harness (leader killed and restarted within an election timeout).
    pub async fn read_index_local(&self, deadline: Instant) -> Result<u64, KvError> {
        let last = self.raft.metrics().borrow().last_log_index.unwrap_or(0);
        match tokio::time::timeout_at(deadline, self.raft.get_read_log_id()).await {
            Err(_) => Err(KvError::Timeout),
            Ok(Ok((read, _applied))) => Ok(read.map_or(0, |l| l.index).max(last)),
            Ok(Err(RaftError::APIError(_))) => Err(KvError::NoLeader),
            Ok(Err(e)) => Err(KvError::Internal(e.to_string())),
        }
    }

    async fn forward_read_index(&self, leader: u64, deadline: Instant) -> Result<u64, KvError> {
        let mut client = self.peer(leader)?;
        let mut req = tonic::Request::new(Empty {});
        req.set_timeout(deadline.saturating_duration_since(Instant::now()));
        match tokio::time::timeout_at(deadline, client.read_index(req)).await {
            Err(_) => Err(KvError::Timeout),
            Ok(Err(status)) if status.message() == KvError::NoLeader.to_string() => {
                Err(KvError::NoLeader)
            }
            Ok(Err(_)) => Err(KvError::Timeout),
            Ok(Ok(r)) => Ok(r.into_inner().index),
        }
    }

    async fn wait_applied(&self, index: u64, deadline: Instant) -> Result<(), KvError> {
        if index == 0 {
            return Ok(());
        }
        let left = deadline.saturating_duration_since(Instant::now());
        self.raft
            .wait(Some(left))
            .applied_index_at_least(Some(index), "linearizable read")
            .await
            .map(|_| ())
            .map_err(|_| KvError::Timeout)
    }
}

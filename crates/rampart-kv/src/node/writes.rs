//! The write path: a write is proposed on the leader, batched with the writes queued beside
//! it (one log entry and one fsync for many), or forwarded to the leader with the client's
//! token so that the leader checks it again.

use std::sync::Arc;
use std::time::Duration;

use openraft::error::{ClientWriteError, RaftError};
use tokio::sync::{Semaphore, mpsc, oneshot};
use tokio::time::Instant;

use super::KvNode;
use crate::access::{self, Forwarded};
use crate::error::KvError;
use crate::network::{from_blob, to_blob};
use crate::state;
use crate::types::{Command, Raft, Reply};

impl KvNode {
    /// Propose one of the node's own writes (no client token) and wait for its result.
    pub async fn write(&self, cmd: Command) -> Result<Reply, KvError> {
        self.write_as(cmd, None).await
    }

    /// Propose a client's write and wait for its result (forwarded when this node does not
    /// lead, with the client's `token` so that the leader checks it again).
    pub async fn write_as(&self, cmd: Command, token: Option<&str>) -> Result<Reply, KvError> {
        state::validate(&cmd)?;
        let deadline = self.deadline();
        loop {
            let leader = self.wait_leader(deadline).await?;
            let attempt = if leader == self.id {
                self.write_local(cmd.clone(), deadline).await
            } else {
                self.forward_write(leader, &cmd, token, deadline).await
            };
            match attempt {
                // Not proposed anywhere (leadership moved first): safe to try again.
                Err(KvError::NoLeader) if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                other => return other,
            }
        }
    }

    /// The leader's half of a write. `NoLeader` means it was certainly not proposed.
    ///
    /// Writes are proposed in batches: openraft appends (and fsyncs) each proposal on its
    /// own, so one proposal per write caps throughput at one write per fsync. Concurrent
    /// writes queue here and go out together as one entry, with a few batches in flight.
    pub async fn write_local(&self, cmd: Command, deadline: Instant) -> Result<Reply, KvError> {
        let (tx, rx) = oneshot::channel();
        self.proposals
            .send((cmd, tx))
            .map_err(|_| KvError::Internal("the proposer has stopped".into()))?;
        match tokio::time::timeout_at(deadline, rx).await {
            Err(_) => Err(KvError::Timeout),
            Ok(Err(_)) => Err(KvError::Timeout),
            Ok(Ok(r)) => r,
        }
    }

    async fn forward_write(
        &self,
        leader: u64,
        cmd: &Command,
        token: Option<&str>,
        deadline: Instant,
    ) -> Result<Reply, KvError> {
        let mut client = self.peer(leader)?;
        let fwd = Forwarded {
            token: token.map(str::to_string),
            cmd: cmd.clone(),
        };
        let blob = to_blob(&fwd).map_err(KvError::Internal)?;
        let mut req = tonic::Request::new(blob);
        req.set_timeout(deadline.saturating_duration_since(Instant::now()));
        match tokio::time::timeout_at(deadline, client.propose(req)).await {
            Err(_) => Err(KvError::Timeout),
            Ok(Err(status))
                if status.code() == tonic::Code::Unavailable
                    && status.message() == KvError::NoLeader.to_string() =>
            {
                Err(KvError::NoLeader)
            }
            // Refused by the leader's auth check: certainly not applied.
            Ok(Err(status))
                if matches!(
                    status.code(),
                    tonic::Code::PermissionDenied | tonic::Code::Unauthenticated
                ) || status.message() == KvError::UserEmpty.to_string() =>
            {
                Err(auth_error(status.message()))
            }
            // The leader may or may not have applied it.
            Ok(Err(_)) => Err(KvError::Timeout),
            Ok(Ok(resp)) => {
                let result: Result<Reply, KvError> =
                    from_blob(resp.get_ref()).map_err(KvError::Internal)?;
                result
            }
        }
    }

    /// The leader's half of a forwarded write: check the client's token against this
    /// node's auth state, then propose.
    pub async fn propose_forwarded(
        &self,
        fwd: Forwarded,
        deadline: Instant,
    ) -> Result<Reply, KvError> {
        let auth = self.shared.auth();
        access::authorize_forwarded(&auth, &fwd, &|id| self.lease_keys(id))?;
        state::validate(&fwd.cmd)?;
        self.write_local(fwd.cmd, deadline).await
    }
}

pub(super) type Proposal = (Command, oneshot::Sender<Result<Reply, KvError>>);

/// Most writes in one proposal, and most proposals in flight at once.
const MAX_BATCH: usize = 256;
const MAX_IN_FLIGHT: usize = 4;

/// Propose queued writes in batches. While `MAX_IN_FLIGHT` proposals are being committed,
/// new writes queue up, so the batch size follows the load.
pub(super) async fn propose_loop(raft: Raft, mut rx: mpsc::UnboundedReceiver<Proposal>) {
    let permits = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    while let Some(first) = rx.recv().await {
        let Ok(permit) = permits.clone().acquire_owned().await else {
            return;
        };
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(p) => batch.push(p),
                Err(_) => break,
            }
        }
        let raft = raft.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let (cmds, waiters): (Vec<Command>, Vec<_>) = batch.into_iter().unzip();
            let single = cmds.len() == 1;
            let cmd = if single {
                cmds.into_iter()
                    .next()
                    .unwrap_or(Command::Batch(Vec::new()))
            } else {
                Command::Batch(cmds)
            };
            let replies: Vec<Result<Reply, KvError>> = match raft.client_write(cmd).await {
                Ok(resp) => match resp.data {
                    Reply::Batch(rs) if !single => rs.into_iter().map(reply_result).collect(),
                    other => vec![reply_result(other)],
                },
                Err(e) => {
                    let e = match e {
                        RaftError::APIError(ClientWriteError::ForwardToLeader(_)) => {
                            KvError::NoLeader
                        }
                        RaftError::Fatal(e) => KvError::Storage(format!(
                            "{e}; this member has stopped and must be restarted"
                        )),
                        other => KvError::Internal(other.to_string()),
                    };
                    vec![Err(e); waiters.len()]
                }
            };
            for (tx, r) in waiters.into_iter().zip(replies) {
                let _ = tx.send(r);
            }
        });
    }
}

/// An auth refusal relayed by the leader, back as the error it was.
fn auth_error(message: &str) -> KvError {
    [
        KvError::UserEmpty,
        KvError::InvalidAuthToken,
        KvError::PermissionDenied,
    ]
    .into_iter()
    .find(|e| e.to_string() == message)
    .unwrap_or(KvError::PermissionDenied)
}

fn reply_result(r: Reply) -> Result<Reply, KvError> {
    match r {
        Reply::Error(e) => Err(e),
        other => Ok(other),
    }
}

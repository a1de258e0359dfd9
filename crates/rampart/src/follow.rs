//! Following a prefix of the config store: read it whole, then wait for the next change
//! under it, again and again; a lost store or watch is retried. The functions and policy
//! followers of a gateway, and the control plane, are each one [`Sync`] on top of this.

use std::time::Duration;

use anyhow::Result;
use rampart_kv::client::{Client, prefix_end};
use rampart_kv::proto::etcdserverpb as pb;
use tokio_util::sync::CancellationToken;

/// Every key under `prefix`.
pub(crate) fn range_prefix(prefix: &str) -> pb::RangeRequest {
    pb::RangeRequest {
        key: prefix.into(),
        range_end: prefix_end(prefix.as_bytes()),
        ..Default::default()
    }
}

/// One pass over what is followed.
pub(crate) trait Sync {
    /// Makes what runs equal to the store; returns the store revision read at.
    fn sync(&mut self, c: &mut Client) -> impl Future<Output = Result<i64>> + Send;
}

/// Runs `s` on every change under `prefix` of the store at `endpoints` until `stop`.
/// `what` names the follower in logs.
pub(crate) async fn follow(
    what: &'static str,
    prefix: &'static str,
    endpoints: Vec<String>,
    stop: CancellationToken,
    mut s: impl Sync,
) {
    let mut c = match Client::new(&endpoints, Duration::from_secs(10)) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "{what}: no store to follow");
            return;
        }
    };
    loop {
        let revision = tokio::select! {
            () = stop.cancelled() => return,
            r = s.sync(&mut c) => r,
        };
        let revision = match revision {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(error = %format!("{e:#}"), "{what}: cannot read the store; retrying");
                tokio::select! {
                    () = stop.cancelled() => return,
                    () = tokio::time::sleep(Duration::from_secs(1)) => continue,
                }
            }
        };
        tokio::select! {
            () = stop.cancelled() => return,
            () = changed(&mut c, prefix, revision) => {}
        }
        // Let a burst of writes settle.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Returns after the next change under `prefix` after `revision` (or when the watch breaks;
/// after a second when it cannot start).
pub(crate) async fn changed(c: &mut Client, prefix: &str, revision: i64) {
    let create = pb::WatchCreateRequest {
        key: prefix.into(),
        range_end: prefix_end(prefix.as_bytes()),
        start_revision: revision + 1,
        ..Default::default()
    };
    let Ok((_tx, mut events)) = c.watch(create).await else {
        tokio::time::sleep(Duration::from_secs(1)).await;
        return;
    };
    // The first response only confirms the watch.
    loop {
        match events.message().await {
            Ok(Some(w)) if !w.events.is_empty() => return,
            Ok(Some(_)) => {}
            _ => return,
        }
    }
}

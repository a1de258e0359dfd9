//! etcd watch streams: many watchers on one gRPC stream, each delivering every revision
//! from its start revision on, in order, exactly once.
//!
//! The stream subscribes to the state machine's broadcast of applied revisions *before* it
//! reads history, and each watcher remembers the next revision it owes. A live batch is
//! delivered when it is exactly that revision; anything else (a watcher starting in the
//! past, a slow stream that lagged the broadcast, a snapshot install) is filled from the
//! history table, which holds every revision since the last compaction. A watcher whose
//! next revision has been compacted away is cancelled with etcd's compacted error.
//!
//! The `Hub` is what streams are served from: the node builds it when it starts (and makes
//! its own response headers with it), the Watch service hands each new stream to it. It
//! knows the applied state, this member's identity and Raft term, and the shutdown signal,
//! and nothing of the node or the gRPC services.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{broadcast, mpsc};
use tokio_util::sync::CancellationToken;
use tonic::{Status, Streaming};

use crate::KvError;
use crate::access::{self, Caller};
use crate::auth::PermKind;
use crate::proto::etcdserverpb::{self as pb, watch_create_request::FilterType, watch_request};
use crate::proto::mvccpb::{Event, event::EventType};
use crate::state::{KeyRange, RevBatch, Shared};
use crate::types::Raft;

/// Revisions read from history per step while catching up.
const CATCH_UP_BATCH: usize = 256;

struct Watcher {
    key: Vec<u8>,
    end: Vec<u8>,
    next_rev: i64,
    prev_kv: bool,
    no_put: bool,
    no_delete: bool,
    progress_notify: bool,
}

impl Watcher {
    fn filter(&self, events: &[Event]) -> Vec<Event> {
        let range = KeyRange {
            key: &self.key,
            end: &self.end,
        };
        events
            .iter()
            .filter(|e| {
                let put = e.r#type == EventType::Put as i32;
                let wanted = if put { !self.no_put } else { !self.no_delete };
                wanted && e.kv.as_ref().is_some_and(|kv| range.contains(&kv.key))
            })
            .map(|e| {
                let mut e = e.clone();
                if !self.prev_kv {
                    e.prev_kv = None;
                }
                e
            })
            .collect()
    }
}

/// What every watch stream of one member shares.
pub(crate) struct Hub {
    shared: Arc<Shared>,
    raft: Raft,
    member_id: u64,
    shutdown: CancellationToken,
    progress_interval: Duration,
}

impl Hub {
    /// A hub for member `member_id`: streams end when `shutdown` is cancelled and send
    /// progress notifications every `progress_interval`.
    pub(crate) fn new(
        shared: Arc<Shared>,
        raft: Raft,
        member_id: u64,
        shutdown: CancellationToken,
        progress_interval: Duration,
    ) -> Self {
        Hub {
            shared,
            raft,
            member_id,
            shutdown,
            progress_interval,
        }
    }

    /// A response header for this member at `revision`.
    pub(crate) fn header(&self, revision: i64) -> pb::ResponseHeader {
        pb::ResponseHeader {
            cluster_id: self
                .shared
                .cluster_id
                .load(std::sync::atomic::Ordering::Acquire),
            member_id: self.member_id,
            revision,
            raft_term: self.raft.metrics().borrow().current_term,
        }
    }
}

type Out = mpsc::Sender<Result<pb::WatchResponse, Status>>;

struct Stream {
    hub: Arc<Hub>,
    /// The stream's user (auth): each watch is checked for READ when it is created.
    caller: Caller,
    out: Out,
    watchers: BTreeMap<i64, Watcher>,
    next_id: i64,
}

/// Serve one Watch stream until the client goes away or the node shuts down.
pub(crate) async fn serve(
    hub: Arc<Hub>,
    caller: Caller,
    mut inbound: Streaming<pb::WatchRequest>,
    out: Out,
) {
    let mut events = hub.shared.events.subscribe();
    let shutdown = hub.shutdown.clone();
    let mut progress = tokio::time::interval(hub.progress_interval);
    progress.reset();
    let mut s = Stream {
        hub,
        caller,
        out,
        watchers: BTreeMap::new(),
        next_id: 0,
    };
    loop {
        let ok = tokio::select! {
            () = shutdown.cancelled() => false,
            msg = inbound.message() => match msg {
                Ok(Some(req)) => s.request(req).await,
                Ok(None) | Err(_) => false,
            },
            batch = events.recv() => match batch {
                Ok(b) => s.live(&b).await,
                Err(broadcast::error::RecvError::Lagged(_)) => s.catch_up_all().await,
                Err(broadcast::error::RecvError::Closed) => false,
            },
            _ = progress.tick() => s.progress_notify().await,
        };
        if !ok {
            return;
        }
    }
}

impl Stream {
    async fn send(&self, resp: pb::WatchResponse) -> bool {
        self.out.send(Ok(resp)).await.is_ok()
    }

    fn header(&self, revision: i64) -> Option<pb::ResponseHeader> {
        Some(self.hub.header(revision))
    }

    async fn request(&mut self, req: pb::WatchRequest) -> bool {
        match req.request_union {
            Some(watch_request::RequestUnion::CreateRequest(c)) => self.create(c).await,
            Some(watch_request::RequestUnion::CancelRequest(c))
                if self.watchers.remove(&c.watch_id).is_some() =>
            {
                let current = self.hub.shared.current_revision();
                self.send(pb::WatchResponse {
                    header: self.header(current),
                    watch_id: c.watch_id,
                    canceled: true,
                    ..Default::default()
                })
                .await
            }
            Some(watch_request::RequestUnion::CancelRequest(_)) => true,
            Some(watch_request::RequestUnion::ProgressRequest(_)) => {
                // Answer only when every watcher is caught up, so the revision is a promise.
                let current = self.hub.shared.current_revision();
                if self.watchers.values().all(|w| w.next_rev > current) {
                    self.send(pb::WatchResponse {
                        header: self.header(current),
                        watch_id: -1,
                        ..Default::default()
                    })
                    .await
                } else {
                    true
                }
            }
            None => true,
        }
    }

    async fn create(&mut self, c: pb::WatchCreateRequest) -> bool {
        let current = self.hub.shared.current_revision();
        let id = if c.watch_id != 0 {
            c.watch_id
        } else {
            while self.watchers.contains_key(&self.next_id) {
                self.next_id += 1;
            }
            self.next_id
        };
        let denied = access::check_keys(
            &self.hub.shared.auth(),
            &self.caller,
            PermKind::Read,
            &c.key,
            &c.range_end,
        )
        .err();
        if self.watchers.contains_key(&id) || c.key.is_empty() || denied.is_some() {
            let reason = if c.key.is_empty() {
                KvError::EmptyKey.to_string()
            } else if let Some(e) = denied {
                e.to_string()
            } else {
                "etcdserver: watch id already exists".to_string()
            };
            return self
                .send(pb::WatchResponse {
                    header: self.header(current),
                    watch_id: id,
                    created: true,
                    canceled: true,
                    cancel_reason: reason,
                    ..Default::default()
                })
                .await;
        }
        let w = Watcher {
            next_rev: if c.start_revision > 0 {
                c.start_revision
            } else {
                current + 1
            },
            prev_kv: c.prev_kv,
            no_put: c.filters.contains(&(FilterType::Noput as i32)),
            no_delete: c.filters.contains(&(FilterType::Nodelete as i32)),
            progress_notify: c.progress_notify,
            key: c.key,
            end: c.range_end,
        };
        self.watchers.insert(id, w);
        if !self
            .send(pb::WatchResponse {
                header: self.header(current),
                watch_id: id,
                created: true,
                ..Default::default()
            })
            .await
        {
            return false;
        }
        self.catch_up(id).await
    }

    /// Deliver history from the watcher's next revision up to the newest applied one.
    async fn catch_up(&mut self, id: i64) -> bool {
        loop {
            let Some(w) = self.watchers.get(&id) else {
                return true;
            };
            let from = w.next_rev;
            match self.hub.shared.history(from, CATCH_UP_BATCH) {
                Ok(revs) => {
                    let done = revs.len() < CATCH_UP_BATCH;
                    for (rev, events) in revs {
                        if !self.deliver(id, rev, &events).await {
                            return false;
                        }
                    }
                    if done {
                        return true;
                    }
                }
                Err(e) => {
                    if !matches!(e, KvError::Compacted { .. }) {
                        tracing::warn!(error = %e, "watch history read failed");
                    }
                    self.watchers.remove(&id);
                    let current = self.hub.shared.current_revision();
                    let compact_revision = match e {
                        KvError::Compacted { compact_revision } => compact_revision,
                        _ => 0,
                    };
                    return self
                        .send(pb::WatchResponse {
                            header: self.header(current),
                            watch_id: id,
                            canceled: true,
                            compact_revision,
                            cancel_reason: e.to_string(),
                            ..Default::default()
                        })
                        .await;
                }
            }
        }
    }

    async fn catch_up_all(&mut self) -> bool {
        let ids: Vec<i64> = self.watchers.keys().copied().collect();
        for id in ids {
            if !self.catch_up(id).await {
                return false;
            }
        }
        true
    }

    async fn deliver(&mut self, id: i64, rev: i64, events: &[Event]) -> bool {
        let Some(w) = self.watchers.get_mut(&id) else {
            return true;
        };
        if rev < w.next_rev {
            return true;
        }
        w.next_rev = rev + 1;
        let events = w.filter(events);
        if events.is_empty() {
            return true;
        }
        self.send(pb::WatchResponse {
            header: self.header(rev),
            watch_id: id,
            events,
            ..Default::default()
        })
        .await
    }

    async fn live(&mut self, batch: &RevBatch) -> bool {
        if batch.resync {
            return self.catch_up_all().await;
        }
        let ids: Vec<i64> = self.watchers.keys().copied().collect();
        for id in ids {
            let Some(next) = self.watchers.get(&id).map(|w| w.next_rev) else {
                continue;
            };
            let ok = if batch.revision == next {
                self.deliver(id, batch.revision, &batch.events).await
            } else if batch.revision > next {
                self.catch_up(id).await
            } else {
                true
            };
            if !ok {
                return false;
            }
        }
        true
    }

    async fn progress_notify(&mut self) -> bool {
        let current = self.hub.shared.current_revision();
        let due: Vec<i64> = self
            .watchers
            .iter()
            .filter(|(_, w)| w.progress_notify && w.next_rev > current)
            .map(|(id, _)| *id)
            .collect();
        for id in due {
            if !self
                .send(pb::WatchResponse {
                    header: self.header(current),
                    watch_id: id,
                    ..Default::default()
                })
                .await
            {
                return false;
            }
        }
        true
    }
}

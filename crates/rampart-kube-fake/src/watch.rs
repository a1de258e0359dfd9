//! Watches: newline-delimited JSON events, streamed as a chunked body.
//!
//! Modelled after the API server:
//! - without a `resourceVersion` (or with "0") a watch starts with an ADDED event for each
//!   current object, then streams changes; with one, it replays every change after it, or sends
//!   an ERROR event with a 410 `Expired` Status (and ends) when it is older than the last
//!   [`compact`](crate::FakeApi::compact);
//! - `sendInitialEvents=true` sends the current objects as ADDED, then a BOOKMARK annotated
//!   `k8s.io/initial-events-end: "true"` (kube-runtime's streaming-list mode);
//! - with a selector, an object that stops matching is sent as DELETED and one that starts
//!   matching as ADDED, as the watch cache does;
//! - with `allowWatchBookmarks=true`, a BOOKMARK every few seconds and one when the watch ends;
//! - the stream ends after `timeoutSeconds` (300 s by default), when the client goes away, or
//!   when the [`FakeApi`](crate::FakeApi) is dropped.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio::time::{Instant, interval_at, sleep_until};

use crate::Shared;
use crate::error::ApiError;
use crate::meta::meta_str;
use crate::path::Res;
use crate::select::Selector;
use crate::store::{Change, EventType, Store};
use crate::view::View;

/// How often a watch that allows bookmarks gets one.
const BOOKMARK_EVERY: Duration = Duration::from_secs(5);

/// What a watch request asked for.
#[derive(Debug, Clone)]
pub(crate) struct WatchSpec {
    pub(crate) res: Res,
    pub(crate) ns: Option<String>,
    pub(crate) selector: Selector,
    /// The resource version to replay from; `None` for absent or "0".
    pub(crate) from: Option<u64>,
    pub(crate) send_initial_events: bool,
    pub(crate) bookmarks: bool,
    pub(crate) timeout: Duration,
    pub(crate) view: View,
}

/// The cursor (the store's resource version when last read) and the lines to send, or the
/// line of an ERROR event that ends the stream.
type Step = Result<(u64, Vec<Bytes>), Bytes>;

/// Starts a watch; its lines come out of the receiver, which the response body drains.
pub(crate) fn start(shared: Arc<Shared>, spec: WatchSpec) -> mpsc::Receiver<Bytes> {
    let (tx, rx) = mpsc::channel(256);
    tokio::spawn(run(shared, spec, tx));
    rx
}

async fn run(shared: Arc<Shared>, spec: WatchSpec, tx: mpsc::Sender<Bytes>) {
    let mut changed = shared.changed.subscribe();
    let mut shutdown = shared.shutdown.subscribe();
    let deadline = Instant::now() + spec.timeout;
    let mut ticker = interval_at(Instant::now() + BOOKMARK_EVERY, BOOKMARK_EVERY);
    changed.borrow_and_update();
    let mut step = shared.read(|store| initial(store, &spec));
    loop {
        let (cursor, lines) = match step {
            Ok(step) => step,
            Err(error) => {
                let _ = tx.send(error).await;
                return;
            }
        };
        for line in lines {
            if tx.send(line).await.is_err() {
                return;
            }
        }
        tokio::select! {
            res = changed.changed() => if res.is_err() { return },
            () = sleep_until(deadline) => {
                if spec.bookmarks {
                    let _ = tx.send(shared.read(|s| bookmark(s, &spec, cursor, false))).await;
                }
                return;
            }
            () = tx.closed() => return,
            _ = shutdown.changed() => return,
            _ = ticker.tick(), if spec.bookmarks => {
                step = Ok((cursor, vec![shared.read(|s| bookmark(s, &spec, cursor, false))]));
                continue;
            }
        }
        changed.borrow_and_update();
        step = shared.read(|store| scan(store, &spec, cursor));
    }
}

/// The first step: the current objects (and the end-of-initial-events bookmark), or a replay.
fn initial(store: &Store, spec: &WatchSpec) -> Step {
    match spec.from {
        Some(from) if !spec.send_initial_events => scan(store, spec, from),
        _ => {
            let rv = store.resource_version();
            let objects = store.list(&spec.res, spec.ns.as_deref(), &spec.selector);
            let mut lines: Vec<Bytes> = objects
                .iter()
                .map(|obj| line("ADDED", &spec.view.object(obj)))
                .collect();
            if spec.send_initial_events {
                lines.push(bookmark(store, spec, rv, true));
            }
            Ok((rv, lines))
        }
    }
}

/// The changes after `cursor` as this watch sees them.
fn scan(store: &Store, spec: &WatchSpec, cursor: u64) -> Step {
    match store.changes_since(&spec.res, cursor) {
        Err(error) => Err(error_line(&error)),
        Ok(changes) => {
            let lines = changes.iter().filter_map(|c| event_line(spec, c)).collect();
            Ok((store.resource_version().max(cursor), lines))
        }
    }
}

/// A change as an event of this watch: none outside its namespace, and selector transitions
/// turned into ADDED/DELETED.
fn event_line(spec: &WatchSpec, change: &Change) -> Option<Bytes> {
    let ns = meta_str(&change.object, "namespace").unwrap_or_default();
    if spec.ns.as_deref().is_some_and(|want| want != ns) {
        return None;
    }
    let now = spec.selector.matches(&change.object);
    let before = change
        .prev
        .as_ref()
        .is_some_and(|p| spec.selector.matches(p));
    let ty = match (change.ty, before, now) {
        (EventType::Added, _, true) | (EventType::Modified, false, true) => "ADDED",
        (EventType::Modified, true, true) => "MODIFIED",
        (EventType::Modified, true, false) | (EventType::Deleted, _, true) => "DELETED",
        _ => return None,
    };
    Some(line(ty, &spec.view.object(&change.object)))
}

fn bookmark(store: &Store, spec: &WatchSpec, rv: u64, initial_end: bool) -> Bytes {
    let annotations = initial_end.then(|| json!({"k8s.io/initial-events-end": "true"}));
    let kind = store.kind(&spec.res);
    let object = spec
        .view
        .bookmark(&spec.res.api_version, kind, rv, annotations);
    line("BOOKMARK", &object)
}

fn error_line(error: &ApiError) -> Bytes {
    line("ERROR", &error.to_status())
}

fn line(ty: &str, object: &Value) -> Bytes {
    let mut bytes = serde_json::to_vec(&json!({"type": ty, "object": object})).unwrap_or_default();
    bytes.push(b'\n');
    Bytes::from(bytes)
}

//! The clients: concurrent workers doing reads, writes and compare-and-sets on a few keys,
//! recording every operation in the history as they see it.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicI64, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use rampart_kv::client::{Client, ClientError, Security};
use rampart_kv::proto::etcdserverpb as pb;
use rampart_kv::proto::etcdserverpb::compare::{CompareResult, CompareTarget, TargetUnion};
use tonic::Code;

use crate::history::{EventType, Func, HistoryWriter, Value};

/// What every worker shares: the history, the value and process counters, and tallies.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) history: HistoryWriter,
    pub(crate) keys: Vec<String>,
    /// The next value to write: values are unique and increasing across the run, so the
    /// checker can tell every write apart.
    next_value: AtomicI64,
    /// Per key, the last value a worker saw there (0: none yet), as a plausible `expected`
    /// for compare-and-sets; a cas against a value nobody has seen nearly always fails.
    last_seen: Vec<AtomicI64>,
    next_process: AtomicU64,
    pub(crate) tally: Tally,
    /// TLS and credentials of every client (none unless the run is secure).
    pub(crate) security: Security,
}

/// Counts of outcomes and of the errors behind `fail`/`info`, for the report.
#[derive(Debug, Default)]
pub(crate) struct Tally {
    pub(crate) ok: AtomicUsize,
    pub(crate) fail: AtomicUsize,
    pub(crate) info: AtomicUsize,
    errors: Mutex<BTreeMap<String, usize>>,
}

impl Tally {
    fn count(&self, kind: EventType, error: Option<&str>) {
        let counter = match kind {
            EventType::Ok => &self.ok,
            EventType::Fail => &self.fail,
            EventType::Info | EventType::Invoke => &self.info,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        if let Some(e) = error {
            // Keep the table short: errors differ mostly in their tails (addresses, ids).
            let key: String = format!("{kind}: {e}").chars().take(100).collect();
            *self
                .errors
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .entry(key)
                .or_default() += 1;
        }
    }

    /// `(count, "outcome: error")`, most frequent first.
    pub(crate) fn errors(&self) -> Vec<(usize, String)> {
        let map = self.errors.lock().unwrap_or_else(PoisonError::into_inner);
        let mut v: Vec<_> = map.iter().map(|(e, n)| (*n, e.clone())).collect();
        v.sort_by(|a, b| b.cmp(a));
        v
    }
}

impl Shared {
    pub(crate) fn new(history: HistoryWriter, keys: usize, security: Security) -> Self {
        Self {
            history,
            keys: (0..keys).map(|k| format!("k{k}")).collect(),
            next_value: AtomicI64::new(1),
            last_seen: (0..keys).map(|_| AtomicI64::new(0)).collect(),
            next_process: AtomicU64::new(0),
            tally: Tally::default(),
            security,
        }
    }

    /// A fresh process number: one per worker, and a new one after every `info`, since the
    /// old process's operation may still be running (Jepsen's rule).
    pub(crate) fn new_process(&self) -> u64 {
        self.next_process.fetch_add(1, Ordering::Relaxed)
    }

    fn saw(&self, key: usize, v: i64) {
        self.last_seen[key].store(v, Ordering::Relaxed);
    }
}

/// How a worker talks to its node.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ClientSettings {
    /// Per-request timeout given to the client library.
    pub(crate) timeout: Duration,
    /// Serve reads from the local node without asking the leader (etcd's `serializable`):
    /// fast, and stale under partition, so not linearizable.
    pub(crate) serializable_reads: bool,
}

/// One worker: random operations against one endpoint until `stop_at`.
pub(crate) async fn worker(
    shared: std::sync::Arc<Shared>,
    endpoint: String,
    settings: ClientSettings,
    seed: u64,
    stop_at: Instant,
) -> Result<()> {
    let mut rng = fastrand::Rng::with_seed(seed);
    // A single endpoint: the client library must not move a write to another node.
    let client = Client::with_security(
        std::slice::from_ref(&endpoint),
        settings.timeout,
        shared.security.clone(),
    )
    .with_context(|| format!("client for {endpoint}"))?;
    let mut session = Session {
        shared: &shared,
        client,
        settings,
    };
    let mut process = shared.new_process();
    while Instant::now() < stop_at {
        let k = rng.usize(..shared.keys.len());
        let roll = rng.u8(..100);
        let kind = if roll < 50 {
            session.read(process, k).await?.0
        } else if roll < 75 {
            let v = shared.next_value.fetch_add(1, Ordering::Relaxed);
            session.write(process, k, v).await?
        } else {
            let expected = match shared.last_seen[k].load(Ordering::Relaxed) {
                0 => rng.i64(1..=shared.next_value.load(Ordering::Relaxed)),
                v => v,
            };
            let new = shared.next_value.fetch_add(1, Ordering::Relaxed);
            session.cas(process, k, expected, new).await?
        };
        if kind == EventType::Info {
            process = shared.new_process();
        }
        // A little jitter, so workers do not march in lockstep.
        tokio::time::sleep(Duration::from_millis(rng.u64(0..5))).await;
    }
    Ok(())
}

/// The longest one operation may take, retries inside the client library included.
fn op_bound(settings: ClientSettings) -> Duration {
    settings.timeout * 4 + Duration::from_secs(1)
}

/// One client's connection, as its operations use it: each operation on it is recorded in
/// the shared history and tallied.
pub(crate) struct Session<'a> {
    pub(crate) shared: &'a Shared,
    pub(crate) client: Client,
    pub(crate) settings: ClientSettings,
}

impl Session<'_> {
    /// Reads key `k` and records it; returns the outcome and the value read. Errors are
    /// `fail`: a read changes nothing.
    pub(crate) async fn read(&mut self, process: u64, k: usize) -> Result<(EventType, Value)> {
        let (shared, settings) = (self.shared, self.settings);
        let key = &shared.keys[k];
        let h = &shared.history;
        h.record(process, EventType::Invoke, Func::Read, key, Value::Null)?;
        let req = pb::RangeRequest {
            key: key.as_bytes().to_vec(),
            serializable: settings.serializable_reads,
            ..Default::default()
        };
        let result = tokio::time::timeout(op_bound(settings), self.client.range(req)).await;
        let resp = match result {
            Ok(Ok(resp)) => resp,
            Ok(Err(e)) => {
                h.record(process, EventType::Fail, Func::Read, key, Value::Null)?;
                shared.tally.count(EventType::Fail, Some(&brief(&e)));
                return Ok((EventType::Fail, Value::Null));
            }
            Err(_) => {
                h.record(process, EventType::Fail, Func::Read, key, Value::Null)?;
                shared
                    .tally
                    .count(EventType::Fail, Some("harness bound elapsed"));
                return Ok((EventType::Fail, Value::Null));
            }
        };
        let value = match resp.kvs.first() {
            None => Value::Null,
            Some(kv) => {
                let text = String::from_utf8_lossy(&kv.value);
                let Ok(v) = text.parse::<i64>() else {
                    // Only this harness writes these keys, and only decimal integers: a value
                    // that is not one is corruption, not a client error.
                    h.record(process, EventType::Fail, Func::Read, key, Value::Null)?;
                    bail!("key {key} holds {text:?}, which this harness never wrote (corruption?)");
                };
                shared.saw(k, v);
                Value::Int(v)
            }
        };
        h.record(process, EventType::Ok, Func::Read, key, value)?;
        shared.tally.count(EventType::Ok, None);
        Ok((EventType::Ok, value))
    }

    /// Writes `v` to key `k` and records it.
    async fn write(&mut self, process: u64, k: usize, v: i64) -> Result<EventType> {
        let (shared, settings) = (self.shared, self.settings);
        let key = &shared.keys[k];
        let h = &shared.history;
        h.record(process, EventType::Invoke, Func::Write, key, Value::Int(v))?;
        let req = pb::PutRequest {
            key: key.as_bytes().to_vec(),
            value: v.to_string().into_bytes(),
            ..Default::default()
        };
        let result = tokio::time::timeout(op_bound(settings), self.client.put(req)).await;
        let (kind, error) = match result {
            Ok(Ok(_)) => {
                shared.saw(k, v);
                (EventType::Ok, None)
            }
            Ok(Err(e)) => (write_error_outcome(&e), Some(brief(&e))),
            Err(_) => (EventType::Info, Some("harness bound elapsed".to_owned())),
        };
        h.record(process, kind, Func::Write, key, Value::Int(v))?;
        shared.tally.count(kind, error.as_deref());
        Ok(kind)
    }

    /// Sets key `k` to `new` if it holds `expected`, and records it.
    async fn cas(&mut self, process: u64, k: usize, expected: i64, new: i64) -> Result<EventType> {
        let (shared, settings) = (self.shared, self.settings);
        let key = &shared.keys[k];
        let h = &shared.history;
        let value = Value::Pair(expected, new);
        h.record(process, EventType::Invoke, Func::Cas, key, value)?;
        let req = pb::TxnRequest {
            compare: vec![pb::Compare {
                result: CompareResult::Equal as i32,
                target: CompareTarget::Value as i32,
                key: key.as_bytes().to_vec(),
                target_union: Some(TargetUnion::Value(expected.to_string().into_bytes())),
                ..Default::default()
            }],
            success: vec![pb::RequestOp {
                request: Some(pb::request_op::Request::RequestPut(pb::PutRequest {
                    key: key.as_bytes().to_vec(),
                    value: new.to_string().into_bytes(),
                    ..Default::default()
                })),
            }],
            failure: Vec::new(),
        };
        let result = tokio::time::timeout(op_bound(settings), self.client.txn(req)).await;
        let (kind, error) = match result {
            Ok(Ok(resp)) if resp.succeeded => {
                shared.saw(k, new);
                (EventType::Ok, None)
            }
            // The comparison failed: the txn ran and certainly did not put.
            Ok(Ok(_)) => (EventType::Fail, None),
            Ok(Err(e)) => (write_error_outcome(&e), Some(brief(&e))),
            Err(_) => (EventType::Info, Some("harness bound elapsed".to_owned())),
        };
        h.record(process, kind, Func::Cas, key, value)?;
        shared.tally.count(kind, error.as_deref());
        Ok(kind)
    }
}

/// How a failed write or cas ended: `fail` only when it certainly had no effect (there was
/// no leader to propose it to, the connection was never made, or the request was
/// rejected), `info` (unknown) otherwise, timeouts above all.
pub(crate) fn write_error_outcome(e: &ClientError) -> EventType {
    let Some(s) = e.status() else {
        // Bad endpoint or no endpoints: nothing was sent.
        return EventType::Fail;
    };
    let m = s.message();
    let never_sent = m == rampart_kv::KvError::NoLeader.to_string()
        || m.contains("tcp connect error")
        || m.contains("error trying to connect")
        || m.contains("Connection refused");
    let rejected = matches!(
        s.code(),
        Code::InvalidArgument | Code::FailedPrecondition | Code::OutOfRange | Code::NotFound
    );
    if never_sent || rejected {
        EventType::Fail
    } else {
        EventType::Info
    }
}

fn brief(e: &ClientError) -> String {
    match e.status() {
        Some(s) => format!("{:?}: {}", s.code(), s.message()),
        None => e.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::Status;

    #[test]
    fn only_certain_failures_are_fail() {
        let outcome = |s: Status| write_error_outcome(&ClientError::Status(s));
        assert_eq!(
            outcome(Status::unavailable("etcdserver: no leader")),
            EventType::Fail
        );
        assert_eq!(
            outcome(Status::unavailable(
                "error trying to connect: tcp connect error: Connection refused (os error 111)"
            )),
            EventType::Fail
        );
        assert_eq!(
            outcome(Status::unavailable("etcdserver: request timed out")),
            EventType::Info
        );
        assert_eq!(
            outcome(Status::deadline_exceeded("client timeout")),
            EventType::Info
        );
        assert_eq!(
            outcome(Status::internal("h2 protocol error")),
            EventType::Info
        );
        assert_eq!(
            outcome(Status::invalid_argument("etcdserver: key is not provided")),
            EventType::Fail
        );
    }
}

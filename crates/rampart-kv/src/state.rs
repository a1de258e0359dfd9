//! The MVCC state machine in redb (`state.redb`), with etcd's revision semantics.
//!
//! - One cluster-wide revision, starting at 1 on an empty store, grows by one per write
//!   command that changes something (a put, a delete that deletes, a txn with such ops, a lease
//!   revoke that deletes keys). All changes of one command share that revision.
//! - Every key carries `create_revision`, `mod_revision` and `version` (puts since creation).
//! - History: the events of each revision (with the previous value) are kept until compaction;
//!   they feed watches and reads at past revisions.
//! - Applying never fails on bad requests: an invalid command (missing lease, compacted
//!   revision, ...) is decided identically on every replica and returns [`Reply::Error`].
//!
//! Durability: applies commit without fsync (`Durability::None`); the Raft log is the
//! durable record. Before a snapshot is built (after which the log may be purged) the state
//! is committed with fsync, so on restart the state on disk plus the log still hold every
//! applied write, and openraft re-applies the committed suffix.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::Cursor;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{EntryPayload, OptionalSend, SnapshotMeta, StorageIOError};
use redb::{
    Database, Durability, ReadableDatabase, ReadableTable, Table, TableDefinition, WriteTransaction,
};
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;

use crate::access;
use crate::auth::AuthState;
use crate::error::KvError;
use crate::log_store::{AnyErr, seal, unseal};
use crate::proto::etcdserverpb::{self as pb, compare, request_op, response_op};
use crate::proto::mvccpb::{Event, KeyValue, event::EventType};
use crate::quota::{self, Alarms};
use crate::types::{
    Command, Entry, LogId, Member, Reply, StorageError, StoredMembership, TypeConfig,
};

const KV: TableDefinition<&[u8], &[u8]> = TableDefinition::new("kv");
const HIST: TableDefinition<i64, &[u8]> = TableDefinition::new("hist");
const LEASES: TableDefinition<i64, &[u8]> = TableDefinition::new("leases");
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
const META_SM: &str = "sm";
/// The replicated [`Control`] state, written only when it changes.
const META_CONTROL: &str = "control";

/// Most operations in one txn (etcd's default `--max-txn-ops`).
pub const MAX_TXN_OPS: usize = 128;
/// Largest lease TTL etcd accepts, in seconds.
pub const MAX_LEASE_TTL: i64 = 9_000_000_000;

/// The part of the state machine that is not keys: kept in memory and stored with every apply.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct SmMeta {
    pub applied: Option<LogId>,
    pub membership: StoredMembership,
    pub revision: i64,
    pub compact_revision: i64,
    pub cluster_id: u64,
    pub members: BTreeMap<u64, MemberAttrs>,
}

/// Replicated state besides keys that changes rarely: auth and alarms. Each part is an
/// `Arc` handed to readers as is; applying a change replaces the part.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Control {
    pub auth: Arc<AuthState>,
    pub alarms: Arc<Alarms>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberAttrs {
    pub name: String,
    pub client_urls: Vec<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct LeaseRec {
    ttl: i64,
    keys: BTreeSet<Vec<u8>>,
}

/// A revision and its events, as read from history.
pub type RevEvents = (i64, Vec<Event>);

/// The events of one revision, as handed to watchers after they are applied.
#[derive(Debug)]
pub struct RevBatch {
    pub revision: i64,
    pub events: Vec<Event>,
    /// The state was replaced (snapshot installed): watchers must re-read history.
    pub resync: bool,
}

/// Lease deadlines. Only the leader expires leases (through the log); every node tracks
/// deadlines so that a new leader starts from fresh ones, as etcd does.
#[derive(Debug, Default)]
pub struct Lessor {
    leases: HashMap<i64, (i64, Instant)>,
}

impl Lessor {
    fn grant(&mut self, id: i64, ttl: i64) {
        self.leases.insert(id, (ttl, Instant::now() + secs(ttl)));
    }

    fn revoke(&mut self, id: i64) {
        self.leases.remove(&id);
    }

    /// Extend a lease by its TTL from now; the TTL, or `None` if it does not exist.
    pub fn renew(&mut self, id: i64) -> Option<i64> {
        let (ttl, deadline) = self.leases.get_mut(&id)?;
        *deadline = Instant::now() + secs(*ttl);
        Some(*ttl)
    }

    /// Seconds left (rounded up) and the granted TTL.
    pub fn remaining(&self, id: i64) -> Option<(i64, i64)> {
        let (ttl, deadline) = self.leases.get(&id)?;
        let left = deadline.saturating_duration_since(Instant::now());
        let left = i64::try_from(left.as_millis().div_ceil(1000)).unwrap_or(i64::MAX);
        Some((left, *ttl))
    }

    pub fn expired(&self, now: Instant) -> Vec<i64> {
        let mut ids: Vec<i64> = self
            .leases
            .iter()
            .filter(|(_, (_, d))| *d <= now)
            .map(|(id, _)| *id)
            .collect();
        ids.sort_unstable();
        ids
    }

    /// A new leader gives every lease a full TTL from now.
    pub fn refresh_all(&mut self) {
        let now = Instant::now();
        for (ttl, deadline) in self.leases.values_mut() {
            *deadline = now + secs(*ttl);
        }
    }

    pub fn ids(&self) -> Vec<i64> {
        let mut ids: Vec<i64> = self.leases.keys().copied().collect();
        ids.sort_unstable();
        ids
    }
}

fn secs(s: i64) -> Duration {
    Duration::from_secs(u64::try_from(s).unwrap_or(0))
}

/// What readers share with the state machine.
#[derive(Debug)]
pub struct Shared {
    db: Arc<Database>,
    path: PathBuf,
    /// The revision of the last applied write (published after its commit).
    pub revision: AtomicI64,
    pub cluster_id: AtomicU64,
    pub events: broadcast::Sender<Arc<RevBatch>>,
    pub lessor: Mutex<Lessor>,
    pub members: Mutex<BTreeMap<u64, MemberAttrs>>,
    auth: RwLock<Arc<AuthState>>,
    alarms: RwLock<Arc<Alarms>>,
}

/// The state machine openraft drives.
#[derive(Debug)]
pub struct StateMachine {
    shared: Arc<Shared>,
    meta: SmMeta,
    snapshot_path: PathBuf,
    retention: i64,
    ctl: Control,
}

/// Why the state file cannot be used; the node refuses to start.
#[derive(Debug, thiserror::Error)]
pub enum StateOpenError {
    #[error(
        "cannot open the state file {path}: {detail} (the file is damaged or not a state file)"
    )]
    Open { path: String, detail: String },
    #[error("the state file {path} is damaged: {detail}; refusing to start rather than drop data")]
    Corrupt { path: String, detail: String },
}

impl StateMachine {
    /// Open (or create) the state at `dir/state.redb`. `retention` keeps that many revisions of
    /// history (0 keeps all until an explicit Compact).
    pub fn open(dir: &Path, retention: u64) -> Result<(Self, Arc<Shared>), StateOpenError> {
        let path = dir.join("state.redb");
        let name = path.display().to_string();
        let open = |detail: String| StateOpenError::Open {
            path: name.clone(),
            detail,
        };
        let db = Database::create(&path).map_err(|e| open(e.to_string()))?;
        let tx = db.begin_write().map_err(|e| open(e.to_string()))?;
        tx.open_table(KV).map_err(|e| open(e.to_string()))?;
        tx.open_table(META).map_err(|e| open(e.to_string()))?;
        tx.open_table(HIST).map_err(|e| open(e.to_string()))?;
        tx.open_table(LEASES).map_err(|e| open(e.to_string()))?;
        tx.commit().map_err(|e| open(e.to_string()))?;

        let corrupt = |detail: String| StateOpenError::Corrupt {
            path: name.clone(),
            detail,
        };
        let (meta, leases, ctl) = {
            let rx = db.begin_read().map_err(|e| open(e.to_string()))?;
            let m = rx.open_table(META).map_err(|e| open(e.to_string()))?;
            let meta = match m.get(META_SM).map_err(|e| open(e.to_string()))? {
                Some(v) => decode::<SmMeta>(v.value()).map_err(corrupt)?,
                None => SmMeta {
                    revision: 1,
                    ..SmMeta::default()
                },
            };
            let lt = rx.open_table(LEASES).map_err(|e| open(e.to_string()))?;
            let mut leases = Vec::new();
            for item in lt.iter().map_err(|e| open(e.to_string()))? {
                let (k, v) = item.map_err(|e| open(e.to_string()))?;
                let rec: LeaseRec = decode(v.value()).map_err(corrupt)?;
                leases.push((k.value(), rec.ttl));
            }
            // Every key and every revision of history is checked too: a damaged value
            // stops the node here, not a read at some later time.
            let kv = rx.open_table(KV).map_err(|e| open(e.to_string()))?;
            for item in kv.iter().map_err(|e| open(e.to_string()))? {
                let (k, v) = item.map_err(|e| open(e.to_string()))?;
                unseal(v.value()).map_err(|d| {
                    corrupt(format!("key {:?}: {d}", String::from_utf8_lossy(k.value())))
                })?;
            }
            let hist = rx.open_table(HIST).map_err(|e| open(e.to_string()))?;
            for item in hist.iter().map_err(|e| open(e.to_string()))? {
                let (k, v) = item.map_err(|e| open(e.to_string()))?;
                unseal(v.value())
                    .map_err(|d| corrupt(format!("history of revision {}: {d}", k.value())))?;
            }
            let ctl = match m.get(META_CONTROL).map_err(|e| open(e.to_string()))? {
                Some(v) => decode::<Control>(v.value()).map_err(corrupt)?,
                None => Control::default(),
            };
            (meta, leases, ctl)
        };
        let mut lessor = Lessor::default();
        for (id, ttl) in leases {
            lessor.grant(id, ttl);
        }
        let shared = Arc::new(Shared {
            db: Arc::new(db),
            path,
            revision: AtomicI64::new(meta.revision),
            cluster_id: AtomicU64::new(meta.cluster_id),
            events: broadcast::channel(1024).0,
            lessor: Mutex::new(lessor),
            members: Mutex::new(meta.members.clone()),
            auth: RwLock::new(ctl.auth.clone()),
            alarms: RwLock::new(ctl.alarms.clone()),
        });
        let sm = StateMachine {
            shared: shared.clone(),
            meta,
            snapshot_path: dir.join("snapshot.bin"),
            ctl,
            retention: i64::try_from(retention).unwrap_or(i64::MAX),
        };
        Ok((sm, shared))
    }
}

fn decode<T: serde::de::DeserializeOwned>(sealed: &[u8]) -> Result<T, String> {
    let body = unseal(sealed)?;
    postcard::from_bytes(body).map_err(|e| format!("undecodable value: {e}"))
}

fn encode<T: Serialize>(v: &T) -> Result<Vec<u8>, KvError> {
    postcard::to_stdvec(v)
        .map(|b| seal(&b))
        .map_err(|e| KvError::Internal(e.to_string()))
}

fn storage(e: impl std::fmt::Display) -> KvError {
    KvError::Storage(e.to_string())
}

// ---------------------------------------------------------------------------------------
// Reads

/// A key range as etcd defines it: `end` empty means the single key; `"\0"` means every key
/// from `key` on; otherwise `[key, end)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyRange<'a> {
    pub key: &'a [u8],
    pub end: &'a [u8],
}

impl KeyRange<'_> {
    pub fn contains(&self, k: &[u8]) -> bool {
        if self.end.is_empty() {
            k == self.key
        } else if self.end == [0] {
            k >= self.key
        } else {
            k >= self.key && k < self.end
        }
    }

    pub fn is_single(&self) -> bool {
        self.end.is_empty()
    }
}

fn scan<T>(kv: &T, r: &KeyRange<'_>) -> Result<Vec<KeyValue>, KvError>
where
    T: ReadableTable<&'static [u8], &'static [u8]>,
{
    let mut out = Vec::new();
    if r.is_single() {
        if let Some(v) = kv.get(r.key).map_err(storage)? {
            out.push(decode_kv(v.value())?);
        }
        return Ok(out);
    }
    let iter = if r.end == [0] {
        kv.range::<&[u8]>(r.key..).map_err(storage)?
    } else if r.end <= r.key {
        return Ok(out);
    } else {
        kv.range::<&[u8]>(r.key..r.end).map_err(storage)?
    };
    for item in iter {
        let (_, v) = item.map_err(storage)?;
        out.push(decode_kv(v.value())?);
    }
    Ok(out)
}

/// A scan of the current keys in key order that keeps at most `keep` matches and only
/// counts the rest, so `Range` with a limit (or `count_only`) holds `limit` values in
/// memory, not the whole range. Without filters, keys past the window are not even decoded.
fn scan_window<T>(
    kv: &T,
    r: &KeyRange<'_>,
    keep: usize,
    descend: bool,
    filter: Option<&dyn Fn(&KeyValue) -> bool>,
) -> Result<(Vec<KeyValue>, i64), KvError>
where
    T: ReadableTable<&'static [u8], &'static [u8]>,
{
    if r.is_single() || (r.end != [0] && r.end <= r.key) {
        let mut kvs = scan(kv, r)?;
        kvs.retain(|kv| filter.is_none_or(|f| f(kv)));
        let count = i64::try_from(kvs.len()).unwrap_or(i64::MAX);
        kvs.truncate(keep);
        return Ok((kvs, count));
    }
    let iter = if r.end == [0] {
        kv.range::<&[u8]>(r.key..).map_err(storage)?
    } else {
        kv.range::<&[u8]>(r.key..r.end).map_err(storage)?
    };
    let iter: Box<dyn Iterator<Item = _>> = if descend {
        Box::new(iter.rev())
    } else {
        Box::new(iter)
    };
    let (mut out, mut count) = (Vec::new(), 0i64);
    for item in iter {
        let (_, v) = item.map_err(storage)?;
        if out.len() >= keep && filter.is_none() {
            count += 1;
            continue;
        }
        let kv = decode_kv(v.value())?;
        if filter.is_none_or(|f| f(&kv)) {
            count += 1;
            if out.len() < keep {
                out.push(kv);
            }
        }
    }
    Ok((out, count))
}

fn decode_kv(sealed: &[u8]) -> Result<KeyValue, KvError> {
    decode(sealed).map_err(KvError::Storage)
}

/// The keys of `r` as they were at revision `at` (≤ `current`), by undoing later history.
fn scan_at<T, H>(
    kv: &T,
    hist: &H,
    r: &KeyRange<'_>,
    at: i64,
    current: i64,
) -> Result<Vec<KeyValue>, KvError>
where
    T: ReadableTable<&'static [u8], &'static [u8]>,
    H: ReadableTable<i64, &'static [u8]>,
{
    let mut state: BTreeMap<Vec<u8>, KeyValue> = scan(kv, r)?
        .into_iter()
        .map(|kv| (kv.key.clone(), kv))
        .collect();
    if at < current {
        for item in hist.range((at + 1)..=current).map_err(storage)?.rev() {
            let (_, v) = item.map_err(storage)?;
            let events: Vec<Event> = decode(v.value()).map_err(KvError::Storage)?;
            for ev in events.into_iter().rev() {
                let Some(kv) = ev.kv else { continue };
                if !r.contains(&kv.key) {
                    continue;
                }
                match ev.prev_kv {
                    Some(prev) => state.insert(kv.key, prev),
                    None => state.remove(&kv.key),
                };
            }
        }
    }
    Ok(state.into_values().collect())
}

fn range_on<T, H>(
    kv: &T,
    hist: &H,
    req: &pb::RangeRequest,
    current: i64,
    compacted: i64,
) -> Result<pb::RangeResponse, KvError>
where
    T: ReadableTable<&'static [u8], &'static [u8]>,
    H: ReadableTable<i64, &'static [u8]>,
{
    if req.key.is_empty() {
        return Err(KvError::EmptyKey);
    }
    let r = KeyRange {
        key: &req.key,
        end: &req.range_end,
    };
    let filter = |kv: &KeyValue| {
        (req.min_mod_revision == 0 || kv.mod_revision >= req.min_mod_revision)
            && (req.max_mod_revision == 0 || kv.mod_revision <= req.max_mod_revision)
            && (req.min_create_revision == 0 || kv.create_revision >= req.min_create_revision)
            && (req.max_create_revision == 0 || kv.create_revision <= req.max_create_revision)
    };
    let filtered = req.min_mod_revision != 0
        || req.max_mod_revision != 0
        || req.min_create_revision != 0
        || req.max_create_revision != 0;
    let by_key = req.sort_target == pb::range_request::SortTarget::Key as i32;
    if (req.revision <= 0 || req.revision == current) && by_key {
        let keep = if req.count_only {
            0
        } else if req.limit > 0 {
            usize::try_from(req.limit).unwrap_or(usize::MAX)
        } else {
            usize::MAX
        };
        let descend = req.sort_order == pb::range_request::SortOrder::Descend as i32;
        let (mut kvs, count) = scan_window(
            kv,
            &r,
            keep,
            descend,
            filtered.then_some(&filter as &dyn Fn(&KeyValue) -> bool),
        )?;
        if req.keys_only {
            for kv in &mut kvs {
                kv.value.clear();
            }
        }
        return Ok(pb::RangeResponse {
            header: Some(header(current)),
            more: req.limit > 0 && count > req.limit,
            kvs,
            count,
        });
    }
    let mut kvs = if req.revision <= 0 || req.revision == current {
        scan(kv, &r)?
    } else if req.revision > current {
        return Err(KvError::FutureRevision);
    } else if req.revision < compacted {
        return Err(KvError::Compacted {
            compact_revision: compacted,
        });
    } else {
        scan_at(kv, hist, &r, req.revision, current)?
    };
    kvs.retain(filter);
    sort_kvs(&mut kvs, req.sort_order, req.sort_target);
    let count = i64::try_from(kvs.len()).unwrap_or(i64::MAX);
    let mut more = false;
    if req.limit > 0 && count > req.limit {
        kvs.truncate(usize::try_from(req.limit).unwrap_or(usize::MAX));
        more = true;
    }
    if req.count_only {
        kvs.clear();
    } else if req.keys_only {
        for kv in &mut kvs {
            kv.value.clear();
        }
    }
    Ok(pb::RangeResponse {
        header: Some(header(current)),
        kvs,
        more,
        count,
    })
}

fn sort_kvs(kvs: &mut [KeyValue], order: i32, target: i32) {
    use pb::range_request::{SortOrder, SortTarget};
    let target = SortTarget::try_from(target).unwrap_or(SortTarget::Key);
    let mut order = SortOrder::try_from(order).unwrap_or(SortOrder::None);
    if order == SortOrder::None {
        if target == SortTarget::Key {
            return; // already ascending by key
        }
        order = SortOrder::Ascend;
    }
    match target {
        SortTarget::Key => kvs.sort_by(|a, b| a.key.cmp(&b.key)),
        SortTarget::Version => kvs.sort_by_key(|kv| kv.version),
        SortTarget::Create => kvs.sort_by_key(|kv| kv.create_revision),
        SortTarget::Mod => kvs.sort_by_key(|kv| kv.mod_revision),
        SortTarget::Value => kvs.sort_by(|a, b| a.value.cmp(&b.value)),
    }
    if order == SortOrder::Descend {
        kvs.reverse();
    }
}

pub(crate) fn header(revision: i64) -> pb::ResponseHeader {
    pb::ResponseHeader {
        revision,
        ..Default::default()
    }
}

impl Shared {
    fn read_meta<M>(m: &M) -> Result<SmMeta, KvError>
    where
        M: ReadableTable<&'static str, &'static [u8]>,
    {
        match m.get(META_SM).map_err(storage)? {
            Some(v) => decode(v.value()).map_err(KvError::Storage),
            None => Ok(SmMeta {
                revision: 1,
                ..SmMeta::default()
            }),
        }
    }

    /// A Range on this node's applied state (the caller has made it linearizable if needed).
    pub fn range(&self, req: &pb::RangeRequest) -> Result<pb::RangeResponse, KvError> {
        let rx = self.db.begin_read().map_err(storage)?;
        let meta = Self::read_meta(&rx.open_table(META).map_err(storage)?)?;
        let (current, compacted) = (meta.revision, meta.compact_revision);
        let kv = rx.open_table(KV).map_err(storage)?;
        let hist = rx.open_table(HIST).map_err(storage)?;
        range_on(&kv, &hist, req, current, compacted)
    }

    /// The events of revisions `from..=to` (fewer if `limit` revisions are reached), and the
    /// compacted revision if `from` is no longer in history.
    pub fn history(&self, from: i64, limit: usize) -> Result<Vec<RevEvents>, KvError> {
        let rx = self.db.begin_read().map_err(storage)?;
        let meta = Self::read_meta(&rx.open_table(META).map_err(storage)?)?;
        if from < meta.compact_revision {
            return Err(KvError::Compacted {
                compact_revision: meta.compact_revision,
            });
        }
        let hist = rx.open_table(HIST).map_err(storage)?;
        let mut out = Vec::new();
        for item in hist.range(from..=meta.revision).map_err(storage)? {
            let (k, v) = item.map_err(storage)?;
            out.push((k.value(), decode(v.value()).map_err(KvError::Storage)?));
            if out.len() >= limit {
                break;
            }
        }
        Ok(out)
    }

    /// Keys attached to a lease.
    pub fn lease_keys(&self, id: i64) -> Result<Option<Vec<Vec<u8>>>, KvError> {
        let rx = self.db.begin_read().map_err(storage)?;
        let t = rx.open_table(LEASES).map_err(storage)?;
        match t.get(id).map_err(storage)? {
            Some(v) => {
                let rec: LeaseRec = decode(v.value()).map_err(KvError::Storage)?;
                Ok(Some(rec.keys.into_iter().collect()))
            }
            None => Ok(None),
        }
    }

    pub fn lease_exists(&self, id: i64) -> Result<bool, KvError> {
        let rx = self.db.begin_read().map_err(storage)?;
        let t = rx.open_table(LEASES).map_err(storage)?;
        Ok(t.get(id).map_err(storage)?.is_some())
    }

    /// Size of the state file in bytes.
    pub fn db_size(&self) -> i64 {
        std::fs::metadata(&self.path)
            .map(|m| i64::try_from(m.len()).unwrap_or(i64::MAX))
            .unwrap_or(0)
    }

    /// The auth state as last applied on this node.
    pub fn auth(&self) -> Arc<AuthState> {
        self.auth
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// The alarms as last applied on this node.
    pub fn alarms(&self) -> Arc<Alarms> {
        self.alarms
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    pub fn current_revision(&self) -> i64 {
        self.revision.load(Ordering::Acquire)
    }
}

// ---------------------------------------------------------------------------------------
// Writes

struct Writer<'t> {
    kv: Table<'t, &'static [u8], &'static [u8]>,
    hist: Table<'t, i64, &'static [u8]>,
    leases: Table<'t, i64, &'static [u8]>,
    meta: &'t mut SmMeta,
    ctl: &'t mut Control,
    ctl_changed: bool,
    /// Events of the command being applied (they all get revision `meta.revision + 1`).
    pending: Vec<Event>,
    published: Vec<Arc<RevBatch>>,
    lease_effects: Vec<LeaseEffect>,
}

enum LeaseEffect {
    Grant(i64, i64),
    Revoke(i64),
}

impl Writer<'_> {
    fn next_rev(&self) -> i64 {
        self.meta.revision + 1
    }

    fn get(&self, key: &[u8]) -> Result<Option<KeyValue>, KvError> {
        match self.kv.get(key).map_err(storage)? {
            Some(v) => Ok(Some(decode_kv(v.value())?)),
            None => Ok(None),
        }
    }

    fn lease(&self, id: i64) -> Result<Option<LeaseRec>, KvError> {
        match self.leases.get(id).map_err(storage)? {
            Some(v) => Ok(Some(decode(v.value()).map_err(KvError::Storage)?)),
            None => Ok(None),
        }
    }

    fn set_lease(&mut self, id: i64, rec: &LeaseRec) -> Result<(), KvError> {
        let bytes = encode(rec)?;
        self.leases.insert(id, bytes.as_slice()).map_err(storage)?;
        Ok(())
    }

    fn attach(&mut self, lease: i64, key: &[u8], attach: bool) -> Result<(), KvError> {
        if lease == 0 {
            return Ok(());
        }
        if let Some(mut rec) = self.lease(lease)? {
            if attach {
                rec.keys.insert(key.to_vec());
            } else {
                rec.keys.remove(key);
            }
            self.set_lease(lease, &rec)?;
        }
        Ok(())
    }

    /// Close the current command: record its events under the next revision.
    fn finish(&mut self) -> Result<(), KvError> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let rev = self.next_rev();
        let events = std::mem::take(&mut self.pending);
        let bytes = encode(&events)?;
        self.hist.insert(rev, bytes.as_slice()).map_err(storage)?;
        self.meta.revision = rev;
        self.published.push(Arc::new(RevBatch {
            revision: rev,
            events,
            resync: false,
        }));
        Ok(())
    }

    fn abort(&mut self) {
        self.pending.clear();
    }

    fn range(&self, req: &pb::RangeRequest) -> Result<pb::RangeResponse, KvError> {
        // Reads inside a txn see the txn's earlier writes, at the revision they will get.
        let current = if self.pending.is_empty() {
            self.meta.revision
        } else {
            self.next_rev()
        };
        if !self.pending.is_empty() && req.revision > 0 && req.revision < current {
            // History for the pending revision is not written yet; read committed history.
            let r = pb::RangeRequest {
                revision: req.revision,
                ..req.clone()
            };
            return range_on(
                &self.kv,
                &self.hist,
                &r,
                self.meta.revision,
                self.meta.compact_revision,
            );
        }
        range_on(
            &self.kv,
            &self.hist,
            req,
            current,
            self.meta.compact_revision,
        )
    }

    fn put(&mut self, req: &pb::PutRequest) -> Result<pb::PutResponse, KvError> {
        let prev = self.get(&req.key)?;
        if (req.ignore_value || req.ignore_lease) && prev.is_none() {
            return Err(KvError::KeyNotFound);
        }
        let value = match (&prev, req.ignore_value) {
            (Some(p), true) => p.value.clone(),
            _ => req.value.clone(),
        };
        let lease = match (&prev, req.ignore_lease) {
            (Some(p), true) => p.lease,
            _ => req.lease,
        };
        if lease != 0 && self.lease(lease)?.is_none() {
            return Err(KvError::LeaseNotFound);
        }
        let rev = self.next_rev();
        let kv = KeyValue {
            key: req.key.clone(),
            create_revision: prev.as_ref().map_or(rev, |p| p.create_revision),
            mod_revision: rev,
            version: prev.as_ref().map_or(1, |p| p.version + 1),
            value,
            lease,
        };
        let bytes = encode(&kv)?;
        self.kv
            .insert(req.key.as_slice(), bytes.as_slice())
            .map_err(storage)?;
        let old_lease = prev.as_ref().map_or(0, |p| p.lease);
        if old_lease != lease {
            self.attach(old_lease, &req.key, false)?;
            self.attach(lease, &req.key, true)?;
        }
        self.pending.push(Event {
            r#type: EventType::Put as i32,
            kv: Some(kv),
            prev_kv: prev.clone(),
        });
        Ok(pb::PutResponse {
            header: Some(header(rev)),
            prev_kv: if req.prev_kv { prev } else { None },
        })
    }

    fn delete(&mut self, req: &pb::DeleteRangeRequest) -> Result<pb::DeleteRangeResponse, KvError> {
        let r = KeyRange {
            key: &req.key,
            end: &req.range_end,
        };
        let victims = scan(&self.kv, &r)?;
        let rev = self.next_rev();
        for prev in &victims {
            self.kv.remove(prev.key.as_slice()).map_err(storage)?;
            self.attach(prev.lease, &prev.key, false)?;
            self.pending.push(Event {
                r#type: EventType::Delete as i32,
                kv: Some(KeyValue {
                    key: prev.key.clone(),
                    mod_revision: rev,
                    ..Default::default()
                }),
                prev_kv: Some(prev.clone()),
            });
        }
        let revision = if victims.is_empty() && self.pending.is_empty() {
            self.meta.revision
        } else {
            rev
        };
        Ok(pb::DeleteRangeResponse {
            header: Some(header(revision)),
            deleted: i64::try_from(victims.len()).unwrap_or(i64::MAX),
            prev_kvs: if req.prev_kv { victims } else { Vec::new() },
        })
    }

    fn compare(&self, c: &pb::Compare) -> Result<bool, KvError> {
        use compare::{CompareResult, CompareTarget, TargetUnion};
        let r = KeyRange {
            key: &c.key,
            end: &c.range_end,
        };
        let kvs = scan(&self.kv, &r)?;
        let target = CompareTarget::try_from(c.target).unwrap_or(CompareTarget::Version);
        let result = CompareResult::try_from(c.result).unwrap_or(CompareResult::Equal);
        let absent = KeyValue::default();
        let kvs: Vec<&KeyValue> = if kvs.is_empty() {
            if target == CompareTarget::Value {
                return Ok(false);
            }
            vec![&absent]
        } else {
            kvs.iter().collect()
        };
        let check = |ord: std::cmp::Ordering| match result {
            CompareResult::Equal => ord.is_eq(),
            CompareResult::NotEqual => !ord.is_eq(),
            CompareResult::Greater => ord.is_gt(),
            CompareResult::Less => ord.is_lt(),
        };
        Ok(kvs.into_iter().all(|kv| match (&c.target_union, target) {
            (Some(TargetUnion::Version(v)), CompareTarget::Version) => check(kv.version.cmp(v)),
            (Some(TargetUnion::CreateRevision(v)), CompareTarget::Create) => {
                check(kv.create_revision.cmp(v))
            }
            (Some(TargetUnion::ModRevision(v)), CompareTarget::Mod) => {
                check(kv.mod_revision.cmp(v))
            }
            (Some(TargetUnion::Value(v)), CompareTarget::Value) => {
                check(kv.value.as_slice().cmp(v))
            }
            (Some(TargetUnion::Lease(v)), CompareTarget::Lease) => check(kv.lease.cmp(v)),
            // A missing operand compares as the zero value of the target.
            (None, CompareTarget::Value) => check(kv.value.as_slice().cmp(&[][..])),
            (None, CompareTarget::Version) => check(kv.version.cmp(&0)),
            (None, CompareTarget::Create) => check(kv.create_revision.cmp(&0)),
            (None, CompareTarget::Mod) => check(kv.mod_revision.cmp(&0)),
            (None, CompareTarget::Lease) => check(kv.lease.cmp(&0)),
            _ => false,
        }))
    }

    /// etcd decides every branch of a (nested) txn against the state before the txn, then
    /// runs the chosen path. `path` lists the decisions in visiting order.
    fn txn_path(&self, t: &pb::TxnRequest, path: &mut Vec<bool>) -> Result<(), KvError> {
        let mut ok = true;
        for c in &t.compare {
            if !self.compare(c)? {
                ok = false;
                break;
            }
        }
        path.push(ok);
        let ops = if ok { &t.success } else { &t.failure };
        for op in ops {
            if let Some(request_op::Request::RequestTxn(inner)) = &op.request {
                self.txn_path(inner, path)?;
            }
        }
        Ok(())
    }

    /// Checks that must fail the whole txn before anything is written.
    fn check_path(&self, t: &pb::TxnRequest, path: &[bool], at: &mut usize) -> Result<(), KvError> {
        let ok = path.get(*at).copied().unwrap_or(false);
        *at += 1;
        for op in if ok { &t.success } else { &t.failure } {
            match &op.request {
                Some(request_op::Request::RequestPut(p)) => {
                    let prev = self.get(&p.key)?;
                    if (p.ignore_value || p.ignore_lease) && prev.is_none() {
                        return Err(KvError::KeyNotFound);
                    }
                    if !p.ignore_lease && p.lease != 0 && self.lease(p.lease)?.is_none() {
                        return Err(KvError::LeaseNotFound);
                    }
                }
                Some(request_op::Request::RequestRange(r)) => {
                    if r.revision > self.next_rev() {
                        return Err(KvError::FutureRevision);
                    }
                    if r.revision > 0 && r.revision < self.meta.compact_revision {
                        return Err(KvError::Compacted {
                            compact_revision: self.meta.compact_revision,
                        });
                    }
                }
                Some(request_op::Request::RequestTxn(inner)) => self.check_path(inner, path, at)?,
                Some(request_op::Request::RequestDeleteRange(_)) | None => {}
            }
        }
        Ok(())
    }

    fn run_path(
        &mut self,
        t: &pb::TxnRequest,
        path: &[bool],
        at: &mut usize,
    ) -> Result<pb::TxnResponse, KvError> {
        let ok = path.get(*at).copied().unwrap_or(false);
        *at += 1;
        let ops = if ok { &t.success } else { &t.failure };
        let mut responses = Vec::with_capacity(ops.len());
        for op in ops {
            let response = match &op.request {
                Some(request_op::Request::RequestRange(r)) => {
                    response_op::Response::ResponseRange(self.range(r)?)
                }
                Some(request_op::Request::RequestPut(p)) => {
                    response_op::Response::ResponsePut(self.put(p)?)
                }
                Some(request_op::Request::RequestDeleteRange(d)) => {
                    response_op::Response::ResponseDeleteRange(self.delete(d)?)
                }
                Some(request_op::Request::RequestTxn(inner)) => {
                    response_op::Response::ResponseTxn(self.run_path(inner, path, at)?)
                }
                None => continue,
            };
            responses.push(pb::ResponseOp {
                response: Some(response),
            });
        }
        Ok(pb::TxnResponse {
            header: None,
            succeeded: ok,
            responses,
        })
    }

    fn txn(&mut self, t: &pb::TxnRequest) -> Result<pb::TxnResponse, KvError> {
        let mut path = Vec::new();
        self.txn_path(t, &mut path)?;
        self.check_path(t, &path, &mut 0)?;
        let mut resp = self.run_path(t, &path, &mut 0)?;
        let rev = if self.pending.is_empty() {
            self.meta.revision
        } else {
            self.next_rev()
        };
        fix_headers(&mut resp, rev);
        Ok(resp)
    }

    fn compact(&mut self, rev: i64) -> Result<(), KvError> {
        if rev > self.meta.revision {
            return Err(KvError::FutureRevision);
        }
        if rev <= self.meta.compact_revision {
            return Err(KvError::Compacted {
                compact_revision: self.meta.compact_revision,
            });
        }
        self.hist.retain_in(..rev, |_, _| false).map_err(storage)?;
        self.meta.compact_revision = rev;
        Ok(())
    }

    fn lease_grant(&mut self, id: i64, ttl: i64) -> Result<pb::LeaseGrantResponse, KvError> {
        if ttl > MAX_LEASE_TTL {
            return Err(KvError::LeaseTtlTooLarge);
        }
        if self.lease(id)?.is_some() {
            return Err(KvError::LeaseExists);
        }
        self.set_lease(
            id,
            &LeaseRec {
                ttl,
                keys: BTreeSet::new(),
            },
        )?;
        self.lease_effects.push(LeaseEffect::Grant(id, ttl));
        Ok(pb::LeaseGrantResponse {
            header: Some(header(self.meta.revision)),
            id,
            ttl,
            error: String::new(),
        })
    }

    fn lease_revoke(&mut self, id: i64) -> Result<pb::LeaseRevokeResponse, KvError> {
        let Some(rec) = self.lease(id)? else {
            return Err(KvError::LeaseNotFound);
        };
        let rev = self.next_rev();
        for key in &rec.keys {
            if let Some(prev) = self.get(key)? {
                self.kv.remove(key.as_slice()).map_err(storage)?;
                self.pending.push(Event {
                    r#type: EventType::Delete as i32,
                    kv: Some(KeyValue {
                        key: key.clone(),
                        mod_revision: rev,
                        ..Default::default()
                    }),
                    prev_kv: Some(prev),
                });
            }
        }
        self.leases.remove(id).map_err(storage)?;
        self.lease_effects.push(LeaseEffect::Revoke(id));
        let revision = if self.pending.is_empty() {
            self.meta.revision
        } else {
            rev
        };
        Ok(pb::LeaseRevokeResponse {
            header: Some(header(revision)),
        })
    }

    /// Apply one command; an error leaves no trace (checks run before any write).
    fn command(&mut self, cmd: &Command, index: u64) -> Reply {
        if let Command::As {
            user,
            auth_revision,
            cmd,
        } = cmd
        {
            let auth = self.ctl.auth.clone();
            if auth.enabled && auth.revision != *auth_revision {
                let keys = |id| {
                    self.lease(id)
                        .ok()
                        .flatten()
                        .map(|l| l.keys.into_iter().collect())
                        .unwrap_or_default()
                };
                let allowed = if auth.users.contains_key(user) {
                    access::check_command(&auth, &Some(user.clone()), cmd, &keys)
                } else {
                    Err(KvError::PermissionDenied)
                };
                if let Err(e) = allowed {
                    return Reply::Error(e);
                }
            }
            return self.command(cmd, index);
        }
        if self.ctl.alarms.nospace() && quota::adds_data(cmd) {
            return Reply::Error(KvError::NoSpace);
        }
        let result = match cmd {
            Command::Put(p) => self.put(p).map(Reply::Put),
            Command::DeleteRange(d) => self.delete(d).map(Reply::DeleteRange),
            Command::Txn(t) => self.txn(t).map(Reply::Txn),
            Command::Compact(c) => self.compact(c.revision).map(|()| {
                Reply::Compact(pb::CompactionResponse {
                    header: Some(header(self.meta.revision)),
                })
            }),
            Command::LeaseGrant { id, ttl } => {
                let id = if *id != 0 {
                    *id
                } else {
                    self.fresh_lease_id(index)
                };
                self.lease_grant(id, *ttl).map(Reply::LeaseGrant)
            }
            Command::LeaseRevoke { id } => self.lease_revoke(*id).map(Reply::LeaseRevoke),
            Command::Batch(_) => Err(KvError::Internal("nested write batch".into())),
            Command::As { .. } => Err(KvError::Internal("nested auth wrapper".into())),
            Command::SetMemberAttrs {
                id,
                name,
                client_urls,
            } => {
                self.meta.members.insert(
                    *id,
                    MemberAttrs {
                        name: name.clone(),
                        client_urls: client_urls.clone(),
                    },
                );
                Ok(Reply::Done {
                    revision: self.meta.revision,
                })
            }
            Command::Auth(a) => {
                let mut next = AuthState::clone(&self.ctl.auth);
                next.apply(a).map(|()| {
                    self.ctl.auth = Arc::new(next);
                    self.ctl_changed = true;
                    Reply::Done {
                        revision: self.meta.revision,
                    }
                })
            }
            Command::Alarm(a) => {
                let mut next = Alarms::clone(&self.ctl.alarms);
                if next.apply(a) {
                    self.ctl.alarms = Arc::new(next);
                    self.ctl_changed = true;
                }
                Ok(Reply::Done {
                    revision: self.meta.revision,
                })
            }
        };
        match result {
            Ok(reply) => match self.finish() {
                Ok(()) => reply,
                Err(e) => Reply::Error(e),
            },
            Err(e) => {
                self.abort();
                Reply::Error(e)
            }
        }
    }

    /// Keep `retention` revisions of history: compact in steps of a tenth of the window,
    /// not on every write. Deterministic, so every replica compacts alike.
    fn auto_compact(&mut self, retention: i64) -> Result<(), KvError> {
        if retention > 0 {
            let target = self.meta.revision - retention;
            if target - self.meta.compact_revision > retention / 10 {
                self.compact(target)?;
            }
        }
        Ok(())
    }

    fn fresh_lease_id(&self, index: u64) -> i64 {
        // Deterministic on every replica: derived from the log index, positive, unused.
        let mut id = i64::try_from(index.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 2)
            .unwrap_or(1)
            .max(1);
        while matches!(self.leases.get(id), Ok(Some(_))) {
            id = id.wrapping_add(1).max(1);
        }
        id
    }
}

fn fix_headers(resp: &mut pb::TxnResponse, rev: i64) {
    resp.header = Some(header(rev));
    for r in &mut resp.responses {
        match &mut r.response {
            Some(response_op::Response::ResponsePut(p)) => p.header = Some(header(rev)),
            Some(response_op::Response::ResponseDeleteRange(d)) => d.header = Some(header(rev)),
            Some(response_op::Response::ResponseTxn(t)) => fix_headers(t, rev),
            Some(response_op::Response::ResponseRange(_)) | None => {}
        }
    }
}

/// Validate a request before it is proposed: what can be checked without the state.
pub fn validate(cmd: &Command) -> Result<(), KvError> {
    match cmd {
        Command::Put(p) if p.key.is_empty() => Err(KvError::EmptyKey),
        Command::DeleteRange(d) if d.key.is_empty() => Err(KvError::EmptyKey),
        Command::Txn(t) => validate_txn(t),
        Command::As { cmd, .. } => validate(cmd),
        _ => Ok(()),
    }
}

fn validate_txn(t: &pb::TxnRequest) -> Result<(), KvError> {
    if t.compare.len() > MAX_TXN_OPS
        || t.success.len() > MAX_TXN_OPS
        || t.failure.len() > MAX_TXN_OPS
    {
        return Err(KvError::TooManyOps);
    }
    for c in &t.compare {
        if c.key.is_empty() {
            return Err(KvError::EmptyKey);
        }
    }
    for branch in [&t.success, &t.failure] {
        let mut puts: BTreeSet<&[u8]> = BTreeSet::new();
        let mut deletes: Vec<(&[u8], &[u8])> = Vec::new();
        collect_writes(branch, &mut puts, &mut deletes)?;
        for k in &puts {
            let hit = deletes
                .iter()
                .any(|(key, end)| KeyRange { key, end }.contains(k));
            if hit {
                return Err(KvError::DuplicateKey);
            }
        }
    }
    Ok(())
}

fn collect_writes<'a>(
    ops: &'a [pb::RequestOp],
    puts: &mut BTreeSet<&'a [u8]>,
    deletes: &mut Vec<(&'a [u8], &'a [u8])>,
) -> Result<(), KvError> {
    for op in ops {
        match &op.request {
            Some(request_op::Request::RequestPut(p)) => {
                if p.key.is_empty() {
                    return Err(KvError::EmptyKey);
                }
                if !puts.insert(&p.key) {
                    return Err(KvError::DuplicateKey);
                }
            }
            Some(request_op::Request::RequestDeleteRange(d)) => {
                if d.key.is_empty() {
                    return Err(KvError::EmptyKey);
                }
                deletes.push((&d.key, &d.range_end));
            }
            Some(request_op::Request::RequestRange(r)) if r.key.is_empty() => {
                return Err(KvError::EmptyKey);
            }
            Some(request_op::Request::RequestTxn(inner)) => {
                validate_txn(inner)?;
                // Writes of either nested branch may run alongside this branch's writes.
                collect_writes(&inner.success, puts, deletes)?;
                collect_writes(&inner.failure, puts, deletes)?;
            }
            Some(request_op::Request::RequestRange(_)) | None => {}
        }
    }
    Ok(())
}

mod snapshot;

pub use snapshot::{SnapshotBuilder, verify_snapshot_file};
use snapshot::{decode_image, load_image, read_snapshot_file, write_snapshot_file};

// ---------------------------------------------------------------------------------------
// openraft glue

fn io_err(e: impl std::fmt::Display) -> StorageError {
    StorageIOError::write_state_machine(&AnyErr(e.to_string())).into()
}

/// What applying a batch produced, for the caller to publish after the commit.
struct Applied {
    replies: Vec<Reply>,
    published: Vec<Arc<RevBatch>>,
    effects: Vec<LeaseEffect>,
}

fn apply_batch(
    db: &Database,
    meta: &mut SmMeta,
    ctl: &mut Control,
    entries: Vec<Entry>,
    retention: i64,
) -> Result<Applied, KvError> {
    let tx = db.begin_write().map_err(storage)?;
    let mut tx = tx;
    tx.set_durability(Durability::None).map_err(storage)?;
    let (replies, published, effects, ctl_changed) = {
        let mut w = Writer {
            kv: tx.open_table(KV).map_err(storage)?,
            hist: tx.open_table(HIST).map_err(storage)?,
            leases: tx.open_table(LEASES).map_err(storage)?,
            meta,
            ctl,
            ctl_changed: false,
            pending: Vec::new(),
            published: Vec::new(),
            lease_effects: Vec::new(),
        };
        let mut replies = Vec::with_capacity(entries.len());
        for entry in entries {
            let reply = match &entry.payload {
                EntryPayload::Blank => Reply::Done {
                    revision: w.meta.revision,
                },
                EntryPayload::Normal(Command::Batch(cmds)) => {
                    let mut replies = Vec::with_capacity(cmds.len());
                    for cmd in cmds {
                        replies.push(w.command(cmd, entry.log_id.index));
                        w.auto_compact(retention)?;
                    }
                    Reply::Batch(replies)
                }
                EntryPayload::Normal(cmd) => {
                    let r = w.command(cmd, entry.log_id.index);
                    w.auto_compact(retention)?;
                    r
                }
                EntryPayload::Membership(m) => {
                    w.meta.membership = StoredMembership::new(Some(entry.log_id), m.clone());
                    if w.meta.cluster_id == 0 {
                        w.meta.cluster_id = cluster_id(m.voter_ids());
                    }
                    Reply::Done {
                        revision: w.meta.revision,
                    }
                }
            };
            w.meta.applied = Some(entry.log_id);
            replies.push(reply);
        }
        (replies, w.published, w.lease_effects, w.ctl_changed)
    };
    write_meta(&tx, meta)?;
    if ctl_changed {
        write_control(&tx, ctl)?;
    }
    tx.commit().map_err(storage)?;
    Ok(Applied {
        replies,
        published,
        effects,
    })
}

fn write_meta(tx: &WriteTransaction, meta: &SmMeta) -> Result<(), KvError> {
    let bytes = encode(meta)?;
    let mut m = tx.open_table(META).map_err(storage)?;
    m.insert(META_SM, bytes.as_slice()).map_err(storage)?;
    Ok(())
}

fn write_control(tx: &WriteTransaction, ctl: &Control) -> Result<(), KvError> {
    let bytes = encode(ctl)?;
    let mut m = tx.open_table(META).map_err(storage)?;
    m.insert(META_CONTROL, bytes.as_slice()).map_err(storage)?;
    Ok(())
}

fn cluster_id(voters: impl Iterator<Item = u64>) -> u64 {
    let mut ids: Vec<u64> = voters.collect();
    ids.sort_unstable();
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for id in ids {
        for b in id.to_le_bytes() {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    }
    h.max(1)
}

impl StateMachine {
    fn publish(&self, published: Vec<Arc<RevBatch>>, effects: Vec<LeaseEffect>) {
        if !effects.is_empty() {
            let mut lessor = self
                .shared
                .lessor
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            for e in effects {
                match e {
                    LeaseEffect::Grant(id, ttl) => lessor.grant(id, ttl),
                    LeaseEffect::Revoke(id) => lessor.revoke(id),
                }
            }
        }
        *self
            .shared
            .members
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = self.meta.members.clone();
        *self
            .shared
            .auth
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = self.ctl.auth.clone();
        *self
            .shared
            .alarms
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = self.ctl.alarms.clone();
        self.shared
            .cluster_id
            .store(self.meta.cluster_id, Ordering::Release);
        self.shared
            .revision
            .store(self.meta.revision, Ordering::Release);
        for batch in published {
            // No receivers is fine: nobody watches.
            let _ = self.shared.events.send(batch);
        }
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), StorageError> {
        Ok((self.meta.applied, self.meta.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Reply>, StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let entries: Vec<Entry> = entries.into_iter().collect();
        let db = self.shared.db.clone();
        let mut meta = self.meta.clone();
        let mut ctl = self.ctl.clone();
        let retention = self.retention;
        let (meta, ctl, result) = tokio::task::spawn_blocking(move || {
            let r = apply_batch(&db, &mut meta, &mut ctl, entries, retention);
            (meta, ctl, r)
        })
        .await
        .map_err(io_err)?;
        let Applied {
            replies,
            published,
            effects,
        } = result.map_err(io_err)?;
        self.meta = meta;
        self.ctl = ctl;
        self.publish(published, effects);
        Ok(replies)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        SnapshotBuilder {
            db: self.shared.db.clone(),
            path: self.snapshot_path.clone(),
        }
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, StorageError> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<u64, Member>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError> {
        let data = snapshot.into_inner();
        let image = decode_image(&data).map_err(|e| {
            StorageError::from(StorageIOError::read_snapshot(
                Some(meta.signature()),
                &AnyErr(e),
            ))
        })?;
        let db = self.shared.db.clone();
        let sm_meta = image.meta.clone();
        self.ctl = image.ctl.clone();
        tokio::task::spawn_blocking(move || load_image(&db, &image))
            .await
            .map_err(io_err)?
            .map_err(io_err)?;
        write_snapshot_file(&self.snapshot_path, meta, &data).map_err(io_err)?;
        self.meta = sm_meta;
        {
            let mut lessor = self
                .shared
                .lessor
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            *lessor = Lessor::default();
        }
        let leases = self.lease_list().map_err(io_err)?;
        let effects = leases
            .into_iter()
            .map(|(id, ttl)| LeaseEffect::Grant(id, ttl))
            .collect();
        let resync = Arc::new(RevBatch {
            revision: self.meta.revision,
            events: Vec::new(),
            resync: true,
        });
        self.publish(vec![resync], effects);
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, StorageError> {
        read_snapshot_file(&self.snapshot_path)
            .map_err(|e| StorageIOError::read_snapshot(None, &AnyErr(e)).into())
    }
}

impl StateMachine {
    fn lease_list(&self) -> Result<Vec<(i64, i64)>, KvError> {
        let rx = self.shared.db.begin_read().map_err(storage)?;
        let t = rx.open_table(LEASES).map_err(storage)?;
        let mut out = Vec::new();
        for item in t.iter().map_err(storage)? {
            let (k, v) = item.map_err(storage)?;
            let rec: LeaseRec = decode(v.value()).map_err(KvError::Storage)?;
            out.push((k.value(), rec.ttl));
        }
        Ok(out)
    }
}

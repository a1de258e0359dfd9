//! The MVCC state machine in redb (`state.redb`), with etcd's revision semantics.
//!
//! - One cluster-wide revision, starting at 1 on an empty store, grows by one per write
//!   command that changes something (a put, a delete that deletes, a txn with such ops, a lease
//!   revoke that deletes keys). All changes of one command share that revision.
//! - Every key carries `create_revision`, `mod_revision` and `version` (puts since creation).
//! - History: the events of each revision (with the previous value) are kept until compaction;
//!   they feed watches and reads at past revisions.
//! - Applying never fails on bad requests: an invalid command (missing lease, compacted
//!   revision, ...) is decided identically on every replica and returns
//!   [`Reply::Error`](crate::types::Reply::Error).
//!
//! Durability: applies commit without fsync (`Durability::None`); the Raft log is the
//! durable record. Before a snapshot is built (after which the log may be purged) the state
//! is committed with fsync, so on restart the state on disk plus the log still hold every
//! applied write, and openraft re-applies the committed suffix.
//!
//! The parts, one file each under `state/`:
//! - `read.rs`: Range on the applied keys, at the current or a past revision.
//! - `write.rs`: the writes of one command (put, delete, txn) and the revisions they make.
//! - `history.rs`: the events of each revision, kept for watches and past reads until
//!   compaction, and compaction itself.
//! - `lease.rs`: leases: their keys in the state, their deadlines in memory ([`Lessor`]).
//! - `apply.rs`: applying a batch of log entries in one redb transaction, command by command.
//! - `control.rs`: applying the control commands: auth, alarms, member attributes.
//! - `machine.rs`: openraft's `RaftStateMachine` on top, and publishing to readers.
//! - `snapshot.rs`: snapshot images and the `snapshot.bin` file.
//! - `validate.rs`: what a command must pass before it is proposed.
//!
//! This file holds the tables, the state kept beside the keys, and opening the state file.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, AtomicU64};
use std::sync::{Arc, Mutex, RwLock};

use openraft::StorageIOError;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition, WriteTransaction};
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;

use crate::auth::AuthState;
use crate::error::KvError;
use crate::log_store::{AnyErr, seal, unseal};
use crate::proto::etcdserverpb as pb;
use crate::proto::mvccpb::Event;
use crate::quota::Alarms;
use crate::types::{LogId, StorageError, StoredMembership};

mod apply;
mod control;
mod history;
mod lease;
mod machine;
mod read;
mod snapshot;
mod validate;
mod write;

use lease::LeaseRec;
pub use lease::{Lessor, MAX_LEASE_TTL};
pub use read::KeyRange;
pub use snapshot::{SnapshotBuilder, verify_snapshot_file};
pub use validate::{MAX_TXN_OPS, validate};

const KV: TableDefinition<&[u8], &[u8]> = TableDefinition::new("kv");
const HIST: TableDefinition<i64, &[u8]> = TableDefinition::new("hist");
const LEASES: TableDefinition<i64, &[u8]> = TableDefinition::new("leases");
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
const META_SM: &str = "sm";
/// The replicated [`Control`] state, written only when it changes.
const META_CONTROL: &str = "control";

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

        let Loaded { meta, leases, ctl } = load(&db, &name)?;
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

/// What a state file holds besides keys and history, as [`load`] reads it.
struct Loaded {
    meta: SmMeta,
    /// `(id, TTL)` of every lease.
    leases: Vec<(i64, i64)>,
    ctl: Control,
}

/// The meta, lease TTLs and control state of a state file being opened. Every key and every
/// revision of history is checked on the way: a damaged value stops the node here, not a
/// read at some later time.
fn load(db: &Database, name: &str) -> Result<Loaded, StateOpenError> {
    let open = |detail: String| StateOpenError::Open {
        path: name.to_owned(),
        detail,
    };
    let corrupt = |detail: String| StateOpenError::Corrupt {
        path: name.to_owned(),
        detail,
    };
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
    let kv = rx.open_table(KV).map_err(|e| open(e.to_string()))?;
    for item in kv.iter().map_err(|e| open(e.to_string()))? {
        let (k, v) = item.map_err(|e| open(e.to_string()))?;
        unseal(v.value())
            .map_err(|d| corrupt(format!("key {:?}: {d}", String::from_utf8_lossy(k.value()))))?;
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
    Ok(Loaded { meta, leases, ctl })
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

fn io_err(e: impl std::fmt::Display) -> StorageError {
    StorageIOError::write_state_machine(&AnyErr(e.to_string())).into()
}

pub(crate) fn header(revision: i64) -> pb::ResponseHeader {
    pb::ResponseHeader {
        revision,
        ..Default::default()
    }
}

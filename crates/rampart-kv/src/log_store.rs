//! The Raft log and vote in redb (`raft-log.redb`).
//!
//! Rules openraft relies on, and how this store keeps them:
//! - An appended entry is durable before the flush callback fires: every append is one redb
//!   transaction committed with `Durability::Immediate` (fsync).
//! - The vote is durable before `save_vote` returns (same).
//! - Entries are contiguous from `last_purged + 1` to the last index; `truncate` removes a
//!   suffix, `purge` a prefix, and `purge` records the purged id first so that a crash
//!   between the two steps never loses track of it.
//!
//! Every value carries a CRC-32 of its bytes. On open the whole log is checked (checksums and
//! contiguity); a damaged or truncated file makes the node refuse to start with the failing
//! index named, instead of silently dropping entries.

use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::path::Path;
use std::sync::Arc;

use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{OptionalSend, RaftLogReader, StorageIOError, Vote};
use redb::{
    Database, Durability, ReadableDatabase, ReadableTable, TableDefinition, WriteTransaction,
};

use crate::types::{Entry, LogId, StorageError, TypeConfig};

const LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("log");
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
const VOTE: &str = "vote";
const COMMITTED: &str = "committed";
const PURGED: &str = "last_purged";

/// Why a log file cannot be used; the node refuses to start.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("cannot open the Raft log {path}: {source} (the file is damaged or not a log)")]
    Open {
        path: String,
        #[source]
        source: redb::DatabaseError,
    },
    #[error(
        "the Raft log {path} is damaged at {what}: {detail}; refusing to start rather than drop data"
    )]
    Corrupt {
        path: String,
        what: String,
        detail: String,
    },
    #[error("cannot read the Raft log {path}: {detail}")]
    Io { path: String, detail: String },
}

/// Prefix `bytes` with their CRC-32.
pub(crate) fn seal(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(bytes.len() + 4);
    out.extend_from_slice(&crc32fast::hash(bytes).to_le_bytes());
    out.extend_from_slice(bytes);
    out
}

/// Check and strip the CRC-32 written by [`seal`].
pub(crate) fn unseal(sealed: &[u8]) -> Result<&[u8], String> {
    let Some((crc, body)) = sealed.split_first_chunk::<4>() else {
        return Err(format!("value of {} bytes is too short", sealed.len()));
    };
    let want = u32::from_le_bytes(*crc);
    let got = crc32fast::hash(body);
    if want == got {
        Ok(body)
    } else {
        Err(format!(
            "checksum mismatch (stored {want:08x}, computed {got:08x})"
        ))
    }
}

fn decode<T: serde::de::DeserializeOwned>(sealed: &[u8]) -> Result<T, String> {
    let body = unseal(sealed)?;
    postcard::from_bytes(body).map_err(|e| format!("undecodable value: {e}"))
}

fn encode<T: serde::Serialize>(v: &T) -> Result<Vec<u8>, String> {
    postcard::to_stdvec(v)
        .map(|b| seal(&b))
        .map_err(|e| e.to_string())
}

#[derive(Clone)]
pub struct LogStore {
    db: Arc<Database>,
}

impl Debug for LogStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LogStore")
    }
}

impl LogStore {
    /// Open (or create) the log at `path` and verify every entry.
    pub fn open(path: &Path) -> Result<Self, OpenError> {
        let name = path.display().to_string();
        let db = Database::create(path).map_err(|source| OpenError::Open {
            path: name.clone(),
            source,
        })?;
        let io = |e: &dyn std::fmt::Display| OpenError::Io {
            path: name.clone(),
            detail: e.to_string(),
        };
        // Create the tables on a fresh file.
        let tx = db.begin_write().map_err(|e| io(&e))?;
        tx.open_table(LOG).map_err(|e| io(&e))?;
        tx.open_table(META).map_err(|e| io(&e))?;
        tx.commit().map_err(|e| io(&e))?;

        let store = LogStore { db: Arc::new(db) };
        store.verify(&name)?;
        Ok(store)
    }

    fn verify(&self, name: &str) -> Result<(), OpenError> {
        let corrupt = |what: String, detail: String| OpenError::Corrupt {
            path: name.to_string(),
            what,
            detail,
        };
        let io = |e: &dyn std::fmt::Display| OpenError::Io {
            path: name.to_string(),
            detail: e.to_string(),
        };
        let tx = self.db.begin_read().map_err(|e| io(&e))?;
        let meta = tx.open_table(META).map_err(|e| io(&e))?;
        for key in [VOTE, COMMITTED, PURGED] {
            if let Some(v) = meta.get(key).map_err(|e| io(&e))? {
                unseal(v.value()).map_err(|d| corrupt(format!("'{key}'"), d))?;
            }
        }
        let purged: Option<LogId> = match meta.get(PURGED).map_err(|e| io(&e))? {
            Some(v) => decode(v.value()).map_err(|d| corrupt("'last_purged'".into(), d))?,
            None => None,
        };
        let log = tx.open_table(LOG).map_err(|e| io(&e))?;
        let mut expect = purged.map(|p| p.index + 1);
        for item in log.iter().map_err(|e| io(&e))? {
            let (k, v) = item.map_err(|e| io(&e))?;
            let index = k.value();
            let entry: Entry =
                decode(v.value()).map_err(|d| corrupt(format!("log index {index}"), d))?;
            if entry.log_id.index != index {
                return Err(corrupt(
                    format!("log index {index}"),
                    format!("entry claims index {}", entry.log_id.index),
                ));
            }
            if let Some(e) = expect
                && e != index
            {
                return Err(corrupt(
                    format!("log index {e}"),
                    format!("entry missing (next present index is {index})"),
                ));
            }
            expect = Some(index + 1);
        }
        Ok(())
    }

    fn meta<T: serde::de::DeserializeOwned>(&self, key: &str) -> Result<Option<T>, StorageError> {
        let read = |e: &dyn std::error::Error| StorageIOError::<u64>::read(&AnyErr(e.to_string()));
        let tx = self.db.begin_read().map_err(|e| read(&e))?;
        let t = tx.open_table(META).map_err(|e| read(&e))?;
        match t.get(key).map_err(|e| read(&e))? {
            Some(v) => {
                let val: T = decode(v.value()).map_err(|d| StorageIOError::read(&AnyErr(d)))?;
                Ok(Some(val))
            }
            None => Ok(None),
        }
    }

    /// Run `f` in one write transaction on the blocking pool and commit it with `durability`
    /// (`Immediate` fsyncs before returning).
    async fn write<F>(&self, durability: Durability, f: F) -> Result<(), String>
    where
        F: FnOnce(&WriteTransaction) -> Result<(), redb::Error> + Send + 'static,
    {
        let db = self.db.clone();
        tokio::task::spawn_blocking(move || -> Result<(), String> {
            let mut tx = db.begin_write().map_err(|e| e.to_string())?;
            tx.set_durability(durability).map_err(|e| e.to_string())?;
            f(&tx).map_err(|e| e.to_string())?;
            tx.commit().map_err(|e| e.to_string())
        })
        .await
        .map_err(|e| e.to_string())?
    }

    fn last_entry_id(&self) -> Result<Option<LogId>, StorageError> {
        let read =
            |e: &dyn std::error::Error| StorageIOError::<u64>::read_logs(&AnyErr(e.to_string()));
        let tx = self.db.begin_read().map_err(|e| read(&e))?;
        let t = tx.open_table(LOG).map_err(|e| read(&e))?;
        match t.last().map_err(|e| read(&e))? {
            Some((_, v)) => {
                let e: Entry =
                    decode(v.value()).map_err(|d| StorageIOError::read_logs(&AnyErr(d)))?;
                Ok(Some(e.log_id))
            }
            None => Ok(None),
        }
    }
}

/// A plain error carrying a message, for openraft's `AnyError` wrappers.
#[derive(Debug)]
pub(crate) struct AnyErr(pub(crate) String);

impl std::fmt::Display for AnyErr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for AnyErr {}

fn to_bounds<RB: RangeBounds<u64>>(range: &RB) -> (u64, Option<u64>) {
    let start = match range.start_bound() {
        Bound::Included(&s) => s,
        Bound::Excluded(&s) => s.saturating_add(1),
        Bound::Unbounded => 0,
    };
    let end = match range.end_bound() {
        Bound::Included(&e) => Some(e.saturating_add(1)),
        Bound::Excluded(&e) => Some(e),
        Bound::Unbounded => None,
    };
    (start, end)
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        let read = |e: String| StorageIOError::<u64>::read_logs(&AnyErr(e));
        let (start, end) = to_bounds(&range);
        let tx = self.db.begin_read().map_err(|e| read(e.to_string()))?;
        let t = tx.open_table(LOG).map_err(|e| read(e.to_string()))?;
        let iter = match end {
            Some(end) if end <= start => return Ok(Vec::new()),
            Some(end) => t.range(start..end),
            None => t.range(start..),
        }
        .map_err(|e| read(e.to_string()))?;
        let mut out = Vec::new();
        for item in iter {
            let (_, v) = item.map_err(|e| read(e.to_string()))?;
            out.push(decode::<Entry>(v.value()).map_err(read)?);
        }
        Ok(out)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        let last_purged: Option<LogId> = self.meta(PURGED)?.flatten();
        let last = self.last_entry_id()?.or(last_purged);
        Ok(LogState {
            last_purged_log_id: last_purged,
            last_log_id: last,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<u64>) -> Result<(), StorageError> {
        let bytes = encode(vote).map_err(|e| StorageIOError::write_vote(&AnyErr(e)))?;
        self.write(Durability::Immediate, move |tx| {
            tx.open_table(META)?.insert(VOTE, bytes.as_slice())?;
            Ok(())
        })
        .await
        .map_err(|e| StorageIOError::write_vote(&AnyErr(e)).into())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<u64>>, StorageError> {
        self.meta(VOTE)
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError> {
        // Not fsynced on its own: it only speeds up recovery (the committed prefix is re-applied
        // at start-up), and a lost value is recomputed by the leader.
        let bytes = encode(&committed).map_err(|e| StorageIOError::write(&AnyErr(e)))?;
        self.write(Durability::None, move |tx| {
            tx.open_table(META)?.insert(COMMITTED, bytes.as_slice())?;
            Ok(())
        })
        .await
        .map_err(|e| StorageIOError::write(&AnyErr(e)).into())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, StorageError> {
        Ok(self.meta::<Option<LogId>>(COMMITTED)?.flatten())
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut batch = Vec::new();
        for e in entries {
            let bytes = encode(&e).map_err(|m| StorageIOError::write_logs(&AnyErr(m)))?;
            batch.push((e.log_id.index, bytes));
        }
        let result = self
            .write(Durability::Immediate, move |tx| {
                let mut t = tx.open_table(LOG)?;
                for (index, bytes) in &batch {
                    t.insert(*index, bytes.as_slice())?;
                }
                Ok(())
            })
            .await;
        match result {
            Ok(()) => {
                callback.log_io_completed(Ok(()));
                Ok(())
            }
            Err(e) => {
                // A full disk lands here: an error for openraft to stop on, never a panic.
                callback.log_io_completed(Err(std::io::Error::other(e.clone())));
                Err(StorageIOError::write_logs(&AnyErr(e)).into())
            }
        }
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        self.write(Durability::Immediate, move |tx| {
            tx.open_table(LOG)?
                .retain_in(log_id.index.., |_, _| false)?;
            Ok(())
        })
        .await
        .map_err(|e| StorageIOError::write_logs(&AnyErr(e)).into())
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        let bytes = encode(&Some(log_id)).map_err(|e| StorageIOError::write_logs(&AnyErr(e)))?;
        // The purged id is recorded in the same transaction that drops the entries.
        self.write(Durability::Immediate, move |tx| {
            tx.open_table(META)?.insert(PURGED, bytes.as_slice())?;
            tx.open_table(LOG)?
                .retain_in(..=log_id.index, |_, _| false)?;
            Ok(())
        })
        .await
        .map_err(|e| StorageIOError::write_logs(&AnyErr(e)).into())
    }
}

//! Snapshots of the state machine: the self-contained image (keys, history, leases, meta,
//! auth and alarms), building it from a consistent read, loading it, and the `snapshot.bin` file that
//! keeps the newest one across restarts.

use std::io::Cursor;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use openraft::storage::Snapshot;
use openraft::{RaftSnapshotBuilder, SnapshotMeta, StorageIOError};
use redb::{Database, Durability, ReadableDatabase, ReadableTable};
use serde::{Deserialize, Serialize};

use super::{
    Control, HIST, KV, LEASES, META, META_CONTROL, Shared, SmMeta, StateOpenError, decode, encode,
    io_err, storage, write_control, write_meta,
};
use crate::error::KvError;
use crate::log_store::AnyErr;
use crate::types::{Member, StorageError, TypeConfig};

/// A self-contained image of the state, for snapshots.
#[derive(Serialize, Deserialize)]
pub(super) struct Image {
    pub(super) meta: SmMeta,
    pub(super) kv: Vec<(Vec<u8>, Vec<u8>)>,
    pub(super) hist: Vec<(i64, Vec<u8>)>,
    pub(super) leases: Vec<(i64, Vec<u8>)>,
    pub(super) ctl: Control,
}

/// The image before auth existed: snapshots written by older versions still install.
#[derive(Deserialize)]
struct ImageV1 {
    meta: SmMeta,
    kv: Vec<(Vec<u8>, Vec<u8>)>,
    hist: Vec<(i64, Vec<u8>)>,
    leases: Vec<(i64, Vec<u8>)>,
}

pub(super) fn decode_image(data: &[u8]) -> Result<Image, String> {
    decode::<Image>(data).or_else(|e| {
        decode::<ImageV1>(data).map_err(|_| e).map(|v1| Image {
            meta: v1.meta,
            kv: v1.kv,
            hist: v1.hist,
            leases: v1.leases,
            ctl: Control::default(),
        })
    })
}

pub(super) fn load_image(db: &Database, image: &Image) -> Result<(), KvError> {
    let mut tx = db.begin_write().map_err(storage)?;
    tx.set_durability(Durability::Immediate).map_err(storage)?;
    {
        let mut kv = tx.open_table(KV).map_err(storage)?;
        kv.retain(|_, _| false).map_err(storage)?;
        for (k, v) in &image.kv {
            kv.insert(k.as_slice(), v.as_slice()).map_err(storage)?;
        }
        let mut hist = tx.open_table(HIST).map_err(storage)?;
        hist.retain(|_, _| false).map_err(storage)?;
        for (k, v) in &image.hist {
            hist.insert(*k, v.as_slice()).map_err(storage)?;
        }
        let mut leases = tx.open_table(LEASES).map_err(storage)?;
        leases.retain(|_, _| false).map_err(storage)?;
        for (k, v) in &image.leases {
            leases.insert(*k, v.as_slice()).map_err(storage)?;
        }
    }
    write_meta(&tx, &image.meta)?;
    write_control(&tx, &image.ctl)?;
    tx.commit().map_err(storage)?;
    Ok(())
}

/// Builds snapshots from a consistent read of the state.
#[derive(Debug)]
pub struct SnapshotBuilder {
    pub(super) db: Arc<Database>,
    pub(super) path: PathBuf,
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError> {
        let db = self.db.clone();
        let path = self.path.clone();
        tokio::task::spawn_blocking(move || build_snapshot(&db, &path))
            .await
            .map_err(io_err)?
            .map_err(|e| StorageIOError::write_snapshot(None, &AnyErr(e.to_string())).into())
    }
}

pub(super) fn build_snapshot(db: &Database, path: &Path) -> Result<Snapshot<TypeConfig>, KvError> {
    // Make every earlier (non-durable) apply durable first: once this snapshot exists the
    // log before it may be purged, and the state on disk must not be older than it.
    let mut tx = db.begin_write().map_err(storage)?;
    tx.set_durability(Durability::Immediate).map_err(storage)?;
    tx.commit().map_err(storage)?;

    let rx = db.begin_read().map_err(storage)?;
    let meta_table = rx.open_table(META).map_err(storage)?;
    let meta = Shared::read_meta(&meta_table)?;
    let ctl = match meta_table.get(META_CONTROL).map_err(storage)? {
        Some(v) => decode(v.value()).map_err(KvError::Storage)?,
        None => Control::default(),
    };
    let mut image = Image {
        meta,
        ctl,
        kv: Vec::new(),
        hist: Vec::new(),
        leases: Vec::new(),
    };
    for item in rx
        .open_table(KV)
        .map_err(storage)?
        .iter()
        .map_err(storage)?
    {
        let (k, v) = item.map_err(storage)?;
        image.kv.push((k.value().to_vec(), v.value().to_vec()));
    }
    for item in rx
        .open_table(HIST)
        .map_err(storage)?
        .iter()
        .map_err(storage)?
    {
        let (k, v) = item.map_err(storage)?;
        image.hist.push((k.value(), v.value().to_vec()));
    }
    for item in rx
        .open_table(LEASES)
        .map_err(storage)?
        .iter()
        .map_err(storage)?
    {
        let (k, v) = item.map_err(storage)?;
        image.leases.push((k.value(), v.value().to_vec()));
    }
    let data = encode(&image)?;
    let last = image.meta.applied;
    let snapshot_id = match last {
        Some(l) => format!("{}-{}-{}", l.leader_id.term, l.index, image.meta.revision),
        None => format!("0-0-{}", image.meta.revision),
    };
    let meta = SnapshotMeta {
        last_log_id: last,
        last_membership: image.meta.membership.clone(),
        snapshot_id,
    };
    write_snapshot_file(path, &meta, &data).map_err(KvError::Storage)?;
    Ok(Snapshot {
        meta,
        snapshot: Box::new(Cursor::new(data)),
    })
}

#[derive(Serialize, Deserialize)]
struct SnapshotFile {
    meta: SnapshotMeta<u64, Member>,
    data: Vec<u8>,
}

pub(super) fn write_snapshot_file(
    path: &Path,
    meta: &SnapshotMeta<u64, Member>,
    data: &[u8],
) -> Result<(), String> {
    use std::io::Write;
    let file = SnapshotFile {
        meta: meta.clone(),
        data: data.to_vec(),
    };
    let bytes = encode(&file).map_err(|e| e.to_string())?;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::File::create(&tmp).map_err(|e| format!("{}: {e}", tmp.display()))?;
    f.write_all(&bytes)
        .and_then(|()| f.sync_all())
        .map_err(|e| format!("{}: {e}", tmp.display()))?;
    std::fs::rename(&tmp, path).map_err(|e| format!("{}: {e}", path.display()))?;
    if let Some(dir) = path.parent()
        && let Ok(d) = std::fs::File::open(dir)
    {
        let _ = d.sync_all();
    }
    Ok(())
}

pub(super) fn read_snapshot_file(path: &Path) -> Result<Option<Snapshot<TypeConfig>>, String> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("{}: {e}", path.display())),
    };
    let file: SnapshotFile = decode(&bytes).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(Some(Snapshot {
        meta: file.meta,
        snapshot: Box::new(Cursor::new(file.data)),
    }))
}

/// Check a snapshot file at start-up: a damaged one stops the node.
pub fn verify_snapshot_file(dir: &Path) -> Result<(), StateOpenError> {
    let path = dir.join("snapshot.bin");
    read_snapshot_file(&path)
        .map(|_| ())
        .map_err(|detail| StateOpenError::Corrupt {
            path: path.display().to_string(),
            detail,
        })
}

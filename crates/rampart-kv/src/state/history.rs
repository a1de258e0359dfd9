//! Revision history: the events of every revision since the last compaction, with the
//! previous value of each key. Watches replay it; reads at a past revision undo it from the
//! current keys. Compaction drops what is older, on request or to keep a retention window.

use std::collections::BTreeMap;

use redb::{ReadableDatabase, ReadableTable};

use super::read::scan;
use super::write::Writer;
use super::{HIST, KeyRange, META, RevEvents, Shared, decode, storage};
use crate::error::KvError;
use crate::proto::mvccpb::{Event, KeyValue};

/// The keys of `r` as they were at revision `at` (≤ `current`), by undoing later history.
pub(super) fn scan_at<T, H>(
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

impl Shared {
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
}

impl Writer<'_> {
    pub(super) fn compact(&mut self, rev: i64) -> Result<(), KvError> {
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

    /// Keep `retention` revisions of history: compact in steps of a tenth of the window,
    /// not on every write. Deterministic, so every replica compacts alike.
    pub(super) fn auto_compact(&mut self, retention: i64) -> Result<(), KvError> {
        if retention > 0 {
            let target = self.meta.revision - retention;
            if target - self.meta.compact_revision > retention / 10 {
                self.compact(target)?;
            }
        }
        Ok(())
    }
}

//! Reads of the applied keys: etcd's key ranges, and Range at the current revision (a
//! windowed scan that keeps only `limit` values) or at a past one (see `history.rs`).

use std::sync::Arc;
use std::sync::atomic::Ordering;

use redb::{ReadableDatabase, ReadableTable};

use super::history::scan_at;
use super::{HIST, KV, META, Shared, decode, header, storage};
use crate::auth::AuthState;
use crate::error::KvError;
use crate::proto::etcdserverpb as pb;
use crate::proto::mvccpb::KeyValue;
use crate::quota::Alarms;

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

pub(super) fn scan<T>(kv: &T, r: &KeyRange<'_>) -> Result<Vec<KeyValue>, KvError>
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

pub(super) fn decode_kv(sealed: &[u8]) -> Result<KeyValue, KvError> {
    decode(sealed).map_err(KvError::Storage)
}

pub(super) fn range_on<T, H>(
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
        let filter = filtered.then_some(&filter as &dyn Fn(&KeyValue) -> bool);
        return range_window(kv, &r, req, current, filter);
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

/// A Range at the current revision in key order, through [`scan_window`].
fn range_window<T>(
    kv: &T,
    r: &KeyRange<'_>,
    req: &pb::RangeRequest,
    current: i64,
    filter: Option<&dyn Fn(&KeyValue) -> bool>,
) -> Result<pb::RangeResponse, KvError>
where
    T: ReadableTable<&'static [u8], &'static [u8]>,
{
    let keep = if req.count_only {
        0
    } else if req.limit > 0 {
        usize::try_from(req.limit).unwrap_or(usize::MAX)
    } else {
        usize::MAX
    };
    let descend = req.sort_order == pb::range_request::SortOrder::Descend as i32;
    let (mut kvs, count) = scan_window(kv, r, keep, descend, filter)?;
    if req.keys_only {
        for kv in &mut kvs {
            kv.value.clear();
        }
    }
    Ok(pb::RangeResponse {
        header: Some(header(current)),
        more: req.limit > 0 && count > req.limit,
        kvs,
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

impl Shared {
    /// A Range on this node's applied state (the caller has made it linearizable if needed).
    pub fn range(&self, req: &pb::RangeRequest) -> Result<pb::RangeResponse, KvError> {
        let rx = self.db.begin_read().map_err(storage)?;
        let meta = Self::read_meta(&rx.open_table(META).map_err(storage)?)?;
        let (current, compacted) = (meta.revision, meta.compact_revision);
        let kv = rx.open_table(KV).map_err(storage)?;
        let hist = rx.open_table(HIST).map_err(storage)?;
        range_on(&kv, &hist, req, current, compacted)
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

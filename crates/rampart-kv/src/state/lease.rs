//! Leases: each lease's TTL and attached keys live in the `leases` table (replicated); the
//! deadlines live in memory in the [`Lessor`] of every node, and only the leader acts on
//! them (by proposing a revoke).

use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, Instant};

use redb::{ReadableDatabase, ReadableTable};
use serde::{Deserialize, Serialize};

use super::write::Writer;
use super::{LEASES, Shared, StateMachine, decode, encode, header, storage};
use crate::error::KvError;
use crate::proto::etcdserverpb as pb;
use crate::proto::mvccpb::{Event, KeyValue, event::EventType};

/// Largest lease TTL etcd accepts, in seconds.
pub const MAX_LEASE_TTL: i64 = 9_000_000_000;

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(super) struct LeaseRec {
    pub(super) ttl: i64,
    pub(super) keys: BTreeSet<Vec<u8>>,
}

/// Lease deadlines. Only the leader expires leases (through the log); every node tracks
/// deadlines so that a new leader starts from fresh ones, as etcd does.
#[derive(Debug, Default)]
pub struct Lessor {
    leases: HashMap<i64, (i64, Instant)>,
}

impl Lessor {
    pub(super) fn grant(&mut self, id: i64, ttl: i64) {
        self.leases.insert(id, (ttl, Instant::now() + secs(ttl)));
    }

    pub(super) fn revoke(&mut self, id: i64) {
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

pub(super) enum LeaseEffect {
    Grant(i64, i64),
    Revoke(i64),
}

impl Shared {
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
}

impl Writer<'_> {
    pub(super) fn lease(&self, id: i64) -> Result<Option<LeaseRec>, KvError> {
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

    pub(super) fn attach(&mut self, lease: i64, key: &[u8], attach: bool) -> Result<(), KvError> {
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

    pub(super) fn lease_grant(
        &mut self,
        id: i64,
        ttl: i64,
    ) -> Result<pb::LeaseGrantResponse, KvError> {
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

    pub(super) fn lease_revoke(&mut self, id: i64) -> Result<pb::LeaseRevokeResponse, KvError> {
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

    pub(super) fn fresh_lease_id(&self, index: u64) -> i64 {
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

impl StateMachine {
    pub(super) fn lease_list(&self) -> Result<Vec<(i64, i64)>, KvError> {
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

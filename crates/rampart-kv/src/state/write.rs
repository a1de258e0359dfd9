//! The writes of one command, inside the apply's redb transaction: put, delete and txn with
//! etcd's rules. Every change of a command gets the next revision; its events are recorded
//! in history when the command finishes, and dropped if it fails.

use std::sync::Arc;

use redb::{ReadableTable, Table};

use super::lease::LeaseEffect;
use super::read::{decode_kv, range_on, scan};
use super::{Control, KeyRange, RevBatch, SmMeta, encode, header, storage};
use crate::error::KvError;
use crate::proto::etcdserverpb::{self as pb, compare, request_op, response_op};
use crate::proto::mvccpb::{Event, KeyValue, event::EventType};

/// One apply's view of the state: its open tables and the state kept beside the keys, and
/// what the commands applied so far produced. The other files of `state/` add the lease,
/// history, control and dispatch methods.
pub(super) struct Writer<'t> {
    pub(super) kv: Table<'t, &'static [u8], &'static [u8]>,
    pub(super) hist: Table<'t, i64, &'static [u8]>,
    pub(super) leases: Table<'t, i64, &'static [u8]>,
    pub(super) meta: &'t mut SmMeta,
    pub(super) ctl: &'t mut Control,
    pub(super) ctl_changed: bool,
    /// Events of the command being applied (they all get revision `meta.revision + 1`).
    pub(super) pending: Vec<Event>,
    pub(super) published: Vec<Arc<RevBatch>>,
    pub(super) lease_effects: Vec<LeaseEffect>,
}

impl Writer<'_> {
    pub(super) fn next_rev(&self) -> i64 {
        self.meta.revision + 1
    }

    pub(super) fn get(&self, key: &[u8]) -> Result<Option<KeyValue>, KvError> {
        match self.kv.get(key).map_err(storage)? {
            Some(v) => Ok(Some(decode_kv(v.value())?)),
            None => Ok(None),
        }
    }

    /// Close the current command: record its events under the next revision.
    pub(super) fn finish(&mut self) -> Result<(), KvError> {
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

    pub(super) fn abort(&mut self) {
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

    pub(super) fn put(&mut self, req: &pb::PutRequest) -> Result<pb::PutResponse, KvError> {
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

    pub(super) fn delete(
        &mut self,
        req: &pb::DeleteRangeRequest,
    ) -> Result<pb::DeleteRangeResponse, KvError> {
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

    pub(super) fn txn(&mut self, t: &pb::TxnRequest) -> Result<pb::TxnResponse, KvError> {
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

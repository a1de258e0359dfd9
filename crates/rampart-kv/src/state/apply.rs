//! Applying committed log entries: one redb transaction (without fsync) per batch, each
//! command applied in log order, the membership and cluster id recorded, history compacted
//! to the retention window.

use std::sync::Arc;

use openraft::EntryPayload;
use redb::{Database, Durability};

use super::lease::LeaseEffect;
use super::write::Writer;
use super::{
    Control, HIST, KV, LEASES, RevBatch, SmMeta, header, storage, write_control, write_meta,
};
use crate::error::KvError;
use crate::proto::etcdserverpb as pb;
use crate::quota;
use crate::types::{Command, Entry, Reply, StoredMembership};

impl Writer<'_> {
    /// Apply one command; an error leaves no trace (checks run before any write).
    fn command(&mut self, cmd: &Command, index: u64) -> Reply {
        if let Command::As {
            user,
            auth_revision,
            cmd,
        } = cmd
        {
            if let Err(e) = self.recheck_as(user, *auth_revision, cmd) {
                return Reply::Error(e);
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
            } => Ok(self.set_member_attrs(*id, name, client_urls)),
            Command::Auth(a) => self.auth(a),
            Command::Alarm(a) => Ok(self.alarm(a)),
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
}

/// What applying a batch produced, for the caller to publish after the commit.
pub(super) struct Applied {
    pub(super) replies: Vec<Reply>,
    pub(super) published: Vec<Arc<RevBatch>>,
    pub(super) effects: Vec<LeaseEffect>,
}

pub(super) fn apply_batch(
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

//! etcd's space quota and alarms (`--quota-backend-bytes`, `etcdctl alarm list|disarm`).
//!
//! Alarms are replicated state (raised and cleared through the Raft log), so every node
//! refuses the same writes and an alarm survives restarts, as in etcd. While NOSPACE is
//! raised, commands that add data (Put, a Txn with a put anywhere in it, LeaseGrant) are
//! refused at apply with `etcdserver: mvcc: database space exceeded`; deletes, compaction
//! and reads go on, so an operator can free space, raise the quota and disarm.
//!
//! The node that receives a write raises NOSPACE when its state file plus the request would
//! pass the quota (etcd's quota check). The file does not shrink when keys are deleted
//! (redb reuses its pages, it does not return them), like etcd's bbolt before a defrag.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use crate::proto::etcdserverpb::{self as pb, request_op};
use crate::types::{AlarmCommand, Command};

/// etcd's default quota: 2 GiB.
pub const DEFAULT_QUOTA_BYTES: u64 = 2 << 30;

/// etcd's `AlarmType` numbering.
pub const NOSPACE: i32 = 1;

/// Raised alarms: `(member id, alarm type)`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Alarms(pub BTreeSet<(u64, i32)>);

impl Alarms {
    pub fn nospace(&self) -> bool {
        self.0.iter().any(|(_, a)| *a == NOSPACE)
    }

    /// Apply a change; whether anything changed.
    pub fn apply(&mut self, cmd: &AlarmCommand) -> bool {
        match cmd {
            AlarmCommand::Activate { member, alarm } => self.0.insert((*member, *alarm)),
            AlarmCommand::Deactivate { member, alarm } => self.0.remove(&(*member, *alarm)),
        }
    }

    pub fn list(&self) -> Vec<pb::AlarmMember> {
        self.0
            .iter()
            .map(|(member_id, alarm)| pb::AlarmMember {
                member_id: *member_id,
                alarm: *alarm,
            })
            .collect()
    }

    /// etcd's `Status.errors` lines.
    pub fn describe(&self) -> Vec<String> {
        self.0
            .iter()
            .map(|(m, a)| {
                let name = match *a {
                    NOSPACE => "NOSPACE",
                    2 => "CORRUPT",
                    _ => "NONE",
                };
                format!("memberID:{m} alarm:{name} ")
            })
            .collect()
    }
}

/// The bytes `cmd` may add to the store (its requests' encoded size), for the quota check.
pub fn cost(cmd: &Command) -> u64 {
    use prost::Message;
    let n = match cmd {
        Command::Put(p) => p.encoded_len(),
        Command::Txn(t) => t.encoded_len(),
        Command::Batch(cmds) => return cmds.iter().map(cost).sum(),
        Command::As { cmd, .. } => return cost(cmd),
        _ => 64,
    };
    u64::try_from(n).unwrap_or(u64::MAX)
}

/// Whether `cmd` adds data, and so is refused while NOSPACE is raised (etcd's capped
/// applier: puts, txns with a put, lease grants).
pub fn adds_data(cmd: &Command) -> bool {
    fn ops_put(ops: &[pb::RequestOp]) -> bool {
        ops.iter().any(|op| match &op.request {
            Some(request_op::Request::RequestPut(_)) => true,
            Some(request_op::Request::RequestTxn(t)) => txn_puts(t),
            _ => false,
        })
    }
    fn txn_puts(t: &pb::TxnRequest) -> bool {
        ops_put(&t.success) || ops_put(&t.failure)
    }
    match cmd {
        Command::Put(_) | Command::LeaseGrant { .. } => true,
        Command::Txn(t) => txn_puts(t),
        Command::Batch(cmds) => cmds.iter().any(adds_data),
        Command::As { cmd, .. } => adds_data(cmd),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alarms_and_capped_commands() {
        let mut a = Alarms::default();
        assert!(!a.nospace());
        assert!(a.apply(&AlarmCommand::Activate {
            member: 7,
            alarm: NOSPACE
        }));
        assert!(a.nospace());
        assert_eq!(a.describe(), ["memberID:7 alarm:NOSPACE "]);
        assert!(a.apply(&AlarmCommand::Deactivate {
            member: 7,
            alarm: NOSPACE
        }));
        assert!(!a.nospace());
        let put = pb::RequestOp {
            request: Some(request_op::Request::RequestPut(pb::PutRequest::default())),
        };
        let nested = pb::TxnRequest {
            failure: vec![pb::RequestOp {
                request: Some(request_op::Request::RequestTxn(pb::TxnRequest {
                    success: vec![put],
                    ..Default::default()
                })),
            }],
            ..Default::default()
        };
        assert!(adds_data(&Command::Txn(nested)));
        assert!(!adds_data(&Command::Txn(pb::TxnRequest::default())));
        assert!(!adds_data(&Command::DeleteRange(Default::default())));
        assert!(!adds_data(&Command::Compact(Default::default())));
    }
}

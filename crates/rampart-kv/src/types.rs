//! The openraft type configuration: what a log entry carries and what applying it returns.

use std::fmt;
use std::io::Cursor;

use serde::{Deserialize, Serialize};

use crate::auth::AuthCommand;
use crate::error::KvError;
use crate::proto::etcdserverpb as pb;

/// A node as Raft's membership knows it. The peer URL is the identity: the node id is a hash
/// of it (as etcd derives member ids from peer URLs), so a node can compute its own id.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    pub name: String,
    pub peer_url: String,
}

impl fmt::Display for Member {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}={}", self.name, self.peer_url)
    }
}

/// A node id from its peer URL: FNV-1a over the URL, never zero (etcd treats 0 as "none").
pub fn member_id(peer_url: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in peer_url.trim_end_matches('/').bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h.max(1)
}

/// A write, as it travels through the Raft log. Every replica applies it deterministically.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Command {
    Put(pb::PutRequest),
    DeleteRange(pb::DeleteRangeRequest),
    Txn(pb::TxnRequest),
    Compact(pb::CompactionRequest),
    /// `id` 0 lets the state machine choose one (from the log index, so replicas agree).
    LeaseGrant {
        id: i64,
        ttl: i64,
    },
    LeaseRevoke {
        id: i64,
    },
    /// Writes proposed together (one log entry, one fsync); applied in order, each with its
    /// own revision and reply, exactly as if they had been proposed one by one.
    Batch(Vec<Command>),
    /// A node publishes its name and client URLs once it starts (as etcd members do).
    SetMemberAttrs {
        id: u64,
        name: String,
        client_urls: Vec<String>,
    },
    /// A change to users, roles or the auth switch (applied to the replicated auth state).
    Auth(AuthCommand),
    /// Raise or clear an alarm (etcd's Maintenance.Alarm; see `quota`).
    Alarm(AlarmCommand),
    /// A client's write while auth is on: `user` was allowed it under auth revision
    /// `auth_revision`. If the auth state changed before it is applied, every replica checks
    /// it again against the state at that point (etcd's rule), so a revoke ordered before a
    /// write always wins.
    As {
        user: String,
        auth_revision: u64,
        cmd: Box<Command>,
    },
}

/// An alarm change: `(member id, etcd's AlarmType)`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum AlarmCommand {
    Activate { member: u64, alarm: i32 },
    Deactivate { member: u64, alarm: i32 },
}

/// The result of applying one [`Command`]. Headers carry the revision; the serving node fills
/// in cluster id, member id and term.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Reply {
    Put(pb::PutResponse),
    DeleteRange(pb::DeleteRangeResponse),
    Txn(pb::TxnResponse),
    Compact(pb::CompactionResponse),
    LeaseGrant(pb::LeaseGrantResponse),
    LeaseRevoke(pb::LeaseRevokeResponse),
    /// Membership entries and member attributes.
    Done {
        revision: i64,
    },
    /// One reply per command of a [`Command::Batch`], in order.
    Batch(Vec<Reply>),
    Error(KvError),
}

openraft::declare_raft_types!(
    /// Rampart KV's Raft types.
    pub TypeConfig:
        D = Command,
        R = Reply,
        NodeId = u64,
        Node = Member,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = Cursor<Vec<u8>>,
        AsyncRuntime = openraft::TokioRuntime,
);

pub type Raft = openraft::Raft<TypeConfig>;
pub type LogId = openraft::LogId<u64>;
pub type StoredMembership = openraft::StoredMembership<u64, Member>;
pub type StorageError = openraft::StorageError<u64>;
pub type Entry = openraft::Entry<TypeConfig>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn member_ids_are_stable_and_nonzero() {
        assert_eq!(
            member_id("http://127.0.0.1:2380"),
            member_id("http://127.0.0.1:2380/")
        );
        assert_ne!(
            member_id("http://127.0.0.1:2380"),
            member_id("http://127.0.0.1:2381")
        );
        assert_ne!(member_id(""), 0);
    }
}

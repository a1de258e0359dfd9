//! Errors that etcd clients understand: each maps to the gRPC code and the exact message
//! etcd uses, because clientv3 recognises errors by their message text.

use serde::{Deserialize, Serialize};
use tonic::{Code, Status};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
pub enum KvError {
    #[error("etcdserver: key is not provided")]
    EmptyKey,
    #[error("etcdserver: key not found")]
    KeyNotFound,
    #[error("etcdserver: duplicate key given in txn request")]
    DuplicateKey,
    #[error("etcdserver: too many operations in txn request")]
    TooManyOps,
    #[error("etcdserver: mvcc: required revision has been compacted")]
    Compacted { compact_revision: i64 },
    #[error("etcdserver: mvcc: required revision is a future revision")]
    FutureRevision,
    #[error("etcdserver: requested lease not found")]
    LeaseNotFound,
    #[error("etcdserver: lease already exists")]
    LeaseExists,
    #[error("etcdserver: too large lease TTL")]
    LeaseTtlTooLarge,
    #[error("etcdserver: mvcc: database space exceeded")]
    NoSpace,
    #[error("etcdserver: request is too large")]
    RequestTooLarge,
    #[error("etcdserver: no leader")]
    NoLeader,
    #[error("etcdserver: request timed out")]
    Timeout,
    #[error("etcdserver: member not found")]
    MemberNotFound,
    #[error("etcdserver: Peer URLs already exists")]
    PeerUrlExists,
    #[error("etcdserver: can only promote a learner member")]
    MemberNotLearner,
    #[error("etcdserver: can only promote a learner member which is in sync with leader")]
    LearnerNotReady,
    #[error("etcdserver: re-configuration failed due to not enough started members")]
    NotEnoughStartedMembers,
    /// A membership change that the members reachable now could not commit.
    #[error("etcdserver: unhealthy cluster")]
    Unhealthy,
    #[error("etcdserver: user name is empty")]
    UserEmpty,
    #[error("etcdserver: user name already exists")]
    UserAlreadyExist,
    #[error("etcdserver: user name not found")]
    UserNotFound,
    #[error("etcdserver: role name is empty")]
    RoleEmpty,
    #[error("etcdserver: role name already exists")]
    RoleAlreadyExist,
    #[error("etcdserver: role name not found")]
    RoleNotFound,
    #[error("etcdserver: role is not granted to the user")]
    RoleNotGranted,
    #[error("etcdserver: permission is not granted to the role")]
    PermissionNotGranted,
    #[error("etcdserver: authentication failed, invalid user ID or password")]
    AuthFailed,
    #[error("etcdserver: authentication is not enabled")]
    AuthNotEnabled,
    #[error("etcdserver: invalid auth token")]
    InvalidAuthToken,
    #[error("etcdserver: invalid auth management")]
    InvalidAuthMgmt,
    #[error("etcdserver: root user does not exist")]
    RootUserNotExist,
    #[error("etcdserver: root user does not have root role")]
    RootRoleNotExist,
    #[error("etcdserver: permission denied")]
    PermissionDenied,
    #[error("etcdserver: invalid range: {0}")]
    BadRange(String),
    #[error("storage error: {0}")]
    Storage(String),
    #[error("etcdserver: {0}")]
    Internal(String),
}

impl KvError {
    pub fn code(&self) -> Code {
        match self {
            KvError::EmptyKey
            | KvError::KeyNotFound
            | KvError::DuplicateKey
            | KvError::TooManyOps
            | KvError::RequestTooLarge
            | KvError::UserEmpty
            | KvError::RoleEmpty
            | KvError::AuthFailed
            | KvError::InvalidAuthMgmt
            | KvError::BadRange(_) => Code::InvalidArgument,
            KvError::Compacted { .. } | KvError::FutureRevision | KvError::LeaseTtlTooLarge => {
                Code::OutOfRange
            }
            KvError::LeaseNotFound | KvError::MemberNotFound => Code::NotFound,
            KvError::LeaseExists
            | KvError::PeerUrlExists
            | KvError::MemberNotLearner
            | KvError::LearnerNotReady
            | KvError::NotEnoughStartedMembers
            | KvError::Unhealthy
            | KvError::UserAlreadyExist
            | KvError::UserNotFound
            | KvError::RoleAlreadyExist
            | KvError::RoleNotFound
            | KvError::RoleNotGranted
            | KvError::PermissionNotGranted
            | KvError::AuthNotEnabled
            | KvError::RootUserNotExist
            | KvError::RootRoleNotExist => Code::FailedPrecondition,
            KvError::PermissionDenied => Code::PermissionDenied,
            KvError::NoSpace => Code::ResourceExhausted,
            KvError::InvalidAuthToken => Code::Unauthenticated,
            KvError::NoLeader | KvError::Timeout => Code::Unavailable,
            KvError::Storage(_) | KvError::Internal(_) => Code::Internal,
        }
    }

    /// True when the request certainly did not take effect, so a client may send it again.
    pub fn safe_to_retry(&self) -> bool {
        matches!(self, KvError::NoLeader)
    }
}

impl From<KvError> for Status {
    fn from(e: KvError) -> Status {
        Status::new(e.code(), e.to_string())
    }
}

impl From<redb::Error> for KvError {
    fn from(e: redb::Error) -> KvError {
        KvError::Storage(e.to_string())
    }
}

macro_rules! redb_errors {
    ($($t:ty),*) => {$(
        impl From<$t> for KvError {
            fn from(e: $t) -> KvError {
                KvError::from(redb::Error::from(e))
            }
        }
    )*};
}
redb_errors!(
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError
);

//! Who may do what: etcd's authorization rules applied to requests and log commands.
//!
//! - Auth disabled: everything is allowed, as in etcd.
//! - Auth enabled: every request needs a valid token (gRPC metadata `token`, which etcd's
//!   clients send after `Authenticate`): none is `etcdserver: user name is empty`, a bad or
//!   expired one `etcdserver: invalid auth token`. A user holding the `root` role may do
//!   everything. Otherwise keys need a granted range: Range and Watch need READ over the
//!   whole requested range; Put needs WRITE on the key (and READ with `prev_kv`);
//!   DeleteRange WRITE over the range (and READ with `prev_kv`); a Txn needs READ over every
//!   compare's range and the rights of every operation in both branches, nested ones too;
//!   LeaseRevoke WRITE on every key attached to the lease; other lease calls need only a
//!   valid user. Status, alarm listing and member listing are open, as in etcd.
//!   Compaction, membership changes, raising or clearing alarms (etcd lets anyone) and auth
//!   changes need root.
//!
//! Checks run on the node that receives the request (with its applied auth state). A
//! follower forwards a write to the leader together with the client's token, and the leader
//! checks it again against its own state ([`authorize_forwarded`]): a forged proposal on the
//! peer port cannot skip the check without a valid token. Writes are proposed as
//! [`Command::As`] (user and auth revision); if auth changed before they apply, every
//! replica checks them again at that point (etcd's rule). Linearizable reads are checked
//! again once their read index is applied. The peer port also carries Raft's
//! own messages, which no token protects, so it must be reachable only by members (mutual TLS
//! between peers, or a private network).

use serde::{Deserialize, Serialize};

use crate::auth::{AuthState, PermKind, covered, token};
use crate::error::KvError;
use crate::proto::etcdserverpb::{self as pb, request_op};
use crate::types::{AlarmCommand, Command};

/// Who is asking: `None` when auth is disabled (everything is allowed), else the user the
/// token names.
pub type Caller = Option<String>;

/// A write handed from a follower to the leader over the peer `Propose` RPC.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Forwarded {
    /// The client's token, re-checked by the leader; `None` for the nodes' own commands.
    pub token: Option<String>,
    pub cmd: Command,
}

/// The caller a request's token names (see the module docs for the errors).
pub fn caller(state: &AuthState, token: Option<&str>) -> Result<Caller, KvError> {
    if !state.enabled {
        return Ok(None);
    }
    let token = token.ok_or(KvError::UserEmpty)?;
    let claimed = token::claimed_user(token).ok_or(KvError::InvalidAuthToken)?;
    let key = state
        .token_secret(&claimed)
        .ok_or(KvError::InvalidAuthToken)?;
    match token::verify(&key, token) {
        Some(user) if user == claimed => Ok(Some(user)),
        _ => Err(KvError::InvalidAuthToken),
    }
}

/// Only root (or anyone while auth is disabled).
pub fn require_root(state: &AuthState, caller: &Caller) -> Result<(), KvError> {
    match caller {
        Some(u) if !state.is_root(u) => Err(KvError::PermissionDenied),
        _ => Ok(()),
    }
}

/// `need` (Read or Write) over `[key, range_end)`.
pub fn check_keys(
    state: &AuthState,
    caller: &Caller,
    need: PermKind,
    key: &[u8],
    range_end: &[u8],
) -> Result<(), KvError> {
    let Some(user) = caller else { return Ok(()) };
    if state.is_root(user) || covered(state.granted(user, need), key, range_end) {
        Ok(())
    } else {
        Err(KvError::PermissionDenied)
    }
}

pub fn check_range(
    state: &AuthState,
    caller: &Caller,
    r: &pb::RangeRequest,
) -> Result<(), KvError> {
    check_keys(state, caller, PermKind::Read, &r.key, &r.range_end)
}

fn check_put(state: &AuthState, caller: &Caller, p: &pb::PutRequest) -> Result<(), KvError> {
    check_keys(state, caller, PermKind::Write, &p.key, &[])?;
    if p.prev_kv {
        check_keys(state, caller, PermKind::Read, &p.key, &[])?;
    }
    Ok(())
}

fn check_delete(
    state: &AuthState,
    caller: &Caller,
    d: &pb::DeleteRangeRequest,
) -> Result<(), KvError> {
    check_keys(state, caller, PermKind::Write, &d.key, &d.range_end)?;
    if d.prev_kv {
        check_keys(state, caller, PermKind::Read, &d.key, &d.range_end)?;
    }
    Ok(())
}

/// `cmd` as the caller proposes it: under auth, wrapped with the user and the auth revision
/// it was checked under, so that applying re-checks it if auth changed meanwhile.
pub fn on_behalf(state: &AuthState, caller: &Caller, cmd: Command) -> Command {
    match caller {
        Some(user) => Command::As {
            user: user.clone(),
            auth_revision: state.revision,
            cmd: Box::new(cmd),
        },
        None => cmd,
    }
}

/// Every compare and every operation of both branches, recursively (depth is bounded by
/// the request size, which is bounded by `--max-request-bytes`).
pub fn check_txn(state: &AuthState, caller: &Caller, t: &pb::TxnRequest) -> Result<(), KvError> {
    for c in &t.compare {
        check_keys(state, caller, PermKind::Read, &c.key, &c.range_end)?;
    }
    for op in t.success.iter().chain(&t.failure) {
        match &op.request {
            Some(request_op::Request::RequestRange(r)) => check_range(state, caller, r)?,
            Some(request_op::Request::RequestPut(p)) => check_put(state, caller, p)?,
            Some(request_op::Request::RequestDeleteRange(d)) => check_delete(state, caller, d)?,
            Some(request_op::Request::RequestTxn(inner)) => check_txn(state, caller, inner)?,
            None => {}
        }
    }
    Ok(())
}

/// Whether `caller` may have `cmd` proposed. `lease_keys` lists the keys attached to a lease
/// (for LeaseRevoke).
pub fn check_command(
    state: &AuthState,
    caller: &Caller,
    cmd: &Command,
    lease_keys: &dyn Fn(i64) -> Vec<Vec<u8>>,
) -> Result<(), KvError> {
    let Some(user) = caller else { return Ok(()) };
    if state.is_root(user) {
        return Ok(());
    }
    match cmd {
        Command::Put(p) => check_put(state, caller, p),
        Command::DeleteRange(d) => check_delete(state, caller, d),
        Command::Txn(t) => check_txn(state, caller, t),
        Command::LeaseGrant { .. } => Ok(()),
        Command::LeaseRevoke { id } => {
            for k in lease_keys(*id) {
                check_keys(state, caller, PermKind::Write, &k, &[])?;
            }
            Ok(())
        }
        Command::Batch(cmds) => {
            for c in cmds {
                check_command(state, caller, c, lease_keys)?;
            }
            Ok(())
        }
        Command::As { user: who, cmd, .. } if Some(who) == caller.as_ref() => {
            check_command(state, caller, cmd, lease_keys)
        }
        // Proposed on behalf of someone else: only the nodes do that.
        Command::As { .. } => Err(KvError::PermissionDenied),
        Command::Compact(_)
        | Command::SetMemberAttrs { .. }
        | Command::Auth(_)
        | Command::Alarm(_) => Err(KvError::PermissionDenied),
    }
}

/// The leader's check of a write a follower forwarded. The nodes' own bookkeeping
/// (publishing member attributes, revoking expired leases, raising NOSPACE) carries no
/// token and is allowed;
/// anything else needs the client's token, checked as if the client had called the leader.
pub fn authorize_forwarded(
    state: &AuthState,
    fwd: &Forwarded,
    lease_keys: &dyn Fn(i64) -> Vec<Vec<u8>>,
) -> Result<(), KvError> {
    if !state.enabled {
        return Ok(());
    }
    if fwd.token.is_none()
        && matches!(
            fwd.cmd,
            Command::SetMemberAttrs { .. }
                | Command::LeaseRevoke { .. }
                | Command::Alarm(AlarmCommand::Activate { .. })
        )
    {
        return Ok(());
    }
    let who = caller(state, fwd.token.as_deref())?;
    check_command(state, &who, &fwd.cmd, lease_keys)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use proptest::prelude::*;

    use super::*;
    use crate::auth::{AuthCommand, Perm, ROOT};

    fn state() -> AuthState {
        let mut s = AuthState::default();
        for c in [
            AuthCommand::UserAdd {
                name: ROOT.into(),
                password: None,
            },
            AuthCommand::UserGrantRole {
                user: ROOT.into(),
                role: ROOT.into(),
            },
            AuthCommand::UserAdd {
                name: "alice".into(),
                password: None,
            },
            AuthCommand::RoleAdd { name: "app".into() },
            AuthCommand::RoleGrantPermission {
                role: "app".into(),
                perm: Perm {
                    kind: PermKind::ReadWrite,
                    key: b"app/".to_vec(),
                    range_end: b"app0".to_vec(),
                },
            },
            AuthCommand::UserGrantRole {
                user: "alice".into(),
                role: "app".into(),
            },
            AuthCommand::Enable {
                secret: vec![7; 32],
            },
        ] {
            s.apply(&c).unwrap();
        }
        s
    }

    fn no_leases(_: i64) -> Vec<Vec<u8>> {
        Vec::new()
    }

    fn put(key: &str) -> pb::RequestOp {
        pb::RequestOp {
            request: Some(request_op::Request::RequestPut(pb::PutRequest {
                key: key.into(),
                ..Default::default()
            })),
        }
    }

    #[test]
    fn tokens_users_and_root() {
        let s = state();
        assert_eq!(caller(&s, None), Err(KvError::UserEmpty));
        assert_eq!(caller(&s, Some("junk")), Err(KvError::InvalidAuthToken));
        let t = token::issue(
            &s.token_secret("alice").unwrap(),
            "alice",
            Duration::from_secs(60),
        );
        let alice = caller(&s, Some(&t)).unwrap();
        assert_eq!(alice.as_deref(), Some("alice"));
        let ghost = token::issue(&s.secret, "ghost", Duration::from_secs(60));
        assert_eq!(caller(&s, Some(&ghost)), Err(KvError::InvalidAuthToken));
        // A new password revokes the user's tokens.
        let mut changed = s.clone();
        changed
            .apply(&AuthCommand::UserChangePassword {
                name: "alice".into(),
                password: crate::auth::password::PasswordHash {
                    iterations: 1,
                    salt: vec![9; 16],
                    hash: vec![0; 32],
                },
            })
            .unwrap();
        assert_eq!(caller(&changed, Some(&t)), Err(KvError::InvalidAuthToken));
        assert_eq!(require_root(&s, &alice), Err(KvError::PermissionDenied));
        assert_eq!(require_root(&s, &Some(ROOT.into())), Ok(()));
        assert_eq!(
            check_command(
                &s,
                &alice,
                &Command::Compact(Default::default()),
                &no_leases
            ),
            Err(KvError::PermissionDenied)
        );
    }

    #[test]
    fn txn_checks_both_branches_and_compares() {
        let s = state();
        let alice: Caller = Some("alice".into());
        let ok = pb::TxnRequest {
            success: vec![put("app/a")],
            failure: vec![put("app/b")],
            ..Default::default()
        };
        assert_eq!(check_txn(&s, &alice, &ok), Ok(()));
        let bad_failure = pb::TxnRequest {
            failure: vec![put("other")],
            ..ok.clone()
        };
        assert_eq!(
            check_txn(&s, &alice, &bad_failure),
            Err(KvError::PermissionDenied)
        );
        let bad_compare = pb::TxnRequest {
            compare: vec![pb::Compare {
                key: b"secret".to_vec(),
                ..Default::default()
            }],
            ..ok.clone()
        };
        assert_eq!(
            check_txn(&s, &alice, &bad_compare),
            Err(KvError::PermissionDenied)
        );
        let nested = pb::TxnRequest {
            success: vec![pb::RequestOp {
                request: Some(request_op::Request::RequestTxn(bad_failure)),
            }],
            ..Default::default()
        };
        assert_eq!(
            check_txn(&s, &alice, &nested),
            Err(KvError::PermissionDenied)
        );
        let revoke = Command::LeaseRevoke { id: 1 };
        assert_eq!(
            check_command(&s, &alice, &revoke, &|_| vec![b"other".to_vec()]),
            Err(KvError::PermissionDenied)
        );
    }

    #[test]
    fn forwarded_writes_need_the_token_on_the_leader() {
        let s = state();
        let cmd = Command::Put(pb::PutRequest {
            key: b"app/x".to_vec(),
            ..Default::default()
        });
        let anon = Forwarded {
            token: None,
            cmd: cmd.clone(),
        };
        assert_eq!(
            authorize_forwarded(&s, &anon, &no_leases),
            Err(KvError::UserEmpty)
        );
        let with = Forwarded {
            token: Some(token::issue(
                &s.token_secret("alice").unwrap(),
                "alice",
                Duration::from_secs(60),
            )),
            cmd,
        };
        assert_eq!(authorize_forwarded(&s, &with, &no_leases), Ok(()));
        // A forwarded write on behalf of another user than the token's is refused.
        let forged = Forwarded {
            token: with.token.clone(),
            cmd: on_behalf(&s, &Some(ROOT.into()), with.cmd.clone()),
        };
        assert_eq!(
            authorize_forwarded(&s, &forged, &no_leases),
            Err(KvError::PermissionDenied)
        );
        let own = Forwarded {
            token: with.token.clone(),
            cmd: on_behalf(&s, &Some("alice".into()), with.cmd.clone()),
        };
        assert_eq!(authorize_forwarded(&s, &own, &no_leases), Ok(()));
    }

    fn arb_bytes() -> impl Strategy<Value = Vec<u8>> {
        proptest::collection::vec(any::<u8>(), 0..6)
    }

    fn arb_op() -> impl Strategy<Value = pb::RequestOp> {
        let leaf = prop_oneof![
            (arb_bytes(), arb_bytes()).prop_map(|(key, range_end)| pb::RequestOp {
                request: Some(request_op::Request::RequestRange(pb::RangeRequest {
                    key,
                    range_end,
                    ..Default::default()
                })),
            }),
            (arb_bytes(), any::<bool>()).prop_map(|(key, prev_kv)| pb::RequestOp {
                request: Some(request_op::Request::RequestPut(pb::PutRequest {
                    key,
                    prev_kv,
                    ..Default::default()
                })),
            }),
            (arb_bytes(), arb_bytes()).prop_map(|(key, range_end)| pb::RequestOp {
                request: Some(request_op::Request::RequestDeleteRange(
                    pb::DeleteRangeRequest {
                        key,
                        range_end,
                        ..Default::default()
                    }
                )),
            }),
            Just(pb::RequestOp { request: None }),
        ];
        leaf.prop_recursive(3, 24, 4, |inner| {
            (
                proptest::collection::vec(inner.clone(), 0..4),
                proptest::collection::vec(inner, 0..4),
            )
                .prop_map(|(success, failure)| pb::RequestOp {
                    request: Some(request_op::Request::RequestTxn(pb::TxnRequest {
                        success,
                        failure,
                        ..Default::default()
                    })),
                })
        })
    }

    proptest! {
        /// Random transactions and random peer blobs: the checks and the decoders answer,
        /// never panic; root may always, an ungranted user never writes outside app/.
        #[test]
        fn random_requests_never_panic(ops in proptest::collection::vec(arb_op(), 0..6),
                                       blob in proptest::collection::vec(any::<u8>(), 0..256)) {
            let s = state();
            let t = pb::TxnRequest { success: ops, ..Default::default() };
            prop_assert_eq!(check_txn(&s, &Some(ROOT.into()), &t), Ok(()));
            let alice: Caller = Some("alice".into());
            if check_txn(&s, &alice, &t).is_ok() {
                fn keys_in_app(ops: &[pb::RequestOp]) -> bool {
                    ops.iter().all(|op| match &op.request {
                        Some(request_op::Request::RequestPut(p)) => p.key.starts_with(b"app/"),
                        Some(request_op::Request::RequestTxn(t)) => {
                            keys_in_app(&t.success) && keys_in_app(&t.failure)
                        }
                        _ => true,
                    })
                }
                prop_assert!(keys_in_app(&t.success));
            }
            let _ = crate::state::validate(&Command::Txn(t));
            let fwd: Result<Forwarded, _> = postcard::from_bytes(&blob);
            if let Ok(f) = fwd {
                let _ = crate::state::validate(&f.cmd);
                let _ = authorize_forwarded(&s, &f, &no_leases);
            }
            let _ = <pb::TxnRequest as prost::Message>::decode(blob.as_slice());
        }
    }
}

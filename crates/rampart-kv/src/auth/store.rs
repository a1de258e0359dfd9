//! The replicated auth state (users, roles, the enabled flag, the token secret) and the
//! commands that change it. Commands travel through the Raft log and are applied on every
//! node identically; each check here (user exists, root keeps its role, ...) answers with
//! etcd's error.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use super::password::PasswordHash;
use super::perm::{Perm, PermKind};
use crate::error::KvError;

/// etcd's names: the user `root` with the role `root` may do everything.
pub const ROOT: &str = "root";

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct User {
    /// `None`: the user was added with `--no-password` and cannot authenticate.
    pub password: Option<PasswordHash>,
    pub roles: BTreeSet<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Role {
    pub perms: Vec<Perm>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuthState {
    pub enabled: bool,
    /// Grows by one with every change (etcd's `authRevision`).
    pub revision: u64,
    /// HMAC key for tokens ([`super::token`]); drawn anew on every `Enable`.
    pub secret: Vec<u8>,
    pub users: BTreeMap<String, User>,
    pub roles: BTreeMap<String, Role>,
}

/// A change to the auth state, as proposed through the log. Passwords arrive hashed and the
/// token secret arrives drawn, so applying is deterministic.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum AuthCommand {
    Enable {
        secret: Vec<u8>,
    },
    Disable,
    UserAdd {
        name: String,
        password: Option<PasswordHash>,
    },
    UserDelete {
        name: String,
    },
    UserChangePassword {
        name: String,
        password: PasswordHash,
    },
    UserGrantRole {
        user: String,
        role: String,
    },
    UserRevokeRole {
        user: String,
        role: String,
    },
    RoleAdd {
        name: String,
    },
    RoleDelete {
        name: String,
    },
    RoleGrantPermission {
        role: String,
        perm: Perm,
    },
    RoleRevokePermission {
        role: String,
        key: Vec<u8>,
        range_end: Vec<u8>,
    },
}

impl AuthState {
    /// Whether `user` holds the `root` role (etcd's admin check).
    pub fn is_root(&self, user: &str) -> bool {
        self.users.get(user).is_some_and(|u| u.roles.contains(ROOT))
    }

    /// The MAC key of `user`'s tokens: the cluster's secret plus the user's password salt,
    /// so a new password (or a new user of the same name) revokes older tokens. `None`
    /// when auth was never enabled or the user does not exist.
    pub fn token_secret(&self, user: &str) -> Option<Vec<u8>> {
        if self.secret.is_empty() {
            return None;
        }
        let u = self.users.get(user)?;
        let mut key = self.secret.clone();
        if let Some(p) = &u.password {
            key.extend_from_slice(&p.salt);
        }
        Some(key)
    }

    /// The ranges granted to `user` for an access of `need` (Read or Write).
    pub fn granted(&self, user: &str, need: PermKind) -> Vec<(&[u8], &[u8])> {
        let Some(u) = self.users.get(user) else {
            return Vec::new();
        };
        u.roles
            .iter()
            .filter_map(|r| self.roles.get(r))
            .flat_map(|r| r.perms.iter())
            .filter(|p| p.kind.allows(need))
            .map(|p| (p.key.as_slice(), p.range_end.as_slice()))
            .collect()
    }

    fn user_mut(&mut self, name: &str) -> Result<&mut User, KvError> {
        self.users.get_mut(name).ok_or(KvError::UserNotFound)
    }

    fn role_mut(&mut self, name: &str) -> Result<&mut Role, KvError> {
        self.roles.get_mut(name).ok_or(KvError::RoleNotFound)
    }

    /// Apply one command; on error nothing changed.
    pub fn apply(&mut self, cmd: &AuthCommand) -> Result<(), KvError> {
        match cmd {
            AuthCommand::Enable { secret } => {
                if self.enabled {
                    // Already on: no change, so the revision stays.
                    return Ok(());
                }
                self.enable(secret)?;
            }
            AuthCommand::Disable => self.enabled = false,
            AuthCommand::UserAdd { name, password } => self.user_add(name, password.as_ref())?,
            AuthCommand::UserDelete { name } => {
                if self.enabled && name == ROOT {
                    return Err(KvError::InvalidAuthMgmt);
                }
                self.users.remove(name).ok_or(KvError::UserNotFound)?;
            }
            AuthCommand::UserChangePassword { name, password } => {
                self.user_mut(name)?.password = Some(password.clone());
            }
            AuthCommand::UserGrantRole { user, role } => {
                if role != ROOT && !self.roles.contains_key(role) {
                    return Err(KvError::RoleNotFound);
                }
                self.user_mut(user)?.roles.insert(role.clone());
            }
            AuthCommand::UserRevokeRole { user, role } => {
                if self.enabled && user == ROOT && role == ROOT {
                    return Err(KvError::InvalidAuthMgmt);
                }
                if !self.user_mut(user)?.roles.remove(role) {
                    return Err(KvError::RoleNotGranted);
                }
            }
            AuthCommand::RoleAdd { name } => self.role_add(name)?,
            AuthCommand::RoleDelete { name } => self.role_delete(name)?,
            AuthCommand::RoleGrantPermission { role, perm } => self.grant_permission(role, perm)?,
            AuthCommand::RoleRevokePermission {
                role,
                key,
                range_end,
            } => self.revoke_permission(role, key, range_end)?,
        }
        self.revision += 1;
        Ok(())
    }

    /// Turns auth on with a new token `secret`; the `root` user must exist and hold `root`.
    fn enable(&mut self, secret: &[u8]) -> Result<(), KvError> {
        let root = self.users.get(ROOT).ok_or(KvError::RootUserNotExist)?;
        if !root.roles.contains(ROOT) {
            return Err(KvError::RootRoleNotExist);
        }
        self.enabled = true;
        self.secret = secret.to_vec();
        Ok(())
    }

    fn user_add(&mut self, name: &str, password: Option<&PasswordHash>) -> Result<(), KvError> {
        if name.is_empty() {
            return Err(KvError::UserEmpty);
        }
        if self.users.contains_key(name) {
            return Err(KvError::UserAlreadyExist);
        }
        self.users.insert(
            name.to_owned(),
            User {
                password: password.cloned(),
                roles: BTreeSet::new(),
            },
        );
        Ok(())
    }

    fn role_add(&mut self, name: &str) -> Result<(), KvError> {
        if name.is_empty() {
            return Err(KvError::RoleEmpty);
        }
        if self.roles.contains_key(name) {
            return Err(KvError::RoleAlreadyExist);
        }
        self.roles.insert(name.to_owned(), Role::default());
        Ok(())
    }

    /// Deletes the role and takes it from every user that held it.
    fn role_delete(&mut self, name: &str) -> Result<(), KvError> {
        if self.enabled && name == ROOT {
            return Err(KvError::InvalidAuthMgmt);
        }
        self.roles.remove(name).ok_or(KvError::RoleNotFound)?;
        for u in self.users.values_mut() {
            u.roles.remove(name);
        }
        Ok(())
    }

    fn grant_permission(&mut self, role: &str, perm: &Perm) -> Result<(), KvError> {
        let r = self.role_mut(role)?;
        // The same range granted again replaces its kind (as etcd does).
        match r
            .perms
            .iter_mut()
            .find(|p| p.key == perm.key && p.range_end == perm.range_end)
        {
            Some(p) => p.kind = perm.kind,
            None => r.perms.push(perm.clone()),
        }
        Ok(())
    }

    fn revoke_permission(
        &mut self,
        role: &str,
        key: &[u8],
        range_end: &[u8],
    ) -> Result<(), KvError> {
        let r = self.role_mut(role)?;
        let before = r.perms.len();
        r.perms
            .retain(|p| !(p.key == key && p.range_end == range_end));
        if r.perms.len() == before {
            return Err(KvError::PermissionNotGranted);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn add_user(s: &mut AuthState, name: &str) {
        s.apply(&AuthCommand::UserAdd {
            name: name.into(),
            password: None,
        })
        .unwrap();
    }

    #[test]
    fn enable_needs_root_with_the_root_role_and_root_stays() {
        let mut s = AuthState::default();
        let enable = AuthCommand::Enable {
            secret: vec![1; 32],
        };
        assert_eq!(s.apply(&enable), Err(KvError::RootUserNotExist));
        add_user(&mut s, ROOT);
        assert_eq!(s.apply(&enable), Err(KvError::RootRoleNotExist));
        s.apply(&AuthCommand::UserGrantRole {
            user: ROOT.into(),
            role: ROOT.into(),
        })
        .unwrap();
        s.apply(&enable).unwrap();
        assert!(s.enabled && s.is_root(ROOT));
        assert_eq!(
            s.apply(&AuthCommand::UserDelete { name: ROOT.into() }),
            Err(KvError::InvalidAuthMgmt)
        );
        assert_eq!(
            s.apply(&AuthCommand::UserRevokeRole {
                user: ROOT.into(),
                role: ROOT.into()
            }),
            Err(KvError::InvalidAuthMgmt)
        );
    }

    #[test]
    fn roles_and_permissions() {
        let mut s = AuthState::default();
        add_user(&mut s, "alice");
        assert_eq!(
            s.apply(&AuthCommand::UserAdd {
                name: "alice".into(),
                password: None
            }),
            Err(KvError::UserAlreadyExist)
        );
        assert_eq!(
            s.apply(&AuthCommand::UserGrantRole {
                user: "alice".into(),
                role: "app".into()
            }),
            Err(KvError::RoleNotFound)
        );
        s.apply(&AuthCommand::RoleAdd { name: "app".into() })
            .unwrap();
        let perm = Perm {
            kind: PermKind::Read,
            key: b"app/".to_vec(),
            range_end: b"app0".to_vec(),
        };
        s.apply(&AuthCommand::RoleGrantPermission {
            role: "app".into(),
            perm: perm.clone(),
        })
        .unwrap();
        s.apply(&AuthCommand::RoleGrantPermission {
            role: "app".into(),
            perm: Perm {
                kind: PermKind::ReadWrite,
                ..perm
            },
        })
        .unwrap();
        s.apply(&AuthCommand::UserGrantRole {
            user: "alice".into(),
            role: "app".into(),
        })
        .unwrap();
        assert_eq!(s.granted("alice", PermKind::Write).len(), 1);
        s.apply(&AuthCommand::RoleDelete { name: "app".into() })
            .unwrap();
        assert!(s.granted("alice", PermKind::Read).is_empty());
        assert!(s.users["alice"].roles.is_empty());
    }
}

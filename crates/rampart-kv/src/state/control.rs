//! The control commands as the state machine applies them: changes to auth and alarms (the
//! replicated [`Control`](super::Control) state), member attributes, and the apply-time
//! check of a write made on behalf of a user (`Command::As`).

use std::sync::Arc;

use super::MemberAttrs;
use super::write::Writer;
use crate::access;
use crate::auth::{AuthCommand, AuthState};
use crate::error::KvError;
use crate::quota::Alarms;
use crate::types::{AlarmCommand, Command, Reply};

impl Writer<'_> {
    /// Whether `user` may still make `cmd`, which was allowed under auth revision
    /// `auth_revision`: checked again only if the auth state has changed since.
    pub(super) fn recheck_as(
        &self,
        user: &str,
        auth_revision: u64,
        cmd: &Command,
    ) -> Result<(), KvError> {
        let auth = self.ctl.auth.clone();
        if auth.enabled && auth.revision != auth_revision {
            let keys = |id| {
                self.lease(id)
                    .ok()
                    .flatten()
                    .map(|l| l.keys.into_iter().collect())
                    .unwrap_or_default()
            };
            if auth.users.contains_key(user) {
                access::check_command(&auth, &Some(user.to_owned()), cmd, &keys)?;
            } else {
                return Err(KvError::PermissionDenied);
            }
        }
        Ok(())
    }

    pub(super) fn set_member_attrs(
        &mut self,
        id: u64,
        name: &str,
        client_urls: &[String],
    ) -> Reply {
        self.meta.members.insert(
            id,
            MemberAttrs {
                name: name.to_owned(),
                client_urls: client_urls.to_vec(),
            },
        );
        Reply::Done {
            revision: self.meta.revision,
        }
    }

    pub(super) fn auth(&mut self, a: &AuthCommand) -> Result<Reply, KvError> {
        let mut next = AuthState::clone(&self.ctl.auth);
        next.apply(a).map(|()| {
            self.ctl.auth = Arc::new(next);
            self.ctl_changed = true;
            Reply::Done {
                revision: self.meta.revision,
            }
        })
    }

    pub(super) fn alarm(&mut self, a: &AlarmCommand) -> Reply {
        let mut next = Alarms::clone(&self.ctl.alarms);
        if next.apply(a) {
            self.ctl.alarms = Arc::new(next);
            self.ctl_changed = true;
        }
        Reply::Done {
            revision: self.meta.revision,
        }
    }
}

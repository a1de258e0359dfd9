//! etcd's `Auth` gRPC service: enabling auth, authenticating, users and roles.
//!
//! Changes go through the Raft log as [`AuthCommand`]s (passwords hashed and the token
//! secret drawn here, before proposing, so that applying is deterministic); reads wait for a
//! linearizable point first. While auth is enabled, every call but `Authenticate` and
//! `AuthStatus` needs root, except that users may read themselves and their own roles.

use std::sync::Arc;

use tonic::metadata::MetadataMap;
use tonic::{Request, Response, Status};

use crate::access::{self, Caller};
use crate::auth::{AuthCommand, AuthState, Perm, PermKind, password, token};
use crate::error::KvError;
use crate::proto::authpb;
use crate::proto::etcdserverpb::auth_server::Auth;
use crate::proto::etcdserverpb::{self as pb};
use crate::service::Api;
use crate::types::{Command, Reply};

impl Api {
    /// Propose an auth change (root only while auth is enabled) and return the header.
    async fn auth_write(
        &self,
        md: &MetadataMap,
        cmd: AuthCommand,
    ) -> Result<Option<pb::ResponseHeader>, Status> {
        match self.write(md, Command::Auth(cmd)).await? {
            Reply::Done { revision } => Ok(Some(self.node.header(revision))),
            other => Err(Status::internal(format!(
                "etcdserver: unexpected apply result {other:?}"
            ))),
        }
    }

    /// [`Api::auth_write`], answered with the response type's header.
    async fn auth_change<R>(
        &self,
        md: &MetadataMap,
        cmd: AuthCommand,
        reply: impl FnOnce(Option<pb::ResponseHeader>) -> R,
    ) -> Result<Response<R>, Status> {
        Ok(Response::new(reply(self.auth_write(md, cmd).await?)))
    }

    /// A linearizable view of the auth state, and the caller.
    async fn auth_read(&self, md: &MetadataMap) -> Result<(Arc<AuthState>, Caller), Status> {
        self.caller(md)?;
        self.node.linearize().await?;
        self.caller(md)
    }

    fn header_now(&self) -> Option<pb::ResponseHeader> {
        Some(self.node.header(self.node.shared.current_revision()))
    }
}

/// Hash a password off the async threads (PBKDF2 is deliberately slow).
async fn hash(pw: String) -> Result<password::PasswordHash, Status> {
    tokio::task::spawn_blocking(move || password::hash(&pw))
        .await
        .map_err(|e| Status::internal(e.to_string()))?
        .map_err(Status::from)
}

fn root_or(auth: &AuthState, who: &Caller, allowed: bool) -> Result<(), Status> {
    if allowed {
        Ok(())
    } else {
        access::require_root(auth, who).map_err(Status::from)
    }
}

#[tonic::async_trait]
impl Auth for Api {
    async fn auth_enable(
        &self,
        req: Request<pb::AuthEnableRequest>,
    ) -> Result<Response<pb::AuthEnableResponse>, Status> {
        let secret = password::random_bytes(32)?;
        self.auth_change(req.metadata(), AuthCommand::Enable { secret }, |header| {
            pb::AuthEnableResponse { header }
        })
        .await
    }

    async fn auth_disable(
        &self,
        req: Request<pb::AuthDisableRequest>,
    ) -> Result<Response<pb::AuthDisableResponse>, Status> {
        self.auth_change(req.metadata(), AuthCommand::Disable, |header| {
            pb::AuthDisableResponse { header }
        })
        .await
    }

    async fn auth_status(
        &self,
        _req: Request<pb::AuthStatusRequest>,
    ) -> Result<Response<pb::AuthStatusResponse>, Status> {
        self.node.linearize().await?;
        let auth = self.node.shared.auth();
        Ok(Response::new(pb::AuthStatusResponse {
            header: self.header_now(),
            enabled: auth.enabled,
            auth_revision: auth.revision,
        }))
    }

    async fn authenticate(
        &self,
        req: Request<pb::AuthenticateRequest>,
    ) -> Result<Response<pb::AuthenticateResponse>, Status> {
        let req = req.into_inner();
        self.node.linearize().await?;
        let auth = self.node.shared.auth();
        if !auth.enabled {
            return Err(KvError::AuthNotEnabled.into());
        }
        let stored = auth
            .users
            .get(&req.name)
            .and_then(|u| u.password.clone())
            .ok_or(KvError::AuthFailed)?;
        let pw = req.password;
        let ok = tokio::task::spawn_blocking(move || password::verify(&pw, &stored))
            .await
            .map_err(|e| Status::internal(e.to_string()))?;
        if !ok {
            return Err(KvError::AuthFailed.into());
        }
        let key = auth.token_secret(&req.name).ok_or(KvError::AuthFailed)?;
        let token = token::issue(&key, &req.name, self.node.config.auth_token_ttl);
        Ok(Response::new(pb::AuthenticateResponse {
            header: self.header_now(),
            token,
        }))
    }

    async fn user_add(
        &self,
        req: Request<pb::AuthUserAddRequest>,
    ) -> Result<Response<pb::AuthUserAddResponse>, Status> {
        let (md, _, req) = req.into_parts();
        if req.name.is_empty() {
            return Err(KvError::UserEmpty.into());
        }
        if !req.hashed_password.is_empty() {
            return Err(Status::invalid_argument(
                "etcdserver: pre-hashed (bcrypt) passwords are not supported; send the password",
            ));
        }
        let no_password = req.options.is_some_and(|o| o.no_password);
        let password = if no_password {
            None
        } else {
            Some(hash(req.password).await?)
        };
        self.auth_change(
            &md,
            AuthCommand::UserAdd {
                name: req.name,
                password,
            },
            |header| pb::AuthUserAddResponse { header },
        )
        .await
    }

    async fn user_get(
        &self,
        req: Request<pb::AuthUserGetRequest>,
    ) -> Result<Response<pb::AuthUserGetResponse>, Status> {
        let (auth, who) = self.auth_read(req.metadata()).await?;
        let name = &req.get_ref().name;
        root_or(&auth, &who, who.as_ref() == Some(name))?;
        let user = auth.users.get(name).ok_or(KvError::UserNotFound)?;
        Ok(Response::new(pb::AuthUserGetResponse {
            header: self.header_now(),
            roles: user.roles.iter().cloned().collect(),
        }))
    }

    async fn user_list(
        &self,
        req: Request<pb::AuthUserListRequest>,
    ) -> Result<Response<pb::AuthUserListResponse>, Status> {
        let (auth, who) = self.auth_read(req.metadata()).await?;
        root_or(&auth, &who, false)?;
        Ok(Response::new(pb::AuthUserListResponse {
            header: self.header_now(),
            users: auth.users.keys().cloned().collect(),
        }))
    }

    async fn user_delete(
        &self,
        req: Request<pb::AuthUserDeleteRequest>,
    ) -> Result<Response<pb::AuthUserDeleteResponse>, Status> {
        let (md, _, req) = req.into_parts();
        self.auth_change(&md, AuthCommand::UserDelete { name: req.name }, |header| {
            pb::AuthUserDeleteResponse { header }
        })
        .await
    }

    async fn user_change_password(
        &self,
        req: Request<pb::AuthUserChangePasswordRequest>,
    ) -> Result<Response<pb::AuthUserChangePasswordResponse>, Status> {
        let (md, _, req) = req.into_parts();
        // Check before the slow hash, so that a refused caller costs nothing.
        self.require_root(&md)?;
        let password = hash(req.password).await?;
        self.auth_change(
            &md,
            AuthCommand::UserChangePassword {
                name: req.name,
                password,
            },
            |header| pb::AuthUserChangePasswordResponse { header },
        )
        .await
    }

    async fn user_grant_role(
        &self,
        req: Request<pb::AuthUserGrantRoleRequest>,
    ) -> Result<Response<pb::AuthUserGrantRoleResponse>, Status> {
        let (md, _, req) = req.into_parts();
        self.auth_change(
            &md,
            AuthCommand::UserGrantRole {
                user: req.user,
                role: req.role,
            },
            |header| pb::AuthUserGrantRoleResponse { header },
        )
        .await
    }

    async fn user_revoke_role(
        &self,
        req: Request<pb::AuthUserRevokeRoleRequest>,
    ) -> Result<Response<pb::AuthUserRevokeRoleResponse>, Status> {
        let (md, _, req) = req.into_parts();
        self.auth_change(
            &md,
            AuthCommand::UserRevokeRole {
                user: req.name,
                role: req.role,
            },
            |header| pb::AuthUserRevokeRoleResponse { header },
        )
        .await
    }

    async fn role_add(
        &self,
        req: Request<pb::AuthRoleAddRequest>,
    ) -> Result<Response<pb::AuthRoleAddResponse>, Status> {
        let (md, _, req) = req.into_parts();
        self.auth_change(&md, AuthCommand::RoleAdd { name: req.name }, |header| {
            pb::AuthRoleAddResponse { header }
        })
        .await
    }

    async fn role_get(
        &self,
        req: Request<pb::AuthRoleGetRequest>,
    ) -> Result<Response<pb::AuthRoleGetResponse>, Status> {
        let (auth, who) = self.auth_read(req.metadata()).await?;
        let name = &req.get_ref().role;
        let own = who
            .as_ref()
            .and_then(|u| auth.users.get(u))
            .is_some_and(|u| u.roles.contains(name));
        root_or(&auth, &who, own)?;
        let role = auth.roles.get(name).ok_or(KvError::RoleNotFound)?;
        Ok(Response::new(pb::AuthRoleGetResponse {
            header: self.header_now(),
            perm: role
                .perms
                .iter()
                .map(|p| authpb::Permission {
                    perm_type: p.kind.to_wire(),
                    key: p.key.clone(),
                    range_end: p.range_end.clone(),
                })
                .collect(),
        }))
    }

    async fn role_list(
        &self,
        req: Request<pb::AuthRoleListRequest>,
    ) -> Result<Response<pb::AuthRoleListResponse>, Status> {
        let (auth, who) = self.auth_read(req.metadata()).await?;
        root_or(&auth, &who, false)?;
        Ok(Response::new(pb::AuthRoleListResponse {
            header: self.header_now(),
            roles: auth.roles.keys().cloned().collect(),
        }))
    }

    async fn role_delete(
        &self,
        req: Request<pb::AuthRoleDeleteRequest>,
    ) -> Result<Response<pb::AuthRoleDeleteResponse>, Status> {
        let (md, _, req) = req.into_parts();
        self.auth_change(&md, AuthCommand::RoleDelete { name: req.role }, |header| {
            pb::AuthRoleDeleteResponse { header }
        })
        .await
    }

    async fn role_grant_permission(
        &self,
        req: Request<pb::AuthRoleGrantPermissionRequest>,
    ) -> Result<Response<pb::AuthRoleGrantPermissionResponse>, Status> {
        let (md, _, req) = req.into_parts();
        let p = req
            .perm
            .ok_or_else(|| Status::invalid_argument("etcdserver: permission is missing"))?;
        let kind = PermKind::from_wire(p.perm_type)
            .ok_or_else(|| Status::invalid_argument("etcdserver: invalid permission type"))?;
        if p.key.is_empty() {
            return Err(KvError::EmptyKey.into());
        }
        let perm = Perm {
            kind,
            key: p.key,
            range_end: p.range_end,
        };
        let header = self
            .auth_write(
                &md,
                AuthCommand::RoleGrantPermission {
                    role: req.name,
                    perm,
                },
            )
            .await?;
        Ok(Response::new(pb::AuthRoleGrantPermissionResponse {
            header,
        }))
    }

    async fn role_revoke_permission(
        &self,
        req: Request<pb::AuthRoleRevokePermissionRequest>,
    ) -> Result<Response<pb::AuthRoleRevokePermissionResponse>, Status> {
        let (md, _, req) = req.into_parts();
        let header = self
            .auth_write(
                &md,
                AuthCommand::RoleRevokePermission {
                    role: req.role,
                    key: req.key,
                    range_end: req.range_end,
                },
            )
            .await?;
        Ok(Response::new(pb::AuthRoleRevokePermissionResponse {
            header,
        }))
    }
}

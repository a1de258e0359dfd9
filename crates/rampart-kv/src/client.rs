//! A client for the store (and for etcd: it speaks only etcd's v3 API).
//!
//! It knows several endpoints and moves to the next one when the current cannot answer. It
//! repeats a request only when that is safe: reads always; writes only when the server said
//! the write was not proposed (`no leader`) or the connection could not be made at all.
//! A write whose outcome is unknown (timeout, connection lost mid-request) is reported to the
//! caller, never silently sent twice.
//!
//! With [`Security`] it speaks TLS and authenticates (as etcdctl's `--cacert --cert --key`
//! and `--user`): it logs in before its first request and again when its token is refused.

use std::time::Duration;

use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, ClientTlsConfig, Endpoint};
use tonic::{Code, Request, Status};

use crate::KvError;
use crate::proto::etcdserverpb as pb;
use crate::proto::etcdserverpb::auth_client::AuthClient;
use crate::proto::etcdserverpb::cluster_client::ClusterClient;
use crate::proto::etcdserverpb::kv_client::KvClient;
use crate::proto::etcdserverpb::lease_client::LeaseClient;
use crate::proto::etcdserverpb::maintenance_client::MaintenanceClient;
use crate::proto::etcdserverpb::watch_client::WatchClient;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("bad endpoint {endpoint:?}: {detail}")]
    Endpoint { endpoint: String, detail: String },
    #[error("no endpoints given")]
    NoEndpoints,
    #[error("{0}")]
    Status(#[from] Status),
}

impl ClientError {
    /// The gRPC status, if the server (or transport) produced one.
    pub fn status(&self) -> Option<&Status> {
        match self {
            ClientError::Status(s) => Some(s),
            _ => None,
        }
    }
}

/// True when the request never reached a server (nothing can have been applied).
fn not_sent(s: &Status) -> bool {
    if s.code() != Code::Unavailable {
        return false;
    }
    let m = s.message();
    m == KvError::NoLeader.to_string()
        || m.contains("tcp connect error")
        || m.contains("error trying to connect")
        || m.contains("Connection refused")
}

/// True when another endpoint may answer a read.
fn try_elsewhere(s: &Status) -> bool {
    matches!(
        s.code(),
        Code::Unavailable | Code::DeadlineExceeded | Code::Unknown
    )
}

/// TLS and credentials (etcdctl's `--cacert --cert --key` and `--user`).
#[derive(Debug, Clone, Default)]
pub struct Security {
    pub tls: Option<ClientTlsConfig>,
    /// `(user, password)`.
    pub user: Option<(String, String)>,
}

/// Adds the auth token to every request (the `token` metadata etcd's clients send).
#[derive(Debug, Clone, Default)]
pub struct TokenInterceptor(Option<MetadataValue<Ascii>>);

impl Interceptor for TokenInterceptor {
    fn call(&mut self, mut req: Request<()>) -> Result<Request<()>, Status> {
        if let Some(t) = &self.0 {
            req.metadata_mut().insert("token", t.clone());
        }
        Ok(req)
    }
}

/// A channel to one endpoint that carries the token.
pub type Conn = InterceptedService<Channel, TokenInterceptor>;

#[derive(Debug, Clone)]
pub struct Client {
    channels: Vec<Channel>,
    current: usize,
    timeout: Duration,
    user: Option<(String, String)>,
    token: Option<MetadataValue<Ascii>>,
    logged_in: bool,
}

/// Turn `host:port` or a URL into an endpoint URL.
fn endpoint_url(e: &str, tls: bool) -> String {
    if e.contains("://") {
        e.to_string()
    } else if tls {
        format!("https://{e}")
    } else {
        format!("http://{e}")
    }
}

impl Client {
    /// A client over `endpoints` (`host:port` or `http://host:port`); connects lazily.
    pub fn new(endpoints: &[String], timeout: Duration) -> Result<Client, ClientError> {
        Self::with_security(endpoints, timeout, Security::default())
    }

    /// A client with TLS and/or credentials; `host:port` endpoints become https with TLS.
    pub fn with_security(
        endpoints: &[String],
        timeout: Duration,
        security: Security,
    ) -> Result<Client, ClientError> {
        if endpoints.is_empty() {
            return Err(ClientError::NoEndpoints);
        }
        let mut channels = Vec::with_capacity(endpoints.len());
        for e in endpoints {
            let bad = |err: &dyn std::fmt::Display| ClientError::Endpoint {
                endpoint: e.clone(),
                detail: err.to_string(),
            };
            let mut ep = Endpoint::from_shared(endpoint_url(e, security.tls.is_some()))
                .map_err(|err| bad(&err))?
                .connect_timeout(Duration::from_secs(1))
                .tcp_nodelay(true);
            if let Some(tls) = &security.tls {
                ep = ep.tls_config(tls.clone()).map_err(|err| bad(&err))?;
            }
            channels.push(ep.connect_lazy());
        }
        Ok(Client {
            channels,
            current: 0,
            timeout,
            user: security.user,
            token: None,
            logged_in: false,
        })
    }

    fn channel(&self) -> Conn {
        self.conn(&self.channels[self.current % self.channels.len()])
    }

    fn conn(&self, ch: &Channel) -> Conn {
        InterceptedService::new(ch.clone(), TokenInterceptor(self.token.clone()))
    }

    /// Get a token (trying each endpoint once). A store without auth enabled answers
    /// "authentication is not enabled": then requests go without a token, as etcdctl does.
    async fn login(&mut self) -> Result<(), ClientError> {
        let Some((name, password)) = self.user.clone() else {
            return Ok(());
        };
        let mut last = Status::unavailable("no endpoint answered");
        for _ in 0..self.channels.len() {
            let req = pb::AuthenticateRequest {
                name: name.clone(),
                password: password.clone(),
            };
            let ch = self.channels[self.current % self.channels.len()].clone();
            let r = tokio::time::timeout(self.timeout, AuthClient::new(ch).authenticate(req))
                .await
                .unwrap_or_else(|_| Err(Status::deadline_exceeded("client timeout")));
            match r {
                Ok(resp) => {
                    let token = MetadataValue::try_from(resp.into_inner().token)
                        .map_err(|_| Status::internal("the server sent an unusable token"))?;
                    self.token = Some(token);
                    self.logged_in = true;
                    return Ok(());
                }
                Err(s) if s.message() == KvError::AuthNotEnabled.to_string() => {
                    self.token = None;
                    self.logged_in = true;
                    return Ok(());
                }
                Err(s) if try_elsewhere(&s) => {
                    last = s;
                    self.rotate();
                }
                Err(s) => return Err(s.into()),
            }
        }
        Err(last.into())
    }

    fn rotate(&mut self) {
        self.current = (self.current + 1) % self.channels.len();
    }

    /// Run `call` against the current endpoint, moving on when `retry` allows.
    async fn call<T, F, Fut>(&mut self, safe: bool, mut call: F) -> Result<T, ClientError>
    where
        F: FnMut(Conn) -> Fut,
        Fut: Future<Output = Result<T, Status>>,
    {
        if !self.logged_in {
            self.login().await?;
        }
        let attempts = self.channels.len() * 3;
        let mut last = None;
        let mut relogged = false;
        for attempt in 0..attempts {
            let result = tokio::time::timeout(self.timeout, call(self.channel())).await;
            let status = match result {
                Ok(Ok(v)) => return Ok(v),
                Ok(Err(s)) => s,
                Err(_) => Status::deadline_exceeded("client timeout"),
            };
            // An expired or revoked token, or auth enabled since this client logged in:
            // nothing was applied; log in again once.
            if self.user.is_some()
                && !relogged
                && (status.message() == KvError::InvalidAuthToken.to_string()
                    || status.message() == KvError::UserEmpty.to_string())
            {
                relogged = true;
                self.login().await?;
                continue;
            }
            let again = if safe {
                try_elsewhere(&status)
            } else {
                not_sent(&status)
            };
            if !again {
                return Err(status.into());
            }
            last = Some(status);
            self.rotate();
            if attempt + 1 >= self.channels.len() {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        Err(last
            .unwrap_or_else(|| Status::unavailable("no endpoint answered"))
            .into())
    }

    pub async fn range(&mut self, req: pb::RangeRequest) -> Result<pb::RangeResponse, ClientError> {
        self.call(true, |ch| {
            let req = req.clone();
            async move {
                KvClient::new(ch)
                    .range(req)
                    .await
                    .map(tonic::Response::into_inner)
            }
        })
        .await
    }

    pub async fn put(&mut self, req: pb::PutRequest) -> Result<pb::PutResponse, ClientError> {
        self.call(false, |ch| {
            let req = req.clone();
            async move {
                KvClient::new(ch)
                    .put(req)
                    .await
                    .map(tonic::Response::into_inner)
            }
        })
        .await
    }

    pub async fn delete(
        &mut self,
        req: pb::DeleteRangeRequest,
    ) -> Result<pb::DeleteRangeResponse, ClientError> {
        self.call(false, |ch| {
            let req = req.clone();
            async move {
                KvClient::new(ch)
                    .delete_range(req)
                    .await
                    .map(tonic::Response::into_inner)
            }
        })
        .await
    }

    pub async fn txn(&mut self, req: pb::TxnRequest) -> Result<pb::TxnResponse, ClientError> {
        self.call(false, |ch| {
            let req = req.clone();
            async move {
                KvClient::new(ch)
                    .txn(req)
                    .await
                    .map(tonic::Response::into_inner)
            }
        })
        .await
    }

    pub async fn compact(&mut self, revision: i64) -> Result<pb::CompactionResponse, ClientError> {
        self.call(false, |ch| async move {
            KvClient::new(ch)
                .compact(pb::CompactionRequest {
                    revision,
                    physical: false,
                })
                .await
                .map(tonic::Response::into_inner)
        })
        .await
    }

    pub async fn lease_grant(&mut self, ttl: i64) -> Result<pb::LeaseGrantResponse, ClientError> {
        self.call(false, |ch| async move {
            LeaseClient::new(ch)
                .lease_grant(pb::LeaseGrantRequest { ttl, id: 0 })
                .await
                .map(tonic::Response::into_inner)
        })
        .await
    }

    pub async fn lease_revoke(&mut self, id: i64) -> Result<pb::LeaseRevokeResponse, ClientError> {
        self.call(false, |ch| async move {
            LeaseClient::new(ch)
                .lease_revoke(pb::LeaseRevokeRequest { id })
                .await
                .map(tonic::Response::into_inner)
        })
        .await
    }

    /// One keep-alive round trip; the TTL granted back (0: the lease is gone).
    pub async fn lease_keep_alive_once(&mut self, id: i64) -> Result<i64, ClientError> {
        self.call(true, |ch| async move {
            let stream = tokio_stream::iter([pb::LeaseKeepAliveRequest { id }]);
            let mut replies = LeaseClient::new(ch)
                .lease_keep_alive(stream)
                .await?
                .into_inner();
            match replies.message().await? {
                Some(r) => Ok(r.ttl),
                None => Err(Status::unavailable("keep-alive stream closed")),
            }
        })
        .await
    }

    pub async fn lease_time_to_live(
        &mut self,
        id: i64,
        keys: bool,
    ) -> Result<pb::LeaseTimeToLiveResponse, ClientError> {
        self.call(true, |ch| async move {
            LeaseClient::new(ch)
                .lease_time_to_live(pb::LeaseTimeToLiveRequest { id, keys })
                .await
                .map(tonic::Response::into_inner)
        })
        .await
    }

    pub async fn lease_list(&mut self) -> Result<pb::LeaseLeasesResponse, ClientError> {
        self.call(true, |ch| async move {
            LeaseClient::new(ch)
                .lease_leases(pb::LeaseLeasesRequest {})
                .await
                .map(tonic::Response::into_inner)
        })
        .await
    }

    pub async fn member_list(&mut self) -> Result<pb::MemberListResponse, ClientError> {
        self.call(true, |ch| async move {
            ClusterClient::new(ch)
                .member_list(pb::MemberListRequest { linearizable: true })
                .await
                .map(tonic::Response::into_inner)
        })
        .await
    }

    pub async fn member_add(
        &mut self,
        peer_url: &str,
        learner: bool,
    ) -> Result<pb::MemberAddResponse, ClientError> {
        let req = pb::MemberAddRequest {
            peer_ur_ls: vec![peer_url.to_string()],
            is_learner: learner,
        };
        self.call(false, |ch| {
            let req = req.clone();
            async move {
                ClusterClient::new(ch)
                    .member_add(req)
                    .await
                    .map(tonic::Response::into_inner)
            }
        })
        .await
    }

    pub async fn member_promote(
        &mut self,
        id: u64,
    ) -> Result<pb::MemberPromoteResponse, ClientError> {
        self.call(false, |ch| async move {
            ClusterClient::new(ch)
                .member_promote(pb::MemberPromoteRequest { id })
                .await
                .map(tonic::Response::into_inner)
        })
        .await
    }

    pub async fn member_remove(
        &mut self,
        id: u64,
    ) -> Result<pb::MemberRemoveResponse, ClientError> {
        self.call(false, |ch| async move {
            ClusterClient::new(ch)
                .member_remove(pb::MemberRemoveRequest { id })
                .await
                .map(tonic::Response::into_inner)
        })
        .await
    }

    /// etcd's UserAdd.
    pub async fn user_add(&mut self, name: &str, password: &str) -> Result<(), ClientError> {
        let req = pb::AuthUserAddRequest {
            name: name.to_string(),
            password: password.to_string(),
            ..Default::default()
        };
        self.call(false, |ch| {
            let req = req.clone();
            async move { AuthClient::new(ch).user_add(req).await.map(|_| ()) }
        })
        .await
    }

    /// etcd's UserGrantRole (`root` needs no RoleAdd).
    pub async fn user_grant_role(&mut self, user: &str, role: &str) -> Result<(), ClientError> {
        let req = pb::AuthUserGrantRoleRequest {
            user: user.to_string(),
            role: role.to_string(),
        };
        self.call(false, |ch| {
            let req = req.clone();
            async move { AuthClient::new(ch).user_grant_role(req).await.map(|_| ()) }
        })
        .await
    }

    /// etcd's AuthEnable (needs user `root` with role `root`).
    pub async fn auth_enable(&mut self) -> Result<(), ClientError> {
        self.call(false, |ch| async move {
            AuthClient::new(ch)
                .auth_enable(pb::AuthEnableRequest {})
                .await
                .map(|_| ())
        })
        .await
    }

    /// Status of every endpoint, in order (an error for those that did not answer).
    pub async fn status_all(&self) -> Vec<(usize, Result<pb::StatusResponse, Status>)> {
        let mut out = Vec::new();
        for (i, ch) in self.channels.iter().enumerate() {
            let r = tokio::time::timeout(
                self.timeout,
                MaintenanceClient::new(self.conn(ch)).status(pb::StatusRequest {}),
            )
            .await
            .unwrap_or_else(|_| Err(Status::deadline_exceeded("timeout")))
            .map(tonic::Response::into_inner);
            out.push((i, r));
        }
        out
    }

    /// Open a watch stream on the current endpoint: send `create`, get responses.
    pub async fn watch(
        &mut self,
        create: pb::WatchCreateRequest,
    ) -> Result<
        (
            tokio::sync::mpsc::Sender<pb::WatchRequest>,
            tonic::Streaming<pb::WatchResponse>,
        ),
        ClientError,
    > {
        self.call(true, |ch| {
            let create = create.clone();
            async move {
                let (tx, rx) = tokio::sync::mpsc::channel(16);
                tx.send(pb::WatchRequest {
                    request_union: Some(pb::watch_request::RequestUnion::CreateRequest(create)),
                })
                .await
                .map_err(|_| Status::internal("watch request channel closed"))?;
                let stream = WatchClient::new(ch)
                    .watch(tokio_stream::wrappers::ReceiverStream::new(rx))
                    .await?
                    .into_inner();
                Ok((tx, stream))
            }
        })
        .await
    }
}

/// The range end that selects every key with `prefix` (etcd's `GetPrefixRangeEnd`).
pub fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    // All 0xff (or empty): every key from the prefix on.
    vec![0]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_ends() {
        assert_eq!(prefix_end(b"abc"), b"abd");
        assert_eq!(prefix_end(b"a\xff"), b"b");
        assert_eq!(prefix_end(b"\xff\xff"), vec![0]);
        assert_eq!(prefix_end(b""), vec![0]);
    }

    #[test]
    fn only_unsent_writes_are_retried() {
        assert!(not_sent(&Status::unavailable("etcdserver: no leader")));
        assert!(!not_sent(&Status::unavailable(
            "etcdserver: request timed out"
        )));
        assert!(!not_sent(&Status::deadline_exceeded("x")));
    }
}

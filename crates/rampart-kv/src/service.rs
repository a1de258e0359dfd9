//! The gRPC services: etcd's KV, Watch, Lease, Cluster and Maintenance on the client port,
//! and Rampart's peer protocol on the peer port.

use std::sync::Arc;

use prost::Message;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;
use tonic::metadata::MetadataMap;
use tonic::transport::server::Router;
use tonic::transport::{Server, ServerTlsConfig};
use tonic::{Request, Response, Status, Streaming};

use crate::access::{self, Caller, Forwarded};
use crate::auth::AuthState;
use crate::error::KvError;
use crate::network::{PEER_MAX_MESSAGE, from_blob, to_blob};
use crate::node::KvNode;
use crate::proto::etcdserverpb::auth_server::AuthServer;
use crate::proto::etcdserverpb::cluster_server::{Cluster, ClusterServer};
use crate::proto::etcdserverpb::kv_server::{Kv, KvServer};
use crate::proto::etcdserverpb::lease_server::{Lease, LeaseServer};
use crate::proto::etcdserverpb::maintenance_server::{Maintenance, MaintenanceServer};
use crate::proto::etcdserverpb::watch_server::{Watch, WatchServer};
use crate::proto::etcdserverpb::{self as pb, response_op};
use crate::proto::peer::peer_server::{Peer, PeerServer};
use crate::proto::peer::{Blob, Empty, LeaseId, LeaseTtl, ReadIndexReply};
use crate::quota;
use crate::tls::TlsError;
use crate::types::{AlarmCommand, Command, Reply};
use crate::watch;

/// The version reported by Maintenance.Status: the etcd API level this store speaks.
pub const API_VERSION: &str = "3.5.0";

/// Requests may exceed `max_request_bytes` by this much on the wire before gRPC itself
/// refuses them (as etcd does), so that the store answers with etcd's own error.
const GRPC_OVERHEAD: usize = 512 * 1024;

#[derive(Clone)]
pub(crate) struct Api {
    pub(crate) node: Arc<KvNode>,
}

/// A server builder, with TLS when configured.
fn builder(tls: Option<ServerTlsConfig>) -> Result<Server, TlsError> {
    let server = Server::builder().tcp_nodelay(true);
    match tls {
        Some(t) => server
            .tls_config(t)
            .map_err(|e| TlsError::Config(e.to_string())),
        None => Ok(server),
    }
}

pub(crate) fn client_router(
    node: Arc<KvNode>,
    tls: Option<ServerTlsConfig>,
) -> Result<Router, TlsError> {
    let limit = node.max_request_bytes() + GRPC_OVERHEAD;
    let api = Api { node };
    Ok(builder(tls)?
        .add_service(KvServer::new(api.clone()).max_decoding_message_size(limit))
        .add_service(WatchServer::new(api.clone()).max_decoding_message_size(limit))
        .add_service(LeaseServer::new(api.clone()).max_decoding_message_size(limit))
        .add_service(ClusterServer::new(api.clone()).max_decoding_message_size(limit))
        .add_service(MaintenanceServer::new(api.clone()).max_decoding_message_size(limit))
        .add_service(AuthServer::new(api).max_decoding_message_size(limit)))
}

pub(crate) fn peer_router(
    node: Arc<KvNode>,
    tls: Option<ServerTlsConfig>,
) -> Result<Router, TlsError> {
    Ok(builder(tls)?.add_service(
        PeerServer::new(Api { node })
            .max_decoding_message_size(PEER_MAX_MESSAGE)
            .max_encoding_message_size(PEER_MAX_MESSAGE),
    ))
}

impl Api {
    fn check_size(&self, m: &impl Message) -> Result<(), Status> {
        if m.encoded_len() > self.node.max_request_bytes() {
            return Err(KvError::RequestTooLarge.into());
        }
        Ok(())
    }

    fn fill(&self, h: &mut Option<pb::ResponseHeader>) {
        let rev = h
            .as_ref()
            .map_or_else(|| self.node.shared.current_revision(), |h| h.revision);
        *h = Some(self.node.header(rev));
    }

    fn fill_txn(&self, t: &mut pb::TxnResponse) {
        self.fill(&mut t.header);
        for r in &mut t.responses {
            match &mut r.response {
                Some(response_op::Response::ResponseRange(x)) => self.fill(&mut x.header),
                Some(response_op::Response::ResponsePut(x)) => self.fill(&mut x.header),
                Some(response_op::Response::ResponseDeleteRange(x)) => self.fill(&mut x.header),
                Some(response_op::Response::ResponseTxn(x)) => self.fill_txn(x),
                None => {}
            }
        }
    }

    /// The caller a request's `token` metadata names, and the auth state that decided it.
    pub(crate) fn caller(&self, md: &MetadataMap) -> Result<(Arc<AuthState>, Caller), Status> {
        let auth = self.node.shared.auth();
        let who = access::caller(&auth, token(md))?;
        Ok((auth, who))
    }

    /// Check `cmd` against the caller's rights, then propose it (with the token, so that a
    /// leader it is forwarded to checks it again).
    pub(crate) async fn write(&self, md: &MetadataMap, cmd: Command) -> Result<Reply, Status> {
        let (auth, who) = self.caller(md)?;
        access::check_command(&auth, &who, &cmd, &|id| self.node.lease_keys(id))?;
        self.check_quota(&cmd).await?;
        let cmd = access::on_behalf(&auth, &who, cmd);
        self.node
            .write_as(cmd, token(md))
            .await
            .map_err(Status::from)
    }

    /// etcd's quota: a write that adds data and would take the state file past
    /// `--quota-backend-bytes` raises NOSPACE (through the log) and is refused. While the
    /// alarm is raised the state machine refuses such writes itself.
    async fn check_quota(&self, cmd: &Command) -> Result<(), Status> {
        if !quota::adds_data(cmd) || self.node.shared.alarms().nospace() {
            return Ok(());
        }
        let size = u64::try_from(self.node.shared.db_size()).unwrap_or(0);
        if size.saturating_add(quota::cost(cmd)) <= self.node.config.quota_backend_bytes {
            return Ok(());
        }
        let raise = Command::Alarm(AlarmCommand::Activate {
            member: self.node.id,
            alarm: quota::NOSPACE,
        });
        if let Err(e) = self.node.write(raise).await {
            tracing::warn!(error = %e, "raising the NOSPACE alarm failed");
        }
        tracing::warn!(
            size,
            quota = self.node.config.quota_backend_bytes,
            "space quota exhausted: NOSPACE raised, writes refused until `alarm disarm`"
        );
        Err(KvError::NoSpace.into())
    }

    /// Only root (or anyone while auth is disabled).
    pub(crate) fn require_root(&self, md: &MetadataMap) -> Result<(), Status> {
        let (auth, who) = self.caller(md)?;
        access::require_root(&auth, &who).map_err(Status::from)
    }
}

/// The token etcd's clients send after `Authenticate`.
fn token(md: &MetadataMap) -> Option<&str> {
    md.get("token").and_then(|v| v.to_str().ok())
}

fn unexpected(r: &Reply) -> Status {
    Status::internal(format!("etcdserver: unexpected apply result {r:?}"))
}

#[tonic::async_trait]
impl Kv for Api {
    async fn range(
        &self,
        req: Request<pb::RangeRequest>,
    ) -> Result<Response<pb::RangeResponse>, Status> {
        let (md, _, req) = req.into_parts();
        let (auth, who) = self.caller(&md)?;
        access::check_range(&auth, &who, &req)?;
        if !req.serializable {
            self.node.linearize().await?;
            // Checked again at the read point: a permission revoked before this read was
            // ordered is applied here by now (the first check only spares the round).
            let (auth, who) = self.caller(&md)?;
            access::check_range(&auth, &who, &req)?;
        }
        let mut resp = self.node.shared.range(&req)?;
        self.fill(&mut resp.header);
        Ok(Response::new(resp))
    }

    async fn put(&self, req: Request<pb::PutRequest>) -> Result<Response<pb::PutResponse>, Status> {
        let (md, _, req) = req.into_parts();
        self.check_size(&req)?;
        match self.write(&md, Command::Put(req)).await? {
            Reply::Put(mut r) => {
                self.fill(&mut r.header);
                Ok(Response::new(r))
            }
            other => Err(unexpected(&other)),
        }
    }

    async fn delete_range(
        &self,
        req: Request<pb::DeleteRangeRequest>,
    ) -> Result<Response<pb::DeleteRangeResponse>, Status> {
        let (md, _, req) = req.into_parts();
        self.check_size(&req)?;
        match self.write(&md, Command::DeleteRange(req)).await? {
            Reply::DeleteRange(mut r) => {
                self.fill(&mut r.header);
                Ok(Response::new(r))
            }
            other => Err(unexpected(&other)),
        }
    }

    async fn txn(&self, req: Request<pb::TxnRequest>) -> Result<Response<pb::TxnResponse>, Status> {
        let (md, _, req) = req.into_parts();
        self.check_size(&req)?;
        // Every txn goes through the log, read-only ones too: compares and reads then happen
        // at one point in the log order, which makes them linearizable for free.
        match self.write(&md, Command::Txn(req)).await? {
            Reply::Txn(mut r) => {
                self.fill_txn(&mut r);
                Ok(Response::new(r))
            }
            other => Err(unexpected(&other)),
        }
    }

    async fn compact(
        &self,
        req: Request<pb::CompactionRequest>,
    ) -> Result<Response<pb::CompactionResponse>, Status> {
        let (md, _, req) = req.into_parts();
        match self.write(&md, Command::Compact(req)).await? {
            Reply::Compact(mut r) => {
                self.fill(&mut r.header);
                Ok(Response::new(r))
            }
            other => Err(unexpected(&other)),
        }
    }
}

type StreamOf<T> = ReceiverStream<Result<T, Status>>;

#[tonic::async_trait]
impl Watch for Api {
    type WatchStream = StreamOf<pb::WatchResponse>;

    async fn watch(
        &self,
        req: Request<Streaming<pb::WatchRequest>>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let (_, who) = self.caller(req.metadata())?;
        let (tx, rx) = mpsc::channel(128);
        tokio::spawn(watch::serve(
            self.node.watches().clone(),
            who,
            req.into_inner(),
            tx,
        ));
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

#[tonic::async_trait]
impl Lease for Api {
    type LeaseKeepAliveStream = StreamOf<pb::LeaseKeepAliveResponse>;

    async fn lease_grant(
        &self,
        req: Request<pb::LeaseGrantRequest>,
    ) -> Result<Response<pb::LeaseGrantResponse>, Status> {
        let (md, _, req) = req.into_parts();
        let ttl = req.ttl.max(self.node.min_lease_ttl());
        match self
            .write(&md, Command::LeaseGrant { id: req.id, ttl })
            .await?
        {
            Reply::LeaseGrant(mut r) => {
                self.fill(&mut r.header);
                Ok(Response::new(r))
            }
            other => Err(unexpected(&other)),
        }
    }

    async fn lease_revoke(
        &self,
        req: Request<pb::LeaseRevokeRequest>,
    ) -> Result<Response<pb::LeaseRevokeResponse>, Status> {
        let (md, _, req) = req.into_parts();
        match self.write(&md, Command::LeaseRevoke { id: req.id }).await? {
            Reply::LeaseRevoke(mut r) => {
                self.fill(&mut r.header);
                Ok(Response::new(r))
            }
            other => Err(unexpected(&other)),
        }
    }

    async fn lease_keep_alive(
        &self,
        req: Request<Streaming<pb::LeaseKeepAliveRequest>>,
    ) -> Result<Response<Self::LeaseKeepAliveStream>, Status> {
        self.caller(req.metadata())?;
        let mut inbound = req.into_inner();
        let (tx, rx) = mpsc::channel(16);
        let node = self.node.clone();
        tokio::spawn(async move {
            let shutdown = node.shutdown_token();
            loop {
                let msg = tokio::select! {
                    () = shutdown.cancelled() => return,
                    m = inbound.message() => m,
                };
                let Ok(Some(req)) = msg else { return };
                let reply = match node.lease_keep_alive(req.id).await {
                    Ok(ttl) => Ok(pb::LeaseKeepAliveResponse {
                        header: Some(node.header(node.shared.current_revision())),
                        id: req.id,
                        ttl,
                    }),
                    Err(e) => Err(Status::from(e)),
                };
                let failed = reply.is_err();
                if tx.send(reply).await.is_err() || failed {
                    return;
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn lease_time_to_live(
        &self,
        req: Request<pb::LeaseTimeToLiveRequest>,
    ) -> Result<Response<pb::LeaseTimeToLiveResponse>, Status> {
        self.caller(req.metadata())?;
        let req = req.into_inner();
        let header = Some(self.node.header(self.node.shared.current_revision()));
        let Some((ttl, granted)) = self.node.lease_time_to_live(req.id).await? else {
            return Ok(Response::new(pb::LeaseTimeToLiveResponse {
                header,
                id: req.id,
                ttl: -1,
                ..Default::default()
            }));
        };
        let keys = if req.keys {
            self.node.shared.lease_keys(req.id)?.unwrap_or_default()
        } else {
            Vec::new()
        };
        Ok(Response::new(pb::LeaseTimeToLiveResponse {
            header,
            id: req.id,
            ttl,
            granted_ttl: granted,
            keys,
        }))
    }

    async fn lease_leases(
        &self,
        req: Request<pb::LeaseLeasesRequest>,
    ) -> Result<Response<pb::LeaseLeasesResponse>, Status> {
        self.caller(req.metadata())?;
        self.node.linearize().await?;
        let ids = self
            .node
            .shared
            .lessor
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .ids();
        Ok(Response::new(pb::LeaseLeasesResponse {
            header: Some(self.node.header(self.node.shared.current_revision())),
            leases: ids.into_iter().map(|id| pb::LeaseStatus { id }).collect(),
        }))
    }
}

#[tonic::async_trait]
impl Cluster for Api {
    async fn member_add(
        &self,
        req: Request<pb::MemberAddRequest>,
    ) -> Result<Response<pb::MemberAddResponse>, Status> {
        self.require_root(req.metadata())?;
        let req = req.into_inner();
        let [url] = req.peer_ur_ls.as_slice() else {
            return Err(Status::invalid_argument(
                "etcdserver: exactly one peer URL per member is supported",
            ));
        };
        let member = self.node.member_add(url, req.is_learner).await?;
        Ok(Response::new(pb::MemberAddResponse {
            header: Some(self.node.header(self.node.shared.current_revision())),
            member: Some(member),
            members: self.node.members(),
        }))
    }

    async fn member_remove(
        &self,
        req: Request<pb::MemberRemoveRequest>,
    ) -> Result<Response<pb::MemberRemoveResponse>, Status> {
        self.require_root(req.metadata())?;
        self.node.member_remove(req.into_inner().id).await?;
        Ok(Response::new(pb::MemberRemoveResponse {
            header: Some(self.node.header(self.node.shared.current_revision())),
            members: self.node.members(),
        }))
    }

    async fn member_list(
        &self,
        req: Request<pb::MemberListRequest>,
    ) -> Result<Response<pb::MemberListResponse>, Status> {
        if req.into_inner().linearizable {
            self.node.linearize().await?;
        }
        Ok(Response::new(pb::MemberListResponse {
            header: Some(self.node.header(self.node.shared.current_revision())),
            members: self.node.members(),
        }))
    }

    async fn member_promote(
        &self,
        req: Request<pb::MemberPromoteRequest>,
    ) -> Result<Response<pb::MemberPromoteResponse>, Status> {
        self.require_root(req.metadata())?;
        self.node.member_promote(req.into_inner().id).await?;
        Ok(Response::new(pb::MemberPromoteResponse {
            header: Some(self.node.header(self.node.shared.current_revision())),
            members: self.node.members(),
        }))
    }
}

#[tonic::async_trait]
impl Maintenance for Api {
    async fn alarm(
        &self,
        req: Request<pb::AlarmRequest>,
    ) -> Result<Response<pb::AlarmResponse>, Status> {
        use pb::alarm_request::AlarmAction;
        let (md, _, req) = req.into_parts();
        let (member, alarm) = (req.member_id, req.alarm);
        let cmd = match AlarmAction::try_from(req.action) {
            Ok(AlarmAction::Get) => {
                self.node.linearize().await?;
                let alarms = self
                    .node
                    .shared
                    .alarms()
                    .list()
                    .into_iter()
                    .filter(|a| {
                        (member == 0 || a.member_id == member) && (alarm == 0 || a.alarm == alarm)
                    })
                    .collect();
                return Ok(Response::new(pb::AlarmResponse {
                    header: Some(self.node.header(self.node.shared.current_revision())),
                    alarms,
                }));
            }
            Ok(AlarmAction::Activate) => AlarmCommand::Activate { member, alarm },
            Ok(AlarmAction::Deactivate) => AlarmCommand::Deactivate { member, alarm },
            Err(_) => return Err(Status::invalid_argument("etcdserver: unknown alarm action")),
        };
        let changed = match &cmd {
            AlarmCommand::Activate { .. } => alarm != 0,
            AlarmCommand::Deactivate { .. } => {
                self.node.shared.alarms().0.contains(&(member, alarm))
            }
        };
        self.write(&md, Command::Alarm(cmd)).await?;
        Ok(Response::new(pb::AlarmResponse {
            header: Some(self.node.header(self.node.shared.current_revision())),
            alarms: if changed {
                vec![pb::AlarmMember {
                    member_id: member,
                    alarm,
                }]
            } else {
                Vec::new()
            },
        }))
    }

    async fn status(
        &self,
        _req: Request<pb::StatusRequest>,
    ) -> Result<Response<pb::StatusResponse>, Status> {
        // Open to anyone, as in etcd (clients probe health before they log in).
        let errors = self.node.shared.alarms().describe();
        let m = self.node.raft.metrics().borrow().clone();
        let is_learner = !m
            .membership_config
            .membership()
            .voter_ids()
            .any(|id| id == self.node.id);
        let size = self.node.shared.db_size();
        Ok(Response::new(pb::StatusResponse {
            header: Some(self.node.header(self.node.shared.current_revision())),
            version: API_VERSION.to_string(),
            db_size: size,
            leader: m.current_leader.unwrap_or(0),
            raft_index: m.last_log_index.unwrap_or(0),
            raft_term: m.current_term,
            raft_applied_index: m.last_applied.map_or(0, |l| l.index),
            errors,
            db_size_in_use: size,
            is_learner,
        }))
    }
}

fn peer_err(e: impl std::fmt::Display) -> Status {
    Status::internal(e.to_string())
}

#[tonic::async_trait]
impl Peer for Api {
    async fn append_entries(&self, req: Request<Blob>) -> Result<Response<Blob>, Status> {
        let rpc = from_blob(req.get_ref()).map_err(Status::invalid_argument)?;
        let result = self.node.raft.append_entries(rpc).await;
        Ok(Response::new(to_blob(&result).map_err(peer_err)?))
    }

    async fn vote(&self, req: Request<Blob>) -> Result<Response<Blob>, Status> {
        let rpc = from_blob(req.get_ref()).map_err(Status::invalid_argument)?;
        let result = self.node.raft.vote(rpc).await;
        Ok(Response::new(to_blob(&result).map_err(peer_err)?))
    }

    async fn install_snapshot(&self, req: Request<Blob>) -> Result<Response<Blob>, Status> {
        let rpc = from_blob(req.get_ref()).map_err(Status::invalid_argument)?;
        let result = self.node.raft.install_snapshot(rpc).await;
        Ok(Response::new(to_blob(&result).map_err(peer_err)?))
    }

    async fn propose(&self, req: Request<Blob>) -> Result<Response<Blob>, Status> {
        let fwd: Forwarded = from_blob(req.get_ref()).map_err(Status::invalid_argument)?;
        let deadline = Instant::now() + self.node.config.request_timeout;
        match self.node.propose_forwarded(fwd, deadline).await {
            // Not proposed: tell the follower so it may retry elsewhere (or give up).
            Err(
                e @ (KvError::NoLeader
                | KvError::UserEmpty
                | KvError::InvalidAuthToken
                | KvError::PermissionDenied),
            ) => Err(e.into()),
            result => Ok(Response::new(to_blob(&result).map_err(peer_err)?)),
        }
    }

    async fn read_index(&self, _req: Request<Empty>) -> Result<Response<ReadIndexReply>, Status> {
        if !self.node.is_leader() {
            return Err(KvError::NoLeader.into());
        }
        // Batched with this leader's own reads; a leader that lost its place answers NoLeader.
        let index = self.node.read_index().await?;
        Ok(Response::new(ReadIndexReply { index }))
    }

    async fn ping(&self, _req: Request<Empty>) -> Result<Response<Empty>, Status> {
        Ok(Response::new(Empty {}))
    }

    async fn lease_keep_alive(&self, req: Request<LeaseId>) -> Result<Response<LeaseTtl>, Status> {
        if !self.node.is_leader() {
            return Err(KvError::NoLeader.into());
        }
        let id = req.into_inner().id;
        let ttl = self
            .node
            .shared
            .lessor
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .renew(id);
        Ok(Response::new(LeaseTtl {
            ttl: ttl.unwrap_or(0),
            granted: ttl.unwrap_or(0),
        }))
    }

    async fn lease_time_to_live(
        &self,
        req: Request<LeaseId>,
    ) -> Result<Response<LeaseTtl>, Status> {
        if !self.node.is_leader() {
            return Err(KvError::NoLeader.into());
        }
        let id = req.into_inner().id;
        let left = self
            .node
            .shared
            .lessor
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remaining(id);
        Ok(Response::new(match left {
            Some((ttl, granted)) => LeaseTtl { ttl, granted },
            None => LeaseTtl {
                ttl: -1,
                granted: 0,
            },
        }))
    }
}

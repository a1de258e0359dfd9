//! Raft traffic between nodes over gRPC (the `rampart.kv.peer.v1.Peer` service).
//!
//! openraft's messages travel postcard-encoded inside a bytes field; the reply carries the
//! remote `Result`, so a remote Raft error comes back as `RPCError::RemoteError` and a
//! transport failure as `Unreachable` (openraft then backs off before retrying).

use std::time::Duration;

use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tonic::transport::{Channel, ClientTlsConfig, Endpoint};

use crate::log_store::AnyErr;
use crate::proto::peer::Blob;
use crate::proto::peer::peer_client::PeerClient;
use crate::types::{Member, TypeConfig};

/// Largest gRPC message between peers (log batches and snapshot chunks stay far below).
pub const PEER_MAX_MESSAGE: usize = 64 << 20;

/// A lazily connected gRPC channel to a peer URL such as `http://10.0.0.2:2380`, or
/// `https://...` with `tls` (this node's peer certificate and the trusted CA).
pub fn peer_client(
    url: &str,
    connect_timeout: Duration,
    tls: Option<&ClientTlsConfig>,
) -> Result<PeerClient<Channel>, String> {
    let mut endpoint =
        Endpoint::from_shared(url.to_string()).map_err(|e| format!("bad peer URL {url:?}: {e}"))?;
    if let Some(tls) = tls {
        endpoint = endpoint
            .tls_config(tls.clone())
            .map_err(|e| format!("peer TLS for {url:?}: {e}"))?;
    }
    let endpoint = endpoint
        .connect_timeout(connect_timeout)
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(5))
        .keep_alive_timeout(Duration::from_secs(5));
    Ok(PeerClient::new(endpoint.connect_lazy())
        .max_decoding_message_size(PEER_MAX_MESSAGE)
        .max_encoding_message_size(PEER_MAX_MESSAGE))
}

pub(crate) fn to_blob<T: Serialize>(v: &T) -> Result<Blob, String> {
    postcard::to_stdvec(v)
        .map(|data| Blob { data })
        .map_err(|e| e.to_string())
}

pub(crate) fn from_blob<T: DeserializeOwned>(b: &Blob) -> Result<T, String> {
    postcard::from_bytes(&b.data).map_err(|e| format!("undecodable peer message: {e}"))
}

/// Creates one [`PeerConn`] per target node.
#[derive(Debug, Clone)]
pub struct Network {
    pub connect_timeout: Duration,
    pub tls: Option<ClientTlsConfig>,
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = PeerConn;

    async fn new_client(&mut self, target: u64, node: &Member) -> PeerConn {
        PeerConn {
            target,
            client: peer_client(&node.peer_url, self.connect_timeout, self.tls.as_ref()),
        }
    }
}

pub struct PeerConn {
    target: u64,
    client: Result<PeerClient<Channel>, String>,
}

type Rpc = fn(
    PeerClient<Channel>,
    Blob,
) -> std::pin::Pin<
    Box<dyn Future<Output = Result<tonic::Response<Blob>, tonic::Status>> + Send>,
>;

impl PeerConn {
    async fn call<Req, Resp, E>(
        &mut self,
        rpc: Rpc,
        req: &Req,
        option: &RPCOption,
    ) -> Result<Resp, RPCError<u64, Member, RaftError<u64, E>>>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let client = match &self.client {
            Ok(c) => c.clone(),
            Err(e) => return Err(RPCError::Unreachable(Unreachable::new(&AnyErr(e.clone())))),
        };
        let blob = to_blob(req).map_err(|e| RPCError::Network(NetworkError::new(&AnyErr(e))))?;
        let reply = match tokio::time::timeout(option.hard_ttl(), rpc(client, blob)).await {
            Err(_) => {
                return Err(RPCError::Unreachable(Unreachable::new(&AnyErr(format!(
                    "no reply from node {} within {:?}",
                    self.target,
                    option.hard_ttl()
                )))));
            }
            Ok(Err(status)) => {
                return Err(RPCError::Unreachable(Unreachable::new(&AnyErr(format!(
                    "node {}: {status}",
                    self.target
                )))));
            }
            Ok(Ok(r)) => r.into_inner(),
        };
        let result: Result<Resp, RaftError<u64, E>> =
            from_blob(&reply).map_err(|e| RPCError::Network(NetworkError::new(&AnyErr(e))))?;
        result.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }
}

impl RaftNetwork<TypeConfig> for PeerConn {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<u64>, RPCError<u64, Member, RaftError<u64>>> {
        self.call(
            |mut c, b| Box::pin(async move { c.append_entries(b).await }),
            &rpc,
            &option,
        )
        .await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<u64>,
        RPCError<u64, Member, RaftError<u64, InstallSnapshotError>>,
    > {
        self.call(
            |mut c, b| Box::pin(async move { c.install_snapshot(b).await }),
            &rpc,
            &option,
        )
        .await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<u64>,
        option: RPCOption,
    ) -> Result<VoteResponse<u64>, RPCError<u64, Member, RaftError<u64>>> {
        self.call(
            |mut c, b| Box::pin(async move { c.vote(b).await }),
            &rpc,
            &option,
        )
        .await
    }
}

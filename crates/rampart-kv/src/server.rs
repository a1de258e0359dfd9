//! Starting a member: [`KvNode::start`] opens the node (storage and Raft, in `node.rs`), binds
//! the client and peer ports and serves the gRPC services (`service.rs`) on them.
//!
//! This sits above both so that the node does not depend on the gRPC layer that translates
//! requests into its calls.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;
use tonic::transport::server::Router;
// `serve_with_incoming` ignores the builder's TCP_NODELAY, so the accepted sockets get it
// here; without it small gRPC replies wait ~40 ms for Nagle and delayed ACKs.
use tonic::transport::server::TcpIncoming;

use crate::node::{ClusterState, KvNode, NodeConfig, StartError};
use crate::service;

/// A member's client and peer sockets, bound before it starts: by [`KvNode::start`] from its
/// config, or by a caller that wants to hold them from the moment it picks the ports.
pub struct Listeners {
    pub client: std::net::TcpListener,
    pub peer: std::net::TcpListener,
}

impl Listeners {
    /// Binds the configured client and peer addresses.
    pub fn bind(config: &NodeConfig) -> Result<Self, StartError> {
        let bind = |addr, what| std::net::TcpListener::bind(addr).map_err(listen_error(addr, what));
        Ok(Self {
            client: bind(config.listen_client, "client")?,
            peer: bind(config.listen_peer, "peer")?,
        })
    }
}

impl KvNode {
    /// Binds the configured ports, opens storage, starts Raft and both servers. Returns once
    /// serving. Binding comes first, so a port in use fails the start before Raft runs.
    pub async fn start(config: NodeConfig) -> Result<Arc<KvNode>, StartError> {
        let listeners = Listeners::bind(&config)?;
        Self::start_on(config, listeners).await
    }

    /// [`KvNode::start`] on sockets the caller bound.
    pub async fn start_on(
        config: NodeConfig,
        listeners: Listeners,
    ) -> Result<Arc<KvNode>, StartError> {
        let (opened, tls) = KvNode::open(&config).await?;
        let client_listener = tokio_listener(listeners.client, config.listen_client, "client")?;
        let peer_listener = tokio_listener(listeners.peer, config.listen_peer, "peer")?;
        let client_addr = client_listener
            .local_addr()
            .map_err(listen_error(config.listen_client, "client"))?;
        let peer_addr = peer_listener
            .local_addr()
            .map_err(listen_error(config.listen_peer, "peer"))?;

        let (node, proposals) = KvNode::assemble(config, opened, client_addr, peer_addr);
        if node.config.cluster_state == ClusterState::New {
            node.bootstrap().await?;
        }
        let router = service::client_router(node.clone(), tls.client)?;
        serve(&node, client_listener, router, "client");
        let router = service::peer_router(node.clone(), tls.peer)?;
        serve(&node, peer_listener, router, "peer");
        node.spawn_duties(proposals);
        tracing::info!(
            id = format!("{:x}", node.id),
            name = %node.config.name,
            client = %node.client_addr,
            peer = %node.peer_addr,
            "kv node started"
        );
        Ok(node)
    }
}

fn tokio_listener(
    l: std::net::TcpListener,
    addr: SocketAddr,
    what: &'static str,
) -> Result<TcpListener, StartError> {
    l.set_nonblocking(true)
        .and_then(|()| TcpListener::from_std(l))
        .map_err(listen_error(addr, what))
}

fn listen_error(addr: SocketAddr, what: &'static str) -> impl FnOnce(std::io::Error) -> StartError {
    move |source| StartError::Listen { addr, what, source }
}

/// Serve `router` on `listener` (the `what` port) until the node shuts down.
fn serve(node: &KvNode, listener: TcpListener, router: Router, what: &'static str) {
    let shutdown = node.shutdown_token();
    node.spawn(async move {
        let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
        if let Err(e) = router
            .serve_with_incoming_shutdown(incoming, shutdown.cancelled_owned())
            .await
        {
            tracing::error!(error = %e, "{what} gRPC server stopped");
        }
    });
}

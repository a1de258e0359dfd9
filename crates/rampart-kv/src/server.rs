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

impl KvNode {
    /// Open storage, start Raft and both servers. Returns once the sockets are bound.
    pub async fn start(config: NodeConfig) -> Result<Arc<KvNode>, StartError> {
        let (opened, tls) = KvNode::open(&config).await?;

        let client_listener = TcpListener::bind(config.listen_client)
            .await
            .map_err(listen_error(config.listen_client, "client"))?;
        let peer_listener = TcpListener::bind(config.listen_peer)
            .await
            .map_err(listen_error(config.listen_peer, "peer"))?;
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

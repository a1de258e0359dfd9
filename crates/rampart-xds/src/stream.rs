//! What every ADS stream shares, State of the World or Delta: the snapshot it serves from,
//! where its responses go, its nonces and its node; and the loop that reads requests and
//! snapshot changes in turn.

use std::sync::Arc;

use envoy_types::pb::envoy::config::core::v3::Node;
use tokio::sync::{mpsc, watch};
use tokio_stream::StreamExt;
use tonic::{Status, Streaming};

use crate::snapshot::Snapshot;
use crate::status::Nodes;

/// The client went away: the stream ends.
pub(crate) struct Gone;

pub(crate) struct Common<Resp> {
    pub(crate) snapshots: watch::Receiver<Arc<Snapshot>>,
    out: mpsc::Sender<Result<Resp, Status>>,
    nonce: u64,
    pub(crate) node: String,
    pub(crate) nodes: Nodes,
}

impl<Resp> Drop for Common<Resp> {
    fn drop(&mut self) {
        if !self.node.is_empty() {
            self.nodes.node_disconnected(&self.node);
        }
    }
}

impl<Resp> Common<Resp> {
    pub(crate) fn new(
        snapshots: watch::Receiver<Arc<Snapshot>>,
        out: mpsc::Sender<Result<Resp, Status>>,
        nodes: Nodes,
    ) -> Self {
        Self {
            snapshots,
            out,
            nonce: 0,
            node: String::new(),
            nodes,
        }
    }

    /// The node id, from the first request that carries one.
    pub(crate) fn note_node(&mut self, node: Option<&Node>) {
        if let Some(n) = node
            && self.node.is_empty()
        {
            self.node = n.id.clone();
            self.nodes.node_connected(&self.node);
        }
    }

    pub(crate) fn next_nonce(&mut self) -> String {
        self.nonce += 1;
        self.nonce.to_string()
    }

    pub(crate) fn current(&self) -> Arc<Snapshot> {
        self.snapshots.borrow().clone()
    }

    pub(crate) async fn send(&self, resp: Resp) -> Result<(), Gone> {
        self.out.send(Ok(resp)).await.map_err(|_| Gone)
    }
}

/// One flavour of the protocol.
pub(crate) trait Handler: Send {
    type Req: Send + 'static;
    type Resp: Send + 'static;

    fn common(&mut self) -> &mut Common<Self::Resp>;

    /// Handles one request of the client's.
    fn request(&mut self, req: Self::Req) -> impl Future<Output = Result<(), Gone>> + Send;

    /// The types the client asked for so far.
    fn types(&self) -> Vec<String>;

    /// Sends what is due of one type (nothing while a response of it is in flight).
    fn push_if_due(&mut self, type_url: &str) -> impl Future<Output = Result<(), Gone>> + Send;
}

/// Serves a stream until the client goes away or the cache closes.
pub(crate) async fn drive<H: Handler>(
    mut h: H,
    flavour: &'static str,
    mut requests: Streaming<H::Req>,
) where
    H::Req: prost::Message + Default,
{
    let _open = h.common().nodes.stream_opened(flavour);
    loop {
        tokio::select! {
            req = requests.next() => match req {
                Some(Ok(req)) => {
                    if h.request(req).await.is_err() {
                        return;
                    }
                }
                Some(Err(e)) => {
                    tracing::debug!(node = %h.common().node, error = %e, "xDS stream ended");
                    return;
                }
                None => return,
            },
            changed = h.common().snapshots.changed() => {
                if changed.is_err() {
                    return;
                }
                for t in h.types() {
                    if h.push_if_due(&t).await.is_err() {
                        return;
                    }
                }
            }
        }
    }
}

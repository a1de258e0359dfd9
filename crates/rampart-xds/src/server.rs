//! The Aggregated Discovery Service: one gRPC stream per client carrying every type, State
//! of the World or Delta, served from the latest [`Snapshot`] a [`Cache`] published.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_server::{
    AggregatedDiscoveryService, AggregatedDiscoveryServiceServer,
};
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, Streaming};

use crate::snapshot::Snapshot;
use crate::status::Nodes;
use crate::stream::{self, Common};
use crate::{delta, sotw};

/// Responses queued per stream before the stream's task waits for the client to read.
const STREAM_BUFFER: usize = 16;

/// New streams admitted per second, by default, after a burst of [`ADMIT_BURST`]: when
/// thousands of proxies reconnect at once (a control plane restart), the rest are told
/// RESOURCE_EXHAUSTED and come back after their backoff instead of all being sent their
/// whole state at the same moment.
pub const ADMIT_PER_SECOND: f64 = 200.0;
pub const ADMIT_BURST: f64 = 1000.0;

/// Where snapshots are published; every stream serves the latest.
#[derive(Clone)]
pub struct Cache {
    tx: Arc<watch::Sender<Arc<Snapshot>>>,
    nodes: Nodes,
    admission: Arc<Mutex<Bucket>>,
}

/// A token bucket: `rate` tokens a second, at most `burst` saved.
struct Bucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl Bucket {
    fn new(rate: f64, burst: f64) -> Self {
        Self {
            rate,
            burst,
            tokens: burst,
            last: Instant::now(),
        }
    }

    fn take(&mut self) -> bool {
        let now = Instant::now();
        let earned = now.duration_since(self.last).as_secs_f64() * self.rate;
        self.tokens = (self.tokens + earned).min(self.burst);
        self.last = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

impl Default for Cache {
    fn default() -> Self {
        Self::new()
    }
}

impl Cache {
    pub fn new() -> Self {
        Self::with_admission(ADMIT_PER_SECOND, ADMIT_BURST)
    }

    /// A cache admitting `per_second` new streams a second after a burst of `burst`.
    pub fn with_admission(per_second: f64, burst: f64) -> Self {
        let (tx, _) = watch::channel(Arc::new(Snapshot::default()));
        Self {
            tx: Arc::new(tx),
            nodes: Nodes::default(),
            admission: Arc::new(Mutex::new(Bucket::new(per_second, burst))),
        }
    }

    /// Whether a new stream may start now (counted when not).
    fn admit(&self) -> Result<(), Status> {
        let ok = self
            .admission
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        if ok {
            Ok(())
        } else {
            self.nodes.refused();
            Err(Status::resource_exhausted(
                "too many new xDS streams at once; retry after a backoff",
            ))
        }
    }

    /// Publishes `snapshot`; streams push what changed for them.
    pub fn publish(&self, snapshot: Snapshot) {
        // What changed is worked out once here, not by every stream.
        let snapshot = snapshot.since(&self.current());
        self.tx.send_replace(Arc::new(snapshot));
    }

    pub fn current(&self) -> Arc<Snapshot> {
        self.tx.borrow().clone()
    }

    /// What each connected node was sent and answered.
    pub fn nodes(&self) -> &Nodes {
        &self.nodes
    }

    /// The ADS gRPC service over this cache.
    pub fn service(&self) -> AggregatedDiscoveryServiceServer<Ads> {
        AggregatedDiscoveryServiceServer::new(Ads {
            cache: self.clone(),
        })
    }

    /// Serves ADS on `listener` until `stop`.
    pub async fn serve(
        &self,
        listener: tokio::net::TcpListener,
        stop: CancellationToken,
    ) -> Result<(), tonic::transport::Error> {
        let incoming =
            tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
        tonic::transport::Server::builder()
            .add_service(self.service())
            .serve_with_incoming_shutdown(incoming, stop.cancelled_owned())
            .await
    }

    /// Binds `addr` and serves ADS on it in the background; returns the bound address.
    pub async fn spawn(
        &self,
        addr: SocketAddr,
        stop: CancellationToken,
    ) -> std::io::Result<SocketAddr> {
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let local = listener.local_addr()?;
        let cache = self.clone();
        tokio::spawn(async move {
            if let Err(e) = cache.serve(listener, stop).await {
                tracing::error!(error = %e, "xDS server stopped");
            }
        });
        Ok(local)
    }
}

/// The gRPC service: each stream gets a task of its own.
pub struct Ads {
    cache: Cache,
}

#[tonic::async_trait]
impl AggregatedDiscoveryService for Ads {
    type StreamAggregatedResourcesStream = ReceiverStream<Result<DiscoveryResponse, Status>>;
    type DeltaAggregatedResourcesStream = ReceiverStream<Result<DeltaDiscoveryResponse, Status>>;

    async fn stream_aggregated_resources(
        &self,
        request: Request<Streaming<DiscoveryRequest>>,
    ) -> Result<Response<Self::StreamAggregatedResourcesStream>, Status> {
        self.cache.admit()?;
        let (tx, rx) = mpsc::channel(STREAM_BUFFER);
        let common = Common::new(self.cache.tx.subscribe(), tx, self.cache.nodes.clone());
        tokio::spawn(stream::drive(
            sotw::Stream::new(common),
            "sotw",
            request.into_inner(),
        ));
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn delta_aggregated_resources(
        &self,
        request: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<Response<Self::DeltaAggregatedResourcesStream>, Status> {
        self.cache.admit()?;
        let (tx, rx) = mpsc::channel(STREAM_BUFFER);
        let common = Common::new(self.cache.tx.subscribe(), tx, self.cache.nodes.clone());
        tokio::spawn(stream::drive(
            delta::Stream::new(common),
            "delta",
            request.into_inner(),
        ));
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

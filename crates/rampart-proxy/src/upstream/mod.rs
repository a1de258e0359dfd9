//! Upstream clusters: endpoints (static IPs or DNS names re-resolved on a timer), load
//! balancing, and a keep-alive connection pool per cluster.
//!
//! The pool is hyper-util's client (HTTP/1.1 keep-alive reuse, or HTTP/2 multiplexing with
//! prior knowledge), keyed by endpoint address; the proxy picks the endpoint itself so that
//! balancing is ours, not the pool's.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::task::{Context, Poll};

use arc_swap::{ArcSwap, ArcSwapOption};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::{Connected, Connection, HttpConnector};
use hyper_util::rt::{TokioExecutor, TokioTimer};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use rampart_config::model::{Cluster, ClusterKind, EndpointAddr, LbPolicy, UpstreamProtocol};

pub mod health;
pub mod pool;
pub mod stream;

use self::health::{Health, now_ms};
use self::pool::{H1Pool, Lease, PoolGauges, PoolLimits};
use self::stream::{UpstreamStream, UpstreamTls};
use crate::body::{ProxyBody, UpstreamTail};
use crate::error::ProxyError;
use crate::metrics::{Labels, Metrics};
use rampart_router::consistent::{self, HashRing};

/// One upstream address.
#[derive(Debug)]
pub struct Endpoint {
    pub addr: SocketAddr,
    /// The configured name it came from (`api.internal:80` or the IP itself).
    pub source: String,
    /// `ip:port`, ready for a request URI.
    pub authority: http::uri::Authority,
    active: AtomicUsize,
    total: AtomicU64,
    failures: AtomicU64,
    pub health: Health,
}

impl Endpoint {
    fn new(addr: SocketAddr, source: String) -> Option<Arc<Self>> {
        let authority = addr.to_string().parse().ok()?;
        Some(Arc::new(Self {
            addr,
            source,
            authority,
            active: AtomicUsize::new(0),
            total: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            health: Health::default(),
        }))
    }

    pub fn active(&self) -> usize {
        self.active.load(Ordering::Relaxed)
    }

    pub fn total(&self) -> u64 {
        self.total.load(Ordering::Relaxed)
    }

    pub fn failures(&self) -> u64 {
        self.failures.load(Ordering::Relaxed)
    }

    pub fn record_failure(&self) {
        self.failures.fetch_add(1, Ordering::Relaxed);
    }
}

/// Counts a request as active on its endpoint and cluster until dropped (at the end of the
/// response body).
#[derive(Debug)]
pub struct InflightGuard {
    endpoint: Arc<Endpoint>,
    gauge: Gauge,
    cluster_active: Arc<AtomicUsize>,
}

impl InflightGuard {
    pub fn endpoint(&self) -> &Arc<Endpoint> {
        &self.endpoint
    }
}

impl Drop for InflightGuard {
    fn drop(&mut self) {
        self.endpoint.active.fetch_sub(1, Ordering::Relaxed);
        self.cluster_active.fetch_sub(1, Ordering::Relaxed);
        self.gauge.dec();
    }
}

/// What an upstream response body holds until it ends: the endpoint's in-flight count and,
/// for HTTP/1.1, the pooled connection (returned to the pool when the body completes).
pub struct ResponseTail {
    guard: Option<InflightGuard>,
    lease: Option<Lease>,
}

impl ResponseTail {
    pub fn new(guard: InflightGuard, lease: Option<Lease>) -> Box<Self> {
        Box::new(Self {
            guard: Some(guard),
            lease,
        })
    }
}

impl UpstreamTail for ResponseTail {
    fn drive(&mut self, cx: &mut Context<'_>) {
        if let Some(l) = &mut self.lease {
            l.drive(cx);
        }
    }

    fn finish(&mut self) {
        if let Some(mut l) = self.lease.take() {
            l.finish();
        }
        self.guard.take();
    }
}

pub type UpstreamClient = Client<CountingConnector, ProxyBody>;

/// A cluster's endpoints, and for hashing policies the table built over exactly them.
pub struct EndpointSet {
    list: Vec<Arc<Endpoint>>,
    ring: Option<HashRing>,
}

impl EndpointSet {
    fn new(list: Vec<Arc<Endpoint>>, policy: LbPolicy, cluster: &str) -> Self {
        let ids: Vec<String> = list.iter().map(|e| e.addr.to_string()).collect();
        let members: Vec<_> = ids.iter().map(|id| consistent::Endpoint::new(id)).collect();
        let built = match policy {
            LbPolicy::RingHash if !list.is_empty() => Some(
                consistent::RingHash::new(&members, consistent::RingHashConfig::default())
                    .map(HashRing::from),
            ),
            LbPolicy::Maglev if !list.is_empty() => {
                Some(consistent::Maglev::new(&members).map(HashRing::from))
            }
            _ => None,
        };
        let ring = match built {
            Some(Ok(r)) => Some(r),
            Some(Err(e)) => {
                tracing::error!(cluster, error = %e, "cannot build the hash table; balancing at random");
                None
            }
            None => None,
        };
        Self { list, ring }
    }
}

impl std::ops::Deref for EndpointSet {
    type Target = [Arc<Endpoint>];

    fn deref(&self) -> &Self::Target {
        &self.list
    }
}

enum Transport {
    Http1(Arc<H1Pool>),
    Http2(Vec<UpstreamClient>),
}

/// A cluster's live state; shared across config versions while its definition is unchanged.
pub struct ClusterRuntime {
    pub config: Cluster,
    endpoints: ArcSwap<EndpointSet>,
    next: AtomicUsize,
    /// How requests reach the endpoints; pools are per worker, so a connection is only ever
    /// driven by one thread.
    transport: Transport,
    pub(crate) dns_refresh_started: std::sync::atomic::AtomicBool,
    active_requests: Gauge,
    /// Requests in flight on the cluster (circuit breaker `max_requests`, retry budget).
    active: Arc<AtomicUsize>,
    /// Retries in flight (retry budget / `max_retries`).
    pub(crate) retries_active: AtomicUsize,
    pub(crate) stats: ClusterStats,
    pub(crate) health_checks_started: std::sync::atomic::AtomicBool,
    /// TLS origination, replaced with every config version (certificates re-read).
    tls: Arc<ArcSwapOption<UpstreamTls>>,
    /// Endpoints of an `original_dst` cluster, by destination.
    original_dsts: std::sync::Mutex<std::collections::HashMap<SocketAddr, Arc<Endpoint>>>,
}

/// Resilience counters of one cluster.
/// A cluster's rare events (`rampart_cluster_events_total`), each series made when it
/// first happens rather than for every cluster up front.
pub(crate) struct ClusterStats {
    events: Family<Labels, Counter>,
    cluster: Arc<str>,
}

impl ClusterStats {
    fn count(&self, event: &'static str) {
        self.events
            .get_or_create(&vec![
                ("cluster", self.cluster.to_string()),
                ("event", event.to_owned()),
            ])
            .inc();
    }

    pub(crate) fn retry(&self) {
        self.count("retry");
    }

    pub(crate) fn overflow(&self) {
        self.count("overflow");
    }

    pub(crate) fn ejection(&self) {
        self.count("ejection");
    }
}

impl ClusterRuntime {
    pub fn new(config: Cluster, metrics: &Metrics, workers: usize) -> Arc<Self> {
        let mut http = HttpConnector::new();
        http.set_nodelay(true);
        http.set_connect_timeout(Some(config.connect_timeout));
        http.enforce_http(true);
        let tls: Arc<ArcSwapOption<UpstreamTls>> = Arc::default();
        let connector = CountingConnector {
            inner: http,
            gauge: metrics.upstream_connections(&config.name),
            tls: tls.clone(),
        };
        let mut builder = Client::builder(TokioExecutor::new());
        builder
            .timer(TokioTimer::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(config.idle_timeout)
            .pool_max_idle_per_host(config.max_idle_per_endpoint)
            .set_host(false)
            .http2_only(config.protocol == UpstreamProtocol::Http2);
        let transport = match config.protocol {
            UpstreamProtocol::Http1 => Transport::Http1(Arc::new(H1Pool::new(
                workers,
                PoolLimits {
                    max_idle: config.max_idle_per_endpoint,
                    idle_timeout: config.idle_timeout,
                    connect_timeout: config.connect_timeout,
                    max_connections: config.circuit_breakers.max_connections,
                    max_pending: config.circuit_breakers.max_pending_requests,
                },
                PoolGauges {
                    connections: connector.gauge.clone(),
                    pending: metrics.upstream_pending(&config.name),
                },
                config.name.clone(),
                tls.clone(),
            ))),
            // HTTP/2 multiplexes on few connections driven by their own tasks.
            UpstreamProtocol::Http2 => Transport::Http2(
                (0..workers.max(1))
                    .map(|_| builder.build(connector.clone()))
                    .collect(),
            ),
        };
        let statics = config
            .endpoints
            .iter()
            .filter_map(|e| match e {
                EndpointAddr::Ip(a) => Endpoint::new(*a, a.to_string()),
                EndpointAddr::Dns { .. } => None,
            })
            .collect();
        let stats = ClusterStats {
            events: metrics.cluster_events(),
            cluster: config.name.as_str().into(),
        };
        let endpoints =
            ArcSwap::from_pointee(EndpointSet::new(statics, config.lb_policy, &config.name));
        Arc::new(Self {
            active_requests: metrics.upstream_requests(&config.name),
            active: Arc::default(),
            retries_active: AtomicUsize::new(0),
            stats,
            health_checks_started: std::sync::atomic::AtomicBool::new(false),
            original_dsts: std::sync::Mutex::default(),
            tls,
            config,
            endpoints,
            next: AtomicUsize::new(0),
            transport,
            dns_refresh_started: std::sync::atomic::AtomicBool::new(false),
        })
    }

    pub fn name(&self) -> &str {
        &self.config.name
    }

    /// Sends an HTTP/1.1 upgrade request to `ep` on a dedicated connection.
    pub async fn send_upgrade(
        &self,
        ep: &Endpoint,
        req: http::Request<ProxyBody>,
    ) -> Result<http::Response<hyper::body::Incoming>, ProxyError> {
        match &self.transport {
            Transport::Http1(pool) => pool.send_upgrade(ep, req).await,
            Transport::Http2(_) => Err(ProxyError::Internal(format!(
                "cluster {:?} speaks HTTP/2; HTTP/1.1 upgrades need an http1 cluster",
                self.config.name
            ))),
        }
    }

    /// Sends a request (URI in origin form) to `ep` on data-plane worker `worker`'s
    /// connections. For HTTP/1.1 the returned lease carries the upstream connection and must
    /// stay with the response body.
    pub async fn send(
        &self,
        worker: usize,
        ep: &Endpoint,
        mut req: http::Request<ProxyBody>,
    ) -> Result<(http::Response<hyper::body::Incoming>, Option<Lease>), ProxyError> {
        match &self.transport {
            Transport::Http1(pool) => {
                *req.version_mut() = http::Version::HTTP_11;
                pool.send(worker, ep, req).await.map(|(r, l)| (r, Some(l)))
            }
            Transport::Http2(clients) => {
                let mut parts = req.uri().clone().into_parts();
                parts.scheme = Some(http::uri::Scheme::HTTP);
                parts.authority = Some(ep.authority.clone());
                *req.uri_mut() = http::Uri::from_parts(parts)
                    .map_err(|e| ProxyError::Internal(format!("upstream URI: {e}")))?;
                *req.version_mut() = http::Version::HTTP_2;
                let client = &clients[worker % clients.len()];
                client.request(req).await.map(|r| (r, None)).map_err(|e| {
                    let endpoint = ep.addr.to_string();
                    if !e.is_connect() {
                        ProxyError::UpstreamReset {
                            endpoint,
                            reason: root_cause(&e),
                        }
                    } else if has_io_kind(&e, io::ErrorKind::TimedOut) {
                        ProxyError::ConnectTimeout { endpoint }
                    } else {
                        ProxyError::UpstreamConnect {
                            endpoint,
                            reason: root_cause(&e),
                        }
                    }
                })
            }
        }
    }

    pub fn endpoints(&self) -> Arc<EndpointSet> {
        self.endpoints.load_full()
    }

    pub fn has_dns(&self) -> bool {
        self.config
            .endpoints
            .iter()
            .any(|e| matches!(e, EndpointAddr::Dns { .. }))
    }

    /// Picks for a request: the connection's original destination for an `original_dst`
    /// cluster, the load balancer's choice otherwise.
    pub fn pick_for(
        &self,
        original_dst: Option<SocketAddr>,
        hash: Option<u64>,
    ) -> Result<InflightGuard, ProxyError> {
        if self.config.kind != ClusterKind::OriginalDst {
            return self.pick(hash);
        }
        let addr = original_dst.ok_or_else(|| ProxyError::NoEndpoint {
            cluster: format!(
                "{} (original_dst: the connection was not redirected here, so it has no original destination)",
                self.config.name
            ),
        })?;
        let ep = {
            let mut map = self
                .original_dsts
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            // Bounded: destinations seen recently; state for ones not seen again is dropped.
            if map.len() >= 4096 && !map.contains_key(&addr) {
                map.clear();
            }
            match map.get(&addr) {
                Some(ep) => ep.clone(),
                None => {
                    let ep = Endpoint::new(addr, addr.to_string()).ok_or_else(|| {
                        ProxyError::Internal(format!("bad original destination {addr}"))
                    })?;
                    map.insert(addr, ep.clone());
                    ep
                }
            }
        };
        self.admit(&ep)
    }

    /// Installs the cluster's TLS settings for new connections (existing ones keep theirs).
    pub fn set_tls(&self, tls: Option<UpstreamTls>) {
        self.tls.store(tls.map(Arc::new));
    }

    /// Requests in flight on the cluster.
    pub fn active(&self) -> usize {
        self.active.load(Ordering::Relaxed)
    }

    /// Chooses a usable endpoint (not failing active checks, not ejected) and counts the
    /// request as active on it; refuses when the cluster's `max_requests` is reached.
    /// `hash` is the request's key for hashing policies (None: pick at random).
    pub fn pick(&self, hash: Option<u64>) -> Result<InflightGuard, ProxyError> {
        // The slot is taken in one atomic step: a check followed by a later increment let
        // two workers in at once past `max_requests` (seen in CI as two 200s of three).
        let max = self.config.circuit_breakers.max_requests;
        let reserved = self
            .active
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |a| {
                (a < max).then_some(a + 1)
            });
        if reserved.is_err() {
            self.stats.overflow();
            return Err(ProxyError::Overflow {
                cluster: self.config.name.clone(),
                limit: "max_requests",
            });
        }
        match self.choose(hash) {
            Ok(ep) => Ok(self.counted(&ep)),
            Err(e) => {
                self.active.fetch_sub(1, Ordering::AcqRel);
                Err(e)
            }
        }
    }

    /// A usable endpoint for a request with `hash`.
    fn choose(&self, hash: Option<u64>) -> Result<Arc<Endpoint>, ProxyError> {
        let no_endpoint = || ProxyError::NoEndpoint {
            cluster: self.config.name.clone(),
        };
        let eps = self.endpoints.load();
        let n = eps.len();
        if n == 0 {
            return Err(no_endpoint());
        }
        let now = now_ms();
        let usable = |i: usize| eps[i % n].health.usable(now);
        // The first usable endpoint at or after `start`, wrapping.
        let first_usable = |start: usize| (0..n).map(|k| (start + k) % n).find(|&i| usable(i));
        let idx = match (n, self.config.lb_policy) {
            (1, _) => first_usable(0),
            (_, LbPolicy::RingHash | LbPolicy::Maglev) => match (&eps.ring, hash) {
                (Some(ring), Some(h)) => ring.pick_healthy(h, usable),
                _ => first_usable(fastrand::usize(..n)),
            },
            (_, LbPolicy::RoundRobin) => first_usable(self.next.fetch_add(1, Ordering::Relaxed)),
            (_, LbPolicy::LeastRequest) => {
                // Power of two choices among usable endpoints; the less busy wins.
                first_usable(fastrand::usize(..n)).map(|a| {
                    let b = (a + 1 + fastrand::usize(..n - 1)) % n;
                    if usable(b) && eps[b].active() < eps[a].active() {
                        b
                    } else {
                        a
                    }
                })
            }
        };
        Ok(eps[idx.ok_or_else(no_endpoint)?].clone())
    }

    /// Counts a request as active on `ep` and the cluster.
    fn admit(&self, ep: &Arc<Endpoint>) -> Result<InflightGuard, ProxyError> {
        self.active.fetch_add(1, Ordering::AcqRel);
        Ok(self.counted(ep))
    }

    /// Counts a request as active on `ep`, its cluster slot already taken.
    fn counted(&self, ep: &Arc<Endpoint>) -> InflightGuard {
        ep.active.fetch_add(1, Ordering::Relaxed);
        ep.total.fetch_add(1, Ordering::Relaxed);
        self.active_requests.inc();
        InflightGuard {
            endpoint: ep.clone(),
            gauge: self.active_requests.clone(),
            cluster_active: self.active.clone(),
        }
    }

    /// Re-resolves DNS endpoints. Keeps the previous addresses of a name that fails to resolve,
    /// and keeps per-endpoint state for addresses that did not change.
    pub async fn refresh_dns(&self) {
        let old = self.endpoints.load_full();
        let mut next: Vec<Arc<Endpoint>> = Vec::new();
        for e in &self.config.endpoints {
            match e {
                EndpointAddr::Ip(a) => {
                    if let Some(ep) = old.iter().find(|x| x.addr == *a) {
                        next.push(ep.clone());
                    }
                }
                EndpointAddr::Dns { host, port } => {
                    let source = e.to_string();
                    match tokio::net::lookup_host((host.as_str(), *port)).await {
                        Ok(addrs) => {
                            for addr in addrs {
                                if next.iter().any(|x| x.addr == addr) {
                                    continue;
                                }
                                let keep = old.iter().find(|x| x.addr == addr).cloned();
                                if let Some(ep) =
                                    keep.or_else(|| Endpoint::new(addr, source.clone()))
                                {
                                    next.push(ep);
                                }
                            }
                        }
                        Err(err) => {
                            tracing::warn!(cluster = %self.config.name, endpoint = %source, %err, "DNS resolution failed; keeping previous addresses");
                            next.extend(old.iter().filter(|x| x.source == source).cloned());
                        }
                    }
                }
            }
        }
        self.endpoints.store(Arc::new(EndpointSet::new(
            next,
            self.config.lb_policy,
            &self.config.name,
        )));
    }
}

/// Re-resolves a cluster's DNS names until the cluster is dropped.
pub async fn dns_refresh_loop(cluster: Weak<ClusterRuntime>, every: std::time::Duration) {
    loop {
        tokio::time::sleep(every).await;
        let Some(c) = cluster.upgrade() else { return };
        c.refresh_dns().await;
    }
}

/// An HTTP connector (for HTTP/2 clusters) that originates TLS when the cluster has it and
/// counts open upstream connections in a gauge.
#[derive(Clone)]
pub struct CountingConnector {
    inner: HttpConnector,
    gauge: Gauge,
    tls: Arc<ArcSwapOption<UpstreamTls>>,
}

impl tower_service::Service<http::Uri> for CountingConnector {
    type Response = Counted;
    type Error = Box<dyn std::error::Error + Send + Sync>;
    type Future = Pin<Box<dyn std::future::Future<Output = Result<Counted, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, uri: http::Uri) -> Self::Future {
        let source = uri.authority().map(ToString::to_string).unwrap_or_default();
        let fut = self.inner.call(uri);
        let gauge = self.gauge.clone();
        let tls = self.tls.load_full();
        Box::pin(async move {
            let tcp = fut.await?.into_inner();
            let stream = match tls {
                // The URI holds the endpoint's IP: SNI is the cluster's server_name or the IP.
                Some(t) => t.connect(tcp, &source).await?,
                None => UpstreamStream::Plain(tcp),
            };
            Ok(Counted::new(hyper_util::rt::TokioIo::new(stream), gauge))
        })
    }
}

type TcpIo = hyper_util::rt::TokioIo<UpstreamStream>;

/// A connection that decrements its gauge when closed.
pub struct Counted {
    io: TcpIo,
    gauge: Gauge,
    /// A connection slot reserved before connecting (circuit breaker `max_connections`),
    /// released when the connection closes.
    slot: Option<Arc<AtomicUsize>>,
}

impl Counted {
    /// Counts `io` as an open upstream connection until dropped.
    pub(crate) fn new(io: TcpIo, gauge: Gauge) -> Self {
        gauge.inc();
        Self {
            io,
            gauge,
            slot: None,
        }
    }

    /// As [`Counted::new`], also holding a reserved connection slot until dropped.
    pub(crate) fn with_slot(io: TcpIo, gauge: Gauge, slot: Arc<AtomicUsize>) -> Self {
        let mut c = Self::new(io, gauge);
        c.slot = Some(slot);
        c
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        self.gauge.dec();
        if let Some(s) = &self.slot {
            s.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

impl Connection for Counted {
    fn connected(&self) -> Connected {
        let c = Connected::new();
        if self.io.inner().negotiated_h2() {
            c.negotiated_h2()
        } else {
            c
        }
    }
}

impl hyper::rt::Read for Counted {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl hyper::rt::Write for Counted {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }
}

/// True if `err` or any of its sources is an I/O error of `kind`.
pub fn has_io_kind(err: &(dyn std::error::Error + 'static), kind: io::ErrorKind) -> bool {
    let mut cur = Some(err);
    while let Some(e) = cur {
        if e.downcast_ref::<io::Error>()
            .is_some_and(|io| io.kind() == kind)
        {
            return true;
        }
        cur = e.source();
    }
    false
}

/// The innermost message of an error chain (the useful part for operators).
pub fn root_cause(err: &(dyn std::error::Error + 'static)) -> String {
    let mut cur = err;
    while let Some(next) = cur.source() {
        cur = next;
    }
    cur.to_string()
}

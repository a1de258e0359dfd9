//! Prometheus metrics. Per-route handles are looked up once per config version, so the
//! request path only touches atomics.

use std::sync::{Arc, Mutex};

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

pub type Labels = Vec<(&'static str, String)>;

fn latency_histogram() -> Histogram {
    // 50 µs .. ~26 s
    Histogram::new(exponential_buckets(0.000_05, 2.0, 20))
}

#[derive(Clone)]
pub struct Metrics {
    registry: Arc<Mutex<Registry>>,
    requests: Family<Labels, Counter>,
    request_duration: Family<Labels, Histogram, fn() -> Histogram>,
    upstream_duration: Family<Labels, Histogram, fn() -> Histogram>,
    downstream_active: Family<Labels, Gauge>,
    downstream_total: Family<Labels, Counter>,
    upstream_connections: Family<Labels, Gauge>,
    upstream_requests: Family<Labels, Gauge>,
    upstream_pending: Family<Labels, Gauge>,
    cluster_events: Family<Labels, Counter>,
    jwt_requests: Family<Labels, Counter>,
    request_errors: Family<Labels, Counter>,
    pub config_version: Gauge,
    reloads: Family<Labels, Counter>,
    pub config_last_reload_ok: Gauge,
    source_checks: Family<Labels, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// The counters and histogram for one (listener, route, cluster).
#[derive(Clone)]
pub struct RouteStats {
    by_class: [Counter; 5],
    duration: Histogram,
}

impl RouteStats {
    pub fn record(&self, status: http::StatusCode, seconds: f64) {
        let class = (status.as_u16() / 100).clamp(1, 5) as usize - 1;
        self.by_class[class].inc();
        self.duration.observe(seconds);
    }
}

impl Metrics {
    // One registration per metric, in exposition order: a flat table, read whole.
    pub fn new() -> Self {
        let mut r = Registry::with_prefix("rampart");
        let requests = Family::<Labels, Counter>::default();
        r.register(
            "requests",
            "Downstream requests by listener, route, cluster and status class",
            requests.clone(),
        );
        let request_duration =
            Family::<Labels, Histogram, fn() -> Histogram>::new_with_constructor(latency_histogram);
        r.register(
            "request_duration_seconds",
            "Time from request received to response headers sent",
            request_duration.clone(),
        );
        let upstream_duration =
            Family::<Labels, Histogram, fn() -> Histogram>::new_with_constructor(latency_histogram);
        r.register(
            "upstream_duration_seconds",
            "Time from upstream request sent to upstream response headers",
            upstream_duration.clone(),
        );
        let downstream_active = Family::<Labels, Gauge>::default();
        r.register(
            "downstream_connections_active",
            "Open downstream connections",
            downstream_active.clone(),
        );
        let downstream_total = Family::<Labels, Counter>::default();
        r.register(
            "downstream_connections",
            "Accepted downstream connections",
            downstream_total.clone(),
        );
        let upstream_connections = Family::<Labels, Gauge>::default();
        r.register(
            "upstream_connections_active",
            "Open upstream connections",
            upstream_connections.clone(),
        );
        let upstream_requests = Family::<Labels, Gauge>::default();
        r.register(
            "upstream_requests_active",
            "Upstream requests in flight",
            upstream_requests.clone(),
        );
        let upstream_pending = Family::<Labels, Gauge>::default();
        r.register(
            "upstream_requests_pending",
            "Requests waiting for an upstream connection (max_connections reached)",
            upstream_pending.clone(),
        );
        let cluster_events = Family::<Labels, Counter>::default();
        r.register(
            "cluster_events",
            "Resilience events by cluster: retry, overflow (circuit breaker), ejection (outlier detection)",
            cluster_events.clone(),
        );
        let jwt_requests = Family::<Labels, Counter>::default();
        r.register(
            "jwt_requests",
            "Requests seen by jwt filters, by result: ok, no_token (optional), or the rejection",
            jwt_requests.clone(),
        );
        let request_errors = Family::<Labels, Counter>::default();
        r.register(
            "request_errors",
            "Requests that failed, by who is to blame: downstream (the client), upstream, internal",
            request_errors.clone(),
        );
        let config_version = Gauge::default();
        r.register(
            "config_version",
            "Version of the active config (1 at start, +1 per applied reload)",
            config_version.clone(),
        );
        let reloads = Family::<Labels, Counter>::default();
        r.register(
            "config_reloads",
            "Config reload attempts by result",
            reloads.clone(),
        );
        let config_last_reload_ok = Gauge::default();
        r.register(
            "config_last_reload_success",
            "1 if the last reload attempt was applied, 0 if it was rejected",
            config_last_reload_ok.clone(),
        );
        config_last_reload_ok.set(1);
        let source_checks = Family::<Labels, Counter>::default();
        r.register(
            "config_source_checks",
            "Times a config source looked for a new config (file polls and SIGHUPs)",
            source_checks.clone(),
        );
        Self {
            registry: Arc::new(Mutex::new(r)),
            requests,
            request_duration,
            upstream_duration,
            downstream_active,
            downstream_total,
            upstream_connections,
            upstream_requests,
            upstream_pending,
            cluster_events,
            jwt_requests,
            request_errors,
            config_version,
            reloads,
            config_last_reload_ok,
            source_checks,
        }
    }

    pub fn route_stats(&self, listener: &str, route: &str, cluster: &str) -> RouteStats {
        let class = |c: &'static str| {
            self.requests
                .get_or_create(&vec![
                    ("listener", listener.to_owned()),
                    ("route", route.to_owned()),
                    ("cluster", cluster.to_owned()),
                    ("class", c.to_owned()),
                ])
                .clone()
        };
        RouteStats {
            by_class: [
                class("1xx"),
                class("2xx"),
                class("3xx"),
                class("4xx"),
                class("5xx"),
            ],
            duration: self
                .request_duration
                .get_or_create(&vec![
                    ("listener", listener.to_owned()),
                    ("route", route.to_owned()),
                ])
                .clone(),
        }
    }

    /// Counts a failed request against whoever caused it (`downstream`, `upstream`, `internal`).
    pub fn request_error(&self, blame: &'static str) {
        self.request_errors
            .get_or_create(&vec![("blame", blame.to_owned())])
            .inc();
    }

    pub fn upstream_latency(&self, cluster: &str) -> Histogram {
        self.upstream_duration
            .get_or_create(&vec![("cluster", cluster.to_owned())])
            .clone()
    }

    pub fn downstream(&self, listener: &str) -> (Gauge, Counter) {
        let l = vec![("listener", listener.to_owned())];
        (
            self.downstream_active.get_or_create(&l).clone(),
            self.downstream_total.get_or_create(&l).clone(),
        )
    }

    pub fn upstream_connections(&self, cluster: &str) -> Gauge {
        self.upstream_connections
            .get_or_create(&vec![("cluster", cluster.to_owned())])
            .clone()
    }

    pub fn upstream_requests(&self, cluster: &str) -> Gauge {
        self.upstream_requests
            .get_or_create(&vec![("cluster", cluster.to_owned())])
            .clone()
    }

    pub fn upstream_pending(&self, cluster: &str) -> Gauge {
        self.upstream_pending
            .get_or_create(&vec![("cluster", cluster.to_owned())])
            .clone()
    }

    /// Counts one look for a new config by `source`.
    pub fn source_checked(&self, source: &str) {
        self.source_checks
            .get_or_create(&vec![("source", source.to_owned())])
            .inc();
    }

    /// `rampart_cluster_events_total{cluster, event}`, for series made as events happen.
    pub fn cluster_events(&self) -> Family<Labels, Counter> {
        self.cluster_events.clone()
    }

    pub fn jwt_result(&self, result: &'static str) -> Counter {
        self.jwt_requests
            .get_or_create(&vec![("result", result.to_owned())])
            .clone()
    }

    pub fn reload(&self, ok: bool) {
        let result = if ok { "success" } else { "failure" };
        self.reloads
            .get_or_create(&vec![("result", result.to_owned())])
            .inc();
        self.config_last_reload_ok.set(i64::from(ok));
    }

    /// Adds metrics kept elsewhere (e.g. the policy engine's) to the exported registry.
    pub fn register_with(&self, f: impl FnOnce(&mut Registry)) {
        let mut r = self
            .registry
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        f(&mut r);
    }

    /// The registry in Prometheus text format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        let reg = self
            .registry
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &reg);
        out
    }
}

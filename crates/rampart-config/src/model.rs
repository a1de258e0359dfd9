//! The validated configuration: every name resolved, every address parsed, every regex compiled.
//!
//! Holding a [`Config`] is proof that it passed validation; the data plane never re-checks.

use std::net::SocketAddr;
use std::time::Duration;

use regex::Regex;

pub use crate::headers::HeaderMutation;
pub use crate::http::{EscapedSlashes, HttpOptions, PathOptions};
pub use crate::jwt::{JwksSource, Jwt, JwtAlgorithm};
use crate::raw::RawConfig;
pub use crate::resilience::{CircuitBreakers, HealthCheck, OutlierDetection, RetryPolicy};

/// A validated configuration, plus the raw form it came from (for `/config_dump`).
#[derive(Debug, Clone)]
pub struct Config {
    pub workers: usize,
    pub admin: Option<Admin>,
    pub access_log: AccessLogFormat,
    pub drain_timeout: Duration,
    pub listeners: Vec<Listener>,
    pub route_tables: Vec<RouteTable>,
    pub clusters: Vec<Cluster>,
    pub policy: Option<crate::policy::Policy>,
    /// The keys `wasm` filters' modules must be signed with (checked where modules load).
    pub wasm: WasmTrust,
    pub raw: RawConfig,
}

impl Config {
    pub fn route_table(&self, name: &str) -> Option<&RouteTable> {
        self.route_tables.iter().find(|t| t.name == name)
    }

    pub fn cluster(&self, name: &str) -> Option<&Cluster> {
        self.clusters.iter().find(|c| c.name == name)
    }

    /// Every filter chain entry with its field path (`listeners[0].filters[1]`), listeners
    /// first, then routes in table order.
    pub fn filter_entries(&self) -> Vec<(String, &FilterConfig)> {
        let mut out = Vec::new();
        for (li, l) in self.listeners.iter().enumerate() {
            for (i, f) in l.filters.iter().enumerate() {
                out.push((format!("listeners[{li}].filters[{i}]"), f));
            }
        }
        for (ti, t) in self.route_tables.iter().enumerate() {
            for (vi, v) in t.virtual_hosts.iter().enumerate() {
                for (ri, r) in v.routes.iter().enumerate() {
                    for (i, f) in r.filters.iter().enumerate() {
                        out.push((
                            format!(
                                "route_tables[{ti}].virtual_hosts[{vi}].routes[{ri}].filters[{i}]"
                            ),
                            f,
                        ));
                    }
                }
            }
        }
        out
    }
}

/// The top-level `wasm:` section: the Ed25519 public keys (base64) plugin modules must be
/// signed with. The gateway hands it to filter factories through their build environment.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WasmTrust {
    pub trusted_keys: Vec<String>,
    pub cache_dir: Option<std::path::PathBuf>,
}

/// The admin endpoint: where it listens and who may use it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Admin {
    pub address: SocketAddr,
    /// The bearer token for mutating requests is read from here at start; none: read-only.
    pub token_file: Option<std::path::PathBuf>,
    /// Lower-case host names without port.
    pub allowed_hosts: Vec<String>,
    pub max_connections: usize,
    pub header_read_timeout: Duration,
}

impl Admin {
    pub const LOOPBACK_HOSTS: [&'static str; 3] = ["localhost", "127.0.0.1", "[::1]"];

    /// Defaults for an address: loopback names only, no token.
    pub fn at(address: SocketAddr) -> Self {
        Self {
            address,
            token_file: None,
            allowed_hosts: Self::LOOPBACK_HOSTS.map(str::to_owned).to_vec(),
            max_connections: 64,
            header_read_timeout: Duration::from_secs(10),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AccessLogFormat {
    Off,
    Text,
    Json,
}

#[derive(Debug, Clone)]
pub struct Listener {
    pub name: String,
    pub address: SocketAddr,
    pub route_table: String,
    pub filters: Vec<FilterConfig>,
    pub limits: Limits,
    pub original_dst: bool,
    pub tls: Option<crate::tls::ListenerTls>,
    pub http: HttpOptions,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    pub max_connections: usize,
    pub max_header_count: usize,
    pub max_header_bytes: usize,
    pub header_read_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_request_body_bytes: Option<u64>,
    /// How long a client may keep the proxy waiting for request body bytes (time the
    /// upstream is not reading does not count): this long, plus one second for every
    /// `min_request_body_rate` bytes received (Apache's `RequestReadTimeout body=20,MinRate=500`),
    /// so a client trickling bytes is cut off while a large upload at a fair rate is not.
    /// gRPC requests are exempt (long-lived streams).
    pub request_body_timeout: Duration,
    /// Bytes per second that earn a body more time; 0 gives a fixed deadline.
    pub min_request_body_rate: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_connections: 100_000,
            max_header_count: 100,
            max_header_bytes: 64 * 1024,
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            max_request_body_bytes: None,
            request_body_timeout: Duration::from_secs(20),
            min_request_body_rate: 500,
        }
    }
}

#[derive(Debug, Clone)]
pub struct RouteTable {
    pub name: String,
    pub virtual_hosts: Vec<VirtualHost>,
}

#[derive(Debug, Clone)]
pub struct VirtualHost {
    pub name: String,
    pub domains: Vec<DomainPattern>,
    pub routes: Vec<Route>,
}

/// How a virtual host claims an authority. Precedence: exact, then the longest suffix
/// wildcard, then the longest prefix wildcard, then `*`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DomainPattern {
    /// `api.example.com` (lower-cased; a port in the request's authority is ignored
    /// unless the pattern itself has one).
    Exact(String),
    /// `*.example.com` stored as `.example.com`: matches `a.example.com`, `a.b.example.com`.
    Suffix(String),
    /// `api.*` stored as `api.`.
    Prefix(String),
    Any,
}

#[derive(Debug, Clone)]
pub struct Route {
    /// Name for metrics and logs; `<vhost>/<index>` when the file gives none.
    pub name: String,
    pub matcher: RouteMatch,
    pub action: Action,
    pub request_headers: HeaderMutation,
    pub response_headers: HeaderMutation,
    pub filters: Vec<FilterConfig>,
    pub max_request_body_bytes: Option<u64>,
    /// Headers removed from the client's request before any filter runs (in addition to the
    /// listener's `http.trusted_headers`).
    pub trusted_headers: Vec<http::HeaderName>,
}

#[derive(Debug, Clone, Default)]
pub struct RouteMatch {
    pub path: Option<PathMatch>,
    /// Upper-case method names; empty means any.
    pub methods: Vec<http::Method>,
    pub headers: Vec<ValueMatch>,
    pub query: Vec<ValueMatch>,
}

#[derive(Debug, Clone)]
pub enum PathMatch {
    Exact(String),
    Prefix(String),
    /// Anchored: the whole path must match.
    Regex(Regex),
    /// `/users/{id}`, matched segment by segment.
    Template(crate::template::PathTemplate),
}

#[derive(Debug, Clone)]
pub struct ValueMatch {
    /// Header names are lower-cased; query names are kept as written.
    pub name: String,
    pub kind: ValueMatchKind,
    pub invert: bool,
}

#[derive(Debug, Clone)]
pub enum ValueMatchKind {
    Present,
    Exact(String),
    Prefix(String),
    /// Anchored: the whole value must match.
    Regex(Regex),
}

#[derive(Debug, Clone)]
pub enum Action {
    Forward(Forward),
    DirectResponse(DirectResponse),
    Redirect(Redirect),
    /// A function deployed to the gateway answers (its name; deployed or not, checked per
    /// request: functions come and go without a config change).
    Function(String),
}

#[derive(Debug, Clone)]
pub struct Forward {
    /// One entry with weight 1 for a plain `cluster:`.
    pub clusters: Vec<WeightedCluster>,
    pub prefix_rewrite: Option<String>,
    pub host_rewrite: Option<http::HeaderValue>,
    pub timeout: Option<Duration>,
    pub retries: Option<RetryPolicy>,
    pub hash_policy: Vec<HashPolicy>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WeightedCluster {
    pub cluster: String,
    pub weight: u32,
}

#[derive(Debug, Clone)]
pub struct DirectResponse {
    pub status: http::StatusCode,
    pub body: String,
    pub content_type: http::HeaderValue,
}

#[derive(Debug, Clone)]
pub struct Redirect {
    pub scheme: Option<String>,
    pub host: Option<String>,
    pub port: Option<u16>,
    pub path: Option<String>,
    pub prefix_rewrite: Option<String>,
    pub status: http::StatusCode,
    pub strip_query: bool,
}

/// One entry of a filter chain: the filter's registered name and its config, opaque here.
/// The filter's factory (in the data plane) parses and checks `config`; see
/// [`crate::check::FilterCatalog`].
#[derive(Debug, Clone, PartialEq)]
pub struct FilterConfig {
    pub name: String,
    pub config: serde_json::Value,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cluster {
    pub name: String,
    pub kind: ClusterKind,
    pub endpoints: Vec<EndpointAddr>,
    pub lb_policy: LbPolicy,
    pub connect_timeout: Duration,
    pub dns_refresh: Duration,
    pub protocol: UpstreamProtocol,
    pub idle_timeout: Duration,
    pub max_idle_per_endpoint: usize,
    pub circuit_breakers: CircuitBreakers,
    /// Boxed, as `tls`: most clusters have neither, and inline they cost every cluster
    /// their size (ten thousand clusters: megabytes).
    pub health_check: Option<Box<HealthCheck>>,
    pub outlier_detection: Option<OutlierDetection>,
    pub tls: Option<Box<crate::tls::ClusterTls>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClusterKind {
    /// The listed endpoints (IPs, or DNS names re-resolved).
    Static,
    /// The connection's original destination (after an iptables REDIRECT).
    OriginalDst,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum EndpointAddr {
    Ip(SocketAddr),
    Dns { host: String, port: u16 },
}

impl std::fmt::Display for EndpointAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Ip(a) => write!(f, "{a}"),
            Self::Dns { host, port } => write!(f, "{host}:{port}"),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LbPolicy {
    RoundRobin,
    LeastRequest,
    /// Consistent hashing on the route's `hash_policy` (Ketama ring).
    RingHash,
    /// Consistent hashing on the route's `hash_policy` (Maglev table).
    Maglev,
}

/// What a request is hashed on for `ring_hash` and `maglev` clusters; the first that yields a
/// value wins, and a request with none is balanced at random.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HashPolicy {
    Header(http::HeaderName),
    Cookie(String),
    SourceIp,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamProtocol {
    Http1,
    Http2,
}

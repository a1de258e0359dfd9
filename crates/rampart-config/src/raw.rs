//! Raw configuration as written in YAML: plain serde structs that reject unknown fields.
//!
//! Nothing here is checked beyond its shape; `validate()` turns these into the
//! validated model. The shape follows Envoy: listener → route table → virtual host → route →
//! cluster → endpoints, so that xDS resources map onto the same model later.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// The whole file.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    /// Data-plane worker threads; defaults to the number of CPUs.
    #[serde(default)]
    pub workers: Option<usize>,
    #[serde(default)]
    pub admin: Option<RawAdmin>,
    #[serde(default)]
    pub access_log: Option<RawAccessLog>,
    /// How long in-flight requests may run after SIGTERM/SIGINT ("10s").
    #[serde(default)]
    pub drain_timeout: Option<String>,
    #[serde(default)]
    pub listeners: Vec<RawListener>,
    #[serde(default)]
    pub route_tables: Vec<RawRouteTable>,
    #[serde(default)]
    pub clusters: Vec<RawCluster>,
    /// The policy engine used by `authz` filters.
    #[serde(default)]
    pub policy: Option<crate::policy::RawPolicy>,
    /// What `wasm` filters' modules must be signed with.
    #[serde(default)]
    pub wasm: Option<RawWasm>,
}

/// `wasm:` — the Ed25519 public keys (base64) a plugin module's signature must verify under,
/// and where compiled plugins are cached.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RawWasm {
    #[serde(default)]
    pub trusted_keys: Vec<String>,
    /// Where compiled plugins are kept across restarts (a directory only the gateway's user
    /// may write); none: compiled at each start.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_dir: Option<String>,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RawAdmin {
    pub address: String,
    /// A file holding the bearer token that mutating admin requests must send. Without one,
    /// the admin API is read-only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_file: Option<String>,
    /// Host names (port ignored) the admin port answers; default: the loopback names
    /// `localhost`, `127.0.0.1`, `[::1]` (so a web page cannot reach it through DNS rebinding).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allowed_hosts: Option<Vec<String>>,
    /// Most admin connections open at once (default 64).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_connections: Option<usize>,
    /// Longest wait for a request's headers (default 10s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub header_read_timeout: Option<String>,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RawAccessLog {
    /// `text`, `json` or `off`.
    pub format: String,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RawListener {
    pub name: String,
    pub address: String,
    pub route_table: String,
    #[serde(default)]
    pub filters: Vec<RawFilter>,
    #[serde(default)]
    pub limits: RawLimits,
    /// Recover each connection's original destination (`SO_ORIGINAL_DST`) after an iptables
    /// REDIRECT, for `original_dst` clusters (Envoy's `use_original_dst`).
    #[serde(default)]
    pub original_dst: bool,
    /// Terminate TLS on this listener.
    #[serde(default)]
    pub tls: Option<crate::tls::RawListenerTls>,
    /// Path normalisation, trusted headers and proxies.
    #[serde(default)]
    pub http: crate::http::RawHttpOptions,
}

/// Per-listener protections against slow or abusive clients.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RawLimits {
    pub max_connections: Option<usize>,
    pub max_header_count: Option<usize>,
    pub max_header_bytes: Option<usize>,
    pub header_read_timeout: Option<String>,
    pub idle_timeout: Option<String>,
    pub max_request_body_bytes: Option<u64>,
    pub request_body_timeout: Option<String>,
    pub min_request_body_rate: Option<u64>,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RawRouteTable {
    pub name: String,
    pub virtual_hosts: Vec<RawVirtualHost>,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RawVirtualHost {
    pub name: String,
    /// Exact names, `*.suffix` / `prefix.*` wildcards, or `*`.
    pub domains: Vec<String>,
    pub routes: Vec<RawRoute>,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RawRoute {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(rename = "match", default)]
    pub matcher: RawMatch,
    #[serde(default)]
    pub forward: Option<RawForward>,
    #[serde(default)]
    pub direct_response: Option<RawDirectResponse>,
    #[serde(default)]
    pub redirect: Option<RawRedirect>,
    /// Answer with a deployed function (`rampart fn deploy`) instead of a cluster.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub function: Option<String>,
    #[serde(default)]
    pub request_headers: Option<RawHeaderMutation>,
    #[serde(default)]
    pub response_headers: Option<RawHeaderMutation>,
    #[serde(default)]
    pub filters: Vec<RawFilter>,
    #[serde(default)]
    pub max_request_body_bytes: Option<u64>,
    /// Headers only filters may set: the client's copies are removed first.
    #[serde(default)]
    pub trusted_headers: Vec<String>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RawMatch {
    #[serde(default)]
    pub path: Option<RawPathMatch>,
    #[serde(default)]
    pub methods: Vec<String>,
    #[serde(default)]
    pub headers: Vec<RawValueMatch>,
    #[serde(default)]
    pub query: Vec<RawValueMatch>,
}

/// Exactly one must be set.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RawPathMatch {
    pub exact: Option<String>,
    pub prefix: Option<String>,
    pub regex: Option<String>,
    /// `/users/{id}`: a parameter matches one whole segment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template: Option<String>,
}

/// A header or query parameter condition: at most one of `exact`, `prefix`, `regex`;
/// none means "present". `invert` negates the result.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RawValueMatch {
    pub name: String,
    pub exact: Option<String>,
    pub prefix: Option<String>,
    pub regex: Option<String>,
    #[serde(default)]
    pub invert: bool,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RawForward {
    pub cluster: Option<String>,
    #[serde(default)]
    pub weighted_clusters: Vec<RawWeightedCluster>,
    pub prefix_rewrite: Option<String>,
    pub host_rewrite: Option<String>,
    pub timeout: Option<String>,
    #[serde(default)]
    pub retries: Option<crate::resilience::RawRetryPolicy>,
    /// For `ring_hash`/`maglev` clusters: `header:<name>`, `cookie:<name>` or `source_ip`,
    /// tried in order.
    #[serde(default)]
    pub hash_policy: Vec<String>,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RawWeightedCluster {
    pub cluster: String,
    pub weight: u32,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RawDirectResponse {
    pub status: u16,
    #[serde(default)]
    pub body: Option<String>,
    #[serde(default)]
    pub content_type: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RawRedirect {
    pub scheme: Option<String>,
    pub host: Option<String>,
    pub port: Option<u16>,
    pub path: Option<String>,
    pub prefix_rewrite: Option<String>,
    /// 301 (default), 302, 303, 307 or 308.
    pub status: Option<u16>,
    #[serde(default)]
    pub strip_query: bool,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RawHeaderMutation {
    /// Appended, keeping existing values.
    #[serde(default)]
    pub add: BTreeMap<String, String>,
    /// Replaces any existing values.
    #[serde(default)]
    pub set: BTreeMap<String, String>,
    #[serde(default)]
    pub remove: Vec<String>,
}

/// A filter in a chain, written as a one-key map: `- cors: {...}`. The key is the filter's
/// registered name; the value is its config, checked by the filter's factory.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(transparent)]
pub struct RawFilter(pub std::collections::BTreeMap<String, serde_json::Value>);

impl RawFilter {
    pub fn new(name: &str, config: serde_json::Value) -> Self {
        Self(BTreeMap::from([(name.to_owned(), config)]))
    }

    /// An entry for a filter that takes no config (`- sidecar_inbound: {}`).
    pub fn named(name: &str) -> Self {
        Self::new(name, serde_json::Value::Object(serde_json::Map::new()))
    }
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RawCluster {
    pub name: String,
    /// `static` (default: the endpoints listed) or `original_dst` (each request goes to the
    /// address its connection was originally sent to; no endpoints).
    #[serde(default, rename = "type")]
    pub kind: Option<String>,
    /// `ip:port` or `dns-name:port`.
    #[serde(default)]
    pub endpoints: Vec<String>,
    /// `round_robin` (default), `least_request`, `ring_hash` or `maglev`.
    #[serde(default)]
    pub lb_policy: Option<String>,
    #[serde(default)]
    pub connect_timeout: Option<String>,
    /// How often DNS names are re-resolved ("30s").
    #[serde(default)]
    pub dns_refresh: Option<String>,
    /// `http1` (default) or `http2` (prior knowledge).
    #[serde(default)]
    pub protocol: Option<String>,
    #[serde(default)]
    pub idle_timeout: Option<String>,
    #[serde(default)]
    pub max_idle_per_endpoint: Option<usize>,
    #[serde(default)]
    pub circuit_breakers: Option<crate::resilience::RawCircuitBreakers>,
    #[serde(default)]
    pub health_check: Option<crate::resilience::RawHealthCheck>,
    #[serde(default)]
    pub outlier_detection: Option<crate::resilience::RawOutlierDetection>,
    /// Originate TLS to the endpoints.
    #[serde(default)]
    pub tls: Option<crate::tls::RawClusterTls>,
}

//! Raw → validated. Collects every problem before failing, each with the field path and rule.
//! Route tables are checked in [`routes`].

mod routes;

use std::collections::HashSet;
use std::net::SocketAddr;
use std::time::Duration;

use crate::check::Ctx;
use crate::check::FilterCatalog;
use crate::error::ConfigError;
use crate::model::{
    AccessLogFormat, Admin, Cluster, ClusterKind, Config, EndpointAddr, FilterConfig, LbPolicy,
    Limits, Listener, UpstreamProtocol,
};
use crate::raw::{RawAccessLog, RawCluster, RawConfig, RawFilter, RawLimits, RawListener};

impl Ctx<'_> {
    fn unique<'a>(&mut self, path: &str, names: impl Iterator<Item = &'a str>, what: &str) {
        let mut seen = HashSet::new();
        for (i, name) in names.enumerate() {
            if name.is_empty() {
                self.err(
                    format!("{path}[{i}].name"),
                    format!("{what} name must not be empty"),
                );
            } else if !seen.insert(name) {
                self.err(
                    format!("{path}[{i}].name"),
                    format!("duplicate {what} name {name:?}"),
                );
            }
        }
    }
}

/// Validates a raw config, returning every error found. Filter configs are not checked
/// (see [`validate_with`]); the data plane checks them before it runs a config.
pub fn validate(raw: RawConfig) -> Result<Config, ConfigError> {
    validate_inner(raw, Ctx::default())
}

/// [`validate`], with each filter entry's config checked by `catalog`, so that every error in
/// the file is reported at once.
pub fn validate_with(raw: RawConfig, catalog: &dyn FilterCatalog) -> Result<Config, ConfigError> {
    validate_inner(
        raw,
        Ctx {
            catalog: Some(catalog),
            ..Ctx::default()
        },
    )
}

fn validate_inner(raw: RawConfig, mut cx: Ctx<'_>) -> Result<Config, ConfigError> {
    let workers = workers(&mut cx, raw.workers);
    let admin = raw.admin.as_ref().and_then(|a| admin(&mut cx, a));
    let access_log = access_log_format(&mut cx, raw.access_log.as_ref());
    let drain_timeout = cx.duration(
        "drain_timeout",
        raw.drain_timeout.as_deref(),
        Duration::from_secs(10),
    );

    cx.unique(
        "clusters",
        raw.clusters.iter().map(|c| c.name.as_str()),
        "cluster",
    );
    cx.unique(
        "route_tables",
        raw.route_tables.iter().map(|t| t.name.as_str()),
        "route table",
    );
    cx.unique(
        "listeners",
        raw.listeners.iter().map(|l| l.name.as_str()),
        "listener",
    );

    let cluster_names: HashSet<&str> = raw.clusters.iter().map(|c| c.name.as_str()).collect();
    let clusters = raw
        .clusters
        .iter()
        .enumerate()
        .map(|(i, c)| cluster(&mut cx, &format!("clusters[{i}]"), c))
        .collect();
    let route_tables = raw
        .route_tables
        .iter()
        .enumerate()
        .map(|(i, t)| {
            routes::route_table(&mut cx, &format!("route_tables[{i}]"), t, &cluster_names)
        })
        .collect();
    let listeners = listeners(&mut cx, &raw, admin.as_ref());

    let policy = raw.policy.as_ref().map(|p| {
        let (policy, errors) = crate::policy::validate_policy(p);
        cx.errors.extend(errors);
        policy
    });

    let wasm = wasm_section(&raw, &mut cx);

    if cx.errors.is_empty() {
        Ok(Config {
            workers,
            admin,
            access_log,
            drain_timeout,
            listeners,
            route_tables,
            clusters,
            policy,
            wasm,
            raw,
        })
    } else {
        Err(ConfigError::Invalid(cx.errors))
    }
}

/// The top-level `wasm:` section.
fn wasm_section(raw: &RawConfig, cx: &mut Ctx) -> crate::model::WasmTrust {
    let wasm_trusted_keys: Vec<String> = raw
        .wasm
        .as_ref()
        .map(|w| w.trusted_keys.clone())
        .unwrap_or_default();
    let wasm_cache_dir = raw
        .wasm
        .as_ref()
        .and_then(|w| w.cache_dir.as_ref())
        .map(std::path::PathBuf::from);
    if wasm_cache_dir
        .as_ref()
        .is_some_and(|d| d.as_os_str().is_empty())
    {
        cx.err("wasm.cache_dir", "must not be empty");
    }
    for (i, k) in wasm_trusted_keys.iter().enumerate() {
        if k.trim().is_empty() {
            cx.err(format!("wasm.trusted_keys[{i}]"), "must not be empty");
        }
    }
    crate::model::WasmTrust {
        trusted_keys: wasm_trusted_keys,
        cache_dir: wasm_cache_dir,
    }
}

fn workers(cx: &mut Ctx, workers: Option<usize>) -> usize {
    match workers {
        Some(0) => {
            cx.err("workers", "must be at least 1");
            1
        }
        Some(n) => n,
        None => std::thread::available_parallelism().map_or(1, std::num::NonZero::get),
    }
}

fn access_log_format(cx: &mut Ctx, access_log: Option<&RawAccessLog>) -> AccessLogFormat {
    match access_log.map(|a| a.format.as_str()) {
        None | Some("text") => AccessLogFormat::Text,
        Some("json") => AccessLogFormat::Json,
        Some("off") => AccessLogFormat::Off,
        Some(other) => {
            cx.err(
                "access_log.format",
                format!("unknown format {other:?}; expected text, json or off"),
            );
            AccessLogFormat::Text
        }
    }
}

/// Every listener, each on an address of its own that the admin server does not use either.
fn listeners(cx: &mut Ctx, raw: &RawConfig, admin: Option<&Admin>) -> Vec<Listener> {
    let table_names: HashSet<&str> = raw.route_tables.iter().map(|t| t.name.as_str()).collect();
    let mut addresses = HashSet::new();
    let listeners = raw
        .listeners
        .iter()
        .enumerate()
        .filter_map(|(i, l)| {
            let path = format!("listeners[{i}]");
            listener(cx, &path, l, &table_names, &mut addresses)
        })
        .collect();
    if let Some(a) = admin.map(|a| a.address)
        && a.port() != 0
        && addresses.contains(&a)
    {
        cx.err("admin.address", format!("{a} is also used by a listener"));
    }
    listeners
}

fn parse_socket_addr(s: &str) -> Result<SocketAddr, String> {
    s.parse()
        .map_err(|_| format!("{s:?} is not an ip:port address (e.g. 127.0.0.1:8080 or [::1]:8080)"))
}

fn listener(
    cx: &mut Ctx,
    path: &str,
    l: &RawListener,
    tables: &HashSet<&str>,
    addresses: &mut HashSet<SocketAddr>,
) -> Option<Listener> {
    let address = parse_socket_addr(&l.address)
        .map_err(|rule| cx.err(format!("{path}.address"), rule))
        .ok();
    if let Some(a) = address
        && a.port() != 0
        && !addresses.insert(a)
    {
        cx.err(
            format!("{path}.address"),
            format!("{a} is already used by another listener"),
        );
    }
    if !tables.contains(l.route_table.as_str()) {
        cx.err(
            format!("{path}.route_table"),
            format!("no route table named {:?}", l.route_table),
        );
    }
    let filters = filters(cx, &format!("{path}.filters"), &l.filters);
    let limits = limits(cx, &format!("{path}.limits"), &l.limits);
    let (http, errors) = crate::http::validate_http(&format!("{path}.http"), &l.http);
    cx.errors.extend(errors);
    let tls = l.tls.as_ref().and_then(|t| {
        let (tls, errors) = crate::tls::validate_listener_tls(&format!("{path}.tls"), t);
        cx.errors.extend(errors);
        tls
    });
    Some(Listener {
        name: l.name.clone(),
        address: address?,
        route_table: l.route_table.clone(),
        filters,
        limits,
        original_dst: l.original_dst,
        tls,
        http,
    })
}

fn admin(cx: &mut Ctx, a: &crate::raw::RawAdmin) -> Option<Admin> {
    let address = parse_socket_addr(&a.address)
        .map_err(|rule| cx.err("admin.address", rule))
        .ok()?;
    let mut admin = Admin::at(address);
    if let Some(f) = &a.token_file {
        match crate::tls::readable_file(f) {
            Ok(p) => admin.token_file = Some(p),
            Err(rule) => cx.err("admin.token_file", rule),
        }
    }
    if let Some(hosts) = &a.allowed_hosts {
        admin.allowed_hosts = hosts.iter().map(|h| h.to_ascii_lowercase()).collect();
        if hosts.is_empty() {
            cx.err("admin.allowed_hosts", "must list at least one host name");
        }
    }
    match a.max_connections {
        Some(0) => cx.err("admin.max_connections", "must be at least 1"),
        Some(n) => admin.max_connections = n,
        None => {}
    }
    admin.header_read_timeout = cx.duration(
        "admin.header_read_timeout",
        a.header_read_timeout.as_deref(),
        admin.header_read_timeout,
    );
    Some(admin)
}

fn limits(cx: &mut Ctx, path: &str, l: &RawLimits) -> Limits {
    let d = Limits::default();
    let positive = |cx: &mut Ctx, field: &str, v: Option<usize>, default: usize| match v {
        Some(0) => {
            cx.err(format!("{path}.{field}"), "must be at least 1");
            default
        }
        Some(n) => n,
        None => default,
    };
    Limits {
        max_connections: positive(cx, "max_connections", l.max_connections, d.max_connections),
        max_header_count: positive(
            cx,
            "max_header_count",
            l.max_header_count,
            d.max_header_count,
        ),
        max_header_bytes: match l.max_header_bytes {
            Some(n) if n < 1024 => {
                cx.err(format!("{path}.max_header_bytes"), "must be at least 1024");
                d.max_header_bytes
            }
            Some(n) => n,
            None => d.max_header_bytes,
        },
        header_read_timeout: cx.duration(
            &format!("{path}.header_read_timeout"),
            l.header_read_timeout.as_deref(),
            d.header_read_timeout,
        ),
        idle_timeout: cx.duration(
            &format!("{path}.idle_timeout"),
            l.idle_timeout.as_deref(),
            d.idle_timeout,
        ),
        max_request_body_bytes: l.max_request_body_bytes,
        request_body_timeout: match l.request_body_timeout.as_deref() {
            Some(v) => {
                let p = format!("{path}.request_body_timeout");
                let t = cx.duration(&p, Some(v), d.request_body_timeout);
                if t.is_zero() {
                    cx.err(p, "must be more than 0s");
                }
                t
            }
            None => d.request_body_timeout,
        },
        min_request_body_rate: l.min_request_body_rate.unwrap_or(d.min_request_body_rate),
    }
}

/// Chain entries: each a one-key map from a filter name to its config. The config is checked
/// by `catalog` when there is one (the data plane's filter registry), else left for it.
fn filters(cx: &mut Ctx, path: &str, raw: &[RawFilter]) -> Vec<FilterConfig> {
    let mut out = Vec::with_capacity(raw.len());
    for (i, RawFilter(entry)) in raw.iter().enumerate() {
        let fpath = format!("{path}[{i}]");
        let mut names = entry.iter();
        let (Some((name, config)), None) = (names.next(), names.next()) else {
            cx.err(
                fpath,
                format!(
                    "a filter is a one-key map from its name to its config (`- cors: {{...}}`); found {} keys",
                    entry.len()
                ),
            );
            continue;
        };
        if let Some(catalog) = cx.catalog {
            let errors = catalog.check(name, &format!("{fpath}.{name}"), config);
            cx.errors.extend(errors);
        }
        out.push(FilterConfig {
            name: name.clone(),
            config: config.clone(),
        });
    }
    out
}

fn cluster(cx: &mut Ctx, path: &str, c: &RawCluster) -> Cluster {
    let kind = cluster_kind(cx, path, c);
    let endpoints = c
        .endpoints
        .iter()
        .enumerate()
        .filter_map(|(i, e)| {
            endpoint(e)
                .map_err(|rule| cx.err(format!("{path}.endpoints[{i}]"), rule))
                .ok()
        })
        .collect();
    let lb_policy = lb_policy(cx, path, c.lb_policy.as_deref());
    let protocol = upstream_protocol(cx, path, c.protocol.as_deref());
    Cluster {
        name: c.name.clone(),
        kind,
        endpoints,
        lb_policy,
        connect_timeout: cx.duration(
            &format!("{path}.connect_timeout"),
            c.connect_timeout.as_deref(),
            Duration::from_secs(5),
        ),
        dns_refresh: cx.duration(
            &format!("{path}.dns_refresh"),
            c.dns_refresh.as_deref(),
            Duration::from_secs(30),
        ),
        protocol,
        idle_timeout: cx.duration(
            &format!("{path}.idle_timeout"),
            c.idle_timeout.as_deref(),
            Duration::from_secs(90),
        ),
        max_idle_per_endpoint: c.max_idle_per_endpoint.unwrap_or(1024),
        circuit_breakers: c
            .circuit_breakers
            .as_ref()
            .map(|cb| {
                crate::resilience::validate_circuit_breakers(
                    &format!("{path}.circuit_breakers"),
                    cb,
                    &mut cx.errors,
                )
            })
            .unwrap_or_default(),
        health_check: c.health_check.as_ref().and_then(|h| {
            crate::resilience::validate_health_check(
                &format!("{path}.health_check"),
                h,
                &mut cx.errors,
            )
            .map(Box::new)
        }),
        tls: c.tls.as_ref().and_then(|t| {
            let (tls, errors) = crate::tls::validate_cluster_tls(&format!("{path}.tls"), t);
            cx.errors.extend(errors);
            tls.map(Box::new)
        }),
        outlier_detection: c.outlier_detection.as_ref().map(|o| {
            crate::resilience::validate_outlier(
                &format!("{path}.outlier_detection"),
                o,
                &mut cx.errors,
            )
        }),
    }
}

/// The cluster's `type`, and whether it lists endpoints as that type wants.
fn cluster_kind(cx: &mut Ctx, path: &str, c: &RawCluster) -> ClusterKind {
    let kind = match c.kind.as_deref() {
        None | Some("static") => ClusterKind::Static,
        Some("original_dst") => ClusterKind::OriginalDst,
        Some(other) => {
            cx.err(
                format!("{path}.type"),
                format!("unknown cluster type {other:?}; expected static or original_dst"),
            );
            ClusterKind::Static
        }
    };
    match (kind, c.endpoints.is_empty()) {
        (ClusterKind::Static, true) => cx.err(
            format!("{path}.endpoints"),
            "must list at least one endpoint",
        ),
        (ClusterKind::OriginalDst, false) => cx.err(
            format!("{path}.endpoints"),
            "must be empty for an original_dst cluster (the destination comes from each connection)",
        ),
        _ => {}
    }
    kind
}

fn lb_policy(cx: &mut Ctx, path: &str, policy: Option<&str>) -> LbPolicy {
    match policy {
        None | Some("round_robin") => LbPolicy::RoundRobin,
        Some("least_request") => LbPolicy::LeastRequest,
        Some("ring_hash") => LbPolicy::RingHash,
        Some("maglev") => LbPolicy::Maglev,
        Some(o) => {
            cx.err(
                format!("{path}.lb_policy"),
                format!(
                    "unknown policy {o:?}; expected round_robin, least_request, ring_hash or maglev"
                ),
            );
            LbPolicy::RoundRobin
        }
    }
}

fn upstream_protocol(cx: &mut Ctx, path: &str, protocol: Option<&str>) -> UpstreamProtocol {
    match protocol {
        None | Some("http1") => UpstreamProtocol::Http1,
        Some("http2") => UpstreamProtocol::Http2,
        Some(o) => {
            cx.err(
                format!("{path}.protocol"),
                format!("unknown protocol {o:?}; expected http1 or http2"),
            );
            UpstreamProtocol::Http1
        }
    }
}

/// Parses `ip:port`, `[v6]:port` or `name:port`.
pub fn endpoint(s: &str) -> Result<EndpointAddr, String> {
    if let Ok(a) = s.parse::<SocketAddr>() {
        return Ok(EndpointAddr::Ip(a));
    }
    let bad = || format!("{s:?} is not ip:port or host:port");
    let (host, port) = s.rsplit_once(':').ok_or_else(bad)?;
    let port: u16 = port.parse().map_err(|_| bad())?;
    let valid_host = !host.is_empty()
        && host.len() <= 253
        && host.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        });
    if !valid_host || port == 0 {
        return Err(bad());
    }
    Ok(EndpointAddr::Dns {
        host: host.to_ascii_lowercase(),
        port,
    })
}

//! Raw → validated. Collects every problem before failing, each with the field path and rule.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::time::Duration;

use regex::Regex;

use crate::check::Ctx;
use crate::check::FilterCatalog;
use crate::error::ConfigError;
use crate::headers::{header_name, header_value, mutation};
use crate::model::{
    AccessLogFormat, Action, Cluster, ClusterKind, Config, DirectResponse, DomainPattern,
    EndpointAddr, FilterConfig, Forward, HashPolicy, LbPolicy, Limits, Listener, PathMatch,
    Redirect, Route, RouteMatch, RouteTable, UpstreamProtocol, ValueMatch, ValueMatchKind,
    VirtualHost, WeightedCluster,
};
use crate::raw::{
    RawCluster, RawConfig, RawFilter, RawForward, RawLimits, RawListener, RawRoute, RawValueMatch,
};

/// Largest compiled regex accepted, so a config cannot make the matcher huge.
const REGEX_SIZE_LIMIT: usize = 1 << 20;

impl Ctx<'_> {
    fn regex(&mut self, path: &str, pattern: &str) -> Option<Regex> {
        let anchored = format!("^(?:{pattern})$");
        match regex::RegexBuilder::new(&anchored)
            .size_limit(REGEX_SIZE_LIMIT)
            .build()
        {
            Ok(r) => Some(r),
            Err(e) => {
                let msg = e.to_string();
                // The regex crate's message spans several lines; keep its last, which says why.
                let why = msg.lines().last().unwrap_or("invalid").trim().to_owned();
                self.err(path, format!("invalid regex {pattern:?}: {why}"));
                None
            }
        }
    }

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
    let workers = match raw.workers {
        Some(0) => {
            cx.err("workers", "must be at least 1");
            1
        }
        Some(n) => n,
        None => std::thread::available_parallelism().map_or(1, std::num::NonZero::get),
    };
    let admin = raw.admin.as_ref().and_then(|a| admin(&mut cx, a));
    let access_log = match raw.access_log.as_ref().map(|a| a.format.as_str()) {
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
    };
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
        .map(|(ti, t)| {
            let tpath = format!("route_tables[{ti}]");
            cx.unique(
                &format!("{tpath}.virtual_hosts"),
                t.virtual_hosts.iter().map(|v| v.name.as_str()),
                "virtual host",
            );
            let mut domains_seen = HashSet::new();
            let virtual_hosts = t
                .virtual_hosts
                .iter()
                .enumerate()
                .map(|(vi, v)| {
                    let vpath = format!("{tpath}.virtual_hosts[{vi}]");
                    if v.domains.is_empty() {
                        cx.err(format!("{vpath}.domains"), "must list at least one domain");
                    }
                    let domains = v
                        .domains
                        .iter()
                        .enumerate()
                        .filter_map(|(di, d)| {
                            let dpath = format!("{vpath}.domains[{di}]");
                            if !domains_seen.insert(d.to_ascii_lowercase()) {
                                cx.err(
                                    &dpath,
                                    format!("domain {d:?} is already claimed by another virtual host in this table"),
                                );
                            }
                            domain_pattern(d).map_err(|rule| cx.err(dpath, rule)).ok()
                        })
                        .collect();
                    let routes = v
                        .routes
                        .iter()
                        .enumerate()
                        .map(|(ri, r)| {
                            route(
                                &mut cx,
                                &format!("{vpath}.routes[{ri}]"),
                                r,
                                &v.name,
                                ri,
                                &cluster_names,
                            )
                        })
                        .collect();
                    VirtualHost {
                        name: v.name.clone(),
                        domains,
                        routes,
                    }
                })
                .collect();
            RouteTable {
                name: t.name.clone(),
                virtual_hosts,
            }
        })
        .collect::<Vec<_>>();

    let table_names: HashSet<&str> = raw.route_tables.iter().map(|t| t.name.as_str()).collect();
    let mut addresses = HashSet::new();
    let listeners = raw
        .listeners
        .iter()
        .enumerate()
        .filter_map(|(i, l)| {
            let path = format!("listeners[{i}]");
            listener(&mut cx, &path, l, &table_names, &mut addresses)
        })
        .collect();
    if let Some(a) = admin.as_ref().map(|a| a.address)
        && a.port() != 0
        && addresses.contains(&a)
    {
        cx.err("admin.address", format!("{a} is also used by a listener"));
    }

    let policy = raw.policy.as_ref().map(|p| {
        let (policy, errors) = crate::policy::validate_policy(p);
        cx.errors.extend(errors);
        policy
    });

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
            raw,
        })
    } else {
        Err(ConfigError::Invalid(cx.errors))
    }
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

fn admin(cx: &mut Ctx, a: &crate::raw::RawAdmin) -> Option<crate::model::Admin> {
    let address = parse_socket_addr(&a.address)
        .map_err(|rule| cx.err("admin.address", rule))
        .ok()?;
    let mut admin = crate::model::Admin::at(address);
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

fn domain_pattern(d: &str) -> Result<DomainPattern, String> {
    let lower = d.to_ascii_lowercase();
    if lower == "*" {
        return Ok(DomainPattern::Any);
    }
    let check = |s: &str| {
        if s.is_empty()
            || s.contains('*')
            || !s
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-.:_[]".contains(&b))
        {
            Err(format!(
                "invalid domain {d:?}: use a host name, \"*.suffix\", \"prefix.*\" or \"*\""
            ))
        } else {
            Ok(())
        }
    };
    if let Some(rest) = lower.strip_prefix('*') {
        check(rest)?;
        Ok(DomainPattern::Suffix(rest.to_owned()))
    } else if let Some(rest) = lower.strip_suffix('*') {
        check(rest)?;
        Ok(DomainPattern::Prefix(rest.to_owned()))
    } else {
        check(&lower)?;
        Ok(DomainPattern::Exact(lower))
    }
}

fn route(
    cx: &mut Ctx,
    path: &str,
    r: &RawRoute,
    vhost: &str,
    index: usize,
    clusters: &HashSet<&str>,
) -> Route {
    let m = &r.matcher;
    let path_match = m.path.as_ref().and_then(|p| {
        let ppath = format!("{path}.match.path");
        match (&p.exact, &p.prefix, &p.regex) {
            (Some(e), None, None) => Some(PathMatch::Exact(e.clone())),
            (None, Some(pre), None) => Some(PathMatch::Prefix(pre.clone())),
            (None, None, Some(re)) => cx
                .regex(&format!("{ppath}.regex"), re)
                .map(PathMatch::Regex),
            _ => {
                cx.err(ppath, "set exactly one of exact, prefix, regex");
                None
            }
        }
    });
    if let Some(PathMatch::Exact(p) | PathMatch::Prefix(p)) = &path_match
        && !p.starts_with('/')
    {
        cx.err(
            format!("{path}.match.path"),
            format!("{p:?} must start with '/'"),
        );
    }
    let methods = m
        .methods
        .iter()
        .enumerate()
        .filter_map(|(i, s)| {
            http::Method::from_bytes(s.to_ascii_uppercase().as_bytes())
                .map_err(|_| {
                    cx.err(
                        format!("{path}.match.methods[{i}]"),
                        format!("invalid method {s:?}"),
                    );
                })
                .ok()
        })
        .collect();
    let headers = value_matches(cx, &format!("{path}.match.headers"), &m.headers, true);
    let query = value_matches(cx, &format!("{path}.match.query"), &m.query, false);

    let actions = usize::from(r.forward.is_some())
        + usize::from(r.direct_response.is_some())
        + usize::from(r.redirect.is_some());
    let action = if actions != 1 {
        cx.err(
            path,
            "set exactly one action: forward, direct_response or redirect",
        );
        None
    } else if let Some(f) = &r.forward {
        forward(cx, &format!("{path}.forward"), f, clusters).map(Action::Forward)
    } else if let Some(d) = &r.direct_response {
        let dpath = format!("{path}.direct_response");
        let status = http::StatusCode::from_u16(d.status)
            .ok()
            .filter(|_| (200..=599).contains(&d.status));
        if status.is_none() {
            cx.err(
                format!("{dpath}.status"),
                format!("{} is not a status between 200 and 599", d.status),
            );
        }
        let content_type = header_value(
            cx,
            &format!("{dpath}.content_type"),
            d.content_type
                .as_deref()
                .unwrap_or("text/plain; charset=utf-8"),
        );
        match (status, content_type) {
            (Some(status), Some(content_type)) => Some(Action::DirectResponse(DirectResponse {
                status,
                body: d.body.clone().unwrap_or_default(),
                content_type,
            })),
            _ => None,
        }
    } else if let Some(rd) = &r.redirect {
        let rpath = format!("{path}.redirect");
        let code = rd.status.unwrap_or(301);
        if !matches!(code, 301 | 302 | 303 | 307 | 308) {
            cx.err(
                format!("{rpath}.status"),
                format!("{code} is not a redirect status (301, 302, 303, 307, 308)"),
            );
        }
        if let Some(s) = &rd.scheme
            && s != "http"
            && s != "https"
        {
            cx.err(
                format!("{rpath}.scheme"),
                format!("{s:?} must be http or https"),
            );
        }
        if rd.path.is_some() && rd.prefix_rewrite.is_some() {
            cx.err(&rpath, "set at most one of path, prefix_rewrite");
        }
        Some(Action::Redirect(Redirect {
            scheme: rd.scheme.clone(),
            host: rd.host.clone(),
            port: rd.port,
            path: rd.path.clone(),
            prefix_rewrite: rd.prefix_rewrite.clone(),
            status: http::StatusCode::from_u16(code).unwrap_or(http::StatusCode::MOVED_PERMANENTLY),
            strip_query: rd.strip_query,
        }))
    } else {
        None
    };

    Route {
        name: r.name.clone().unwrap_or_else(|| format!("{vhost}/{index}")),
        matcher: RouteMatch {
            path: path_match,
            methods,
            headers,
            query,
        },
        // A placeholder only when validation already failed; never returned.
        action: action.unwrap_or_else(|| {
            Action::DirectResponse(DirectResponse {
                status: http::StatusCode::INTERNAL_SERVER_ERROR,
                body: String::new(),
                content_type: http::HeaderValue::from_static("text/plain"),
            })
        }),
        request_headers: mutation(
            cx,
            &format!("{path}.request_headers"),
            r.request_headers.as_ref(),
        ),
        response_headers: mutation(
            cx,
            &format!("{path}.response_headers"),
            r.response_headers.as_ref(),
        ),
        filters: filters(cx, &format!("{path}.filters"), &r.filters),
        max_request_body_bytes: r.max_request_body_bytes,
        trusted_headers: crate::http::header_names(
            &mut cx.errors,
            &format!("{path}.trusted_headers"),
            &r.trusted_headers,
        ),
    }
}

fn forward(cx: &mut Ctx, path: &str, f: &RawForward, clusters: &HashSet<&str>) -> Option<Forward> {
    let weighted: Vec<WeightedCluster> = match (&f.cluster, f.weighted_clusters.is_empty()) {
        (Some(c), true) => {
            if !clusters.contains(c.as_str()) {
                cx.err(format!("{path}.cluster"), format!("no cluster named {c:?}"));
            }
            vec![WeightedCluster {
                cluster: c.clone(),
                weight: 1,
            }]
        }
        (None, false) => {
            let mut total: u64 = 0;
            for (i, w) in f.weighted_clusters.iter().enumerate() {
                if !clusters.contains(w.cluster.as_str()) {
                    cx.err(
                        format!("{path}.weighted_clusters[{i}].cluster"),
                        format!("no cluster named {:?}", w.cluster),
                    );
                }
                total += u64::from(w.weight);
            }
            if total == 0 {
                cx.err(
                    format!("{path}.weighted_clusters"),
                    "weights must add up to more than 0",
                );
            }
            f.weighted_clusters
                .iter()
                .map(|w| WeightedCluster {
                    cluster: w.cluster.clone(),
                    weight: w.weight,
                })
                .collect()
        }
        _ => {
            cx.err(path, "set exactly one of cluster, weighted_clusters");
            return None;
        }
    };
    if let Some(p) = &f.prefix_rewrite
        && !p.starts_with('/')
    {
        cx.err(
            format!("{path}.prefix_rewrite"),
            format!("{p:?} must start with '/'"),
        );
    }
    let host_rewrite = f
        .host_rewrite
        .as_deref()
        .and_then(|h| header_value(cx, &format!("{path}.host_rewrite"), h));
    let timeout = f
        .timeout
        .as_deref()
        .map(|t| cx.duration(&format!("{path}.timeout"), Some(t), Duration::from_secs(15)));
    let hash_policy = f
        .hash_policy
        .iter()
        .enumerate()
        .filter_map(|(i, h)| {
            let hpath = format!("{path}.hash_policy[{i}]");
            if h == "source_ip" {
                return Some(HashPolicy::SourceIp);
            }
            if let Some(name) = h.strip_prefix("header:") {
                return header_name(cx, &hpath, name).map(HashPolicy::Header);
            }
            if let Some(name) = h.strip_prefix("cookie:").filter(|n| !n.is_empty()) {
                return Some(HashPolicy::Cookie(name.to_owned()));
            }
            cx.err(
                hpath,
                format!(
                    "unknown hash policy {h:?}; expected header:<name>, cookie:<name> or source_ip"
                ),
            );
            None
        })
        .collect();
    let retries = f
        .retries
        .as_ref()
        .map(|r| crate::resilience::validate_retry(&format!("{path}.retries"), r, &mut cx.errors));
    Some(Forward {
        clusters: weighted,
        prefix_rewrite: f.prefix_rewrite.clone(),
        host_rewrite,
        timeout,
        retries,
        hash_policy,
    })
}

fn value_matches(cx: &mut Ctx, path: &str, raw: &[RawValueMatch], header: bool) -> Vec<ValueMatch> {
    raw.iter()
        .enumerate()
        .filter_map(|(i, m)| {
            let mpath = format!("{path}[{i}]");
            if header && http::HeaderName::from_bytes(m.name.as_bytes()).is_err() {
                cx.err(
                    format!("{mpath}.name"),
                    format!("invalid header name {:?}", m.name),
                );
            }
            if m.name.is_empty() {
                cx.err(format!("{mpath}.name"), "must not be empty");
            }
            let kind = match (&m.exact, &m.prefix, &m.regex) {
                (None, None, None) => ValueMatchKind::Present,
                (Some(e), None, None) => ValueMatchKind::Exact(e.clone()),
                (None, Some(p), None) => ValueMatchKind::Prefix(p.clone()),
                (None, None, Some(r)) => {
                    ValueMatchKind::Regex(cx.regex(&format!("{mpath}.regex"), r)?)
                }
                _ => {
                    cx.err(mpath, "set at most one of exact, prefix, regex");
                    return None;
                }
            };
            Some(ValueMatch {
                name: if header {
                    m.name.to_ascii_lowercase()
                } else {
                    m.name.clone()
                },
                kind,
                invert: m.invert,
            })
        })
        .collect()
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
    let lb_policy = match c.lb_policy.as_deref() {
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
    };
    let protocol = match c.protocol.as_deref() {
        None | Some("http1") => UpstreamProtocol::Http1,
        Some("http2") => UpstreamProtocol::Http2,
        Some(o) => {
            cx.err(
                format!("{path}.protocol"),
                format!("unknown protocol {o:?}; expected http1 or http2"),
            );
            UpstreamProtocol::Http1
        }
    };
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
        }),
        tls: c.tls.as_ref().and_then(|t| {
            let (tls, errors) = crate::tls::validate_cluster_tls(&format!("{path}.tls"), t);
            cx.errors.extend(errors);
            tls
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

//! Route tables: virtual hosts and their domains, each route's match and action, and where a
//! forward sends a request.

use std::collections::HashSet;
use std::time::Duration;

use regex::Regex;

use super::filters;
use crate::check::Ctx;
use crate::headers::{header_name, header_value, mutation};
use crate::model::{
    Action, DirectResponse, DomainPattern, Forward, HashPolicy, PathMatch, Redirect, Route,
    RouteMatch, RouteTable, ValueMatch, ValueMatchKind, VirtualHost, WeightedCluster,
};
use crate::raw::{
    RawDirectResponse, RawForward, RawMatch, RawRedirect, RawRoute, RawRouteTable, RawValueMatch,
    RawVirtualHost,
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
}

/// One route table; a domain may be claimed by only one of its virtual hosts.
pub(super) fn route_table(
    cx: &mut Ctx,
    tpath: &str,
    t: &RawRouteTable,
    clusters: &HashSet<&str>,
) -> RouteTable {
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
            virtual_host(cx, &vpath, v, &mut domains_seen, clusters)
        })
        .collect();
    RouteTable {
        name: t.name.clone(),
        virtual_hosts,
    }
}

/// `domains_seen` holds the (lowercased) domains of the table's earlier virtual hosts.
fn virtual_host(
    cx: &mut Ctx,
    vpath: &str,
    v: &RawVirtualHost,
    domains_seen: &mut HashSet<String>,
    clusters: &HashSet<&str>,
) -> VirtualHost {
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
                    format!(
                        "domain {d:?} is already claimed by another virtual host in this table"
                    ),
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
            let name = r.name.clone().unwrap_or_else(|| format!("{}/{ri}", v.name));
            route(cx, &format!("{vpath}.routes[{ri}]"), r, name, clusters)
        })
        .collect();
    VirtualHost {
        name: v.name.clone(),
        domains,
        routes,
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

/// `name` is the route's own, or `<virtual host>/<index>` when it has none.
fn route(cx: &mut Ctx, path: &str, r: &RawRoute, name: String, clusters: &HashSet<&str>) -> Route {
    let matcher = route_match(cx, path, &r.matcher);
    let action = action(cx, path, r, clusters);
    Route {
        name,
        matcher,
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

/// The route's `match`: path, methods, headers and query.
fn route_match(cx: &mut Ctx, path: &str, m: &RawMatch) -> RouteMatch {
    let path_match = m.path.as_ref().and_then(|p| {
        let ppath = format!("{path}.match.path");
        match (&p.exact, &p.prefix, &p.regex, &p.template) {
            (Some(e), None, None, None) => Some(PathMatch::Exact(e.clone())),
            (None, Some(pre), None, None) => Some(PathMatch::Prefix(pre.clone())),
            (None, None, Some(re), None) => cx
                .regex(&format!("{ppath}.regex"), re)
                .map(PathMatch::Regex),
            (None, None, None, Some(t)) => crate::template::PathTemplate::parse(t)
                .map_err(|e| cx.err(format!("{ppath}.template"), e))
                .ok()
                .map(PathMatch::Template),
            _ => {
                cx.err(ppath, "set exactly one of exact, prefix, regex, template");
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
    RouteMatch {
        path: path_match,
        methods,
        headers: value_matches(cx, &format!("{path}.match.headers"), &m.headers, true),
        query: value_matches(cx, &format!("{path}.match.query"), &m.query, false),
    }
}

/// The route's one action; `None` after an error.
fn action(cx: &mut Ctx, path: &str, r: &RawRoute, clusters: &HashSet<&str>) -> Option<Action> {
    let actions = usize::from(r.forward.is_some())
        + usize::from(r.direct_response.is_some())
        + usize::from(r.redirect.is_some())
        + usize::from(r.function.is_some());
    if actions != 1 {
        cx.err(
            path,
            "set exactly one action: forward, direct_response, redirect or function",
        );
        None
    } else if let Some(name) = &r.function {
        function_name(cx, &format!("{path}.function"), name).map(Action::Function)
    } else if let Some(f) = &r.forward {
        forward(cx, &format!("{path}.forward"), f, clusters).map(Action::Forward)
    } else if let Some(d) = &r.direct_response {
        direct_response(cx, &format!("{path}.direct_response"), d).map(Action::DirectResponse)
    } else {
        let rd = r.redirect.as_ref()?;
        Some(Action::Redirect(redirect(
            cx,
            &format!("{path}.redirect"),
            rd,
        )))
    }
}

/// A function's name: what `rampart fn deploy` accepts (a DNS label).
fn function_name(cx: &mut Ctx, path: &str, name: &str) -> Option<String> {
    if crate::is_function_name(name) {
        Some(name.to_owned())
    } else {
        cx.err(
            path,
            format!("{name:?} is not a function name (1-63 of a-z, 0-9 and '-', not starting or ending with '-')"),
        );
        None
    }
}

fn direct_response(cx: &mut Ctx, dpath: &str, d: &RawDirectResponse) -> Option<DirectResponse> {
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
    Some(DirectResponse {
        status: status?,
        body: d.body.clone().unwrap_or_default(),
        content_type: content_type?,
    })
}

fn redirect(cx: &mut Ctx, rpath: &str, rd: &RawRedirect) -> Redirect {
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
        cx.err(rpath, "set at most one of path, prefix_rewrite");
    }
    Redirect {
        scheme: rd.scheme.clone(),
        host: rd.host.clone(),
        port: rd.port,
        path: rd.path.clone(),
        prefix_rewrite: rd.prefix_rewrite.clone(),
        status: http::StatusCode::from_u16(code).unwrap_or(http::StatusCode::MOVED_PERMANENTLY),
        strip_query: rd.strip_query,
    }
}

fn forward(cx: &mut Ctx, path: &str, f: &RawForward, clusters: &HashSet<&str>) -> Option<Forward> {
    let weighted = forward_clusters(cx, path, f, clusters)?;
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
        .filter_map(|(i, h)| hash_policy(cx, &format!("{path}.hash_policy[{i}]"), h))
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

/// Where a forward sends requests: its one `cluster`, or its `weighted_clusters`. `None`
/// when it sets both or neither.
fn forward_clusters(
    cx: &mut Ctx,
    path: &str,
    f: &RawForward,
    clusters: &HashSet<&str>,
) -> Option<Vec<WeightedCluster>> {
    match (&f.cluster, f.weighted_clusters.is_empty()) {
        (Some(c), true) => {
            if !clusters.contains(c.as_str()) {
                cx.err(format!("{path}.cluster"), format!("no cluster named {c:?}"));
            }
            Some(vec![WeightedCluster {
                cluster: c.clone(),
                weight: 1,
            }])
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
            Some(
                f.weighted_clusters
                    .iter()
                    .map(|w| WeightedCluster {
                        cluster: w.cluster.clone(),
                        weight: w.weight,
                    })
                    .collect(),
            )
        }
        _ => {
            cx.err(path, "set exactly one of cluster, weighted_clusters");
            None
        }
    }
}

fn hash_policy(cx: &mut Ctx, hpath: &str, h: &str) -> Option<HashPolicy> {
    if h == "source_ip" {
        return Some(HashPolicy::SourceIp);
    }
    if let Some(name) = h.strip_prefix("header:") {
        return header_name(cx, hpath, name).map(HashPolicy::Header);
    }
    if let Some(name) = h.strip_prefix("cookie:").filter(|n| !n.is_empty()) {
        return Some(HashPolicy::Cookie(name.to_owned()));
    }
    cx.err(
        hpath,
        format!("unknown hash policy {h:?}; expected header:<name>, cookie:<name> or source_ip"),
    );
    None
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

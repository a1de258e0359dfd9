//! Route matching for Rampart: a pure core with no IO and no async.
//!
//! A [`RouteTable`] is compiled from a validated [`rampart_config::model::RouteTable`] and
//! answers one question per request: which route, if any. It is not for carrying the
//! request out (that is `rampart-proxy`).
//!
//! # Precedence
//! 1. **Virtual host** by the request's authority (Host header or HTTP/2 `:authority`,
//!    case-insensitive, port ignored unless the domain names one): an exact domain first,
//!    then the longest `*.suffix` wildcard, then the longest `prefix.*` wildcard, then `*`.
//! 2. **Route**: the virtual host's routes in the order written; the first whose every
//!    condition holds wins (as in Envoy). Exact and template paths sit in a segment tree, so a
//!    lookup checks only the routes whose path can match (and the prefix and regex ones). Conditions: path (exact, prefix, or a regex that must
//!    match the whole path), method (any listed), headers and query parameters (all listed
//!    must hold; `invert` negates one).
//!
//! Matching allocates nothing unless a query-parameter condition must percent-decode a value.
// Panics on outside input are forbidden here; unit tests may unwrap (clippy.toml).
#![warn(clippy::unwrap_used)]

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::Arc;

use http::{HeaderMap, Method};
use rampart_config::model::{
    self, DomainPattern, PathMatch, Route, ValueMatch, ValueMatchKind, VirtualHost, WeightedCluster,
};
use rampart_config::template::{Part, PathTemplate, Segment};

pub mod consistent;
mod index;
pub mod normalize;

use index::PathIndex;

/// What the matcher looks at.
#[derive(Debug, Clone, Copy)]
pub struct RequestView<'a> {
    pub method: &'a Method,
    /// Host header or `:authority`, possibly with a port.
    pub authority: &'a str,
    pub path: &'a str,
    pub query: Option<&'a str>,
    pub headers: &'a HeaderMap,
}

/// Why no route was chosen, for a 404 with a short reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoRoute {
    NoVirtualHost,
    NoRouteMatched,
}

impl NoRoute {
    pub fn reason(self) -> &'static str {
        match self {
            Self::NoVirtualHost => "no virtual host matches the request's host",
            Self::NoRouteMatched => "no route matches the request",
        }
    }
}

/// A route table compiled for lookup. Each route carries a `T` of the caller's (the data
/// plane keeps its compiled route there: filters, targets, stats), which a match returns.
#[derive(Debug, Clone)]
pub struct RouteTable<T = ()> {
    pub name: String,
    virtual_hosts: Vec<VirtualHost>,
    /// `[virtual host][route]`, as `virtual_hosts`.
    data: Vec<Vec<Arc<T>>>,
    /// Each virtual host's routes by path segment.
    index: Vec<PathIndex>,
    exact: HashMap<String, usize>,
    /// (suffix, vhost) longest first.
    suffixes: Vec<(String, usize)>,
    /// (prefix, vhost) longest first.
    prefixes: Vec<(String, usize)>,
    any: Option<usize>,
}

impl RouteTable {
    /// A table whose routes carry nothing of the caller's.
    pub fn new(table: &model::RouteTable) -> Self {
        match Self::with_data(table.clone(), |_, _, _| {
            Ok::<_, std::convert::Infallible>(())
        }) {
            Ok(t) => t,
            Err(never) => match never {},
        }
    }
}

impl<T> RouteTable<T> {
    /// A table whose routes carry `data(vhost index, route index, route)`; the first error
    /// stops the build.
    pub fn with_data<E>(
        table: model::RouteTable,
        mut data: impl FnMut(usize, usize, &Route) -> Result<T, E>,
    ) -> Result<Self, E> {
        let data = table
            .virtual_hosts
            .iter()
            .enumerate()
            .map(|(vi, vh)| {
                vh.routes
                    .iter()
                    .enumerate()
                    .map(|(ri, r)| data(vi, ri, r).map(Arc::new))
                    .collect::<Result<Vec<_>, E>>()
            })
            .collect::<Result<Vec<_>, E>>()?;
        Ok(Self::compile(table, data))
    }

    /// Takes the table's virtual hosts as they are (no copy: a proxy with ten thousand
    /// routes would hold them twice).
    fn compile(table: model::RouteTable, data: Vec<Vec<Arc<T>>>) -> Self {
        let mut exact = HashMap::new();
        let mut suffixes = Vec::new();
        let mut prefixes = Vec::new();
        let mut any = None;
        for (i, vh) in table.virtual_hosts.iter().enumerate() {
            for d in &vh.domains {
                match d {
                    DomainPattern::Exact(s) => {
                        exact.entry(s.clone()).or_insert(i);
                    }
                    DomainPattern::Suffix(s) => suffixes.push((s.clone(), i)),
                    DomainPattern::Prefix(s) => prefixes.push((s.clone(), i)),
                    DomainPattern::Any => {
                        any.get_or_insert(i);
                    }
                }
            }
        }
        // Longest first; stable so that equal lengths keep file order.
        suffixes.sort_by_key(|(s, _)| std::cmp::Reverse(s.len()));
        prefixes.sort_by_key(|(s, _)| std::cmp::Reverse(s.len()));
        let index = table
            .virtual_hosts
            .iter()
            .map(|vh| PathIndex::new(&vh.routes))
            .collect();
        Self {
            name: table.name,
            virtual_hosts: table.virtual_hosts,
            data,
            index,
            exact,
            suffixes,
            prefixes,
            any,
        }
    }

    pub fn virtual_hosts(&self) -> &[VirtualHost] {
        &self.virtual_hosts
    }

    /// The virtual host for an authority.
    pub fn virtual_host(&self, authority: &str) -> Option<&VirtualHost> {
        self.virtual_host_index(authority)
            .and_then(|i| self.virtual_hosts.get(i))
    }

    fn virtual_host_index(&self, authority: &str) -> Option<usize> {
        let full = lower(authority);
        let host = strip_port(&full);
        let idx = self
            .exact
            .get(full.as_ref())
            .or_else(|| self.exact.get(host))
            .copied()
            .or_else(|| {
                self.suffixes
                    .iter()
                    .find(|(s, _)| host.len() > s.len() && host.ends_with(s.as_str()))
                    .map(|(_, i)| *i)
            })
            .or_else(|| {
                self.prefixes
                    .iter()
                    .find(|(p, _)| host.len() > p.len() && host.starts_with(p.as_str()))
                    .map(|(_, i)| *i)
            })
            .or(self.any)?;
        Some(idx)
    }

    /// The first matching route.
    pub fn route(&self, req: &RequestView<'_>) -> Result<Matched<'_, T>, NoRoute> {
        let vhost = self
            .virtual_host_index(req.authority)
            .ok_or(NoRoute::NoVirtualHost)?;
        let virtual_host = &self.virtual_hosts[vhost];
        let data = self.data.get(vhost).ok_or(NoRoute::NoVirtualHost)?;
        let routes = &virtual_host.routes;
        let i = self.index[vhost]
            .first(req.path, |i| route_matches(&routes[i], req))
            .ok_or(NoRoute::NoRouteMatched)?;
        Ok(Matched {
            virtual_host,
            entry: &routes[i],
            data: &data[i],
        })
    }

    /// The first matching route by a scan of every route, as the index must agree with.
    #[cfg(test)]
    fn route_by_scan(&self, req: &RequestView<'_>) -> Option<&str> {
        let vhost = self.virtual_host_index(req.authority)?;
        self.virtual_hosts[vhost]
            .routes
            .iter()
            .find(|r| route_matches(r, req))
            .map(|r| r.name.as_str())
    }
}

/// A chosen route: its virtual host, its config, and what the caller attached to it.
#[derive(Debug)]
pub struct Matched<'a, T = ()> {
    pub virtual_host: &'a VirtualHost,
    pub entry: &'a Route,
    pub data: &'a Arc<T>,
}

fn lower(s: &str) -> Cow<'_, str> {
    if s.bytes().any(|b| b.is_ascii_uppercase()) {
        Cow::Owned(s.to_ascii_lowercase())
    } else {
        Cow::Borrowed(s)
    }
}

/// `host:port` → `host`; `[v6]:port` → `[v6]`; a bare IPv6 literal is left alone.
fn strip_port(authority: &str) -> &str {
    if authority.starts_with('[') {
        return match authority.find(']') {
            Some(end) => &authority[..=end],
            None => authority,
        };
    }
    match authority.rsplit_once(':') {
        Some((host, port)) if !host.contains(':') && port.bytes().all(|b| b.is_ascii_digit()) => {
            host
        }
        _ => authority,
    }
}

/// Whether `path` fits `t`: as many segments, literals equal, parameters non-empty.
pub fn template_matches(t: &PathTemplate, path: &str) -> bool {
    template_walk(t, path, |_, _| {})
}

/// Each parameter of `t` with its segment of `path` (as received: still percent-encoded),
/// or `None` when `path` does not fit.
pub fn template_captures<'t, 'p>(
    t: &'t PathTemplate,
    path: &'p str,
) -> Option<Vec<(&'t str, &'p str)>> {
    let mut out = Vec::new();
    template_walk(t, path, |name, value| out.push((name, value))).then_some(out)
}

fn template_walk<'t, 'p>(
    t: &'t PathTemplate,
    path: &'p str,
    mut param: impl FnMut(&'t str, &'p str),
) -> bool {
    let Some(rest) = path.strip_prefix('/') else {
        return false;
    };
    let mut pieces = rest.split('/');
    for seg in t.segments() {
        let Some(piece) = pieces.next() else {
            return false;
        };
        match seg {
            Segment::Literal(l) if l == piece => {}
            Segment::Param(name) if !piece.is_empty() => param(name, piece),
            Segment::Mixed(parts) if mixed_walk(parts, piece, &mut param) => {}
            _ => return false,
        }
    }
    pieces.next().is_none()
}

/// A segment with parameters inside (`{base}...{head}`): a trailing literal is matched at
/// the end, the others leftmost; each parameter takes at least one character.
fn mixed_walk<'t, 'p>(
    parts: &'t [Part],
    piece: &'p str,
    param: &mut impl FnMut(&'t str, &'p str),
) -> bool {
    let (parts, piece) = match parts.split_last() {
        Some((Part::Literal(l), rest)) => match piece.strip_suffix(l.as_str()) {
            Some(p) => (rest, p),
            None => return false,
        },
        _ => (parts, piece),
    };
    let mut found: Vec<(&'t str, &'p str)> = Vec::new();
    let mut at = 0;
    let mut i = 0;
    while i < parts.len() {
        match &parts[i] {
            Part::Literal(l) => {
                if !piece[at..].starts_with(l.as_str()) {
                    return false;
                }
                at += l.len();
            }
            Part::Param(name) => {
                // Up to the next literal (leftmost, at least one character), else the rest.
                let end = match parts.get(i + 1) {
                    Some(Part::Literal(next)) => {
                        let from = at + piece[at..].chars().next().map_or(0, char::len_utf8);
                        match piece.get(from..).and_then(|r| r.find(next.as_str())) {
                            Some(off) => from + off,
                            None => return false,
                        }
                    }
                    _ => piece.len(),
                };
                if end <= at {
                    return false;
                }
                found.push((name, &piece[at..end]));
                at = end;
            }
        }
        i += 1;
    }
    if at != piece.len() {
        return false;
    }
    for (n, v) in found {
        param(n, v);
    }
    true
}

/// Whether every condition of a route holds for the request.
pub fn route_matches(route: &Route, req: &RequestView<'_>) -> bool {
    let m = &route.matcher;
    if let Some(p) = &m.path {
        let ok = match p {
            PathMatch::Exact(e) => req.path == e,
            PathMatch::Prefix(pre) => req.path.starts_with(pre.as_str()),
            PathMatch::Regex(r) => r.is_match(req.path),
            PathMatch::Template(t) => template_matches(t, req.path),
        };
        if !ok {
            return false;
        }
    }
    if !m.methods.is_empty() && !m.methods.iter().any(|x| x == req.method) {
        return false;
    }
    m.headers.iter().all(|h| header_matches(h, req.headers))
        && m.query.iter().all(|q| query_matches(q, req.query))
}

fn value_kind_matches(kind: &ValueMatchKind, value: &str) -> bool {
    match kind {
        ValueMatchKind::Present => true,
        ValueMatchKind::Exact(e) => value == e,
        ValueMatchKind::Prefix(p) => value.starts_with(p.as_str()),
        ValueMatchKind::Regex(r) => r.is_match(value),
    }
}

fn header_matches(m: &ValueMatch, headers: &HeaderMap) -> bool {
    let found = headers
        .get_all(m.name.as_str())
        .iter()
        .any(|v| v.to_str().is_ok_and(|s| value_kind_matches(&m.kind, s)));
    found != m.invert
}

fn query_matches(m: &ValueMatch, query: Option<&str>) -> bool {
    let found = query.is_some_and(|q| {
        q.split('&').any(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            percent_decode(k) == m.name.as_str() && value_kind_matches(&m.kind, &percent_decode(v))
        })
    });
    found != m.invert
}

/// Decodes `%XX` and `+` in a query component; invalid escapes are kept as written.
pub fn percent_decode(s: &str) -> Cow<'_, str> {
    if !s.bytes().any(|b| b == b'%' || b == b'+') {
        return Cow::Borrowed(s);
    }
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let escaped = bytes
                    .get(i + 1..i + 3)
                    .and_then(|pair| Some(hex(pair[0])? << 4 | hex(pair[1])?));
                if let Some(b) = escaped {
                    out.push(b);
                    i += 3;
                    continue;
                }
                out.push(b'%');
            }
            b => out.push(b),
        }
        i += 1;
    }
    Cow::Owned(String::from_utf8_lossy(&out).into_owned())
}

/// The value of one hexadecimal digit.
fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Picks a cluster from a weighted list given a uniformly random `r`; `None` only if every
/// weight is zero (validation forbids that).
pub fn pick_weighted(clusters: &[WeightedCluster], r: u64) -> Option<&str> {
    if let [only] = clusters {
        return Some(&only.cluster);
    }
    let total: u64 = clusters.iter().map(|c| u64::from(c.weight)).sum();
    if total == 0 {
        return None;
    }
    let mut point = r % total;
    for c in clusters {
        let w = u64::from(c.weight);
        if point < w {
            return Some(&c.cluster);
        }
        point -= w;
    }
    None
}

/// Rewrites `path` by replacing the matched prefix with `rewrite` (for prefix routes) or the
/// whole path (for exact and regex routes), keeping the query string.
pub fn rewrite_path(matched: Option<&PathMatch>, path: &str, rewrite: &str) -> String {
    match matched {
        Some(PathMatch::Prefix(p)) if path.starts_with(p.as_str()) => {
            let rest = &path[p.len()..];
            if rewrite.ends_with('/') && rest.starts_with('/') {
                format!("{rewrite}{}", &rest[1..])
            } else {
                format!("{rewrite}{rest}")
            }
        }
        _ => rewrite.to_owned(),
    }
}

#[cfg(test)]
mod tests;

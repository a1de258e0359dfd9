//! Gateway API resources as Rampart config: each HTTP listener of a Gateway a Rampart
//! listener with its route table, each hostname a virtual host, each match of an HTTPRoute
//! rule a route (ordered by the Gateway API's precedence, not by the order of the objects),
//! each backend Service port a cluster on the Service's DNS name. A pure function: the
//! controller writes the result to the store through the same checked path as `rampart
//! apply`, and reports the problems as route conditions.

use std::cmp::Reverse;
use std::collections::BTreeMap;

use kube::ResourceExt;
use serde_json::{Value, json};

use crate::gateway::{BackendRef, Gateway, HTTPRoute, Match, Rule};

/// The names of the store resources the operator makes start with this (the listeners and
/// route tables `k8s-gw_NAMESPACE_GATEWAY_LISTENER`, the clusters
/// `k8s-svc_NAMESPACE_SERVICE_PORT`, the functions `k8s-NAME-HASH`): it owns those and no
/// others, and prunes those it no longer makes. `_` cannot appear in Kubernetes names, so
/// two objects never make the same name.
pub const OWNED_PREFIX: &str = "k8s-";

/// What the Gateway API resources come to.
#[derive(Debug, Default)]
pub struct Translated {
    pub listeners: Vec<Value>,
    pub route_tables: Vec<Value>,
    pub clusters: Vec<Value>,
    /// `(namespace/route, problem)`: what could not be programmed, for its conditions.
    pub problems: Vec<(String, String)>,
}

/// Where Services are and where listeners bind.
#[derive(Debug, Clone)]
pub struct Backends {
    /// The cluster's DNS domain: a Service is `NAME.NAMESPACE.svc.DOMAIN`.
    pub domain: String,
    /// `namespace/name:port` → `host:port`, for Services reached another way (outside a
    /// cluster, in tests).
    pub addresses: BTreeMap<String, String>,
    /// The address listeners bind (`0.0.0.0` in a pod).
    pub listen_host: String,
}

impl Default for Backends {
    fn default() -> Self {
        Self {
            domain: "cluster.local".into(),
            addresses: BTreeMap::new(),
            listen_host: "0.0.0.0".into(),
        }
    }
}

impl Translated {
    /// Each object as a desired-state document (`kind` and its config entry), as
    /// `rampart apply -f` takes them.
    pub fn documents(&self) -> Vec<Value> {
        let tagged = |kind: &str, v: &Value| {
            let mut v = v.clone();
            v["kind"] = json!(kind);
            v
        };
        let mut out: Vec<Value> = self.clusters.iter().map(|c| tagged("Cluster", c)).collect();
        out.extend(self.route_tables.iter().map(|t| tagged("RouteTable", t)));
        out.extend(self.listeners.iter().map(|l| tagged("Listener", l)));
        out
    }

    /// The config sections (`listeners`, `route_tables`, `clusters`), as a config file has them.
    pub fn config(&self) -> Value {
        json!({
            "listeners": self.listeners,
            "route_tables": self.route_tables,
            "clusters": self.clusters,
        })
    }
}

/// One Rampart route with what orders it.
#[derive(Clone)]
struct Entry {
    key: (
        u8,
        Reverse<usize>,
        bool,
        Reverse<usize>,
        Reverse<usize>,
        String,
        String,
    ),
    /// The order within one match (an exact route before its prefix twin).
    seq: (usize, usize, usize),
    route: Value,
}

/// Gateway API resources to Rampart config.
pub fn translate(gateways: &[Gateway], routes: &[HTTPRoute], backends: &Backends) -> Translated {
    translate_with(gateways, routes, &Extensions::default(), backends)
}

/// What Rampart's own resources add to the routes.
#[derive(Debug, Clone, Default)]
pub struct Extensions {
    /// RampartWasmPlugins' filters on the routes they target.
    pub filters: Vec<RouteFilter>,
    /// `(namespace, RampartPolicy name)` → its tenant, for rules whose `ExtensionRef`
    /// filter names it.
    pub policies: BTreeMap<(String, String), String>,
}

/// A filter (a RampartWasmPlugin's `wasm` entry) on every route made from some HTTPRoutes.
#[derive(Debug, Clone)]
pub struct RouteFilter {
    pub namespace: String,
    /// HTTPRoutes of `namespace`, by name.
    pub routes: Vec<String>,
    /// The filter entry (`{"wasm": {...}}`).
    pub filter: Value,
}

/// [`translate`], with the `extensions`' filters on the routes of the HTTPRoutes they
/// target and their policies where rules name them.
pub fn translate_with(
    gateways: &[Gateway],
    routes: &[HTTPRoute],
    extensions: &Extensions,
    backends: &Backends,
) -> Translated {
    let mut out = Translated::default();
    let mut clusters: BTreeMap<String, Value> = BTreeMap::new();
    for gw in gateways {
        let ns = gw.namespace().unwrap_or_else(|| "default".into());
        for l in gw.spec.listeners.iter().filter(|l| l.protocol == "HTTP") {
            let name = format!("{OWNED_PREFIX}gw_{ns}_{}_{}", gw.name_any(), l.name);
            // hostname → entries (routes without hostnames under "*").
            let mut hosts: BTreeMap<String, Vec<Entry>> = BTreeMap::new();
            for r in routes.iter().filter(|r| attached(r, gw, &ns, l)) {
                let mut entries =
                    entries(r, extensions, backends, &mut clusters, &mut out.problems);
                let ns = r.namespace().unwrap_or_default();
                let on: Vec<&Value> = extensions
                    .filters
                    .iter()
                    .filter(|f| f.namespace == ns && f.routes.iter().any(|n| *n == r.name_any()))
                    .map(|f| &f.filter)
                    .collect();
                if !on.is_empty() {
                    for e in &mut entries {
                        // After the rule's own (its policy decides first).
                        let mut all = e.route["filters"].as_array().cloned().unwrap_or_default();
                        all.extend(on.iter().map(|f| (*f).clone()));
                        e.route["filters"] = json!(all);
                    }
                }
                let names: Vec<String> = if r.spec.hostnames.is_empty() {
                    vec![l.hostname.clone().unwrap_or_else(|| "*".into())]
                } else {
                    r.spec.hostnames.clone()
                };
                for h in names {
                    hosts.entry(h).or_default().extend(entries.iter().cloned());
                }
            }
            out.listeners.push(json!({
                "name": name,
                "address": format!("{}:{}", backends.listen_host, l.port),
                "route_table": name,
            }));
            out.route_tables.push(json!({
                "name": name,
                "virtual_hosts": virtual_hosts(hosts),
            }));
        }
    }
    out.clusters = clusters.into_values().collect();
    out
}

/// Whether `r` names this Gateway (and listener, or none).
/// Whether `r` attaches to listener `l` of `gw`: it names them, and the listener admits
/// routes from its namespace (`allowedRoutes`: the Gateway's own namespace unless `All`;
/// a namespace `Selector` is not read, so it admits none).
fn attached(r: &HTTPRoute, gw: &Gateway, gw_ns: &str, l: &crate::gateway::Listener) -> bool {
    let ns = r.namespace().unwrap_or_else(|| "default".into());
    let from = l
        .allowed_routes
        .as_ref()
        .and_then(|a| a.namespaces.as_ref())
        .and_then(|n| n.from.as_deref())
        .unwrap_or("Same");
    let admitted = match from {
        "All" => true,
        "Same" => ns == gw_ns,
        _ => false,
    };
    admitted
        && r.spec.parent_refs.iter().any(|p| {
            p.name == gw.name_any()
                && p.namespace.as_deref().unwrap_or(&ns) == gw_ns
                && p.section_name.as_deref().is_none_or(|s| s == l.name)
        })
}

/// A reference from a route in `ns` to an object in `other` needs a ReferenceGrant in
/// `other`; Rampart does not read those yet, so it refuses every such reference.
fn same_namespace(what: &str, name: &str, ns: &str, other: Option<&str>) -> Result<(), String> {
    match other {
        Some(o) if o != ns => Err(format!(
            "backend {name:?} in namespace {o:?}: a {what} in another namespace needs a \
             ReferenceGrant, which Rampart does not read yet (refused)"
        )),
        _ => Ok(()),
    }
}

/// Each hostname a virtual host; routes without hostnames also serve every named host (as
/// the Gateway API has them), after its own in precedence order.
fn virtual_hosts(mut hosts: BTreeMap<String, Vec<Entry>>) -> Vec<Value> {
    let any: Vec<Entry> = hosts.get("*").cloned().unwrap_or_default();
    let mut out = Vec::new();
    for (i, (host, entries)) in hosts.iter_mut().enumerate() {
        if host != "*" {
            entries.extend(any.iter().cloned());
        }
        entries.sort_by(|a, b| a.key.cmp(&b.key).then(a.seq.cmp(&b.seq)));
        let routes: Vec<Value> = entries.iter().map(|e| e.route.clone()).collect();
        out.push(json!({ "name": format!("host-{i}"), "domains": [host], "routes": routes }));
    }
    out
}

/// The Rampart routes of one HTTPRoute, each with its precedence.
fn entries(
    r: &HTTPRoute,
    extensions: &Extensions,
    backends: &Backends,
    clusters: &mut BTreeMap<String, Value>,
    problems: &mut Vec<(String, String)>,
) -> Vec<Entry> {
    let ns = r.namespace().unwrap_or_else(|| "default".into());
    let id = format!("{ns}/{}", r.name_any());
    let created = r
        .metadata
        .creation_timestamp
        .as_ref()
        .map(|t| format!("{:?}", t.0))
        .unwrap_or_default();
    let mut out = Vec::new();
    for (ri, rule) in r.spec.rules.iter().enumerate() {
        let action = match action(rule, &ns, extensions, backends, clusters) {
            Ok(a) => a,
            Err(why) => {
                // The rule keeps its matches and answers 500, as the Gateway API asks: left
                // out, its requests would fall to another rule (one without its policy).
                problems.push((id.clone(), format!("rule {ri}: {why}")));
                json!({ "direct_response": { "status": 500, "body": "this route's rule is invalid\n" } })
            }
        };
        let all = [Match::default()];
        let matches = if rule.matches.is_empty() {
            &all[..]
        } else {
            &rule.matches[..]
        };
        for (mi, m) in matches.iter().enumerate() {
            let (kind, value) = m
                .path
                .as_ref()
                .map_or(("PathPrefix", "/"), |p| (p.kind.as_str(), p.value.as_str()));
            let rank = match kind {
                "Exact" => 0,
                "PathPrefix" => 1,
                _ => 2,
            };
            let key = (
                rank,
                Reverse(value.len()),
                m.method.is_none(),
                Reverse(m.headers.len()),
                Reverse(m.query_params.len()),
                created.clone(),
                id.clone(),
            );
            let paths = match paths(kind, value) {
                Ok(p) => p,
                Err(why) => {
                    problems.push((id.clone(), format!("rule {ri} match {mi}: {why}")));
                    continue;
                }
            };
            for (pi, path) in paths.into_iter().enumerate() {
                let mut route = action.clone();
                route["name"] = json!(format!(
                    "{}r{ri}.m{mi}.p{pi}",
                    route_prefix(&ns, &r.name_any())
                ));
                route["match"] = matcher(m, &path);
                out.push(Entry {
                    key: key.clone(),
                    seq: (ri, mi, pi),
                    route,
                });
            }
        }
    }
    out
}

/// A Gateway API path match as Rampart path conditions. `PathPrefix` matches whole
/// segments (`/api` takes `/api` and `/api/x`, not `/apix`): an exact route and a prefix
/// route on `/api/`.
fn paths(kind: &str, value: &str) -> Result<Vec<Value>, String> {
    if !value.starts_with('/') {
        return Err(format!("path {value:?} must start with '/'"));
    }
    Ok(match kind {
        "Exact" => vec![json!({ "exact": value })],
        "RegularExpression" => vec![json!({ "regex": value })],
        "PathPrefix" => {
            let base = value.trim_end_matches('/');
            if base.is_empty() {
                vec![json!({ "prefix": "/" })]
            } else {
                vec![
                    json!({ "exact": base }),
                    json!({ "prefix": format!("{base}/") }),
                ]
            }
        }
        other => return Err(format!("path match type {other:?} is not supported")),
    })
}

fn matcher(m: &Match, path: &Value) -> Value {
    let values = |v: &[crate::gateway::ValueMatch], lower: bool| -> Vec<Value> {
        v.iter()
            .map(|h| {
                let name = if lower {
                    h.name.to_ascii_lowercase()
                } else {
                    h.name.clone()
                };
                if h.kind == "RegularExpression" {
                    json!({ "name": name, "regex": h.value })
                } else {
                    json!({ "name": name, "exact": h.value })
                }
            })
            .collect()
    };
    json!({
        "path": path,
        "methods": m.method.iter().collect::<Vec<_>>(),
        "headers": values(&m.headers, true),
        "query": values(&m.query_params, false),
    })
}

/// What a rule does: forward to its backends (weighted), with its header edits; or 500
/// when it has no backend (as the Gateway API asks).
fn action(
    rule: &Rule,
    ns: &str,
    extensions: &Extensions,
    backends: &Backends,
    clusters: &mut BTreeMap<String, Value>,
) -> Result<Value, String> {
    let mut route = json!({});
    let mut filters = Vec::new();
    for f in &rule.filters {
        match (f.kind.as_str(), &f.request_header_modifier) {
            ("ExtensionRef", _) => filters.push(policy_filter(f, ns, extensions)?),
            ("RequestHeaderModifier", Some(h)) => {
                let pairs = |v: &[crate::gateway::Header]| -> BTreeMap<String, String> {
                    v.iter()
                        .map(|x| (x.name.to_ascii_lowercase(), x.value.clone()))
                        .collect()
                };
                route["request_headers"] = json!({
                    "set": pairs(&h.set),
                    "add": pairs(&h.add),
                    "remove": h.remove.iter().map(|x| x.to_ascii_lowercase()).collect::<Vec<_>>(),
                });
            }
            (other, _) => return Err(format!("filter {other:?} is not supported")),
        }
    }
    if !filters.is_empty() {
        route["filters"] = json!(filters);
    }
    if let Some(f) = rule.backend_refs.iter().find(|b| is_function(b)) {
        // A function answers itself: it is the rule's only backend.
        if rule.backend_refs.len() > 1 {
            return Err("a RampartFunction backend must be the rule's only backend".into());
        }
        same_namespace("function", &f.name, ns, f.namespace.as_deref())?;
        route["function"] = json!(function_name(ns, &f.name));
        return Ok(route);
    }
    let backends: Vec<(String, u32)> = rule
        .backend_refs
        .iter()
        .filter(|b| b.weight > 0)
        .map(|b| cluster(b, ns, backends, clusters).map(|c| (c, b.weight)))
        .collect::<Result<_, _>>()?;
    match backends.as_slice() {
        [] => {
            route["direct_response"] = json!({ "status": 500, "body": "no backend\n" });
        }
        [(c, _)] => route["forward"] = json!({ "cluster": c }),
        many => {
            let weighted: Vec<Value> = many
                .iter()
                .map(|(c, w)| json!({ "cluster": c, "weight": w }))
                .collect();
            route["forward"] = json!({ "weighted_clusters": weighted });
        }
    }
    Ok(route)
}

/// An `ExtensionRef` filter as the `authz` entry of the RampartPolicy it names (in the
/// route's namespace), deciding for that policy's tenant.
fn policy_filter(
    f: &crate::gateway::Filter,
    ns: &str,
    extensions: &Extensions,
) -> Result<Value, String> {
    let r = f
        .extension_ref
        .as_ref()
        .ok_or("an ExtensionRef filter needs extensionRef")?;
    if (r.group.as_str(), r.kind.as_str()) != (crate::crds::GROUP, "RampartPolicy") {
        return Err(format!(
            "ExtensionRef {}/{} is not supported (rampart.dev/RampartPolicy)",
            r.group, r.kind
        ));
    }
    let tenant = extensions
        .policies
        .get(&(ns.to_owned(), r.name.clone()))
        .ok_or_else(|| format!("RampartPolicy {:?} not found (or not in force)", r.name))?;
    Ok(json!({ "authz": { "tenant": tenant } }))
}

/// A backend that is a RampartFunction (group `rampart.dev`).
fn is_function(b: &BackendRef) -> bool {
    b.kind.as_deref() == Some("RampartFunction") && b.group.as_deref() == Some("rampart.dev")
}

/// The store's name of the function a RampartFunction deploys (owned by the operator).
/// Function names allow only `a-z0-9-` (63 at most), so the namespace cannot be told apart
/// by a separator: the name is followed by a hash of `namespace/name` instead.
pub fn function_name(namespace: &str, name: &str) -> String {
    let digest = ring::digest::digest(
        &ring::digest::SHA256,
        format!("{namespace}/{name}").as_bytes(),
    );
    let hash: String = digest.as_ref()[..5]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let short: String = name.chars().take(48).collect();
    format!("{OWNED_PREFIX}{}-{hash}", short.trim_end_matches('-'))
}

/// The prefix of the names of the routes made from HTTPRoute `namespace/name`: `_` cannot
/// appear in Kubernetes names, so no other HTTPRoute's routes share it (the rest of a name
/// is `rI.mJ.pK`).
pub fn route_prefix(namespace: &str, name: &str) -> String {
    format!("{namespace}_{name}_")
}

/// The cluster of a backend Service port, added once.
fn cluster(
    b: &BackendRef,
    ns: &str,
    backends: &Backends,
    clusters: &mut BTreeMap<String, Value>,
) -> Result<String, String> {
    if !matches!(
        (b.group.as_deref(), b.kind.as_deref()),
        (None | Some(""), None | Some("Service"))
    ) {
        return Err(format!(
            "backend {:?}: kind {}/{} is not supported (Service, rampart.dev/RampartFunction)",
            b.name,
            b.group.as_deref().unwrap_or(""),
            b.kind.as_deref().unwrap_or("")
        ));
    }
    same_namespace("Service", &b.name, ns, b.namespace.as_deref())?;
    let port = b
        .port
        .ok_or_else(|| format!("backend {:?} names no port", b.name))?;
    let name = format!("{OWNED_PREFIX}svc_{ns}_{}_{port}", b.name);
    let endpoint = backends
        .addresses
        .get(&format!("{ns}/{}:{port}", b.name))
        .cloned()
        .unwrap_or_else(|| format!("{}.{ns}.svc.{}:{port}", b.name, backends.domain));
    clusters
        .entry(name.clone())
        .or_insert_with(|| json!({ "name": name, "endpoints": [endpoint] }));
    Ok(name)
}

#[cfg(test)]
mod tests;

//! Envoy resources back into a Rampart config, for Rampart proxies fed over xDS: the subset
//! `translate` emits (listeners on RDS, route configurations, EDS or DNS clusters),
//! read into the raw config so that the usual validation, with its field paths, decides.

use std::collections::BTreeMap;

use envoy_types::pb::envoy::config::cluster::v3::{Cluster, cluster};
use envoy_types::pb::envoy::config::core::v3::{Address, Metadata, address, socket_address};
use envoy_types::pb::envoy::config::endpoint::v3::{ClusterLoadAssignment, lb_endpoint};
use envoy_types::pb::envoy::config::listener::v3::{Listener, filter};
use envoy_types::pb::envoy::config::route::v3::{
    RouteConfiguration, VirtualHost, redirect_action, route, route_action, route_match,
};
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpConnectionManager, http_connection_manager,
};
use envoy_types::pb::google::protobuf::{Any, Duration as PbDuration};
use prost::Message;
use rampart_config::RawConfig;
use serde_json::{Value, json};

use crate::extra;
use crate::snapshot::{CLUSTER, ENDPOINT, LISTENER, ROUTE};

/// Resources a client holds: type URL → name → body.
pub type Held = BTreeMap<String, BTreeMap<String, Any>>;

/// What a set of resources is missing before it makes a whole config.
#[derive(Debug, PartialEq, Eq)]
pub enum Incomplete {
    /// Route configurations named by listeners, or load assignments of EDS clusters, not
    /// received yet (Envoy's warming).
    Waiting(Vec<String>),
    /// A resource that does not decode or that Rampart cannot run.
    Invalid(String),
}

/// The route configurations the listeners name, and the clusters that take EDS.
pub fn wanted(held: &Held) -> Result<(Vec<String>, Vec<String>), String> {
    let mut routes = Vec::new();
    for (name, any) in held.get(LISTENER).into_iter().flatten() {
        routes.push(route_table_of(&decode::<Listener>(name, any)?)?);
    }
    let mut eds = Vec::new();
    for (name, any) in held.get(CLUSTER).into_iter().flatten() {
        let c = decode::<Cluster>(name, any)?;
        if c.eds_cluster_config.is_some() {
            eds.push(c.name);
        }
    }
    Ok((routes, eds))
}

/// The whole config, once every listener's routes and every EDS cluster's endpoints are in.
pub fn config(held: &Held) -> Result<RawConfig, Incomplete> {
    let (routes, eds) = wanted(held).map_err(Incomplete::Invalid)?;
    let has = |t: &str, n: &String| held.get(t).is_some_and(|m| m.contains_key(n));
    let missing: Vec<String> = routes
        .iter()
        .filter(|n| !has(ROUTE, n))
        .map(|n| format!("route configuration {n}"))
        .chain(
            eds.iter()
                .filter(|n| !has(ENDPOINT, n))
                .map(|n| format!("endpoints of {n}")),
        )
        .collect();
    if !missing.is_empty() {
        return Err(Incomplete::Waiting(missing));
    }
    let value = raw(held).map_err(Incomplete::Invalid)?;
    serde_json::from_value(value).map_err(|e| Incomplete::Invalid(e.to_string()))
}

fn decode<M: Message + Default>(name: &str, any: &Any) -> Result<M, String> {
    M::decode(any.value.as_slice()).map_err(|e| format!("{name}: does not decode: {e}"))
}

fn raw(held: &Held) -> Result<Value, String> {
    let each = |t: &str| held.get(t).into_iter().flatten();
    let listeners = each(LISTENER)
        .map(|(n, a)| listener(&decode(n, a)?))
        .collect::<Result<Vec<_>, String>>()?;
    let tables = each(ROUTE)
        .map(|(n, a)| route_table(&decode(n, a)?))
        .collect::<Result<Vec<_>, String>>()?;
    let clusters = each(CLUSTER)
        .map(|(n, a)| {
            let c: Cluster = decode(n, a)?;
            let cla = match held.get(ENDPOINT).and_then(|m| m.get(&c.name)) {
                Some(a) => Some(decode::<ClusterLoadAssignment>(&c.name, a)?),
                None => None,
            };
            cluster(&c, cla.as_ref())
        })
        .collect::<Result<Vec<_>, String>>()?;
    Ok(json!({ "listeners": listeners, "route_tables": tables, "clusters": clusters }))
}

fn route_table_of(l: &Listener) -> Result<String, String> {
    let hcm = hcm(l)?;
    match hcm.route_specifier {
        Some(http_connection_manager::RouteSpecifier::Rds(rds)) => Ok(rds.route_config_name),
        _ => Err(format!(
            "listener {}: only routes from RDS are supported",
            l.name
        )),
    }
}

fn hcm(l: &Listener) -> Result<HttpConnectionManager, String> {
    let f = l
        .filter_chains
        .first()
        .and_then(|c| c.filters.first())
        .ok_or_else(|| format!("listener {}: no network filter", l.name))?;
    match &f.config_type {
        Some(filter::ConfigType::TypedConfig(any))
            if any.type_url.ends_with("HttpConnectionManager") =>
        {
            decode(&l.name, any)
        }
        _ => Err(format!(
            "listener {}: the first filter must be an HTTP connection manager",
            l.name
        )),
    }
}

fn socket(a: Option<&Address>) -> Result<String, String> {
    match a.and_then(|a| a.address.as_ref()) {
        Some(address::Address::SocketAddress(s)) => match &s.port_specifier {
            Some(socket_address::PortSpecifier::PortValue(p)) if s.address.contains(':') => {
                Ok(format!("[{}]:{p}", s.address))
            }
            Some(socket_address::PortSpecifier::PortValue(p)) => Ok(format!("{}:{p}", s.address)),
            _ => Err(format!("{}: a named port is not supported", s.address)),
        },
        _ => Err("only socket addresses are supported".into()),
    }
}

fn duration(d: &PbDuration) -> String {
    format!("{}ms", d.seconds * 1000 + i64::from(d.nanos) / 1_000_000)
}

/// A listener as Rampart config: Envoy's fields, then the Rampart settings carried along.
pub(crate) fn listener(l: &Listener) -> Result<Value, String> {
    let mut out = json!({
        "name": l.name,
        "address": socket(l.address.as_ref()).map_err(|e| format!("listener {}: {e}", l.name))?,
        "route_table": route_table_of(l)?,
    });
    with_extra(&mut out, l.metadata.as_ref()).map_err(|e| format!("listener {}: {e}", l.name))?;
    Ok(out)
}

/// Lays the Rampart settings in `md` (if any) over `native`.
fn with_extra(native: &mut Value, md: Option<&Metadata>) -> Result<(), String> {
    if let Some(e) = extra::read(md)? {
        extra::merge(native, e);
    }
    Ok(())
}

fn route_table(rc: &RouteConfiguration) -> Result<Value, String> {
    let hosts = rc
        .virtual_hosts
        .iter()
        .map(|vh| {
            let routes = vh
                .routes
                .iter()
                .map(|r| {
                    let mut out = one_route(r)?;
                    with_extra(&mut out, r.metadata.as_ref())?;
                    // A function route reaches Envoy as the 503 it answers there; a
                    // Rampart proxy runs the function the metadata names instead.
                    if let Some(o) = out.as_object_mut()
                        && o.contains_key("function")
                    {
                        o.remove("direct_response");
                    }
                    // Likewise a template reaches Envoy as its regex.
                    if let Some(p) = out["match"]["path"].as_object_mut()
                        && p.contains_key("template")
                    {
                        p.remove("regex");
                    }
                    Ok(out)
                })
                .collect::<Result<Vec<_>, String>>()
                .map_err(|e| format!("virtual host {}: {e}", vh.name))?;
            let mut out = virtual_host_fields(vh)?;
            with_extra(&mut out, vh.metadata.as_ref())
                .map_err(|e| format!("virtual host {}: {e}", vh.name))?;
            out["routes"] = Value::Array(routes);
            Ok(out)
        })
        .collect::<Result<Vec<_>, String>>()?;
    Ok(json!({ "name": rc.name, "virtual_hosts": hosts }))
}

/// A virtual host's own fields (its routes aside), from Envoy's fields only.
pub(crate) fn virtual_host_fields(vh: &VirtualHost) -> Result<Value, String> {
    Ok(json!({ "name": vh.name, "domains": vh.domains }))
}

/// A route from Envoy's fields only.
pub(crate) fn one_route(
    r: &envoy_types::pb::envoy::config::route::v3::Route,
) -> Result<Value, String> {
    one_route_native(r).map_err(|e| format!("route {}: {e}", r.name))
}

fn one_route_native(r: &envoy_types::pb::envoy::config::route::v3::Route) -> Result<Value, String> {
    let path = match r.r#match.as_ref().and_then(|m| m.path_specifier.as_ref()) {
        Some(route_match::PathSpecifier::Prefix(p)) => json!({ "prefix": p }),
        Some(route_match::PathSpecifier::Path(p)) => json!({ "exact": p }),
        Some(route_match::PathSpecifier::SafeRegex(re)) => {
            // Rampart anchors its regexes itself: take back the anchors translate added.
            let inner = re
                .regex
                .strip_prefix("^(?:")
                .and_then(|s| s.strip_suffix(")$"))
                .unwrap_or(&re.regex);
            json!({ "regex": inner })
        }
        _ => return Err("an unsupported path match".into()),
    };
    let mut out = json!({ "match": { "path": path } });
    if !r.name.is_empty() {
        out["name"] = json!(r.name);
    }
    match &r.action {
        Some(route::Action::Route(a)) => out["forward"] = forward(a)?,
        Some(route::Action::DirectResponse(d)) => {
            let body = d.body.as_ref().and_then(|b| match &b.specifier {
                Some(
                    envoy_types::pb::envoy::config::core::v3::data_source::Specifier::InlineString(
                        s,
                    ),
                ) => Some(s.clone()),
                _ => None,
            });
            out["direct_response"] = json!({ "status": d.status, "body": body });
        }
        Some(route::Action::Redirect(rd)) => out["redirect"] = redirect(rd),
        _ => return Err("an unsupported action".into()),
    }
    Ok(out)
}

fn forward(a: &envoy_types::pb::envoy::config::route::v3::RouteAction) -> Result<Value, String> {
    let mut f = match &a.cluster_specifier {
        Some(route_action::ClusterSpecifier::Cluster(c)) => json!({ "cluster": c }),
        Some(route_action::ClusterSpecifier::WeightedClusters(w)) => {
            let list: Vec<Value> = w
                .clusters
                .iter()
                .map(|c| json!({ "cluster": c.name, "weight": c.weight.as_ref().map_or(1, |w| w.value) }))
                .collect();
            json!({ "weighted_clusters": list })
        }
        _ => return Err("an unsupported cluster specifier".into()),
    };
    if !a.prefix_rewrite.is_empty() {
        f["prefix_rewrite"] = json!(a.prefix_rewrite);
    }
    if let Some(route_action::HostRewriteSpecifier::HostRewriteLiteral(h)) =
        &a.host_rewrite_specifier
    {
        f["host_rewrite"] = json!(h);
    }
    if let Some(t) = &a.timeout {
        f["timeout"] = json!(duration(t));
    }
    Ok(f)
}

fn redirect(r: &envoy_types::pb::envoy::config::route::v3::RedirectAction) -> Value {
    let status = match r.response_code {
        1 => 302,
        2 => 303,
        3 => 307,
        4 => 308,
        _ => 301,
    };
    let mut out = json!({ "status": status, "strip_query": r.strip_query });
    if !r.host_redirect.is_empty() {
        out["host"] = json!(r.host_redirect);
    }
    if r.port_redirect != 0 {
        out["port"] = json!(r.port_redirect);
    }
    if let Some(redirect_action::SchemeRewriteSpecifier::SchemeRedirect(s)) =
        &r.scheme_rewrite_specifier
    {
        out["scheme"] = json!(s);
    }
    match &r.path_rewrite_specifier {
        Some(redirect_action::PathRewriteSpecifier::PathRedirect(p)) => out["path"] = json!(p),
        Some(redirect_action::PathRewriteSpecifier::PrefixRewrite(p)) => {
            out["prefix_rewrite"] = json!(p);
        }
        _ => {}
    }
    out
}

/// A cluster as Rampart config, with the Rampart settings carried along.
fn cluster(c: &Cluster, cla: Option<&ClusterLoadAssignment>) -> Result<Value, String> {
    let mut out = cluster_native(c, cla)?;
    with_extra(&mut out, c.metadata.as_ref()).map_err(|e| format!("cluster {}: {e}", c.name))?;
    Ok(out)
}

/// A cluster from Envoy's fields only.
pub(crate) fn cluster_native(
    c: &Cluster,
    cla: Option<&ClusterLoadAssignment>,
) -> Result<Value, String> {
    let assignment = cla.or(c.load_assignment.as_ref());
    let endpoints = assignment
        .into_iter()
        .flat_map(|a| &a.endpoints)
        .flat_map(|l| &l.lb_endpoints)
        .map(|e| match &e.host_identifier {
            Some(lb_endpoint::HostIdentifier::Endpoint(ep)) => socket(ep.address.as_ref()),
            _ => Err("only endpoints with an address are supported".into()),
        })
        .collect::<Result<Vec<_>, String>>()
        .map_err(|e| format!("cluster {}: {e}", c.name))?;
    let lb = match cluster::LbPolicy::try_from(c.lb_policy) {
        Ok(cluster::LbPolicy::LeastRequest) => "least_request",
        Ok(cluster::LbPolicy::RingHash) => "ring_hash",
        Ok(cluster::LbPolicy::Maglev) => "maglev",
        _ => "round_robin",
    };
    let mut out = json!({ "name": c.name, "endpoints": endpoints, "lb_policy": lb });
    if let Some(t) = &c.connect_timeout {
        out["connect_timeout"] = json!(duration(t));
    }
    Ok(out)
}

//! A Rampart config as Envoy resources, all delivered over ADS:
//!
//! - each listener: an HTTP connection manager whose routes come from RDS (named after the
//!   listener's route table) and whose last HTTP filter is the router;
//! - each route table: a route configuration (domains, path/method matches, forward with
//!   weighted clusters, prefix and host rewrites and timeout; direct responses; redirects);
//! - each static cluster: an EDS cluster and its load assignment; a cluster with DNS names is
//!   a STRICT_DNS cluster carrying its endpoints inline (EDS endpoints must be addresses).
//!
//! What Envoy's fields cannot say (Rampart's filters, limits, header mutations, resilience
//! settings) rides along in each resource's metadata ([`crate::extra`]).

use envoy_types::pb::envoy::config::cluster::v3::{Cluster as EnvoyCluster, cluster};
use envoy_types::pb::envoy::config::core::v3::{
    Address, AggregatedConfigSource, ConfigSource, DataSource, Metadata, SocketAddress, address,
    config_source, data_source, socket_address,
};
use envoy_types::pb::envoy::config::endpoint::v3::{
    ClusterLoadAssignment, Endpoint, LbEndpoint, LocalityLbEndpoints, lb_endpoint,
};
use envoy_types::pb::envoy::config::listener::v3::{Filter, FilterChain, Listener, filter};
use envoy_types::pb::envoy::config::route::v3::{
    DirectResponseAction, RedirectAction, Route as EnvoyRoute, RouteAction, RouteConfiguration,
    RouteMatch as EnvoyMatch, VirtualHost as EnvoyVirtualHost, WeightedCluster as EnvoyWeighted,
    redirect_action, route, route_action, route_match, weighted_cluster,
};
use envoy_types::pb::envoy::extensions::filters::http::router::v3::Router;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpConnectionManager, HttpFilter, Rds, http_connection_manager, http_filter,
};
use envoy_types::pb::envoy::r#type::matcher::v3::RegexMatcher;
use envoy_types::pb::google::protobuf::{Any, UInt32Value};
use envoy_types::util::pack_any;
use rampart_config::Config;
use rampart_config::model::{
    Action, Cluster, DomainPattern, EndpointAddr, Forward, LbPolicy, PathMatch, Redirect, Route,
    RouteTable,
};
use rampart_config::raw::RawRouteTable;

use crate::pbtime::duration;
use crate::snapshot::{CLUSTER, ENDPOINT, LISTENER, ROUTE, Snapshot};
use crate::{envoy_filters, extra, reverse};

/// Every resource of `config`, as a snapshot numbered `version`.
///
/// Each resource carries, in its metadata, the Rampart settings Envoy's fields cannot
/// express ([`crate::extra`]), so that a Rampart proxy reading it back gets the whole
/// config.
pub fn snapshot(config: &Config, version: u64) -> Snapshot {
    let raw = &config.raw;
    let mut out: Vec<(&'static str, String, Any, Option<String>)> = Vec::new();
    for l in &config.listeners {
        let table = config.route_table(&l.route_table);
        let mut el = listener(l, &table.map(placeholders).unwrap_or_default());
        let r = raw.listeners.iter().find(|r| r.name == l.name);
        el.metadata = carry("Listener", r, reverse::listener(&el));
        out.push((LISTENER, l.name.clone(), pack_any(el), None));
    }
    for t in &config.route_tables {
        let mut rc = route_table(t);
        // A listener's CORS policy lives on the virtual hosts of its route table in Envoy.
        let cors = config
            .listeners
            .iter()
            .filter(|l| l.route_table == t.name)
            .find_map(|l| envoy_filters::listener_cors(&l.filters));
        if let Some(cors) = cors {
            for vh in &mut rc.virtual_hosts {
                vh.typed_per_filter_config
                    .insert(envoy_filters::CORS.to_owned(), cors.clone());
            }
        }
        if let Some(r) = raw.route_tables.iter().find(|r| r.name == t.name) {
            carry_routes(&mut rc, r);
        }
        let version = route_version(&rc);
        out.push((ROUTE, t.name.clone(), pack_any(rc), Some(version)));
    }
    // By name, the first of each, built once: a search per cluster was quadratic (≈ 120 ms
    // of memcmp for 10,000 clusters).
    let mut raw_clusters = std::collections::HashMap::with_capacity(raw.clusters.len());
    for r in &raw.clusters {
        raw_clusters.entry(r.name.as_str()).or_insert(r);
    }
    for c in &config.clusters {
        let mut ec = cluster(c);
        let cla = eds(c).then(|| load_assignment(c));
        let r = raw_clusters.get(c.name.as_str()).copied();
        ec.metadata = carry("Cluster", r, reverse::cluster_native(&ec, cla.as_ref()));
        out.push((CLUSTER, c.name.clone(), pack_any(ec), None));
        if let Some(cla) = cla {
            out.push((ENDPOINT, c.name.clone(), pack_any(cla), None));
        }
    }
    Snapshot::with_versions(version, out)
}

/// A route configuration's content version, with its per-filter maps taken in key order:
/// the same routes get the same version in every publish and every control plane.
fn route_version(rc: &RouteConfiguration) -> String {
    use std::hash::{Hash, Hasher};
    let mut rc = rc.clone();
    let mut h = std::collections::hash_map::DefaultHasher::new();
    let mut sorted = |m: &mut std::collections::HashMap<String, Any>| {
        let mut entries: Vec<(String, Any)> = std::mem::take(m).into_iter().collect();
        entries.sort_by(|a, b| a.0.cmp(&b.0));
        for (k, v) in entries {
            (k, v.type_url, v.value).hash(&mut h);
        }
    };
    for vh in &mut rc.virtual_hosts {
        sorted(&mut vh.typed_per_filter_config);
        for r in &mut vh.routes {
            sorted(&mut r.typed_per_filter_config);
        }
    }
    prost::Message::encode_to_vec(&rc).hash(&mut h);
    format!("{:016x}", h.finish())
}

/// The metadata carrying what `raw` holds beyond `native` (what reading the Envoy resource
/// back gives).
fn carry<T: serde::Serialize>(
    kind: &str,
    raw: Option<&T>,
    native: Result<serde_json::Value, String>,
) -> Option<Metadata> {
    let raw = serde_json::to_value(raw?).ok()?;
    let native = native.unwrap_or_default();
    extra::metadata(kind, extra::remainder(&raw, &native))
}

/// [`carry`] for each virtual host (its own settings) and each route of a route table.
fn carry_routes(rc: &mut RouteConfiguration, raw: &RawRouteTable) {
    for (vh, rvh) in rc.virtual_hosts.iter_mut().zip(&raw.virtual_hosts) {
        for (r, rr) in vh.routes.iter_mut().zip(&rvh.routes) {
            r.metadata = carry("Route", Some(rr), reverse::one_route(r));
        }
        let mut own = serde_json::to_value(rvh).unwrap_or_default();
        if let Some(o) = own.as_object_mut() {
            o.remove("routes");
        }
        vh.metadata = carry("VirtualHost", Some(&own), reverse::virtual_host_fields(vh));
    }
}

/// Resources come over the same ADS stream.
fn ads() -> ConfigSource {
    ConfigSource {
        resource_api_version: 2, // V3
        config_source_specifier: Some(config_source::ConfigSourceSpecifier::Ads(
            AggregatedConfigSource::default(),
        )),
        ..Default::default()
    }
}

fn socket(ip: String, port: u16) -> Address {
    Address {
        address: Some(address::Address::SocketAddress(SocketAddress {
            address: ip,
            port_specifier: Some(socket_address::PortSpecifier::PortValue(u32::from(port))),
            ..Default::default()
        })),
    }
}

/// The disabled connection-manager entries a route table's route filters need, one per
/// filter key, in order of first use.
fn placeholders(t: &RouteTable) -> Vec<HttpFilter> {
    let mut out: Vec<HttpFilter> = Vec::new();
    let filters = t
        .virtual_hosts
        .iter()
        .flat_map(|vh| &vh.routes)
        .flat_map(|r| &r.filters);
    for f in filters {
        let (_, _, placeholder) = envoy_filters::route_filter(f);
        if !out.iter().any(|p| p.name == placeholder.name) {
            out.push(placeholder);
        }
    }
    out
}

/// A listener: its filters, then disabled entries for its routes' filters (`placeholders`),
/// then the router.
pub fn listener(l: &rampart_config::model::Listener, placeholders: &[HttpFilter]) -> Listener {
    let mut http_filters: Vec<HttpFilter> = l
        .filters
        .iter()
        .map(envoy_filters::listener_filter)
        .collect();
    for p in placeholders {
        if !http_filters.iter().any(|f| f.name == p.name) {
            http_filters.push(p.clone());
        }
    }
    http_filters.push(HttpFilter {
        name: "envoy.filters.http.router".into(),
        config_type: Some(http_filter::ConfigType::TypedConfig(pack_any(
            Router::default(),
        ))),
        ..Default::default()
    });
    let hcm = HttpConnectionManager {
        stat_prefix: l.name.clone(),
        route_specifier: Some(http_connection_manager::RouteSpecifier::Rds(Rds {
            config_source: Some(ads()),
            route_config_name: l.route_table.clone(),
        })),
        http_filters,
        ..Default::default()
    };
    Listener {
        name: l.name.clone(),
        address: Some(socket(l.address.ip().to_string(), l.address.port())),
        filter_chains: vec![FilterChain {
            filters: vec![Filter {
                name: "envoy.filters.network.http_connection_manager".into(),
                config_type: Some(filter::ConfigType::TypedConfig(pack_any(hcm))),
            }],
            ..Default::default()
        }],
        ..Default::default()
    }
}

pub fn route_table(t: &RouteTable) -> RouteConfiguration {
    RouteConfiguration {
        name: t.name.clone(),
        virtual_hosts: t
            .virtual_hosts
            .iter()
            .map(|vh| EnvoyVirtualHost {
                name: vh.name.clone(),
                domains: vh.domains.iter().map(domain).collect(),
                routes: vh.routes.iter().map(route).collect(),
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    }
}

fn domain(d: &DomainPattern) -> String {
    match d {
        DomainPattern::Exact(s) => s.clone(),
        DomainPattern::Suffix(s) => format!("*{s}"),
        DomainPattern::Prefix(s) => format!("{s}*"),
        DomainPattern::Any => "*".into(),
    }
}

fn route(r: &Route) -> EnvoyRoute {
    let path = match &r.matcher.path {
        None => route_match::PathSpecifier::Prefix("/".into()),
        Some(PathMatch::Prefix(p)) => route_match::PathSpecifier::Prefix(p.clone()),
        Some(PathMatch::Exact(p)) => route_match::PathSpecifier::Path(p.clone()),
        Some(PathMatch::Regex(re)) => route_match::PathSpecifier::SafeRegex(RegexMatcher {
            regex: re.as_str().to_owned(),
            ..Default::default()
        }),
        // The same match as a regex (the template itself rides in the metadata).
        Some(PathMatch::Template(t)) => route_match::PathSpecifier::SafeRegex(RegexMatcher {
            regex: t.to_regex(),
            ..Default::default()
        }),
    };
    let action = match &r.action {
        Action::Forward(f) => route::Action::Route(forward(f)),
        Action::DirectResponse(d) => route::Action::DirectResponse(DirectResponseAction {
            status: u32::from(d.status.as_u16()),
            body: Some(DataSource {
                specifier: Some(data_source::Specifier::InlineString(d.body.clone())),
                ..Default::default()
            }),
            ..Default::default()
        }),
        Action::Redirect(rd) => route::Action::Redirect(redirect(rd)),
        // Envoy has no functions: it answers 503; the name rides in the metadata.
        Action::Function(name) => route::Action::DirectResponse(DirectResponseAction {
            status: 503,
            body: Some(DataSource {
                specifier: Some(data_source::Specifier::InlineString(format!(
                    "function {name} runs on Rampart proxies only\n"
                ))),
                ..Default::default()
            }),
            ..Default::default()
        }),
    };
    let mut per_filter = std::collections::HashMap::new();
    for f in &r.filters {
        let (mut key, config, _) = envoy_filters::route_filter(f);
        // The same filter twice on a route: the second under its own key.
        let base = key.clone();
        let mut n = 1;
        while per_filter.contains_key(&key) {
            n += 1;
            key = format!("{base}.{n}");
        }
        per_filter.insert(key, config);
    }
    EnvoyRoute {
        name: r.name.clone(),
        r#match: Some(EnvoyMatch {
            path_specifier: Some(path),
            ..Default::default()
        }),
        action: Some(action),
        typed_per_filter_config: per_filter,
        ..Default::default()
    }
}

fn forward(f: &Forward) -> RouteAction {
    let clusters = match f.clusters.as_slice() {
        [one] => route_action::ClusterSpecifier::Cluster(one.cluster.clone()),
        many => route_action::ClusterSpecifier::WeightedClusters(EnvoyWeighted {
            clusters: many
                .iter()
                .map(|w| weighted_cluster::ClusterWeight {
                    name: w.cluster.clone(),
                    weight: Some(UInt32Value { value: w.weight }),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        }),
    };
    RouteAction {
        cluster_specifier: Some(clusters),
        prefix_rewrite: f.prefix_rewrite.clone().unwrap_or_default(),
        host_rewrite_specifier: f.host_rewrite.as_ref().and_then(|h| {
            h.to_str()
                .ok()
                .map(|h| route_action::HostRewriteSpecifier::HostRewriteLiteral(h.to_owned()))
        }),
        timeout: f.timeout.map(duration),
        ..Default::default()
    }
}

fn redirect(r: &Redirect) -> RedirectAction {
    // Envoy's response codes: MOVED_PERMANENTLY 0, FOUND 1, SEE_OTHER 2, TEMPORARY 3,
    // PERMANENT 4.
    let response_code = match r.status.as_u16() {
        302 => 1,
        303 => 2,
        307 => 3,
        308 => 4,
        _ => 0,
    };
    let path = match (&r.path, &r.prefix_rewrite) {
        (Some(p), _) => Some(redirect_action::PathRewriteSpecifier::PathRedirect(
            p.clone(),
        )),
        (None, Some(p)) => Some(redirect_action::PathRewriteSpecifier::PrefixRewrite(
            p.clone(),
        )),
        (None, None) => None,
    };
    RedirectAction {
        host_redirect: r.host.clone().unwrap_or_default(),
        port_redirect: r.port.map(u32::from).unwrap_or_default(),
        response_code,
        strip_query: r.strip_query,
        scheme_rewrite_specifier: r
            .scheme
            .clone()
            .map(redirect_action::SchemeRewriteSpecifier::SchemeRedirect),
        path_rewrite_specifier: path,
    }
}

/// A cluster whose endpoints are all addresses is an EDS cluster.
fn eds(c: &Cluster) -> bool {
    c.endpoints.iter().all(|e| matches!(e, EndpointAddr::Ip(_)))
}

pub fn cluster(c: &Cluster) -> EnvoyCluster {
    let lb_policy = match c.lb_policy {
        LbPolicy::RoundRobin => cluster::LbPolicy::RoundRobin,
        LbPolicy::LeastRequest => cluster::LbPolicy::LeastRequest,
        LbPolicy::RingHash => cluster::LbPolicy::RingHash,
        LbPolicy::Maglev => cluster::LbPolicy::Maglev,
    };
    let mut out = EnvoyCluster {
        name: c.name.clone(),
        connect_timeout: Some(duration(c.connect_timeout)),
        lb_policy: lb_policy as i32,
        ..Default::default()
    };
    if eds(c) {
        out.cluster_discovery_type = Some(cluster::ClusterDiscoveryType::Type(
            cluster::DiscoveryType::Eds as i32,
        ));
        out.eds_cluster_config = Some(cluster::EdsClusterConfig {
            eds_config: Some(ads()),
            service_name: String::new(),
        });
    } else {
        out.cluster_discovery_type = Some(cluster::ClusterDiscoveryType::Type(
            cluster::DiscoveryType::StrictDns as i32,
        ));
        out.load_assignment = Some(load_assignment(c));
    }
    out
}

pub fn load_assignment(c: &Cluster) -> ClusterLoadAssignment {
    let lb_endpoints = c
        .endpoints
        .iter()
        .map(|e| {
            let address = match e {
                EndpointAddr::Ip(a) => socket(a.ip().to_string(), a.port()),
                EndpointAddr::Dns { host, port } => socket(host.clone(), *port),
            };
            LbEndpoint {
                host_identifier: Some(lb_endpoint::HostIdentifier::Endpoint(Endpoint {
                    address: Some(address),
                    ..Default::default()
                })),
                ..Default::default()
            }
        })
        .collect();
    ClusterLoadAssignment {
        cluster_name: c.name.clone(),
        endpoints: vec![LocalityLbEndpoints {
            lb_endpoints,
            ..Default::default()
        }],
        ..Default::default()
    }
}

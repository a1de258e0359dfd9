//! The translation produces what Envoy's own validation requires of these resources: an HTTP
//! connection manager with a stat prefix, routes from RDS over ADS, the router as its last
//! HTTP filter; EDS clusters with an ADS EDS config; DNS clusters with inline endpoints; every
//! route's cluster and every listener's route table defined.

use envoy_types::pb::envoy::config::cluster::v3::{Cluster, cluster};
use envoy_types::pb::envoy::config::core::v3::config_source::ConfigSourceSpecifier;
use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use envoy_types::pb::envoy::config::listener::v3::{Listener, filter};
use envoy_types::pb::envoy::config::route::v3::{
    FilterConfig, RouteConfiguration, route, route_action,
};
use envoy_types::pb::envoy::extensions::filters::http::cors::v3::CorsPolicy;
use envoy_types::pb::envoy::extensions::filters::http::ext_authz::v3::{
    ExtAuthz, ExtAuthzPerRoute, ext_authz,
};
use envoy_types::pb::envoy::extensions::filters::http::jwt_authn::v3::JwtAuthentication;
use envoy_types::pb::envoy::extensions::filters::http::local_ratelimit::v3::LocalRateLimit;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpConnectionManager, HttpFilter, http_connection_manager, http_filter,
};
use prost::Message;
use rampart_xds::snapshot::{CLUSTER, ENDPOINT, LISTENER, ROUTE};

fn decode<M: Message + Default>(snap: &rampart_xds::Snapshot, type_url: &str) -> Vec<M> {
    snap.of(type_url)
        .unwrap()
        .values()
        .map(|r| {
            assert_eq!(r.body.type_url, type_url);
            M::decode(r.body.value.as_slice()).unwrap()
        })
        .collect()
}

#[test]
fn the_example_config_translates_to_valid_envoy_resources() {
    let text = include_str!("../../../examples/rampart.yaml");
    let config = rampart_config::from_yaml(text).unwrap();
    let snap = rampart_xds::translate::snapshot(&config, 1);

    let routes: Vec<RouteConfiguration> = decode(&snap, ROUTE);
    let clusters: Vec<Cluster> = decode(&snap, CLUSTER);
    let cluster_names: Vec<&str> = clusters.iter().map(|c| c.name.as_str()).collect();

    for l in decode::<Listener>(&snap, LISTENER) {
        assert!(l.address.is_some(), "{}: no address", l.name);
        let f = &l.filter_chains[0].filters[0];
        assert_eq!(f.name, "envoy.filters.network.http_connection_manager");
        let Some(filter::ConfigType::TypedConfig(any)) = &f.config_type else {
            panic!("{}: no typed config", l.name)
        };
        let hcm = HttpConnectionManager::decode(any.value.as_slice()).unwrap();
        assert!(!hcm.stat_prefix.is_empty());
        assert_eq!(
            hcm.http_filters.last().map(|f| f.name.as_str()),
            Some("envoy.filters.http.router")
        );
        let Some(http_connection_manager::RouteSpecifier::Rds(rds)) = &hcm.route_specifier else {
            panic!("{}: routes not from RDS", l.name)
        };
        let source = rds.config_source.as_ref().unwrap();
        assert!(matches!(
            source.config_source_specifier,
            Some(ConfigSourceSpecifier::Ads(_))
        ));
        assert!(
            routes.iter().any(|r| r.name == rds.route_config_name),
            "{}: route table {} not served",
            l.name,
            rds.route_config_name
        );
    }
    for rc in &routes {
        for vh in &rc.virtual_hosts {
            assert!(!vh.domains.is_empty());
            for r in &vh.routes {
                assert!(r.r#match.as_ref().unwrap().path_specifier.is_some());
                if let Some(route::Action::Route(a)) = &r.action {
                    match &a.cluster_specifier {
                        Some(route_action::ClusterSpecifier::Cluster(c)) => {
                            assert!(cluster_names.contains(&c.as_str()), "no cluster {c}");
                        }
                        Some(route_action::ClusterSpecifier::WeightedClusters(w)) => {
                            for c in &w.clusters {
                                assert!(cluster_names.contains(&c.name.as_str()));
                            }
                        }
                        other => panic!("unexpected cluster specifier {other:?}"),
                    }
                }
            }
        }
    }
    let eds: Vec<ClusterLoadAssignment> = decode(&snap, ENDPOINT);
    for c in &clusters {
        assert!(c.connect_timeout.is_some());
        match &c.cluster_discovery_type {
            Some(cluster::ClusterDiscoveryType::Type(t))
                if *t == cluster::DiscoveryType::Eds as i32 =>
            {
                let cfg = c.eds_cluster_config.as_ref().unwrap();
                assert!(matches!(
                    cfg.eds_config.as_ref().unwrap().config_source_specifier,
                    Some(ConfigSourceSpecifier::Ads(_))
                ));
                assert!(
                    eds.iter().any(|e| e.cluster_name == c.name),
                    "{}: no endpoints",
                    c.name
                );
            }
            Some(cluster::ClusterDiscoveryType::Type(t))
                if *t == cluster::DiscoveryType::StrictDns as i32 =>
            {
                assert!(
                    c.load_assignment.is_some(),
                    "{}: DNS cluster without endpoints",
                    c.name
                );
            }
            other => panic!("{}: unexpected discovery type {other:?}", c.name),
        }
    }
}

fn hcm_filters(l: &Listener) -> Vec<HttpFilter> {
    let Some(filter::ConfigType::TypedConfig(any)) = &l.filter_chains[0].filters[0].config_type
    else {
        panic!("no HCM")
    };
    HttpConnectionManager::decode(any.value.as_slice())
        .unwrap()
        .http_filters
}

fn typed<M: Message + Default>(f: &HttpFilter) -> M {
    let Some(http_filter::ConfigType::TypedConfig(any)) = &f.config_type else {
        panic!("{}: no typed config", f.name)
    };
    M::decode(any.value.as_slice()).unwrap()
}

#[test]
fn rampart_filters_become_envoy_filters_where_envoy_has_one() {
    let text = include_str!("../../../examples/rampart.yaml");
    let config = rampart_config::from_yaml(text).unwrap();
    let snap = rampart_xds::translate::snapshot(&config, 1);
    let listener = &decode::<Listener>(&snap, LISTENER)[0];
    let filters = hcm_filters(listener);
    let names: Vec<(&str, bool, bool)> = filters
        .iter()
        .map(|f| (f.name.as_str(), f.disabled, f.is_optional))
        .collect();
    // The listener's CORS; disabled entries for what routes enable (the policy engine as
    // ext_authz, a per-client limit Envoy has no equal for); the router last.
    assert_eq!(
        names,
        [
            ("envoy.filters.http.cors", false, false),
            ("envoy.filters.http.ext_authz", true, false),
            ("rampart.rate_limit", true, true),
            ("envoy.filters.http.router", false, false),
        ]
    );
    let authz: ExtAuthz = typed(&filters[1]);
    let Some(ext_authz::Services::GrpcService(g)) = &authz.services else {
        panic!("ext_authz over gRPC")
    };
    assert!(format!("{g:?}").contains(rampart_xds::POLICY_CLUSTER));
    assert_eq!(authz.transport_api_version, 2, "v3");

    let rc = &decode::<RouteConfiguration>(&snap, ROUTE)[0];
    for vh in &rc.virtual_hosts {
        let cors = CorsPolicy::decode(
            vh.typed_per_filter_config["envoy.filters.http.cors"]
                .value
                .as_slice(),
        )
        .unwrap();
        assert_eq!(cors.allow_methods, "GET, POST");
        assert!(
            format!("{:?}", cors.allow_origin_string_match).contains("https://app.example.com")
        );
    }
    let route = |name: &str| {
        rc.virtual_hosts
            .iter()
            .flat_map(|vh| &vh.routes)
            .find(|r| r.name == name)
            .unwrap()
    };
    let per_route = |name: &str, key: &str| {
        FilterConfig::decode(route(name).typed_per_filter_config[key].value.as_slice()).unwrap()
    };
    let tenant = per_route("tenant-api", "envoy.filters.http.ext_authz");
    assert!(!tenant.disabled);
    let settings = ExtAuthzPerRoute::decode(tenant.config.unwrap().value.as_slice()).unwrap();
    assert!(
        format!("{settings:?}").contains("tenant_from") && format!("{settings:?}").contains("host")
    );
    let limited = per_route("limited", "rampart.rate_limit");
    assert!(limited.is_optional && !limited.disabled);
    assert_eq!(
        limited.config.unwrap().type_url,
        "type.googleapis.com/xds.type.v3.TypedStruct"
    );
    assert!(route("catch-all").typed_per_filter_config.is_empty());
}

#[test]
fn a_route_wide_limit_and_a_jwt_listener_use_envoys_filters_and_versions_are_stable() {
    let config = rampart_config::from_yaml(
        r#"
listeners:
  - name: main
    address: "127.0.0.1:10000"
    route_table: main
    filters:
      - jwt: { issuer: "https://issuer.example", audiences: [api], jwks_url: "https://issuer.example/keys" }
route_tables:
  - name: main
    virtual_hosts:
      - name: all
        domains: ["*"]
        routes:
          - forward: { cluster: c }
            filters:
              - rate_limit: { rate: 10, per: 1s, key: route }
              - cors: { allow_origins: ["*"] }
              - authz: { tenant: acme }
clusters: [{ name: c, endpoints: ["127.0.0.1:9"] }]
"#,
    )
    .unwrap();
    let snap = rampart_xds::translate::snapshot(&config, 1);
    let filters = hcm_filters(&decode::<Listener>(&snap, LISTENER)[0]);
    assert_eq!(filters[0].name, "envoy.filters.http.jwt_authn");
    let jwt: JwtAuthentication = typed(&filters[0]);
    let provider = &jwt.providers["rampart"];
    assert_eq!(provider.issuer, "https://issuer.example");
    assert_eq!(provider.audiences, ["api"]);
    assert_eq!(jwt.rules.len(), 1);
    let jwks = format!("{:?}", provider.jwks_source_specifier);
    assert!(
        jwks.contains("https://issuer.example/keys")
            && jwks.contains("Cluster(\"issuer.example\")"),
        "{jwks}"
    );
    let rc = &decode::<RouteConfiguration>(&snap, ROUTE)[0];
    let per = &rc.virtual_hosts[0].routes[0].typed_per_filter_config;
    let mut keys: Vec<&str> = per.keys().map(String::as_str).collect();
    keys.sort_unstable();
    assert_eq!(
        keys,
        [
            "envoy.filters.http.cors",
            "envoy.filters.http.ext_authz",
            "envoy.filters.http.local_ratelimit"
        ]
    );
    let limit =
        FilterConfig::decode(per["envoy.filters.http.local_ratelimit"].value.as_slice()).unwrap();
    let limit = LocalRateLimit::decode(limit.config.unwrap().value.as_slice()).unwrap();
    let bucket = limit.token_bucket.unwrap();
    assert_eq!(bucket.tokens_per_fill.unwrap().value, 10);
    // Three per-filter entries encode in a hash map's order; the version does not care.
    for _ in 0..20 {
        let again = rampart_xds::translate::snapshot(&config, 2);
        assert_eq!(
            again.of(ROUTE).unwrap()["main"].version,
            snap.of(ROUTE).unwrap()["main"].version
        );
    }
}

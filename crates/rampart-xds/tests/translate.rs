//! The translation produces what Envoy's own validation requires of these resources: an HTTP
//! connection manager with a stat prefix, routes from RDS over ADS, the router as its last
//! HTTP filter; EDS clusters with an ADS EDS config; DNS clusters with inline endpoints; every
//! route's cluster and every listener's route table defined.

use envoy_types::pb::envoy::config::cluster::v3::{Cluster, cluster};
use envoy_types::pb::envoy::config::core::v3::config_source::ConfigSourceSpecifier;
use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use envoy_types::pb::envoy::config::listener::v3::{Listener, filter};
use envoy_types::pb::envoy::config::route::v3::{RouteConfiguration, route, route_action};
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpConnectionManager, http_connection_manager,
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

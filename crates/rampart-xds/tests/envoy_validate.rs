//! Every resource Rampart emits, checked against Envoy's own validation rules: the
//! protoc-gen-validate annotations of Envoy's `.proto` files (shipped in the envoy-types
//! crate, compiled here with protox), enforced as Envoy's generated validators do when a
//! config arrives, with the HTTP connection manager and HTTP filter configs unpacked from
//! their `Any` and checked too. Envoy itself is not needed (nor installable here).
//!
//! The negative tests show that the checker bites, with the path of what it found.

mod pgv;

use envoy_types::pb::envoy::config::cluster::v3::{Cluster, cluster};
use envoy_types::pb::envoy::config::core::v3::{HealthCheck, health_check};
use envoy_types::pb::envoy::config::listener::v3::{Listener, filter};
use envoy_types::pb::envoy::config::route::v3::RouteConfiguration;
use envoy_types::pb::envoy::extensions::filters::http::local_ratelimit::v3::LocalRateLimit;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpConnectionManager, HttpFilter, http_filter,
};
use envoy_types::pb::google::protobuf::{Any, Duration, UInt32Value};
use envoy_types::util::pack_any;
use prost::{Message, Name};
use rampart_xds::snapshot::{CLUSTER, ENDPOINT, LISTENER, ROUTE, TYPES};
use rampart_xds::translate;

use pgv::Validator;

fn example() -> rampart_config::Config {
    rampart_config::from_yaml(include_str!("../../../examples/rampart.yaml")).unwrap()
}

/// The violations in one message, with paths from it.
fn check<M: Message + Name>(m: &M) -> Vec<String> {
    Validator::envoy().check(&M::type_url(), &m.encode_to_vec())
}

fn kind(type_url: &str) -> &str {
    type_url.rsplit('.').next().unwrap_or(type_url)
}

#[test]
fn every_resource_of_the_example_passes_envoys_validation() {
    let snap = translate::snapshot(&example(), 1);
    let validator = Validator::envoy();
    let mut found = Vec::new();
    for type_url in TYPES {
        let resources = snap.of(type_url).unwrap();
        assert!(
            !resources.is_empty(),
            "no {} in the example",
            kind(type_url)
        );
        for (name, r) in resources {
            assert_eq!(r.body.type_url, type_url);
            for v in validator.check(type_url, &r.body.value) {
                found.push(format!("{} {name}: {v}", kind(type_url)));
            }
        }
    }
    assert!(
        found.is_empty(),
        "Envoy would reject Rampart's output:\n{}",
        found.join("\n")
    );
    for t in [LISTENER, ROUTE, CLUSTER, ENDPOINT] {
        assert!(TYPES.contains(&t), "{t} was not checked");
    }
}

/// The example's resource `name` of type `M`, as Rampart emits it.
fn emitted<M: Message + Name + Default>(name: &str) -> M {
    let snap = translate::snapshot(&example(), 1);
    let r = &snap.of(&M::type_url()).unwrap()[name];
    M::decode(r.body.value.as_slice()).unwrap()
}

/// The example's listener `public`, its HTTP connection manager edited by `edit`.
fn listener_with(edit: impl FnOnce(&mut HttpConnectionManager)) -> Listener {
    let mut l: Listener = emitted("public");
    let Some(filter::ConfigType::TypedConfig(any)) = &mut l.filter_chains[0].filters[0].config_type
    else {
        panic!("no typed config")
    };
    let mut hcm = HttpConnectionManager::decode(any.value.as_slice()).unwrap();
    edit(&mut hcm);
    *any = pack_any(hcm);
    l
}

const HCM: &str = "filter_chains[0].filters[0].typed_config(HttpConnectionManager)";

#[test]
fn an_empty_stat_prefix_inside_a_listeners_connection_manager_is_found() {
    let l = listener_with(|hcm| hcm.stat_prefix.clear());
    assert_eq!(check(&l), [format!("{HCM}.stat_prefix: min_len 1")]);
}

#[test]
fn an_http_filters_config_is_unpacked_and_checked() {
    let l = listener_with(|hcm| {
        let limit = LocalRateLimit::default(); // no stat_prefix
        hcm.http_filters.insert(
            0,
            HttpFilter {
                name: "envoy.filters.http.local_ratelimit".into(),
                config_type: Some(http_filter::ConfigType::TypedConfig(pack_any(limit))),
                ..Default::default()
            },
        );
    });
    assert_eq!(
        check(&l),
        [format!(
            "{HCM}.http_filters[0].typed_config(LocalRateLimit).stat_prefix: min_len 1"
        )]
    );
}

#[test]
fn an_any_of_a_type_it_cannot_check_is_found() {
    let l = listener_with(|hcm| {
        hcm.http_filters.insert(
            0,
            HttpFilter {
                name: "example.unknown".into(),
                config_type: Some(http_filter::ConfigType::TypedConfig(Any {
                    type_url: "type.googleapis.com/example.Unknown".into(),
                    value: Vec::new(),
                })),
                ..Default::default()
            },
        );
    });
    assert_eq!(
        check(&l),
        [format!(
            "{HCM}.http_filters[0].typed_config: Any of type \
             \"type.googleapis.com/example.Unknown\": not in the pool, cannot check"
        )]
    );
}

fn demo_cluster() -> Cluster {
    emitted("demo")
}

#[test]
fn a_negative_connect_timeout_is_found() {
    let mut c = demo_cluster();
    c.connect_timeout = Some(Duration {
        seconds: -1,
        nanos: 0,
    });
    assert_eq!(
        check(&c),
        [
            "connect_timeout: gt 0s (got -1s)",
            "connect_timeout: envoy: Invalid duration: Expected positive duration",
        ]
    );
}

#[test]
fn an_undefined_enum_value_and_a_wrapped_number_out_of_range_are_found() {
    let mut c = demo_cluster();
    c.lb_policy = 99;
    c.lb_config = Some(cluster::LbConfig::LeastRequestLbConfig(
        cluster::LeastRequestLbConfig {
            choice_count: Some(UInt32Value { value: 1 }),
            ..Default::default()
        },
    ));
    assert_eq!(
        check(&c),
        [
            "lb_policy: defined_only (got 99, not a envoy.config.cluster.v3.Cluster.LbPolicy)",
            "least_request_lb_config.choice_count: gte 2 (got 1)",
        ]
    );
}

#[test]
fn strict_header_rules_and_required_fields_of_a_health_check_are_found() {
    let mut c = demo_cluster();
    c.health_checks = vec![HealthCheck {
        health_checker: Some(health_check::HealthChecker::HttpHealthCheck(
            health_check::HttpHealthCheck {
                host: "a\u{7f}b".into(), // fine for a lax rule, not for a strict one
                ..Default::default()
            },
        )),
        ..Default::default()
    }];
    let mut found = check(&c);
    found.sort();
    assert_eq!(
        found,
        [
            "health_checks[0].healthy_threshold: required",
            "health_checks[0].http_health_check.host: \
             well_known_regex HTTP_HEADER_VALUE (strict)",
            "health_checks[0].http_health_check.path: min_len 1",
            "health_checks[0].interval: required",
            "health_checks[0].timeout: required",
            "health_checks[0].unhealthy_threshold: required",
        ]
    );
}

fn main_routes() -> RouteConfiguration {
    emitted("main")
}

#[test]
fn a_virtual_host_with_no_domains_is_found() {
    let mut rc = main_routes();
    rc.virtual_hosts[0].domains.clear();
    assert_eq!(check(&rc), ["virtual_hosts[0].domains: min_items 1"]);
}

#[test]
fn a_route_with_neither_match_nor_action_is_found() {
    let mut rc = main_routes();
    let r = &mut rc.virtual_hosts[0].routes[0];
    r.r#match = None;
    r.action = None;
    let mut found = check(&rc);
    found.sort();
    assert_eq!(
        found,
        [
            "virtual_hosts[0].routes[0].action: oneof required (none set)",
            "virtual_hosts[0].routes[0].match: required",
        ]
    );
}

#[test]
fn header_names_in_a_list_are_checked_item_by_item() {
    let mut rc = main_routes();
    rc.virtual_hosts[1].request_headers_to_remove = vec![
        "x-ok".into(),
        String::new(),
        "lax is fine".into(),
        "a\u{7f}b".into(),
        "bad\nname".into(),
    ];
    assert_eq!(
        check(&rc),
        [
            "virtual_hosts[1].request_headers_to_remove[1]: min_len 1",
            "virtual_hosts[1].request_headers_to_remove[4]: \
             well_known_regex HTTP_HEADER_NAME (not strict)",
        ]
    );
}

#[test]
fn pgv_header_patterns_strict_and_not() {
    for ok in ["content-type", ":authority", "x_a.b~c", "a,b"] {
        assert!(pgv::header_name(ok), "{ok:?}");
    }
    for bad in ["", ":", "::path", "a b", "a:b", "é", "a\tb"] {
        assert!(!pgv::header_name(bad), "{bad:?}");
    }
    for ok in ["", "a b\tc", "é"] {
        assert!(pgv::header_value(ok), "{ok:?}");
    }
    for bad in ["a\nb", "a\rb", "\0", "a\u{7f}", "\u{1}"] {
        assert!(!pgv::header_value(bad), "{bad:?}");
    }
    for ok in ["a b", "\u{7f}", "a\tb", "é"] {
        assert!(pgv::header_lax(ok), "{ok:?}");
    }
    for bad in ["a\nb", "a\rb", "a\0"] {
        assert!(!pgv::header_lax(bad), "{bad:?}");
    }
}

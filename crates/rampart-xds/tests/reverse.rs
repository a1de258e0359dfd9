//! Envoy resources read back into a Rampart config: what `translate` emits comes back as the
//! same listeners, routes and clusters, Rampart's own settings included, and a set still
//! warming says what it waits for.

use rampart_xds::reverse::{self, Held, Incomplete};
use rampart_xds::snapshot::{CLUSTER, ENDPOINT, LISTENER, ROUTE, TYPES};

fn held(snap: &rampart_xds::Snapshot) -> Held {
    TYPES
        .iter()
        .map(|t| {
            let m = snap
                .of(t)
                .unwrap()
                .iter()
                .map(|(n, r)| (n.clone(), r.body.clone()))
                .collect();
            ((*t).to_owned(), m)
        })
        .collect()
}

#[test]
fn the_example_config_comes_back_whole_from_its_resources() {
    let text = include_str!("../../../examples/rampart.yaml");
    let original = rampart_config::from_yaml(text).unwrap();
    let raw = reverse::config(&held(&rampart_xds::translate::snapshot(&original, 1))).unwrap();
    let back = rampart_config::validate(raw).unwrap();
    // Everything a proxy runs on: Envoy's fields plus the Rampart settings carried in
    // metadata (filters, limits, header matches and mutations), compared whole.
    assert_eq!(dynamic(&back), dynamic(&original));
    let canary = format!("{:?}", original.route_tables[0].virtual_hosts[2].routes[2]);
    assert!(canary.contains("x-canary") && canary.contains("x-rampart-track"));
    assert!(format!("{:?}", original.listeners[0].filters).contains("app.example.com"));
}

/// Listeners, route tables and clusters, each sorted by name, as debug text.
fn dynamic(c: &rampart_config::Config) -> [String; 3] {
    let mut l: Vec<String> = c.listeners.iter().map(|x| format!("{x:?}")).collect();
    let mut t: Vec<String> = c.route_tables.iter().map(|x| format!("{x:?}")).collect();
    let mut k: Vec<String> = c.clusters.iter().map(|x| format!("{x:?}")).collect();
    l.sort();
    t.sort();
    k.sort();
    [l.join("\n"), t.join("\n"), k.join("\n")]
}

#[test]
fn a_set_still_warming_says_what_it_waits_for() {
    let original =
        rampart_config::from_yaml(include_str!("../../../examples/rampart.yaml")).unwrap();
    let mut h = held(&rampart_xds::translate::snapshot(&original, 1));
    h.get_mut(ROUTE).unwrap().clear();
    let first_eds = h[CLUSTER].keys().next().unwrap().clone();
    h.get_mut(ENDPOINT).unwrap().remove(&first_eds);
    let Err(Incomplete::Waiting(what)) = reverse::config(&h) else {
        panic!("a config without its routes is not whole")
    };
    assert!(
        what.iter().any(|w| w.starts_with("route configuration")),
        "{what:?}"
    );
    assert!(
        what.contains(&format!("endpoints of {first_eds}")),
        "{what:?}"
    );
    assert!(!h[LISTENER].is_empty());
}

#[test]
fn function_and_template_routes_reach_envoy_in_its_terms_and_rampart_whole() {
    let text = "listeners:\n  - { name: main, address: \"127.0.0.1:8080\", route_table: main }\n\
                route_tables:\n  - name: main\n    virtual_hosts:\n      - name: all\n        domains: [\"*\"]\n        routes:\n          \
                - { name: fn-hello, match: { path: { prefix: /hello } }, function: hello }\n          \
                - { name: user, match: { path: { template: \"/users/{id}\" } }, forward: { cluster: up } }\n          \
                - { match: { path: { prefix: / } }, forward: { cluster: up } }\n\
                clusters:\n  - { name: up, endpoints: [\"127.0.0.1:9\"] }\n";
    let original = rampart_config::from_yaml(text).unwrap();
    let snap = rampart_xds::translate::snapshot(&original, 1);
    // Envoy sees a direct response (status 503, varint 0xf7 0x03) saying why.
    let body = &snap.of(ROUTE).unwrap()["main"].body.value;
    assert!(body.windows(3).any(|w| w == [8, 0xf7, 3]));
    assert!(String::from_utf8_lossy(body).contains("function hello runs on Rampart proxies only"));
    let back = rampart_config::validate(reverse::config(&held(&snap)).unwrap()).unwrap();
    assert_eq!(dynamic(&back), dynamic(&original));
    let route = &back.route_tables[0].virtual_hosts[0].routes[0];
    assert!(matches!(&route.action, rampart_config::model::Action::Function(n) if n == "hello"));
    let user = &back.route_tables[0].virtual_hosts[0].routes[1];
    assert!(
        matches!(&user.matcher.path, Some(rampart_config::model::PathMatch::Template(t)) if t.as_str() == "/users/{id}")
    );
}

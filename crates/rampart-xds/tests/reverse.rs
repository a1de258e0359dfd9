//! Envoy resources read back into a Rampart config: what `translate` emits comes back as the
//! same listeners, routes and clusters (Rampart's own filters aside, which xDS does not carry
//! yet), and a set still warming says what it waits for.

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
fn the_example_config_comes_back_from_its_resources() {
    let text = include_str!("../../../examples/rampart.yaml");
    let original = rampart_config::from_yaml(text).unwrap();
    let raw = reverse::config(&held(&rampart_xds::translate::snapshot(&original, 1))).unwrap();
    let back = rampart_config::validate(raw).unwrap();

    let listeners = |c: &rampart_config::Config| {
        c.listeners
            .iter()
            .map(|l| (l.name.clone(), l.address, l.route_table.clone()))
            .collect::<Vec<_>>()
    };
    assert_eq!(listeners(&back), listeners(&original));
    let clusters = |c: &rampart_config::Config| {
        let mut v: Vec<_> = c
            .clusters
            .iter()
            .map(|c| {
                (
                    c.name.clone(),
                    c.endpoints.clone(),
                    c.lb_policy,
                    c.connect_timeout,
                )
            })
            .collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    };
    assert_eq!(clusters(&back), clusters(&original));
    for (b, o) in back.route_tables.iter().zip(&original.route_tables) {
        assert_eq!(b.name, o.name);
        for (bv, ov) in b.virtual_hosts.iter().zip(&o.virtual_hosts) {
            assert_eq!(bv.domains, ov.domains, "{}", ov.name);
            let routes = |rs: &[rampart_config::model::Route]| {
                rs.iter()
                    .map(|r| {
                        (
                            r.name.clone(),
                            format!("{:?}", r.matcher.path),
                            format!("{:?}", r.action),
                        )
                    })
                    .collect::<Vec<_>>()
            };
            assert_eq!(routes(&bv.routes), routes(&ov.routes), "{}", ov.name);
        }
    }
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

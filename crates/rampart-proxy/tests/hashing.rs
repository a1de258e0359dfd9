//! Consistent hashing through the gateway: stickiness on a header, cookie or source IP, and
//! minimal remapping when an endpoint leaves.

mod common;

use std::collections::HashMap;

use common::*;

fn yaml(policy: &str, hash_on: &str, eps: &[std::net::SocketAddr]) -> String {
    let eps: Vec<String> = eps.iter().map(|a| format!("\"{a}\"")).collect();
    config(
        &format!("          - forward: {{ cluster: c, hash_policy: [{hash_on}] }}\n"),
        &format!(
            "  - {{ name: c, endpoints: [{}], lb_policy: {policy} }}\n",
            eps.join(", ")
        ),
    )
}

async fn placement(tg: &TestGateway, users: usize, header: &str) -> HashMap<usize, String> {
    let c = h1();
    let mut out = HashMap::new();
    for u in 0..users {
        let v = format!("user-{u}");
        let r = send(&c, get_req(tg.addr, "/", &[(header, v.as_str())])).await;
        out.insert(u, r.header("x-upstream-name").unwrap().to_owned());
    }
    out
}

#[tokio::test]
async fn maglev_is_sticky_and_remaps_little_when_an_endpoint_leaves() {
    let (a, b, c) = (
        upstream("a").await,
        upstream("b").await,
        upstream("c").await,
    );
    let tg = gateway(&yaml(
        "maglev",
        "\"header:x-user\"",
        &[a.addr, b.addr, c.addr],
    ))
    .await;
    let users = 90;
    let first = placement(&tg, users, "x-user").await;
    // Sticky: every user lands where it landed before, request after request.
    for _ in 0..3 {
        assert_eq!(placement(&tg, users, "x-user").await, first);
    }
    let used: std::collections::HashSet<_> = first.values().collect();
    assert_eq!(used.len(), 3, "keys spread over all endpoints: {first:?}");

    // c leaves: its users move, nobody else does.
    tg.gw
        .reload(
            rampart_config::from_yaml(&yaml("maglev", "\"header:x-user\"", &[a.addr, b.addr]))
                .unwrap(),
        )
        .await
        .unwrap();
    let after = placement(&tg, users, "x-user").await;
    let mut moved_others = 0;
    for u in 0..users {
        if first[&u] == "c" {
            assert_ne!(after[&u], "c");
        } else if first[&u] != after[&u] {
            moved_others += 1;
        }
    }
    assert!(
        moved_others * 20 <= users,
        "{moved_others} of {users} users not on c were remapped"
    );
}

#[tokio::test]
async fn ring_hash_on_a_cookie_and_source_ip() {
    let (a, b, c) = (
        upstream("a").await,
        upstream("b").await,
        upstream("c").await,
    );
    let tg = gateway(&yaml(
        "ring_hash",
        "\"cookie:session\", \"source_ip\"",
        &[a.addr, b.addr, c.addr],
    ))
    .await;
    let client = h1();
    let mut by_session = HashMap::new();
    for round in 0..3 {
        for s in 0..20 {
            let cookie = format!("theme=dark; session=s{s}");
            let r = send(
                &client,
                get_req(tg.addr, "/", &[("cookie", cookie.as_str())]),
            )
            .await;
            let at = r.header("x-upstream-name").unwrap().to_owned();
            if round == 0 {
                by_session.insert(s, at);
            } else {
                assert_eq!(by_session[&s], at, "session s{s} moved");
            }
        }
    }
    assert!(
        by_session
            .values()
            .collect::<std::collections::HashSet<_>>()
            .len()
            >= 2
    );
    // No cookie: the source IP (always 127.0.0.1 here) decides, so one endpoint takes all.
    let mut seen = std::collections::HashSet::new();
    for _ in 0..20 {
        let r = send(&client, get_req(tg.addr, "/", &[])).await;
        seen.insert(r.header("x-upstream-name").unwrap().to_owned());
    }
    assert_eq!(seen.len(), 1, "{seen:?}");
}

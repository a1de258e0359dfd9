//! A filter from a crate of its own (`examples/filters/api-key`), registered by the binary
//! with no change to `rampart-proxy`, running in a real `rampart serve` process in front of
//! a real demo upstream, and checked by `rampart validate` like a built-in filter.

mod support;

use std::process::Command;

use support::*;

const KEY: &str = "ci-key-0123456789abcdef";

fn api_key_routes(clients: &str) -> String {
    format!(
        "          - match: {{ path: {{ prefix: / }} }}\n            forward: {{ cluster: up }}\n            \
         filters:\n              - api_key: {{ clients: {clients} }}\n"
    )
}

#[tokio::test]
async fn an_example_filter_crate_runs_in_the_binary() {
    let up = demo_upstream("up").await;
    let body = routes_and_clusters(
        &api_key_routes(&format!("{{ ci: \"{KEY}\" }}")),
        &cluster("up", up.addr),
    );
    let s = serve("plugin-api-key", &body, &[]).await;
    let client = h1();

    let r = send(&client, request(http::Method::GET, s.addr, "/x", &[])).await;
    assert_eq!(r.status, 401, "no key: {}", r.text());
    assert_eq!(r.header("www-authenticate"), Some("ApiKey"));
    let wrong = [("x-api-key", "ci-key-0123456789abcdeX")];
    let r = send(&client, request(http::Method::GET, s.addr, "/x", &wrong)).await;
    assert_eq!(r.status, 401, "a wrong key");

    let sent = [("x-api-key", KEY), ("x-api-client", "admin")];
    let r = send(&client, request(http::Method::GET, s.addr, "/x", &sent)).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let seen = &r.json()["headers"];
    assert_eq!(
        seen["x-api-client"], "ci",
        "the upstream learns the caller: {seen}"
    );
    assert!(
        seen.get("x-api-key").is_none(),
        "the key is not forwarded: {seen}"
    );
}

#[test]
fn validate_checks_a_plugin_config_with_field_paths() {
    let dir = TempDir::new("plugin-validate");
    let path = dir.path("rampart.yaml");
    let mut body = routes_and_clusters(&api_key_routes("{ ci: short }"), &cluster("up", local(9)));
    body = body.replace(
        "            filters:\n",
        "            filters:\n              - no_such_filter: {}\n",
    );
    std::fs::write(&path, config_file(local(1), local(2), &body)).unwrap();
    let out = Command::new(bin())
        .args(["validate", "--config", path.to_str().unwrap()])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "accepted: {stderr}");
    let at = "route_tables[0].virtual_hosts[0].routes[0].filters";
    assert!(
        stderr.contains(&format!(
            "{at}[1].api_key.clients.ci: the key must be at least 16 characters"
        )),
        "{stderr}"
    );
    assert!(
        stderr.contains(&format!(
            "{at}[0].no_such_filter: unknown filter \"no_such_filter\""
        )),
        "{stderr}"
    );
    assert!(
        stderr.contains("api_key") && stderr.contains("cors"),
        "lists the known filters: {stderr}"
    );
}

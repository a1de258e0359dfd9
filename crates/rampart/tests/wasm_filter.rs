//! A proxy-wasm plugin written with the public SDK (crates/rampart-wasm/guests/plugins, as
//! Envoy plugins are written), signed with `rampart wasm sign`, runs as a gateway filter
//! from config: it adds and edits request headers the upstream sees, answers a request
//! itself, marks responses, and is counted; an unsigned module rejects the config.

mod support;

use std::process::Command;

use support::*;

fn rampart(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(bin()).args(args).output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The route to `upstream` through the plugin at `module`, with `key` trusted.
fn body(key: &str, module: &str, upstream: std::net::SocketAddr) -> String {
    let routes = format!(
        "          - match: {{ path: {{ prefix: / }} }}\n            forward: {{ cluster: up }}\n            \
         filters:\n              - wasm: {{ module: \"{module}\", config: \"x-tenant=acme\" }}\n"
    );
    format!(
        "wasm: {{ trusted_keys: [\"{key}\"] }}\n{}",
        routes_and_clusters(&routes, &cluster("up", upstream))
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signed_sdk_plugin_runs_as_a_gateway_filter() {
    let plugin = match rampart_test_support::wasm_guest("wasm32-wasip1", "rampart_test_plugins") {
        Ok(p) => p,
        Err(why) => {
            loud_skip("a_signed_sdk_plugin_runs_as_a_gateway_filter", &why);
            return;
        }
    };
    let dir = TempDir::new("wasm-filter");
    let module = dir.path("plugin.wasm");
    std::fs::copy(&plugin, &module).unwrap();
    let m = module.to_str().unwrap().to_owned();
    let key = dir.path("key");
    let (ok, public, err) = rampart(&["wasm", "keygen", "--out", key.to_str().unwrap()]);
    assert!(ok, "{err}");
    let public = public.trim().to_owned();
    let (ok, _, err) = rampart(&["wasm", "sign", &m, "--key", key.to_str().unwrap()]);
    assert!(ok, "{err}");

    let up = demo_upstream("up").await;
    let served = serve("wasm-filter", &body(&public, &m, up.addr), &[]).await;
    let r = get(served.addr, "/hello").await;
    assert_eq!(r.status, http::StatusCode::OK, "{}", r.text());
    let seen = &r.json()["headers"];
    assert_eq!(seen["x-tenant"], "acme", "added by the plugin: {seen}");
    assert_eq!(seen["x-seen-path"], "/hello", "{seen}");
    assert_eq!(r.header("x-plugin-response"), Some("seen"));

    let req = request(http::Method::GET, served.addr, "/x", &[("x-deny", "1")]);
    let r = send(&h1(), req).await;
    assert_eq!(r.status, http::StatusCode::FORBIDDEN);
    assert_eq!(r.text(), "denied by plugin\n");
    assert_eq!(r.header("x-denied-by"), Some("plugin"));

    let m2 = metrics(served.admin).await;
    let calls = metric(&m2, "rampart_wasm_calls_total{plugin=\"plugin\"}");
    assert!(calls.is_some_and(|c| c >= 2.0), "{m2}");

    // The same module without its signature: the config is refused, naming the field.
    let unsigned = dir.path("unsigned.wasm");
    std::fs::copy(&plugin, &unsigned).unwrap();
    let bad = dir.path("bad.yaml");
    std::fs::write(
        &bad,
        config_file(
            ANY_PORT,
            ANY_PORT,
            &body(&public, unsigned.to_str().unwrap(), up.addr),
        ),
    )
    .unwrap();
    let mut p = Proc::spawn(
        "serve (unsigned)",
        &["serve", "--config", bad.to_str().unwrap()],
    );
    let status = p.wait_exit(std::time::Duration::from_secs(20)).await;
    assert!(!status.success());
    let stderr = p.stderr();
    assert!(
        stderr.contains("filters[0].wasm.module") && stderr.contains("no signature"),
        "{stderr}"
    );
}

/// A route through the plugin configured `config`.
fn plugin_route(path: &str, module: &str, config: &str, fail_open: bool) -> String {
    format!(
        "          - match: {{ path: {{ exact: {path} }} }}\n            forward: {{ cluster: up }}\n            \
         filters:\n              - wasm: {{ module: \"{module}\", config: \"{config}\", fail_open: {fail_open}, allow_unsigned: true }}\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_misbehaving_plugin_fails_only_its_requests() {
    let plugin = match rampart_test_support::wasm_guest("wasm32-wasip1", "rampart_test_plugins") {
        Ok(p) => p,
        Err(why) => {
            loud_skip("a_misbehaving_plugin_fails_only_its_requests", &why);
            return;
        }
    };
    let m = plugin.to_str().unwrap();
    let up = demo_upstream("up").await;
    let routes: String = [
        plugin_route("/trap", m, "fail=trap", false),
        plugin_route("/trap-open", m, "fail=trap", true),
        plugin_route("/loop", m, "fail=loop", false),
        plugin_route("/flood", m, "fail=flood", false),
        plugin_route("/log", m, "fail=log", false),
        plugin_route("/ok", m, "x-tenant=acme", false),
    ]
    .concat();
    let served = serve(
        "wasm-adversarial",
        &routes_and_clusters(&routes, &cluster("up", up.addr)),
        &[],
    )
    .await;
    let status = |path: &'static str| {
        let addr = served.addr;
        async move { get(addr, path).await.status.as_u16() }
    };
    for _ in 0..3 {
        // A panic in the plugin (a trap): fail closed, or on through with fail_open.
        assert_eq!(status("/trap").await, 500);
        assert_eq!(status("/trap-open").await, 200);
        // Between failures the plugin's other routes, on fresh VMs, still work.
        let r = get(served.addr, "/ok").await;
        assert_eq!(r.status, http::StatusCode::OK);
        assert_eq!(r.json()["headers"]["x-tenant"], "acme");
    }
    // An endless loop stops at the call's deadline.
    let t = std::time::Instant::now();
    assert_eq!(status("/loop").await, 500);
    assert!(
        t.elapsed() < std::time::Duration::from_secs(5),
        "{:?}",
        t.elapsed()
    );
    // Ten thousand headers: the host stops the map at its cap and the SDK plugin traps.
    assert_eq!(status("/flood").await, 500);
    // A million log lines: at most a thousand per call reach the gateway's log.
    let logged = status("/log").await;
    assert!(logged == 200 || logged == 500, "{logged}");
    let lines = served.proc.stderr().matches("flood ").count();
    assert!(lines <= 1000, "{lines} plugin log lines reached the log");

    let m2 = metrics(served.admin).await;
    let failures = metric(
        &m2,
        "rampart_wasm_failures_total{plugin=\"rampart_test_plugins\"}",
    );
    assert!(failures.is_some_and(|f| f >= 8.0), "{m2}");
    let r = get(served.addr, "/ok").await;
    assert_eq!(r.status, http::StatusCode::OK, "the gateway is still up");
}

//! A proxy-wasm plugin "via the store", all real processes: a route with a `wasm` filter is
//! applied to the config store with `rampart apply`, the control plane serves it over ADS,
//! and a `rampart proxy` that trusts the plugin's signing key runs the signed plugin; a new
//! plugin configuration applied to the store reaches it the same way.

mod support;

use std::process::Command;
use std::time::Duration;

use support::*;

fn rampart(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(bin()).args(args).output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The desired state: a listener on port 0 and every path through the plugin to `up`.
fn docs(module: &str, tenant: &str, upstream: std::net::SocketAddr) -> String {
    format!(
        "kind: Listener\nname: main\naddress: \"127.0.0.1:0\"\nroute_table: main\n---\n\
         kind: RouteTable\nname: main\nvirtual_hosts:\n  - name: all\n    domains: [\"*\"]\n    routes:\n      \
         - match: {{ path: {{ prefix: / }} }}\n        forward: {{ cluster: up }}\n        \
         filters:\n          - wasm: {{ module: \"{module}\", config: \"x-tenant={tenant}\" }}\n---\n\
         kind: Cluster\nname: up\nendpoints: [\"{upstream}\"]\n"
    )
}

fn apply(dir: &TempDir, store: &str, text: &str) {
    let file = dir.path("desired.yaml");
    std::fs::write(&file, text).unwrap();
    let (ok, out, err) = rampart(&["apply", "-f", file.to_str().unwrap(), "--endpoints", store]);
    assert!(ok, "apply: {out}{err}");
}

/// Whether `addr` forwards with the plugin's `x-tenant: want` within 15 s.
async fn tenant_is(addr: std::net::SocketAddr, want: &str) -> bool {
    eventually(Duration::from_secs(15), || async move {
        let req = request(http::Method::GET, addr, "/t", &[]);
        try_send(&h1(), req).await.is_ok_and(|r| {
            r.status == http::StatusCode::OK && r.json()["headers"]["x-tenant"] == want
        })
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signed_plugin_applied_to_the_store_runs_in_an_xds_fed_proxy() {
    let plugin = match rampart_test_support::wasm_guest("wasm32-wasip1", "rampart_test_plugins") {
        Ok(p) => p,
        Err(why) => {
            loud_skip(
                "a_signed_plugin_applied_to_the_store_runs_in_an_xds_fed_proxy",
                &why,
            );
            return;
        }
    };
    let dir = TempDir::new("wasm-store");
    let module = dir.path("tenant.wasm");
    std::fs::copy(&plugin, &module).unwrap();
    let m = module.to_str().unwrap().to_owned();
    let key = dir.path("key");
    let (ok, public, err) = rampart(&["wasm", "keygen", "--out", key.to_str().unwrap()]);
    assert!(ok, "{err}");
    let (ok, _, err) = rampart(&["wasm", "sign", &m, "--key", key.to_str().unwrap()]);
    assert!(ok, "{err}");

    let up = demo_upstream("up").await;
    let (_store, eps) = store_with(&dir, &docs(&m, "acme", up.addr)).await;

    let (_cp, ads) = spawn_control_plane(&eps).await;
    let key_arg = format!("--wasm-trusted-key={}", public.trim());
    let mut proxy = Proc::spawn(
        "proxy",
        &[
            "proxy",
            "--xds",
            &ads,
            "--node-id",
            "wasm-1",
            "--admin",
            "127.0.0.1:0",
            "--workers",
            "1",
            &key_arg,
        ],
    );
    let addr = bound(&mut proxy, "listener=main local=").await;
    assert!(tenant_is(addr, "acme").await, "{}", proxy.stderr());

    // The plugin's configuration changes in the store; the proxy follows.
    apply(&dir, &eps, &docs(&m, "beta", up.addr));
    assert!(tenant_is(addr, "beta").await, "{}", proxy.stderr());

    // A proxy that does not trust the key refuses the plugin (the update is NACKed) and
    // serves nothing it cannot check.
    let mut untrusting = Proc::spawn(
        "proxy (no keys)",
        &[
            "proxy",
            "--xds",
            &ads,
            "--node-id",
            "wasm-2",
            "--admin",
            "127.0.0.1:0",
            "--workers",
            "1",
        ],
    );
    let refused = eventually(Duration::from_secs(15), || {
        let err = untrusting.stderr();
        async move { err.contains("no wasm.trusted_keys") }
    })
    .await;
    assert!(refused, "{}", untrusting.stderr());
    assert!(
        untrusting.exited().is_none(),
        "a refused update must not stop the proxy"
    );
}

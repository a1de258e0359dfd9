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
        plugin_route("/trap-response", m, "fail=trap@response_headers", false),
        plugin_route("/trap-request-body", m, "fail=trap@request_body", false),
        plugin_route("/trap-log", m, "fail=trap@log", false),
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

    // A trap in a later callback: the response head fails closed, a request body is
    // refused, a trap in on_log comes after the answer went out (counted all the same).
    assert_eq!(status("/trap-response").await, 500);
    let r = send(&h1(), post(served.addr, "/trap-request-body", "x")).await;
    assert_eq!(r.status, http::StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(status("/trap-log").await, 200);

    let m2 = metrics(served.admin).await;
    let failures = metric(
        &m2,
        "rampart_wasm_failures_total{plugin=\"rampart_test_plugins\"}",
    );
    assert!(failures.is_some_and(|f| f >= 11.0), "{m2}");

    // Memory returns to its baseline: after a warm-up, many more failing requests (each
    // replacing its VM) leave the gateway's resident memory where it was.
    let rss = || rss_kib(served.proc.pid());
    let burst = |n: usize| async move {
        for _ in 0..n {
            for p in ["/trap", "/flood", "/trap-response", "/ok"] {
                get(served.addr, p).await;
            }
        }
    };
    burst(50).await;
    let baseline = rss();
    burst(400).await;
    let after = rss();
    assert!(
        after < baseline + 16 * 1024,
        "resident memory grew from {baseline} KiB to {after} KiB over 1600 failing requests"
    );
    let r = get(served.addr, "/ok").await;
    assert_eq!(r.status, http::StatusCode::OK, "the gateway is still up");
}

/// A POST of `body` to `path`.
fn post(
    addr: std::net::SocketAddr,
    path: &str,
    body: &'static str,
) -> http::Request<http_body_util::Full<bytes::Bytes>> {
    let mut r = request(http::Method::POST, addr, path, &[]);
    *r.body_mut() = http_body_util::Full::new(bytes::Bytes::from_static(body.as_bytes()));
    r
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_rewrites_bodies_calls_out_and_shares_state() {
    let plugin = match rampart_test_support::wasm_guest("wasm32-wasip1", "rampart_test_plugins") {
        Ok(p) => p,
        Err(why) => {
            loud_skip("a_plugin_rewrites_bodies_calls_out_and_shares_state", &why);
            return;
        }
    };
    let m = plugin.to_str().unwrap();
    let (up, auth) = (demo_upstream("up").await, demo_upstream("auth").await);
    let routes: String = [
        plugin_route("/echo", m, "body=upper", false),
        plugin_route("/authz", m, "auth=auth", false),
        plugin_route("/shared", m, "shared=on", false),
        plugin_route("/props", m, "props=on", false),
    ]
    .concat();
    let clusters = format!("{}{}", cluster("up", up.addr), cluster("auth", auth.addr));
    let served = serve(
        "wasm-features",
        &routes_and_clusters(&routes, &clusters),
        &[],
    )
    .await;
    let addr = served.addr;

    // The request body is buffered and upper-cased before the upstream echoes it; the
    // response body is buffered and gets a `!`.
    let r = send(&h1(), post(addr, "/echo", "hello body")).await;
    assert_eq!(r.status, http::StatusCode::OK);
    assert_eq!(r.text(), "HELLO BODY!");

    // An HTTP call to the `auth` cluster decides: the request waits for its answer.
    let with_token =
        |t: &'static str| request(http::Method::GET, addr, "/authz", &[("x-token", t)]);
    let r = send(&h1(), with_token("200")).await;
    assert_eq!(r.status, http::StatusCode::OK, "{}", r.text());
    assert_eq!(
        r.json()["headers"]["x-auth-status"],
        "200",
        "set from the answer"
    );
    let r = send(&h1(), with_token("403")).await;
    assert_eq!(r.status, http::StatusCode::FORBIDDEN);
    assert_eq!(r.text(), "denied by the auth service (403)\n");
    let r = send(&h1(), request(http::Method::GET, addr, "/authz", &[])).await;
    assert_eq!(r.status, http::StatusCode::UNAUTHORIZED);

    // Properties: what was routed, from where.
    let r = get(addr, "/props?q=1").await;
    let h = &r.json()["headers"];
    assert_eq!(h["x-prop-path"], "/props?q=1", "{h}");
    assert!(
        h["x-prop-source"]
            .as_str()
            .unwrap()
            .starts_with("127.0.0.1:"),
        "{h}"
    );
    assert_eq!(h["x-prop-plugin"], "rampart_test_plugins");
    assert_eq!(h["x-prop-id"], h["x-request-id"], "{h}");
    assert_eq!(r.header("x-prop-code"), Some("200"));

    // Shared data, ticks, and a queue drained on notice (across VMs: the host's tests).
    for _ in 0..6 {
        assert_eq!(get(addr, "/shared").await.status, http::StatusCode::OK);
    }
    let counted = eventually(std::time::Duration::from_secs(5), || async move {
        let r = get(addr, "/shared").await;
        let n = |h: &str| r.header(h).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
        n("x-count") >= 7 && n("x-ticks") >= 2 && n("x-queued") >= 6
    })
    .await;
    assert!(counted, "shared counters did not add up");
    let m2 = metrics(served.admin).await;
    assert!(
        m2.contains("rampart_wasm_callback_seconds_count{plugin=\"rampart_test_plugins\"}"),
        "{m2}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plugin_config_reloads_without_dropping_requests() {
    let plugin = match rampart_test_support::wasm_guest("wasm32-wasip1", "rampart_test_plugins") {
        Ok(p) => p,
        Err(why) => {
            loud_skip("plugin_config_reloads_without_dropping_requests", &why);
            return;
        }
    };
    let m = plugin.to_str().unwrap().to_owned();
    let up = demo_upstream("up").await;
    let body = |v: &str| {
        routes_and_clusters(
            &plugin_route("/t", &m, &format!("x-tenant={v}"), false),
            &cluster("up", up.addr),
        )
    };
    let served = serve("wasm-reload", &body("v0"), &["--watch-interval", "50ms"]).await;
    let addr = served.addr;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load: Vec<_> = (0..2)
        .map(|_| {
            let stop = stop.clone();
            tokio::spawn(async move {
                let (mut ok, mut failed) = (0u32, Vec::new());
                let client = h1();
                // Bounded: at most 20 000 requests or until told to stop.
                for _ in 0..20_000 {
                    if stop.load(std::sync::atomic::Ordering::Relaxed) {
                        break;
                    }
                    match try_send(&client, request(http::Method::GET, addr, "/t", &[])).await {
                        Ok(r) if r.status == http::StatusCode::OK => ok += 1,
                        Ok(r) => failed.push(format!("{} {}", r.status, r.text())),
                        Err(e) => failed.push(e),
                    }
                }
                (ok, failed)
            })
        })
        .collect();
    for v in ["v1", "v2", "v3"] {
        served.rewrite(&body(v));
        let seen = eventually(std::time::Duration::from_secs(10), || async move {
            get(addr, "/t").await.json()["headers"]["x-tenant"] == v
        })
        .await;
        assert!(seen, "{v} never took effect");
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for task in load {
        let (ok, failed) = task.await.unwrap();
        assert!(ok > 0);
        assert!(
            failed.is_empty(),
            "requests failed across reloads: {failed:?}"
        );
    }
}

/// A process's resident memory, from /proc.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/PID/status")
}

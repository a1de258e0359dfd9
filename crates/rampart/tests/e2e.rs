//! End-to-end tests: the built `rampart` binary as a real process, driven over real sockets
//! (HTTP/1.1 and h2c) and signals, with real `rampart demo-upstream` processes behind it.

mod support;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http::{Method, StatusCode, Version};
use support::*;

const ONE_ROUTE_TO_A: &str =
    "          - { name: to-a, match: { path: { prefix: / } }, forward: { cluster: a } }\n";

/// Everything to one cluster, access log off.
fn all_to(cluster_name: &str, addr: SocketAddr) -> String {
    format!(
        "access_log: {{ format: \"off\" }}\n{}",
        routes_and_clusters(
            &format!(
                "          - {{ name: to-{cluster_name}, match: {{ path: {{ prefix: / }} }}, \
                 forward: {{ cluster: {cluster_name} }} }}\n"
            ),
            &cluster(cluster_name, addr),
        )
    )
}

async fn config_dump(admin: SocketAddr) -> serde_json::Value {
    let r = get(admin, "/config_dump").await;
    assert_eq!(r.status, StatusCode::OK);
    r.json()
}

/// GETs `path` and returns which upstream answered (asserting a 200).
async fn served_by(client: &HttpClient, addr: SocketAddr, path: &str) -> String {
    let r = send(client, request(Method::GET, addr, path, &[])).await;
    assert_eq!(r.status, StatusCode::OK, "GET {path}: {}", r.text());
    r.header("x-upstream-name")
        .expect("x-upstream-name from the demo upstream")
        .to_owned()
}

const RELOAD_OK: &str = "rampart_config_reloads_total{result=\"success\"}";
const RELOAD_FAILED: &str = "rampart_config_reloads_total{result=\"failure\"}";
const LAST_RELOAD_OK: &str = "rampart_config_last_reload_success";
const VERSION: &str = "rampart_config_version";

/// acme's request on a kept-alive connection; returns after the whole 200 response.
async fn keep_alive_exchange(conn: &mut tokio::net::TcpStream) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let request = b"GET /api/orders HTTP/1.1\r\nhost: acme.localhost\r\nx-user: vera\r\n\r\n";
    let exchange = async {
        conn.write_all(request).await.unwrap();
        // One response: its headers, then a body of content-length bytes.
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            let n = conn.read(&mut buf).await.unwrap();
            assert!(
                n > 0,
                "the gateway closed: {}",
                String::from_utf8_lossy(&got)
            );
            got.extend_from_slice(&buf[..n]);
            let text = String::from_utf8_lossy(&got).to_string();
            if let Some((head, body)) = text.split_once("\r\n\r\n") {
                let len: usize = head
                    .lines()
                    .find_map(|l| {
                        let (k, v) = l.split_once(':')?;
                        k.eq_ignore_ascii_case("content-length")
                            .then(|| v.trim().parse().ok())?
                    })
                    .unwrap_or(0);
                if body.len() >= len {
                    assert!(head.starts_with("HTTP/1.1 200"), "{text}");
                    return;
                }
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(5), exchange)
        .await
        .expect("the gateway answers within 5 s");
}

/// `rampart flows top --by tenant`, another process with its own tracer, names the
/// gateway's connections by the labels `up` shared in bpffs: a kept-alive connection that
/// carried acme's requests and then closed while `top` ran shows up under acme.
async fn flows_top_by_tenant_from_another_process(gw: SocketAddr, labels_dir: &str) {
    assert!(
        std::path::Path::new(labels_dir).join("rf_labels").exists(),
        "up pinned no label maps in {labels_dir}"
    );
    let mut conn = tokio::net::TcpStream::connect(gw).await.unwrap();
    // The first request makes the gateway share the connection's labels.
    keep_alive_exchange(&mut conn).await;

    let mut top = Proc::spawn(
        "rampart flows top",
        &[
            "flows",
            "--labels-dir",
            labels_dir,
            "top",
            "--by",
            "tenant",
            "--no-clear",
            "--interval",
            "1500ms",
            "--iterations",
            "2",
        ],
    );
    let started = eventually(Duration::from_secs(10), || async {
        top.stderr().contains("flows: tracing")
    })
    .await;
    assert!(started, "flows top did not start: {}", top.stderr());
    // Traffic on the connection while `top` traces (its tracer adopts the flow), then close.
    keep_alive_exchange(&mut conn).await;
    drop(conn);
    let status = top.wait_exit(Duration::from_secs(15)).await;
    let out = top.stdout();
    assert!(
        status.success(),
        "flows top: {status:?}\n{out}\n{}",
        top.stderr()
    );
    let row = out
        .lines()
        .rev()
        .find(|l| l.starts_with("acme "))
        .unwrap_or_else(|| panic!("no acme row in:\n{out}\n{}", top.stderr()));
    let closed: u64 = row.split_whitespace().nth(2).unwrap().parse().unwrap();
    assert!(
        closed >= 1,
        "acme's closed connection not counted: {row}\n{out}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn up_serves_the_demo_on_a_fresh_machine() {
    let (gw, admin) = (local(8080), local(9901));
    assert_up_ports_free();
    let dir = TempDir::new("up");
    let (data, policy) = (dir.path("kv"), dir.path("tenants"));
    // This run's own bpffs directory for the shared flow labels (removed by `up` on exit).
    let labels_dir = format!("/sys/fs/bpf/rampart-e2e-{}", std::process::id());
    let mut up = spawn_up(&dir, &labels_dir, &[]).await;

    // The admin API's token was created beside the data, readable by its owner only, and a
    // change without it is refused.
    {
        use std::os::unix::fs::PermissionsExt;
        let token_file = dir.path("admin.token");
        let mode = std::fs::metadata(&token_file)
            .expect("rampart up creates the admin token")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let token = std::fs::read_to_string(&token_file).unwrap();
        let put = |auth: Option<String>| {
            let mut b = http::Request::put(format!("http://{admin}/policy/tenants/acme"))
                .header("content-type", "application/json");
            if let Some(a) = auth {
                b = b.header("authorization", a);
            }
            b.body(http_body_util::Full::new(bytes::Bytes::from_static(
                b"{\"modules\": {}}",
            )))
            .unwrap()
        };
        let r = send(&h1(), put(None)).await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{}", r.text());
        let r = send(&h1(), put(Some(format!("Bearer {}", token.trim())))).await;
        assert_eq!(
            r.status,
            StatusCode::BAD_REQUEST,
            "authorised; an empty bundle is refused: {}",
            r.text()
        );
    }

    // The embedded config store answers etcd's API on 127.0.0.1:2379.
    let kv = |args: &[&str]| {
        let out = std::process::Command::new(bin())
            .args(["kv", "--endpoints", "127.0.0.1:2379"])
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    assert_eq!(kv(&["put", "greeting", "hello"]).trim(), "OK");
    assert_eq!(kv(&["get", "greeting"]), "greeting\nhello\n");
    assert!(
        data.join("raft-log.redb").exists(),
        "the store keeps its data under --data-dir"
    );
    // The issue-12 repro: a voter that cannot answer would wedge every later write; etcd's
    // strict reconfiguration check refuses it, and the store keeps taking writes.
    let rogue = std::process::Command::new("etcdctl")
        .env("ETCDCTL_API", "3")
        .args([
            "--endpoints=127.0.0.1:2379",
            "--command-timeout=5s",
            "member",
            "add",
            "rogue",
            "--peer-urls=http://127.0.0.1:9",
        ])
        .output()
        .expect("etcdctl (Debian's etcd-client; scripts/test.sh installs it)");
    assert!(!rogue.status.success(), "member add rogue was accepted");
    assert!(
        String::from_utf8_lossy(&rogue.stderr).contains("unhealthy cluster"),
        "{}",
        String::from_utf8_lossy(&rogue.stderr)
    );
    assert_eq!(kv(&["put", "after-rogue", "still"]).trim(), "OK");

    // HTTP/1.1 through the catch-all route to the built-in demo upstream.
    let c1 = h1();
    let r = send(&c1, request(Method::GET, gw, "/hello?x=1", &[])).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(r.version, Version::HTTP_11);
    assert_eq!(r.header("x-upstream-name"), Some("demo"));
    assert_eq!(
        r.header("x-served-by"),
        Some("rampart"),
        "route response_headers"
    );
    assert_eq!(r.header("content-type"), Some("application/json"));
    let echo = r.json();
    assert_eq!(echo["server"], "demo");
    assert_eq!(echo["method"], "GET");
    assert_eq!(echo["path"], "/hello");
    assert_eq!(echo["query"], "x=1");
    let seen = &echo["headers"];
    assert_eq!(seen["x-forwarded-for"], "127.0.0.1");
    assert_eq!(seen["x-forwarded-proto"], "http");
    assert_eq!(seen["x-forwarded-host"], "127.0.0.1:8080");
    assert_eq!(seen["host"], "127.0.0.1:8080");
    let rid = seen["x-request-id"]
        .as_str()
        .expect("a generated x-request-id");
    assert_eq!(rid.len(), 36, "UUID-formatted request id: {rid}");

    // A direct response, served by the gateway itself.
    let r = send(&c1, request(Method::GET, gw, "/healthz", &[])).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.text(), "ok\n");
    assert_eq!(r.header("x-upstream-name"), None, "not forwarded");

    // h2c with prior knowledge on the same port.
    let c2 = h2c();
    let r = send(&c2, request(Method::GET, gw, "/over-h2", &[])).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(r.version, Version::HTTP_2);
    assert_eq!(r.json()["server"], "demo");
    assert_eq!(r.json()["path"], "/over-h2");

    // The demo's tenants: the Rego bundles written to --policy-dir decide per host.
    assert!(policy.join("acme/authz.rego").exists());
    let tenant = |method: Method, host: &'static str, user: &'static str, path: &'static str| {
        request(method, gw, path, &[("host", host), ("x-user", user)])
    };
    let r = send(
        &c1,
        tenant(Method::GET, "acme.localhost", "vera", "/api/orders"),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(r.json()["headers"]["x-roles"], "viewer");
    let r = send(
        &c1,
        tenant(Method::POST, "acme.localhost", "vera", "/api/orders"),
    )
    .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.text());
    let r = send(
        &c1,
        tenant(Method::GET, "globex.localhost", "vera", "/code/x"),
    )
    .await;
    assert_eq!(
        r.status,
        StatusCode::UNAUTHORIZED,
        "globex does not know acme's users"
    );

    // In-process eBPF flow tracing when this build has it and runs as root.
    if cfg!(feature = "flows") && rustix::process::geteuid().as_raw() == 0 {
        let seen = eventually(Duration::from_secs(5), || async {
            metrics(local(9435))
                .await
                .contains("rampart_flows_opened_total")
        })
        .await;
        assert!(seen, "flow metrics:\n{}", metrics(local(9435)).await);
        // The gateway names its connections' flows: a connection that carried acme's
        // request is counted, once closed, by the route, cluster and tenant it took.
        {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let mut s = tokio::net::TcpStream::connect(gw).await.unwrap();
            s.write_all(
                b"GET /api/orders HTTP/1.1\r\nhost: acme.localhost\r\nx-user: vera\r\nconnection: close\r\n\r\n",
            )
            .await
            .unwrap();
            let mut answer = Vec::new();
            tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut answer))
                .await
                .expect("the gateway answers and closes")
                .unwrap();
            assert!(
                answer.starts_with(b"HTTP/1.1 200"),
                "{}",
                String::from_utf8_lossy(&answer)
            );
        }
        let series =
            r#"rampart_flows_named_closed_total{route="tenant-api",cluster="demo",tenant="acme"}"#;
        let named = eventually(Duration::from_secs(5), || async {
            metrics(local(9435)).await.contains(series)
        })
        .await;
        assert!(
            named,
            "no {series} in the flow metrics:\n{}",
            metrics(local(9435)).await
        );
        flows_top_by_tenant_from_another_process(gw, &labels_dir).await;
    } else {
        loud_skip(
            "up_serves_the_demo_on_a_fresh_machine (its flow-metrics part)",
            &"in-process flow tracing needs root and the flows feature",
        );
    }

    let m = metrics(admin).await;
    assert!(m.contains("rampart_requests_total"), "metrics:\n{m}");
    assert_eq!(
        metric(
            &m,
            "rampart_requests_total{listener=\"public\",route=\"catch-all\",cluster=\"demo\",class=\"2xx\"}"
        ),
        Some(2.0),
        "two forwarded requests so far; metrics:\n{m}"
    );

    // The demo config logs text access lines to stdout.
    assert!(
        eventually(Duration::from_secs(5), || {
            let out = up.stdout();
            async move { out.contains("\"GET /hello?x=1 HTTP/1.1\" 200") }
        })
        .await,
        "no access log line for GET /hello; stdout:\n{}",
        up.stdout()
    );

    served_over_ads_from_the_store(gw).await;
    serves_a_deployed_function(gw, &dir.path("admin.token")).await;

    // SIGTERM with idle keep-alive connections (HTTP/1.1 and HTTP/2) still open.
    let t = Instant::now();
    up.signal("TERM");
    let status = up.wait_exit(Duration::from_secs(5)).await;
    assert!(status.success(), "exit status {status}");
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "idle connections held the drain"
    );
    drop((c1, c2));
}

/// `rampart ARGS` succeeds; its stdout.
fn rampart(args: &[&str]) -> String {
    let out = std::process::Command::new(bin())
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "rampart {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// `rampart fn deploy` with its defaults reaches `up`'s store, and the function answers on
/// :8080 at its route.
async fn serves_a_deployed_function(gw: SocketAddr, token_file: &std::path::Path) {
    let hello = match rampart_test_support::function_example("hello") {
        Ok(p) => p,
        Err(why) => {
            return loud_skip(
                "up_serves_the_demo_on_a_fresh_machine (its functions part)",
                &why,
            );
        }
    };
    let out = rampart(&[
        "fn",
        "deploy",
        "hello",
        hello.to_str().unwrap(),
        "--route",
        "/fn/hello",
        "--env",
        "GREETING_NAME=up",
        "--allow-unsigned",
    ]);
    assert!(out.contains("function hello version"), "{out}");
    let served = eventually(Duration::from_secs(10), || async {
        let r = send(&h1(), request(Method::GET, gw, "/fn/hello", &[])).await;
        r.status == StatusCode::OK && r.text() == "hello, up\n"
    })
    .await;
    assert!(
        served,
        "the deployed function did not answer on the gateway"
    );
    let list = rampart(&["fn", "list", "--token-file", token_file.to_str().unwrap()]);
    assert!(
        list.lines()
            .any(|l| l.starts_with("hello") && l.contains("warm")),
        "{list}"
    );
}

/// The demo reached the gateway the real way: imported into the store, served by the
/// embedded control plane over ADS (every type acknowledged), and a route applied to the
/// store is served.
async fn served_over_ads_from_the_store(gw: std::net::SocketAddr) {
    let status = send(&h1(), request(Method::GET, local(18001), "/status", &[])).await;
    assert_eq!(status.status, StatusCode::OK);
    let node = &status.json()["nodes"]["rampart-up"];
    for t in [
        "Listener",
        "RouteConfiguration",
        "Cluster",
        "ClusterLoadAssignment",
    ] {
        assert!(node[t]["acked"].is_string(), "{t} not acknowledged: {node}");
        assert_eq!(node[t]["acked"], node[t]["sent"], "{t}: {node}");
        assert!(node[t]["nacked"].is_null(), "{t}: {node}");
    }
    let mut table: serde_json::Value =
        serde_json::from_str(rampart(&["get", "routetable", "main"]).trim_start_matches("---\n"))
            .expect("`rampart get` prints JSON documents");
    let hosts = table["virtual_hosts"].as_array_mut().unwrap();
    let default = hosts.iter_mut().find(|h| h["name"] == "default").unwrap();
    default["routes"].as_array_mut().unwrap().insert(
        0,
        serde_json::json!({ "name": "applied", "match": { "path": { "exact": "/applied" } },
                            "direct_response": { "status": 200, "body": "applied\n" } }),
    );
    let dir = TempDir::new("up-apply");
    let file = dir.path("route.yaml");
    std::fs::write(&file, table.to_string()).unwrap();
    let out = rampart(&["apply", "-f", file.to_str().unwrap()]);
    assert_eq!(out.trim(), "RouteTable/main configured");
    let served = eventually(Duration::from_secs(5), || async {
        let r = send(&h1(), request(Method::GET, gw, "/applied", &[])).await;
        r.status == StatusCode::OK && r.text() == "applied\n"
    })
    .await;
    assert!(served, "the applied route was not served");
}

#[tokio::test]
async fn validate_reports_every_error_with_paths() {
    let dir = TempDir::new("validate");
    let run = |path: &std::path::Path| {
        let path = path.to_str().expect("utf-8 path").to_owned();
        async move {
            let mut p = Proc::spawn("rampart validate", &["validate", "--config", &path]);
            let status = p.wait_exit(Duration::from_secs(10)).await;
            (status, p.stdout(), p.stderr())
        }
    };

    // Several semantic errors at once: all are reported, each with its field path.
    let bad = dir.path("bad.yaml");
    std::fs::write(
        &bad,
        r#"
admin: { address: "127.0.0.1:99999" }
listeners:
  - name: main
    address: not-an-address
    route_table: main
route_tables:
  - name: main
    virtual_hosts:
      - name: all
        domains: ["*"]
        routes:
          - { match: { path: { prefix: / } }, forward: { cluster: api } }
          - { match: { path: { regex: "/(unclosed" } }, direct_response: { status: 200 } }
clusters:
  - { name: a, endpoints: ["127.0.0.1:1"] }
  - { name: a, endpoints: ["127.0.0.1:2"] }
"#,
    )
    .unwrap();
    let (status, stdout, stderr) = run(&bad).await;
    assert_eq!(status.code(), Some(1), "stderr:\n{stderr}");
    assert_eq!(stdout, "", "errors go to stderr");
    let expected = [
        "admin.address: \"127.0.0.1:99999\" is not an ip:port address",
        "listeners[0].address: \"not-an-address\" is not an ip:port address",
        "route_tables[0].virtual_hosts[0].routes[0].forward.cluster: no cluster named \"api\"",
        "route_tables[0].virtual_hosts[0].routes[1].match.path.regex: invalid regex \"/(unclosed\"",
        "clusters[1].name: duplicate cluster name \"a\"",
    ];
    assert!(
        stderr.starts_with(&format!("{}: 5 error(s)\n", bad.display())),
        "stderr:\n{stderr}"
    );
    for e in expected {
        assert!(
            stderr.lines().any(|l| l.trim_start().starts_with(e)),
            "missing `{e}` in stderr:\n{stderr}"
        );
    }
    assert_eq!(
        stderr.lines().count(),
        1 + expected.len(),
        "stderr:\n{stderr}"
    );

    // A shape error (unknown field) names where parsing stopped.
    let shape = dir.path("shape.yaml");
    std::fs::write(
        &shape,
        "clusters:\n  - name: a\n    endpoints: [\"127.0.0.1:1\"]\n    lb: round_robin\n",
    )
    .unwrap();
    let (status, _, stderr) = run(&shape).await;
    assert_eq!(status.code(), Some(1), "stderr:\n{stderr}");
    assert!(
        stderr.contains("clusters[0].lb: ") && stderr.contains("unknown field `lb`"),
        "stderr:\n{stderr}"
    );

    // A missing file is an error too.
    let (status, _, stderr) = run(&dir.path("missing.yaml")).await;
    assert_eq!(status.code(), Some(1), "stderr:\n{stderr}");

    // The shipped example is valid.
    let example =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/rampart.yaml");
    let (status, stdout, stderr) = run(&example).await;
    assert!(status.success(), "stderr:\n{stderr}");
    assert!(
        stdout.ends_with(": ok (1 listener(s), 1 route table(s), 2 cluster(s))\n"),
        "stdout:\n{stdout}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_reloads_on_file_change_under_load_with_zero_failures() {
    const CLIENTS: usize = 4;
    const MAX_PER_CLIENT: u64 = 5_000;
    const MAX_TRAFFIC: Duration = Duration::from_secs(6);

    let a = demo_upstream("a").await;
    let b = demo_upstream("b").await;
    let gw = serve(
        "reload-under-load",
        &all_to("a", a.addr),
        &["--watch-interval", "200ms"],
    )
    .await;

    #[derive(Default)]
    struct Tally {
        a: AtomicU64,
        b: AtomicU64,
        failures: Mutex<Vec<String>>,
    }
    let tally = Arc::new(Tally::default());
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let traffic: Vec<_> =
        (0..CLIENTS)
            .map(|t| {
                let (tally, stop, addr) = (tally.clone(), stop.clone(), gw.addr);
                tokio::spawn(async move {
                    // Keep-alive HTTP/1.1 on even tasks, one multiplexed h2c connection on odd.
                    let client = if t % 2 == 0 { h1() } else { h2c() };
                    let mut last = String::new();
                    for i in 0..MAX_PER_CLIENT {
                        if stop.load(Ordering::Relaxed) || started.elapsed() > MAX_TRAFFIC {
                            break;
                        }
                        let req = request(Method::GET, addr, &format!("/load/{t}/{i}"), &[]);
                        match try_send(&client, req).await {
                            Ok(r) if r.status == StatusCode::OK => {
                                last = r.header("x-upstream-name").unwrap_or("?").to_owned();
                                match last.as_str() {
                                    "a" => tally.a.fetch_add(1, Ordering::Relaxed),
                                    "b" => tally.b.fetch_add(1, Ordering::Relaxed),
                                    other => {
                                        tally.failures.lock().unwrap().push(format!(
                                            "request {t}/{i}: answered by {other:?}"
                                        ));
                                        0
                                    }
                                };
                            }
                            Ok(r) => tally.failures.lock().unwrap().push(format!(
                                "request {t}/{i}: {} {}",
                                r.status,
                                r.text()
                            )),
                            Err(e) => tally
                                .failures
                                .lock()
                                .unwrap()
                                .push(format!("request {t}/{i}: {e}")),
                        }
                    }
                    last
                })
            })
            .collect();

    let count = |which: fn(&Tally) -> &AtomicU64| which(&tally).load(Ordering::Relaxed);
    assert!(
        eventually(Duration::from_secs(3), || async { count(|t| &t.a) >= 200 }).await,
        "traffic to a never got going"
    );
    gw.rewrite(&all_to("b", b.addr));
    assert!(
        eventually(Duration::from_secs(3), || async { count(|t| &t.b) > 0 }).await,
        "the changed file was not applied; a={} b={}",
        count(|t| &t.a),
        count(|t| &t.b)
    );
    let b_then = count(|t| &t.b);
    assert!(
        eventually(Duration::from_secs(2), || async {
            count(|t| &t.b) >= b_then + 400
        })
        .await,
        "traffic stalled after the reload"
    );
    stop.store(true, Ordering::Relaxed);
    let mut last = Vec::new();
    for t in traffic {
        last.push(t.await.unwrap());
    }

    let failures = tally.failures.lock().unwrap().clone();
    let (sent_a, sent_b) = (count(|t| &t.a), count(|t| &t.b));
    eprintln!(
        "reload under load: {sent_a} from a, {sent_b} from b in {:?}",
        started.elapsed()
    );
    assert!(
        failures.is_empty(),
        "{} failed request(s) (a={sent_a}, b={sent_b}), first: {:#?}",
        failures.len(),
        &failures[..failures.len().min(10)]
    );
    assert!(sent_a > 0 && sent_b > 0, "a={sent_a} b={sent_b}");
    assert!(
        last.iter().all(|l| l == "b"),
        "every client ends on b: {last:?}"
    );

    let m = metrics(gw.admin).await;
    assert_eq!(metric(&m, VERSION), Some(2.0), "metrics:\n{m}");
    assert_eq!(metric(&m, RELOAD_OK), Some(1.0), "metrics:\n{m}");
    assert_eq!(metric(&m, RELOAD_FAILED).unwrap_or(0.0), 0.0);
    // The gateway counted exactly what the clients saw, on each side of the reload.
    let served = |route: &str, cluster: &str| {
        metric(
            &m,
            &format!(
                "rampart_requests_total{{listener=\"main\",route=\"{route}\",\
                 cluster=\"{cluster}\",class=\"2xx\"}}"
            ),
        )
    };
    assert_eq!(served("to-a", "a"), Some(sent_a as f64), "metrics:\n{m}");
    assert_eq!(served("to-b", "b"), Some(sent_b as f64), "metrics:\n{m}");
    // Nothing left in flight (polled: the gauge drops when the proxy drops the body).
    for c in ["a", "b"] {
        let series = format!("rampart_upstream_requests_active{{cluster=\"{c}\"}}");
        await_metric(gw.admin, &series, 0.0).await;
    }
    assert_eq!(metric(&m, LAST_RELOAD_OK), Some(1.0));
    let dump = config_dump(gw.admin).await;
    assert_eq!(dump["version"], 2);
    assert_eq!(
        dump["config"]["clusters"][0]["name"], "b",
        "config_dump shows the new config"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_config_is_rejected_and_old_keeps_serving() {
    let a = demo_upstream("a").await;
    let b = demo_upstream("b").await;
    let gw = serve(
        "invalid-reload",
        &all_to("a", a.addr),
        &["--watch-interval", "200ms"],
    )
    .await;
    let c = h1();
    assert_eq!(served_by(&c, gw.addr, "/before").await, "a");

    // 1. Not YAML.
    write_atomically(&gw.config, "listeners: [\n");
    await_metric(gw.admin, RELOAD_FAILED, 1.0).await;
    await_metric(gw.admin, LAST_RELOAD_OK, 0.0).await;
    for i in 0..5 {
        assert_eq!(
            served_by(&c, gw.addr, &format!("/after-bad-yaml/{i}")).await,
            "a"
        );
    }
    assert_eq!(
        served_by(&h1(), gw.addr, "/new-connection").await,
        "a",
        "new connections are served too"
    );
    let dump = config_dump(gw.admin).await;
    assert_eq!(dump["version"], 1);
    let err = dump["last_reload_error"]
        .as_str()
        .expect("last_reload_error is set");
    assert!(err.contains("listeners"), "last_reload_error: {err}");

    // 2. Valid YAML, invalid config: a route to a cluster that does not exist.
    gw.rewrite(&format!(
        "access_log: {{ format: \"off\" }}\n{}",
        routes_and_clusters(
            "          - { match: { path: { prefix: / } }, forward: { cluster: api } }\n",
            &cluster("a", a.addr)
        )
    ));
    await_metric(gw.admin, RELOAD_FAILED, 2.0).await;
    assert_eq!(served_by(&c, gw.addr, "/after-bad-cluster").await, "a");
    let dump = config_dump(gw.admin).await;
    assert_eq!(dump["version"], 1);
    let err = dump["last_reload_error"]
        .as_str()
        .expect("last_reload_error is set");
    assert!(
        err.contains(
            "route_tables[0].virtual_hosts[0].routes[0].forward.cluster: no cluster named \"api\""
        ),
        "last_reload_error: {err}"
    );
    let m = metrics(gw.admin).await;
    assert_eq!(metric(&m, VERSION), Some(1.0));
    assert_eq!(metric(&m, LAST_RELOAD_OK), Some(0.0));
    assert!(
        gw.proc
            .stderr()
            .contains("config rejected; still serving the previous version"),
        "the rejection is logged"
    );

    // 3. A valid change recovers.
    gw.rewrite(&all_to("b", b.addr));
    assert!(
        eventually(Duration::from_secs(5), || async {
            served_by(&c, gw.addr, "/after-fix").await == "b"
        })
        .await,
        "the fixed config was not applied"
    );
    let m = metrics(gw.admin).await;
    assert_eq!(metric(&m, VERSION), Some(2.0), "metrics:\n{m}");
    assert_eq!(metric(&m, RELOAD_OK), Some(1.0));
    assert_eq!(metric(&m, RELOAD_FAILED), Some(2.0));
    assert_eq!(metric(&m, LAST_RELOAD_OK), Some(1.0));
    let dump = config_dump(gw.admin).await;
    assert_eq!(dump["version"], 2);
    assert!(dump["last_reload_error"].is_null(), "{dump}");
}

/// With watching off (`--watch-interval 0s`) only SIGHUP can apply a change to the file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_the_config_file() {
    let a = demo_upstream("a").await;
    let b = demo_upstream("b").await;
    let mut gw = serve("sighup", &all_to("a", a.addr), &["--watch-interval", "0s"]).await;
    let c = h1();
    assert_eq!(served_by(&c, gw.addr, "/").await, "a");

    // An invalid file with SIGHUP: rejected, still serving a.
    write_atomically(&gw.config, "clusters: 7\n");
    gw.proc.signal("HUP");
    await_metric(gw.admin, RELOAD_FAILED, 1.0).await;
    assert_eq!(served_by(&c, gw.addr, "/after-bad").await, "a");

    // A valid changed file with SIGHUP: applied.
    gw.rewrite(&all_to("b", b.addr));
    gw.proc.signal("HUP");
    await_metric(gw.admin, RELOAD_OK, 1.0).await;
    assert_eq!(served_by(&c, gw.addr, "/after-hup").await, "b");
    let m = metrics(gw.admin).await;
    assert_eq!(metric(&m, VERSION), Some(2.0), "metrics:\n{m}");
    assert_eq!(metric(&m, LAST_RELOAD_OK), Some(1.0));
    assert!(config_dump(gw.admin).await["last_reload_error"].is_null());
    assert!(
        gw.proc
            .stderr()
            .contains("SIGHUP: reading the config file again"),
        "stderr:\n{}",
        gw.proc.stderr()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_in_flight_requests() {
    const DRAIN: Duration = Duration::from_secs(5);
    let a = demo_upstream("a").await;
    let mut gw = serve(
        "drain",
        &format!("drain_timeout: 5s\n{}", all_to("a", a.addr)),
        &[],
    )
    .await;
    let addr = gw.addr;

    // An idle keep-alive connection must not hold up the drain.
    let idle = h1();
    assert_eq!(served_by(&idle, addr, "/warm").await, "a");

    let slow =
        tokio::spawn(
            async move { send(&h1(), request(Method::GET, addr, "/delay/1500", &[])).await },
        );
    await_metric(
        gw.admin,
        "rampart_upstream_requests_active{cluster=\"a\"}",
        1.0,
    )
    .await;
    let term = Instant::now();
    gw.proc.signal("TERM");

    // Draining: not ready, and the listener is closed to new connections.
    assert!(
        eventually(Duration::from_secs(2), || async {
            matches!(
                try_send(&h1(), request(Method::GET, gw.admin, "/ready", &[])).await,
                Ok(r) if r.status == StatusCode::SERVICE_UNAVAILABLE
            )
        })
        .await,
        "/ready did not turn 503 while draining"
    );
    assert!(
        eventually(Duration::from_secs(2), || async {
            matches!(
                tokio::time::timeout(Duration::from_secs(1), tokio::net::TcpStream::connect(addr)).await,
                Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionRefused
            )
        })
        .await,
        "new connections were still accepted after SIGTERM"
    );
    assert!(
        !slow.is_finished(),
        "the in-flight request already finished: the listener closed too late to tell draining apart"
    );
    assert!(
        gw.proc.exited().is_none(),
        "exited before the in-flight request finished"
    );

    let r = slow.await.unwrap();
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(r.text(), "waited 1500 ms\n");
    assert_eq!(r.header("x-upstream-name"), Some("a"));

    let status = gw.proc.wait_exit(DRAIN).await;
    assert!(status.success(), "exit status {status}");
    assert!(
        term.elapsed() < DRAIN,
        "took {:?}: waited for the drain deadline instead of the last request",
        term.elapsed()
    );
    assert!(
        gw.proc.stderr().contains("clean=true"),
        "drained cleanly; stderr:\n{}",
        gw.proc.stderr()
    );
    drop(idle);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_log_json_lines() {
    let a = demo_upstream("a").await;
    // The listener trusts request ids from loopback (a proxy in front, in production).
    let body = format!(
        "    http: {{ trusted_proxies: [127.0.0.1] }}\naccess_log: {{ format: json }}\n{}",
        routes_and_clusters(
            &format!(
                "          - {{ name: health, match: {{ path: {{ exact: /healthz }} }}, \
                 direct_response: {{ status: 200, body: \"ok\" }} }}\n{ONE_ROUTE_TO_A}"
            ),
            &cluster("a", a.addr),
        )
    );
    let mut gw = serve("access-log", &body, &[]).await;
    let c = h1();
    let r = send(
        &c,
        request(
            Method::GET,
            gw.addr,
            "/delay/50?x=1",
            &[("x-request-id", "e2e-rid-1"), ("user-agent", "e2e-test")],
        ),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    let r = send(&c, request(Method::POST, gw.addr, "/status/404", &[])).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    let r = send(&c, request(Method::GET, gw.addr, "/healthz", &[])).await;
    assert_eq!(r.status, StatusCode::OK);

    gw.proc.signal("TERM");
    let status = gw.proc.wait_exit(Duration::from_secs(5)).await;
    assert!(status.success(), "exit status {status}");

    let stdout = gw.proc.stdout();
    let lines: Vec<serde_json::Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    assert_eq!(lines.len(), 3, "one line per request; stdout:\n{stdout}");

    let authority = gw.addr.to_string();
    let upstream = a.addr.to_string();
    for l in &lines {
        assert_eq!(l["protocol"], "HTTP/1.1", "{l}");
        assert_eq!(l["authority"], authority.as_str(), "{l}");
        assert!(
            l["client"].as_str().unwrap().starts_with("127.0.0.1:"),
            "{l}"
        );
        let time = l["time"].as_str().unwrap();
        assert!(time.len() == 24 && time.ends_with('Z'), "{l}");
        let ms = l["duration_ms"].as_f64().expect("duration_ms is a number");
        assert!((0.0..5_000.0).contains(&ms), "{l}");
    }

    let l = &lines[0];
    assert_eq!(l["method"], "GET");
    assert_eq!(l["path"], "/delay/50?x=1");
    assert_eq!(l["status"], 200);
    assert_eq!(l["route"], "to-a");
    assert_eq!(l["cluster"], "a");
    assert_eq!(l["upstream"], upstream.as_str());
    assert_eq!(
        l["request_id"], "e2e-rid-1",
        "a trusted proxy's request id is kept"
    );
    assert_eq!(l["user_agent"], "e2e-test");
    assert!(l["duration_ms"].as_f64().unwrap() >= 50.0, "{l}");

    let l = &lines[1];
    assert_eq!(l["method"], "POST");
    assert_eq!(l["path"], "/status/404");
    assert_eq!(l["status"], 404);
    assert_eq!(l["route"], "to-a");
    assert_eq!(l["cluster"], "a");
    let rid = l["request_id"].as_str().unwrap();
    assert_eq!(rid.len(), 36, "a generated request id: {l}");

    let l = &lines[2];
    assert_eq!(l["method"], "GET");
    assert_eq!(l["path"], "/healthz");
    assert_eq!(l["status"], 200);
    assert_eq!(l["route"], "health");
    assert!(
        l["cluster"].is_null(),
        "a direct response has no cluster: {l}"
    );
    assert!(l["upstream"].is_null(), "{l}");
    assert_ne!(l["request_id"], lines[1]["request_id"]);

    // Operational logs stay on stderr.
    assert!(gw.proc.stderr().contains("listening"));
}

/// One edit noticed by both SIGHUP and the file watcher is applied once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edit_seen_by_sighup_and_watcher_applies_once() {
    let a = demo_upstream("a").await;
    let b = demo_upstream("b").await;
    let mut gw = serve("once", &all_to("a", a.addr), &["--watch-interval", "100ms"]).await;
    gw.rewrite(&all_to("b", b.addr));
    gw.proc.signal("HUP");
    await_metric(gw.admin, RELOAD_OK, 1.0).await;
    // The watcher looks at the file three more times after that (each a chance to apply the
    // same bytes again, wrongly).
    let checks = "rampart_config_source_checks_total{source=\"file\"}";
    let seen = metric(&metrics(gw.admin).await, checks).unwrap_or(0.0);
    await_metric_at_least(gw.admin, checks, seen + 3.0).await;
    let m = metrics(gw.admin).await;
    assert_eq!(metric(&m, VERSION), Some(2.0), "metrics:\n{m}");
    assert_eq!(metric(&m, RELOAD_OK), Some(1.0), "metrics:\n{m}");
    assert_eq!(served_by(&h1(), gw.addr, "/").await, "b");
}

/// While draining, a second SIGTERM/SIGINT stops at once instead of waiting out the drain.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_signal_stops_without_waiting_for_the_drain() {
    let a = demo_upstream("a").await;
    let mut gw = serve(
        "second-signal",
        &format!("drain_timeout: 30s\n{}", all_to("a", a.addr)),
        &[],
    )
    .await;
    let addr = gw.addr;
    let slow = tokio::spawn(async move {
        try_send(&h1(), request(Method::GET, addr, "/delay/20000", &[])).await
    });
    await_metric(
        gw.admin,
        "rampart_upstream_requests_active{cluster=\"a\"}",
        1.0,
    )
    .await;
    gw.proc.signal("TERM");
    assert!(
        eventually(Duration::from_secs(5), || async {
            gw.proc.stderr().contains("shutting down")
        })
        .await,
        "drain did not start; stderr:\n{}",
        gw.proc.stderr()
    );
    let t0 = Instant::now();
    gw.proc.signal("INT");
    let status = gw.proc.wait_exit(Duration::from_secs(5)).await;
    assert!(t0.elapsed() < Duration::from_secs(5));
    assert!(status.success(), "exit status {status}");
    assert!(
        gw.proc.stderr().contains("second signal"),
        "stderr:\n{}",
        gw.proc.stderr()
    );
    slow.abort();
}

/// `rampart policy test` and `eval` behave like `opa test` and `opa eval`.
#[test]
fn policy_cli_tests_and_evaluates_like_opa() {
    let examples = concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples/policy/tenants");
    let run = |args: &[&str]| {
        let out = std::process::Command::new(bin())
            .args(args)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, out, err) = run(&["policy", "test", examples]);
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.contains("PASS: 10/10"), "{out}");

    let dir = TempDir::new("policy-cli");
    let bundle = dir.path("b");
    std::fs::create_dir_all(&bundle).unwrap();
    std::fs::write(
        bundle.join("p.rego"),
        "package p\nallow if input.user == \"alice\"\n\
         test_alice if allow with input as {\"user\": \"alice\"}\n\
         test_bob if allow with input as {\"user\": \"bob\"}\n",
    )
    .unwrap();
    let (code, out, _) = run(&["policy", "test", bundle.to_str().unwrap()]);
    assert_eq!(code, Some(2), "a failing test exits 2: {out}");
    assert!(out.contains("data.p.test_bob: FAIL"), "{out}");
    assert!(
        out.contains("PASS: 1/2") && out.contains("FAIL: 1/2"),
        "{out}"
    );

    let input = dir.path("input.json");
    std::fs::write(
        &input,
        r#"{"method": "GET", "path": "/api/x", "headers": {"x-user": "vera"}}"#,
    )
    .unwrap();
    let acme = format!("{examples}/acme");
    let (code, out, err) = run(&[
        "policy",
        "eval",
        "-d",
        &acme,
        "-i",
        input.to_str().unwrap(),
        "data.authz.decision",
    ]);
    assert_eq!(code, Some(0), "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let value = &v["result"][0]["expressions"][0]["value"];
    assert_eq!(value["allowed"], true, "{out}");
    assert_eq!(value["headers"]["x-user"], "vera", "{out}");

    std::fs::write(bundle.join("p.rego"), "package p\nallow if {").unwrap();
    let (code, _, err) = run(&[
        "policy",
        "eval",
        "-d",
        bundle.to_str().unwrap(),
        "data.p.allow",
    ]);
    assert_eq!(code, Some(1));
    assert!(err.contains("p.rego"), "the error names the file: {err}");
}

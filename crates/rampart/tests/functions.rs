//! Functions (issue: WASI-HTTP components on the gateway), all real processes: a config
//! store, a control plane, and an xDS-fed `rampart proxy` that follows the store's
//! functions; components from `examples/functions` built for wasm32-wasip2; deployed with
//! `rampart fn deploy` as a user would.

mod support;

use std::net::SocketAddr;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use support::*;

fn rampart(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(bin()).args(args).output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The example component `name`, or a loud skip.
fn example(test: &str, name: &str) -> Option<String> {
    match rampart_test_support::function_example(name) {
        Ok(p) => Some(p.to_string_lossy().into_owned()),
        Err(why) => {
            loud_skip(test, &why);
            None
        }
    }
}

/// A store, a control plane on it, and a proxy serving the store's routes and functions.
struct Stack {
    dir: TempDir,
    eps: String,
    _up: Upstream,
    _store: Proc,
    _cp: Proc,
    proxy: Proc,
    addr: SocketAddr,
    admin: SocketAddr,
}

impl Stack {
    async fn start(test: &str, proxy_args: &[&str]) -> Self {
        let dir = TempDir::new(test);
        let up = demo_upstream("backend").await;
        let (store, eps) = store_with(
            &dir,
            &format!(
                "kind: Listener\nname: main\naddress: \"127.0.0.1:0\"\nroute_table: main\n---\n\
                 kind: RouteTable\nname: main\nvirtual_hosts:\n  - name: all\n    domains: [\"*\"]\n    routes:\n      \
                 - match: {{ path: {{ prefix: / }} }}\n        forward: {{ cluster: backend }}\n---\n\
                 kind: Cluster\nname: backend\nendpoints: [\"{}\"]\n",
                up.addr
            ),
        )
        .await;
        let (cp, ads) = spawn_control_plane(&eps).await;
        let cache = dir.path("fn-cache");
        let mut args = vec![
            "proxy",
            "--xds",
            &ads,
            "--node-id",
            test,
            "--admin",
            "127.0.0.1:0",
            "--workers",
            "1",
            "--functions-store",
            &eps,
            "--functions-cache",
            cache.to_str().unwrap(),
        ];
        args.extend_from_slice(proxy_args);
        let mut proxy = Proc::spawn("proxy", &args);
        let addr = bound(&mut proxy, "listener=main local=").await;
        let admin = bound(&mut proxy, "admin endpoint listening local=").await;
        Self {
            dir,
            eps,
            _up: up,
            _store: store,
            _cp: cp,
            proxy,
            addr,
            admin,
        }
    }

    /// `rampart fn deploy NAME FILE ARGS...`; waits until the proxy runs that version.
    async fn deploy(&self, name: &str, file: &str, args: &[&str]) {
        let mut all = vec!["fn", "deploy", name, file, "--endpoints", &self.eps];
        all.extend_from_slice(args);
        let (ok, out, err) = rampart(&all);
        assert!(ok, "deploy {name}: {out}{err}");
        let version = out
            .split("version ")
            .nth(1)
            .and_then(|s| s.split(' ').next())
            .expect("the deploy names the version")
            .to_owned();
        let admin = self.admin;
        let running = eventually(Duration::from_secs(20), || {
            let version = version.clone();
            async move {
                let r = get(admin, &format!("/functions/{name}")).await;
                r.status == http::StatusCode::OK && r.json()["version"] == version.as_str()
            }
        })
        .await;
        assert!(running, "{name} never ran; proxy:\n{}", self.proxy.stderr());
        if args.contains(&"--route") {
            let route = format!("\"fn-{name}\"");
            let routed = eventually(Duration::from_secs(20), || {
                let route = route.clone();
                async move { get(admin, "/config_dump").await.text().contains(&route) }
            })
            .await;
            assert!(routed, "the route to {name} never arrived");
        }
    }

    async fn call(
        &self,
        method: http::Method,
        path: &str,
        headers: &[(&str, &str)],
        body: &str,
    ) -> Reply {
        send(&h1(), self.req(method, path, headers, body)).await
    }

    fn req(
        &self,
        method: http::Method,
        path: &str,
        headers: &[(&str, &str)],
        body: &str,
    ) -> http::Request<Full<Bytes>> {
        let mut b = http::Request::builder()
            .method(method)
            .uri(format!("http://{}{path}", self.addr));
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(Full::new(Bytes::from(body.to_owned()))).unwrap()
    }
}

/// `wasm` with a custom section of `n` bytes appended (valid in components as in modules).
fn with_custom_section(wasm: &[u8], n: usize) -> Vec<u8> {
    fn leb(mut v: usize, out: &mut Vec<u8>) {
        loop {
            let byte = (v & 0x7f) as u8;
            v >>= 7;
            if v == 0 {
                out.push(byte);
                return;
            }
            out.push(byte | 0x80);
        }
    }
    let name = b"padding";
    let mut payload = Vec::new();
    leb(name.len(), &mut payload);
    payload.extend_from_slice(name);
    payload.resize(payload.len() + n, 0xab);
    let mut out = wasm.to_vec();
    out.push(0);
    leb(payload.len(), &mut out);
    out.extend_from_slice(&payload);
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deployed_components_answer_through_the_gateway_with_their_logs() {
    const T: &str = "deployed_components_answer_through_the_gateway_with_their_logs";
    let (Some(hello), Some(echo), Some(json), Some(fetch)) = (
        example(T, "hello"),
        example(T, "echo"),
        example(T, "json"),
        example(T, "fetch"),
    ) else {
        return;
    };
    let s = Stack::start("fn-answer", &[]).await;
    s.deploy(
        "hello",
        &hello,
        &[
            "--route",
            "/hello",
            "--allow-unsigned",
            "--env",
            "GREETING_NAME=rampart",
        ],
    )
    .await;
    s.deploy("echo", &echo, &["--route", "/echo", "--allow-unsigned"])
        .await;
    s.deploy("json", &json, &["--route", "/json", "--allow-unsigned"])
        .await;
    s.deploy(
        "fetch",
        &fetch,
        &[
            "--route",
            "/fetch",
            "--allow-unsigned",
            "--cluster",
            "backend",
            "--env",
            "UPSTREAM_PATH=/status/201",
        ],
    )
    .await;
    // A component larger than a store chunk (padded with a custom section, which a runtime
    // skips): stored as several chunks, reassembled and checked by every gateway.
    let padded = s.dir.path("padded.wasm");
    std::fs::write(
        &padded,
        with_custom_section(&std::fs::read(&hello).unwrap(), 1_300_000),
    )
    .unwrap();
    s.deploy(
        "padded",
        padded.to_str().unwrap(),
        &["--route", "/padded", "--allow-unsigned"],
    )
    .await;
    let r = s.call(http::Method::GET, "/padded", &[], "").await;
    assert_eq!(
        (r.status, r.text()),
        (http::StatusCode::OK, "hello, world\n".into())
    );
    // Not granted the cluster it asks for.
    s.deploy(
        "fetch-denied",
        &fetch,
        &["--route", "/denied", "--allow-unsigned"],
    )
    .await;

    let r = s.call(http::Method::GET, "/hello", &[], "").await;
    assert_eq!(
        (r.status, r.text()),
        (http::StatusCode::OK, "hello, rampart\n".into())
    );
    // Routes that do not name a function still reach the cluster.
    let r = s.call(http::Method::GET, "/status/204", &[], "").await;
    assert_eq!(r.status, http::StatusCode::NO_CONTENT);

    let r = s
        .call(
            http::Method::POST,
            "/echo/a?b=c",
            &[("x-thing", "one"), ("content-type", "text/x-test")],
            "the body",
        )
        .await;
    assert_eq!(r.status, http::StatusCode::OK);
    assert_eq!(r.text(), "the body");
    assert_eq!(r.header("x-echo-x-thing"), Some("one"));
    assert_eq!(r.header("x-echo-path"), Some("/echo/a?b=c"));
    assert_eq!(r.header("content-type"), Some("text/x-test"));
    let request_id = r
        .header("x-echo-x-request-id")
        .expect("the gateway's request id")
        .to_owned();

    let r = s
        .call(
            http::Method::POST,
            "/json",
            &[],
            r#"{"b":"x","a":[1,2.5,{"c":"d"}]}"#,
        )
        .await;
    assert_eq!(r.status, http::StatusCode::OK);
    assert_eq!(
        r.json(),
        serde_json::json!({"keys":["a","b"],"count":2,"upper":{"a":[1,2.5,{"c":"D"}],"b":"X"},"sum":3.5})
    );
    let r = s.call(http::Method::POST, "/json", &[], "[not json").await;
    assert_eq!(r.status, http::StatusCode::BAD_REQUEST);

    let r = s.call(http::Method::GET, "/fetch", &[], "").await;
    assert_eq!(
        (r.status, r.text()),
        (http::StatusCode::OK, "upstream 201: 201 Created\n".into())
    );
    let r = s.call(http::Method::GET, "/denied", &[], "").await;
    assert_eq!(r.status, http::StatusCode::BAD_GATEWAY);
    assert!(r.text().contains("HttpRequestDenied"), "{}", r.text());

    // stdout and stderr, by request id, through the CLI.
    let admin = s.admin.to_string();
    let none = s.dir.path("no-token").to_string_lossy().into_owned();
    let (ok, out, err) = rampart(&[
        "fn",
        "logs",
        "echo",
        "--request-id",
        &request_id,
        "--admin",
        &admin,
        "--token-file",
        &none,
    ]);
    assert!(ok, "{err}");
    assert!(
        out.contains(&request_id) && out.contains("echo: POST /echo/a?b=c"),
        "{out}"
    );
    let (ok, out, err) = rampart(&[
        "fn",
        "logs",
        "hello",
        "--admin",
        &admin,
        "--token-file",
        &none,
    ]);
    assert!(
        ok && out.contains("stderr") && out.contains("hello: stderr works"),
        "{out}{err}"
    );

    let (ok, out, err) = rampart(&[
        "fn",
        "list",
        "--admin",
        &admin,
        "--token-file",
        &none,
        "--endpoints",
        &s.eps,
    ]);
    assert!(ok, "{err}");
    let padded_len = std::fs::metadata(&padded).unwrap().len().to_string();
    assert!(
        out.lines()
            .any(|l| l.starts_with("padded") && l.contains(&padded_len)),
        "{out}"
    );
    for f in ["hello", "echo", "json", "fetch", "fetch-denied", "padded"] {
        assert!(
            out.lines().any(|l| l.starts_with(f) && l.contains("warm")),
            "{f} in {out}"
        );
    }
    let m = metrics(s.admin).await;
    assert_eq!(
        metric(
            &m,
            r#"rampart_fn_invocations_total{function="hello",outcome="ok"}"#
        ),
        Some(1.0),
        "{m}"
    );
    assert!(
        metric(
            &m,
            r#"rampart_fn_starts_total{function="echo",kind="warm"}"#
        )
        .is_some()
    );

    // Deleting a function removes its route too: the path reaches the cluster again.
    let (ok, out, err) = rampart(&["fn", "delete", "hello", "--endpoints", &s.eps]);
    assert!(ok, "{out}{err}");
    let back = eventually(Duration::from_secs(15), || async {
        let unrouted = !get(s.admin, "/config_dump")
            .await
            .text()
            .contains("\"fn-hello\"");
        let gone = get(s.admin, "/functions/hello").await.status == http::StatusCode::NOT_FOUND;
        let r = s.call(http::Method::GET, "/hello", &[], "").await;
        unrouted
            && gone
            && r.header("x-rampart-local").is_none()
            && !r.text().contains("hello, rampart")
    })
    .await;
    assert!(back, "the route to hello stayed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn misbehaving_functions_fail_only_their_own_requests() {
    const T: &str = "misbehaving_functions_fail_only_their_own_requests";
    let (Some(hello), Some(bad)) = (example(T, "hello"), example(T, "misbehave")) else {
        return;
    };
    let s = Stack::start("fn-misbehave", &[]).await;
    s.deploy("hello", &hello, &["--route", "/hello", "--allow-unsigned"])
        .await;
    s.deploy(
        "bad",
        &bad,
        &[
            "--route",
            "bad.test/",
            "--allow-unsigned",
            "--timeout",
            "1s",
            "--memory",
            "16MiB",
            "--max-response",
            "1MiB",
        ],
    )
    .await;

    // Healthy traffic runs beside the failures, on the same (single) worker.
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let addr = s.addr;
    let load = {
        let (stop, ok, failed) = (stop.clone(), ok.clone(), failed.clone());
        tokio::spawn(async move {
            let client = h1();
            for _ in 0..2000 {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let req = request(http::Method::GET, addr, "/hello", &[]);
                match try_send(&client, req).await {
                    Ok(r) if r.status == http::StatusCode::OK => ok.fetch_add(1, Ordering::Relaxed),
                    _ => failed.fetch_add(1, Ordering::Relaxed),
                };
            }
        })
    };
    for (path, want) in [
        ("/trap", http::StatusCode::INTERNAL_SERVER_ERROR),
        ("/spin", http::StatusCode::INTERNAL_SERVER_ERROR),
        ("/grow", http::StatusCode::INTERNAL_SERVER_ERROR),
        ("/ok", http::StatusCode::OK),
    ] {
        let started = std::time::Instant::now();
        let r = s
            .call(http::Method::GET, path, &[("host", "bad.test")], "")
            .await;
        assert_eq!(r.status, want, "{path}: {}", r.text());
        assert!(
            started.elapsed() < Duration::from_secs(4),
            "{path} took {:?}",
            started.elapsed()
        );
    }
    // A response past its size limit is cut off, not delivered whole.
    let big = try_send(
        &h1(),
        s.req(http::Method::GET, "/big", &[("host", "bad.test")], ""),
    )
    .await;
    assert!(
        big.as_ref().map_or(true, |r| r.body.len() <= 1 << 20),
        "{:?}",
        big.map(|r| r.body.len())
    );
    stop.store(true, Ordering::Relaxed);
    load.await.unwrap();
    assert!(ok.load(Ordering::Relaxed) > 0);
    assert_eq!(
        failed.load(Ordering::Relaxed),
        0,
        "healthy requests failed beside the bad ones"
    );

    // The outcomes are told apart, and logged with their reason.
    let m = metrics(s.admin).await;
    for (outcome, at_least) in [("trap", 2.0), ("timeout", 1.0), ("ok", 1.0)] {
        let v = metric(
            &m,
            &format!(r#"rampart_fn_invocations_total{{function="bad",outcome="{outcome}"}}"#),
        );
        assert!(v.is_some_and(|v| v >= at_least), "{outcome}: {v:?}");
    }
    let logs = get(s.admin, "/functions/bad/logs").await.text();
    assert!(
        logs.contains("deadline passed") && logs.contains("wasm trap"),
        "{logs}"
    );

    // Past its concurrency and queue, a function answers 503 at once.
    s.deploy(
        "bad",
        &bad,
        &[
            "--route",
            "bad.test/",
            "--allow-unsigned",
            "--timeout",
            "1s",
            "--max-concurrency",
            "1",
            "--max-queue",
            "0",
        ],
    )
    .await;
    let spin = tokio::spawn({
        let req = s.req(http::Method::GET, "/spin", &[("host", "bad.test")], "");
        async move { send(&h1(), req).await.status }
    });
    // Once the spin holds the only slot, the next request is refused at once.
    let held = eventually(Duration::from_secs(2), || async {
        get(s.admin, "/functions/bad").await.json()["inflight"] == 1
    })
    .await;
    assert!(held, "the spinning request never ran");
    let r = s
        .call(http::Method::GET, "/ok", &[("host", "bad.test")], "")
        .await;
    let busy = r.status == http::StatusCode::SERVICE_UNAVAILABLE
        && r.header("x-rampart-overloaded") == Some("function");
    assert!(busy, "no 503 while the only slot was taken");
    assert_eq!(spin.await.unwrap(), http::StatusCode::INTERNAL_SERVER_ERROR);
    let r = s
        .call(http::Method::GET, "/ok", &[("host", "bad.test")], "")
        .await;
    assert_eq!(r.status, http::StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redeploy_swaps_versions_with_no_failed_request() {
    const T: &str = "a_redeploy_swaps_versions_with_no_failed_request";
    let (Some(hello), Some(bad)) = (example(T, "hello"), example(T, "misbehave")) else {
        return;
    };
    let s = Stack::start("fn-redeploy", &[]).await;
    s.deploy(
        "greet",
        &hello,
        &[
            "--route",
            "/greet",
            "--allow-unsigned",
            "--env",
            "GREETING_NAME=v1",
        ],
    )
    .await;
    let stop = Arc::new(AtomicBool::new(false));
    let bodies = Arc::new(std::sync::Mutex::new(std::collections::BTreeMap::<
        String,
        usize,
    >::new()));
    let failures = Arc::new(std::sync::Mutex::new(Vec::new()));
    let mut loops = Vec::new();
    for _ in 0..2 {
        let (stop, bodies, failures) = (stop.clone(), bodies.clone(), failures.clone());
        let addr = s.addr;
        loops.push(tokio::spawn(async move {
            let client = h1();
            for _ in 0..5000 {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                match try_send(&client, request(http::Method::GET, addr, "/greet", &[])).await {
                    Ok(r) if r.status == http::StatusCode::OK => {
                        *bodies.lock().unwrap().entry(r.text()).or_default() += 1;
                    }
                    Ok(r) => failures
                        .lock()
                        .unwrap()
                        .push(format!("{} {}", r.status, r.text())),
                    Err(e) => failures.lock().unwrap().push(e),
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    s.deploy(
        "greet",
        &hello,
        &[
            "--route",
            "/greet",
            "--allow-unsigned",
            "--env",
            "GREETING_NAME=v2",
        ],
    )
    .await;
    // Another component altogether under the same name.
    s.deploy("greet", &bad, &["--route", "/greet", "--allow-unsigned"])
        .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    for l in loops {
        l.await.unwrap();
    }
    let failures = failures.lock().unwrap();
    assert!(
        failures.is_empty(),
        "{} failed: {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
    let bodies = bodies.lock().unwrap();
    for want in ["hello, v1\n", "hello, v2\n", "ok\n"] {
        assert!(
            bodies.get(want).is_some_and(|n| *n > 0),
            "no {want:?} in {bodies:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_functions_scale_to_zero_and_start_cold_from_the_cache() {
    const T: &str = "idle_functions_scale_to_zero_and_start_cold_from_the_cache";
    let Some(hello) = example(T, "hello") else {
        return;
    };
    let s = Stack::start("fn-idle", &["--fn-idle-timeout", "300ms"]).await;
    s.deploy("hello", &hello, &["--route", "/hello", "--allow-unsigned"])
        .await;
    let r = s.call(http::Method::GET, "/hello", &[], "").await;
    assert_eq!(r.status, http::StatusCode::OK);
    let idle = eventually(Duration::from_secs(5), || async {
        get(s.admin, "/functions/hello").await.json()["state"] == "idle"
    })
    .await;
    assert!(idle, "hello stayed in memory");
    for _ in 0..3 {
        let r = s.call(http::Method::GET, "/hello", &[], "").await;
        assert_eq!(
            (r.status, r.text()),
            (http::StatusCode::OK, "hello, world\n".into())
        );
    }
    let status = get(s.admin, "/functions/hello").await.json();
    assert_eq!(status["cold_starts"], 1, "{status}");
    assert_eq!(status["warm_starts"], 3, "{status}");
    // The compiled component is what the cold start read.
    let compiled = std::fs::read_dir(s.dir.path("fn-cache").join("compiled"))
        .unwrap()
        .count();
    assert!(compiled >= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signatures_are_checked_like_plugins() {
    const T: &str = "signatures_are_checked_like_plugins";
    let Some(hello) = example(T, "hello") else {
        return;
    };
    let dir = TempDir::new("fn-sign");
    let component = dir.path("hello.wasm");
    std::fs::copy(&hello, &component).unwrap();
    let c = component.to_str().unwrap().to_owned();
    let (key, other) = (dir.path("key"), dir.path("other"));
    let (ok, public, err) = rampart(&["wasm", "keygen", "--out", key.to_str().unwrap()]);
    assert!(ok, "{err}");
    assert!(rampart(&["wasm", "keygen", "--out", other.to_str().unwrap()]).0);
    let trust = format!("--wasm-trusted-key={}", public.trim());
    let s = Stack::start("fn-sign", &[&trust]).await;

    // Unsigned and not allowed: refused before anything is written.
    let (ok, _, err) = rampart(&["fn", "deploy", "hello", &c, "--endpoints", &s.eps]);
    assert!(!ok && err.contains("no signature"), "{err}");
    // Signed by a trusted key: served.
    assert!(rampart(&["wasm", "sign", &c, "--key", key.to_str().unwrap()]).0);
    s.deploy("hello", &c, &["--route", "/hello"]).await;
    assert_eq!(
        s.call(http::Method::GET, "/hello", &[], "").await.status,
        http::StatusCode::OK
    );
    // Signed by a key the gateway does not trust: refused there, and said so.
    assert!(rampart(&["wasm", "sign", &c, "--key", other.to_str().unwrap()]).0);
    let (ok, out, err) = rampart(&[
        "fn",
        "deploy",
        "rogue",
        &c,
        "--route",
        "/rogue",
        "--endpoints",
        &s.eps,
    ]);
    assert!(ok, "{out}{err}");
    let rejected = eventually(Duration::from_secs(15), || async {
        let l = get(s.admin, "/functions").await.json();
        l["functions"].as_array().is_some_and(|fs| {
            fs.iter().any(|f| {
                f["name"] == "rogue"
                    && f["state"] == "rejected"
                    && f["rejected"]
                        .as_str()
                        .is_some_and(|w| w.contains("signature"))
            })
        })
    })
    .await;
    assert!(rejected, "{}", get(s.admin, "/functions").await.text());
    // The route reaches the proxy through the control plane, after the gateway's function
    // follower has read (and refused) the spec: until then the catch-all answers.
    let refused = eventually(Duration::from_secs(15), || async {
        s.call(http::Method::GET, "/rogue", &[], "").await.status == http::StatusCode::NOT_FOUND
    })
    .await;
    assert!(refused, "the rogue function's route never answered 404");
    // A core module is not a component: the CLI says what to build instead.
    let module = dir.path("core.wasm");
    std::fs::write(&module, b"\0asm\x01\0\0\0").unwrap();
    let (ok, _, err) = rampart(&[
        "fn",
        "deploy",
        "core",
        module.to_str().unwrap(),
        "--allow-unsigned",
        "--endpoints",
        &s.eps,
    ]);
    assert!(!ok && err.contains("wasm32-wasip2"), "{err}");
}

/// `wasmtime serve` (scripts/install-wasmtime-cli.sh; `RAMPART_WASMTIME` names it).
fn wasmtime_cli() -> Result<String, String> {
    let path = std::env::var("RAMPART_WASMTIME").unwrap_or_else(|_| {
        let home = std::env::var("CARGO_HOME")
            .unwrap_or_else(|_| format!("{}/.cargo", std::env::var("HOME").unwrap_or_default()));
        format!("{home}/bin/wasmtime")
    });
    if std::path::Path::new(&path).is_file() {
        Ok(path)
    } else {
        Err(format!(
            "no wasmtime at {path}: run `bash scripts/install-wasmtime-cli.sh` (scripts/test.sh does)"
        ))
    }
}

/// `wasmtime serve` running `component` with `env`, once it answers.
async fn wasmtime_serve(cli: &str, component: &str, env: &[&str]) -> (Proc, SocketAddr) {
    let addr = local(free_port());
    let a = addr.to_string();
    let mut args = vec!["serve", "--addr", &a, "-Scli"];
    for e in env {
        args.extend(["--env", e]);
    }
    args.push(component);
    let mut p = Proc::spawn_program("wasmtime serve", cli, &args);
    let up = eventually(STARTUP, || async {
        tokio::net::TcpStream::connect(addr).await.is_ok()
    })
    .await;
    assert!(up, "wasmtime serve did not start: {}", p.stderr());
    assert!(p.exited().is_none());
    (p, addr)
}

/// What must match between the two hosts: status, body, content type, and what the
/// function echoed of the request (minus the headers a gateway adds on the way:
/// x-request-id, x-forwarded-*).
fn answer(r: &Reply) -> (u16, String, Vec<(String, String)>) {
    let mut h: Vec<(String, String)> = r
        .headers
        .iter()
        .filter(|(k, _)| {
            let k = k.as_str();
            k == "content-type"
                || (k.starts_with("x-echo-")
                    && !k.starts_with("x-echo-x-forwarded-")
                    && k != "x-echo-x-request-id")
        })
        .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").to_owned()))
        .collect();
    h.sort();
    (r.status.as_u16(), r.text(), h)
}

/// Which server, method, path, headers, body.
type Case<'a> = (
    &'a str,
    http::Method,
    &'a str,
    &'a [(&'a str, &'a str)],
    &'a str,
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_components_answer_alike_on_rampart_and_wasmtime_serve() {
    const T: &str = "the_same_components_answer_alike_on_rampart_and_wasmtime_serve";
    let (Some(hello), Some(echo), Some(json), Some(fetch)) = (
        example(T, "hello"),
        example(T, "echo"),
        example(T, "json"),
        example(T, "fetch"),
    ) else {
        return;
    };
    let cli = match wasmtime_cli() {
        Ok(c) => c,
        Err(why) => return loud_skip(T, &why),
    };
    let s = Stack::start("fn-parity", &[]).await;
    let greeting = "GREETING_NAME=parity";
    let status = "UPSTREAM_PATH=/status/201";
    s.deploy(
        "hello",
        &hello,
        &["--route", "/hello", "--allow-unsigned", "--env", greeting],
    )
    .await;
    s.deploy("echo", &echo, &["--route", "/echo", "--allow-unsigned"])
        .await;
    s.deploy("json", &json, &["--route", "/json", "--allow-unsigned"])
        .await;
    s.deploy(
        "fetch",
        &fetch,
        &[
            "--route",
            "/fetch",
            "--allow-unsigned",
            "--cluster",
            "backend",
            "--env",
            status,
        ],
    )
    .await;
    // wasmtime serve reaches the same upstream by address (it has no clusters).
    let upstream = format!("UPSTREAM={}", s._up.addr);
    let servers = [
        ("/hello", wasmtime_serve(&cli, &hello, &[greeting]).await),
        ("/echo", wasmtime_serve(&cli, &echo, &[]).await),
        ("/json", wasmtime_serve(&cli, &json, &[]).await),
        (
            "/fetch",
            wasmtime_serve(&cli, &fetch, &[&upstream, status]).await,
        ),
    ];
    let cases: [Case<'_>; 8] = [
        ("/hello", http::Method::GET, "/hello", &[], ""),
        ("/hello", http::Method::DELETE, "/hello/x?y=z", &[], ""),
        (
            "/echo",
            http::Method::POST,
            "/echo/a?b=c",
            &[("x-thing", "one"), ("content-type", "text/x-test")],
            "the body",
        ),
        (
            "/echo",
            http::Method::PUT,
            "/echo",
            &[("x-multi", "a"), ("accept", "text/plain")],
            &"x".repeat(100_000),
        ),
        (
            "/json",
            http::Method::POST,
            "/json",
            &[("content-type", "application/json")],
            r#"{"z":[true,null,"q",{"k":-1.5}],"a":"b"}"#,
        ),
        ("/json", http::Method::POST, "/json", &[], "[1,2]"),
        ("/json", http::Method::POST, "/json", &[], "{broken"),
        ("/fetch", http::Method::GET, "/fetch", &[], ""),
    ];
    for (function, method, path, headers, body) in cases {
        let (_, theirs) = &servers.iter().find(|(f, _)| *f == function).unwrap().1;
        let mut req = http::Request::builder()
            .method(method.clone())
            .uri(format!("http://{theirs}{path}"));
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let reference = send(
            &h1(),
            req.body(Full::new(Bytes::from(body.to_owned()))).unwrap(),
        )
        .await;
        let ours = s.call(method.clone(), path, headers, body).await;
        assert_eq!(answer(&ours), answer(&reference), "{method} {path}");
    }
}

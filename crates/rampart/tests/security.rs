//! Regression tests for the attacks in docs/SECURITY.md, each against a real `rampart serve`
//! process in front of a real `rampart demo-upstream` process, with the demo's policies
//! (acme: RBAC, vera is a viewer of `/api/`). Requests are written byte for byte on raw
//! sockets where a client library would tidy them up.

mod support;

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A gateway shaped like `rampart up`'s demo, on free ports, plus its upstream.
struct Stack {
    gw: SocketAddr,
    admin: SocketAddr,
    token: String,
    proc: Proc,
    _up: Upstream,
    _dir: TempDir,
}

/// Starts the stack; `limits` and `admin` are YAML flow-mapping bodies added to the
/// listener's limits and the admin section.
async fn stack(test: &str, limits: &str, admin_extra: &str) -> Stack {
    let up = demo_upstream("demo").await;
    let dir = TempDir::new(test);
    let tenants = dir.path("tenants");
    copy_dir(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/policy/tenants"),
        &tenants,
    );
    let token = "s3cret-admin-token-for-tests-0123456789".to_owned();
    let token_file = dir.path("admin.token");
    std::fs::write(&token_file, format!("{token}\n")).unwrap();
    // A port nobody listens on: the `down` cluster.
    let closed = free_port();
    let config = dir.path("rampart.yaml");
    let text = |gw: SocketAddr, admin: SocketAddr| {
        format!(
            r#"
workers: 1
admin: {{ address: "{admin}", token_file: "{token_file}" {admin_extra} }}
access_log: {{ format: text }}
policy: {{ bundles_dir: "{tenants}", eval_timeout: 500ms }}
listeners:
  - name: main
    address: "{gw}"
    route_table: main
    limits: {{ max_header_bytes: 131072 {limits} }}
    http: {{ trusted_headers: [x-roles] }}
route_tables:
  - name: main
    virtual_hosts:
      - name: api
        domains: ["api.example.com"]
        routes:
          - name: api-v2
            match: {{ path: {{ prefix: /v1/ }} }}
            forward: {{ cluster: demo, prefix_rewrite: /v2/ }}
      - name: tenants
        domains: ["acme.localhost", "globex.localhost"]
        routes:
          - name: tenant-api
            match: {{ path: {{ prefix: / }} }}
            forward: {{ cluster: demo }}
            filters:
              - authz: {{ tenant_from: host }}
      - name: default
        domains: ["*"]
        routes:
          - name: old-docs
            match: {{ path: {{ prefix: /docs/ }} }}
            redirect: {{ prefix_rewrite: /manual/, status: 302 }}
          - name: down
            match: {{ path: {{ prefix: /down/ }} }}
            forward: {{ cluster: down }}
          - name: limited
            match: {{ path: {{ prefix: /limited }} }}
            direct_response: {{ status: 200, body: "ok" }}
            filters:
              - rate_limit: {{ rate: 1, per: 60s, key: "header:x-api-key" }}
          - name: catch-all
            match: {{ path: {{ prefix: / }} }}
            forward: {{ cluster: demo }}
clusters:
  - name: demo
    endpoints: ["{up}"]
    outlier_detection: {{ consecutive_gateway_failure: 1, base_ejection_time: 60s, max_ejection_percent: 100 }}
  - name: down
    endpoints: ["127.0.0.1:{closed}"]
"#,
            token_file = token_file.display(),
            tenants = tenants.display(),
            up = up.addr,
        )
    };
    let (proc, gw, admin) = spawn_serve(test, &config, text, &[]).await;
    Stack {
        gw,
        admin,
        token,
        proc,
        _up: up,
        _dir: dir,
    }
}

/// A response read off a raw socket.
#[derive(Debug)]
struct Raw {
    status: u16,
    head: String,
    body: Vec<u8>,
}

impl Raw {
    fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().skip(1).find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }

    fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "not JSON ({e}): {}\n{}",
                self.head,
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// Writes `request` as is on a new connection and reads one response (until the server
/// closes, or the framing says the body is complete).
async fn raw(addr: SocketAddr, request: &[u8]) -> Raw {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(request).await.unwrap();
    read_response(&mut s).await
}

async fn read_response(s: &mut tokio::net::TcpStream) -> Raw {
    let mut buf = Vec::new();
    let deadline = Instant::now() + REQUEST_TIMEOUT;
    loop {
        if let Some(r) = parse(&buf) {
            return r;
        }
        let mut chunk = [0u8; 16384];
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, s.read(&mut chunk)).await {
            Ok(Ok(0)) => {
                return parse(&buf).unwrap_or_else(|| {
                    panic!("incomplete response: {}", String::from_utf8_lossy(&buf))
                });
            }
            Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
            Ok(Err(e)) => panic!("read: {e}"),
            Err(_) => panic!("no response in time: {}", String::from_utf8_lossy(&buf)),
        }
    }
}

/// A complete HTTP/1.1 response in `buf`, if there is one.
fn parse(buf: &[u8]) -> Option<Raw> {
    let end = buf.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = String::from_utf8_lossy(&buf[..end]).into_owned();
    let status = head.split_whitespace().nth(1)?.parse().ok()?;
    let mut r = Raw {
        status,
        head,
        body: Vec::new(),
    };
    let rest = &buf[end + 4..];
    if let Some(n) = r
        .header("content-length")
        .and_then(|v| v.parse::<usize>().ok())
    {
        if rest.len() < n {
            return None;
        }
        r.body = rest[..n].to_vec();
        return Some(r);
    }
    if r.header("transfer-encoding")
        .is_some_and(|v| v.contains("chunked"))
    {
        let mut at = 0;
        loop {
            let line_end = rest[at..].windows(2).position(|w| w == b"\r\n")? + at;
            let size =
                usize::from_str_radix(std::str::from_utf8(&rest[at..line_end]).ok()?.trim(), 16)
                    .ok()?;
            at = line_end + 2;
            if size == 0 {
                return Some(r);
            }
            if rest.len() < at + size + 2 {
                return None;
            }
            r.body.extend_from_slice(&rest[at..at + size]);
            at += size + 2;
        }
    }
    if matches!(r.status, 204 | 304) || (100..200).contains(&r.status) {
        return Some(r);
    }
    None
}

fn get(path: &str, host: &str, extra: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nhost: {host}\r\n{extra}connection: close\r\n\r\n").into_bytes()
}

/// Every traversal and escaped-slash string from proxies' past advisories
/// (crates/rampart-router/tests/traversal-corpus.txt), sent as vera, a viewer of `/api/`:
/// refused with 400, or decided by the policy on the one normalised path the upstream then
/// receives. (On the old gateway `/api/../admin/users` answered 200.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traversal_corpus_gets_one_path_for_policy_and_upstream() {
    let s = stack("traversal", "", "").await;
    let corpus = include_str!("../../rampart-router/tests/traversal-corpus.txt");
    let mut checked = 0;
    for line in corpus
        .lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
    {
        let (path, want) = line.split_once('\t').unwrap();
        let r = raw(s.gw, &get(path, "acme.localhost", "x-user: vera\r\n")).await;
        match want {
            "reject" => assert_eq!(r.status, 400, "{path:?} must be refused: {r:?}"),
            normal if normal.starts_with("/api/") => {
                assert_eq!(r.status, 200, "{path:?}: {}", r.text());
                assert_eq!(r.json()["path"], normal, "{path:?}: upstream path");
                assert_eq!(r.json()["headers"]["x-roles"], "viewer");
            }
            _ => assert_eq!(r.status, 403, "{path:?} ({want}) is outside /api/: {r:?}"),
        }
        checked += 1;
    }
    assert!(checked > 40);
    // The issue's repro, spelled out.
    let r = raw(
        s.gw,
        &get("/api/../admin/users", "acme.localhost", "x-user: vera\r\n"),
    )
    .await;
    assert_eq!(r.status, 403);
}

/// `/v1/ -> /v2/`: a rewritten path is normalised again and never leaves its prefix.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prefix_rewrite_cannot_be_escaped() {
    let s = stack("rewrite", "", "").await;
    for path in [
        "/v1/../../admin",
        "/v1/%2e%2e/%2e%2e/admin",
        "/v1/..%2f..%2fadmin",
    ] {
        let r = raw(s.gw, &get(path, "api.example.com", "")).await;
        assert_eq!(r.status, 400, "{path}: {r:?}");
    }
    let r = raw(s.gw, &get("/v1/x/../y/%7ez?q=%2e", "api.example.com", "")).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["path"], "/v2/y/~z");
    assert_eq!(r.json()["query"], "q=%2e", "the query is not touched");
}

/// One authority decides the virtual host, the tenant and the upstream's Host; identity
/// headers the policy sets cannot be forged or stripped by the client.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_authority_and_trusted_headers() {
    let s = stack("authority", "", "").await;
    // Absolute-form target: its authority replaces Host (RFC 9112 §3.2.2). The request goes
    // to the catch-all route, and the upstream sees that same host and no forged role.
    let r = raw(
        s.gw,
        b"POST http://x/api/orders HTTP/1.1\r\nhost: acme.localhost\r\nx-user: vera\r\n\
          x-roles: admin\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let echo = r.json();
    assert_eq!(echo["headers"]["host"], "x");
    assert!(echo["headers"].get("x-roles").is_none(), "{echo}");
    // Trailing dot, case and default port all name acme: its policy decides (vera may not POST).
    for host in ["acme.localhost.", "ACME.LocalHost", "acme.localhost:80"] {
        let r = raw(
            s.gw,
            format!(
                "POST /api/orders HTTP/1.1\r\nhost: {host}\r\nx-user: vera\r\nx-roles: admin\r\n\
                 content-length: 0\r\nconnection: close\r\n\r\n"
            )
            .as_bytes(),
        )
        .await;
        assert_eq!(r.status, 403, "{host}: {r:?}");
    }
    // Invalid authorities.
    for host in [
        "acme.localhost..",
        "user@acme.localhost",
        "acme.localhost:99999",
        "a b",
    ] {
        let r = raw(s.gw, &get("/api/orders", host, "x-user: vera\r\n")).await;
        assert_eq!(r.status, 400, "{host}: {r:?}");
    }
    let r = raw(
        s.gw,
        b"GET / HTTP/1.1\r\nhost: a\r\nhost: b\r\nconnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(r.status, 400, "two Host headers: {r:?}");
    // A client cannot strip what the policy adds by naming it in Connection.
    let r = raw(
        s.gw,
        &get(
            "/api/orders",
            "acme.localhost",
            "x-user: vera\r\nconnection: x-roles, x-user\r\n",
        ),
    )
    .await;
    assert_eq!(
        r.status, 403,
        "x-user named hop-by-hop is gone before the policy: {r:?}"
    );
    let r = raw(
        s.gw,
        &get(
            "/api/orders",
            "acme.localhost",
            "x-user: vera\r\nconnection: x-roles\r\n",
        ),
    )
    .await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.json()["headers"]["x-roles"], "viewer");

    // HTTP/2: a host header that disagrees with :authority is refused (RFC 9113 §8.3.1).
    let tcp = tokio::net::TcpStream::connect(s.gw).await.unwrap();
    let (mut h2, conn) = h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(conn);
    let ask = |authority: &str, host: &str| {
        http::Request::get(format!("http://{authority}/api/orders"))
            .header("host", host)
            .header("x-user", "vera")
            .body(())
            .unwrap()
    };
    let (resp, _) = h2
        .send_request(ask("globex.localhost", "acme.localhost"), true)
        .unwrap();
    assert_eq!(resp.await.unwrap().status(), 400);
    let (resp, _) = h2
        .send_request(ask("acme.localhost", "ACME.localhost."), true)
        .unwrap();
    assert_eq!(
        resp.await.unwrap().status(),
        200,
        "agreeing after normalisation"
    );
}

/// A malformed chunked body is the client's fault: 400, the healthy endpoint is not ejected,
/// and the error is counted against the downstream. A trickled body is cut at its deadline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_errors_are_blamed_on_the_client_and_slow_bodies_cut() {
    let s = stack(
        "blame",
        ", request_body_timeout: 1s, min_request_body_rate: 100",
        "",
    )
    .await;
    for _ in 0..3 {
        let r = raw(
            s.gw,
            b"POST /count HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n\
              5\r\nhello\r\nZZZ\r\nworld\r\n0\r\n\r\n",
        )
        .await;
        assert_eq!(r.status, 400, "{r:?}");
    }
    let r = raw(s.gw, &get("/", "x", "")).await;
    assert_eq!(r.status, 200, "the endpoint is still in service: {r:?}");
    let clusters = reqwest_json(s.admin, "/clusters").await;
    let demo = clusters["clusters"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "demo")
        .unwrap()
        .clone();
    assert_eq!(demo["endpoints"][0]["ejections"], 0, "{demo}");
    assert_eq!(demo["endpoints"][0]["failures"], 0, "{demo}");
    let m = metrics(s.admin).await;
    assert!(
        metric(&m, "rampart_request_errors_total{blame=\"downstream\"}").unwrap_or(0.0) >= 3.0,
        "{m}"
    );
    assert_eq!(
        metric(&m, "rampart_request_errors_total{blame=\"upstream\"}"),
        None
    );

    // 1 byte every 100 ms for 10,000 announced bytes: past 1 s + 1 s per 100 bytes received,
    // the body is cut off (408) and the connection closed, long before the client is done.
    let c = tokio::net::TcpStream::connect(s.gw).await.unwrap();
    let (mut rd, mut wr) = c.into_split();
    wr.write_all(b"POST /count HTTP/1.1\r\nhost: x\r\ncontent-length: 10000\r\n\r\n")
        .await
        .unwrap();
    let t0 = Instant::now();
    tokio::spawn(async move {
        for _ in 0..100 {
            if wr.write_all(b"a").await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    let mut got = Vec::new();
    let cut = tokio::time::timeout(Duration::from_secs(6), async {
        let mut buf = [0u8; 4096];
        // Until the server closes (or resets) the connection.
        while let Ok(n) = rd.read(&mut buf).await {
            if n == 0 {
                break;
            }
            got.extend_from_slice(&buf[..n]);
        }
    })
    .await;
    assert!(cut.is_ok(), "the trickled body was not cut off");
    assert!(t0.elapsed() < Duration::from_secs(5), "{:?}", t0.elapsed());
    if let Some(r) = parse(&got) {
        assert_eq!(r.status, 408, "{r:?}");
    }
}

async fn reqwest_json(admin: SocketAddr, path: &str) -> serde_json::Value {
    let r = raw(admin, &get(path, "localhost", "")).await;
    assert_eq!(r.status, 200, "{r:?}");
    r.json()
}

/// HTTP/2 connections close after `idle_timeout` although the protocol has PINGs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_http2_connections_are_closed() {
    let s = stack("h2idle", ", idle_timeout: 1s", "").await;
    let tcp = tokio::net::TcpStream::connect(s.gw).await.unwrap();
    let (mut h2, conn) = h2::client::handshake(tcp).await.unwrap();
    let closed = tokio::spawn(conn);
    let (resp, _) = h2
        .send_request(
            http::Request::get(format!("http://{}/", s.gw))
                .body(())
                .unwrap(),
            true,
        )
        .unwrap();
    assert_eq!(resp.await.unwrap().status(), 200);
    let t0 = Instant::now();
    let ended = tokio::time::timeout(Duration::from_secs(8), closed).await;
    assert!(ended.is_ok(), "the idle HTTP/2 connection was not closed");
    assert!(t0.elapsed() >= Duration::from_millis(900));
}

/// Responses reveal no upstream address, request ids come only from trusted proxies, the
/// access log cannot be forged, redirects do not reflect the client's Host.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn responses_and_logs_cannot_be_turned_against_us() {
    let s = stack("leaks", "", "").await;
    let r = raw(s.gw, &get("/down/x", "x", "")).await;
    assert_eq!(r.status, 502);
    assert_eq!(r.text(), "upstream connect error\n");
    assert!(!r.head.contains("127.0.0.1"), "{}", r.head);

    let r = raw(
        s.gw,
        &get(
            "/",
            "x",
            "x-request-id: forged\r\nuser-agent: a\" route=admin x=\"\r\n",
        ),
    )
    .await;
    let id = r.json()["headers"]["x-request-id"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_ne!(id, "forged");
    assert_eq!(id.len(), 36);
    assert!(
        eventually(Duration::from_secs(5), || async {
            s.proc.stdout().contains(&format!("rid={id}"))
        })
        .await,
        "access log line: {}",
        s.proc.stdout()
    );
    let line = s
        .proc
        .stdout()
        .lines()
        .find(|l| l.contains(&id))
        .unwrap()
        .to_owned();
    assert!(
        line.ends_with(r#"ua="a\"\x20route=admin\x20x=\"""#),
        "{line}"
    );
    assert_eq!(line.matches(" route=").count(), 1, "{line}");

    let r = raw(s.gw, &get("/docs/intro", "evil.example", "")).await;
    assert_eq!(r.status, 302);
    assert_eq!(r.header("location"), Some("/manual/intro"));
}

/// Mutating admin requests need the bearer token and an allowed Host; the admin port cuts
/// slow request heads and caps its connections.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_api_needs_a_token_and_a_local_host() {
    let s = stack("admin", "", ", header_read_timeout: 1s, max_connections: 2").await;
    let bundle = r#"{"modules": {"p.rego": "package authz\ndecision := {\"allowed\": true}\n"}}"#;
    let put = |host: &str, auth: &str| {
        format!(
            "PUT /policy/tenants/acme HTTP/1.1\r\nhost: {host}\r\n{auth}content-type: application/json\r\n\
             content-length: {}\r\nconnection: close\r\n\r\n{bundle}",
            bundle.len()
        )
        .into_bytes()
    };
    let r = raw(s.admin, &put("127.0.0.1", "")).await;
    assert_eq!(r.status, 401, "{r:?}");
    let r = raw(s.admin, &put("localhost", "authorization: Bearer nope\r\n")).await;
    assert_eq!(r.status, 401, "{r:?}");
    let r = raw(s.admin, &get("/policy/tenants", "evil.example:9901", "")).await;
    assert_eq!(r.status, 403, "DNS rebinding: {r:?}");
    let auth = format!("authorization: Bearer {}\r\n", s.token);
    let r = raw(s.admin, &put("evil.example", &auth)).await;
    assert_eq!(r.status, 403, "{r:?}");
    // acme is still the RBAC policy: vera may not POST.
    let post = b"POST /api/orders HTTP/1.1\r\nhost: acme.localhost\r\nx-user: vera\r\n\
                 content-length: 0\r\nconnection: close\r\n\r\n";
    assert_eq!(raw(s.gw, post).await.status, 403);
    let r = raw(s.admin, &put("localhost", &auth)).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(raw(s.gw, post).await.status, 200, "the new bundle allows");

    // The CLI sends the token from RAMPART_ADMIN_TOKEN (or the token file).
    let dir = TempDir::new("admin-cli");
    let bundle_dir = dir.path("deny");
    std::fs::create_dir_all(&bundle_dir).unwrap();
    std::fs::write(
        bundle_dir.join("p.rego"),
        "package authz\ndecision := {\"allowed\": false, \"http_status\": 451}\n",
    )
    .unwrap();
    let push = |token: Option<&str>| {
        let mut c = std::process::Command::new(bin());
        c.args(["policy", "push", "acme"])
            .arg(&bundle_dir)
            .args(["--admin", &s.admin.to_string()])
            .arg("--token-file")
            .arg(dir.path("missing.token"));
        match token {
            Some(t) => c.env("RAMPART_ADMIN_TOKEN", t),
            None => c.env_remove("RAMPART_ADMIN_TOKEN"),
        };
        c.output().unwrap()
    };
    let out = push(None);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("admin token"));
    assert!(!push(Some("wrong-token")).status.success());
    let out = push(Some(&s.token));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(raw(s.gw, post).await.status, 451);

    // A head that never ends is cut after header_read_timeout.
    let mut slow = tokio::net::TcpStream::connect(s.admin).await.unwrap();
    slow.write_all(b"GET /metrics HTTP/1.1\r\nhost: localhost\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 1024];
    let t0 = Instant::now();
    let n = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match slow.read(&mut buf).await {
                Ok(0) | Err(_) => return 0,
                Ok(n) if buf[..n].starts_with(b"HTTP/1.1 408") => return n,
                Ok(_) => {}
            }
        }
    })
    .await
    .expect("the slow admin connection was not closed");
    let _ = n;
    assert!(t0.elapsed() < Duration::from_secs(4));
    drop(slow);

    // Two connections held open take every slot: a third waits until one closes.
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut c = tokio::net::TcpStream::connect(s.admin).await.unwrap();
        c.write_all(b"GET /ready HTTP/1.1\r\nhost: localhost\r\n\r\n")
            .await
            .unwrap();
        assert_eq!(read_response(&mut c).await.status, 200);
        held.push(c);
    }
    let third =
        tokio::spawn(async move { raw(s.admin, &get("/ready", "localhost", "")).await.status });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !third.is_finished(),
        "a third connection was served past the cap"
    );
    drop(held);
    let status = tokio::time::timeout(Duration::from_secs(5), third)
        .await
        .expect("served once a slot was free")
        .unwrap();
    assert_eq!(status, 200);
}

/// 100,000 distinct 60 KB rate-limit keys: the table stores a fixed-size hash per key, so
/// the gateway's memory grows by at most 16 MiB (it grew by 118 MiB for a tenth of this).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limit_keys_cost_a_fixed_size() {
    let s = stack("ratelimit", "", "").await;
    let pid = s.proc.pid();
    let gw = s.gw;
    let send_many = |from: usize, count: usize| async move {
        let mut tasks = Vec::new();
        for t in 0..4 {
            tasks.push(tokio::spawn(async move {
                let mut c = tokio::net::TcpStream::connect(gw).await.unwrap();
                let mut refused = 0;
                let mut key = vec![b'k'; 60 * 1024];
                for i in (from + t..from + count).step_by(4) {
                    let tag = format!("{i:010}");
                    key[..10].copy_from_slice(tag.as_bytes());
                    let mut req = b"GET /limited HTTP/1.1\r\nhost: x\r\nx-api-key: ".to_vec();
                    req.extend_from_slice(&key);
                    req.extend_from_slice(b"\r\n\r\n");
                    c.write_all(&req).await.unwrap();
                    let r = read_response(&mut c).await;
                    if r.status == 429 {
                        refused += 1;
                    } else {
                        assert_eq!(r.status, 200);
                    }
                }
                refused
            }));
        }
        let mut refused = 0;
        for t in tasks {
            refused += t.await.unwrap();
        }
        refused
    };
    // Warm up (buffers, pools, allocator), then measure.
    assert_eq!(send_many(0, 2_000).await, 0, "every key is new");
    let before = rss_kib(pid);
    let t0 = Instant::now();
    assert_eq!(send_many(2_000, 100_000).await, 0, "every key is new");
    let after = rss_kib(pid);
    let grown = after.saturating_sub(before);
    eprintln!(
        "rate limit: 100k keys of 60 KB in {:?}, RSS {before} -> {after} KiB (+{grown} KiB)",
        t0.elapsed()
    );
    assert!(grown <= 16 * 1024, "RSS grew by {grown} KiB");
    // The same key again is limited (its bucket is still there).
    let mut again =
        b"GET /limited HTTP/1.1\r\nhost: x\r\nconnection: close\r\nx-api-key: ".to_vec();
    let mut key = vec![b'k'; 60 * 1024];
    key[..10].copy_from_slice(format!("{:010}", 101_999).as_bytes());
    again.extend_from_slice(&key);
    again.extend_from_slice(b"\r\n\r\n");
    assert_eq!(raw(s.gw, &again).await.status, 429);
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

//! In-process integration tests: a real gateway on ephemeral ports in front of real upstream
//! servers, driven over real sockets with HTTP/1.1 and h2c.

mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use http::{Method, Request};
use http_body_util::Full;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn cluster(name: &str, eps: &[std::net::SocketAddr], extra: &str) -> String {
    let eps: Vec<String> = eps.iter().map(|a| format!("\"{a}\"")).collect();
    format!(
        "  - {{ name: {name}, endpoints: [{}] {extra} }}\n",
        eps.join(", ")
    )
}

#[tokio::test]
async fn routes_by_every_match_kind_in_order() {
    let a = upstream("a").await;
    let b = upstream("b").await;
    let routes = r#"
          - { name: exact, match: { path: { exact: /exact } }, forward: { cluster: a } }
          - { name: regex, match: { path: { regex: "/items/[0-9]+" } }, forward: { cluster: b } }
          - { name: method, match: { path: { prefix: /m }, methods: [DELETE] }, forward: { cluster: b } }
          - { name: header, match: { path: { prefix: /h }, headers: [{ name: x-pick, exact: b }] }, forward: { cluster: b } }
          - { name: query, match: { path: { prefix: /q }, query: [{ name: who, exact: b }] }, forward: { cluster: b } }
          - { name: rest, match: { path: { prefix: / } }, forward: { cluster: a } }
"#;
    let clusters = cluster("a", &[a.addr], "") + &cluster("b", &[b.addr], "");
    let tg = gateway(&config(routes, &clusters)).await;
    let server = |r: &Reply| r.header("x-upstream-name").map(str::to_owned);
    let c = h1();
    type Case<'a> = (&'a str, Method, &'a [(&'a str, &'a str)], &'a str);
    let cases: &[Case<'_>] = &[
        ("/exact", Method::GET, &[], "a"),
        ("/items/12", Method::GET, &[], "b"),
        ("/items/x", Method::GET, &[], "a"),
        ("/m", Method::DELETE, &[], "b"),
        ("/m", Method::GET, &[], "a"),
        ("/h", Method::GET, &[("x-pick", "b")], "b"),
        ("/h", Method::GET, &[("x-pick", "a")], "a"),
        ("/q?who=b", Method::GET, &[], "b"),
        ("/q?who=a", Method::GET, &[], "a"),
    ];
    for (path, method, headers, want) in cases {
        let mut req = get_req(tg.addr, path, headers);
        *req.method_mut() = method.clone();
        let r = send(&c, req).await;
        assert_eq!(r.status, 200, "{method} {path}");
        assert_eq!(
            server(&r).as_deref(),
            Some(*want),
            "{method} {path} {headers:?}"
        );
    }
}

#[tokio::test]
async fn virtual_hosts_by_authority_over_h1_and_h2() {
    let a = upstream("a").await;
    let b = upstream("b").await;
    let yaml = format!(
        r#"
access_log: {{ format: "off" }}
listeners: [{{ name: main, address: "127.0.0.1:0", route_table: t }}]
route_tables:
  - name: t
    virtual_hosts:
      - {{ name: exact, domains: [api.example.com], routes: [{{ forward: {{ cluster: a }} }}] }}
      - {{ name: wild, domains: ["*.example.com"], routes: [{{ forward: {{ cluster: b }} }}] }}
clusters:
{}{}"#,
        cluster("a", &[a.addr], ""),
        cluster("b", &[b.addr], "")
    );
    let tg = gateway(&yaml).await;
    for host in ["api.example.com", "x.example.com", "other.org"] {
        let via_h1 = get(tg.addr, "/", &[("host", host)]).await;
        let via_h2 = h2_get(tg.addr, host, "/").await;
        for r in [&via_h1, &via_h2] {
            match host {
                "api.example.com" => assert_eq!(r.header("x-upstream-name"), Some("a")),
                "x.example.com" => assert_eq!(r.header("x-upstream-name"), Some("b")),
                _ => {
                    assert_eq!(r.status, 404);
                    assert!(r.text().contains("no virtual host"), "{}", r.text());
                }
            }
        }
    }
    // The upstream (HTTP/1.1) sees the h2 :authority as Host.
    let r = h2_get(tg.addr, "api.example.com", "/").await;
    assert_eq!(
        r.upstream_header("host").as_deref(),
        Some("api.example.com")
    );
    assert_eq!(r.json()["version"], "HTTP/1.1");
}

#[tokio::test]
async fn proxy_headers_and_mutations() {
    let up = upstream("u").await;
    let routes = r#"
          - match: { path: { prefix: /rewrite/ } }
            forward: { cluster: u, prefix_rewrite: /echo/, host_rewrite: internal.svc }
          - match: { path: { prefix: / } }
            forward: { cluster: u }
            request_headers: { set: { x-set: route }, add: { x-added: one }, remove: [x-drop] }
            response_headers: { set: { x-resp: route }, remove: [x-upstream-name] }
            filters:
              - header_mutation: { request: { set: { x-filter: yes } }, response: { add: { x-filter-resp: yes } } }
"#;
    let tg = gateway(&config(routes, &cluster("u", &[up.addr], ""))).await;
    let r = get(
        tg.addr,
        "/hello?a=1",
        &[
            ("host", "shop.example.com:8443"),
            ("x-forwarded-for", "10.0.0.1"),
            ("x-drop", "1"),
            ("connection", "x-hop"),
            ("x-hop", "secret"),
            ("x-request-id", "abc-123"),
        ],
    )
    .await;
    assert_eq!(r.status, 200);
    let up_h = |n: &str| r.upstream_header(n);
    assert_eq!(
        up_h("host").as_deref(),
        Some("shop.example.com:8443"),
        "Host preserved"
    );
    assert_eq!(
        up_h("x-forwarded-for").as_deref(),
        Some("10.0.0.1, 127.0.0.1")
    );
    assert_eq!(up_h("x-forwarded-proto").as_deref(), Some("http"));
    assert_eq!(
        up_h("x-forwarded-host").as_deref(),
        Some("shop.example.com:8443")
    );
    let id = up_h("x-request-id").unwrap();
    assert_eq!(
        id.len(),
        36,
        "a client that is not a trusted proxy gets a new id, not its own: {id}"
    );
    assert_eq!(
        up_h("x-hop"),
        None,
        "headers named in Connection are hop-by-hop"
    );
    assert_eq!(up_h("connection"), None);
    assert_eq!(up_h("x-drop"), None);
    assert_eq!(up_h("x-set").as_deref(), Some("route"));
    assert_eq!(up_h("x-added").as_deref(), Some("one"));
    assert_eq!(up_h("x-filter").as_deref(), Some("yes"));
    assert_eq!(r.json()["query"], "a=1");
    assert_eq!(r.header("x-resp"), Some("route"));
    assert_eq!(r.header("x-filter-resp"), Some("yes"));
    assert_eq!(r.header("x-upstream-name"), None);

    let r = get(tg.addr, "/rewrite/x/y?z=1", &[]).await;
    assert_eq!(r.json()["path"], "/echo/x/y");
    assert_eq!(r.json()["query"], "z=1");
    assert_eq!(r.upstream_header("host").as_deref(), Some("internal.svc"));
    let id = r.upstream_header("x-request-id").unwrap();
    assert_eq!(id.len(), 36, "generated request id {id}");
}

#[tokio::test]
async fn direct_responses_and_redirects() {
    let routes = r#"
          - { match: { path: { exact: /hi } }, direct_response: { status: 418, body: "short and stout", content_type: text/teapot } }
          - { match: { path: { prefix: /old/ } }, redirect: { prefix_rewrite: /new/, status: 308 } }
          - { match: { path: { prefix: /away } }, redirect: { scheme: https, host: example.org, strip_query: true } }
"#;
    let tg = gateway(&config(
        routes,
        "  - { name: unused, endpoints: [\"127.0.0.1:9\"] }\n",
    ))
    .await;
    let r = get(tg.addr, "/hi", &[]).await;
    assert_eq!(r.status, 418);
    assert_eq!(r.text(), "short and stout");
    assert_eq!(r.header("content-type"), Some("text/teapot"));
    let r = get(tg.addr, "/old/a/b?x=1", &[("host", "site.test:8080")]).await;
    assert_eq!(r.status, 308);
    assert_eq!(
        r.header("location"),
        Some("/new/a/b?x=1"),
        "relative: the client's Host is not reflected"
    );
    let r = get(tg.addr, "/away?x=1", &[("host", "site.test:8080")]).await;
    assert_eq!(r.status, 301);
    assert_eq!(r.header("location"), Some("https://example.org/away"));
}

#[tokio::test]
async fn weighted_split_follows_weights() {
    let a = upstream("a").await;
    let b = upstream("b").await;
    let routes = r#"
          - forward: { weighted_clusters: [{ cluster: a, weight: 80 }, { cluster: b, weight: 20 }] }
"#;
    let clusters = cluster("a", &[a.addr], "") + &cluster("b", &[b.addr], "");
    let tg = gateway(&config(routes, &clusters)).await;
    let c = h1();
    let mut counts: HashMap<String, u32> = HashMap::new();
    let n = 2000;
    for _ in 0..n {
        let r = send(&c, get_req(tg.addr, "/status/204", &[])).await;
        *counts
            .entry(r.header("x-upstream-name").unwrap().to_owned())
            .or_default() += 1;
    }
    let share_a = f64::from(counts["a"]) / f64::from(n);
    // Binomial sd at n=2000, p=0.8 is ~0.009: five sd of tolerance.
    assert!(
        (share_a - 0.8).abs() < 0.045,
        "share of a = {share_a}, counts {counts:?}"
    );
}

#[tokio::test]
async fn round_robin_spreads_and_reuses_connections() {
    let a = upstream("a").await;
    let b = upstream("b").await;
    let tg = gateway(&config(
        "          - forward: { cluster: ab }\n",
        &cluster("ab", &[a.addr, b.addr], ""),
    ))
    .await;
    let c = h1();
    let mut seen = HashMap::<String, Vec<String>>::new();
    for _ in 0..10 {
        let r = send(&c, get_req(tg.addr, "/", &[])).await;
        let j = r.json();
        seen.entry(j["server"].as_str().unwrap().to_owned())
            .or_default()
            .push(j["peer"].as_str().unwrap().to_owned());
    }
    assert_eq!(seen["a"].len(), 5);
    assert_eq!(seen["b"].len(), 5);
    // Keep-alive: sequential requests to one endpoint ride one pooled connection.
    for peers in seen.values() {
        assert!(
            peers.iter().all(|p| p == &peers[0]),
            "pool not reused: {peers:?}"
        );
    }
}

#[tokio::test]
async fn least_request_avoids_the_busy_endpoint() {
    let a = upstream("a").await;
    let b = upstream("b").await;
    let tg = gateway(&config(
        "          - forward: { cluster: ab }\n",
        &cluster("ab", &[a.addr, b.addr], ", lb_policy: least_request"),
    ))
    .await;
    // Occupy one endpoint with a slow request.
    let slow_addr = tg.addr;
    let slow = tokio::spawn(async move { get(slow_addr, "/delay/1500", &[]).await });
    assert!(
        eventually(Duration::from_secs(5), || {
            let a = tg.gw.metrics().encode();
            async move { a.contains("rampart_upstream_requests_active{cluster=\"ab\"} 1") }
        })
        .await
    );
    let c = h1();
    let mut quick = HashMap::<String, u32>::new();
    for _ in 0..20 {
        let r = send(&c, get_req(tg.addr, "/", &[])).await;
        *quick
            .entry(r.json()["server"].as_str().unwrap().to_owned())
            .or_default() += 1;
    }
    let slow = slow.await.unwrap();
    let busy = slow.header("x-upstream-name").unwrap().to_owned();
    assert_eq!(
        quick.get(&busy),
        None,
        "quick requests went to the busy endpoint {busy}: {quick:?}"
    );
}

#[tokio::test]
async fn streams_large_bodies_both_ways_without_buffering() {
    let up = upstream("u").await;
    let tg = gateway(&config(
        "          - forward: { cluster: u }\n",
        &cluster("u", &[up.addr], ""),
    ))
    .await;
    let total: u64 = 192 * 1024 * 1024;
    let before = peak_rss();

    // Download: count bytes as they arrive.
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<Full<Bytes>>();
    let resp = client
        .request(get_req(tg.addr, &format!("/bytes/{total}"), &[]))
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let mut body = resp.into_body();
    let mut got = 0u64;
    while let Some(f) = http_body_util::BodyExt::frame(&mut body).await {
        got += f.unwrap().data_ref().map_or(0, |d| d.len() as u64);
    }
    assert_eq!(got, total);

    // Upload: a generated stream the upstream counts.
    let chunk = Bytes::from(vec![b'y'; 64 * 1024]);
    let n_chunks = total / chunk.len() as u64;
    let stream = futures_util_stream(chunk, n_chunks);
    let upload = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<http_body_util::StreamBody<ChunkStream>>();
    let req = Request::post(format!("http://{}/count", tg.addr))
        .body(http_body_util::StreamBody::new(stream))
        .unwrap();
    let resp = upload.request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    let text = http_body_util::BodyExt::collect(resp.into_body())
        .await
        .unwrap()
        .to_bytes();
    assert_eq!(String::from_utf8_lossy(&text).trim(), total.to_string());

    let grew = peak_rss().saturating_sub(before);
    assert!(
        grew < 48 * 1024 * 1024,
        "peak RSS grew by {} MiB moving 2 x 192 MiB",
        grew >> 20
    );
}

type ChunkStream = ChunkIter;

/// A stream of `n` copies of `chunk`, produced on demand.
fn futures_util_stream(chunk: Bytes, n: u64) -> ChunkIter {
    ChunkIter { chunk, left: n }
}

struct ChunkIter {
    chunk: Bytes,
    left: u64,
}

impl futures_core::Stream for ChunkIter {
    type Item = Result<hyper::body::Frame<Bytes>, std::convert::Infallible>;
    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        if self.left == 0 {
            return std::task::Poll::Ready(None);
        }
        self.left -= 1;
        std::task::Poll::Ready(Some(Ok(hyper::body::Frame::data(self.chunk.clone()))))
    }
}

#[tokio::test]
async fn error_statuses() {
    let up = upstream("u").await;
    // A port that refuses connections: bind, then close.
    let refused = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    // An upstream that accepts, reads, and resets.
    let resetter = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let reset_addr = resetter.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = resetter.accept().await else {
                return;
            };
            let mut buf = [0u8; 1024];
            let _ = s.read(&mut buf).await;
            drop(s);
        }
    });
    let routes = r#"
          - { match: { path: { prefix: /refused } }, forward: { cluster: refused } }
          - { match: { path: { prefix: /reset } }, forward: { cluster: reset } }
          - { match: { path: { prefix: /slow } }, forward: { cluster: u, prefix_rewrite: /delay/, timeout: 200ms } }
          - { match: { path: { prefix: /small } }, forward: { cluster: u }, max_request_body_bytes: 16 }
          - { match: { path: { prefix: /empty } }, forward: { cluster: empty } }
          - { match: { path: { prefix: /ok } }, forward: { cluster: u } }
"#;
    let clusters = cluster("u", &[up.addr], "")
        + &cluster("refused", &[refused], "")
        + &cluster("reset", &[reset_addr], "")
        + &cluster("empty", &[up.addr], "");
    let mut cfg = rampart_config::from_yaml(&config(routes, &clusters)).unwrap();
    // No endpoint at all (what health checking will produce when all are down).
    cfg.clusters
        .iter_mut()
        .find(|c| c.name == "empty")
        .unwrap()
        .endpoints
        .clear();
    let tg = gateway_from(cfg, vec![]).await;

    let r = get(tg.addr, "/nowhere", &[]).await;
    assert_eq!(r.status, 404, "{}", r.text());
    assert!(r.text().contains("no route"));
    let r = get(tg.addr, "/refused", &[]).await;
    assert_eq!(r.status, 502, "{}", r.text());
    // The kind of failure only: the upstream's address stays in the log.
    assert_eq!(r.text(), "upstream connect error\n");
    assert_eq!(r.header("x-rampart-error"), Some("upstream connect error"));
    let r = get(tg.addr, "/reset", &[]).await;
    assert_eq!(r.status, 502, "{}", r.text());
    let t0 = Instant::now();
    let r = get(tg.addr, "/slow/3000", &[]).await;
    assert_eq!(r.status, 504, "{}", r.text());
    assert!(t0.elapsed() < Duration::from_secs(2));
    let r = get(tg.addr, "/empty", &[]).await;
    assert_eq!(r.status, 503, "{}", r.text());

    // 413 by Content-Length, before anything reaches the upstream.
    let c = h1();
    let post = |path: &str, body: &'static [u8]| {
        Request::post(format!("http://{}{path}", tg.addr))
            .body(Full::new(Bytes::from_static(body)))
            .unwrap()
    };
    let r = send(&c, post("/small", b"0123456789abcdefXYZ")).await;
    assert_eq!(r.status, 413);
    let r = send(&c, post("/small", b"0123456789")).await;
    assert_eq!(r.status, 200);

    // 413 for a chunked body that grows past the limit mid-stream.
    let mut s = TcpStream::connect(tg.addr).await.unwrap();
    s.write_all(b"POST /small/count HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n10\r\n0123456789abcdef\r\n10\r\n0123456789abcdef\r\n0\r\n\r\n").await.unwrap();
    let head = read_head(&mut s).await;
    assert!(head.starts_with("HTTP/1.1 413"), "{head}");

    // Malformed request line: hyper answers 400.
    let mut s = TcpStream::connect(tg.addr).await.unwrap();
    s.write_all(b"GARBAGE\x01 / HTTP/1.1\r\n\r\n")
        .await
        .unwrap();
    let head = read_head(&mut s).await;
    assert!(head.starts_with("HTTP/1.1 400"), "{head}");

    // Headers over the limit: 431.
    let mut s = TcpStream::connect(tg.addr).await.unwrap();
    let big = "a".repeat(80 * 1024);
    s.write_all(format!("GET /ok HTTP/1.1\r\nhost: x\r\nx-big: {big}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let head = read_head(&mut s).await;
    assert!(head.starts_with("HTTP/1.1 431"), "{head}");

    // Missing Host on HTTP/1.1: 400 from the proxy.
    let mut s = TcpStream::connect(tg.addr).await.unwrap();
    s.write_all(b"GET /ok HTTP/1.1\r\n\r\n").await.unwrap();
    let head = read_head(&mut s).await;
    assert!(head.starts_with("HTTP/1.1 400"), "{head}");

    // The gateway still serves after all that.
    assert_eq!(get(tg.addr, "/ok", &[]).await.status, 200);
}

/// Reads until the end of a response head (or EOF).
async fn read_head(s: &mut TcpStream) -> String {
    let mut buf = Vec::new();
    let mut tmp = [0u8; 4096];
    let deadline = Instant::now() + Duration::from_secs(5);
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") && Instant::now() < deadline {
        match tokio::time::timeout(Duration::from_secs(5), s.read(&mut tmp)).await {
            Ok(Ok(0)) | Err(_) => break,
            Ok(Ok(n)) => buf.extend_from_slice(&tmp[..n]),
            Ok(Err(_)) => break,
        }
    }
    String::from_utf8_lossy(&buf).into_owned()
}

#[tokio::test]
async fn slow_clients_are_cut_off() {
    let up = upstream("u").await;
    let yaml = format!(
        r#"
access_log: {{ format: "off" }}
listeners:
  - name: main
    address: "127.0.0.1:0"
    route_table: t
    limits: {{ header_read_timeout: 300ms, idle_timeout: 400ms, max_connections: 2 }}
route_tables:
  - {{ name: t, virtual_hosts: [{{ name: v, domains: ["*"], routes: [{{ forward: {{ cluster: u }} }}] }}] }}
clusters:
{}"#,
        cluster("u", &[up.addr], "")
    );
    let tg = gateway(&yaml).await;
    // A slowloris that never finishes its headers is closed after the header timeout.
    let mut s = TcpStream::connect(tg.addr).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nhost: x\r\n").await.unwrap();
    let t0 = Instant::now();
    let closed = tokio::time::timeout(Duration::from_secs(5), async {
        let mut buf = [0u8; 512];
        // hyper may answer 408 before closing; either way the connection must end.
        while let Ok(n) = s.read(&mut buf).await {
            if n == 0 {
                break;
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "slow client was not cut off");
    assert!(t0.elapsed() < Duration::from_secs(3));

    // An idle keep-alive connection is closed after the idle timeout.
    let mut s = TcpStream::connect(tg.addr).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let head = read_head(&mut s).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let closed = tokio::time::timeout(Duration::from_secs(5), async {
        let mut rest = [0u8; 4096];
        loop {
            match s.read(&mut rest).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "idle connection stayed open");
}

#[tokio::test]
async fn cors_preflight_and_rate_limit() {
    let up = upstream("u").await;
    let routes = r#"
          - match: { path: { prefix: /limited } }
            forward: { cluster: u }
            filters: [{ rate_limit: { rate: 3, per: 10s, key: "header:x-api-key" } }]
          - match: { path: { prefix: / } }
            forward: { cluster: u }
            filters:
              - cors: { allow_origins: ["https://app.test"], allow_methods: [GET, PUT], allow_headers: [x-token], expose_headers: [x-upstream-name], max_age: 10m }
"#;
    let tg = gateway(&config(routes, &cluster("u", &[up.addr], ""))).await;
    let c = h1();
    let mut pre = get_req(
        tg.addr,
        "/thing",
        &[
            ("origin", "https://app.test"),
            ("access-control-request-method", "PUT"),
        ],
    );
    *pre.method_mut() = Method::OPTIONS;
    let r = send(&c, pre).await;
    assert_eq!(r.status, 204);
    assert_eq!(
        r.header("access-control-allow-origin"),
        Some("https://app.test")
    );
    assert_eq!(r.header("access-control-allow-methods"), Some("GET, PUT"));
    assert_eq!(r.header("access-control-allow-headers"), Some("x-token"));
    assert_eq!(r.header("access-control-max-age"), Some("600"));
    assert_eq!(
        r.header("x-upstream-name"),
        None,
        "preflight answered locally"
    );

    let mut bad = get_req(
        tg.addr,
        "/thing",
        &[
            ("origin", "https://evil.test"),
            ("access-control-request-method", "PUT"),
        ],
    );
    *bad.method_mut() = Method::OPTIONS;
    assert_eq!(send(&c, bad).await.status, 403);

    let r = send(
        &c,
        get_req(tg.addr, "/thing", &[("origin", "https://app.test")]),
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.header("access-control-allow-origin"),
        Some("https://app.test")
    );
    assert_eq!(
        r.header("access-control-expose-headers"),
        Some("x-upstream-name")
    );
    let r = send(
        &c,
        get_req(tg.addr, "/thing", &[("origin", "https://evil.test")]),
    )
    .await;
    assert_eq!(r.header("access-control-allow-origin"), None);

    // Three per key, then 429 with retry-after; another key has its own bucket.
    for i in 0..3 {
        let r = send(&c, get_req(tg.addr, "/limited", &[("x-api-key", "k1")])).await;
        assert_eq!(r.status, 200, "request {i}");
    }
    let r = send(&c, get_req(tg.addr, "/limited", &[("x-api-key", "k1")])).await;
    assert_eq!(r.status, 429);
    let retry: u64 = r.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=4).contains(&retry), "retry-after {retry}");
    let r = send(&c, get_req(tg.addr, "/limited", &[("x-api-key", "k2")])).await;
    assert_eq!(r.status, 200);
}

#[tokio::test]
async fn dns_endpoints_and_http2_upstreams() {
    let up = upstream("u").await;
    let port = up.addr.port();
    let clusters = format!(
        "  - {{ name: dns, endpoints: [\"localhost:{port}\"], dns_refresh: 1s }}\n  - {{ name: h2, endpoints: [\"127.0.0.1:{port}\"], protocol: http2 }}\n"
    );
    let routes = r#"
          - { match: { path: { prefix: /h2 } }, forward: { cluster: h2 } }
          - { match: { path: { prefix: / } }, forward: { cluster: dns } }
"#;
    let tg = gateway(&config(routes, &clusters)).await;
    let r = get(tg.addr, "/", &[]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["version"], "HTTP/1.1");
    let r = get(tg.addr, "/h2", &[("host", "h2.test")]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["version"], "HTTP/2.0");
    let clusters = admin(&tg, "/clusters").await.json();
    let dns = clusters["clusters"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "dns")
        .unwrap()
        .clone();
    assert_eq!(dns["configured_endpoints"][0], format!("localhost:{port}"));
    assert!(
        dns["endpoints"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["address"] == format!("127.0.0.1:{port}")),
        "{dns}"
    );
}

#[tokio::test]
async fn admin_endpoints() {
    let up = upstream("u").await;
    let tg = gateway(&config(
        "          - { name: r1, forward: { cluster: u } }\n",
        &cluster("u", &[up.addr], ""),
    ))
    .await;
    for _ in 0..3 {
        get(tg.addr, "/", &[]).await;
    }
    get(tg.addr, "/status/503", &[]).await;
    let m = admin(&tg, "/metrics").await;
    assert_eq!(m.status, 200);
    let text = m.text();
    let req = |class: &str| {
        metric(
            &text,
            &format!(
                "rampart_requests_total{{listener=\"main\",route=\"r1\",cluster=\"u\",class=\"{class}\"}}"
            ),
        )
    };
    assert_eq!(req("2xx"), Some(3.0), "{text}");
    assert_eq!(req("5xx"), Some(1.0));
    assert_eq!(
        metric(
            &text,
            "rampart_request_duration_seconds_count{listener=\"main\",route=\"r1\"}"
        ),
        Some(4.0)
    );
    assert_eq!(
        metric(
            &text,
            "rampart_upstream_duration_seconds_count{cluster=\"u\"}"
        ),
        Some(4.0)
    );
    assert_eq!(metric(&text, "rampart_config_version"), Some(1.0));
    assert!(text.contains("rampart_downstream_connections_active{listener=\"main\"}"));
    assert_eq!(
        metric(&text, "rampart_upstream_connections_active{cluster=\"u\"}"),
        Some(1.0)
    );

    assert_eq!(admin(&tg, "/ready").await.status, 200);
    let dump = admin(&tg, "/config_dump").await.json();
    assert_eq!(dump["version"], 1);
    assert_eq!(dump["config"]["clusters"][0]["name"], "u");
    let clusters = admin(&tg, "/clusters").await.json();
    assert_eq!(clusters["clusters"][0]["endpoints"][0]["total_requests"], 4);
    assert_eq!(admin(&tg, "/nope").await.status, 404);
}

#[tokio::test]
async fn shutdown_drains_in_flight_requests() {
    let up = upstream("u").await;
    let tg = gateway(&config(
        "          - forward: { cluster: u }\n",
        &cluster("u", &[up.addr], ""),
    ))
    .await;
    let addr = tg.addr;
    let inflight = tokio::spawn(async move { get(addr, "/delay/700", &[]).await });
    assert!(
        eventually(Duration::from_secs(5), || {
            let t = tg.gw.metrics().encode();
            async move { t.contains("rampart_upstream_requests_active{cluster=\"u\"} 1") }
        })
        .await
    );
    let t0 = Instant::now();
    let drained = tg.gw.shutdown(Duration::from_secs(5)).await;
    assert!(drained, "connections did not drain");
    let r = inflight.await.unwrap();
    assert_eq!(r.status, 200, "in-flight request finished");
    assert!(t0.elapsed() >= Duration::from_millis(300));
    // No longer accepting.
    assert!(
        TcpStream::connect(addr).await.is_err(),
        "still accepting after shutdown"
    );
    assert_eq!(admin(&tg, "/ready").await.status, 503);
}

#[tokio::test]
async fn reload_swaps_atomically_and_keeps_in_flight_on_old_config() {
    let a = upstream("a").await;
    let b = upstream("b").await;
    let clusters = cluster("a", &[a.addr], "") + &cluster("b", &[b.addr], "");
    let v1 = config("          - forward: { cluster: a }\n", &clusters);
    let tg = gateway(&v1).await;
    let addr = tg.addr;
    let old = tokio::spawn(async move { get(addr, "/delay/500", &[]).await });
    assert!(
        eventually(Duration::from_secs(5), || {
            let t = tg.gw.metrics().encode();
            async move { t.contains("rampart_upstream_requests_active{cluster=\"a\"} 1") }
        })
        .await,
        "the first request never reached its upstream"
    );

    // The listener keeps its configured address, so it is not rebound; only routing changes.
    let v2 = config("          - forward: { cluster: b }\n", &clusters);
    let cfg2 = rampart_config::from_yaml(&v2).unwrap();
    let v = tg.gw.reload(cfg2).await.unwrap();
    assert_eq!(v, 2);
    let r = get(tg.addr, "/", &[]).await;
    assert_eq!(
        r.header("x-upstream-name"),
        Some("b"),
        "new config serves new requests"
    );
    let r = old.await.unwrap();
    assert_eq!(
        r.header("x-upstream-name"),
        Some("a"),
        "in-flight request finished on old config"
    );
    assert_eq!(
        metric(
            &admin(&tg, "/metrics").await.text(),
            "rampart_config_version"
        ),
        Some(2.0)
    );
}

/// Connections an upstream accepted, and closed.
#[derive(Default)]
struct Conns {
    accepted: std::sync::atomic::AtomicUsize,
    closed: std::sync::atomic::AtomicUsize,
}

/// An upstream that answers one request per connection and then closes it without saying so
/// (no `connection: close`), so the proxy's pooled connection goes stale while idle.
async fn one_shot_upstream() -> (std::net::SocketAddr, std::sync::Arc<Conns>) {
    use std::sync::atomic::Ordering::SeqCst;
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let conns = std::sync::Arc::new(Conns::default());
    let count = conns.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = l.accept().await else {
                return;
            };
            count.accepted.fetch_add(1, SeqCst);
            let count = count.clone();
            tokio::spawn(async move {
                let head = read_head(&mut s).await;
                if !head.is_empty() {
                    let _ = s
                        .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                        .await;
                }
                drop(s);
                count.closed.fetch_add(1, SeqCst);
            });
        }
    });
    (addr, conns)
}

#[tokio::test]
async fn stale_pooled_connections_are_replaced_transparently() {
    use std::sync::atomic::Ordering::SeqCst;
    let (addr, conns) = one_shot_upstream().await;
    let tg = gateway(&config(
        "          - forward: { cluster: u }\n",
        &cluster("u", &[addr], ""),
    ))
    .await;
    for i in 0..5 {
        let r = get(tg.addr, "/", &[]).await;
        assert_eq!(r.status, 200, "request {i}: {}", r.text());
        assert_eq!(r.text(), "ok");
        // The upstream has closed the connection the proxy pooled.
        let closed = || {
            let n = conns.closed.load(SeqCst);
            async move { n > i }
        };
        assert!(eventually(Duration::from_secs(5), closed).await);
    }
    assert_eq!(conns.accepted.load(SeqCst), 5);
}

#[tokio::test]
async fn idle_upstream_connections_expire() {
    let up = upstream("u").await;
    let tg = gateway(&config(
        "          - forward: { cluster: u }\n",
        &cluster("u", &[up.addr], ", idle_timeout: 150ms"),
    ))
    .await;
    let peer = |r: &Reply| r.json()["peer"].as_str().unwrap().to_owned();
    let a = peer(&get(tg.addr, "/", &[]).await);
    let b = peer(&get(tg.addr, "/", &[]).await);
    assert_eq!(a, b, "reused while fresh");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let c = peer(&get(tg.addr, "/", &[]).await);
    assert_ne!(a, c, "an expired idle connection was reused");
}

#[tokio::test]
async fn connect_timeout_answers_504() {
    // A listener that never accepts, with its accept queue filled: further SYNs are dropped,
    // so a connect hangs until the proxy's connect timeout.
    let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    s.bind(
        &"127.0.0.1:0"
            .parse::<std::net::SocketAddr>()
            .unwrap()
            .into(),
    )
    .unwrap();
    s.listen(0).unwrap();
    let addr = s.local_addr().unwrap().as_socket().unwrap();
    let mut fillers = Vec::new();
    for _ in 0..4 {
        if let Ok(Ok(c)) =
            tokio::time::timeout(Duration::from_millis(200), TcpStream::connect(addr)).await
        {
            fillers.push(c);
        }
    }
    let tg = gateway(&config(
        "          - forward: { cluster: blackhole }\n",
        &cluster("blackhole", &[addr], ", connect_timeout: 300ms"),
    ))
    .await;
    let t0 = Instant::now();
    let r = get(tg.addr, "/", &[]).await;
    assert_eq!(r.status, 504, "{}", r.text());
    assert_eq!(r.text(), "upstream connect timeout\n");
    assert!(t0.elapsed() < Duration::from_secs(3));
    drop(s);
}

#[tokio::test]
async fn max_connections_holds_excess_clients_back() {
    let up = upstream("u").await;
    let yaml = format!(
        r#"
access_log: {{ format: "off" }}
listeners:
  - {{ name: main, address: "127.0.0.1:0", route_table: t, limits: {{ max_connections: 2 }} }}
route_tables:
  - {{ name: t, virtual_hosts: [{{ name: v, domains: ["*"], routes: [{{ forward: {{ cluster: u }} }}] }}] }}
clusters:
{}"#,
        cluster("u", &[up.addr], "")
    );
    let tg = gateway(&yaml).await;
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut s = TcpStream::connect(tg.addr).await.unwrap();
        s.write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
            .await
            .unwrap();
        assert!(read_head(&mut s).await.starts_with("HTTP/1.1 200"));
        held.push(s);
    }
    // A third client is not served while two connections are open...
    let mut third = TcpStream::connect(tg.addr).await.unwrap();
    third
        .write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 64];
    let early = tokio::time::timeout(Duration::from_millis(400), third.read(&mut buf)).await;
    assert!(early.is_err(), "served beyond max_connections");
    // ...and is once one closes.
    drop(held.pop());
    let head = read_head(&mut third).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
}

/// A config given to `Gateway::reload` (as the admin API and later xDS do) that cannot be
/// applied is recorded exactly as a rejected file is: the failure metric, the success gauge
/// and `/config_dump`'s `last_reload_error`; the old config keeps serving.
#[tokio::test]
async fn a_rejected_reload_is_recorded_whatever_its_source() {
    let a = upstream("a").await;
    let v1 = config(
        "          - forward: { cluster: a }\n",
        &cluster("a", &[a.addr], ""),
    );
    let tg = gateway(&v1).await;
    // A second listener on a port in use: validation passes, binding fails.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let v2 = v1.replace(
        "route_tables:",
        &format!(
            "  - name: second\n    address: \"{}\"\n    route_table: t\nroute_tables:",
            taken.local_addr().unwrap()
        ),
    );
    let err = tg
        .gw
        .reload(rampart_config::from_yaml(&v2).unwrap())
        .await
        .unwrap_err();
    let m = admin(&tg, "/metrics").await.text();
    assert_eq!(
        metric(&m, "rampart_config_reloads_total{result=\"failure\"}"),
        Some(1.0),
        "{m}"
    );
    assert_eq!(metric(&m, "rampart_config_last_reload_success"), Some(0.0));
    let dump = admin(&tg, "/config_dump").await.json();
    assert_eq!(dump["last_reload_error"], err.to_string());
    assert_eq!(dump["version"], 1);
    assert_eq!(get(tg.addr, "/", &[]).await.status, 200);
}

/// Reloads that add a listener, remove it, and move one to another address: each address
/// answers exactly while the config has a listener on it.
#[tokio::test]
async fn reloads_add_remove_and_move_listeners() {
    let a = upstream("a").await;
    let free = || {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
    };
    let (p1, p2) = (free(), free());
    let with = |listeners: &[(&str, std::net::SocketAddr)]| {
        let mut text = String::from(
            "workers: 1\naccess_log: { format: \"off\" }\nadmin: { address: \"127.0.0.1:0\" }\nlisteners:\n",
        );
        for (name, addr) in listeners {
            text.push_str(&format!(
                "  - {{ name: {name}, address: \"{addr}\", route_table: t }}\n"
            ));
        }
        text.push_str(&format!(
            "route_tables:\n  - name: t\n    virtual_hosts:\n      - {{ name: all, domains: [\"*\"], routes: [{{ forward: {{ cluster: a }} }}] }}\nclusters:\n  - {{ name: a, endpoints: [\"{}\"] }}\n",
            a.addr
        ));
        rampart_config::from_yaml(&text).unwrap()
    };
    let answers = |addr: std::net::SocketAddr| async move {
        match tokio::time::timeout(
            Duration::from_secs(5),
            h1().request(get_req(addr, "/", &[])),
        )
        .await
        {
            Ok(Ok(r)) => r.status() == 200,
            _ => false,
        }
    };
    let closed = |addr: std::net::SocketAddr| async move {
        eventually(Duration::from_secs(10), || async move {
            tokio::net::TcpStream::connect(addr).await.is_err()
        })
        .await
    };
    let tg = gateway_from(with(&[("main", p1)]), vec![]).await;
    assert!(answers(p1).await);

    tg.gw
        .reload(with(&[("main", p1), ("second", p2)]))
        .await
        .unwrap();
    assert!(answers(p2).await, "an added listener serves");
    assert!(answers(p1).await);

    tg.gw.reload(with(&[("main", p1)])).await.unwrap();
    assert!(closed(p2).await, "a removed listener stops accepting");
    assert!(answers(p1).await);

    tg.gw.reload(with(&[("main", p2)])).await.unwrap();
    assert!(
        answers(p2).await,
        "a moved listener serves at its new address"
    );
    assert!(closed(p1).await, "and no longer at the old one");
    assert_eq!(tg.gw.listener_addr("main").await, Some(p2));
}

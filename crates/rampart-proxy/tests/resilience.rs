//! When upstreams misbehave: retries and the retry budget, circuit breakers, active health
//! checks and outlier detection, against real (deliberately unreliable) upstream servers.

mod common;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use common::*;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};

/// A scriptable upstream: answers `status()` after `delay`, counts requests, and serves
/// `/healthz` with 200 or 503 depending on `healthy`.
struct Flaky {
    addr: SocketAddr,
    hits: Arc<AtomicUsize>,
    healthy: Arc<AtomicBool>,
    /// Connections accepted.
    conns: Arc<AtomicUsize>,
}

async fn flaky(
    name: &'static str,
    delay: Duration,
    status: impl Fn(usize) -> u16 + Send + Sync + 'static,
) -> Flaky {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let hits = Arc::new(AtomicUsize::new(0));
    let healthy = Arc::new(AtomicBool::new(true));
    let status = Arc::new(status);
    let conns = Arc::new(AtomicUsize::new(0));
    let (h, ok, accepted) = (hits.clone(), healthy.clone(), conns.clone());
    tokio::spawn(async move {
        loop {
            let Ok((s, _)) = l.accept().await else { return };
            accepted.fetch_add(1, Ordering::SeqCst);
            let (h, ok, status) = (h.clone(), ok.clone(), status.clone());
            tokio::spawn(async move {
                let svc = service_fn(move |req: Request<hyper::body::Incoming>| {
                    let (h, ok, status) = (h.clone(), ok.clone(), status.clone());
                    async move {
                        let code = if req.uri().path() == "/healthz" {
                            if ok.load(Ordering::SeqCst) { 200 } else { 503 }
                        } else {
                            let n = h.fetch_add(1, Ordering::SeqCst);
                            tokio::time::sleep(delay).await;
                            status(n)
                        };
                        let mut r = Response::new(Full::new(Bytes::from(name)));
                        *r.status_mut() = StatusCode::from_u16(code).unwrap();
                        r.headers_mut()
                            .insert("x-upstream-name", name.parse().unwrap());
                        Ok::<_, Infallible>(r)
                    }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(s), svc)
                    .await;
            });
        }
    });
    Flaky {
        addr,
        hits,
        healthy,
        conns,
    }
}

fn one_route(forward_extra: &str, cluster_yaml: &str) -> String {
    config(
        &format!("          - forward: {{ cluster: c{forward_extra} }}\n"),
        cluster_yaml,
    )
}

#[tokio::test]
async fn retries_succeed_over_a_flaky_upstream() {
    // Every other request fails.
    let up = flaky("f", Duration::ZERO, |n| if n % 2 == 0 { 503 } else { 200 }).await;
    let tg = gateway(&one_route(
        ", retries: { retry_on: [5xx], max_retries: 2, backoff: { base_interval: 1ms } }",
        &format!("  - {{ name: c, endpoints: [\"{}\"] }}\n", up.addr),
    ))
    .await;
    for i in 0..10 {
        let r = get(tg.addr, "/", &[]).await;
        assert_eq!(r.status, 200, "request {i}");
    }
    assert_eq!(
        up.hits.load(Ordering::SeqCst),
        20,
        "each request took exactly one retry"
    );
    let m = admin(&tg, "/metrics").await.text();
    assert_eq!(
        metric(
            &m,
            "rampart_cluster_events_total{cluster=\"c\",event=\"retry\"}"
        ),
        Some(10.0)
    );

    // POST is not idempotent: not retried unless configured.
    let c = h1();
    let post = Request::post(format!("http://{}/", tg.addr))
        .body(Full::new(Bytes::from_static(b"x")))
        .unwrap();
    let before = up.hits.load(Ordering::SeqCst);
    let r = send(&c, post).await;
    assert_eq!(up.hits.load(Ordering::SeqCst), before + 1);
    assert_eq!(
        r.status, 503,
        "first try of this pair fails and is not retried"
    );
}

#[tokio::test]
async fn retries_move_past_a_refusing_endpoint_and_buffer_small_bodies() {
    let good = flaky("good", Duration::ZERO, |_| 200).await;
    let refused = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let tg = gateway(&one_route(
        ", retries: { retry_on: [connect-failure], max_retries: 1, retry_non_idempotent: true, backoff: { base_interval: 1ms } }",
        &format!("  - {{ name: c, endpoints: [\"{refused}\", \"{}\"] }}\n", good.addr),
    ))
    .await;
    let c = h1();
    for i in 0..6 {
        let req = Request::post(format!("http://{}/", tg.addr))
            .body(Full::new(Bytes::from_static(b"payload")))
            .unwrap();
        let r = send(&c, req).await;
        assert_eq!(r.status, 200, "request {i}: {}", r.text());
    }
}

#[tokio::test]
async fn retry_budget_stops_a_retry_storm() {
    let up = flaky("down", Duration::from_millis(100), |_| 503).await;
    let tg = gateway(&one_route(
        ", retries: { retry_on: [5xx], max_retries: 3, backoff: { base_interval: 1ms } }",
        &format!(
            "  - {{ name: c, endpoints: [\"{}\"], circuit_breakers: {{ retry_budget_percent: 10, min_retry_concurrency: 1 }} }}\n",
            up.addr
        ),
    ))
    .await;
    let n = 20;
    let mut tasks = Vec::new();
    for _ in 0..n {
        let addr = tg.addr;
        tasks.push(tokio::spawn(
            async move { get(addr, "/", &[]).await.status },
        ));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), 503);
    }
    let hits = up.hits.load(Ordering::SeqCst);
    // Without a budget this would be 20 x 4 = 80 upstream requests.
    assert!(hits >= n && hits <= n + 8, "{hits} upstream requests");
    let m = admin(&tg, "/metrics").await.text();
    let overflow = metric(
        &m,
        "rampart_cluster_events_total{cluster=\"c\",event=\"overflow\"}",
    );
    assert!(
        overflow.unwrap_or(0.0) >= 10.0,
        "budget refusals counted: {overflow:?}"
    );
}

#[tokio::test]
async fn circuit_breakers_answer_503_overloaded() {
    let up = flaky("slow", Duration::from_millis(400), |_| 200).await;
    let tg = gateway(&one_route(
        "",
        &format!(
            "  - {{ name: c, endpoints: [\"{}\"], circuit_breakers: {{ max_requests: 2 }} }}\n",
            up.addr
        ),
    ))
    .await;
    let addr = tg.addr;
    let slow: Vec<_> = (0..2)
        .map(|_| tokio::spawn(async move { get(addr, "/", &[]).await.status }))
        .collect();
    assert!(
        eventually(Duration::from_secs(5), || {
            let t = tg.gw.metrics().encode();
            async move { t.contains("rampart_upstream_requests_active{cluster=\"c\"} 2") }
        })
        .await
    );
    let r = get(tg.addr, "/", &[]).await;
    assert_eq!(r.status, 503);
    assert_eq!(r.header("x-rampart-overloaded"), Some("true"));
    assert!(r.text().contains("max_requests"), "{}", r.text());
    for s in slow {
        assert_eq!(s.await.unwrap(), 200);
    }
    assert_eq!(get(tg.addr, "/", &[]).await.status, 200, "closes again");
}

#[tokio::test]
async fn pending_requests_wait_for_a_connection_then_overflow() {
    let up = flaky("slow", Duration::from_millis(300), |_| 200).await;
    let tg = gateway(&one_route(
        "",
        &format!(
            "  - {{ name: c, endpoints: [\"{}\"], circuit_breakers: {{ max_connections: 1, max_pending_requests: 1 }} }}\n",
            up.addr
        ),
    ))
    .await;
    let addr = tg.addr;
    let first = tokio::spawn(async move { get(addr, "/", &[]).await.status });
    assert!(
        eventually(Duration::from_secs(5), || {
            let t = tg.gw.metrics().encode();
            async move { t.contains("rampart_upstream_connections_active{cluster=\"c\"} 1") }
        })
        .await
    );
    // The second waits for the one connection; the third finds the pending slot taken.
    let second = tokio::spawn(async move { get(addr, "/", &[]).await.status });
    assert!(
        eventually(Duration::from_secs(5), || {
            let t = tg.gw.metrics().encode();
            async move { t.contains("rampart_upstream_requests_pending{cluster=\"c\"} 1") }
        })
        .await,
        "the second request never waited for the connection"
    );
    let third = get(tg.addr, "/", &[]).await;
    assert_eq!(third.status, 503, "{}", third.text());
    assert_eq!(third.header("x-rampart-overloaded"), Some("true"));
    assert!(third.text().contains("max_pending_requests"));
    assert_eq!(first.await.unwrap(), 200);
    assert_eq!(second.await.unwrap(), 200, "the pending request was served");
}

#[tokio::test]
async fn health_checks_take_an_endpoint_out_and_back_with_no_failed_requests() {
    let a = flaky("a", Duration::ZERO, |_| 200).await;
    let b_down = Arc::new(AtomicBool::new(false));
    let flag = b_down.clone();
    let b = flaky("b", Duration::ZERO, move |_| {
        if flag.load(Ordering::SeqCst) {
            500
        } else {
            200
        }
    })
    .await;
    let tg = gateway(&one_route(
        "",
        &format!(
            "  - {{ name: c, endpoints: [\"{}\", \"{}\"], health_check: {{ path: /healthz, interval: 50ms, timeout: 200ms, unhealthy_threshold: 2, healthy_threshold: 2 }} }}\n",
            a.addr, b.addr
        ),
    ))
    .await;
    let state = |tg: &TestGateway| {
        let admin_addr = tg.admin.unwrap();
        async move {
            let j = get(admin_addr, "/clusters", &[]).await.json();
            j["clusters"][0]["endpoints"][1]["state"]
                .as_str()
                .unwrap()
                .to_owned()
        }
    };
    assert_eq!(state(&tg).await, "healthy");
    // b goes bad: its checks fail and its traffic would fail.
    b.healthy.store(false, Ordering::SeqCst);
    b_down.store(true, Ordering::SeqCst);
    assert!(
        eventually(Duration::from_secs(5), || async {
            state(&tg).await == "failed_active_hc"
        })
        .await
    );
    let c = h1();
    for i in 0..40 {
        let r = send(&c, get_req(tg.addr, "/", &[])).await;
        assert_eq!(r.status, 200, "request {i} after b was marked down");
        assert_eq!(r.header("x-upstream-name"), Some("a"));
    }
    // b recovers and gets traffic again.
    b_down.store(false, Ordering::SeqCst);
    b.healthy.store(true, Ordering::SeqCst);
    assert!(
        eventually(Duration::from_secs(5), || async {
            state(&tg).await == "healthy"
        })
        .await
    );
    let mut seen_b = false;
    for _ in 0..10 {
        let r = send(&c, get_req(tg.addr, "/", &[])).await;
        assert_eq!(r.status, 200);
        seen_b |= r.header("x-upstream-name") == Some("b");
    }
    assert!(seen_b, "recovered endpoint gets traffic");
}

#[tokio::test]
async fn outlier_detection_ejects_a_failing_endpoint() {
    let a = flaky("a", Duration::ZERO, |_| 200).await;
    let b = flaky("b", Duration::ZERO, |_| 500).await;
    let tg = gateway(&one_route(
        "",
        &format!(
            "  - {{ name: c, endpoints: [\"{}\", \"{}\"], outlier_detection: {{ consecutive_5xx: 3, base_ejection_time: 30s, max_ejection_percent: 50 }} }}\n",
            a.addr, b.addr
        ),
    ))
    .await;
    let c = h1();
    let mut failures = 0;
    for _ in 0..20 {
        if send(&c, get_req(tg.addr, "/", &[])).await.status != 200 {
            failures += 1;
        }
    }
    assert_eq!(
        failures, 3,
        "b served exactly its three strikes, then was ejected"
    );
    assert_eq!(b.hits.load(Ordering::SeqCst), 3);
    let j = admin(&tg, "/clusters").await.json();
    assert_eq!(j["clusters"][0]["endpoints"][1]["state"], "ejected");
    assert_eq!(j["clusters"][0]["endpoints"][1]["ejections"], 1);
    let m = admin(&tg, "/metrics").await.text();
    assert_eq!(
        metric(
            &m,
            "rampart_cluster_events_total{cluster=\"c\",event=\"ejection\"}"
        ),
        Some(1.0)
    );
    let series = format!(
        "rampart_endpoint_healthy{{cluster=\"c\",endpoint=\"{}\",state=\"ejected\"}}",
        b.addr
    );
    assert_eq!(metric(&m, &series), Some(0.0), "{m}");
    let series = format!(
        "rampart_endpoint_healthy{{cluster=\"c\",endpoint=\"{}\",state=\"healthy\"}}",
        a.addr
    );
    assert_eq!(metric(&m, &series), Some(1.0));
    assert!(
        m.trim_end().ends_with("# EOF"),
        "OpenMetrics ends with # EOF"
    );
    // The cap: with a at 50 % already ejected... a alone is never ejected as well.
    assert_eq!(a.hits.load(Ordering::SeqCst), 17);
}

#[tokio::test]
async fn a_burst_never_opens_more_than_max_connections() {
    let up = flaky("slow", std::time::Duration::from_millis(50), |_| 200).await;
    let tg = gateway(&one_route(
        "",
        &format!(
            "  - {{ name: c, endpoints: [\"{}\"], circuit_breakers: {{ max_connections: 4 }} }}\n",
            up.addr
        ),
    ))
    .await;
    let tasks: Vec<_> = (0..40)
        .map(|_| {
            let addr = tg.addr;
            tokio::spawn(async move { get(addr, "/", &[]).await.status })
        })
        .collect();
    for t in tasks {
        assert_eq!(
            t.await.unwrap(),
            200,
            "waiting requests are served, not refused"
        );
    }
    let opened = up.conns.load(Ordering::SeqCst);
    assert!(
        opened <= 4,
        "{opened} upstream connections opened for max_connections 4"
    );
}

/// One route to `up` on a listener whose request bodies have 500 ms, plus 1 s per
/// `min_rate` bytes received.
fn body_limited(up: SocketAddr, min_rate: u64) -> String {
    config("          - forward: { cluster: u }\n", &format!("  - {{ name: u, endpoints: [\"{up}\"] }}\n"))
        .replace(
            "    route_table: t\n",
            &format!(
                "    route_table: t\n    limits: {{ request_body_timeout: 500ms, min_request_body_rate: {min_rate} }}\n"
            ),
        )
}

/// A request body must keep pace (`request_body_timeout` plus 1 s per
/// `min_request_body_rate` bytes) or end with 408; a gRPC stream, which may rightly pause
/// between messages, is exempt.
#[tokio::test]
async fn slow_bodies_are_cut_except_grpc_streams() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let up = upstream("u").await;
    let tg = gateway(&body_limited(up.addr, 1000)).await;
    let post = |content_type: &'static str| async move {
        let mut s = tokio::net::TcpStream::connect(tg.addr).await.unwrap();
        let head = format!(
            "POST /count HTTP/1.1\r\nhost: x\r\ncontent-type: {content_type}\r\n\
             transfer-encoding: chunked\r\nconnection: close\r\n\r\n1\r\na\r\n"
        );
        s.write_all(head.as_bytes()).await.unwrap();
        // A pause longer than the deadline, then the rest of the body.
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let _ = s.write_all(b"1\r\nb\r\n0\r\n\r\n").await;
        let mut out = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out)).await;
        String::from_utf8_lossy(&out).into_owned()
    };
    let grpc = post("application/grpc").await;
    assert!(grpc.starts_with("HTTP/1.1 200"), "{grpc}");
    assert!(grpc.contains("\n2\n"), "both bytes arrived: {grpc:?}");
    let plain = post("application/octet-stream").await;
    assert!(
        plain.is_empty() || plain.starts_with("HTTP/1.1 408"),
        "cut off: {plain}"
    );
}

/// The body deadline counts only time spent waiting for the client: a fast client behind an
/// upstream that stalls before reading is not cut off (nor blamed).
#[tokio::test]
async fn a_slow_upstream_does_not_make_a_fast_client_time_out() {
    use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
    const BODY: usize = 64 * 1024 * 1024;
    // An upstream that reads the head, stalls 1.5 s, then drains the body and answers.
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let up = l.local_addr().unwrap();
    tokio::spawn(async move {
        let (s, _) = l.accept().await.unwrap();
        let mut s = BufReader::new(s);
        let mut len = 0usize;
        loop {
            let mut line = String::new();
            s.read_line(&mut line).await.unwrap();
            if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                len = v.trim().parse().unwrap();
            }
            if line == "\r\n" {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let mut body = vec![0u8; len];
        s.read_exact(&mut body).await.unwrap();
        s.get_mut()
            .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
            .await
            .unwrap();
    });
    let tg = gateway(&body_limited(up, 0)).await;
    let req = Request::post(format!("http://{}/upload", tg.addr))
        .body(Full::new(Bytes::from(vec![b'x'; BODY])))
        .unwrap();
    let r = send(&h1(), req).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
}

/// Outlier ejection ends by itself, the n-th ejection lasts n × base_ejection_time, and
/// max_ejection_percent keeps a failing endpoint in service when ejecting it would pass the
/// cap (one of the issue 13 missing tests).
#[tokio::test]
async fn ejections_end_grow_and_are_capped() {
    let a_fails = Arc::new(AtomicBool::new(false));
    let f = a_fails.clone();
    let a = flaky("a", Duration::ZERO, move |_| {
        if f.load(Ordering::SeqCst) { 500 } else { 200 }
    })
    .await;
    let b = flaky("b", Duration::ZERO, |_| 500).await;
    let tg = gateway(&one_route(
        "",
        &format!(
            "  - {{ name: c, endpoints: [\"{}\", \"{}\"], outlier_detection: {{ consecutive_5xx: 1, base_ejection_time: 500ms, max_ejection_time: 10s, max_ejection_percent: 50 }} }}\n",
            a.addr, b.addr
        ),
    ))
    .await;
    let state = |i: usize| {
        let admin_addr = tg.admin.unwrap();
        async move {
            let j = get(admin_addr, "/clusters", &[]).await.json();
            let e = &j["clusters"][0]["endpoints"][i];
            (
                e["state"].as_str().unwrap().to_owned(),
                e["ejections"].as_u64().unwrap(),
            )
        }
    };
    // Sends until b has been hit `n` times in all (round robin skips it while ejected).
    let hit_b = |n: usize| {
        let addr = tg.addr;
        let hits = b.hits.clone();
        async move {
            let c = h1();
            while hits.load(Ordering::SeqCst) < n {
                send(&c, get_req(addr, "/", &[])).await;
            }
        }
    };
    // How long b stays ejected, from the failure that ejected it.
    let ejected_for = |n: u64| async move {
        let t0 = std::time::Instant::now();
        assert_eq!(state(1).await, ("ejected".to_owned(), n));
        assert!(
            eventually(Duration::from_secs(10), || async {
                state(1).await.0 == "healthy"
            })
            .await,
            "ejection {n} never ended"
        );
        t0.elapsed()
    };

    hit_b(1).await;
    let first = ejected_for(1).await;
    hit_b(2).await;
    let second = ejected_for(2).await;
    // Generous bounds: the admin polls add latency on a loaded machine.
    assert!(
        first >= Duration::from_millis(400) && first < Duration::from_millis(1200),
        "first ejection {first:?} (base 500 ms)"
    );
    assert!(
        second >= Duration::from_millis(900) && second > first + Duration::from_millis(300),
        "second ejection {second:?} lasts twice the base (first {first:?})"
    );

    // b is ejected a third time; now a fails too, but ejecting it would take out more than
    // 50 % of the cluster: a stays in service and takes every request.
    hit_b(3).await;
    assert_eq!(state(1).await.0, "ejected");
    a_fails.store(true, Ordering::SeqCst);
    for _ in 0..5 {
        assert_eq!(get(tg.addr, "/", &[]).await.status, 500);
    }
    assert_eq!(state(0).await, ("healthy".to_owned(), 0));
    assert_eq!(
        b.hits.load(Ordering::SeqCst),
        3,
        "b stays out while ejected"
    );
}

//! Test support: real upstreams on ephemeral ports, a gateway from YAML, and HTTP clients.
#![allow(dead_code, unreachable_pub)] // each test binary uses a different subset

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use rampart_proxy::snapshot::ExtraFilter;
use rampart_proxy::{Gateway, Runtimes};
use tokio_util::sync::CancellationToken;

pub struct Upstream {
    pub addr: SocketAddr,
    stop: CancellationToken,
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// Starts the built-in demo upstream on an ephemeral port.
pub async fn upstream(name: &str) -> Upstream {
    let stop = CancellationToken::new();
    let addr = rampart_proxy::demo::bind_and_serve(
        "127.0.0.1:0".parse().expect("test support"),
        name.to_owned(),
        stop.clone(),
    )
    .await
    .expect("bind demo upstream");
    Upstream { addr, stop }
}

pub struct TestGateway {
    pub gw: Arc<Gateway>,
    pub addr: SocketAddr,
    pub admin: Option<SocketAddr>,
}

/// Starts a gateway from YAML whose first listener is named `main`.
pub async fn gateway(yaml: &str) -> TestGateway {
    gateway_with(yaml, Vec::new()).await
}

pub async fn gateway_with(yaml: &str, extra: Vec<ExtraFilter>) -> TestGateway {
    let cfg = rampart_config::from_yaml(yaml).unwrap_or_else(|e| panic!("test config: {e}"));
    gateway_from(cfg, extra).await
}

pub async fn gateway_from(cfg: rampart_config::Config, extra: Vec<ExtraFilter>) -> TestGateway {
    let gw = Gateway::start_with_filters(cfg, Runtimes::current(), extra)
        .await
        .expect("gateway starts");
    let addr = gw.listener_addr("main").await.expect("listener main");
    let admin = gw.admin_addr();
    TestGateway { gw, addr, admin }
}

/// A config with one listener `main` on an ephemeral port, one route table, and the given
/// routes (YAML list items, indented by 10 spaces) and clusters (indented by 2).
pub fn config(routes: &str, clusters: &str) -> String {
    format!(
        r#"
workers: 1
access_log: {{ format: "off" }}
admin: {{ address: "127.0.0.1:0" }}
listeners:
  - name: main
    address: "127.0.0.1:0"
    route_table: t
route_tables:
  - name: t
    virtual_hosts:
      - name: all
        domains: ["*"]
        routes:
{routes}
clusters:
{clusters}
"#
    )
}

pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Reply {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The header as the upstream saw it (the demo upstream echoes request headers).
    pub fn upstream_header(&self, name: &str) -> Option<String> {
        self.json()["headers"][name].as_str().map(str::to_owned)
    }
}

pub type TestClient = Client<HttpConnector, Full<Bytes>>;

pub fn h1() -> TestClient {
    Client::builder(TokioExecutor::new()).build_http()
}

pub fn h2() -> TestClient {
    Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http()
}

pub async fn send(client: &TestClient, req: Request<Full<Bytes>>) -> Reply {
    let resp = tokio::time::timeout(Duration::from_secs(20), client.request(req))
        .await
        .expect("request timed out")
        .expect("request failed");
    let (parts, body) = resp.into_parts();
    let body = body.collect().await.expect("body").to_bytes();
    Reply {
        status: parts.status,
        headers: parts.headers,
        body,
    }
}

pub fn get_req(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> Request<Full<Bytes>> {
    let mut b = Request::get(format!("http://{addr}{path}"));
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    b.body(Full::new(Bytes::new())).expect("test support")
}

pub async fn get(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> Reply {
    send(&h1(), get_req(addr, path, headers)).await
}

#[allow(unused_imports)] // each test binary uses a different subset
pub use rampart_test_support::eventually;

/// Fetches an admin path.
pub async fn admin(tg: &TestGateway, path: &str) -> Reply {
    get(tg.admin.expect("admin configured"), path, &[]).await
}

/// The value of a metric line (exact series text before the value), if present.
pub fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| {
            l.strip_prefix(series)
                .and_then(|rest| rest.strip_prefix(' '))
        })
        .and_then(|v| v.trim().parse().ok())
}

/// This process's peak resident set size, in bytes.
pub fn peak_rss() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("test support");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map(|kb| kb * 1024)
        .expect("test support")
}

/// An HTTP/2 (prior knowledge) GET with an explicit `:authority`, over a fresh connection.
pub async fn h2_get(addr: SocketAddr, authority: &str, path: &str) -> Reply {
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .expect("test support");
    let (mut sender, conn) = hyper::client::conn::http2::handshake(
        TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tcp),
    )
    .await
    .expect("test support");
    tokio::spawn(conn);
    let req = Request::get(format!("http://{authority}{path}"))
        .body(Full::new(Bytes::new()))
        .expect("test support");
    let resp = sender.send_request(req).await.expect("test support");
    assert_eq!(resp.version(), http::Version::HTTP_2);
    let (parts, body) = resp.into_parts();
    Reply {
        status: parts.status,
        headers: parts.headers,
        body: body.collect().await.expect("test support").to_bytes(),
    }
}

//! OpenAPI import, all real processes: `rampart openapi import` turns a spec's operations
//! into routes in the config store (each with the `openapi` filter), a control plane serves
//! them, and an xDS-fed proxy validates requests against their operation before forwarding:
//! conforming requests (bodies intact) pass, others get RFC 9457 problem+json (401 when no
//! credentials the spec's security allows are there); a re-import of
//! a smaller spec removes the routes of operations that left it.

mod support;

use std::process::Command;
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

async fn call(
    addr: std::net::SocketAddr,
    method: http::Method,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Reply {
    // Every shop operation asks for an API key (or a bearer token): the gateway checks
    // that one is there; its value is for whatever verifies it.
    let mut b = http::Request::builder()
        .method(method)
        .uri(format!("http://{addr}{path}"))
        .header("x-api-key", "k1");
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    send(
        &h1(),
        b.body(Full::new(Bytes::from(body.to_owned()))).unwrap(),
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn imported_operations_validate_requests_before_the_upstream() {
    let dir = TempDir::new("openapi-import");
    let up = demo_upstream("shop").await;
    let (_store, eps) = store_with(&dir, &api_gateway_config("shop", &up.addr.to_string())).await;

    // Lint first, as a user would; then import under /echo (the demo upstream echoes bodies
    // sent there, so what reaches it can be compared with what was sent).
    let shop = openapi_spec("shop.yaml");
    let (ok, out, err) = rampart(&["openapi", "lint", &shop]);
    assert!(ok && out.contains("4 operation(s)"), "{out}{err}");
    let import = |spec: &str| {
        rampart(&[
            "openapi",
            "import",
            spec,
            "--cluster",
            "shop",
            "--base-path",
            "/echo",
            "--responses",
            "report",
            "--endpoints",
            &eps,
        ])
    };
    let (ok, out, err) = import(&shop);
    assert!(ok && out.contains("4 operation route(s)"), "{out}{err}");
    let (ok, out, _) = import(&shop);
    assert!(
        ok && out.contains("unchanged"),
        "a second import changes nothing: {out}"
    );

    let (_cp, ads) = spawn_control_plane(&eps).await;
    let mut proxy = spawn_xds_proxy(&ads, "oas");
    let addr = bound(&mut proxy, "listener=main local=").await;
    let admin = bound(&mut proxy, "admin endpoint listening local=").await;

    // A conforming request reaches the upstream.
    let routed = eventually(Duration::from_secs(15), || async {
        call(
            addr,
            http::Method::GET,
            "/echo/orders?limit=5&status=open,paid",
            &[],
            "",
        )
        .await
        .header("x-upstream-name")
            == Some("shop")
    })
    .await;
    assert!(routed, "{}", proxy.stderr());
    // Parameters that do not conform: a problem document, nothing forwarded.
    let r = call(
        addr,
        http::Method::GET,
        "/echo/orders?limit=500&status=lost",
        &[],
        "",
    )
    .await;
    assert_eq!(r.status, http::StatusCode::BAD_REQUEST);
    assert_eq!(r.header("content-type"), Some("application/problem+json"));
    assert!(r.header("x-upstream-name").is_none());
    let doc = r.json();
    assert_eq!(doc["status"], 400);
    assert_eq!(doc["operation"], "listOrders");
    let at: Vec<&str> = doc["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["pointer"].as_str().unwrap())
        .collect();
    assert_eq!(at, ["/query/limit", "/query/status/0"], "{doc}");
    // No credentials of any alternative the spec allows: 401, before any other check.
    let r = send(
        &h1(),
        http::Request::get(format!("http://{addr}/echo/orders?limit=500"))
            .body(Full::new(Bytes::new()))
            .unwrap(),
    )
    .await;
    assert_eq!(r.status, http::StatusCode::UNAUTHORIZED);
    assert_eq!(r.header("content-type"), Some("application/problem+json"));
    assert!(r.header("x-upstream-name").is_none());
    let doc = r.json();
    assert_eq!(doc["errors"][0]["pointer"], "/security", "{doc}");
    assert!(
        doc["errors"][0]["detail"]
            .as_str()
            .is_some_and(|d| d.contains("x-api-key")),
        "{doc}"
    );
    // Path templates match by segment; the parameter's schema applies.
    let r = call(
        addr,
        http::Method::GET,
        "/echo/orders/0",
        &[("cookie", "session=abcd")],
        "",
    )
    .await;
    assert_eq!(r.json()["errors"][0]["pointer"], "/path/orderId");
    let r = call(
        addr,
        http::Method::GET,
        "/echo/orders/7",
        &[("cookie", "session=abcd")],
        "",
    )
    .await;
    assert_eq!(r.header("x-upstream-name"), Some("shop"));
    // A method the spec does not list for the path is not routed to it.
    let r = call(addr, http::Method::DELETE, "/echo/orders/7", &[], "").await;
    assert_eq!(r.status, http::StatusCode::NOT_FOUND);

    // Bodies: a conforming one reaches the upstream byte for byte; others get a problem.
    let good = r#"{"customer":"a@b.example","placed":"2026-12-07T10:00:00Z","lines":[{"sku":"ABC-123","qty":2}]}"#;
    let r = call(
        addr,
        http::Method::POST,
        "/echo/orders",
        &[("content-type", "application/json")],
        good,
    )
    .await;
    assert_eq!(
        (r.status, r.text()),
        (http::StatusCode::OK, good.to_owned())
    );
    let bad = r#"{"customer":"nobody","placed":"2026-12-07T10:00:00Z","lines":[],"extra":1}"#;
    let r = call(
        addr,
        http::Method::POST,
        "/echo/orders",
        &[("content-type", "application/json")],
        bad,
    )
    .await;
    assert_eq!(r.status, http::StatusCode::BAD_REQUEST, "{}", r.text());
    assert_eq!(r.header("content-type"), Some("application/problem+json"));
    let at: Vec<String> = r.json()["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["pointer"].as_str().unwrap().to_owned())
        .collect();
    for want in ["/body/customer", "/body/lines", "/body"] {
        assert!(at.iter().any(|p| p == want), "{want} in {at:?}");
    }
    let r = call(
        addr,
        http::Method::POST,
        "/echo/orders",
        &[("content-type", "text/csv")],
        "a,b",
    )
    .await;
    assert_eq!(r.json()["errors"][0]["pointer"], "/content-type");
    let m = metrics(admin).await;
    assert!(
        metric(
            &m,
            r#"rampart_openapi_violations_total{operation="createOrder",direction="request"}"#
        )
        .is_some_and(|v| v >= 2.0),
        "{m}"
    );
    // Responses are reported, not refused (--responses report): createOrder documents 201,
    // the echo answered 200, and the client still got its answer above.
    assert!(
        metric(
            &m,
            r#"rampart_openapi_violations_total{operation="createOrder",direction="response"}"#
        )
        .is_some_and(|v| v >= 1.0),
        "{m}"
    );

    // A smaller spec imported over it: the operations that left lose their routes.
    let smaller = dir.path("shop.yaml");
    let text = std::fs::read_to_string(&shop).unwrap();
    let cut = text.find("  /orders/{orderId}:").unwrap();
    let end = text.find("components:").unwrap();
    std::fs::write(&smaller, format!("{}{}", &text[..cut], &text[end..])).unwrap();
    std::fs::copy(openapi_spec("common.yaml"), dir.path("common.yaml")).unwrap();
    let (ok, out, err) = import(smaller.to_str().unwrap());
    assert!(ok && out.contains("2 operation route(s)"), "{out}{err}");
    let gone = eventually(Duration::from_secs(15), || async {
        call(
            addr,
            http::Method::GET,
            "/echo/orders/7",
            &[("cookie", "session=abcd")],
            "",
        )
        .await
        .status
            == http::StatusCode::NOT_FOUND
    })
    .await;
    assert!(gone, "the route of a removed operation stayed");
    let r = call(addr, http::Method::GET, "/echo/orders?limit=0", &[], "").await;
    assert_eq!(r.status, http::StatusCode::BAD_REQUEST);

    // The same operations with a stricter schema, re-imported from the same file: the
    // routes change (the spec's digest), and gateways validate against the new content.
    let r = call(addr, http::Method::GET, "/echo/orders?limit=50", &[], "").await;
    assert_eq!(r.header("x-upstream-name"), Some("shop"));
    let text = std::fs::read_to_string(&smaller).unwrap();
    std::fs::write(&smaller, text.replace("maximum: 100", "maximum: 10")).unwrap();
    let (ok, out, err) = import(smaller.to_str().unwrap());
    assert!(ok && !out.contains("unchanged"), "{out}{err}");
    let swapped = eventually(Duration::from_secs(15), || async {
        call(addr, http::Method::GET, "/echo/orders?limit=50", &[], "")
            .await
            .status
            == http::StatusCode::BAD_REQUEST
    })
    .await;
    assert!(swapped, "the new spec was not used:\n{}", proxy.stderr());
}

/// An upstream that answers every request with a teapot carrying the gateway's own
/// local-answer marker, as if the gateway had answered.
async fn lying_upstream() -> std::net::SocketAddr {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let mut buf = vec![0u8; 8192];
                let mut seen = Vec::new();
                while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => seen.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = s
                    .write_all(b"HTTP/1.1 418 I'm a teapot\r\nx-rampart-local: 1\r\ncontent-length: 0\r\n\r\n")
                    .await;
            });
        }
    });
    addr
}

/// Regression: the proxy marked its own answers with a header and skipped response checks
/// for any response carrying it, so an upstream could send the marker and have an
/// undocumented answer pass `--responses enforce`. Now the proxy tells filters who answered
/// and removes the marker from upstream responses.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_cannot_pass_its_answer_off_as_the_gateways() {
    let dir = TempDir::new("openapi-liar");
    let liar = lying_upstream().await;
    let spec = dir.path("tea.yaml");
    std::fs::write(
        &spec,
        "openapi: 3.1.0\ninfo: { title: Tea, version: \"1\" }\npaths:\n  /tea:\n    get:\n      \
         operationId: getTea\n      responses: { \"200\": { description: ok } }\n",
    )
    .unwrap();
    let (_store, eps) = store_with(
        &dir,
        &format!(
            "kind: Listener\nname: main\naddress: \"127.0.0.1:0\"\nroute_table: main\n---\n\
             kind: RouteTable\nname: main\nvirtual_hosts:\n  - name: all\n    domains: [\"*\"]\n    routes: []\n---\n\
             kind: Cluster\nname: liar\nendpoints: [\"{liar}\"]\n"
        ),
    )
    .await;
    let (ok, out, err) = rampart(&[
        "openapi",
        "import",
        spec.to_str().unwrap(),
        "--cluster",
        "liar",
        "--responses",
        "enforce",
        "--endpoints",
        &eps,
    ]);
    assert!(ok, "{out}{err}");
    let (_cp, ads) = spawn_control_plane(&eps).await;
    let mut proxy = spawn_xds_proxy(&ads, "tea");
    let addr = bound(&mut proxy, "listener=main local=").await;
    let routed = eventually(Duration::from_secs(15), || async {
        call(addr, http::Method::GET, "/tea", &[], "").await.status != http::StatusCode::NOT_FOUND
    })
    .await;
    assert!(routed, "{}", proxy.stderr());
    let r = call(addr, http::Method::GET, "/tea", &[], "").await;
    assert_eq!(r.status, http::StatusCode::BAD_GATEWAY, "{}", r.text());
    assert_eq!(r.header("content-type"), Some("application/problem+json"));
    assert_eq!(r.json()["errors"][0]["pointer"], "/status");
}

#[test]
fn lint_names_the_file_and_line_of_each_problem() {
    let dir = TempDir::new("openapi-lint");
    std::fs::write(
        dir.path("api.yaml"),
        "openapi: 3.1.0\ninfo:\n  title: Broken\npaths:\n  /a:\n    get:\n      \
         requestBody:\n        content:\n          application/json:\n            \
         schema: { $ref: \"parts.yaml#/components/schemas/Part\" }\n      responses: {}\n",
    )
    .unwrap();
    std::fs::write(
        dir.path("parts.yaml"),
        "components:\n  schemas:\n    Part:\n      properties:\n        y: { $ref: \"#/nowhere\" }\n",
    )
    .unwrap();
    let (ok, _, err) = rampart(&["openapi", "lint", dir.path("api.yaml").to_str().unwrap()]);
    assert!(!ok);
    let lines: Vec<&str> = err.lines().map(str::trim).collect();
    assert!(
        lines
            .iter()
            .any(|l| l.ends_with("api.yaml:2: #/info/version: missing (a string)")),
        "{err}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l
                .contains("parts.yaml:5: parts.yaml#/components/schemas/Part/properties/y/$ref")),
        "{err}"
    );
}

//! The filter seam, exercised with filters written against the public API (as the policy,
//! JWT, OpenAPI and WASM filters will be): order of phases, early local responses, async
//! decisions, per-request context shared between filters, and body observers.

mod common;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::*;
use http::{HeaderValue, Request, StatusCode, request, response};
use http_body_util::Full;
use rampart_proxy::body::ProxyBody;
use rampart_proxy::filter::{BodyObserver, BodyReject, Flow, HttpFilter, RequestContext, Verdict};
use rampart_proxy::snapshot::ExtraFilter;

/// Appends its name to `x-order` on the request and `x-order-resp` on the response, noting
/// whether the route's own filter already ran (`+route`).
struct Tagger(&'static str);

fn append(h: &mut http::HeaderMap, name: &'static str, v: &str) {
    let joined = match h.get(name).and_then(|x| x.to_str().ok()) {
        Some(old) => format!("{old},{v}"),
        None => v.to_owned(),
    };
    h.insert(name, HeaderValue::from_str(&joined).unwrap());
}

impl HttpFilter for Tagger {
    fn name(&self) -> &'static str {
        "tagger"
    }

    fn on_request_headers<'a>(
        &'a self,
        ctx: &'a mut RequestContext,
        req: &'a mut request::Parts,
    ) -> Flow<'a> {
        let seen_route = req.headers.contains_key("x-route-filter");
        append(
            &mut req.headers,
            "x-order",
            &format!("{}{}", self.0, if seen_route { "+route" } else { "" }),
        );
        req.headers
            .insert("x-ctx-route", HeaderValue::from_str(&ctx.route).unwrap());
        if let Some(c) = &ctx.cluster {
            req.headers
                .insert("x-ctx-cluster", HeaderValue::from_str(c).unwrap());
        }
        Flow::Continue
    }

    fn on_response_headers<'a>(
        &'a self,
        _ctx: &'a mut RequestContext,
        resp: &'a mut response::Parts,
    ) -> Flow<'a> {
        let seen_route = resp.headers.contains_key("x-route-filter-resp");
        append(
            &mut resp.headers,
            "x-order-resp",
            &format!("{}{}", self.0, if seen_route { "+route" } else { "" }),
        );
        Flow::Continue
    }
}

/// Answers 403 itself when `x-block` is present.
struct Blocker;

impl HttpFilter for Blocker {
    fn name(&self) -> &'static str {
        "blocker"
    }

    fn on_request_headers<'a>(
        &'a self,
        _ctx: &'a mut RequestContext,
        req: &'a mut request::Parts,
    ) -> Flow<'a> {
        if req.headers.contains_key("x-block") {
            let mut r = http::Response::new(ProxyBody::full("blocked by filter\n"));
            *r.status_mut() = StatusCode::FORBIDDEN;
            return Flow::Respond(r);
        }
        Flow::Continue
    }
}

/// Decides after an await, and passes a typed value to later filters via the context.
struct AsyncAuth;

#[derive(Clone)]
struct User(String);

impl HttpFilter for AsyncAuth {
    fn name(&self) -> &'static str {
        "async_auth"
    }

    fn on_request_headers<'a>(
        &'a self,
        ctx: &'a mut RequestContext,
        req: &'a mut request::Parts,
    ) -> Flow<'a> {
        Flow::Async(Box::pin(async move {
            tokio::time::sleep(Duration::from_millis(20)).await;
            match req.headers.get("x-user").and_then(|v| v.to_str().ok()) {
                Some(u) => {
                    ctx.extensions.insert(User(u.to_owned()));
                    Verdict::Continue
                }
                None if req.uri.path().starts_with("/private") => {
                    let mut r = http::Response::new(ProxyBody::full("who are you?\n"));
                    *r.status_mut() = StatusCode::UNAUTHORIZED;
                    Verdict::Respond(r)
                }
                None => Verdict::Continue,
            }
        }))
    }
}

/// Reads what `AsyncAuth` left in the context.
struct UserHeader;

impl HttpFilter for UserHeader {
    fn name(&self) -> &'static str {
        "user_header"
    }

    fn on_request_headers<'a>(
        &'a self,
        ctx: &'a mut RequestContext,
        req: &'a mut request::Parts,
    ) -> Flow<'a> {
        if let Some(User(u)) = ctx.extensions.get::<User>() {
            req.headers
                .insert("x-authenticated-user", HeaderValue::from_str(u).unwrap());
        }
        Flow::Continue
    }
}

/// Rejects request bodies containing "forbidden" (even split across chunks) and upper-cases
/// response bodies.
struct BodyFilter;

struct RejectWord {
    tail: Vec<u8>,
}

impl BodyObserver for RejectWord {
    /// It refuses or passes, never changes a byte.
    fn keeps_length(&self) -> bool {
        true
    }

    fn on_data(&mut self, chunk: &mut Bytes, _eos: bool) -> Result<(), BodyReject> {
        let mut window = std::mem::take(&mut self.tail);
        window.extend_from_slice(chunk);
        if window.windows(9).any(|w| w == b"forbidden") {
            return Err(BodyReject::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "body contains a forbidden word",
            ));
        }
        self.tail = window[window.len().saturating_sub(8)..].to_vec();
        Ok(())
    }
}

struct Upper;

impl BodyObserver for Upper {
    fn on_data(&mut self, chunk: &mut Bytes, _eos: bool) -> Result<(), BodyReject> {
        *chunk = Bytes::from(chunk.to_ascii_uppercase());
        Ok(())
    }
}

impl HttpFilter for BodyFilter {
    fn name(&self) -> &'static str {
        "body_filter"
    }

    fn request_body_observer(&self, _ctx: &RequestContext) -> Option<Box<dyn BodyObserver>> {
        Some(Box::new(RejectWord { tail: Vec::new() }))
    }

    fn response_body_observer(
        &self,
        _ctx: &RequestContext,
        resp: &response::Parts,
    ) -> Option<Box<dyn BodyObserver>> {
        resp.headers
            .contains_key("x-shout")
            .then(|| Box::new(Upper) as Box<dyn BodyObserver>)
    }
}

fn extra(filters: Vec<Arc<dyn HttpFilter>>) -> Vec<ExtraFilter> {
    filters
        .into_iter()
        .map(|filter| ExtraFilter {
            listener: "main".into(),
            filter,
        })
        .collect()
}

async fn setup() -> (Upstream, TestGateway) {
    let up = upstream("u").await;
    let routes = r#"
          - name: r
            forward: { cluster: u }
            response_headers: { set: { x-shout: "1" } }
            filters:
              - header_mutation: { request: { set: { x-route-filter: "1" } }, response: { set: { x-route-filter-resp: "1" } } }
"#;
    let clusters = format!("  - {{ name: u, endpoints: [\"{}\"] }}\n", up.addr);
    let tg = gateway_with(
        &config(routes, &clusters),
        extra(vec![
            Arc::new(Tagger("L1")),
            Arc::new(Blocker),
            Arc::new(AsyncAuth),
            Arc::new(UserHeader),
            Arc::new(Tagger("L2")),
            Arc::new(BodyFilter),
        ]),
    )
    .await;
    (up, tg)
}

#[tokio::test]
async fn phases_run_in_order_with_context() {
    let (_up, tg) = setup().await;
    let r = get(tg.addr, "/hello", &[("x-user", "alice")]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    // The response body was upper-cased by the observer: parse it back case-insensitively.
    let body = String::from_utf8_lossy(&r.body).to_lowercase();
    let j: serde_json::Value = serde_json::from_str(&body).unwrap();
    // Request: listener filters in order, then the route's.
    assert_eq!(j["headers"]["x-order"], "l1,l2");
    assert_eq!(j["headers"]["x-route-filter"], "1");
    assert_eq!(
        j["headers"]["x-authenticated-user"], "alice",
        "async filter result flowed via context"
    );
    assert_eq!(j["headers"]["x-ctx-route"], "r");
    assert_eq!(j["headers"]["x-ctx-cluster"], "u");
    // Response: the route's filters first, then listener filters in reverse.
    assert_eq!(r.header("x-order-resp"), Some("L2+route,L1+route"));
    assert!(
        r.body.iter().all(|b| !b.is_ascii_lowercase()),
        "body not upper-cased"
    );
    assert_eq!(
        r.header("content-length"),
        None,
        "length dropped when observers may resize"
    );
}

#[tokio::test]
async fn a_filter_can_answer_early_and_later_filters_are_skipped() {
    let (_up, tg) = setup().await;
    let r = get(tg.addr, "/x", &[("x-block", "1")]).await;
    assert_eq!(r.status, 403);
    // The route's response edits and body observers apply to local replies too.
    assert_eq!(r.text(), "BLOCKED BY FILTER\n");
    assert_eq!(r.header("x-upstream-name"), None, "upstream never reached");
    // Response filters still see the local response; L2 never ran on the request but runs on
    // the response, like Envoy's encoder filters.
    assert!(r.header("x-order-resp").is_some());

    let r = get(tg.addr, "/private/doc", &[]).await;
    assert_eq!(r.status, 401, "async filter denied");
    assert_eq!(r.text(), "WHO ARE YOU?\n");
}

#[tokio::test]
async fn body_observers_see_and_can_reject_streamed_chunks() {
    let (_up, tg) = setup().await;
    let c = h1();
    let post = |body: &'static str| {
        Request::post(format!("http://{}/echo", tg.addr))
            .header("x-user", "bob")
            .body(Full::new(Bytes::from_static(body.as_bytes())))
            .unwrap()
    };
    let r = send(&c, post("all fine here")).await;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.text(),
        "ALL FINE HERE",
        "echoed, then upper-cased on the way back"
    );

    let r = send(&c, post("this is forbidden text")).await;
    assert_eq!(r.status, 422, "{}", r.text());
    assert!(r.text().contains("FORBIDDEN WORD"), "{}", r.text());
}

#[tokio::test]
async fn an_observer_that_keeps_the_body_keeps_its_length_upstream() {
    let (_up, tg) = setup().await;
    let r = send(
        &h1(),
        Request::post(format!("http://{}/hello", tg.addr))
            .body(Full::new(Bytes::from_static(b"abc")))
            .unwrap(),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let body = String::from_utf8_lossy(&r.body).to_lowercase();
    let j: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(j["headers"]["content-length"], "3", "{j}");
    assert!(j["headers"].get("transfer-encoding").is_none(), "{j}");
}

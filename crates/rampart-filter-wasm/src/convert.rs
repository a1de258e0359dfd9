//! Between the gateway's requests and responses and what a plugin sees.

use std::borrow::Cow;

use bytes::Bytes;
use http::{HeaderName, HeaderValue, StatusCode, request, response};
use rampart_proxy::body::ProxyBody;
use rampart_proxy::filter::RequestContext;
use rampart_wasm::proxy_wasm::{CallResponse, Headers, HttpCall, LocalResponse, RequestInfo};

/// The request head a plugin sees: `:method`, `:path`, `:authority`, `:scheme`, then the
/// headers, moved (not copied) out of `req` until [`give_back_request`]. `host` is shown
/// as `:authority` only, as in Envoy.
pub(crate) fn take_request(req: &mut request::Parts) -> (Headers, Option<HeaderValue>) {
    let mut map = std::mem::take(&mut req.headers);
    let host = map.remove(http::header::HOST);
    let authority = host
        .as_ref()
        .and_then(|h| h.to_str().ok())
        .or_else(|| req.uri.authority().map(http::uri::Authority::as_str))
        .unwrap_or_default();
    let pseudo = vec![
        (Cow::Borrowed(":method"), req.method.as_str().to_owned()),
        (Cow::Borrowed(":path"), path(req).to_owned()),
        (Cow::Borrowed(":authority"), authority.to_owned()),
        (
            Cow::Borrowed(":scheme"),
            req.uri.scheme_str().unwrap_or("http").to_owned(),
        ),
    ];
    (Headers::new(pseudo, map), host)
}

fn path(req: &request::Parts) -> &str {
    req.uri.path_and_query().map_or("/", |p| p.as_str())
}

/// The headers back into `req`. The path was normalised and routed before any filter ran,
/// so a plugin's change to `:path` is refused (logged), not applied.
pub(crate) fn give_back_request(
    req: &mut request::Parts,
    (headers, host): (Headers, Option<HeaderValue>),
    plugin: &str,
) {
    let before = path(req);
    if let Some(p) = headers.pseudo(":path")
        && p != before
    {
        tracing::warn!(plugin, from = before, to = %p, "a wasm plugin's change to :path is not applied (paths are normalised before filters run)");
    }
    req.headers = headers.map;
    if let Some(h) = host {
        req.headers.insert(http::header::HOST, h);
    }
}

/// The response head a plugin sees: `:status`, then the headers (moved).
pub(crate) fn take_response(resp: &mut response::Parts) -> Headers {
    Headers::new(
        vec![(Cow::Borrowed(":status"), resp.status.as_str().to_owned())],
        std::mem::take(&mut resp.headers),
    )
}

/// The headers back into `resp`, with the plugin's `:status` if it set a valid one.
pub(crate) fn give_back_response(resp: &mut response::Parts, headers: Headers) {
    if let Some(s) = headers
        .pseudo(":status")
        .and_then(|s| s.parse::<u16>().ok())
        .and_then(|s| StatusCode::from_u16(s).ok())
    {
        resp.status = s;
    }
    resp.headers = headers.map;
}

/// Whether the request head says there is no body (the plugin is told end of stream).
pub(crate) fn no_body(req: &request::Parts) -> bool {
    let h = &req.headers;
    match h.get(http::header::CONTENT_LENGTH) {
        Some(v) => v.as_bytes() == b"0",
        None => {
            !h.contains_key(http::header::TRANSFER_ENCODING) && req.version < http::Version::HTTP_2
        }
    }
}

/// The request facts `proxy_get_property` answers from.
pub(crate) fn info(ctx: &RequestContext, req: &request::Parts) -> RequestInfo {
    RequestInfo {
        id: ctx.request_id.to_str().unwrap_or_default().to_owned(),
        method: req.method.clone(),
        path: req
            .uri
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| http::uri::PathAndQuery::from_static("/")),
        host: req.headers.get(http::header::HOST).cloned(),
        scheme: if req.uri.scheme_str() == Some("https") {
            "https"
        } else {
            "http"
        },
        protocol: req.version,
        time: std::time::SystemTime::now(),
        user_agent: req.headers.get(http::header::USER_AGENT).cloned(),
        referer: req.headers.get(http::header::REFERER).cloned(),
        source: ctx.client_addr,
        listener: ctx.listener.clone(),
        route: ctx.route.clone(),
        cluster: ctx.cluster.clone(),
        response_code: None,
        custom: Vec::new(),
    }
}

/// A plugin's HTTP call as a request to send: origin-form URI, `host` from `:authority`.
pub(crate) fn call_request(call: &HttpCall) -> Option<http::Request<Bytes>> {
    let mut req = http::Request::new(Bytes::from(call.body.clone()));
    *req.method_mut() = call.headers.pseudo(":method")?.parse().ok()?;
    *req.uri_mut() = call.headers.pseudo(":path")?.parse().ok()?;
    *req.headers_mut() = call.headers.map.clone();
    let authority = HeaderValue::from_str(call.headers.pseudo(":authority")?).ok()?;
    req.headers_mut().insert(http::header::HOST, authority);
    Some(req)
}

/// An answer as the plugin reads it.
pub(crate) fn call_response(resp: http::Response<Bytes>) -> CallResponse {
    let (parts, body) = resp.into_parts();
    CallResponse {
        headers: Headers::new(
            vec![(Cow::Borrowed(":status"), parts.status.as_str().to_owned())],
            parts.headers,
        ),
        body: body.to_vec(),
        trailers: Headers::default(),
    }
}

pub(crate) fn local(r: LocalResponse) -> http::Response<ProxyBody> {
    let mut resp = http::Response::new(ProxyBody::full(r.body));
    *resp.status_mut() =
        StatusCode::from_u16(r.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    for (k, v) in r.headers {
        if let (Ok(k), Ok(v)) = (
            HeaderName::from_bytes(k.as_bytes()),
            HeaderValue::from_str(&v),
        ) {
            resp.headers_mut().append(k, v);
        }
    }
    resp
}

pub(crate) fn plain(status: StatusCode, body: &'static str) -> http::Response<ProxyBody> {
    let mut resp = http::Response::new(ProxyBody::full(body));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

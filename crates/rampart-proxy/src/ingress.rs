//! The one view of a request: decided once, when it arrives, before routing and filters.
//!
//! After [`prepare`], `Host` holds the request's single normalised authority (from the
//! absolute-form target, `:authority` or `Host`, per RFC 9112 §3.2.2 and RFC 9113 §8.3.1),
//! the URI is origin-form with the normalised path, hop-by-hop headers are gone (an upgrade's
//! protocol is kept aside in [`UpgradeProtocol`]), and an `x-request-id` is present only when
//! a trusted proxy sent a well-formed one. Routing, filters, the policy input, redirects and
//! the upstream request all read these same values, so a check on one string and a use of
//! another cannot happen.

use std::borrow::Cow;
use std::net::IpAddr;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::uri::PathAndQuery;
use http::{Method, Response, StatusCode, Uri, Version, request};
use rampart_config::model::{EscapedSlashes, HttpOptions};
use rampart_router::normalize::{normalize_authority, normalize_path};

use crate::body::ProxyBody;
use crate::error::local_response;

/// The protocol an HTTP/1.1 request asked to switch to, kept from before hop-by-hop headers
/// were removed.
#[derive(Debug, Clone)]
pub(crate) struct UpgradeProtocol(pub(crate) HeaderValue);

/// Why ingress answered a request itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Refused {
    /// 400 with the reason.
    BadRequest(&'static str),
    /// 307 to the normalised target (`unescape_and_redirect`).
    Redirect(String),
}

impl Refused {
    pub(crate) fn to_response(&self) -> Response<ProxyBody> {
        match self {
            Self::BadRequest(reason) => bad_request(reason),
            Self::Redirect(target) => redirect(target),
        }
    }
}

/// Normalises `parts` in place, or says why the request is answered here.
pub(crate) fn prepare(
    parts: &mut request::Parts,
    http: &HttpOptions,
    scheme: &str,
    client: IpAddr,
) -> Result<(), Refused> {
    use Refused::BadRequest;
    if parts.method == Method::CONNECT {
        return Err(BadRequest("CONNECT is not supported"));
    }
    let default_port = if scheme == "https" { 443 } else { 80 };
    // The common case, a Host header already in normal form, is left as it is (no copy).
    let host = {
        let from_header = parts.uri.authority().is_none();
        let raw = authority(parts, default_port).map_err(BadRequest)?;
        match normalize_authority(raw, default_port).map_err(|e| BadRequest(e.reason()))? {
            Cow::Borrowed(_) if from_header => None,
            normal => Some(
                HeaderValue::from_str(&normal)
                    .map_err(|_| BadRequest("the request authority is not a valid header value"))?,
            ),
        }
    };

    let normal =
        normalize_path(parts.uri.path(), &http.path).map_err(|e| BadRequest(e.reason()))?;
    // Built only when the URI changes or a redirect needs it: the common request (an
    // origin-form target already in normal form) allocates nothing here.
    let target = || match parts.uri.query() {
        Some(q) => format!("{}?{q}", normal.path),
        None => normal.path.clone().into_owned(),
    };
    if normal.unescaped_slashes && http.path.escaped_slashes == EscapedSlashes::UnescapeAndRedirect
    {
        return Err(Refused::Redirect(target()));
    }
    let origin_form = parts.uri.scheme().is_none() && parts.uri.authority().is_none();
    if !origin_form || matches!(normal.path, Cow::Owned(_)) {
        let pq = PathAndQuery::from_maybe_shared(bytes::Bytes::from(target()))
            .map_err(|_| BadRequest("the request path is not valid after normalisation"))?;
        parts.uri = Uri::from(pq);
    }
    if let Some(host) = host {
        parts.headers.insert(header::HOST, host);
    }

    if let Some(proto) = upgrade_protocol(&parts.headers) {
        parts.extensions.insert(UpgradeProtocol(proto));
    }
    strip_hop_by_hop(&mut parts.headers);

    if let Some(id) = parts.headers.get(X_REQUEST_ID)
        && !(http.is_trusted_proxy(client) && valid_request_id(id))
    {
        parts.headers.remove(X_REQUEST_ID);
    }
    Ok(())
}

const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// The authority the request is for. HTTP/2: `:authority`, or `Host` when there is none, and
/// a `Host` that disagrees with `:authority` is refused. HTTP/1.1: an absolute-form target's
/// authority replaces `Host`. More than one `Host` is refused.
fn authority(parts: &request::Parts, default_port: u16) -> Result<&str, &'static str> {
    let mut hosts = parts.headers.get_all(header::HOST).iter();
    let host = hosts.next();
    if hosts.next().is_some() {
        return Err("the request has more than one Host header");
    }
    let host = match host {
        Some(h) => Some(h.to_str().map_err(|_| "the Host header is not valid")?),
        None => None,
    };
    let target = parts.uri.authority().map(http::uri::Authority::as_str);
    match (target, host) {
        (Some(t), Some(h)) if parts.version >= Version::HTTP_2 => {
            let same = normalize_authority(t, default_port).ok()
                == normalize_authority(h, default_port).ok();
            if same {
                Ok(t)
            } else {
                Err("the Host header disagrees with the :authority pseudo-header")
            }
        }
        (Some(t), _) => Ok(t),
        (None, Some(h)) => Ok(h),
        (None, None) => Err("the request has no Host header or :authority"),
    }
}

/// A well-formed request id: 1–128 characters of letters, digits and `-_.:`.
fn valid_request_id(v: &HeaderValue) -> bool {
    let b = v.as_bytes();
    !b.is_empty()
        && b.len() <= 128
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.' | b':'))
}

/// A request refused before routing, as an RFC 9457 problem document (what the gateway's API
/// validation answers too, so a client reads one format for "your request is malformed").
fn bad_request(reason: &str) -> Response<ProxyBody> {
    let doc = serde_json::json!({
        "type": "about:blank",
        "title": "Bad Request",
        "status": 400,
        "detail": reason,
    });
    let mut resp = local_response(StatusCode::BAD_REQUEST, &doc.to_string());
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/problem+json"),
    );
    if let Ok(v) = HeaderValue::from_str(reason) {
        resp.headers_mut().insert("x-rampart-error", v);
    }
    resp
}

fn redirect(target: &str) -> Response<ProxyBody> {
    match HeaderValue::from_str(target) {
        Ok(location) => {
            let mut resp = Response::new(ProxyBody::empty());
            *resp.status_mut() = StatusCode::TEMPORARY_REDIRECT;
            resp.headers_mut().insert(header::LOCATION, location);
            resp
        }
        Err(_) => bad_request("the request path is not valid after normalisation"),
    }
}

/// The protocol an HTTP/1.1 request asks to switch to (`Connection: upgrade` + `Upgrade`).
fn upgrade_protocol(h: &HeaderMap) -> Option<HeaderValue> {
    let asks = h.get_all(header::CONNECTION).iter().any(|v| {
        v.to_str().is_ok_and(|s| {
            s.split(',')
                .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
        })
    });
    asks.then(|| h.get(header::UPGRADE).cloned()).flatten()
}

/// Connection-specific headers that must not be forwarded (RFC 9110 §7.6.1).
const HOP_BY_HOP: [HeaderName; 7] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

/// Removes hop-by-hop headers, including every header a `Connection` header names (from
/// every `Connection` header, not only the first).
pub(crate) fn strip_hop_by_hop(h: &mut HeaderMap) {
    // Most messages carry none: one pass over the (few) names beats seven hashed removals.
    if !h.keys().any(|k| HOP_BY_HOP.contains(k)) {
        return;
    }
    let named: Vec<HeaderName> = h
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
        .collect();
    for n in named {
        // A client must not be able to strip what identifies the request to the upstream.
        if n != header::HOST {
            h.remove(n);
        }
    }
    for n in &HOP_BY_HOP {
        h.remove(n);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(req: http::Request<()>) -> request::Parts {
        req.into_parts().0
    }

    fn prep(p: &mut request::Parts) -> Result<(), StatusCode> {
        prepare(p, &HttpOptions::default(), "http", [127, 0, 0, 1].into())
            .map_err(|r| r.to_response().status())
    }

    #[test]
    fn absolute_form_authority_replaces_host() {
        let mut p = parts(
            http::Request::post("http://X./api/orders")
                .header("host", "acme.localhost")
                .body(())
                .unwrap(),
        );
        prep(&mut p).unwrap();
        assert_eq!(p.headers["host"], "x");
        assert_eq!(p.uri, "/api/orders");
    }

    #[test]
    fn h2_host_must_agree_with_authority() {
        let mut p = parts(
            http::Request::get("http://acme.localhost/a")
                .version(Version::HTTP_2)
                .header("host", "globex.localhost")
                .body(())
                .unwrap(),
        );
        assert_eq!(prep(&mut p), Err(StatusCode::BAD_REQUEST));
        let mut p = parts(
            http::Request::get("http://acme.localhost:80/a")
                .version(Version::HTTP_2)
                .header("host", "ACME.localhost.")
                .body(())
                .unwrap(),
        );
        prep(&mut p).unwrap();
        assert_eq!(p.headers["host"], "acme.localhost");
    }

    #[test]
    fn two_hosts_and_no_host_are_refused() {
        let mut p = parts(
            http::Request::get("/")
                .header("host", "a")
                .header("host", "b")
                .body(())
                .unwrap(),
        );
        assert_eq!(prep(&mut p), Err(StatusCode::BAD_REQUEST));
        let mut p = parts(http::Request::get("/").body(()).unwrap());
        assert_eq!(prep(&mut p), Err(StatusCode::BAD_REQUEST));
    }

    #[test]
    fn hop_by_hop_is_stripped_once_and_upgrade_kept_aside() {
        let mut p = parts(
            http::Request::get("/ws")
                .header("host", "a")
                .header("connection", "keep-alive, x-secret")
                .header("connection", "upgrade, x-other")
                .header("upgrade", "websocket")
                .header("x-secret", "1")
                .header("x-other", "1")
                .header("te", "trailers")
                .header("x-keep", "1")
                .body(())
                .unwrap(),
        );
        prep(&mut p).unwrap();
        let names: Vec<&str> = p.headers.keys().map(HeaderName::as_str).collect();
        assert_eq!(names, ["host", "x-keep"]);
        assert_eq!(
            p.extensions.get::<UpgradeProtocol>().map(|u| u.0.clone()),
            Some(HeaderValue::from_static("websocket"))
        );
    }

    #[test]
    fn request_ids_only_from_trusted_proxies_and_well_formed() {
        let mut opts = HttpOptions::default();
        opts.trusted_proxies.push("10.0.0.0/8".parse().unwrap());
        let req = |id: &str| {
            parts(
                http::Request::get("/")
                    .header("host", "a")
                    .header("x-request-id", id)
                    .body(())
                    .unwrap(),
            )
        };
        let mut p = req("abc-123");
        assert!(prepare(&mut p, &opts, "http", [10, 1, 1, 1].into()).is_ok());
        assert_eq!(p.headers["x-request-id"], "abc-123");
        let mut p = req("abc-123");
        assert!(prepare(&mut p, &opts, "http", [192, 168, 1, 1].into()).is_ok());
        assert!(!p.headers.contains_key("x-request-id"));
        let mut p = req("a\"b c");
        assert!(prepare(&mut p, &opts, "http", [10, 1, 1, 1].into()).is_ok());
        assert!(!p.headers.contains_key("x-request-id"));
    }

    #[test]
    fn escaped_slashes_redirect_when_asked() {
        let mut opts = HttpOptions::default();
        opts.path.escaped_slashes = EscapedSlashes::UnescapeAndRedirect;
        let mut p = parts(
            http::Request::get("/a%2Fb?x=1")
                .header("host", "a")
                .body(())
                .unwrap(),
        );
        let r = prepare(&mut p, &opts, "http", [127, 0, 0, 1].into());
        assert_eq!(r, Err(Refused::Redirect("/a/b?x=1".into())));
        let r = r.unwrap_err().to_response();
        assert_eq!(r.status(), StatusCode::TEMPORARY_REDIRECT);
        assert_eq!(r.headers()["location"], "/a/b?x=1");
    }
}

//! Answers the proxy makes itself, from the route alone: direct responses and redirects.
//! Pure functions of the route and the (normalised) request.

use http::header::{self, HeaderValue};
use http::{Response, request};
use rampart_config::model::{DirectResponse, PathOptions, Redirect, Route};
use rampart_router::normalize::normalize_rewritten;
use rampart_router::rewrite_path;

use super::authority;
use crate::body::ProxyBody;
use crate::error::ProxyError;

pub(super) fn direct(d: &DirectResponse) -> Response<ProxyBody> {
    let mut resp = Response::new(ProxyBody::full(d.body.clone()));
    *resp.status_mut() = d.status;
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, d.content_type.clone());
    resp
}

/// A configured redirect. Without a configured scheme, host or port the Location is
/// relative (RFC 9110 §10.2.2), so the client's Host is never reflected into it; otherwise it
/// is absolute, built from the configured parts and the normalised authority.
pub(super) fn redirect(
    r: &Redirect,
    route: &Route,
    parts: &request::Parts,
    default_scheme: &str,
    path_options: &PathOptions,
) -> Response<ProxyBody> {
    let path = match (&r.path, &r.prefix_rewrite) {
        (Some(p), _) => p.clone(),
        (None, Some(pre)) => {
            let p = rewrite_path(route.matcher.path.as_ref(), parts.uri.path(), pre);
            match normalize_rewritten(&p, pre, path_options) {
                Ok(p) => p,
                Err(e) => return ProxyError::BadRewrite { reason: e.reason() }.to_response(),
            }
        }
        (None, None) => parts.uri.path().to_owned(),
    };
    let mut location = String::new();
    if r.scheme.is_some() || r.host.is_some() || r.port.is_some() {
        location = origin(r, authority(parts).unwrap_or_default(), default_scheme);
    }
    location.push_str(&path);
    if let (Some(q), false) = (parts.uri.query(), r.strip_query) {
        location.push('?');
        location.push_str(q);
    }
    let mut resp = Response::new(ProxyBody::empty());
    *resp.status_mut() = r.status;
    match HeaderValue::from_str(&location) {
        Ok(v) => {
            resp.headers_mut().insert(header::LOCATION, v);
            resp
        }
        Err(_) => {
            ProxyError::Internal("redirect target is not a valid header value".into()).to_response()
        }
    }
}

/// `scheme://host[:port]` of an absolute redirect: the configured parts, else the request's.
fn origin(r: &Redirect, request_authority: &str, default_scheme: &str) -> String {
    let (req_host, req_port) = split_host_port(request_authority);
    let scheme = r.scheme.as_deref().unwrap_or(default_scheme);
    let host = r.host.as_deref().unwrap_or(req_host);
    // A new host drops the request's port unless one is configured.
    let port = r.port.map(|p| p.to_string()).or_else(|| {
        r.host
            .is_none()
            .then(|| req_port.map(str::to_owned))
            .flatten()
    });
    let mut out = format!("{scheme}://{host}");
    if let Some(p) = port {
        out.push(':');
        out.push_str(&p);
    }
    out
}

/// `host:port` → (`host`, `port`); `[v6]:port` → (`[v6]`, `port`).
fn split_host_port(authority: &str) -> (&str, Option<&str>) {
    match authority.rsplit_once(':') {
        Some((h, p))
            if !p.is_empty()
                && p.bytes().all(|b| b.is_ascii_digit())
                && (!h.contains(':') || h.ends_with(']')) =>
        {
            (h, Some(p))
        }
        _ => (authority, None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_port_split() {
        assert_eq!(split_host_port("a.com:80"), ("a.com", Some("80")));
        assert_eq!(split_host_port("a.com"), ("a.com", None));
        assert_eq!(split_host_port("[::1]:8080"), ("[::1]", Some("8080")));
        assert_eq!(split_host_port("[::1]"), ("[::1]", None));
        assert_eq!(split_host_port("a.com:"), ("a.com:", None));
    }

    fn redirect_to(scheme: Option<&str>, host: Option<&str>, port: Option<u16>) -> Redirect {
        Redirect {
            scheme: scheme.map(str::to_owned),
            host: host.map(str::to_owned),
            port,
            path: None,
            prefix_rewrite: None,
            status: http::StatusCode::FOUND,
            strip_query: false,
        }
    }

    #[test]
    fn absolute_redirects_keep_or_drop_the_port() {
        let https = redirect_to(Some("https"), None, None);
        assert_eq!(origin(&https, "a.com:8080", "http"), "https://a.com:8080");
        let moved = redirect_to(None, Some("b.com"), None);
        assert_eq!(
            origin(&moved, "a.com:8080", "http"),
            "http://b.com",
            "a new host drops the port"
        );
        let port = redirect_to(None, None, Some(8443));
        assert_eq!(origin(&port, "[::1]:80", "https"), "https://[::1]:8443");
    }
}

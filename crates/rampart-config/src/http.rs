//! A listener's HTTP protocol options: how request paths are normalised, which headers only
//! Rampart itself may set, and which peers are trusted to send request ids.
//!
//! ```yaml
//! listeners:
//!   - name: public
//!     http:
//!       normalize_path: true          # RFC 3986 normalisation (default true)
//!       merge_slashes: true           # "//a" is "/a" (default true)
//!       escaped_slashes: reject       # reject | keep | unescape_and_redirect | unescape_and_forward
//!       trusted_headers: [x-roles]    # removed from every client request before any filter
//!       trusted_proxies: [10.0.0.0/8] # their x-request-id is kept (others get a new one)
//! ```

use std::net::IpAddr;

use http::HeaderName;
use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::FieldError;

/// What to do with `%2F` and `%5C` in a path (Envoy's `path_with_escaped_slashes_action`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum EscapedSlashes {
    /// 400: the safe default, since servers disagree on whether `%2F` separates segments.
    #[default]
    Reject,
    /// Forward as written (upper-case hex); routing and policy see the encoded form.
    Keep,
    /// Decode to `/` and answer 307 with the normalised path.
    UnescapeAndRedirect,
    /// Decode to `/` and carry on with the normalised path.
    UnescapeAndForward,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PathOptions {
    /// Decode unreserved escapes and remove dot segments.
    pub normalize: bool,
    pub merge_slashes: bool,
    pub escaped_slashes: EscapedSlashes,
}

impl Default for PathOptions {
    fn default() -> Self {
        Self {
            normalize: true,
            merge_slashes: true,
            escaped_slashes: EscapedSlashes::Reject,
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HttpOptions {
    pub path: PathOptions,
    /// Headers removed from every client request before filters run, so that only a filter
    /// (or the policy) can set them for the upstream.
    pub trusted_headers: Vec<HeaderName>,
    /// Peers whose `x-request-id` is kept; anyone else's is replaced.
    pub trusted_proxies: Vec<IpNet>,
}

impl HttpOptions {
    pub fn is_trusted_proxy(&self, ip: IpAddr) -> bool {
        self.trusted_proxies.iter().any(|n| n.contains(&ip))
    }
}

#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RawHttpOptions {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub normalize_path: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub merge_slashes: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub escaped_slashes: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub trusted_headers: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub trusted_proxies: Vec<String>,
}

pub(crate) fn validate_http(path: &str, raw: &RawHttpOptions) -> (HttpOptions, Vec<FieldError>) {
    let mut errors = Vec::new();
    let d = PathOptions::default();
    let escaped_slashes = match raw.escaped_slashes.as_deref() {
        None => d.escaped_slashes,
        Some("reject") => EscapedSlashes::Reject,
        Some("keep") => EscapedSlashes::Keep,
        Some("unescape_and_redirect") => EscapedSlashes::UnescapeAndRedirect,
        Some("unescape_and_forward") => EscapedSlashes::UnescapeAndForward,
        Some(other) => {
            errors.push(FieldError {
                path: format!("{path}.escaped_slashes"),
                rule: format!(
                    "unknown action {other:?}: use reject, keep, unescape_and_redirect or unescape_and_forward"
                ),
            });
            d.escaped_slashes
        }
    };
    let trusted_headers = header_names(
        &mut errors,
        &format!("{path}.trusted_headers"),
        &raw.trusted_headers,
    );
    let trusted_proxies = raw
        .trusted_proxies
        .iter()
        .enumerate()
        .filter_map(|(i, s)| {
            let parsed = s
                .parse::<IpNet>()
                .or_else(|_| s.parse::<IpAddr>().map(IpNet::from));
            parsed
                .map_err(|_| {
                    errors.push(FieldError {
                        path: format!("{path}.trusted_proxies[{i}]"),
                        rule: format!("{s:?} is not an IP address or CIDR block"),
                    });
                })
                .ok()
        })
        .collect();
    let options = HttpOptions {
        path: PathOptions {
            normalize: raw.normalize_path.unwrap_or(d.normalize),
            merge_slashes: raw.merge_slashes.unwrap_or(d.merge_slashes),
            escaped_slashes,
        },
        trusted_headers,
        trusted_proxies,
    };
    (options, errors)
}

/// Header names that a client may not send: each is checked and lower-cased; hop-by-hop and
/// pseudo headers are refused (they never reach an upstream anyway).
pub(crate) fn header_names(
    errors: &mut Vec<FieldError>,
    path: &str,
    names: &[String],
) -> Vec<HeaderName> {
    names
        .iter()
        .enumerate()
        .filter_map(|(i, n)| {
            let refuse = |errors: &mut Vec<FieldError>, rule: String| {
                errors.push(FieldError {
                    path: format!("{path}[{i}]"),
                    rule,
                });
            };
            match HeaderName::from_bytes(n.as_bytes()) {
                Ok(h) if h == http::header::HOST => {
                    refuse(errors, "host cannot be a trusted header".to_owned());
                    None
                }
                Ok(h) => Some(h),
                Err(_) => {
                    refuse(errors, format!("invalid header name {n:?}"));
                    None
                }
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_the_safe_ones() {
        let (o, e) = validate_http("l", &RawHttpOptions::default());
        assert!(e.is_empty());
        assert!(o.path.normalize && o.path.merge_slashes);
        assert_eq!(o.path.escaped_slashes, EscapedSlashes::Reject);
    }

    #[test]
    fn errors_name_the_field() {
        let raw = RawHttpOptions {
            escaped_slashes: Some("drop".into()),
            trusted_headers: vec!["x-ok".into(), "bad header".into(), "Host".into()],
            trusted_proxies: vec!["10.0.0.0/8".into(), "::1".into(), "nope".into()],
            ..RawHttpOptions::default()
        };
        let (o, e) = validate_http("listeners[0].http", &raw);
        let paths: Vec<&str> = e.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "listeners[0].http.escaped_slashes",
                "listeners[0].http.trusted_headers[1]",
                "listeners[0].http.trusted_headers[2]",
                "listeners[0].http.trusted_proxies[2]",
            ]
        );
        assert_eq!(o.trusted_headers, [HeaderName::from_static("x-ok")]);
        assert!(o.is_trusted_proxy("10.1.2.3".parse().unwrap()));
        assert!(o.is_trusted_proxy("::1".parse().unwrap()));
        assert!(!o.is_trusted_proxy("11.0.0.1".parse().unwrap()));
    }
}

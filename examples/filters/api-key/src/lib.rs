//! `api_key`: an example filter that lives outside `rampart-proxy`.
//!
//! It shows the whole plug-in surface: a config type read and checked with field paths, a
//! [`FilterFactory`] registered by name, and an [`HttpFilter`] on the request path.
//!
//! ```yaml
//! filters:
//!   - api_key:
//!       header: x-api-key          # where clients send the key (default x-api-key)
//!       clients:                   # client name -> key (at least 16 characters)
//!         billing: "k3y-for-billing-0001"
//!         ci: "k3y-for-ci-000000002"
//! ```
//!
//! A request without a known key is answered 401 here. A known key is removed before the
//! request goes on, and the upstream learns who called in `x-api-client`. Keys are compared
//! in constant time, each against every configured key, so timing tells nothing about them.

use std::collections::BTreeMap;
use std::sync::Arc;

use http::{HeaderName, HeaderValue, StatusCode, request};
use rampart_config::FieldError;
use rampart_config::filters::typed;
use rampart_proxy::body::ProxyBody;
use rampart_proxy::filter::{
    BuildEnv, FilterBuildError, FilterFactory, FilterRef, Flow, HttpFilter, RequestContext,
};

/// Shortest key accepted: shorter ones are guessable.
pub const MIN_KEY_LEN: usize = 16;

/// The header the upstream reads the caller's name from.
pub const CLIENT_HEADER: &str = "x-api-client";

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct RawApiKey {
    #[serde(default)]
    header: Option<String>,
    clients: BTreeMap<String, String>,
}

/// A checked `api_key` config.
#[derive(Debug, Clone)]
pub struct ApiKeyConfig {
    pub header: HeaderName,
    /// `(client name, key)`.
    pub clients: Vec<(HeaderValue, Vec<u8>)>,
}

/// Registers as `api_key`.
pub struct ApiKeyFactory;

impl FilterFactory for ApiKeyFactory {
    type Config = ApiKeyConfig;

    fn name(&self) -> &'static str {
        "api_key"
    }

    fn parse(
        &self,
        path: &str,
        config: &serde_json::Value,
    ) -> Result<ApiKeyConfig, Vec<FieldError>> {
        let raw: RawApiKey = typed(path, config).map_err(|e| vec![e])?;
        let mut errors = Vec::new();
        let mut err = |field: String, rule: String| errors.push(FieldError { path: field, rule });
        let header_text = raw.header.as_deref().unwrap_or("x-api-key");
        let header = HeaderName::from_bytes(header_text.as_bytes());
        if header.is_err() {
            err(
                format!("{path}.header"),
                format!("invalid header name {header_text:?}"),
            );
        }
        if raw.clients.is_empty() {
            err(
                format!("{path}.clients"),
                "must name at least one client".into(),
            );
        }
        let mut clients = Vec::with_capacity(raw.clients.len());
        for (name, key) in &raw.clients {
            let at = format!("{path}.clients.{name}");
            let value = HeaderValue::from_str(name);
            if value.is_err() {
                err(
                    at.clone(),
                    format!("client name {name:?} is not a valid header value"),
                );
            }
            if key.len() < MIN_KEY_LEN {
                err(
                    at.clone(),
                    format!("the key must be at least {MIN_KEY_LEN} characters"),
                );
            }
            if let Ok(v) = value {
                clients.push((v, key.as_bytes().to_vec()));
            }
        }
        match header {
            Ok(header) if errors.is_empty() => Ok(ApiKeyConfig { header, clients }),
            _ => Err(errors),
        }
    }

    fn build(&self, config: ApiKeyConfig, _env: &BuildEnv) -> Result<FilterRef, FilterBuildError> {
        Ok(Arc::new(ApiKeyFilter(config)))
    }
}

pub struct ApiKeyFilter(ApiKeyConfig);

impl ApiKeyFilter {
    /// The client whose key `sent` is, comparing with every key whatever matches.
    fn client(&self, sent: &[u8]) -> Option<&HeaderValue> {
        let mut found = None;
        for (name, key) in &self.0.clients {
            if constant_time_eq(sent, key) {
                found = Some(name);
            }
        }
        found
    }
}

/// Equal slices, in time that depends only on their lengths.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl HttpFilter for ApiKeyFilter {
    fn name(&self) -> &'static str {
        "api_key"
    }

    fn on_request_headers<'a>(
        &'a self,
        _ctx: &'a mut RequestContext,
        req: &'a mut request::Parts,
    ) -> Flow<'a> {
        let client = req
            .headers
            .get(&self.0.header)
            .and_then(|v| self.client(v.as_bytes()))
            .cloned();
        // Never forwarded, known or not; nor a client name the caller made up.
        req.headers.remove(&self.0.header);
        req.headers.remove(CLIENT_HEADER);
        match client {
            Some(name) => {
                req.headers.insert(CLIENT_HEADER, name);
                Flow::Continue
            }
            None => {
                let mut resp =
                    http::Response::new(ProxyBody::full("a valid API key is required\n"));
                *resp.status_mut() = StatusCode::UNAUTHORIZED;
                resp.headers_mut().insert(
                    http::header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("ApiKey"),
                );
                Flow::Respond(resp)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(v: &serde_json::Value) -> Result<ApiKeyConfig, Vec<String>> {
        ApiKeyFactory
            .parse("listeners[0].filters[0].api_key", v)
            .map_err(|e| e.iter().map(ToString::to_string).collect())
    }

    #[test]
    fn errors_name_their_fields() {
        let errs = parse(&serde_json::json!({"header": "bad header", "clients": {"ci": "short"}}))
            .unwrap_err();
        assert_eq!(
            errs,
            [
                "listeners[0].filters[0].api_key.header: invalid header name \"bad header\"",
                "listeners[0].filters[0].api_key.clients.ci: the key must be at least 16 characters",
            ]
        );
        let errs = parse(&serde_json::json!({"clients": {}, "extra": 1})).unwrap_err();
        assert!(
            errs[0].starts_with("listeners[0].filters[0].api_key.extra: unknown field"),
            "{errs:?}"
        );
        let errs = parse(&serde_json::json!({"clients": {}})).unwrap_err();
        assert_eq!(
            errs,
            ["listeners[0].filters[0].api_key.clients: must name at least one client"]
        );
    }

    #[test]
    fn keys_pick_their_client() {
        let cfg = parse(&serde_json::json!({"clients": {
            "a": "aaaaaaaaaaaaaaaa", "b": "bbbbbbbbbbbbbbbb"
        }}))
        .unwrap();
        assert_eq!(cfg.header, "x-api-key");
        let f = ApiKeyFilter(cfg);
        assert_eq!(f.client(b"bbbbbbbbbbbbbbbb").unwrap(), "b");
        assert!(f.client(b"bbbbbbbbbbbbbbb").is_none());
        assert!(f.client(b"").is_none());
        assert!(f.client(b"cccccccccccccccc").is_none());
    }
}

//! The `authz` filter: asks the tenant's Rego policy whether a request may go on.
//!
//! ```text
//!  request headers ──► tenant (fixed, host label, header, JWT claim)
//!                  ──► input document ──► PolicyEngine::decide ──► allow: add/remove upstream headers
//!                                                              └─► deny: the policy's status, headers, body
//!                                                              └─► error: 403 (or pass, `on_error: allow`)
//! ```
//!
//! The input document (`input` in Rego):
//!
//! ```json
//! {"method": "GET", "path": "/api/orders", "parsed_path": ["api", "orders"],
//!  "query": {"page": ["2"]}, "headers": {"host": "api.example.com", ...},
//!  "host": "api.example.com", "source": {"address": "10.0.0.7", "port": 51234},
//!  "jwt": {...verified claims, when the jwt filter ran...},
//!  "listener": "public", "route": "orders", "cluster": "orders", "tenant": "acme"}
//! ```
//!
//! Decisions are synchronous on the worker thread: they take microseconds, and the engine's
//! time and instruction limits stop a runaway policy.

use std::collections::BTreeMap;
use std::sync::Arc;

use http::{HeaderName, HeaderValue, StatusCode, request, response};
use rampart_config::policy::{Authz, TenantSource};
use rampart_policy::{PolicyEngine, Value};

use crate::error::local_response;
use crate::filter::{
    ApiOperation, BuildEnv, FilterBuildError, FilterFactory, FilterRef, Flow, HttpFilter,
    JwtClaims, RequestContext,
};
use crate::policy::PolicyRuntime;

/// Builds `authz` filters on the gateway's policy engine (provided in the [`BuildEnv`]).
pub struct AuthzFactory;

impl FilterFactory for AuthzFactory {
    type Config = Authz;

    fn name(&self) -> &'static str {
        "authz"
    }

    fn parse(
        &self,
        path: &str,
        config: &serde_json::Value,
    ) -> Result<Authz, Vec<rampart_config::FieldError>> {
        rampart_config::policy::parse_authz(path, config)
    }

    fn build(&self, config: Authz, env: &BuildEnv) -> Result<FilterRef, FilterBuildError> {
        let engine = env
            .get::<Arc<PolicyRuntime>>()
            .and_then(|p| p.engine())
            .ok_or_else(|| FilterBuildError {
                field: String::new(),
                message: "no policy engine (the config has no policy section)".into(),
            })?;
        Ok(Arc::new(AuthzFilter::new(engine, config)))
    }
}

/// Headers the policy wants on the response, carried from the request phase.
#[derive(Clone)]
struct ResponseHeaders(Vec<(HeaderName, HeaderValue)>);

pub struct AuthzFilter {
    engine: Arc<PolicyEngine>,
    config: Authz,
    /// A fixed tenant, made once (requests share it).
    fixed: Option<Arc<str>>,
}

impl AuthzFilter {
    pub fn new(engine: Arc<PolicyEngine>, config: Authz) -> Self {
        let fixed = match &config.tenant {
            TenantSource::Fixed(t) => Some(Arc::from(t.as_str())),
            _ => None,
        };
        Self {
            engine,
            config,
            fixed,
        }
    }

    fn tenant(&self, ctx: &RequestContext, req: &request::Parts) -> Option<Arc<str>> {
        match &self.config.tenant {
            TenantSource::Fixed(_) => self.fixed.clone(),
            TenantSource::Host => {
                let host = host(req)?;
                let label = host.split('.').next()?;
                (!label.is_empty()).then(|| Arc::from(label.to_ascii_lowercase()))
            }
            TenantSource::Header(h) => req
                .headers
                .get(h)
                .and_then(|v| v.to_str().ok())
                .filter(|v| !v.is_empty())
                .map(Arc::from),
            TenantSource::Claim(c) => {
                let claims = ctx.extensions.get::<JwtClaims>()?;
                match claims.0.get(c)? {
                    serde_json::Value::String(s) if !s.is_empty() => Some(Arc::from(s.as_str())),
                    _ => None,
                }
            }
        }
    }

    /// No decision: logged, counted as a decision error, then fail closed (or open).
    fn fail(&self, reason: &str, counted: bool) -> Flow<'static> {
        tracing::warn!(reason, "authz: no decision");
        if !counted {
            self.engine.metrics().errors.inc();
        }
        if self.config.allow_on_error {
            Flow::Continue
        } else {
            Flow::Respond(local_response(
                StatusCode::FORBIDDEN,
                "access denied: authorization failed\n",
            ))
        }
    }
}

fn host(req: &request::Parts) -> Option<&str> {
    let h = req
        .headers
        .get(http::header::HOST)
        .and_then(|v| v.to_str().ok())
        .or_else(|| req.uri.authority().map(http::uri::Authority::as_str))?;
    // Strip a port (and keep IPv6 literals whole).
    Some(match h.rsplit_once(':') {
        Some((name, port))
            if !name.ends_with(']')
                && port.bytes().all(|b| b.is_ascii_digit())
                && !name.contains(':') =>
        {
            name
        }
        Some((name, port)) if name.ends_with(']') && port.bytes().all(|b| b.is_ascii_digit()) => {
            name
        }
        _ => h,
    })
}

/// `?a=1&a=2&b` → `{"a": ["1", "2"], "b": [""]}`, percent- and `+`-decoded.
pub fn parse_query(q: &str) -> BTreeMap<String, Vec<String>> {
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (k, v) in form_urlencoded::parse(q.as_bytes()) {
        out.entry(k.into_owned()).or_default().push(v.into_owned());
    }
    out
}

/// The input document for one request.
pub fn input(ctx: &RequestContext, req: &request::Parts, tenant: &str) -> Value {
    let mut doc: BTreeMap<Value, Value> = BTreeMap::new();
    let s = |x: &str| Value::from(x);
    doc.insert(s("method"), s(req.method.as_str()));
    let path = req.uri.path();
    doc.insert(s("path"), s(path));
    doc.insert(
        s("parsed_path"),
        Value::from(
            path.split('/')
                .filter(|p| !p.is_empty())
                .map(Value::from)
                .collect::<Vec<_>>(),
        ),
    );
    let query: BTreeMap<Value, Value> = parse_query(req.uri.query().unwrap_or(""))
        .into_iter()
        .map(|(k, vs)| {
            (
                Value::from(k),
                Value::from(vs.into_iter().map(Value::from).collect::<Vec<_>>()),
            )
        })
        .collect();
    doc.insert(s("query"), Value::from(query));
    let mut headers: BTreeMap<Value, Value> = BTreeMap::new();
    for name in req.headers.keys() {
        // Repeated headers are joined as Envoy does for its ext_authz input; the common single
        // value is copied once, without the join's intermediate allocations.
        let mut values = req.headers.get_all(name).iter();
        let mut joined: String = values
            .next()
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
            .unwrap_or_default();
        for v in values {
            joined.push_str(", ");
            joined.push_str(&String::from_utf8_lossy(v.as_bytes()));
        }
        headers.insert(s(name.as_str()), Value::from(joined));
    }
    doc.insert(s("headers"), Value::from(headers));
    if let Some(h) = host(req) {
        doc.insert(s("host"), s(h));
    }
    let mut source: BTreeMap<Value, Value> = BTreeMap::new();
    source.insert(s("address"), Value::from(ctx.client_addr.ip().to_string()));
    source.insert(s("port"), Value::from(u64::from(ctx.client_addr.port())));
    doc.insert(s("source"), Value::from(source));
    if let Some(claims) = ctx.extensions.get::<JwtClaims>() {
        doc.insert(s("jwt"), Value::from((*claims.0).clone()));
    }
    if let Some(op) = ctx.extensions.get::<ApiOperation>() {
        doc.insert(s("operation"), Value::from((*op.0).clone()));
    }
    doc.insert(s("listener"), s(&ctx.listener));
    doc.insert(s("route"), s(&ctx.route));
    if let Some(c) = &ctx.cluster {
        doc.insert(s("cluster"), s(c));
    }
    doc.insert(s("tenant"), s(tenant));
    Value::from(doc)
}

fn header_pairs(pairs: &[(String, String)]) -> Vec<(HeaderName, HeaderValue)> {
    pairs
        .iter()
        .filter_map(|(k, v)| {
            let name = HeaderName::from_bytes(k.as_bytes()).ok();
            let value = HeaderValue::from_str(v).ok();
            if name.is_none() || value.is_none() {
                tracing::warn!(
                    header = k,
                    "authz: the policy returned an invalid header; skipped"
                );
            }
            Some((name?, value?))
        })
        .collect()
}

impl HttpFilter for AuthzFilter {
    fn name(&self) -> &'static str {
        "authz"
    }

    fn on_request_headers<'a>(
        &'a self,
        ctx: &'a mut RequestContext,
        req: &'a mut request::Parts,
    ) -> Flow<'a> {
        let Some(tenant) = self.tenant(ctx, req) else {
            return self.fail("no tenant in the request", false);
        };
        let input = input(ctx, req, &tenant);
        ctx.tenant = Some(tenant.clone());
        let decided = match self.engine.decide(&tenant, input) {
            Ok(d) => d,
            Err(e) => return self.fail(&e.to_string(), true),
        };
        let d = decided.decision;
        let response_headers = header_pairs(&d.response_headers_to_add);
        if d.allowed {
            for name in &d.request_headers_to_remove {
                req.headers.remove(name.as_str());
            }
            for (k, v) in header_pairs(&d.headers) {
                req.headers.insert(k, v);
            }
            if !response_headers.is_empty() {
                ctx.extensions.insert(ResponseHeaders(response_headers));
            }
            return Flow::Continue;
        }
        let status = StatusCode::from_u16(d.http_status).unwrap_or(StatusCode::FORBIDDEN);
        let mut resp = local_response(status, &d.body);
        for (k, v) in header_pairs(&d.headers).into_iter().chain(response_headers) {
            resp.headers_mut().insert(k, v);
        }
        Flow::Respond(resp)
    }

    fn on_response_headers<'a>(
        &'a self,
        ctx: &'a mut RequestContext,
        resp: &'a mut response::Parts,
    ) -> Flow<'a> {
        if let Some(ResponseHeaders(h)) = ctx.extensions.remove::<ResponseHeaders>() {
            for (k, v) in h {
                resp.headers.append(k, v);
            }
        }
        Flow::Continue
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn queries_decode_and_repeat() {
        let q = parse_query("a=1&a=2&b&c=x%20y+z&%E2%9C%93=ok");
        assert_eq!(q["a"], vec!["1", "2"]);
        assert_eq!(q["b"], vec![""]);
        assert_eq!(q["c"], vec!["x y z"]);
        assert_eq!(q["✓"], vec!["ok"]);
    }

    #[test]
    fn input_joins_repeated_headers_and_parses_the_request() {
        let req = http::Request::builder()
            .uri("/a/b?x=1&x=2")
            .header("host", "acme.example.com:8080")
            .header("x-a", "1")
            .header("x-a", "2")
            .body(())
            .unwrap()
            .into_parts()
            .0;
        let ctx = RequestContext {
            request_id: HeaderValue::from_static("r"),
            client_addr: "10.0.0.7:5000".parse().unwrap(),
            listener: "l".into(),
            route: "r".into(),
            cluster: Some("c".into()),
            started: std::time::Instant::now(),
            response_source: None,
            extensions: http::Extensions::new(),
            tenant: None,
        };
        let v: serde_json::Value = serde_json::to_value(input(&ctx, &req, "acme")).unwrap();
        assert_eq!(v["headers"]["x-a"], "1, 2");
        assert_eq!(v["host"], "acme.example.com");
        assert_eq!(v["parsed_path"], serde_json::json!(["a", "b"]));
        assert_eq!(v["query"]["x"], serde_json::json!(["1", "2"]));
        assert_eq!(v["source"]["address"], "10.0.0.7");
        assert_eq!(v["cluster"], "c");
        assert!(v.get("jwt").is_none() && v.get("operation").is_none());
        let mut ctx = ctx;
        ctx.extensions
            .insert(crate::filter::ApiOperation(std::sync::Arc::new(
                serde_json::json!({ "id": "createOrder", "tags": ["orders", "admin"] }),
            )));
        let v: serde_json::Value = serde_json::to_value(input(&ctx, &req, "acme")).unwrap();
        assert_eq!(v["operation"]["tags"][1], "admin");
    }

    proptest! {
        // Any query string parses without panicking, and encoding pairs then parsing them
        // gives the pairs back.
        #[test]
        fn query_parser_total_and_round_trips(raw in ".{0,64}", pairs in prop::collection::vec(("[^\u{0}]{1,8}", ".{0,8}"), 0..6)) {
            let _ = parse_query(&raw);
            let encoded: String = form_urlencoded::Serializer::new(String::new()).extend_pairs(&pairs).finish();
            let parsed = parse_query(&encoded);
            let mut expected: BTreeMap<String, Vec<String>> = BTreeMap::new();
            for (k, v) in &pairs {
                expected.entry(k.clone()).or_default().push(v.clone());
            }
            prop_assert_eq!(parsed, expected);
        }

        // A Host header of any shape yields no panic and no port.
        #[test]
        fn host_strips_ports(name in "[a-z0-9.-]{1,20}", port in proptest::option::of(0u16..)) {
            let h = match port { Some(p) => format!("{name}:{p}"), None => name.clone() };
            let req = http::Request::builder().header("host", h).body(()).unwrap().into_parts().0;
            prop_assert_eq!(host(&req), Some(name.as_str()));
        }
    }
}

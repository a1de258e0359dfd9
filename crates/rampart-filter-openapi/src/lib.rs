//! `openapi`: requests checked against their operation of an OpenAPI 3.1 spec.
//!
//! ```yaml
//! filters:
//!   - openapi:
//!       spec: api/shop.yaml        # with the files its $refs name
//!       digest: 3f1c...            # (set by import) the spec's SHA-256 when imported
//!       operation: createOrder     # operationId (or "METHOD /path" without one)
//!       mode: enforce              # enforce (default): 400 problem+json | report: log and count
//!       max_body_bytes: 1048576    # a larger body is refused (413) when it must be checked
//!       base_path: /api            # the spec's paths are served under this prefix
//!       responses: report          # off (default) | report | enforce (502 problem+json for a
//!                                  # status or content type the spec does not document; a
//!                                  # body that does not match is cut off)
//! ```
//!
//! Parameters (path, query, header, cookie) and the content type are checked on the request
//! head; a body with a JSON schema is held until it is whole, checked, then sent on. A spec
//! is compiled once per content (every route of an import shares it) and again only when a
//! reload finds it changed. Every violation counts in
//! `rampart_openapi_violations_total{operation}`. A request that passes carries its operation
//! (`filter::ApiOperation`: id, method, path, tags, security) to the filters after this one:
//! an `authz` filter there sees it as `input.operation`.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};

use bytes::{Bytes, BytesMut};
use http::{HeaderValue, Response, StatusCode, request};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use rampart_config::FieldError;
use rampart_config::filters::typed;
use rampart_openapi::spec::Spec;
use rampart_openapi::validate::{Head, Validators, Violation, problem};
use rampart_proxy::body::ProxyBody;
use rampart_proxy::filter::{
    ApiOperation, BodyObserver, BodyReject, BuildEnv, FilterBuildError, FilterFactory, FilterRef,
    Flow, HttpFilter, RequestContext, ResponseSource,
};

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct RawOpenApi {
    spec: String,
    #[serde(default)]
    digest: Option<String>,
    operation: String,
    #[serde(default)]
    mode: Option<String>,
    #[serde(default)]
    max_body_bytes: Option<u64>,
    #[serde(default)]
    base_path: Option<String>,
    #[serde(default)]
    responses: Option<String>,
}

/// A checked `openapi` config.
#[derive(Debug, Clone)]
pub struct OpenApiConfig {
    pub spec: PathBuf,
    /// The SHA-256 of the spec `rampart openapi import` read: a spec that changes changes
    /// the route (and so rebuilds the filter); a gateway whose copy differs says so.
    pub digest: Option<String>,
    pub operation: String,
    pub enforce: bool,
    pub max_body: usize,
    /// The prefix the spec's paths are served under (`rampart openapi import --base-path`).
    pub base_path: String,
    /// Responses checked against the documented ones: not at all, reported, or enforced.
    pub responses: Mode,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Off,
    Report,
    Enforce,
}

fn mode(
    path: &str,
    field: &str,
    v: Option<&str>,
    default: Mode,
    errors: &mut Vec<FieldError>,
) -> Mode {
    match v {
        None => default,
        Some("off") => Mode::Off,
        Some("report") => Mode::Report,
        Some("enforce") => Mode::Enforce,
        Some(other) => {
            errors.push(FieldError {
                path: format!("{path}.{field}"),
                rule: format!("{other:?}: use off, report or enforce"),
            });
            default
        }
    }
}

/// Registers as `openapi`.
pub struct OpenApiFactory;

impl FilterFactory for OpenApiFactory {
    type Config = OpenApiConfig;

    fn name(&self) -> &'static str {
        "openapi"
    }

    fn parse(
        &self,
        path: &str,
        config: &serde_json::Value,
    ) -> Result<OpenApiConfig, Vec<FieldError>> {
        let raw: RawOpenApi = typed(path, config).map_err(|e| vec![e])?;
        let mut errors = Vec::new();
        let enforce = mode(
            path,
            "mode",
            raw.mode.as_deref(),
            Mode::Enforce,
            &mut errors,
        ) == Mode::Enforce;
        let responses = mode(
            path,
            "responses",
            raw.responses.as_deref(),
            Mode::Off,
            &mut errors,
        );
        if raw.operation.is_empty() {
            errors.push(FieldError {
                path: format!("{path}.operation"),
                rule: "must name an operation".into(),
            });
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        Ok(OpenApiConfig {
            spec: PathBuf::from(raw.spec),
            digest: raw.digest,
            operation: raw.operation,
            enforce,
            max_body: usize::try_from(raw.max_body_bytes.unwrap_or(1 << 20)).unwrap_or(usize::MAX),
            base_path: raw
                .base_path
                .unwrap_or_default()
                .trim_end_matches('/')
                .to_owned(),
            responses,
        })
    }

    fn build(&self, config: OpenApiConfig, env: &BuildEnv) -> Result<FilterRef, FilterBuildError> {
        let cache = env.shared(|env| {
            let c = Arc::new(Compiled::default());
            env.metrics.register_with(|r| {
                r.register(
                    "openapi_violations",
                    "Requests that did not match their OpenAPI operation",
                    c.violations.clone(),
                );
            });
            c
        });
        let fail = |field: &str, message: String| FilterBuildError {
            field: field.into(),
            message,
        };
        let (validators, digest) = cache.get(&config.spec).map_err(|m| fail("spec", m))?;
        if let Some(want) = &config.digest
            && *want != digest
        {
            tracing::warn!(spec = %config.spec.display(), imported = %want, here = %digest, "this gateway's copy of the spec is not the one imported: it validates against its own");
        }
        let Some(op) = validators.get(&config.operation) else {
            let mut known: Vec<&str> = validators.operations().map(|o| o.id.as_str()).collect();
            known.sort_unstable();
            return Err(fail(
                "operation",
                format!(
                    "no operation {:?} in {} (it has {known:?})",
                    config.operation,
                    config.spec.display()
                ),
            ));
        };
        let checks_body = op.checks_body();
        let operation = ApiOperation(Arc::new(serde_json::json!({
            "id": op.op.id,
            "method": op.op.method.as_str(),
            "path": op.op.path.as_str(),
            "tags": op.op.tags,
            "security": op.op.security,
        })));
        // Each guard released at once: a second get_or_create while one is held deadlocks.
        let counter = |direction| {
            cache
                .violations
                .get_or_create(&Labels {
                    operation: config.operation.clone(),
                    direction,
                })
                .clone()
        };
        let (violations, response_violations) = (counter("request"), counter("response"));
        Ok(Arc::new(OpenApiFilter {
            validators,
            operation,
            checks_body,
            violations,
            response_violations,
            config: Arc::new(config),
        }))
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Labels {
    operation: String,
    /// `request` or `response`.
    direction: &'static str,
}

/// Specs compiled once per content, shared by every route (and version) that uses them.
#[derive(Default)]
struct Compiled {
    /// Path → (digest of the content compiled, its validators).
    specs: Mutex<HashMap<PathBuf, (String, Arc<Validators>)>>,
    violations: Family<Labels, Counter>,
}

impl Compiled {
    /// The validators of the spec at `path` as it is now, and its digest.
    fn get(&self, path: &PathBuf) -> Result<(Arc<Validators>, String), String> {
        let spec = Spec::load(path).map_err(|p| join(&p))?;
        // An unchanged spec is not compiled again.
        let digest = spec.digest();
        let mut specs = self.specs.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some((d, v)) = specs.get(path)
            && *d == digest
        {
            return Ok((v.clone(), digest));
        }
        let v = Arc::new(Validators::compile(&spec).map_err(|p| join(&p))?);
        specs.insert(path.clone(), (digest.clone(), v.clone()));
        Ok((v, digest))
    }
}

fn join(p: &[rampart_openapi::Problem]) -> String {
    p.iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

struct OpenApiFilter {
    validators: Arc<Validators>,
    /// Shared with the body checks (cloned per request).
    /// For the filters after this one (a policy deciding by operation).
    operation: ApiOperation,
    config: Arc<OpenApiConfig>,
    checks_body: bool,
    violations: Counter,
    response_violations: Counter,
}

/// The request's content type, for its body check.
#[derive(Clone)]
struct ContentType(Option<String>);

impl OpenApiFilter {
    /// What to do about `found`: nothing, count and log (report), or answer 400 (enforce).
    fn verdict(
        &self,
        ctx: &RequestContext,
        found: &[Violation],
        status: StatusCode,
    ) -> Option<(String, Bytes)> {
        if found.is_empty() {
            return None;
        }
        self.violations.inc();
        let doc = problem(&self.config.operation, status.as_u16(), found);
        tracing::info!(operation = %self.config.operation, request_id = ?ctx.request_id, problems = %doc["errors"], "request does not match the API");
        self.config.enforce.then(|| {
            (
                doc["detail"].as_str().unwrap_or("").to_owned(),
                Bytes::from(doc.to_string()),
            )
        })
    }
}

const PROBLEM: &str = "application/problem+json";

/// Whether the upstream answered: the gateway's own answers (this filter's 400, a `jwt`
/// 401, an error) are not the API's to check.
fn from_upstream(ctx: &RequestContext) -> bool {
    ctx.response_source == Some(ResponseSource::Upstream)
}

impl HttpFilter for OpenApiFilter {
    fn name(&self) -> &'static str {
        "openapi"
    }

    fn on_request_headers<'a>(
        &'a self,
        ctx: &'a mut RequestContext,
        req: &'a mut request::Parts,
    ) -> Flow<'a> {
        let Some(op) = self.validators.get(&self.config.operation) else {
            return Flow::Continue;
        };
        let path = req.uri.path();
        let head = Head {
            path: path
                .strip_prefix(self.config.base_path.as_str())
                .unwrap_or(path),
            query: req.uri.query(),
            headers: &req.headers,
        };
        // Credentials first, as an authenticating gateway would: 401 before any other check.
        let (found, status) = match op.check_request_head(&head, &op.op.path) {
            Err(missing) => (vec![missing], StatusCode::UNAUTHORIZED),
            Ok(found) => (found, StatusCode::BAD_REQUEST),
        };
        if let Some((_, body)) = self.verdict(ctx, &found, status) {
            let mut r = Response::new(ProxyBody::full(body));
            *r.status_mut() = status;
            r.headers_mut().insert(
                http::header::CONTENT_TYPE,
                HeaderValue::from_static(PROBLEM),
            );
            return Flow::Respond(r);
        }
        ctx.extensions.insert(self.operation.clone());
        if self.checks_body {
            let ct = req
                .headers
                .get(http::header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            ctx.extensions.insert(ContentType(ct));
        }
        Flow::Continue
    }

    fn on_response_headers<'a>(
        &'a self,
        ctx: &'a mut RequestContext,
        resp: &'a mut http::response::Parts,
    ) -> Flow<'a> {
        if self.config.responses == Mode::Off || !from_upstream(ctx) {
            return Flow::Continue;
        }
        let Some(op) = self.validators.get(&self.config.operation) else {
            return Flow::Continue;
        };
        let ct = resp
            .headers
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok());
        let found = op.check_response_head(resp.status.as_u16(), ct);
        if found.is_empty() {
            return Flow::Continue;
        }
        self.response_violations.inc();
        let doc = problem(&self.config.operation, 502, &found);
        tracing::warn!(operation = %self.config.operation, request_id = ?ctx.request_id, status = resp.status.as_u16(), problems = %doc["errors"], "response does not match the API");
        if self.config.responses == Mode::Enforce {
            let mut r = Response::new(ProxyBody::full(Bytes::from(doc.to_string())));
            *r.status_mut() = StatusCode::BAD_GATEWAY;
            r.headers_mut().insert(
                http::header::CONTENT_TYPE,
                HeaderValue::from_static(PROBLEM),
            );
            return Flow::Respond(r);
        }
        Flow::Continue
    }

    fn response_body_observer(
        &self,
        ctx: &RequestContext,
        resp: &http::response::Parts,
    ) -> Option<Box<dyn BodyObserver>> {
        let status = resp.status.as_u16();
        let op = self.validators.get(&self.config.operation)?;
        if self.config.responses == Mode::Off
            || !from_upstream(ctx)
            || !op.checks_response_body(status)
        {
            return None;
        }
        Some(Box::new(ResponseCheck {
            filter: FilterHandle {
                validators: self.validators.clone(),
                config: self.config.clone(),
                violations: self.response_violations.clone(),
                request_id: ctx.request_id.clone(),
            },
            status,
            content_type: resp
                .headers
                .get(http::header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned),
            held: Held::default(),
            gave_up: false,
        }))
    }

    fn request_body_observer(&self, ctx: &RequestContext) -> Option<Box<dyn BodyObserver>> {
        if !self.checks_body {
            return None;
        }
        let ct = ctx
            .extensions
            .get::<ContentType>()
            .cloned()
            .unwrap_or(ContentType(None));
        Some(Box::new(BodyCheck {
            filter: FilterHandle {
                validators: self.validators.clone(),
                config: self.config.clone(),
                violations: self.violations.clone(),
                request_id: ctx.request_id.clone(),
            },
            content_type: ct.0,
            held: Held::default(),
        }))
    }
}

/// What a body check needs of its filter (observers outlive the borrow of it).
struct FilterHandle {
    validators: Arc<Validators>,
    config: Arc<OpenApiConfig>,
    violations: Counter,
    request_id: HeaderValue,
}

/// Holds the body until it is whole, then checks it.
struct BodyCheck {
    filter: FilterHandle,
    content_type: Option<String>,
    held: Held,
}

/// Chunks held back, joined only when there is more than one.
#[derive(Default)]
struct Held {
    chunks: Vec<Bytes>,
    len: usize,
}

impl Held {
    fn push(&mut self, chunk: &mut Bytes) {
        if !chunk.is_empty() {
            self.len += chunk.len();
            self.chunks.push(std::mem::take(chunk));
        }
    }

    fn take(&mut self) -> Bytes {
        self.len = 0;
        match self.chunks.len() {
            0 => Bytes::new(),
            1 => self.chunks.pop().unwrap_or_default(),
            _ => {
                let mut all = BytesMut::with_capacity(self.chunks.iter().map(Bytes::len).sum());
                for c in self.chunks.drain(..) {
                    all.extend_from_slice(&c);
                }
                all.freeze()
            }
        }
    }
}

impl BodyObserver for BodyCheck {
    /// It holds the body and lets it through whole, or refuses it: never changes it.
    fn keeps_length(&self) -> bool {
        true
    }

    fn on_data(&mut self, chunk: &mut Bytes, end_of_stream: bool) -> Result<(), BodyReject> {
        let f = &self.filter;
        if self.held.len + chunk.len() > f.config.max_body {
            return Err(BodyReject::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!(
                    "the body is larger than the {} bytes the API check reads",
                    f.config.max_body
                ),
            ));
        }
        self.held.push(chunk);
        if !end_of_stream {
            return Ok(());
        }
        let body = self.held.take();
        let found = f
            .validators
            .get(&f.config.operation)
            .map(|op| op.check_body(self.content_type.as_deref(), &body))
            .unwrap_or_default();
        if !found.is_empty() {
            f.violations.inc();
            let doc = problem(&f.config.operation, 400, &found);
            tracing::info!(operation = %f.config.operation, request_id = ?f.request_id, problems = %doc["errors"], "request body does not match the API");
            if f.config.enforce {
                let mut reject = BodyReject::new(
                    StatusCode::BAD_REQUEST,
                    doc["detail"].as_str().unwrap_or(""),
                );
                reject.answer = Some((
                    HeaderValue::from_static(PROBLEM),
                    Bytes::from(doc.to_string()),
                ));
                return Err(reject);
            }
        }
        *chunk = body;
        Ok(())
    }
}

/// Holds a response body until it is whole, then checks it. Its head has gone out: an
/// enforced violation cuts the body off (the client sees an incomplete response).
struct ResponseCheck {
    filter: FilterHandle,
    status: u16,
    content_type: Option<String>,
    held: Held,
    /// Past the size limit: passed on unchecked.
    gave_up: bool,
}

impl BodyObserver for ResponseCheck {
    fn on_data(&mut self, chunk: &mut Bytes, end_of_stream: bool) -> Result<(), BodyReject> {
        let f = &self.filter;
        if self.gave_up {
            return Ok(());
        }
        if self.held.len + chunk.len() > f.config.max_body {
            // Too large to check: what was held goes out with this chunk, unchecked.
            self.held.push(chunk);
            *chunk = self.held.take();
            self.gave_up = true;
            return Ok(());
        }
        self.held.push(chunk);
        if !end_of_stream {
            return Ok(());
        }
        let body = self.held.take();
        let found = f
            .validators
            .get(&f.config.operation)
            .map(|op| op.check_response_body(self.status, self.content_type.as_deref(), &body))
            .unwrap_or_default();
        if !found.is_empty() {
            f.violations.inc();
            let doc = problem(&f.config.operation, 502, &found);
            tracing::warn!(operation = %f.config.operation, request_id = ?f.request_id, problems = %doc["errors"], "response body does not match the API");
            if f.config.responses == Mode::Enforce {
                return Err(BodyReject::new(
                    StatusCode::BAD_GATEWAY,
                    "the response does not match the API",
                ));
            }
        }
        *chunk = body;
        Ok(())
    }
}

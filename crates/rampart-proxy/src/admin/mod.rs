//! The admin endpoint, on its own port and runtime: `/metrics`, `/ready`, `/config_dump`,
//! `/clusters`, and (with the policy engine) `/policy/tenants[/<name>]`:
//!
//! ```text
//! GET    /policy/tenants          [{"tenant": "acme", "revision": "acme-1",
//!                                   "loaded_at": 1765152000, "engine": "vm",
//!                                   "decisions": {"allowed": 9, "denied": 1, "errors": 0},
//!                                   "rejected": null}, ...]   (decisions of that revision;
//!                                   the last bundle refused since, with its revision)
//! PUT    /policy/tenants/<name>   {"modules": {"authz.rego": "package authz ..."},
//!                                  "data": {...}, "entrypoint": "data.authz.decision"}
//!                                 → 200 {"revision": ...}; 400 {"error": ...} (compile error,
//!                                   failing bundle tests: the old bundle keeps serving)
//! DELETE /policy/tenants/<name>   → 200, or 404
//! POST   /policy/tenants/<name>/decide   {"input": {...}} → the decision the tenant's
//!                                   bundle makes, its revision, latency and trace (the
//!                                   policy lines evaluated); counted in no statistics:
//!                                   trying inputs cannot make a bundle look bad
//! ```
//!
//! Pages registered by the binary ([`crate::admin_page::AdminPage`], the dashboard under
//! `/ui`) are served below their prefix to callers with the token or a browser session
//! (`session.rs`: `/ui/login?token=...` sets the cookie).
//!
//! Who may use it: only requests whose Host is in `admin.allowed_hosts` (loopback names by
//! default) are answered, so a web page cannot reach the port through DNS rebinding; any
//! method other than GET and HEAD needs `Authorization: Bearer <token>` with the token from
//! `admin.token_file` (compared in constant time), or a session cookie on a request from the
//! port's own pages; without a token file the API is read-only. Connections are capped and a
//! request's headers must arrive in time.

mod session;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::SystemTime;

use bytes::Bytes;
use http::{HeaderName, HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::runtime::Handle;

use hyper_util::rt::TokioTimer;
use rampart_config::model::Admin;

use crate::admin_page::{AdminApi, AdminBody, AdminPage, ApiResponse, StreamUntil};
use crate::upstream::ClusterRuntime;
use crate::{GatewayError, Shared};

use session::Sessions;

/// Who may call the admin API.
struct Access {
    token: Option<Vec<u8>>,
    allowed_hosts: Vec<String>,
    sessions: Sessions,
}

impl Access {
    fn load(cfg: &Admin) -> Result<Self, GatewayError> {
        let token = match &cfg.token_file {
            None => None,
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|e| GatewayError::AdminToken {
                    path: path.clone(),
                    reason: e.to_string(),
                })?;
                let token = text.trim();
                if token.len() < 16 {
                    return Err(GatewayError::AdminToken {
                        path: path.clone(),
                        reason: "the token must be at least 16 characters".into(),
                    });
                }
                Some(token.as_bytes().to_vec())
            }
        };
        let mut allowed_hosts = cfg.allowed_hosts.clone();
        // The address the port is bound to is a name clients use too.
        if !cfg.address.ip().is_unspecified() {
            allowed_hosts.push(match cfg.address {
                SocketAddr::V4(a) => a.ip().to_string(),
                SocketAddr::V6(a) => format!("[{}]", a.ip()),
            });
        }
        Ok(Self {
            token,
            allowed_hosts,
            sessions: Sessions::new(),
        })
    }

    /// A refusal when the request's Host is not one of the port's names.
    fn host_refusal<B>(&self, req: &Request<B>) -> Option<Answer> {
        let host = req
            .headers()
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .or_else(|| req.uri().authority().map(http::uri::Authority::as_str))
            .and_then(|h| rampart_router::normalize::normalize_authority(h, 0).ok());
        let allowed = host.is_some_and(|h| {
            let name = rampart_router::normalize::authority_host(&h);
            self.allowed_hosts.iter().any(|a| a == name)
        });
        (!allowed).then(|| {
            Answer::text(
                StatusCode::FORBIDDEN,
                "host not allowed on the admin port (admin.allowed_hosts)\n",
            )
        })
    }

    /// Whether `sent` is the admin token.
    fn is_token(&self, sent: &[u8]) -> bool {
        self.token
            .as_ref()
            .is_some_and(|t| constant_time_eq(sent, t))
    }

    /// Whether the request carries `Authorization: Bearer <the admin token>`.
    fn bearer<B>(&self, req: &Request<B>) -> bool {
        req.headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.as_bytes().strip_prefix(b"Bearer "))
            .is_some_and(|s| self.is_token(s))
    }

    /// Whether the request carries a valid browser session.
    fn session<B>(&self, req: &Request<B>) -> bool {
        self.token.is_some() && self.sessions.in_request(req.headers(), SystemTime::now())
    }

    /// A refusal for a change (any method but GET/HEAD) without a credential, or None.
    fn change_refusal<B>(&self, req: &Request<B>) -> Option<Answer> {
        if self.token.is_none() {
            return Some(Answer::text(
                StatusCode::FORBIDDEN,
                "the admin API is read-only: no admin.token_file is configured\n",
            ));
        }
        if self.bearer(req) || (self.session(req) && session::same_origin(req.headers())) {
            return None;
        }
        Some(
            Answer::text(
                StatusCode::UNAUTHORIZED,
                "a bearer token is required: Authorization: Bearer <admin token>\n",
            )
            .with(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"rampart-admin\""),
            ),
        )
    }
}

/// Equal without revealing through timing how long a common prefix is.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// What every connection's requests are answered with.
struct Ctx {
    shared: Arc<Shared>,
    access: Access,
    pages: Vec<Arc<dyn AdminPage>>,
    api: AdminApi,
}

impl Ctx {
    /// The page registered for `path`'s prefix (`/ui` takes `/ui` and `/ui/...`).
    fn page(&self, path: &str) -> Option<&Arc<dyn AdminPage>> {
        self.pages.iter().find(|p| {
            path.strip_prefix(p.prefix())
                .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
        })
    }
}

/// Binds the admin port and serves it on `rt`; returns the bound address.
pub(crate) async fn spawn(
    cfg: &Admin,
    shared: Arc<Shared>,
    pages: Vec<Arc<dyn AdminPage>>,
    rt: &Handle,
) -> Result<SocketAddr, GatewayError> {
    let access = Access::load(cfg)?;
    let api = {
        let shared = Arc::downgrade(&shared);
        AdminApi::new(Arc::new(move |path: &str| match shared.upgrade() {
            Some(shared) => read(&shared, path).into_api(),
            None => Answer::text(StatusCode::SERVICE_UNAVAILABLE, "stopped\n").into_api(),
        }))
    };
    let ctx = Arc::new(Ctx {
        shared,
        access,
        pages,
        api,
    });
    let addr = cfg.address;
    let slots = Arc::new(tokio::sync::Semaphore::new(cfg.max_connections));
    let header_read_timeout = cfg.header_read_timeout;
    let std_listener = std::net::TcpListener::bind(addr)
        .and_then(|l| l.set_nonblocking(true).map(|()| l))
        .map_err(|source| GatewayError::AdminBind {
            address: addr,
            source,
        })?;
    let local = std_listener
        .local_addr()
        .map_err(|source| GatewayError::AdminBind {
            address: addr,
            source,
        })?;
    let listener = {
        let _g = rt.enter();
        tokio::net::TcpListener::from_std(std_listener).map_err(|source| {
            GatewayError::AdminBind {
                address: addr,
                source,
            }
        })?
    };
    rt.spawn(async move {
        loop {
            // Past the cap, clients wait in the kernel's backlog.
            let Ok(permit) = slots.clone().acquire_owned().await else {
                return;
            };
            let Ok((stream, _)) = listener.accept().await else {
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            };
            let ctx = ctx.clone();
            tokio::spawn(async move {
                let _permit = permit;
                // A connection lives at most this long (one that sends nothing is dropped);
                // a page's event stream ends before, and the browser reconnects.
                let lifetime = header_read_timeout * 6;
                let until = tokio::time::Instant::now() + lifetime;
                let svc = service_fn(move |req: Request<Incoming>| {
                    let ctx = ctx.clone();
                    async move { Ok::<_, Infallible>(handle(&ctx, req, until).await) }
                });
                let mut builder = auto::Builder::new(TokioExecutor::new());
                builder
                    .http1()
                    .timer(TokioTimer::new())
                    .header_read_timeout(header_read_timeout);
                builder.http2().timer(TokioTimer::new());
                let _ = tokio::time::timeout(
                    lifetime,
                    builder.serve_connection(TokioIo::new(stream), svc),
                )
                .await;
            });
        }
    });
    tracing::info!(%local, "admin endpoint listening");
    Ok(local)
}

/// One request: Host check, then login, pages, changes (with a credential), reads.
async fn handle(
    ctx: &Ctx,
    req: Request<Incoming>,
    until: tokio::time::Instant,
) -> Response<AdminBody> {
    if let Some(refused) = ctx.access.host_refusal(&req) {
        return refused.into();
    }
    let path = req.uri().path();
    if path == session::LOGIN_PATH {
        return login(&ctx.access, req).await.into();
    }
    if path == session::LOGOUT_PATH {
        return logout(&ctx.access, &req).into();
    }
    if let Some(page) = ctx.page(path) {
        if !(ctx.access.bearer(&req) || ctx.access.session(&req)) {
            return unauthenticated(&req).into();
        }
        if req.method() != Method::GET && req.method() != Method::HEAD {
            return Answer::text(StatusCode::METHOD_NOT_ALLOWED, "GET only\n").into();
        }
        let (mut parts, _) = req.into_parts();
        parts.extensions.insert(StreamUntil(
            until - std::time::Duration::from_secs(1).min(until - tokio::time::Instant::now()),
        ));
        return page.serve(parts, ctx.api.clone()).await;
    }
    if req.method() != Method::GET
        && req.method() != Method::HEAD
        && let Some(refused) = ctx.access.change_refusal(&req)
    {
        return refused.into();
    }
    let shared = &ctx.shared;
    if req.uri().path() == "/config" && req.method() == Method::PUT {
        return config_api(shared, req).await.into();
    }
    #[cfg(feature = "policy")]
    if req.uri().path().starts_with("/policy/") {
        return policy_api(shared, req).await.into();
    }
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return Answer::text(StatusCode::METHOD_NOT_ALLOWED, "GET only\n").into();
    }
    read(shared, req.uri().path()).into()
}

/// A page asked for without a credential: browsers are sent to the login page, API
/// clients told what to send.
fn unauthenticated<B>(req: &Request<B>) -> Answer {
    let wants_html = req
        .headers()
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| a.contains("text/html"));
    if wants_html && req.method() == Method::GET {
        return redirect(session::LOGIN_PATH);
    }
    Answer::json_status(
        StatusCode::UNAUTHORIZED,
        &serde_json::json!({
            "error": "sign in at /ui/login or send Authorization: Bearer <admin token>"
        }),
    )
}

/// Largest login form accepted.
const MAX_LOGIN_BODY: usize = 4096;

/// `GET /ui/login[?token=...]` and `POST /ui/login` (form field `token`): the token for
/// a session cookie, then on to `/ui`.
async fn login(access: &Access, req: Request<Incoming>) -> Answer {
    let method = req.method().clone();
    let token = match method {
        Method::GET | Method::HEAD => req.uri().query().and_then(|q| {
            form_urlencoded::parse(q.as_bytes())
                .find(|(k, _)| k == "token")
                .map(|(_, v)| v.into_owned())
        }),
        Method::POST => {
            // A form posted from another site must not sign this browser in (login CSRF).
            if !session::same_origin(req.headers()) {
                return Answer::text(StatusCode::FORBIDDEN, "cross-site login refused\n");
            }
            let Ok(body) = Limited::new(req.into_body(), MAX_LOGIN_BODY)
                .collect()
                .await
            else {
                return Answer::text(StatusCode::PAYLOAD_TOO_LARGE, "login form too large\n");
            };
            form_urlencoded::parse(&body.to_bytes())
                .find(|(k, _)| k == "token")
                .map(|(_, v)| v.into_owned())
        }
        _ => return Answer::text(StatusCode::METHOD_NOT_ALLOWED, "GET or POST\n"),
    };
    if access.token.is_none() {
        return Answer::login_page(
            StatusCode::FORBIDDEN,
            Some("this gateway has no admin.token_file, so the dashboard is off"),
        );
    }
    match token {
        Some(t) if access.is_token(t.trim().as_bytes()) => redirect("/ui").with(
            header::SET_COOKIE,
            session::set_cookie(&access.sessions.issue(SystemTime::now())),
        ),
        Some(_) => Answer::login_page(
            StatusCode::UNAUTHORIZED,
            Some("that is not this gateway's admin token"),
        ),
        None => Answer::login_page(StatusCode::OK, None),
    }
}

/// `POST /ui/logout` from the dashboard: the cookie is cleared.
fn logout<B>(access: &Access, req: &Request<B>) -> Answer {
    if req.method() != Method::POST {
        return Answer::text(StatusCode::METHOD_NOT_ALLOWED, "POST only\n");
    }
    if !session::same_origin(req.headers()) && !access.bearer(req) {
        return Answer::text(StatusCode::FORBIDDEN, "cross-site logout refused\n");
    }
    redirect(session::LOGIN_PATH).with(header::SET_COOKIE, session::clear_cookie())
}

fn redirect(to: &'static str) -> Answer {
    Answer::text(StatusCode::SEE_OTHER, "")
        .with(header::LOCATION, HeaderValue::from_static(to))
        .with(header::CACHE_CONTROL, HeaderValue::from_static("no-store"))
        .with(
            HeaderName::from_static("referrer-policy"),
            HeaderValue::from_static("no-referrer"),
        )
}

/// An admin answer before it becomes a response (the in-process [`AdminApi`] reads it too).
struct Answer {
    status: StatusCode,
    content_type: &'static str,
    body: Bytes,
    headers: Vec<(HeaderName, HeaderValue)>,
}

impl Answer {
    fn new(status: StatusCode, content_type: &'static str, body: impl Into<Bytes>) -> Self {
        Self {
            status,
            content_type,
            body: body.into(),
            headers: Vec::new(),
        }
    }

    fn text(status: StatusCode, body: &'static str) -> Self {
        Self::new(status, "text/plain", body)
    }

    fn json_status(status: StatusCode, v: &serde_json::Value) -> Self {
        Self::new(
            status,
            "application/json",
            serde_json::to_string_pretty(v).unwrap_or_default() + "\n",
        )
    }

    fn login_page(status: StatusCode, message: Option<&str>) -> Self {
        Self::new(
            status,
            "text/html; charset=utf-8",
            session::login_page(message),
        )
        .with(header::CACHE_CONTROL, HeaderValue::from_static("no-store"))
        .with(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(
                "default-src 'none'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
            ),
        )
        .with(
            HeaderName::from_static("referrer-policy"),
            HeaderValue::from_static("no-referrer"),
        )
    }

    fn with(mut self, name: HeaderName, value: HeaderValue) -> Self {
        self.headers.push((name, value));
        self
    }

    fn into_api(self) -> ApiResponse {
        ApiResponse {
            status: self.status,
            body: self.body,
        }
    }
}

impl From<Answer> for Response<AdminBody> {
    fn from(a: Answer) -> Self {
        let mut r = Response::new(Full::new(a.body).boxed());
        *r.status_mut() = a.status;
        r.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static(a.content_type),
        );
        for (k, v) in a.headers {
            r.headers_mut().append(k, v);
        }
        r
    }
}

fn respond(status: StatusCode, content_type: &'static str, body: String) -> Answer {
    Answer::new(status, content_type, body)
}

fn json(v: &serde_json::Value) -> Answer {
    Answer::json_status(StatusCode::OK, v)
}

/// Adds one gauge per endpoint, read at scrape time (ejections end lazily, so a stored gauge
/// would go stale): `rampart_endpoint_healthy` is 1 when the endpoint takes traffic, with
/// the reason in `state` (`healthy`, `failed_active_hc`, `ejected`).
fn with_endpoint_health(mut text: String, shared: &Shared) -> String {
    use std::fmt::Write;
    let snap = shared.snapshot.load();
    let mut lines = String::from(
        "# HELP rampart_endpoint_healthy 1 if the endpoint receives traffic (not failing active health checks, not ejected).\n# TYPE rampart_endpoint_healthy gauge\n",
    );
    let mut names: Vec<_> = snap.clusters.keys().collect();
    names.sort();
    for name in names {
        for e in snap.clusters[name].endpoints().iter() {
            let state = e.health.state();
            let _ = writeln!(
                lines,
                "rampart_endpoint_healthy{{cluster=\"{name}\",endpoint=\"{}\",state=\"{state}\"}} {}",
                e.addr,
                u8::from(state == "healthy")
            );
        }
    }
    // OpenMetrics ends with "# EOF": our family goes before it.
    match text.rfind("# EOF") {
        Some(at) => text.insert_str(at, &lines),
        None => text.push_str(&lines),
    }
    text
}

/// Largest bundle accepted through the API (sources and data as JSON).
#[cfg(feature = "policy")]
const MAX_BUNDLE_BODY: usize = 16 * 1024 * 1024;

#[cfg(feature = "policy")]
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct BundleBody {
    modules: std::collections::BTreeMap<String, String>,
    #[serde(default)]
    data: Option<serde_json::Value>,
    #[serde(default)]
    entrypoint: Option<String>,
    #[serde(default)]
    revision: Option<String>,
}

#[cfg(feature = "policy")]
async fn policy_api(shared: &Shared, req: Request<Incoming>) -> Answer {
    let error = |status: StatusCode, msg: String| {
        Answer::json_status(status, &serde_json::json!({ "error": msg }))
    };
    let Some(engine) = shared.policy.engine() else {
        return error(
            StatusCode::NOT_FOUND,
            "no policy engine (the config has no policy section)".into(),
        );
    };
    let path = req.uri().path().to_string();
    if let Some(tenant) = path
        .strip_prefix("/policy/tenants/")
        .and_then(|rest| rest.strip_suffix("/decide"))
        .filter(|t| !t.is_empty() && !t.contains('/'))
    {
        if req.method() != Method::POST {
            return error(StatusCode::METHOD_NOT_ALLOWED, "POST only".into());
        }
        return try_decide(&engine, tenant, req).await;
    }
    let tenant = path
        .strip_prefix("/policy/tenants/")
        .filter(|t| !t.is_empty() && !t.contains('/'))
        .map(str::to_string);
    match (req.method().clone(), tenant) {
        (Method::GET, None) if path == "/policy/tenants" => policy_status(shared),
        (Method::PUT, Some(tenant)) => {
            let body = match read_body(req, MAX_BUNDLE_BODY).await {
                Ok(b) => b,
                Err(too_large) => return too_large,
            };
            let b: BundleBody = match serde_json::from_slice(&body) {
                Ok(b) => b,
                Err(e) => return error(StatusCode::BAD_REQUEST, format!("bad bundle JSON: {e}")),
            };
            let bundle = match rampart_policy::Bundle::new(
                b.modules.into_iter().collect(),
                b.data.unwrap_or_else(|| serde_json::json!({})),
                b.entrypoint.as_deref(),
                b.revision,
            ) {
                Ok(b) => b,
                Err(e) => return error(StatusCode::BAD_REQUEST, e.to_string()),
            };
            // Compiling and running the bundle's tests is CPU work: off the admin runtime.
            let put = tokio::task::spawn_blocking(move || engine.put_bundle(&tenant, bundle)).await;
            match put {
                Ok(Ok(revision)) => json(&serde_json::json!({ "revision": revision })),
                Ok(Err(e)) => error(StatusCode::BAD_REQUEST, e.to_string()),
                Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
            }
        }
        (Method::DELETE, Some(tenant)) => {
            if engine.remove_tenant(&tenant) {
                json(&serde_json::json!({ "removed": tenant }))
            } else {
                error(StatusCode::NOT_FOUND, format!("no tenant {tenant:?}"))
            }
        }
        _ => error(
            StatusCode::NOT_FOUND,
            "GET /policy/tenants, PUT or DELETE /policy/tenants/<name>".into(),
        ),
    }
}

#[cfg(feature = "policy")]
fn policy_status(shared: &Shared) -> Answer {
    match shared.policy.engine() {
        Some(engine) => json(&serde_json::to_value(engine.status()).unwrap_or_default()),
        None => Answer::json_status(
            StatusCode::NOT_FOUND,
            &serde_json::json!({ "error": "no policy engine (the config has no policy section)" }),
        ),
    }
}

/// Largest input accepted by `POST /policy/tenants/<name>/decide`.
#[cfg(feature = "policy")]
const MAX_DECIDE_BODY: usize = 1 << 20;

/// `POST /policy/tenants/<name>/decide` with `{"input": ...}`: what the tenant's bundle
/// decides, counted in no statistics.
#[cfg(feature = "policy")]
async fn try_decide(
    engine: &Arc<rampart_policy::PolicyEngine>,
    tenant: &str,
    req: Request<Incoming>,
) -> Answer {
    let error = |status: StatusCode, msg: String| {
        Answer::json_status(status, &serde_json::json!({ "error": msg }))
    };
    let body = match read_body(req, MAX_DECIDE_BODY).await {
        Ok(b) => b,
        Err(too_large) => return too_large,
    };
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Body {
        input: serde_json::Value,
    }
    let input = match serde_json::from_slice::<Body>(&body) {
        Ok(b) => b.input,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                format!("expected {{\"input\": ...}}: {e}"),
            );
        }
    };
    let engine = engine.clone();
    let tenant = tenant.to_owned();
    match tokio::task::spawn_blocking(move || {
        engine.try_decide(&tenant, rampart_policy::Value::from(input))
    })
    .await
    {
        Ok(Ok((d, trace))) => json(&serde_json::json!({
            "allowed": d.decision.allowed,
            "http_status": d.decision.http_status,
            "body": d.decision.body,
            "headers": pairs(&d.decision.headers),
            "request_headers_to_remove": d.decision.request_headers_to_remove,
            "response_headers_to_add": pairs(&d.decision.response_headers_to_add),
            "revision": d.revision,
            "latency_us": d.latency.as_secs_f64() * 1e6,
            "trace": trace,
        })),
        Ok(Err(e @ rampart_policy::DecideError::UnknownTenant(_))) => {
            error(StatusCode::NOT_FOUND, e.to_string())
        }
        Ok(Err(e)) => error(StatusCode::UNPROCESSABLE_ENTITY, e.to_string()),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

/// Header pairs as a JSON object (the last of repeated names wins, as a reader expects).
#[cfg(feature = "policy")]
fn pairs(headers: &[(String, String)]) -> serde_json::Value {
    headers
        .iter()
        .map(|(k, v)| (k.clone(), serde_json::Value::from(v.as_str())))
        .collect::<serde_json::Map<_, _>>()
        .into()
}

/// The request's body up to `limit` bytes, or the 413 answer.
async fn read_body(req: Request<Incoming>, limit: usize) -> Result<Bytes, Answer> {
    match Limited::new(req.into_body(), limit).collect().await {
        Ok(b) => Ok(b.to_bytes()),
        Err(e) => Err(Answer::json_status(
            StatusCode::PAYLOAD_TOO_LARGE,
            &serde_json::json!({ "error": format!("cannot read the body: {e}") }),
        )),
    }
}

/// Largest config accepted by `PUT /config`.
const MAX_CONFIG_BODY: usize = 4 << 20;

/// `PUT /config` (YAML, as in the config file): the admin config source applies it, and the
/// answer is the new version or every error, each with its field path.
async fn config_api(shared: &Shared, req: Request<Incoming>) -> Answer {
    let error = |status: StatusCode, e: &GatewayError| {
        let errors: Vec<String> = match e {
            GatewayError::Config(c) => c.field_errors().iter().map(ToString::to_string).collect(),
            other => vec![other.to_string()],
        };
        Answer::json_status(
            status,
            &serde_json::json!({ "error": e.to_string(), "errors": errors }),
        )
    };
    let yaml = match read_body(req, MAX_CONFIG_BODY).await {
        Ok(b) => b,
        Err(too_large) => return too_large,
    };
    let (reply, outcome) = tokio::sync::oneshot::channel();
    let push = crate::source::AdminPush { yaml, reply };
    if shared.admin_configs.send(push).await.is_err() {
        return error(StatusCode::SERVICE_UNAVAILABLE, &GatewayError::Stopped);
    }
    match outcome.await {
        Ok(Ok(version)) => json(&serde_json::json!({ "version": version })),
        Ok(Err(e)) => error(StatusCode::BAD_REQUEST, &e),
        Err(_) => error(StatusCode::SERVICE_UNAVAILABLE, &GatewayError::Stopped),
    }
}

/// The read side of the API, `GET path` (also what pages read through [`AdminApi`]).
fn read(shared: &Shared, path: &str) -> Answer {
    match path {
        "/metrics" => respond(
            StatusCode::OK,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            with_endpoint_health(shared.metrics.encode(), shared),
        ),
        "/ready" => {
            if shared.ready.load(Ordering::Acquire) {
                respond(StatusCode::OK, "text/plain", "ready\n".into())
            } else {
                respond(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "text/plain",
                    "not ready\n".into(),
                )
            }
        }
        "/config_dump" => config_dump(shared),
        "/clusters" => clusters(shared),
        p if p == "/functions" || p.starts_with("/functions/") => functions(shared, &p[10..]),
        #[cfg(feature = "policy")]
        "/policy/tenants" => policy_status(shared),
        // Browsers ask every site for one; an empty answer keeps their consoles quiet.
        "/favicon.ico" => Answer::text(StatusCode::NO_CONTENT, ""),
        "/" => respond(
            StatusCode::OK,
            "text/plain",
            "rampart admin: /metrics /ready /config_dump /clusters /functions /policy/tenants /ui\n".into(),
        ),
        _ => respond(StatusCode::NOT_FOUND, "text/plain", "not found\n".into()),
    }
}

/// `GET /functions[/NAME[/logs]]`: the function runtime's view, when one is linked.
fn functions(shared: &Shared, rest: &str) -> Answer {
    let Some(host) = &shared.functions else {
        return respond(
            StatusCode::NOT_FOUND,
            "text/plain",
            "this gateway runs no functions\n".into(),
        );
    };
    match host.admin(rest) {
        Some(v) => json(&v),
        None => respond(
            StatusCode::NOT_FOUND,
            "text/plain",
            "no such function\n".into(),
        ),
    }
}

/// `GET /config_dump`: the active config as written, its version, and the last rejected
/// reload's error.
fn config_dump(shared: &Shared) -> Answer {
    let snap = shared.snapshot.load();
    let last_error = shared
        .last_reload_error
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .clone();
    json(&serde_json::json!({
        "version": snap.version,
        "last_reload_error": last_error,
        "config": serde_json::from_slice::<serde_json::Value>(&snap.source)
            .unwrap_or(serde_json::Value::Null),
    }))
}

/// `GET /clusters`: every cluster by name, with its settings and its endpoints' state.
fn clusters(shared: &Shared) -> Answer {
    let snap = shared.snapshot.load();
    let mut names: Vec<_> = snap.clusters.keys().collect();
    names.sort();
    let clusters: Vec<_> = names
        .into_iter()
        .map(|name| cluster_json(name, &snap.clusters[name]))
        .collect();
    json(&serde_json::json!({ "clusters": clusters }))
}

fn cluster_json(name: &str, c: &ClusterRuntime) -> serde_json::Value {
    let eps: Vec<_> = c
        .endpoints()
        .iter()
        .map(|e| {
            serde_json::json!({
                "address": e.addr.to_string(),
                "source": e.source,
                "state": e.health.state(),
                "ejections": e.health.ejections(),
                "active_requests": e.active(),
                "total_requests": e.total(),
                "failures": e.failures(),
            })
        })
        .collect();
    let cb = &c.config.circuit_breakers;
    serde_json::json!({
        "name": name,
        "active_requests": c.active(),
        "circuit_breakers": {
            "max_connections": cb.max_connections,
            "max_pending_requests": cb.max_pending_requests,
            "max_requests": cb.max_requests,
            "max_retries": cb.max_retries,
            "retry_budget_percent": cb.retry_budget_percent,
        },
        "lb_policy": format!("{:?}", c.config.lb_policy),
        "protocol": format!("{:?}", c.config.protocol),
        "configured_endpoints": c.config.endpoints.iter().map(ToString::to_string).collect::<Vec<_>>(),
        "endpoints": eps,
    })
}

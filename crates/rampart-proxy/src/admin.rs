//! The admin endpoint, on its own port and runtime: `/metrics`, `/ready`, `/config_dump`,
//! `/clusters`, and (with the policy engine) `/policy/tenants[/<name>]`:
//!
//! ```text
//! GET    /policy/tenants          [{"tenant": "acme", "revision": "acme-1",
//!                                   "decisions": {"allowed": 9, "denied": 1, "errors": 0},
//!                                   "rejected": null}, ...]   (decisions of that revision;
//!                                   the last bundle refused since, with its revision)
//! PUT    /policy/tenants/<name>   {"modules": {"authz.rego": "package authz ..."},
//!                                  "data": {...}, "entrypoint": "data.authz.decision"}
//!                                 → 200 {"revision": ...}; 400 {"error": ...} (compile error,
//!                                   failing bundle tests: the old bundle keeps serving)
//! DELETE /policy/tenants/<name>   → 200, or 404
//! ```
//!
//! Who may use it: only requests whose Host is in `admin.allowed_hosts` (loopback names by
//! default) are answered, so a web page cannot reach the port through DNS rebinding; any
//! method other than GET and HEAD needs `Authorization: Bearer <token>` with the token from
//! `admin.token_file` (compared in constant time), and without a token file the API is
//! read-only. Connections are capped and a request's headers must arrive in time.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::runtime::Handle;

use hyper_util::rt::TokioTimer;
use rampart_config::model::Admin;

use crate::upstream::ClusterRuntime;
use crate::{GatewayError, Shared};

/// Who may call the admin API.
struct Access {
    token: Option<Vec<u8>>,
    allowed_hosts: Vec<String>,
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
        })
    }

    /// A refusal, or None when the request may proceed.
    fn check<B>(&self, req: &Request<B>) -> Option<Response<Full<Bytes>>> {
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
        if !allowed {
            return Some(respond(
                StatusCode::FORBIDDEN,
                "text/plain",
                "host not allowed on the admin port (admin.allowed_hosts)\n".into(),
            ));
        }
        if req.method() == Method::GET || req.method() == Method::HEAD {
            return None;
        }
        let Some(token) = &self.token else {
            return Some(respond(
                StatusCode::FORBIDDEN,
                "text/plain",
                "the admin API is read-only: no admin.token_file is configured\n".into(),
            ));
        };
        let sent = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.as_bytes().strip_prefix(b"Bearer "));
        if sent.is_some_and(|s| constant_time_eq(s, token)) {
            return None;
        }
        let mut r = respond(
            StatusCode::UNAUTHORIZED,
            "text/plain",
            "a bearer token is required: Authorization: Bearer <admin token>\n".into(),
        );
        r.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            header::HeaderValue::from_static("Bearer realm=\"rampart-admin\""),
        );
        Some(r)
    }
}

/// Equal without revealing through timing how long a common prefix is.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Binds the admin port and serves it on `rt`; returns the bound address.
pub(crate) async fn spawn(
    cfg: &Admin,
    shared: Arc<Shared>,
    rt: &Handle,
) -> Result<SocketAddr, GatewayError> {
    let access = Arc::new(Access::load(cfg)?);
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
            let shared = shared.clone();
            let access = access.clone();
            tokio::spawn(async move {
                let _permit = permit;
                let svc = service_fn(move |req: Request<Incoming>| {
                    let shared = shared.clone();
                    let access = access.clone();
                    async move {
                        if let Some(refused) = access.check(&req) {
                            return Ok(refused);
                        }
                        if req.uri().path() == "/config" && req.method() == Method::PUT {
                            return Ok(config_api(&shared, req).await);
                        }
                        #[cfg(feature = "policy")]
                        if req.uri().path().starts_with("/policy/") {
                            return Ok::<_, std::convert::Infallible>(
                                policy_api(&shared, req).await,
                            );
                        }
                        Ok::<_, std::convert::Infallible>(route(&shared, &req))
                    }
                });
                let mut builder = auto::Builder::new(TokioExecutor::new());
                builder
                    .http1()
                    .timer(TokioTimer::new())
                    .header_read_timeout(header_read_timeout);
                builder.http2().timer(TokioTimer::new());
                // A connection that sends nothing for long is dropped too.
                let idle = header_read_timeout * 6;
                let _ =
                    tokio::time::timeout(idle, builder.serve_connection(TokioIo::new(stream), svc))
                        .await;
            });
        }
    });
    tracing::info!(%local, "admin endpoint listening");
    Ok(local)
}

fn respond(status: StatusCode, content_type: &'static str, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(content_type),
    );
    r
}

fn json(v: &serde_json::Value) -> Response<Full<Bytes>> {
    respond(
        StatusCode::OK,
        "application/json",
        serde_json::to_string_pretty(v).unwrap_or_default() + "\n",
    )
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
async fn policy_api(shared: &Shared, req: Request<Incoming>) -> Response<Full<Bytes>> {
    use http_body_util::{BodyExt, Limited};
    let error = |status: StatusCode, msg: String| {
        let mut r = json(&serde_json::json!({ "error": msg }));
        *r.status_mut() = status;
        r
    };
    let Some(engine) = shared.policy.engine() else {
        return error(
            StatusCode::NOT_FOUND,
            "no policy engine (the config has no policy section)".into(),
        );
    };
    let path = req.uri().path().to_string();
    let tenant = path
        .strip_prefix("/policy/tenants/")
        .filter(|t| !t.is_empty() && !t.contains('/'))
        .map(str::to_string);
    match (req.method().clone(), tenant) {
        (Method::GET, None) if path == "/policy/tenants" => {
            json(&serde_json::to_value(engine.status()).unwrap_or_default())
        }
        (Method::PUT, Some(tenant)) => {
            let body = match Limited::new(req.into_body(), MAX_BUNDLE_BODY)
                .collect()
                .await
            {
                Ok(b) => b.to_bytes(),
                Err(e) => {
                    return error(
                        StatusCode::PAYLOAD_TOO_LARGE,
                        format!("cannot read the body: {e}"),
                    );
                }
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

/// Largest config accepted by `PUT /config`.
const MAX_CONFIG_BODY: usize = 4 << 20;

/// `PUT /config` (YAML, as in the config file): the admin config source applies it, and the
/// answer is the new version or every error, each with its field path.
async fn config_api(shared: &Shared, req: Request<Incoming>) -> Response<Full<Bytes>> {
    use http_body_util::{BodyExt, Limited};
    let error = |status: StatusCode, e: &GatewayError| {
        let errors: Vec<String> = match e {
            GatewayError::Config(c) => c.field_errors().iter().map(ToString::to_string).collect(),
            other => vec![other.to_string()],
        };
        let mut r = json(&serde_json::json!({ "error": e.to_string(), "errors": errors }));
        *r.status_mut() = status;
        r
    };
    let yaml = match Limited::new(req.into_body(), MAX_CONFIG_BODY)
        .collect()
        .await
    {
        Ok(b) => b.to_bytes(),
        Err(e) => {
            let mut r = json(&serde_json::json!({ "error": format!("cannot read the body: {e}") }));
            *r.status_mut() = StatusCode::PAYLOAD_TOO_LARGE;
            return r;
        }
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

fn route(shared: &Shared, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return respond(
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            "GET only\n".into(),
        );
    }
    match req.uri().path() {
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
        "/" => respond(
            StatusCode::OK,
            "text/plain",
            "rampart admin: /metrics /ready /config_dump /clusters /functions\n".into(),
        ),
        _ => respond(StatusCode::NOT_FOUND, "text/plain", "not found\n".into()),
    }
}

/// `GET /functions[/NAME[/logs]]`: the function runtime's view, when one is linked.
fn functions(shared: &Shared, rest: &str) -> Response<Full<Bytes>> {
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
fn config_dump(shared: &Shared) -> Response<Full<Bytes>> {
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
fn clusters(shared: &Shared) -> Response<Full<Bytes>> {
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

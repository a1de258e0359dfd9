//! One request's path through the data plane, as a small pipeline:
//!
//! ```text
//!  handle ─► ingress::prepare ─► select ─► request filters ─► act ─► response filters ─► log
//!            (normalise once)   (route,    (listener's,       │       (innermost first)
//!                                target)    then route's)     ├─ local::direct / local::redirect
//!                                                             ├─ forward (attempts; retry::decide)
//!                                                             └─ upgrade (WebSocket splice)
//! ```
//!
//! The steps that decide (route and target selection, redirects, retry decisions) are plain
//! functions of their inputs with unit tests; this module sequences them and carries one
//! request's state in an [`Exchange`].

mod forward;
mod local;
mod retry;
mod upgrade;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Instant;

use http::header::{self, HeaderMap, HeaderValue};
use http::{Request, Response, StatusCode, Version, request, response};
use hyper::body::Incoming;
use rampart_config::model::{Action, Route};
use rampart_router::{RequestView, pick_weighted};

use crate::Shared;
use crate::access_log::AccessEntry;
use crate::body::ProxyBody;
use crate::error::{Blame, ProxyError, local_response};
use crate::filter::{BodyObserver, FilterRef, RequestContext, ResponseSource, Verdict};
use crate::filters::header_mutation;
use crate::ingress;
use crate::metrics::RouteStats;
use crate::observe::ObservedBody;
use crate::observe::keeps_length;
use crate::snapshot::{ListenerSnap, RouteData, Target};

/// State of one downstream connection.
pub(crate) struct ConnCtx {
    pub(crate) shared: Arc<Shared>,
    pub(crate) listener: Arc<str>,
    /// The data-plane worker serving it: requests use this worker's upstream connections.
    pub(crate) worker: usize,
    pub(crate) client: SocketAddr,
    pub(crate) client_ip: HeaderValue,
    /// `https` on TLS listeners, else `http`.
    pub(crate) scheme: &'static str,
    /// Where the client originally connected, when an iptables REDIRECT brought it here.
    pub(crate) original_dst: Option<SocketAddr>,
    /// Handler calls in progress, for the idle watchdog.
    pub(crate) inflight: AtomicUsize,
    /// Requests served on this connection.
    pub(crate) requests: AtomicU64,
    /// The socket's own address, read only when connection labels are reported.
    pub(crate) local: Option<SocketAddr>,
    /// The labels last reported for it.
    pub(crate) labelled: crate::conn_labels::Reported,
}

struct InflightCount<'a>(&'a AtomicUsize);

impl Drop for InflightCount<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

pub(crate) async fn handle(
    conn: Arc<ConnCtx>,
    req: Request<Incoming>,
) -> Result<Response<ProxyBody>, Infallible> {
    conn.inflight.fetch_add(1, Ordering::Relaxed);
    let _count = InflightCount(&conn.inflight);
    conn.requests.fetch_add(1, Ordering::Relaxed);
    let started = Instant::now();
    // The listener's part of the current snapshot; it keeps everything the request needs alive.
    let lsnap = conn
        .shared
        .snapshot
        .load()
        .listeners
        .get(&*conn.listener)
        .cloned();
    let Some(lsnap) = lsnap else {
        let mut resp = local_response(
            StatusCode::SERVICE_UNAVAILABLE,
            "listener is draining after a config change; reconnect\n",
        );
        resp.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
        return Ok(resp);
    };
    let (mut parts, body) = req.into_parts();
    let grpc = is_grpc(&parts.headers);
    let mut log = AccessEntry::start(&parts, conn.client, conn.shared.access_log.enabled());
    let (mut resp, stats) =
        match ingress::prepare(&mut parts, &lsnap.http, conn.scheme, conn.client.ip()) {
            Ok(()) => match select(&lsnap, &parts, || fastrand::u64(..)) {
                Ok(picked) => {
                    let stats = picked.stats(&conn.shared.metrics, &lsnap.name);
                    let mut x = Exchange {
                        conn: &conn,
                        lsnap: &lsnap,
                        route: picked.route,
                        data: picked.data,
                        target: picked.target,
                        started,
                        log: &mut log,
                        tenant: None,
                    };
                    let resp = serve(&mut x, parts, body).await;
                    report_labels(&x);
                    (resp, stats)
                }
                Err(e) => (e.to_response(), &lsnap.no_route_stats),
            },
            Err(refused) => {
                conn.shared.metrics.request_error(Blame::Downstream.label());
                (refused.to_response(), &lsnap.no_route_stats)
            }
        };
    if grpc {
        resp = grpc_local_reply(resp);
    }
    let took = started.elapsed();
    stats.record(resp.status(), took.as_secs_f64());
    log.finish(resp.status(), took);
    conn.shared.access_log.write(&log);
    Ok(resp)
}

fn is_grpc(h: &HeaderMap) -> bool {
    h.get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"))
}

/// gRPC clients read the outcome from `grpc-status`, not the HTTP status: a reply the proxy
/// generated itself (no route, overload, upstream failure...) becomes a trailers-only gRPC
/// response, with the HTTP status mapped as in gRPC's HTTP-to-gRPC table.
fn grpc_local_reply(resp: Response<ProxyBody>) -> Response<ProxyBody> {
    if !resp.headers().contains_key("x-rampart-local") || resp.status() == StatusCode::OK {
        return resp;
    }
    let code: u16 = match resp.status().as_u16() {
        400 => 13,             // INTERNAL
        401 => 16,             // UNAUTHENTICATED
        403 => 7,              // PERMISSION_DENIED
        404 => 12,             // UNIMPLEMENTED
        413 | 431 => 8,        // RESOURCE_EXHAUSTED
        504 => 4,              // DEADLINE_EXCEEDED
        429 | 502 | 503 => 14, // UNAVAILABLE
        _ => 2,                // UNKNOWN
    };
    let message = resp
        .headers()
        .get("x-rampart-error")
        .cloned()
        .unwrap_or_else(|| HeaderValue::from_static("proxy error"));
    let mut out = Response::new(ProxyBody::empty());
    let h = out.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    h.insert("grpc-status", HeaderValue::from(code));
    h.insert("grpc-message", message);
    h.insert("x-rampart-local", HeaderValue::from_static("1"));
    if let Some(v) = resp.headers().get("x-rampart-overloaded") {
        h.insert("x-rampart-overloaded", v.clone());
    }
    out
}

/// The request's normalised authority: `ingress::prepare` left it in Host.
fn authority(parts: &request::Parts) -> Option<&str> {
    parts
        .headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .filter(|a| !a.is_empty())
}

/// One request in flight: what each step of its path reads, and the access-log entry they
/// fill in.
pub(crate) struct Exchange<'a> {
    conn: &'a ConnCtx,
    lsnap: &'a ListenerSnap,
    route: &'a Route,
    data: &'a RouteData,
    /// The cluster a forwarding route picked; none for local answers.
    target: Option<&'a Target>,
    started: Instant,
    log: &'a mut AccessEntry,
    /// The tenant a policy decided for, once the request filters ran.
    tenant: Option<Arc<str>>,
}

/// Tells the connection-label sink, if any, what this request took.
fn report_labels(x: &Exchange<'_>) {
    let (Some(sink), Some(local)) = (&x.conn.shared.connection_labels, x.conn.local) else {
        return;
    };
    let labels = crate::conn_labels::Labels {
        route: x.data.name.clone(),
        cluster: x.target.map(|t| t.name.clone()),
        tenant: x.tenant.clone(),
    };
    x.conn
        .labelled
        .report(&**sink, (local, x.conn.client), labels);
}

impl<'a> Exchange<'a> {
    /// The listener's filters, then the route's.
    fn chain(&self) -> impl DoubleEndedIterator<Item = &'a FilterRef> + Clone + use<'a> {
        let (listener, route) = (self.lsnap, self.data);
        listener.filters.iter().chain(route.filters.iter())
    }

    fn has_filters(&self) -> bool {
        !self.lsnap.filters.is_empty() || !self.data.filters.is_empty()
    }

    /// The request body limit: the route's, else the listener's.
    fn body_limit(&self) -> Option<u64> {
        self.route
            .max_request_body_bytes
            .or(self.lsnap.limits.max_request_body_bytes)
    }
}

/// The route and target a request goes to.
struct Selected<'s> {
    route: &'s Route,
    data: &'s RouteData,
    target: Option<&'s Target>,
}

impl<'s> Selected<'s> {
    /// What the response counts toward: the target's stats, or the route's local ones.
    fn stats(&self, metrics: &crate::metrics::Metrics, listener: &str) -> &'s RouteStats {
        match self.target {
            Some(t) => t
                .stats
                .get_or_init(|| metrics.route_stats(listener, &self.data.name, &t.name)),
            None => self
                .data
                .local_stats
                .get_or_init(|| metrics.route_stats(listener, &self.data.name, "")),
        }
    }
}

/// Picks the route for a prepared request, and for a forwarding route its cluster (`roll`
/// chooses among weighted clusters; it is called only for those).
fn select<'s>(
    lsnap: &'s ListenerSnap,
    parts: &request::Parts,
    roll: impl FnOnce() -> u64,
) -> Result<Selected<'s>, ProxyError> {
    let host = authority(parts).ok_or(ProxyError::MissingHost)?;
    let view = RequestView {
        method: &parts.method,
        authority: host,
        path: parts.uri.path(),
        query: parts.uri.query(),
        headers: &parts.headers,
    };
    let matched = lsnap
        .table
        .route(&view)
        .map_err(|no| ProxyError::NoRoute(no.reason()))?;
    let (route, data) = (matched.entry, &**matched.data);
    let target = match &route.action {
        Action::Forward(f) if data.targets.len() > 1 => {
            let picked = pick_weighted(&f.clusters, roll());
            data.targets.iter().find(|t| Some(&*t.name) == picked)
        }
        Action::Forward(_) => data.targets.first(),
        _ => None,
    };
    Ok(Selected {
        route,
        data,
        target,
    })
}

/// Serves a routed request: request filters, the route's action, response filters.
async fn serve(
    x: &mut Exchange<'_>,
    mut parts: request::Parts,
    body: Incoming,
) -> Response<ProxyBody> {
    x.log.route = Some(x.data.name.clone());
    x.log.cluster = x.target.map(|t| t.name.clone());
    // Headers only filters (and the policy) may set: the client's copies go before any filter.
    for h in x
        .lsnap
        .http
        .trusted_headers
        .iter()
        .chain(&x.route.trusted_headers)
    {
        parts.headers.remove(h);
    }
    if let (Some(max), Some(len)) = (x.body_limit(), content_length(&parts.headers))
        && len > max
    {
        return ProxyError::BodyTooLarge { limit: max }.to_response();
    }
    let request_id = match parts.headers.get("x-request-id") {
        Some(v) if !v.is_empty() => v.clone(),
        _ => {
            let id = new_request_id();
            parts.headers.insert("x-request-id", id.clone());
            id
        }
    };
    x.log.request_id = Some(request_id.clone());
    let mut ctx = RequestContext {
        request_id,
        client_addr: x.conn.client,
        listener: x.lsnap.name.clone(),
        route: x.data.name.clone(),
        cluster: x.target.map(|t| t.name.clone()),
        started: x.started,
        response_source: None,
        extensions: http::Extensions::new(),
        tenant: None,
    };
    if x.has_filters() {
        for f in x.chain() {
            if let Verdict::Respond(resp) =
                f.on_request_headers(&mut ctx, &mut parts).resolve().await
            {
                x.tenant.clone_from(&ctx.tenant);
                ctx.response_source = Some(ResponseSource::Local);
                return finish_response(resp, x.route, x.chain(), &mut ctx).await;
            }
        }
        x.tenant.clone_from(&ctx.tenant);
    }
    let (resp, source) = act(x, &ctx, &mut parts, body).await;
    if x.has_filters() {
        ctx.response_source = Some(source);
        finish_response(resp, x.route, x.chain(), &mut ctx).await
    } else {
        let (mut rparts, rbody) = resp.into_parts();
        header_mutation::apply(&x.route.response_headers, &mut rparts.headers);
        Response::from_parts(rparts, rbody)
    }
}

/// The route's action: a local answer, or the upstream's.
async fn act(
    x: &mut Exchange<'_>,
    ctx: &RequestContext,
    parts: &mut request::Parts,
    body: Incoming,
) -> (Response<ProxyBody>, ResponseSource) {
    let route = x.route;
    let f = match &route.action {
        Action::DirectResponse(d) => return (local::direct(d), ResponseSource::Local),
        Action::Redirect(r) => {
            let resp = local::redirect(r, route, parts, x.conn.scheme, &x.lsnap.http.path);
            return (resp, ResponseSource::Local);
        }
        Action::Function(name) => {
            // The runtime's own failures carry the local marker; the guest's answers cannot.
            let resp = function(x, ctx, name, parts, body).await;
            let source = if resp.headers().contains_key("x-rampart-local") {
                ResponseSource::Local
            } else {
                ResponseSource::Upstream
            };
            return (resp, source);
        }
        Action::Forward(f) => f,
    };
    let observers: Vec<Box<dyn BodyObserver>> = if x.has_filters() {
        x.chain()
            .filter_map(|f| f.request_body_observer(ctx))
            .collect()
    } else {
        Vec::new()
    };
    match forward::forward(x, f, parts, body, observers).await {
        Ok(r) => (r, ResponseSource::Upstream),
        Err(e) => {
            // The client sees only the kind of failure; the details are here.
            if e.blame() == Blame::Downstream {
                tracing::debug!(error = %e, route = %x.data.name, "request refused");
            } else {
                tracing::info!(error = %e, route = %x.data.name, "request failed");
            }
            x.conn.shared.metrics.request_error(e.blame().label());
            (e.to_response(), ResponseSource::Local)
        }
    }
}

/// Hands the request to the function runtime the binary linked.
async fn function(
    x: &Exchange<'_>,
    ctx: &RequestContext,
    name: &str,
    parts: &request::Parts,
    body: Incoming,
) -> Response<ProxyBody> {
    let Some(host) = &x.conn.shared.functions else {
        return local_response(
            StatusCode::SERVICE_UNAVAILABLE,
            "this gateway runs no functions\n",
        );
    };
    let call = crate::function::Invocation {
        request_id: ctx.request_id.clone(),
        client: x.conn.client,
        scheme: x.conn.scheme,
        body_limit: x.body_limit(),
    };
    host.invoke(name, Request::from_parts(parts.clone(), body), call)
        .await
}

/// Applies the route's response header edits and the response filters (innermost first).
async fn finish_response<'f>(
    resp: Response<ProxyBody>,
    route: &Route,
    chain: impl DoubleEndedIterator<Item = &'f FilterRef> + Clone,
    ctx: &mut RequestContext,
) -> Response<ProxyBody> {
    let (mut parts, body) = resp.into_parts();
    header_mutation::apply(&route.response_headers, &mut parts.headers);
    for f in chain.clone().rev() {
        if let Verdict::Respond(replacement) =
            f.on_response_headers(ctx, &mut parts).resolve().await
        {
            return replacement;
        }
    }
    let observers: Vec<Box<dyn BodyObserver>> = chain
        .rev()
        .filter_map(|f| f.response_body_observer(ctx, &parts))
        .collect();
    if observers.is_empty() {
        Response::from_parts(parts, body)
    } else {
        if !keeps_length(&observers) {
            parts.headers.remove(header::CONTENT_LENGTH);
        }
        Response::from_parts(
            parts,
            ProxyBody::boxed(ObservedBody::new(body, observers, None)),
        )
    }
}

fn content_length(h: &HeaderMap) -> Option<u64> {
    h.get(header::CONTENT_LENGTH)?.to_str().ok()?.parse().ok()
}

fn response_from_upstream(mut parts: response::Parts, body: ProxyBody) -> Response<ProxyBody> {
    // The downstream connection decides its own version and framing.
    parts.version = Version::HTTP_11;
    // The marker of the gateway's own answers: an upstream cannot pass for the gateway.
    parts.headers.remove("x-rampart-local");
    Response::from_parts(parts, body)
}

/// A random UUIDv4-formatted request id.
fn new_request_id() -> HeaderValue {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut v = fastrand::u128(..);
    v = (v & !(0xf << 76)) | (0x4 << 76); // version 4
    v = (v & !(0x3 << 62)) | (0x2 << 62); // RFC 4122 variant
    let mut out = [0u8; 36];
    let mut nibble = 0;
    for (i, slot) in out.iter_mut().enumerate() {
        if matches!(i, 8 | 13 | 18 | 23) {
            *slot = b'-';
        } else {
            *slot = HEX[((v >> (124 - 4 * nibble)) & 0xf) as usize];
            nibble += 1;
        }
    }
    HeaderValue::from_bytes(&out).unwrap_or_else(|_| HeaderValue::from_static("invalid"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids_are_uuid_v4() {
        let a = new_request_id();
        let b = new_request_id();
        assert_ne!(a, b);
        let s = a.to_str().unwrap_or_default();
        assert_eq!(s.len(), 36);
        assert_eq!(&s[14..15], "4");
        assert!(matches!(&s[19..20], "8" | "9" | "a" | "b"), "{s}");
    }
}

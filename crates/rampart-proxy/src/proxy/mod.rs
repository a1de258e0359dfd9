//! One request's path: route → request filters → action (forward, direct response, redirect)
//! → response filters → access log and stats.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use http::header::{self, HeaderMap, HeaderValue};
use http::{Request, Response, StatusCode, Uri, Version, request, response};
use hyper::body::Incoming;
use rampart_config::model::{Action, DirectResponse, Forward, Redirect, Route};
use rampart_router::normalize::normalize_rewritten;
use rampart_router::{RequestView, pick_weighted, rewrite_path};

use crate::Shared;
use crate::access_log::AccessEntry;
use crate::body::{BodyAbort, BodyPace, ProxyBody};
use crate::error::{Blame, ProxyError, local_response};
use crate::filter::{BodyObserver, FilterRef, RequestContext, Verdict};
use crate::filters::header_mutation;
use crate::ingress::{self, strip_hop_by_hop};
use crate::metrics::RouteStats;
use crate::observe::ObservedBody;
use crate::snapshot::{ListenerSnap, RouteData, Target};
use crate::upstream::health::{self, Outcome};
use crate::upstream::{ClusterRuntime, ResponseTail};

/// Default per-route timeout (as Envoy's), until the upstream's response headers arrive.
const DEFAULT_ROUTE_TIMEOUT: Duration = Duration::from_secs(15);

/// State of one downstream connection.
pub(crate) struct ConnCtx {
    pub(crate) shared: Arc<Shared>,
    pub(crate) listener: Arc<str>,
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
            Ok(()) => route_and_serve(&conn, &lsnap, parts, body, started, &mut log).await,
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

/// Routes and serves one request; returns the response and the stats it counts toward.
async fn route_and_serve<'s>(
    conn: &ConnCtx,
    lsnap: &'s ListenerSnap,
    mut parts: request::Parts,
    body: Incoming,
    started: Instant,
    log: &mut AccessEntry,
) -> (Response<ProxyBody>, &'s RouteStats) {
    let Some(host) = authority(&parts) else {
        return (ProxyError::MissingHost.to_response(), &lsnap.no_route_stats);
    };
    let view = RequestView {
        method: &parts.method,
        authority: host,
        path: parts.uri.path(),
        query: parts.uri.query(),
        headers: &parts.headers,
    };
    let matched = match lsnap.table.route(&view) {
        Ok(m) => m,
        Err(no) => {
            return (
                ProxyError::NoRoute(no.reason()).to_response(),
                &lsnap.no_route_stats,
            );
        }
    };
    let route = matched.entry;
    let rd = &lsnap.routes[matched.vhost][matched.route];
    log.route = Some(rd.name.clone());
    // Headers only filters (and the policy) may set: the client's copies go before any filter.
    for h in lsnap
        .http
        .trusted_headers
        .iter()
        .chain(&route.trusted_headers)
    {
        parts.headers.remove(h);
    }

    let target = match &route.action {
        Action::Forward(f) if rd.targets.len() > 1 => {
            let picked = pick_weighted(&f.clusters, fastrand::u64(..));
            rd.targets.iter().find(|t| Some(&*t.name) == picked)
        }
        Action::Forward(_) => rd.targets.first(),
        _ => None,
    };
    let stats = target.map_or(&rd.local_stats, |t| &t.stats);
    log.cluster = target.map(|t| t.name.clone());

    let limit = route
        .max_request_body_bytes
        .or(lsnap.limits.max_request_body_bytes);
    let resp = serve_route(
        conn, started, lsnap, rd, route, target, limit, &mut parts, body, log,
    )
    .await;
    (resp, stats)
}

#[allow(clippy::too_many_arguments)] // one call site; a struct would only rename these
async fn serve_route(
    conn: &ConnCtx,
    started: Instant,
    lsnap: &ListenerSnap,
    rd: &RouteData,
    route: &Route,
    target: Option<&Target>,
    limit: Option<u64>,
    parts: &mut request::Parts,
    body: Incoming,
    log: &mut AccessEntry,
) -> Response<ProxyBody> {
    if let (Some(max), Some(len)) = (limit, content_length(&parts.headers))
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
    log.request_id = Some(request_id.clone());
    let has_filters = !lsnap.filters.is_empty() || !rd.filters.is_empty();
    let mut ctx = RequestContext {
        request_id,
        client_addr: conn.client,
        listener: lsnap.name.clone(),
        route: rd.name.clone(),
        cluster: target.map(|t| t.name.clone()),
        started,
        extensions: http::Extensions::new(),
    };
    let chain = || lsnap.filters.iter().chain(rd.filters.iter());

    if has_filters {
        for f in chain() {
            if let Verdict::Respond(resp) = f.on_request_headers(&mut ctx, parts).resolve().await {
                return finish_response(resp, route, chain(), &mut ctx).await;
            }
        }
    }

    let resp = match &route.action {
        Action::DirectResponse(d) => direct(d),
        Action::Redirect(r) => redirect(r, route, parts, conn.scheme, &lsnap.http.path),
        Action::Forward(f) => match target {
            Some(t) => {
                let observers: Vec<Box<dyn BodyObserver>> = if has_filters {
                    chain()
                        .filter_map(|f| f.request_body_observer(&ctx))
                        .collect()
                } else {
                    Vec::new()
                };
                match forward(conn, lsnap, f, route, t, parts, body, observers, log).await {
                    Ok(r) => r,
                    Err(e) => {
                        // The client sees only the kind of failure; the details are here.
                        if e.blame() == Blame::Downstream {
                            tracing::debug!(error = %e, route = %rd.name, "request refused");
                        } else {
                            tracing::info!(error = %e, route = %rd.name, "request failed");
                        }
                        conn.shared.metrics.request_error(e.blame().label());
                        e.to_response()
                    }
                }
            }
            None => ProxyError::UnknownCluster {
                cluster: f
                    .clusters
                    .first()
                    .map(|c| c.cluster.clone())
                    .unwrap_or_default(),
            }
            .to_response(),
        },
    };
    if has_filters {
        finish_response(resp, route, chain(), &mut ctx).await
    } else {
        let (mut rparts, rbody) = resp.into_parts();
        header_mutation::apply(&route.response_headers, &mut rparts.headers);
        Response::from_parts(rparts, rbody)
    }
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
        // Observers may change chunk sizes: the length is no longer known up front.
        parts.headers.remove(header::CONTENT_LENGTH);
        Response::from_parts(
            parts,
            ProxyBody::boxed(ObservedBody::new(body, observers, None)),
        )
    }
}

fn content_length(h: &HeaderMap) -> Option<u64> {
    h.get(header::CONTENT_LENGTH)?.to_str().ok()?.parse().ok()
}

fn direct(d: &DirectResponse) -> Response<ProxyBody> {
    let mut resp = Response::new(ProxyBody::full(d.body.clone()));
    *resp.status_mut() = d.status;
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, d.content_type.clone());
    resp
}

/// A configured redirect. Without a configured scheme, host or port the Location is
/// relative (RFC 9110 §10.2.2), so the client's Host is never reflected into it; otherwise it
/// is absolute, built from the configured parts and the normalised authority.
fn redirect(
    r: &Redirect,
    route: &Route,
    parts: &request::Parts,
    default_scheme: &str,
    path_options: &rampart_config::model::PathOptions,
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
        let (req_host, req_port) = split_host_port(authority(parts).unwrap_or_default());
        let scheme = r.scheme.as_deref().unwrap_or(default_scheme);
        let host = r.host.as_deref().unwrap_or(req_host);
        // A new host drops the request's port unless one is configured.
        let port = r.port.map(|p| p.to_string()).or_else(|| {
            r.host
                .is_none()
                .then(|| req_port.map(str::to_owned))
                .flatten()
        });
        location = format!("{scheme}://{host}");
        if let Some(p) = port {
            location.push(':');
            location.push_str(&p);
        }
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

#[allow(clippy::too_many_arguments)] // one call site; a struct would only rename these
async fn forward(
    conn: &ConnCtx,
    lsnap: &ListenerSnap,
    f: &Forward,
    route: &Route,
    target: &Target,
    parts: &mut request::Parts,
    body: Incoming,
    observers: Vec<Box<dyn BodyObserver>>,
    log: &mut AccessEntry,
) -> Result<Response<ProxyBody>, ProxyError> {
    let limit = route
        .max_request_body_bytes
        .or(lsnap.limits.max_request_body_bytes);
    let cluster = &target.cluster;
    let hash = request_hash(&f.hash_policy, &parts.headers, conn.client);

    // Host: the normalised authority ingress decided on, unless the route rewrites it.
    // Hop-by-hop headers went at ingress, before any filter could add one of their names.
    let original_host = parts
        .headers
        .get(header::HOST)
        .cloned()
        .unwrap_or_else(|| HeaderValue::from_static(""));
    let upgrade = parts
        .extensions
        .get::<ingress::UpgradeProtocol>()
        .map(|u| u.0.clone());
    let h = &mut parts.headers;
    if let Some(proto) = &upgrade {
        // The one hop-by-hop exchange a proxy relays: the switch itself.
        h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        h.insert(header::UPGRADE, proto.clone());
    }
    match h.get_mut("x-forwarded-for") {
        Some(existing) => {
            let mut v = existing.as_bytes().to_vec();
            v.extend_from_slice(b", ");
            v.extend_from_slice(conn.client_ip.as_bytes());
            if let Ok(v) = HeaderValue::from_bytes(&v) {
                *existing = v;
            }
        }
        None => {
            h.insert("x-forwarded-for", conn.client_ip.clone());
        }
    }
    h.insert("x-forwarded-proto", HeaderValue::from_static(conn.scheme));
    if !original_host.is_empty() {
        h.insert("x-forwarded-host", original_host.clone());
    }
    h.insert(
        header::HOST,
        f.host_rewrite.clone().unwrap_or(original_host),
    );
    header_mutation::apply(&route.request_headers, h);

    let path_and_query = match &f.prefix_rewrite {
        Some(rw) => {
            let p = rewrite_path(route.matcher.path.as_ref(), parts.uri.path(), rw);
            // The rewrite result is normalised again and must stay under the rewrite.
            let p = normalize_rewritten(&p, rw, &lsnap.http.path)
                .map_err(|e| ProxyError::BadRewrite { reason: e.reason() })?;
            let pq = match parts.uri.query() {
                Some(q) => format!("{p}?{q}"),
                None => p,
            };
            pq.parse::<http::uri::PathAndQuery>()
                .map_err(|e| ProxyError::Internal(format!("rewritten path is invalid: {e}")))?
        }
        None => parts
            .uri
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| http::uri::PathAndQuery::from_static("/")),
    };
    if upgrade.is_some() {
        return forward_upgrade(cluster, conn, parts, body, path_and_query, log).await;
    }
    // gRPC streams may rightly stay open with little data for as long as they live: they
    // are bounded by the route timeout and the idle timeout instead.
    let pace = (!is_grpc(&parts.headers)).then_some(BodyPace {
        timeout: lsnap.limits.request_body_timeout,
        min_rate: lsnap.limits.min_request_body_rate,
    });
    // Set when a body streams: only such requests pay for the shared abort slot.
    let mut abort = None;
    let retry = f
        .retries
        .as_ref()
        .filter(|r| r.retry_non_idempotent || parts.method.is_idempotent());
    // A retry must send the body again, so only an empty or small, fully known body can be
    // retried; it is read whole first (as Envoy buffers for retries). Anything else streams
    // once and is not retried.
    let replay = match retry {
        Some(_) if observers.is_empty() => replayable(&parts.headers, body, pace).await,
        _ => Replay::Stream(body),
    };
    let (replay, mut stream) = match replay {
        Replay::Bytes(b) => (Some(b), None),
        Replay::Stream(body) => {
            use http_body::Body as _;
            let mut body = if body.is_end_stream() && observers.is_empty() {
                ProxyBody::stream(body)
            } else {
                let a = BodyAbort::default();
                abort = Some(a.clone());
                ProxyBody::request(body, limit, pace, a)
            };
            if !observers.is_empty() {
                body = ProxyBody::boxed(ObservedBody::new(body, observers, abort.clone()));
                parts.headers.remove(header::CONTENT_LENGTH);
            }
            (None, Some(body))
        }
        Replay::Failed(e) => return Err(e),
    };
    let max_retries = match (retry, &replay) {
        (Some(r), Some(_)) => r.max_retries,
        _ => 0,
    };
    let mut headers = std::mem::take(&mut parts.headers);

    let timeout = f.timeout.unwrap_or(DEFAULT_ROUTE_TIMEOUT);
    let deadline = (!timeout.is_zero()).then(|| Instant::now() + timeout);
    let mut attempt = 0;
    // Held while a retry is in flight, for the retry budget.
    let mut _retrying: Option<RetryToken<'_>> = None;
    loop {
        let last = attempt >= max_retries;
        let guard = cluster.pick_for(conn.original_dst, hash)?;
        let ep = guard.endpoint().clone();
        log.upstream = Some(ep.addr);
        let body = match &replay {
            Some(b) if b.is_empty() => ProxyBody::empty(),
            Some(b) => ProxyBody::full(b.clone()),
            None => stream.take().unwrap_or_else(ProxyBody::empty),
        };
        let mut up = Request::new(body);
        *up.method_mut() = parts.method.clone();
        *up.uri_mut() = Uri::from(path_and_query.clone());
        *up.headers_mut() = if last {
            std::mem::take(&mut headers)
        } else {
            headers.clone()
        };

        let mut try_timeout = deadline.map(|d| d.saturating_duration_since(Instant::now()));
        if let Some(per_try) = retry.and_then(|r| r.per_try_timeout) {
            try_timeout = Some(try_timeout.map_or(per_try, |t| t.min(per_try)));
        }
        let sent = Instant::now();
        let result = match try_timeout {
            None => cluster.send(&ep, up).await,
            Some(t) => match tokio::time::timeout(t, cluster.send(&ep, up)).await {
                Ok(r) => r,
                Err(_) => Err(ProxyError::UpstreamTimeout {
                    endpoint: ep.addr.to_string(),
                    timeout_ms: t.as_millis(),
                }),
            },
        };
        let retry_wanted = match &result {
            Ok((resp, _)) => {
                let status = resp.status().as_u16();
                target
                    .upstream_latency
                    .observe(sent.elapsed().as_secs_f64());
                health::observe(cluster, &ep, Outcome::Status(status));
                retry.is_some_and(|r| r.retry_status(status))
            }
            Err(e) => {
                if let Some(r) = abort.as_ref().and_then(BodyAbort::get) {
                    return Err(ProxyError::BodyRejected {
                        status: r.status,
                        reason: r.reason.clone(),
                    });
                }
                if matches!(e, ProxyError::Overflow { .. }) {
                    cluster.stats.overflows.inc();
                } else if e.blame() == Blame::Upstream {
                    // Only the upstream's own failures count against the endpoint.
                    ep.record_failure();
                    health::observe(cluster, &ep, Outcome::LocalFailure);
                }
                retry.is_some_and(|r| retriable_error(r, e))
            }
        };
        let out_of_time = deadline.is_some_and(|d| Instant::now() >= d);
        if retry_wanted
            && !last
            && !out_of_time
            && let (Some(r), Some(token)) = (retry, RetryToken::take(cluster))
        {
            drop(result);
            drop(guard);
            attempt += 1;
            cluster.stats.retries.inc();
            let mut pause = health::backoff(attempt, r.base_interval, r.max_interval);
            if let Some(d) = deadline {
                pause = pause.min(d.saturating_duration_since(Instant::now()));
            }
            tokio::time::sleep(pause).await;
            _retrying = Some(token);
            continue;
        }
        return match result {
            Ok((resp, lease)) => {
                let (mut rparts, rbody) = resp.into_parts();
                strip_hop_by_hop(&mut rparts.headers);
                Ok(response_from_upstream(
                    rparts,
                    ProxyBody::upstream(rbody, ResponseTail::new(guard, lease)),
                ))
            }
            Err(ProxyError::UpstreamTimeout { endpoint, .. }) if out_of_time => {
                Err(ProxyError::UpstreamTimeout {
                    endpoint,
                    timeout_ms: timeout.as_millis(),
                })
            }
            Err(e) => Err(e),
        };
    }
}

/// Relays an HTTP/1.1 upgrade (WebSocket and friends): the request goes to the upstream on a
/// connection of its own; on `101 Switching Protocols` both sides are spliced byte for byte
/// until either closes.
async fn forward_upgrade(
    cluster: &ClusterRuntime,
    conn: &ConnCtx,
    parts: &mut request::Parts,
    body: Incoming,
    path_and_query: http::uri::PathAndQuery,
    log: &mut AccessEntry,
) -> Result<Response<ProxyBody>, ProxyError> {
    let downstream = parts.extensions.remove::<hyper::upgrade::OnUpgrade>();
    let guard = cluster.pick_for(conn.original_dst, None)?;
    let ep = guard.endpoint().clone();
    log.upstream = Some(ep.addr);
    // A body sent with the upgrade request (rare, but allowed) goes along with it.
    let mut up = Request::new(ProxyBody::stream(body));
    *up.method_mut() = parts.method.clone();
    *up.uri_mut() = Uri::from(path_and_query);
    *up.headers_mut() = std::mem::take(&mut parts.headers);
    let mut resp = cluster.send_upgrade(&ep, up).await.inspect_err(|e| {
        if e.blame() == Blame::Upstream {
            ep.record_failure();
        }
    })?;
    if resp.status() != StatusCode::SWITCHING_PROTOCOLS {
        let (mut rparts, rbody) = resp.into_parts();
        strip_hop_by_hop(&mut rparts.headers);
        return Ok(response_from_upstream(
            rparts,
            ProxyBody::upstream(rbody, ResponseTail::new(guard, None)),
        ));
    }
    let upstream = hyper::upgrade::on(&mut resp);
    let Some(downstream) = downstream else {
        return Err(ProxyError::Internal(
            "the downstream connection cannot be upgraded".into(),
        ));
    };
    tokio::spawn(async move {
        // The endpoint stays counted as busy while the tunnel is open.
        let _guard = guard;
        if let (Ok(d), Ok(u)) = tokio::join!(downstream, upstream) {
            let mut d = hyper_util::rt::TokioIo::new(d);
            let mut u = hyper_util::rt::TokioIo::new(u);
            let _ = tokio::io::copy_bidirectional(&mut d, &mut u).await;
        }
    });
    let (rparts, _) = resp.into_parts();
    Ok(Response::from_parts(rparts, ProxyBody::empty()))
}

/// The request's key for consistent hashing: the first policy that yields a value.
fn request_hash(
    policies: &[rampart_config::model::HashPolicy],
    headers: &HeaderMap,
    client: SocketAddr,
) -> Option<u64> {
    use rampart_config::model::HashPolicy;
    use rampart_router::consistent::hash_key;
    policies.iter().find_map(|p| match p {
        HashPolicy::Header(name) => headers.get(name).map(|v| hash_key(v.as_bytes())),
        HashPolicy::Cookie(name) => headers
            .get_all(header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(';'))
            .find_map(|kv| {
                let (k, v) = kv.trim().split_once('=')?;
                (k == name).then(|| hash_key(v.as_bytes()))
            }),
        HashPolicy::SourceIp => Some(match client.ip() {
            std::net::IpAddr::V4(ip) => hash_key(&ip.octets()),
            std::net::IpAddr::V6(ip) => hash_key(&ip.octets()),
        }),
    })
}

/// Largest request body kept in memory so that a retry can send it again.
const RETRY_BUFFER_LIMIT: u64 = 64 * 1024;

enum Replay {
    Bytes(bytes::Bytes),
    Stream(Incoming),
    Failed(ProxyError),
}

/// Reads a small body whole (Content-Length ≤ 64 KiB) so it can be sent more than once.
async fn replayable(headers: &HeaderMap, body: Incoming, pace: Option<BodyPace>) -> Replay {
    use http_body::Body as _;
    if body.is_end_stream() {
        return Replay::Bytes(bytes::Bytes::new());
    }
    match content_length(headers) {
        Some(n) if n <= RETRY_BUFFER_LIMIT => {
            let collect = http_body_util::BodyExt::collect(http_body_util::Limited::new(
                body,
                usize::try_from(RETRY_BUFFER_LIMIT).unwrap_or(usize::MAX),
            ));
            // The whole body is due by the deadline its length earns (an hour for gRPC).
            let pace = pace.unwrap_or(BodyPace {
                timeout: Duration::from_secs(3600),
                min_rate: 0,
            });
            match tokio::time::timeout(pace.budget(n), collect).await {
                Ok(Ok(c)) => Replay::Bytes(c.to_bytes()),
                Ok(Err(e)) => Replay::Failed(ProxyError::DownstreamBody(e.to_string())),
                Err(_) => Replay::Failed(ProxyError::BodyRejected {
                    status: StatusCode::REQUEST_TIMEOUT,
                    reason: "the request body was not received in time".into(),
                }),
            }
        }
        _ => Replay::Stream(body),
    }
}

fn retriable_error(r: &rampart_config::model::RetryPolicy, e: &ProxyError) -> bool {
    match e {
        ProxyError::UpstreamConnect { .. } | ProxyError::ConnectTimeout { .. } => {
            r.on_connect_failure || r.on_5xx || r.on_gateway_error
        }
        ProxyError::UpstreamReset { .. } => r.on_reset || r.on_5xx || r.on_gateway_error,
        ProxyError::UpstreamTimeout { .. } => r.on_5xx || r.on_gateway_error,
        _ => false,
    }
}

/// One retry in flight on a cluster, within its retry budget (or `max_retries`).
struct RetryToken<'a>(&'a AtomicUsize);

impl<'a> RetryToken<'a> {
    fn take(cluster: &'a ClusterRuntime) -> Option<Self> {
        let cb = &cluster.config.circuit_breakers;
        let retries = &cluster.retries_active;
        if cb.retry_allowed(retries.load(Ordering::Relaxed), cluster.active()) {
            retries.fetch_add(1, Ordering::Relaxed);
            Some(Self(retries))
        } else {
            cluster.stats.overflows.inc();
            None
        }
    }
}

impl Drop for RetryToken<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

fn response_from_upstream(mut parts: response::Parts, body: ProxyBody) -> Response<ProxyBody> {
    // The downstream connection decides its own version and framing.
    parts.version = Version::HTTP_11;
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
    fn host_port_split() {
        assert_eq!(split_host_port("a.com:80"), ("a.com", Some("80")));
        assert_eq!(split_host_port("a.com"), ("a.com", None));
        assert_eq!(split_host_port("[::1]:8080"), ("[::1]", Some("8080")));
        assert_eq!(split_host_port("[::1]"), ("[::1]", None));
        assert_eq!(split_host_port("a.com:"), ("a.com:", None));
    }

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

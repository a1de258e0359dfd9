//! Forwarding to the route's cluster: the upstream request head (forwarding headers, host
//! and path rewrites), the request body as it will be sent, then attempts until one answers
//! or [`retry::decide`] says stop.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderValue};
use http::uri::PathAndQuery;
use http::{Request, Response, Uri, request};
use hyper::body::Incoming;
use rampart_config::model::{Forward, HashPolicy, Route};
use rampart_router::normalize::normalize_rewritten;
use rampart_router::rewrite_path;

use super::retry::{self, Decision, Outcome, Replay, RetryToken};
use super::{ConnCtx, Exchange, is_grpc, response_from_upstream, upgrade};
use crate::body::{BodyAbort, BodyPace, ProxyBody};
use crate::error::{Blame, ProxyError};
use crate::filter::BodyObserver;
use crate::filters::header_mutation;
use crate::ingress::{self, strip_hop_by_hop};
use crate::observe::ObservedBody;
use crate::snapshot::Target;
use crate::upstream::health::{self, Outcome as Health};
use crate::upstream::pool::Lease;
use crate::upstream::{Endpoint, ResponseTail};

/// Default per-route timeout (as Envoy's), until the upstream's response headers arrive.
const DEFAULT_ROUTE_TIMEOUT: Duration = Duration::from_secs(15);

/// The request body as the attempts will send it.
struct Payload {
    /// Read whole: every attempt sends these bytes.
    replay: Option<Bytes>,
    /// Streamed: sent once.
    stream: Option<ProxyBody>,
    /// Set when a body streams: why the client's body was cut short, if it was.
    abort: Option<BodyAbort>,
}

impl Payload {
    fn next(&mut self) -> ProxyBody {
        match &self.replay {
            Some(b) if b.is_empty() => ProxyBody::empty(),
            Some(b) => ProxyBody::full(b.clone()),
            None => self.stream.take().unwrap_or_else(ProxyBody::empty),
        }
    }
}

pub(super) async fn forward(
    x: &mut Exchange<'_>,
    f: &Forward,
    parts: &mut request::Parts,
    body: Incoming,
    observers: Vec<Box<dyn BodyObserver>>,
) -> Result<Response<ProxyBody>, ProxyError> {
    let target = x.target.ok_or_else(|| ProxyError::UnknownCluster {
        cluster: f
            .clusters
            .first()
            .map(|c| c.cluster.clone())
            .unwrap_or_default(),
    })?;
    let hash = request_hash(&f.hash_policy, &parts.headers, x.conn.client);
    let upgrade = parts
        .extensions
        .get::<ingress::UpgradeProtocol>()
        .map(|u| u.0.clone());
    upstream_headers(x.conn, f, x.route, &mut parts.headers, upgrade.as_ref());
    let path_and_query = upstream_path(f, x.route, &parts.uri, &x.lsnap.http.path)?;
    if upgrade.is_some() {
        return upgrade::forward_upgrade(x, &target.cluster, parts, body, path_and_query).await;
    }
    // A retry must send the body again, so only an empty or small, fully known body can be
    // retried; it is read whole first (as Envoy buffers for retries). Anything else streams
    // once and is not retried.
    let policy = f
        .retries
        .as_ref()
        .filter(|r| r.retry_non_idempotent || parts.method.is_idempotent());
    let payload = request_body(x, policy.is_some(), parts, body, observers).await?;
    let max_retries = match (policy, &payload.replay) {
        (Some(r), Some(_)) => r.max_retries,
        _ => 0,
    };
    let plan = Attempts {
        f,
        policy,
        target,
        hash,
        path_and_query,
        max_retries,
    };
    plan.run(x, parts, payload).await
}

/// Host: the normalised authority ingress decided on, unless the route rewrites it; the
/// forwarding headers; the route's edits. Hop-by-hop headers went at ingress, before any
/// filter could add one of their names; an upgrade puts back the one exchange a proxy relays.
fn upstream_headers(
    conn: &ConnCtx,
    f: &Forward,
    route: &Route,
    h: &mut HeaderMap,
    upgrade: Option<&HeaderValue>,
) {
    let original_host = h
        .get(header::HOST)
        .cloned()
        .unwrap_or_else(|| HeaderValue::from_static(""));
    if let Some(proto) = upgrade {
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
}

/// The upstream's path and query: the request's, or its prefix rewritten (normalised again,
/// and still under the rewrite).
fn upstream_path(
    f: &Forward,
    route: &Route,
    uri: &Uri,
    options: &rampart_config::model::PathOptions,
) -> Result<PathAndQuery, ProxyError> {
    let Some(rw) = &f.prefix_rewrite else {
        return Ok(uri
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/")));
    };
    let p = rewrite_path(route.matcher.path.as_ref(), uri.path(), rw);
    let p = normalize_rewritten(&p, rw, options)
        .map_err(|e| ProxyError::BadRewrite { reason: e.reason() })?;
    let pq = match uri.query() {
        Some(q) => format!("{p}?{q}"),
        None => p,
    };
    pq.parse::<PathAndQuery>()
        .map_err(|e| ProxyError::Internal(format!("rewritten path is invalid: {e}")))
}

/// The request body as it will be sent: read whole when it may be retried and is small,
/// else streamed once with the size limit, the pace rule and any filter observers.
async fn request_body(
    x: &Exchange<'_>,
    may_retry: bool,
    parts: &mut request::Parts,
    body: Incoming,
    observers: Vec<Box<dyn BodyObserver>>,
) -> Result<Payload, ProxyError> {
    use http_body::Body as _;
    let limits = &x.lsnap.limits;
    // gRPC streams may rightly stay open with little data for as long as they live: they
    // are bounded by the route timeout and the idle timeout instead.
    let pace = (!is_grpc(&parts.headers)).then_some(BodyPace {
        timeout: limits.request_body_timeout,
        min_rate: limits.min_request_body_rate,
    });
    let replay = if may_retry && observers.is_empty() {
        retry::replayable(&parts.headers, body, pace).await
    } else {
        Replay::Stream(body)
    };
    let body = match replay {
        Replay::Bytes(b) => {
            return Ok(Payload {
                replay: Some(b),
                stream: None,
                abort: None,
            });
        }
        Replay::Failed(e) => return Err(e),
        Replay::Stream(body) => body,
    };
    if body.is_end_stream() && !observers.is_empty() {
        return empty_observed(parts, body, observers);
    }
    let mut abort = None;
    let mut body = if body.is_end_stream() && observers.is_empty() {
        ProxyBody::stream(body)
    } else {
        let a = BodyAbort::default();
        abort = Some(a.clone());
        ProxyBody::request(body, x.body_limit(), pace, a)
    };
    if !observers.is_empty() {
        if !crate::observe::keeps_length(&observers) {
            parts.headers.remove(header::CONTENT_LENGTH);
        }
        body = ProxyBody::boxed(ObservedBody::new(body, observers, abort.clone()));
    }
    Ok(Payload {
        replay: None,
        stream: Some(body),
        abort,
    })
}

/// A request without a body: its observers hear of the end at once and the request keeps
/// its framing (no chunked encoding for a GET); what an observer adds becomes the body.
fn empty_observed(
    parts: &mut request::Parts,
    body: Incoming,
    mut observers: Vec<Box<dyn BodyObserver>>,
) -> Result<Payload, ProxyError> {
    let mut added = Bytes::new();
    for o in &mut observers {
        o.on_data(&mut added, true)
            .map_err(|r| ProxyError::BodyRejected {
                status: r.status,
                reason: r.reason,
                answer: r.answer.map(Box::new),
            })?;
    }
    if added.is_empty() {
        return Ok(Payload {
            replay: None,
            stream: Some(ProxyBody::stream(body)),
            abort: None,
        });
    }
    parts.headers.remove(header::CONTENT_LENGTH);
    Ok(Payload {
        replay: Some(added),
        stream: None,
        abort: None,
    })
}

/// What every attempt of one forwarded request shares.
struct Attempts<'r> {
    f: &'r Forward,
    /// The route's retry policy when it applies to this request (idempotent, or allowed).
    policy: Option<&'r rampart_config::model::RetryPolicy>,
    target: &'r Target,
    hash: Option<u64>,
    path_and_query: PathAndQuery,
    max_retries: u32,
}

type Sent = Result<(Response<Incoming>, Option<Lease>), ProxyError>;

impl Attempts<'_> {
    async fn run(
        &self,
        x: &mut Exchange<'_>,
        parts: &mut request::Parts,
        mut payload: Payload,
    ) -> Result<Response<ProxyBody>, ProxyError> {
        let cluster = &self.target.cluster;
        let timeout = self.f.timeout.unwrap_or(DEFAULT_ROUTE_TIMEOUT);
        let deadline = (!timeout.is_zero()).then(|| Instant::now() + timeout);
        let mut headers = std::mem::take(&mut parts.headers);
        let mut made = 0;
        // Held while a retry is in flight, for the retry budget.
        let mut _retrying: Option<RetryToken<'_>> = None;
        loop {
            made += 1;
            let last = made > self.max_retries;
            let guard = cluster.pick_for(x.conn.original_dst, self.hash)?;
            let ep = guard.endpoint().clone();
            x.log.upstream = Some(ep.addr);
            let mut up = Request::new(payload.next());
            *up.method_mut() = parts.method.clone();
            *up.uri_mut() = Uri::from(self.path_and_query.clone());
            *up.headers_mut() = if last {
                std::mem::take(&mut headers)
            } else {
                headers.clone()
            };
            let result = self.send(x.conn.worker, &ep, up, deadline).await;
            let outcome = self.observe(&ep, &result, payload.abort.as_ref())?;
            let out_of_time = deadline.is_some_and(|d| Instant::now() >= d);
            let decision = retry::decide(self.policy, made, self.max_retries, outcome, out_of_time);
            if decision == Decision::Retry
                && let (Some(r), Some(token)) = (self.policy, RetryToken::take(cluster))
            {
                drop(result);
                drop(guard);
                cluster.stats.retry();
                let mut pause = health::backoff(made, r.base_interval, r.max_interval);
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
                // The route's deadline passed: report the route timeout, not the try's.
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

    /// One try at `ep`, within what is left of the deadline and the per-try timeout.
    async fn send(
        &self,
        worker: usize,
        ep: &Endpoint,
        up: Request<ProxyBody>,
        deadline: Option<Instant>,
    ) -> Sent {
        let cluster = &self.target.cluster;
        let sent = Instant::now();
        let send = cluster.send(worker, ep, up);
        let result = match try_timeout(deadline, self.policy.and_then(|r| r.per_try_timeout)) {
            None => send.await,
            Some(t) => tokio::time::timeout(t, send).await.unwrap_or_else(|_| {
                Err(ProxyError::UpstreamTimeout {
                    endpoint: ep.addr.to_string(),
                    timeout_ms: t.as_millis(),
                })
            }),
        };
        if result.is_ok() {
            self.target
                .upstream_latency
                .observe(sent.elapsed().as_secs_f64());
        }
        result
    }

    /// Counts a try's outcome for the endpoint's health. A try that failed because the
    /// client's body was cut short is the client's failure, and ends the request.
    fn observe<'r>(
        &self,
        ep: &Endpoint,
        result: &'r Sent,
        abort: Option<&BodyAbort>,
    ) -> Result<Outcome<'r>, ProxyError> {
        let cluster = &self.target.cluster;
        match result {
            Ok((resp, _)) => {
                let status = resp.status().as_u16();
                health::observe(cluster, ep, Health::Status(status));
                Ok(Outcome::Status(status))
            }
            Err(e) => {
                if let Some(r) = abort.and_then(BodyAbort::get) {
                    return Err(ProxyError::BodyRejected {
                        status: r.status,
                        reason: r.reason.clone(),
                        answer: r.answer.clone().map(Box::new),
                    });
                }
                if matches!(e, ProxyError::Overflow { .. }) {
                    cluster.stats.overflow();
                } else if e.blame() == Blame::Upstream {
                    // Only the upstream's own failures count against the endpoint.
                    ep.record_failure();
                    health::observe(cluster, ep, Health::LocalFailure);
                }
                Ok(Outcome::Failed(e))
            }
        }
    }
}

/// An attempt's time: what is left of the route's deadline, capped by the per-try timeout.
fn try_timeout(deadline: Option<Instant>, per_try: Option<Duration>) -> Option<Duration> {
    let left = deadline.map(|d| d.saturating_duration_since(Instant::now()));
    match (left, per_try) {
        (Some(l), Some(p)) => Some(l.min(p)),
        (l, p) => l.or(p),
    }
}

/// The request's key for consistent hashing: the first policy that yields a value.
fn request_hash(policies: &[HashPolicy], headers: &HeaderMap, client: SocketAddr) -> Option<u64> {
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

//! The filter seam: what policy, validation, authentication and plugins plug into.
//!
//! ```text
//!  downstream ──► request headers ──► request body chunks ──► upstream
//!                 listener filters,    (observers, same order)
//!                 then route filters
//!  downstream ◄── response body chunks ◄── response headers ◄── upstream
//!                 (observers, reverse)     route filters, then listener filters
//! ```
//!
//! A header phase returns [`Flow`]: continue, answer locally (ending the request early; later
//! filters and the upstream are skipped), or an async future for filters that must wait (a
//! JWKS fetch, a remote policy). Synchronous filters return without allocating; a route with
//! no filters allocates nothing at all for this seam. Filters that want body chunks hand out
//! a per-request [`BodyObserver`] after the header phase; observers see each chunk in order
//! and may rewrite or reject it. Per-request state shared between filters lives in
//! [`RequestContext::extensions`].

use std::collections::HashMap;
use std::future::Future;
use std::hash::{Hash, Hasher};
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderValue, Method, Response, StatusCode, request, response};
use rampart_config::model::{Cors, FilterConfig, HeaderMutation, RateLimit, RateLimitKey};

use crate::body::ProxyBody;
use crate::error::local_response;
use crate::jwt::{JwksRegistry, JwtFilter};
use crate::metrics::Metrics;

/// Per-request facts visible to every filter.
#[derive(Debug)]
pub struct RequestContext {
    pub request_id: HeaderValue,
    pub client_addr: SocketAddr,
    pub listener: Arc<str>,
    pub route: Arc<str>,
    /// The cluster the request will be forwarded to, when the route forwards.
    pub cluster: Option<Arc<str>>,
    pub started: Instant,
    /// Typed data filters pass to each other (e.g. verified JWT claims for the policy filter).
    pub extensions: http::Extensions,
}

/// The claims of a verified JWT, put into [`RequestContext::extensions`] by the `jwt` filter
/// for the filters after it (e.g. an authorization policy). Absent when the request carried
/// no token and the filter is `optional`. The value is the token's payload as sent, usually a
/// JSON object (`sub`, `iss`, `aud`, `exp`, custom claims).
#[derive(Debug, Clone)]
pub struct JwtClaims(pub Arc<serde_json::Value>);

pub type FilterFuture<'a> = Pin<Box<dyn Future<Output = Verdict> + Send + 'a>>;

/// What a header phase decided.
#[allow(clippy::large_enum_variant)] // boxing would allocate on every local reply
pub enum Flow<'a> {
    Continue,
    /// End the request here with this response.
    Respond(Response<ProxyBody>),
    /// Decide later.
    Async(FilterFuture<'a>),
}

/// The outcome of an async header phase.
#[allow(clippy::large_enum_variant)] // as for `Flow`
pub enum Verdict {
    Continue,
    Respond(Response<ProxyBody>),
}

impl<'a> Flow<'a> {
    pub async fn resolve(self) -> Verdict {
        match self {
            Self::Continue => Verdict::Continue,
            Self::Respond(r) => Verdict::Respond(r),
            Self::Async(f) => f.await,
        }
    }
}

/// A body chunk was refused; the stream is cut and, if nothing was sent yet, this answers.
#[derive(Debug, Clone)]
pub struct BodyReject {
    pub status: StatusCode,
    pub reason: String,
}

/// Sees body chunks of one request or response, in order.
pub trait BodyObserver: Send {
    fn on_data(&mut self, chunk: &mut Bytes, end_of_stream: bool) -> Result<(), BodyReject>;
}

/// A filter. Implementations are shared by all requests and must be cheap to call.
pub trait HttpFilter: Send + Sync {
    fn name(&self) -> &'static str;

    fn on_request_headers<'a>(
        &'a self,
        _ctx: &'a mut RequestContext,
        _req: &'a mut request::Parts,
    ) -> Flow<'a> {
        Flow::Continue
    }

    /// Called after all request-header phases passed.
    fn request_body_observer(&self, _ctx: &RequestContext) -> Option<Box<dyn BodyObserver>> {
        None
    }

    fn on_response_headers<'a>(
        &'a self,
        _ctx: &'a mut RequestContext,
        _resp: &'a mut response::Parts,
    ) -> Flow<'a> {
        Flow::Continue
    }

    fn response_body_observer(
        &self,
        _ctx: &RequestContext,
        _resp: &response::Parts,
    ) -> Option<Box<dyn BodyObserver>> {
        None
    }
}

pub type FilterRef = Arc<dyn HttpFilter>;

/// What building filters needs besides their config: state that outlives one config version
/// (caches kept across reloads, metrics) and where background work runs. Owned by the
/// gateway; every [`build`] of every version gets the same one.
pub struct BuildEnv {
    pub metrics: Metrics,
    /// JSON Web Key Sets shared by `jwt` filters, kept across reloads and refreshed on the
    /// control runtime.
    pub jwks: JwksRegistry,
    /// The policy engine behind `authz` filters, configured from `policy:` before each build.
    #[cfg(feature = "policy")]
    pub policy: Arc<crate::authz::PolicyRuntime>,
}

impl BuildEnv {
    /// Background work (key refreshes) runs on `control` and stops when `stop` is cancelled.
    pub fn new(
        metrics: Metrics,
        control: tokio::runtime::Handle,
        stop: tokio_util::sync::CancellationToken,
    ) -> Self {
        Self {
            #[cfg(feature = "policy")]
            policy: Arc::new(crate::authz::PolicyRuntime::new(&metrics)),
            metrics,
            jwks: JwksRegistry::new(control, stop),
        }
    }
}

/// A filter whose config is valid but whose material is not (a key file that does not parse).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct FilterBuildError {
    /// Relative to the filter entry (e.g. `jwt.jwks_file`) from [`build`]; a full config path
    /// (e.g. `listeners[0].filters[1].jwt.jwks_file`) from [`crate::snapshot::Snapshot::build`].
    pub field: String,
    pub message: String,
}

/// Builds the built-in filter for a config entry.
pub fn build(cfg: &FilterConfig, env: &BuildEnv) -> Result<FilterRef, FilterBuildError> {
    Ok(match cfg {
        FilterConfig::HeaderMutation { request, response } => Arc::new(HeaderMutationFilter {
            request: request.clone(),
            response: response.clone(),
        }),
        FilterConfig::Cors(c) => Arc::new(CorsFilter(c.clone())),
        FilterConfig::RateLimit(r) => Arc::new(RateLimitFilter::new(r.clone())),
        FilterConfig::SidecarInbound => Arc::new(SidecarInboundFilter),
        FilterConfig::Jwt(j) => Arc::new(JwtFilter::new(j, env)?),
        #[cfg(feature = "policy")]
        FilterConfig::Authz(a) => {
            let engine = env.policy.engine().ok_or_else(|| FilterBuildError {
                field: "authz".into(),
                message: "no policy engine (the config has no policy section)".into(),
            })?;
            Arc::new(crate::authz::AuthzFilter::new(engine, a.clone()))
        }
        #[cfg(not(feature = "policy"))]
        FilterConfig::Authz(_) => {
            return Err(FilterBuildError {
                field: "authz".into(),
                message: "this build has no policy engine (build rampart with the full feature)"
                    .into(),
            });
        }
    })
}

/// Marks requests that entered through a sidecar's inbound listener: the application sees
/// `x-sidecar-injected: true` and `x-original-host` (the Host the client sent). Host itself
/// is left as it was.
pub struct SidecarInboundFilter;

impl HttpFilter for SidecarInboundFilter {
    fn name(&self) -> &'static str {
        "sidecar_inbound"
    }

    fn on_request_headers<'a>(
        &'a self,
        _ctx: &'a mut RequestContext,
        req: &'a mut request::Parts,
    ) -> Flow<'a> {
        let host = req.headers.get(http::header::HOST).cloned().or_else(|| {
            req.uri
                .authority()
                .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
        });
        req.headers
            .insert("x-sidecar-injected", HeaderValue::from_static("true"));
        if let Some(h) = host {
            req.headers.insert("x-original-host", h);
        }
        Flow::Continue
    }
}

/// Adds, sets and removes headers on the request and the response.
pub struct HeaderMutationFilter {
    pub request: HeaderMutation,
    pub response: HeaderMutation,
}

impl HttpFilter for HeaderMutationFilter {
    fn name(&self) -> &'static str {
        "header_mutation"
    }

    fn on_request_headers<'a>(
        &'a self,
        _ctx: &'a mut RequestContext,
        req: &'a mut request::Parts,
    ) -> Flow<'a> {
        self.request.apply(&mut req.headers);
        Flow::Continue
    }

    fn on_response_headers<'a>(
        &'a self,
        _ctx: &'a mut RequestContext,
        resp: &'a mut response::Parts,
    ) -> Flow<'a> {
        self.response.apply(&mut resp.headers);
        Flow::Continue
    }
}

/// CORS: answers preflights itself and decorates actual responses for allowed origins.
pub struct CorsFilter(pub Cors);

/// The allowed origin of the current request, kept between the request and response phases.
#[derive(Clone)]
struct CorsOrigin(HeaderValue);

impl CorsFilter {
    fn allowed(&self, origin: &HeaderValue) -> bool {
        self.0.allow_any_origin
            || origin
                .to_str()
                .is_ok_and(|o| self.0.allow_origins.iter().any(|a| a == o))
    }

    fn allow_origin_value(&self, origin: &HeaderValue) -> HeaderValue {
        if self.0.allow_any_origin && !self.0.allow_credentials {
            HeaderValue::from_static("*")
        } else {
            origin.clone()
        }
    }
}

impl HttpFilter for CorsFilter {
    fn name(&self) -> &'static str {
        "cors"
    }

    fn on_request_headers<'a>(
        &'a self,
        ctx: &'a mut RequestContext,
        req: &'a mut request::Parts,
    ) -> Flow<'a> {
        use http::header::{
            ACCESS_CONTROL_ALLOW_CREDENTIALS, ACCESS_CONTROL_ALLOW_HEADERS,
            ACCESS_CONTROL_ALLOW_METHODS, ACCESS_CONTROL_ALLOW_ORIGIN, ACCESS_CONTROL_MAX_AGE,
            ACCESS_CONTROL_REQUEST_METHOD, ORIGIN, VARY,
        };
        let Some(origin) = req.headers.get(ORIGIN).cloned() else {
            return Flow::Continue;
        };
        let preflight = req.method == Method::OPTIONS
            && req.headers.contains_key(ACCESS_CONTROL_REQUEST_METHOD);
        if !self.allowed(&origin) {
            return if preflight {
                Flow::Respond(local_response(
                    StatusCode::FORBIDDEN,
                    "CORS preflight rejected: origin not allowed\n",
                ))
            } else {
                // Not ours to block: the browser enforces by the missing allow-origin header.
                Flow::Continue
            };
        }
        if !preflight {
            ctx.extensions.insert(CorsOrigin(origin));
            return Flow::Continue;
        }
        let mut resp = Response::new(ProxyBody::empty());
        *resp.status_mut() = StatusCode::NO_CONTENT;
        let h = resp.headers_mut();
        h.insert(
            ACCESS_CONTROL_ALLOW_ORIGIN,
            self.allow_origin_value(&origin),
        );
        if let Ok(v) = HeaderValue::from_str(&self.0.allow_methods) {
            h.insert(ACCESS_CONTROL_ALLOW_METHODS, v);
        }
        if !self.0.allow_headers.is_empty()
            && let Ok(v) = HeaderValue::from_str(&self.0.allow_headers)
        {
            h.insert(ACCESS_CONTROL_ALLOW_HEADERS, v);
        }
        if let Some(age) = self.0.max_age {
            h.insert(ACCESS_CONTROL_MAX_AGE, HeaderValue::from(age.as_secs()));
        }
        if self.0.allow_credentials {
            h.insert(
                ACCESS_CONTROL_ALLOW_CREDENTIALS,
                HeaderValue::from_static("true"),
            );
        }
        h.insert(VARY, HeaderValue::from_static("origin"));
        Flow::Respond(resp)
    }

    fn on_response_headers<'a>(
        &'a self,
        ctx: &'a mut RequestContext,
        resp: &'a mut response::Parts,
    ) -> Flow<'a> {
        use http::header::{
            ACCESS_CONTROL_ALLOW_CREDENTIALS, ACCESS_CONTROL_ALLOW_ORIGIN,
            ACCESS_CONTROL_EXPOSE_HEADERS, VARY,
        };
        if let Some(CorsOrigin(origin)) = ctx.extensions.get::<CorsOrigin>() {
            let h = &mut resp.headers;
            h.insert(ACCESS_CONTROL_ALLOW_ORIGIN, self.allow_origin_value(origin));
            if self.0.allow_credentials {
                h.insert(
                    ACCESS_CONTROL_ALLOW_CREDENTIALS,
                    HeaderValue::from_static("true"),
                );
            }
            if !self.0.expose_headers.is_empty()
                && let Ok(v) = HeaderValue::from_str(&self.0.expose_headers)
            {
                h.insert(ACCESS_CONTROL_EXPOSE_HEADERS, v);
            }
            h.append(VARY, HeaderValue::from_static("origin"));
        }
        Flow::Continue
    }
}

/// Local token-bucket rate limiting, keyed per route, client IP or header value.
pub struct RateLimitFilter {
    cfg: RateLimit,
    shards: Vec<Mutex<HashMap<BucketKey, Bucket>>>,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum BucketKey {
    Route(Arc<str>),
    Ip(IpAddr),
    Value(Bytes),
    /// The keyed header was absent: such requests share one bucket.
    Missing,
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    last: Instant,
}

const RATE_LIMIT_SHARDS: usize = 16;

impl RateLimitFilter {
    pub fn new(cfg: RateLimit) -> Self {
        Self {
            cfg,
            shards: (0..RATE_LIMIT_SHARDS)
                .map(|_| Mutex::new(HashMap::new()))
                .collect(),
        }
    }

    /// Takes one token for `key` at `now`; on refusal returns how long until one is available.
    fn take(&self, key: BucketKey, now: Instant) -> Result<(), Duration> {
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        key.hash(&mut hasher);
        let shard = &self.shards[(hasher.finish() as usize) % self.shards.len()];
        let per_shard_cap = self.cfg.max_keys.div_ceil(self.shards.len()).max(1);
        let rate_per_sec = f64::from(self.cfg.rate) / self.cfg.per.as_secs_f64();
        let burst = f64::from(self.cfg.burst);
        // A poisoned lock only means another request panicked mid-update; the map is still sound.
        let mut map = shard
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if !map.contains_key(&key) && map.len() >= per_shard_cap {
            // Full buckets are indistinguishable from new ones: drop those first.
            map.retain(|_, b| {
                b.tokens + now.duration_since(b.last).as_secs_f64() * rate_per_sec < burst
            });
            if map.len() >= per_shard_cap
                && let Some(k) = map.keys().next().cloned()
            {
                map.remove(&k);
            }
        }
        let b = map.entry(key).or_insert(Bucket {
            tokens: burst,
            last: now,
        });
        let elapsed = now.saturating_duration_since(b.last).as_secs_f64();
        b.tokens = (b.tokens + elapsed * rate_per_sec).min(burst);
        b.last = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - b.tokens) / rate_per_sec))
        }
    }
}

impl HttpFilter for RateLimitFilter {
    fn name(&self) -> &'static str {
        "rate_limit"
    }

    fn on_request_headers<'a>(
        &'a self,
        ctx: &'a mut RequestContext,
        req: &'a mut request::Parts,
    ) -> Flow<'a> {
        let key = match &self.cfg.key {
            RateLimitKey::Route => BucketKey::Route(ctx.route.clone()),
            RateLimitKey::ClientIp => BucketKey::Ip(ctx.client_addr.ip()),
            RateLimitKey::Header(h) => req.headers.get(h).map_or(BucketKey::Missing, |v| {
                BucketKey::Value(Bytes::copy_from_slice(v.as_bytes()))
            }),
        };
        match self.take(key, Instant::now()) {
            Ok(()) => Flow::Continue,
            Err(wait) => {
                let mut resp =
                    local_response(StatusCode::TOO_MANY_REQUESTS, "rate limit exceeded\n");
                let secs = wait.as_secs_f64().ceil().max(1.0) as u64;
                resp.headers_mut()
                    .insert(http::header::RETRY_AFTER, HeaderValue::from(secs));
                Flow::Respond(resp)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limiter(rate: u32, burst: u32, max_keys: usize) -> RateLimitFilter {
        RateLimitFilter::new(RateLimit {
            rate,
            per: Duration::from_secs(1),
            burst,
            key: RateLimitKey::ClientIp,
            max_keys,
        })
    }

    #[test]
    fn token_bucket_refills() {
        let f = limiter(2, 2, 10);
        let t0 = Instant::now();
        let k = || BucketKey::Route("r".into());
        assert!(f.take(k(), t0).is_ok());
        assert!(f.take(k(), t0).is_ok());
        let wait = f.take(k(), t0).unwrap_err();
        assert!(wait <= Duration::from_millis(500) && wait > Duration::from_millis(400));
        assert!(f.take(k(), t0 + Duration::from_millis(499)).is_err());
        assert!(f.take(k(), t0 + Duration::from_millis(1000)).is_ok());
    }

    #[test]
    fn keys_are_independent_and_bounded() {
        let f = limiter(1, 1, 32);
        let t0 = Instant::now();
        for i in 0..1000u32 {
            let ip = IpAddr::from(i.to_be_bytes());
            assert!(
                f.take(BucketKey::Ip(ip), t0).is_ok(),
                "fresh key {i} refused"
            );
        }
        let tracked: usize = f.shards.iter().map(|s| s.lock().unwrap().len()).sum();
        assert!(tracked <= 32 + RATE_LIMIT_SHARDS, "{tracked} keys tracked");
    }
}

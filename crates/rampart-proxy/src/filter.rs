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
use std::hash::{BuildHasher, Hash, Hasher};
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
///
/// Memory is bounded by `max_keys` whatever clients send: a key is stored as a 64-bit hash
/// (SipHash with a per-filter random key, so clients cannot aim for collisions), buckets live
/// in fixed-capacity shards, and a full shard evicts with the CLOCK algorithm in amortised
/// O(1) (a bucket used since the hand last passed gets a second chance).
pub struct RateLimitFilter {
    cfg: RateLimit,
    hasher: std::collections::hash_map::RandomState,
    shards: Vec<Mutex<ClockShard>>,
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    last: Instant,
}

/// Buckets of one shard: a slab of at most `cap` slots, an index from key hash to slot, and
/// the CLOCK hand.
struct ClockShard {
    index: HashMap<u64, u32, std::hash::BuildHasherDefault<PreHashed>>,
    slots: Vec<Slot>,
    hand: usize,
    cap: usize,
}

struct Slot {
    key: u64,
    bucket: Bucket,
    referenced: bool,
}

/// The keys are already hashes.
#[derive(Default)]
struct PreHashed(u64);

impl Hasher for PreHashed {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(*b);
        }
    }

    fn write_u64(&mut self, v: u64) {
        self.0 = v;
    }
}

impl ClockShard {
    fn new(cap: usize) -> Self {
        Self {
            index: HashMap::default(),
            slots: Vec::new(),
            hand: 0,
            cap,
        }
    }

    /// The bucket for `key`, created full (evicting another when the shard is full).
    fn bucket(&mut self, key: u64, fresh: Bucket) -> &mut Bucket {
        let i = match self.index.get(&key) {
            Some(&i) => i as usize,
            None if self.slots.len() < self.cap => {
                self.slots.push(Slot {
                    key,
                    bucket: fresh,
                    referenced: false,
                });
                let i = self.slots.len() - 1;
                self.index.insert(key, i as u32);
                i
            }
            None => {
                let i = self.evict();
                self.index.remove(&self.slots[i].key);
                self.slots[i] = Slot {
                    key,
                    bucket: fresh,
                    referenced: false,
                };
                self.index.insert(key, i as u32);
                i
            }
        };
        let slot = &mut self.slots[i];
        slot.referenced = true;
        &mut slot.bucket
    }

    /// The next slot without a second chance left (at most two sweeps).
    fn evict(&mut self) -> usize {
        loop {
            let i = self.hand;
            self.hand = (self.hand + 1) % self.slots.len();
            let slot = &mut self.slots[i];
            if !slot.referenced {
                return i;
            }
            slot.referenced = false;
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.slots.len()
    }
}

const RATE_LIMIT_SHARDS: usize = 16;

/// The key a request is limited under.
enum BucketKey<'a> {
    Route(&'a str),
    Ip(IpAddr),
    Value(&'a [u8]),
    /// The keyed header was absent: such requests share one bucket.
    Missing,
}

impl RateLimitFilter {
    pub fn new(cfg: RateLimit) -> Self {
        let per_shard = cfg.max_keys.div_ceil(RATE_LIMIT_SHARDS).max(1);
        Self {
            cfg,
            hasher: std::collections::hash_map::RandomState::new(),
            shards: (0..RATE_LIMIT_SHARDS)
                .map(|_| Mutex::new(ClockShard::new(per_shard)))
                .collect(),
        }
    }

    fn hash(&self, key: &BucketKey<'_>) -> u64 {
        let mut h = self.hasher.build_hasher();
        match key {
            BucketKey::Route(r) => (0u8, r).hash(&mut h),
            BucketKey::Ip(ip) => (1u8, ip).hash(&mut h),
            BucketKey::Value(v) => (2u8, v).hash(&mut h),
            BucketKey::Missing => 3u8.hash(&mut h),
        }
        h.finish()
    }

    /// Takes one token for `key` at `now`; on refusal returns how long until one is available.
    fn take(&self, key: &BucketKey<'_>, now: Instant) -> Result<(), Duration> {
        let key = self.hash(key);
        let shard = &self.shards[(key >> 59) as usize % self.shards.len()];
        let rate_per_sec = f64::from(self.cfg.rate) / self.cfg.per.as_secs_f64();
        let burst = f64::from(self.cfg.burst);
        // A poisoned lock only means another request panicked mid-update; the map is still sound.
        let mut shard = shard
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let b = shard.bucket(
            key,
            Bucket {
                tokens: burst,
                last: now,
            },
        );
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
            RateLimitKey::Route => BucketKey::Route(&ctx.route),
            RateLimitKey::ClientIp => BucketKey::Ip(ctx.client_addr.ip()),
            RateLimitKey::Header(h) => req
                .headers
                .get(h)
                .map_or(BucketKey::Missing, |v| BucketKey::Value(v.as_bytes())),
        };
        match self.take(&key, Instant::now()) {
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
        let k = &BucketKey::Route("r");
        assert!(f.take(k, t0).is_ok());
        assert!(f.take(k, t0).is_ok());
        let wait = f.take(k, t0).unwrap_err();
        assert!(wait <= Duration::from_millis(500) && wait > Duration::from_millis(400));
        assert!(f.take(k, t0 + Duration::from_millis(499)).is_err());
        assert!(f.take(k, t0 + Duration::from_millis(1000)).is_ok());
    }

    #[test]
    fn keys_are_independent_and_bounded() {
        let f = limiter(1, 1, 32);
        let t0 = Instant::now();
        for i in 0..1000u32 {
            let ip = IpAddr::from(i.to_be_bytes());
            assert!(
                f.take(&BucketKey::Ip(ip), t0).is_ok(),
                "fresh key {i} refused"
            );
        }
        let tracked: usize = f.shards.iter().map(|s| s.lock().unwrap().len()).sum();
        assert!(tracked <= 32 + RATE_LIMIT_SHARDS, "{tracked} keys tracked");
    }

    #[test]
    fn large_header_values_cost_a_fixed_size() {
        let f = RateLimitFilter::new(RateLimit {
            rate: 1,
            per: Duration::from_secs(60),
            burst: 1,
            key: RateLimitKey::Header(http::HeaderName::from_static("x-k")),
            max_keys: 1000,
        });
        let t0 = Instant::now();
        let big = vec![b'a'; 60 * 1024];
        assert!(f.take(&BucketKey::Value(&big), t0).is_ok());
        assert!(
            f.take(&BucketKey::Value(&big), t0).is_err(),
            "same key, same bucket"
        );
        let mut other = big.clone();
        other[0] = b'b';
        assert!(f.take(&BucketKey::Value(&other), t0).is_ok());
    }

    #[test]
    fn clock_gives_recently_used_buckets_a_second_chance() {
        let mut shard = ClockShard::new(3);
        let fresh = Bucket {
            tokens: 1.0,
            last: Instant::now(),
        };
        for k in 1..=3 {
            shard.bucket(k, fresh).tokens = 0.0;
        }
        // Every slot is referenced: the hand clears them all, then takes slot 0 (key 1).
        shard.bucket(4, fresh);
        assert!(!shard.index.contains_key(&1));
        // Key 2 is used again; the next eviction skips it and takes key 3.
        shard.bucket(2, fresh);
        shard.bucket(5, fresh);
        assert!(shard.index.contains_key(&2) && !shard.index.contains_key(&3));
        assert_eq!(shard.bucket(2, fresh).tokens, 0.0, "key 2 kept its state");
        assert_eq!(shard.len(), 3);
    }
}

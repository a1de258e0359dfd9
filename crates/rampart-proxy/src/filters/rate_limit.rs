//! `rate_limit`: local token buckets keyed per route, client IP or header value.

use std::collections::HashMap;
use std::hash::{BuildHasher, Hash, Hasher};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http::{HeaderValue, StatusCode, request};
use rampart_config::FieldError;
use rampart_config::filters::rate_limit::{self, RateLimit, RateLimitKey};

use crate::error::local_response;
use crate::filter::{
    BuildEnv, FilterBuildError, FilterFactory, FilterRef, Flow, HttpFilter, RequestContext,
};

pub struct RateLimitFactory;

impl FilterFactory for RateLimitFactory {
    type Config = RateLimit;

    fn name(&self) -> &'static str {
        "rate_limit"
    }

    fn parse(&self, path: &str, config: &serde_json::Value) -> Result<RateLimit, Vec<FieldError>> {
        rate_limit::parse(path, config)
    }

    fn build(&self, config: RateLimit, _env: &BuildEnv) -> Result<FilterRef, FilterBuildError> {
        Ok(Arc::new(RateLimitFilter::new(config)))
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

//! `rate_limit`: local token buckets per route, client IP or header value.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::check::Ctx;
use crate::error::FieldError;
use crate::headers::header_name;

/// A rate limiter's table is bounded: 10 M keys are ~640 MiB.
pub const MAX_KEYS: usize = 10_000_000;

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RawRateLimit {
    /// Tokens added per `per` interval.
    pub rate: u32,
    /// Refill interval ("1s").
    pub per: String,
    /// Bucket size; defaults to `rate`.
    #[serde(default)]
    pub burst: Option<u32>,
    /// `route`, `client_ip`, or `header:<name>`.
    #[serde(default)]
    pub key: Option<String>,
    /// Most distinct keys tracked at once (oldest idle buckets are dropped first).
    #[serde(default)]
    pub max_keys: Option<usize>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RateLimit {
    pub rate: u32,
    pub per: Duration,
    pub burst: u32,
    pub key: RateLimitKey,
    pub max_keys: usize,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RateLimitKey {
    /// One bucket for the whole route (or listener).
    Route,
    ClientIp,
    Header(http::HeaderName),
}

/// Checks a `rate_limit` entry; `path` ends in `.rate_limit`.
pub fn parse(path: &str, config: &serde_json::Value) -> Result<RateLimit, Vec<FieldError>> {
    let r: RawRateLimit = crate::check::typed(path, config).map_err(|e| vec![e])?;
    let mut cx = Ctx::default();
    if r.rate == 0 {
        cx.err(format!("{path}.rate"), "must be at least 1");
    }
    let per = cx.duration(&format!("{path}.per"), Some(&r.per), Duration::from_secs(1));
    if per.is_zero() {
        cx.err(format!("{path}.per"), "must be longer than 0");
    }
    // Each key costs ~64 bytes whatever its size (a hash and a bucket).
    if r.max_keys.is_some_and(|n| n > MAX_KEYS) {
        cx.err(
            format!("{path}.max_keys"),
            format!("must be at most {MAX_KEYS}"),
        );
    }
    let key = match r.key.as_deref() {
        None | Some("route") => Some(RateLimitKey::Route),
        Some("client_ip") => Some(RateLimitKey::ClientIp),
        Some(k) => match k.strip_prefix("header:") {
            Some(h) => header_name(&mut cx, &format!("{path}.key"), h).map(RateLimitKey::Header),
            None => {
                cx.err(
                    format!("{path}.key"),
                    format!("unknown key {k:?}; expected route, client_ip or header:<name>"),
                );
                None
            }
        },
    };
    let limit = key.map(|key| RateLimit {
        rate: r.rate,
        per,
        burst: r.burst.unwrap_or(r.rate).max(1),
        key,
        max_keys: r.max_keys.unwrap_or(100_000).max(1),
    });
    cx.finish(limit)
}

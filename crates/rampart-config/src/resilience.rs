//! What the proxy does when upstreams misbehave: retries (per route), circuit breakers,
//! retry budgets, active health checks and passive outlier detection (per cluster).
//!
//! Names and defaults follow Envoy's, so its documentation applies.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::duration::parse_duration;
use crate::error::FieldError;

/// `forward.retries`
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RawRetryPolicy {
    /// Any of `5xx`, `gateway-error` (502/503/504), `reset`, `connect-failure`,
    /// `retriable-status-codes`.
    pub retry_on: Vec<String>,
    #[serde(default)]
    pub retriable_status_codes: Vec<u16>,
    /// Retries after the first try (default 1).
    #[serde(default)]
    pub max_retries: Option<u32>,
    #[serde(default)]
    pub per_try_timeout: Option<String>,
    /// Exponential back-off with full jitter: base 25ms, capped at 10 x base, by default.
    #[serde(default)]
    pub backoff: Option<RawBackoff>,
    /// Retry methods that are not idempotent (POST, PATCH) too.
    #[serde(default)]
    pub retry_non_idempotent: bool,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RawBackoff {
    pub base_interval: String,
    #[serde(default)]
    pub max_interval: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryPolicy {
    pub on_5xx: bool,
    pub on_gateway_error: bool,
    pub on_reset: bool,
    pub on_connect_failure: bool,
    pub statuses: Vec<u16>,
    pub max_retries: u32,
    pub per_try_timeout: Option<Duration>,
    pub base_interval: Duration,
    pub max_interval: Duration,
    pub retry_non_idempotent: bool,
}

/// `clusters[].circuit_breakers`; Envoy's defaults.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RawCircuitBreakers {
    pub max_connections: Option<usize>,
    pub max_pending_requests: Option<usize>,
    pub max_requests: Option<usize>,
    /// Retries in flight at once, when no retry budget is set.
    pub max_retries: Option<usize>,
    /// Retries in flight may be at most this share of active requests...
    pub retry_budget_percent: Option<u32>,
    /// ...but this many are always allowed.
    pub min_retry_concurrency: Option<usize>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CircuitBreakers {
    pub max_connections: usize,
    pub max_pending_requests: usize,
    pub max_requests: usize,
    pub max_retries: usize,
    pub retry_budget_percent: Option<u32>,
    pub min_retry_concurrency: usize,
}

impl Default for CircuitBreakers {
    fn default() -> Self {
        Self {
            max_connections: 1024,
            max_pending_requests: 1024,
            max_requests: 1024,
            max_retries: 3,
            retry_budget_percent: None,
            min_retry_concurrency: 3,
        }
    }
}

/// `clusters[].health_check`: active HTTP checks.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RawHealthCheck {
    pub path: String,
    pub interval: String,
    pub timeout: String,
    #[serde(default)]
    pub healthy_threshold: Option<u32>,
    #[serde(default)]
    pub unhealthy_threshold: Option<u32>,
    /// Statuses that pass; default 200–299.
    #[serde(default)]
    pub expected_statuses: Vec<u16>,
    /// Host header to send; default the endpoint's address.
    #[serde(default)]
    pub host: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthCheck {
    pub path: String,
    pub interval: Duration,
    pub timeout: Duration,
    pub healthy_threshold: u32,
    pub unhealthy_threshold: u32,
    pub expected_statuses: Vec<u16>,
    pub host: Option<String>,
}

impl HealthCheck {
    pub fn passes(&self, status: u16) -> bool {
        if self.expected_statuses.is_empty() {
            (200..300).contains(&status)
        } else {
            self.expected_statuses.contains(&status)
        }
    }
}

/// `clusters[].outlier_detection`: passive ejection on observed failures.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RawOutlierDetection {
    /// Consecutive 5xx responses (connect failures and resets count) that eject (default 5).
    #[serde(default)]
    pub consecutive_5xx: Option<u32>,
    /// Consecutive connect failures/resets/502-504 that eject (default 5).
    #[serde(default)]
    pub consecutive_gateway_failure: Option<u32>,
    /// First ejection's length; the n-th lasts n times as long (default 30s).
    #[serde(default)]
    pub base_ejection_time: Option<String>,
    /// Cap on one ejection's length (default 300s).
    #[serde(default)]
    pub max_ejection_time: Option<String>,
    /// Most endpoints ejected at once, as a share (default 10%); one may always be.
    #[serde(default)]
    pub max_ejection_percent: Option<u32>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutlierDetection {
    pub consecutive_5xx: u32,
    pub consecutive_gateway_failure: u32,
    pub base_ejection_time: Duration,
    pub max_ejection_time: Duration,
    pub max_ejection_percent: u32,
}

fn duration(errors: &mut Vec<FieldError>, path: String, v: &str) -> Option<Duration> {
    match parse_duration(v) {
        Ok(d) => Some(d),
        Err(e) => {
            errors.push(FieldError {
                path,
                rule: e.to_string(),
            });
            None
        }
    }
}

/// Each code in `list` (at `path`) must be an HTTP status, 100 to 599.
fn http_statuses(errors: &mut Vec<FieldError>, path: &str, list: &[u16]) {
    for (i, c) in list.iter().enumerate() {
        if !(100..=599).contains(c) {
            err(
                errors,
                format!("{path}[{i}]"),
                format!("{c} is not an HTTP status"),
            );
        }
    }
}

fn err(errors: &mut Vec<FieldError>, path: String, rule: impl Into<String>) {
    errors.push(FieldError {
        path,
        rule: rule.into(),
    });
}

pub fn validate_retry(path: &str, r: &RawRetryPolicy, errors: &mut Vec<FieldError>) -> RetryPolicy {
    let mut p = RetryPolicy {
        on_5xx: false,
        on_gateway_error: false,
        on_reset: false,
        on_connect_failure: false,
        statuses: r.retriable_status_codes.clone(),
        max_retries: r.max_retries.unwrap_or(1),
        per_try_timeout: r
            .per_try_timeout
            .as_deref()
            .and_then(|t| duration(errors, format!("{path}.per_try_timeout"), t)),
        base_interval: Duration::from_millis(25),
        max_interval: Duration::from_millis(250),
        retry_non_idempotent: r.retry_non_idempotent,
    };
    retry_on(path, r, &mut p, errors);
    http_statuses(
        errors,
        &format!("{path}.retriable_status_codes"),
        &r.retriable_status_codes,
    );
    if p.max_retries > 10 {
        err(errors, format!("{path}.max_retries"), "must be at most 10");
    }
    if let Some(b) = &r.backoff {
        backoff(path, b, &mut p, errors);
    }
    p
}

/// Sets `p`'s `on_*` flags from `retry_on`.
fn retry_on(path: &str, r: &RawRetryPolicy, p: &mut RetryPolicy, errors: &mut Vec<FieldError>) {
    if r.retry_on.is_empty() {
        err(
            errors,
            format!("{path}.retry_on"),
            "must list at least one condition",
        );
    }
    for (i, on) in r.retry_on.iter().enumerate() {
        match on.as_str() {
            "5xx" => p.on_5xx = true,
            "gateway-error" => p.on_gateway_error = true,
            "reset" => p.on_reset = true,
            "connect-failure" => p.on_connect_failure = true,
            "retriable-status-codes" => {
                if r.retriable_status_codes.is_empty() {
                    err(
                        errors,
                        format!("{path}.retriable_status_codes"),
                        "must list codes when retry_on has retriable-status-codes",
                    );
                }
            }
            other => err(
                errors,
                format!("{path}.retry_on[{i}]"),
                format!(
                    "unknown condition {other:?}; expected 5xx, gateway-error, reset, connect-failure or retriable-status-codes"
                ),
            ),
        }
    }
}

/// Sets `p`'s intervals from `backoff`; `max_interval` defaults to ten times the base.
fn backoff(path: &str, b: &RawBackoff, p: &mut RetryPolicy, errors: &mut Vec<FieldError>) {
    if let Some(base) = duration(
        errors,
        format!("{path}.backoff.base_interval"),
        &b.base_interval,
    ) {
        p.base_interval = base;
        p.max_interval = base * 10;
    }
    if let Some(max) = b
        .max_interval
        .as_deref()
        .and_then(|m| duration(errors, format!("{path}.backoff.max_interval"), m))
    {
        if max < p.base_interval {
            err(
                errors,
                format!("{path}.backoff.max_interval"),
                "must not be shorter than base_interval",
            );
        }
        p.max_interval = max;
    }
}

pub fn validate_circuit_breakers(
    path: &str,
    r: &RawCircuitBreakers,
    errors: &mut Vec<FieldError>,
) -> CircuitBreakers {
    let d = CircuitBreakers::default();
    let mut positive = |field: &str, v: Option<usize>, default: usize| match v {
        Some(0) => {
            err(errors, format!("{path}.{field}"), "must be at least 1");
            default
        }
        Some(n) => n,
        None => default,
    };
    let cb = CircuitBreakers {
        max_connections: positive("max_connections", r.max_connections, d.max_connections),
        max_pending_requests: positive(
            "max_pending_requests",
            r.max_pending_requests,
            d.max_pending_requests,
        ),
        max_requests: positive("max_requests", r.max_requests, d.max_requests),
        max_retries: positive("max_retries", r.max_retries, d.max_retries),
        retry_budget_percent: r.retry_budget_percent,
        min_retry_concurrency: r.min_retry_concurrency.unwrap_or(d.min_retry_concurrency),
    };
    if let Some(p) = r.retry_budget_percent
        && p > 100
    {
        err(
            errors,
            format!("{path}.retry_budget_percent"),
            "must be between 0 and 100",
        );
    }
    cb
}

pub fn validate_health_check(
    path: &str,
    r: &RawHealthCheck,
    errors: &mut Vec<FieldError>,
) -> Option<HealthCheck> {
    if !r.path.starts_with('/') {
        err(
            errors,
            format!("{path}.path"),
            format!("{:?} must start with '/'", r.path),
        );
    }
    let interval = duration(errors, format!("{path}.interval"), &r.interval);
    let timeout = duration(errors, format!("{path}.timeout"), &r.timeout);
    if let (Some(i), Some(t)) = (interval, timeout)
        && (i.is_zero() || t.is_zero())
    {
        err(
            errors,
            path.to_owned(),
            "interval and timeout must be longer than 0",
        );
    }
    http_statuses(
        errors,
        &format!("{path}.expected_statuses"),
        &r.expected_statuses,
    );
    let threshold = |errors: &mut Vec<FieldError>, field: &str, v: Option<u32>, d: u32| match v {
        Some(0) => {
            err(errors, format!("{path}.{field}"), "must be at least 1");
            d
        }
        Some(n) => n,
        None => d,
    };
    let healthy_threshold = threshold(errors, "healthy_threshold", r.healthy_threshold, 1);
    let unhealthy_threshold = threshold(errors, "unhealthy_threshold", r.unhealthy_threshold, 2);
    Some(HealthCheck {
        path: r.path.clone(),
        interval: interval?,
        timeout: timeout?,
        healthy_threshold,
        unhealthy_threshold,
        expected_statuses: r.expected_statuses.clone(),
        host: r.host.clone(),
    })
}

pub fn validate_outlier(
    path: &str,
    r: &RawOutlierDetection,
    errors: &mut Vec<FieldError>,
) -> OutlierDetection {
    let base = r
        .base_ejection_time
        .as_deref()
        .and_then(|v| duration(errors, format!("{path}.base_ejection_time"), v))
        .unwrap_or(Duration::from_secs(30));
    let max = r
        .max_ejection_time
        .as_deref()
        .and_then(|v| duration(errors, format!("{path}.max_ejection_time"), v))
        .unwrap_or(Duration::from_secs(300));
    if max < base {
        err(
            errors,
            format!("{path}.max_ejection_time"),
            "must not be shorter than base_ejection_time",
        );
    }
    let pct = r.max_ejection_percent.unwrap_or(10);
    if pct > 100 {
        err(
            errors,
            format!("{path}.max_ejection_percent"),
            "must be at most 100",
        );
    }
    for (field, v) in [
        ("consecutive_5xx", r.consecutive_5xx),
        ("consecutive_gateway_failure", r.consecutive_gateway_failure),
    ] {
        if v == Some(0) {
            err(errors, format!("{path}.{field}"), "must be at least 1");
        }
    }
    OutlierDetection {
        consecutive_5xx: r.consecutive_5xx.unwrap_or(5).max(1),
        consecutive_gateway_failure: r.consecutive_gateway_failure.unwrap_or(5).max(1),
        base_ejection_time: base,
        max_ejection_time: max,
        max_ejection_percent: pct.min(100),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_conditions() {
        let mut errors = Vec::new();
        let p = validate_retry(
            "r",
            &RawRetryPolicy {
                retry_on: vec![
                    "gateway-error".into(),
                    "retriable-status-codes".into(),
                    "bogus".into(),
                ],
                retriable_status_codes: vec![409],
                max_retries: Some(2),
                per_try_timeout: Some("100ms".into()),
                backoff: None,
                retry_non_idempotent: false,
            },
            &mut errors,
        );
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert_eq!(errors[0].path, "r.retry_on[2]");
        assert!(p.on_gateway_error && !p.on_5xx && p.statuses == [409]);
    }
}

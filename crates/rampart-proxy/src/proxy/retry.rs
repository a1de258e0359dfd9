//! Retries: which requests may be retried, whether an attempt's outcome calls for another
//! (a pure decision, [`decide`]), and the cluster's budget for retries in flight.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, StatusCode};
use hyper::body::Incoming;
use rampart_config::model::{CircuitBreakers, RetryPolicy};

use crate::body::BodyPace;
use crate::error::ProxyError;
use crate::upstream::ClusterRuntime;

/// Largest request body kept in memory so that a retry can send it again.
const RETRY_BUFFER_LIMIT: u64 = 64 * 1024;

/// How one attempt ended.
#[derive(Debug, Clone, Copy)]
pub(super) enum Outcome<'e> {
    /// The upstream answered with this status.
    Status(u16),
    Failed(&'e ProxyError),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Decision {
    /// This attempt's outcome is the answer.
    Done,
    /// Try again (if the cluster's retry budget allows).
    Retry,
}

/// Whether to try again after `made` attempts, of at most `1 + max_retries`.
pub(super) fn decide(
    policy: Option<&RetryPolicy>,
    made: u32,
    max_retries: u32,
    outcome: Outcome<'_>,
    out_of_time: bool,
) -> Decision {
    let Some(p) = policy else {
        return Decision::Done;
    };
    let wanted = match outcome {
        Outcome::Status(s) => retries_status(p, s),
        Outcome::Failed(e) => retries_error(p, e),
    };
    if wanted && made <= max_retries && !out_of_time {
        Decision::Retry
    } else {
        Decision::Done
    }
}

/// Whether the policy retries a response with `status`.
pub(super) fn retries_status(p: &RetryPolicy, status: u16) -> bool {
    (p.on_5xx && (500..600).contains(&status))
        || (p.on_gateway_error && matches!(status, 502..=504))
        || p.statuses.contains(&status)
}

fn retries_error(p: &RetryPolicy, e: &ProxyError) -> bool {
    match e {
        ProxyError::UpstreamConnect { .. } | ProxyError::ConnectTimeout { .. } => {
            p.on_connect_failure || p.on_5xx || p.on_gateway_error
        }
        ProxyError::UpstreamReset { .. } => p.on_reset || p.on_5xx || p.on_gateway_error,
        ProxyError::UpstreamTimeout { .. } => p.on_5xx || p.on_gateway_error,
        _ => false,
    }
}

/// A request body as it will be sent: whole (so a retry can send it again) or streamed once.
pub(super) enum Replay {
    Bytes(Bytes),
    Stream(Incoming),
    Failed(ProxyError),
}

/// Reads a small body whole (Content-Length ≤ 64 KiB) so it can be sent more than once.
pub(super) async fn replayable(
    headers: &HeaderMap,
    body: Incoming,
    pace: Option<BodyPace>,
) -> Replay {
    use http_body::Body as _;
    if body.is_end_stream() {
        return Replay::Bytes(Bytes::new());
    }
    match super::content_length(headers) {
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
                    answer: None,
                }),
            }
        }
        _ => Replay::Stream(body),
    }
}

/// One retry in flight on a cluster, within its retry budget (or `max_retries`).
pub(super) struct RetryToken<'a>(&'a AtomicUsize);

impl<'a> RetryToken<'a> {
    pub(super) fn take(cluster: &'a ClusterRuntime) -> Option<Self> {
        let cb = &cluster.config.circuit_breakers;
        let retries = &cluster.retries_active;
        if budget_allows(cb, retries.load(Ordering::Relaxed), cluster.active()) {
            retries.fetch_add(1, Ordering::Relaxed);
            Some(Self(retries))
        } else {
            cluster.stats.overflow();
            None
        }
    }
}

/// Whether one more retry may start with `retries` retries and `active` requests in flight:
/// within the retry budget's share of active requests (with its floor), else under
/// `max_retries` (Envoy's two ways to bound retries).
fn budget_allows(cb: &CircuitBreakers, retries: usize, active: usize) -> bool {
    match cb.retry_budget_percent {
        Some(pct) => {
            let budget = active * pct as usize / 100;
            retries < budget.max(cb.min_retry_concurrency)
        }
        None => retries < cb.max_retries,
    }
}

impl Drop for RetryToken<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy_with(on_5xx: bool, on_gateway_error: bool, statuses: Vec<u16>) -> RetryPolicy {
        RetryPolicy {
            on_5xx,
            on_gateway_error,
            on_reset: false,
            on_connect_failure: true,
            statuses,
            max_retries: 2,
            per_try_timeout: None,
            base_interval: Duration::from_millis(25),
            max_interval: Duration::from_millis(250),
            retry_non_idempotent: false,
        }
    }

    fn policy() -> RetryPolicy {
        policy_with(false, true, vec![409])
    }

    fn reset() -> ProxyError {
        ProxyError::UpstreamReset {
            endpoint: "127.0.0.1:1".into(),
            reason: "reset".into(),
        }
    }

    #[test]
    fn statuses_and_errors_the_policy_names_are_retried() {
        let p = policy();
        let reset = reset();
        let d = |o| decide(Some(&p), 1, 2, o, false);
        assert_eq!(d(Outcome::Status(503)), Decision::Retry, "a gateway error");
        assert_eq!(d(Outcome::Status(409)), Decision::Retry, "a listed status");
        assert_eq!(
            d(Outcome::Status(500)),
            Decision::Done,
            "not a gateway error"
        );
        assert_eq!(d(Outcome::Status(200)), Decision::Done);
        let refused = ProxyError::UpstreamConnect {
            endpoint: "127.0.0.1:1".into(),
            reason: "refused".into(),
        };
        assert_eq!(d(Outcome::Failed(&refused)), Decision::Retry);
        // on_gateway_error covers resets too (as in Envoy's gateway-error).
        assert_eq!(d(Outcome::Failed(&reset)), Decision::Retry);
        let client = ProxyError::BodyTooLarge { limit: 1 };
        assert_eq!(
            d(Outcome::Failed(&client)),
            Decision::Done,
            "never the client's fault"
        );
    }

    #[test]
    fn attempts_and_time_run_out() {
        let p = policy();
        let s = Outcome::Status(503);
        assert_eq!(
            decide(Some(&p), 1, 1, s, false),
            Decision::Retry,
            "one retry left"
        );
        assert_eq!(
            decide(Some(&p), 2, 1, s, false),
            Decision::Done,
            "retries used up"
        );
        assert_eq!(
            decide(Some(&p), 1, 0, s, false),
            Decision::Done,
            "no retries"
        );
        assert_eq!(
            decide(Some(&p), 1, 3, s, true),
            Decision::Done,
            "past the deadline"
        );
        assert_eq!(decide(None, 1, 3, s, false), Decision::Done, "no policy");
    }

    #[test]
    fn retry_budget_caps_by_share_with_a_floor() {
        let cb = CircuitBreakers {
            retry_budget_percent: Some(20),
            min_retry_concurrency: 3,
            ..CircuitBreakers::default()
        };
        assert!(budget_allows(&cb, 2, 0), "the floor always allows 3");
        assert!(!budget_allows(&cb, 3, 10));
        assert!(budget_allows(&cb, 19, 100));
        assert!(!budget_allows(&cb, 20, 100));
        let plain = CircuitBreakers::default();
        assert!(budget_allows(&plain, 2, 1000));
        assert!(!budget_allows(&plain, 3, 1000));
    }

    #[test]
    fn five_xx_covers_every_server_error() {
        let p = policy_with(true, false, Vec::new());
        assert!(retries_status(&p, 500) && retries_status(&p, 599) && !retries_status(&p, 499));
        assert!(retries_error(&p, &reset()));
    }
}

//! Endpoint health: active HTTP health checks and passive outlier detection.
//!
//! An endpoint receives traffic unless an active check marked it unhealthy or outlier
//! detection ejected it. Active checks flip state only after `healthy_threshold` /
//! `unhealthy_threshold` consecutive results. Ejections last `base_ejection_time` times the
//! number of times the endpoint was ejected, capped at `max_ejection_time`, and never take out
//! more than `max_ejection_percent` of a cluster's endpoints (one may always be ejected).
//! State is plain atomics, read on every pick; nothing here blocks the request path.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, Weak};
use std::time::{Duration, Instant};

use http::Request;
use http_body_util::Empty;
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use rampart_config::model::{HealthCheck, OutlierDetection};

use super::{ClusterRuntime, Endpoint};

/// Milliseconds since the first call, on the monotonic clock.
pub(crate) fn now_ms() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    let epoch = *EPOCH.get_or_init(Instant::now);
    u64::try_from(epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
}

#[derive(Debug, Default)]
pub struct Health {
    failed_active_check: AtomicBool,
    check_streak_ok: AtomicU32,
    check_streak_fail: AtomicU32,
    /// `now_ms` until which the endpoint is ejected; 0 when it is not.
    ejected_until: AtomicU64,
    ejections: AtomicU32,
    consecutive_5xx: AtomicU32,
    consecutive_gateway: AtomicU32,
}

/// What an upstream attempt came to, for outlier detection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Status(u16),
    /// Connect failure, reset or per-try timeout: a gateway failure.
    LocalFailure,
}

impl Health {
    pub fn usable(&self, now: u64) -> bool {
        !self.failed_active_check.load(Ordering::Relaxed) && !self.ejected(now)
    }

    fn ejected(&self, now: u64) -> bool {
        let until = self.ejected_until.load(Ordering::Relaxed);
        until != 0 && now < until
    }

    /// `healthy`, `failed_active_hc` or `ejected`, for `/clusters`.
    pub fn state(&self) -> &'static str {
        if self.failed_active_check.load(Ordering::Relaxed) {
            "failed_active_hc"
        } else if self.ejected(now_ms()) {
            "ejected"
        } else {
            "healthy"
        }
    }

    pub fn ejections(&self) -> u32 {
        self.ejections.load(Ordering::Relaxed)
    }

    /// Records one active check; returns the new health if it changed.
    fn record_check(&self, ok: bool, hc: &HealthCheck) -> Option<bool> {
        if ok {
            self.check_streak_fail.store(0, Ordering::Relaxed);
            let streak = self.check_streak_ok.fetch_add(1, Ordering::Relaxed) + 1;
            if streak >= hc.healthy_threshold
                && self.failed_active_check.swap(false, Ordering::Relaxed)
            {
                return Some(true);
            }
        } else {
            self.check_streak_ok.store(0, Ordering::Relaxed);
            let streak = self.check_streak_fail.fetch_add(1, Ordering::Relaxed) + 1;
            if streak >= hc.unhealthy_threshold
                && !self.failed_active_check.swap(true, Ordering::Relaxed)
            {
                return Some(false);
            }
        }
        None
    }

    /// Counts an outcome; returns true when the endpoint crossed a threshold and should be
    /// ejected (the caller checks the cluster-wide cap and calls [`Health::eject`]).
    pub fn record(&self, outcome: Outcome, od: &OutlierDetection) -> bool {
        let (is_5xx, is_gateway) = match outcome {
            Outcome::Status(s) => (s >= 500, matches!(s, 502..=504)),
            Outcome::LocalFailure => (true, true),
        };
        if !is_5xx {
            self.consecutive_5xx.store(0, Ordering::Relaxed);
            self.consecutive_gateway.store(0, Ordering::Relaxed);
            return false;
        }
        let c5 = self.consecutive_5xx.fetch_add(1, Ordering::Relaxed) + 1;
        let cg = if is_gateway {
            self.consecutive_gateway.fetch_add(1, Ordering::Relaxed) + 1
        } else {
            self.consecutive_gateway.store(0, Ordering::Relaxed);
            0
        };
        c5 >= od.consecutive_5xx || cg >= od.consecutive_gateway_failure
    }

    /// Ejects for a growing interval: the n-th ejection lasts n × base, capped.
    pub fn eject(&self, od: &OutlierDetection, now: u64) {
        let n = self.ejections.fetch_add(1, Ordering::Relaxed) + 1;
        let len = (od.base_ejection_time * n).min(od.max_ejection_time);
        let len_ms = u64::try_from(len.as_millis()).unwrap_or(u64::MAX);
        self.ejected_until
            .store(now.saturating_add(len_ms).max(1), Ordering::Relaxed);
        self.consecutive_5xx.store(0, Ordering::Relaxed);
        self.consecutive_gateway.store(0, Ordering::Relaxed);
    }
}

/// Applies an outcome to `ep` and ejects it if it crossed a threshold and the cluster's cap
/// allows. Returns true if it was ejected.
pub fn observe(cluster: &ClusterRuntime, ep: &Endpoint, outcome: Outcome) -> bool {
    let Some(od) = &cluster.config.outlier_detection else {
        return false;
    };
    if !ep.health.record(outcome, od) {
        return false;
    }
    let now = now_ms();
    let eps = cluster.endpoints();
    let ejected = eps.iter().filter(|e| e.health.ejected(now)).count();
    let cap = (eps.len() * od.max_ejection_percent as usize / 100).max(1);
    if ejected >= cap {
        return false;
    }
    ep.health.eject(od, now);
    cluster.stats.ejection();
    tracing::warn!(cluster = %cluster.name(), endpoint = %ep.addr, ejections = ep.health.ejections(), "outlier detection ejected an endpoint");
    true
}

/// Runs active health checks for a cluster until it is dropped.
pub(crate) async fn check_loop(cluster: Weak<ClusterRuntime>, hc: HealthCheck) {
    loop {
        let Some(c) = cluster.upgrade() else { return };
        let eps = c.endpoints();
        let mut checks = tokio::task::JoinSet::new();
        for ep in eps.iter() {
            let ep = ep.clone();
            let hc = hc.clone();
            checks.spawn(async move {
                let ok = check_once(&ep, &hc).await;
                (ep, ok)
            });
        }
        drop(c);
        while let Some(Ok((ep, ok))) = checks.join_next().await {
            if let Some(healthy) = ep.health.record_check(ok, &hc) {
                let Some(c) = cluster.upgrade() else { return };
                tracing::warn!(cluster = %c.name(), endpoint = %ep.addr, healthy, "active health check changed an endpoint's state");
            }
        }
        tokio::time::sleep(hc.interval).await;
    }
}

/// One `GET path` on a fresh connection; true if it answered an expected status in time.
async fn check_once(ep: &Arc<Endpoint>, hc: &HealthCheck) -> bool {
    let attempt = async {
        let stream = tokio::net::TcpStream::connect(ep.addr).await.ok()?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .ok()?;
        tokio::spawn(conn);
        let host = hc.host.clone().unwrap_or_else(|| ep.authority.to_string());
        let req = Request::get(hc.path.as_str())
            .header(http::header::HOST, host)
            .header(http::header::USER_AGENT, "rampart-health-check")
            .body(Empty::<Bytes>::new())
            .ok()?;
        let resp = sender.send_request(req).await.ok()?;
        Some(hc.passes(resp.status().as_u16()))
    };
    matches!(
        tokio::time::timeout(hc.timeout, attempt).await,
        Ok(Some(true))
    )
}

/// Delay before retry `n` (1-based): exponential from `base`, capped, with full jitter.
pub fn backoff(n: u32, base: Duration, max: Duration) -> Duration {
    let exp = base
        .saturating_mul(1u32 << n.saturating_sub(1).min(16))
        .min(max);
    let ms = u64::try_from(exp.as_millis()).unwrap_or(u64::MAX);
    Duration::from_millis(fastrand::u64(0..=ms))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn od() -> OutlierDetection {
        OutlierDetection {
            consecutive_5xx: 3,
            consecutive_gateway_failure: 2,
            base_ejection_time: Duration::from_secs(10),
            max_ejection_time: Duration::from_secs(25),
            max_ejection_percent: 50,
        }
    }

    #[test]
    fn thresholds_and_growing_ejections() {
        let h = Health::default();
        let od = od();
        assert!(!h.record(Outcome::Status(500), &od));
        assert!(!h.record(Outcome::Status(200), &od), "success resets");
        assert!(!h.record(Outcome::Status(500), &od));
        assert!(!h.record(Outcome::Status(500), &od));
        assert!(h.record(Outcome::Status(500), &od), "third consecutive 5xx");
        let h = Health::default();
        assert!(!h.record(Outcome::LocalFailure, &od));
        assert!(h.record(Outcome::Status(503), &od), "two gateway failures");

        let now = 1_000;
        h.eject(&od, now);
        assert!(!h.usable(now + 9_999));
        assert!(h.usable(now + 10_000));
        h.eject(&od, now);
        assert!(
            !h.usable(now + 19_999),
            "second ejection lasts twice as long"
        );
        h.eject(&od, now);
        assert!(h.usable(now + 25_000), "capped at max_ejection_time");
    }

    #[test]
    fn active_check_thresholds() {
        let hc = HealthCheck {
            path: "/".into(),
            interval: Duration::from_secs(1),
            timeout: Duration::from_secs(1),
            healthy_threshold: 2,
            unhealthy_threshold: 2,
            expected_statuses: vec![],
            host: None,
        };
        let h = Health::default();
        assert_eq!(h.record_check(false, &hc), None);
        assert_eq!(h.record_check(false, &hc), Some(false));
        assert!(!h.usable(0));
        assert_eq!(h.record_check(true, &hc), None);
        assert_eq!(h.record_check(true, &hc), Some(true));
        assert!(h.usable(0));
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        let base = Duration::from_millis(10);
        let max = Duration::from_millis(50);
        for _ in 0..100 {
            assert!(backoff(1, base, max) <= base);
            assert!(backoff(3, base, max) <= Duration::from_millis(40));
            assert!(backoff(10, base, max) <= max);
        }
    }
}

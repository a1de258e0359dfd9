//! Request rates, error rates and latency quantiles per route and cluster, from two scrapes
//! of the gateway's own `/metrics` (`rampart_requests_total` by status class,
//! `rampart_request_duration_seconds` buckets), as `rate()` and `histogram_quantile()`
//! would compute them over the interval.

use std::collections::BTreeMap;
use std::time::Instant;

use serde_json::{Value, json};

use crate::openmetrics::Sample;

/// Which series a request counter belongs to: (listener, route, cluster).
type Key = (String, String, String);

/// Cumulative histogram buckets: (upper bound, count), sorted by bound.
type Buckets = Vec<(f64, f64)>;

/// One scrape's counters: requests by status class per (listener, route, cluster), the
/// request latency histogram per (listener, route), the upstream latency per cluster.
#[derive(Debug, Clone)]
pub(crate) struct Scrape {
    at: Instant,
    requests: BTreeMap<Key, [f64; 5]>,
    route_latency: BTreeMap<(String, String), Buckets>,
    cluster_latency: BTreeMap<String, Buckets>,
}

impl Scrape {
    pub(crate) fn new(samples: &[Sample], at: Instant) -> Self {
        let mut requests: BTreeMap<Key, [f64; 5]> = BTreeMap::new();
        let mut route_latency: BTreeMap<(String, String), Buckets> = BTreeMap::new();
        let mut cluster_latency: BTreeMap<String, Buckets> = BTreeMap::new();
        let label = |s: &Sample, name: &str| s.label(name).unwrap_or("").to_owned();
        let le = |s: &Sample| match s.label("le") {
            Some("+Inf") => Some(f64::INFINITY),
            Some(v) => v.parse().ok(),
            None => None,
        };
        for s in samples {
            match s.name.as_str() {
                "rampart_requests_total" => {
                    let i = match s.label("class") {
                        Some("1xx") => 0,
                        Some("2xx") => 1,
                        Some("3xx") => 2,
                        Some("4xx") => 3,
                        Some("5xx") => 4,
                        _ => continue,
                    };
                    let k = (label(s, "listener"), label(s, "route"), label(s, "cluster"));
                    requests.entry(k).or_default()[i] += s.value;
                }
                "rampart_request_duration_seconds_bucket" => {
                    if let Some(le) = le(s) {
                        route_latency
                            .entry((label(s, "listener"), label(s, "route")))
                            .or_default()
                            .push((le, s.value));
                    }
                }
                "rampart_upstream_duration_seconds_bucket" => {
                    if let Some(le) = le(s) {
                        cluster_latency
                            .entry(label(s, "cluster"))
                            .or_default()
                            .push((le, s.value));
                    }
                }
                _ => {}
            }
        }
        for b in route_latency
            .values_mut()
            .chain(cluster_latency.values_mut())
        {
            b.sort_by(|a, b| a.0.total_cmp(&b.0));
        }
        Self {
            at,
            requests,
            route_latency,
            cluster_latency,
        }
    }
}

/// Growth of a counter; one that went down was reset, so it counts from zero.
fn grew(now: f64, before: f64) -> f64 {
    if now >= before { now - before } else { now }
}

/// What changed between two scrapes of one group (a route, a cluster, everything).
#[derive(Debug, Default, Clone)]
struct Delta {
    by_class: [f64; 5],
    buckets: Buckets,
    total: f64,
}

impl Delta {
    fn add_requests(&mut self, now: &[f64; 5], before: Option<&[f64; 5]>) {
        for i in 0..5 {
            self.by_class[i] += grew(now[i], before.map_or(0.0, |b| b[i]));
        }
        self.total += now.iter().sum::<f64>();
    }

    fn add_latency(&mut self, now: &Buckets, before: Option<&Buckets>) {
        for (j, &(le, n)) in now.iter().enumerate() {
            let b = before
                .and_then(|b| b.get(j))
                .filter(|(ble, _)| *ble == le)
                .map_or(0.0, |&(_, c)| c);
            let d = grew(n, b);
            match self.buckets.iter_mut().find(|(l, _)| *l == le) {
                Some(slot) => slot.1 += d,
                None => self.buckets.push((le, d)),
            }
        }
    }

    fn view(&self, seconds: f64) -> Value {
        let requests: f64 = self.by_class.iter().sum();
        let mut buckets = self.buckets.clone();
        buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
        json!({
            "rps": round(requests / seconds.max(1e-3)),
            "error_rate": if requests > 0.0 { round(self.by_class[4] / requests) } else { 0.0 },
            "p50_ms": quantile(0.5, &buckets).map(|s| round(s * 1e3)),
            "p99_ms": quantile(0.99, &buckets).map(|s| round(s * 1e3)),
            "requests": self.total,
        })
    }
}

fn round(v: f64) -> f64 {
    (v * 1000.0).round() / 1000.0
}

/// The `q` quantile of cumulative `buckets` (sorted by bound), interpolated linearly
/// within its bucket as Prometheus' `histogram_quantile` does; None without observations.
pub(crate) fn quantile(q: f64, buckets: &[(f64, f64)]) -> Option<f64> {
    let total = buckets.last()?.1;
    if total <= 0.0 {
        return None;
    }
    let rank = q * total;
    let mut lower = 0.0;
    let mut below = 0.0;
    for &(le, count) in buckets {
        if count >= rank {
            if le.is_infinite() {
                return Some(lower);
            }
            let inside = count - below;
            let frac = if inside > 0.0 {
                (rank - below) / inside
            } else {
                1.0
            };
            return Some(lower + (le - lower) * frac);
        }
        lower = le;
        below = count;
    }
    Some(lower)
}

/// The overview: totals, and each route's and cluster's rates, over `before..now`. A
/// route's latency is the gateway's (request in to response headers out), a cluster's its
/// upstream's (request sent to response headers).
pub(crate) fn overview(before: &Scrape, now: &Scrape, unix_ms: u64) -> Value {
    let seconds = now.at.duration_since(before.at).as_secs_f64();
    let mut all = Delta::default();
    let mut routes: BTreeMap<(String, String), Delta> = BTreeMap::new();
    let mut clusters: BTreeMap<String, Delta> = BTreeMap::new();
    for (k, c) in &now.requests {
        let prev = before.requests.get(k);
        all.add_requests(c, prev);
        let route = (k.0.clone(), k.1.clone());
        routes.entry(route).or_default().add_requests(c, prev);
        if !k.2.is_empty() {
            clusters
                .entry(k.2.clone())
                .or_default()
                .add_requests(c, prev);
        }
    }
    for (k, b) in &now.route_latency {
        let prev = before.route_latency.get(k);
        all.add_latency(b, prev);
        routes.entry(k.clone()).or_default().add_latency(b, prev);
    }
    for (k, b) in &now.cluster_latency {
        if let Some(d) = clusters.get_mut(k) {
            d.add_latency(b, before.cluster_latency.get(k));
        }
    }
    let with = |mut v: Value, extra: Value| {
        if let (Some(o), Value::Object(e)) = (v.as_object_mut(), extra) {
            o.extend(e);
        }
        v
    };
    json!({
        "t": unix_ms,
        "interval_s": round(seconds),
        "total": all.view(seconds),
        // Routes that never matched a request (the "no route" series) are left out.
        "routes": routes
            .iter()
            .filter(|((_, r), d)| !r.is_empty() || d.total > 0.0)
            .map(|((l, r), d)| with(d.view(seconds), json!({"listener": l, "route": r})))
            .collect::<Vec<_>>(),
        "clusters": clusters.iter().map(|(c, d)| with(d.view(seconds), json!({"cluster": c}))).collect::<Vec<_>>(),
    })
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use proptest::prelude::*;

    use super::*;
    use crate::openmetrics::parse;

    fn scrape(text: &str, at: Instant) -> Scrape {
        Scrape::new(&parse(text), at)
    }

    #[test]
    fn rates_errors_and_quantiles_over_the_interval() {
        let t0 = Instant::now();
        let before = scrape(
            "rampart_requests_total{listener=\"main\",route=\"a\",cluster=\"c\",class=\"2xx\"} 10\n\
             rampart_request_duration_seconds_bucket{le=\"0.001\",listener=\"main\",route=\"a\"} 10\n\
             rampart_request_duration_seconds_bucket{le=\"0.002\",listener=\"main\",route=\"a\"} 10\n\
             rampart_request_duration_seconds_bucket{le=\"+Inf\",listener=\"main\",route=\"a\"} 10\n\
             rampart_upstream_duration_seconds_bucket{le=\"0.001\",cluster=\"c\"} 10\n\
             rampart_upstream_duration_seconds_bucket{le=\"+Inf\",cluster=\"c\"} 10\n",
            t0,
        );
        // 20 more in 2 s: 10 fast, 8 between 1 and 2 ms, 2 of them 5xx above 2 ms.
        let now = scrape(
            "rampart_requests_total{listener=\"main\",route=\"a\",cluster=\"c\",class=\"2xx\"} 28\n\
             rampart_requests_total{listener=\"main\",route=\"a\",cluster=\"c\",class=\"5xx\"} 2\n\
             rampart_request_duration_seconds_bucket{le=\"0.001\",listener=\"main\",route=\"a\"} 20\n\
             rampart_request_duration_seconds_bucket{le=\"0.002\",listener=\"main\",route=\"a\"} 28\n\
             rampart_request_duration_seconds_bucket{le=\"+Inf\",listener=\"main\",route=\"a\"} 30\n\
             rampart_upstream_duration_seconds_bucket{le=\"0.001\",cluster=\"c\"} 30\n\
             rampart_upstream_duration_seconds_bucket{le=\"+Inf\",cluster=\"c\"} 30\n",
            t0 + Duration::from_secs(2),
        );
        let v = overview(&before, &now, 0);
        assert_eq!(v["total"]["rps"], 10.0);
        assert_eq!(v["total"]["error_rate"], 0.1);
        assert_eq!(v["total"]["p50_ms"], 1.0);
        assert_eq!(
            v["total"]["p99_ms"], 2.0,
            "in the +Inf bucket: its lower bound"
        );
        assert_eq!(v["routes"][0]["route"], "a");
        assert_eq!(v["clusters"][0]["cluster"], "c");
        assert_eq!(v["clusters"][0]["requests"], 30.0);
        assert_eq!(v["clusters"][0]["p99_ms"], 0.99, "the upstream's latency");
        assert_eq!(v["routes"][0]["p50_ms"], 1.0);
    }

    #[test]
    fn no_traffic_has_no_quantiles() {
        let t0 = Instant::now();
        let s = scrape("", t0);
        let v = overview(&s, &scrape("", t0 + Duration::from_secs(1)), 0);
        assert_eq!(v["total"]["rps"], 0.0);
        assert!(v["total"]["p99_ms"].is_null());
    }

    proptest! {
        /// A quantile lies within the bounds of the buckets that hold observations, and
        /// grows with q.
        #[test]
        fn quantiles_are_bounded_and_monotone(
            counts in proptest::collection::vec(0u32..1000, 1..12),
            q1 in 0.0f64..1.0,
            q2 in 0.0f64..1.0,
        ) {
            let mut cum = 0.0;
            let buckets: Vec<(f64, f64)> = counts
                .iter()
                .enumerate()
                .map(|(i, &c)| {
                    cum += f64::from(c);
                    (0.001 * f64::from(1u32 << i), cum)
                })
                .collect();
            let (lo, hi) = (q1.min(q2), q1.max(q2));
            match (quantile(lo, &buckets), quantile(hi, &buckets)) {
                (Some(a), Some(b)) => {
                    prop_assert!(a <= b + 1e-12, "{a} > {b}");
                    prop_assert!(a >= 0.0 && b <= buckets.last().unwrap().0);
                }
                (None, None) => prop_assert_eq!(cum, 0.0),
                other => prop_assert!(false, "{other:?}"),
            }
        }
    }
}

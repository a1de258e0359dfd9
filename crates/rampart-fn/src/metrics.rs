//! Per-function metrics on the gateway's `/metrics` (its registry adds the `rampart_`
//! prefix).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct Outcome {
    pub(crate) function: String,
    /// `ok`, `error` (the function answered 5xx or failed its response), `trap`, `timeout`,
    /// `overloaded`, `unavailable` (could not start).
    pub(crate) outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct Start {
    pub(crate) function: String,
    /// `cold`: loaded from the compiled-component cache for this request; `warm`: ready in
    /// memory (every request still gets a fresh instance).
    pub(crate) kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct Function {
    pub(crate) function: String,
}

fn seconds() -> Histogram {
    // 10 µs … ~40 s.
    Histogram::new(exponential_buckets(1e-5, 2.0, 22))
}

#[derive(Clone)]
pub(crate) struct Metrics {
    pub(crate) invocations: Family<Outcome, Counter>,
    pub(crate) starts: Family<Start, Counter>,
    /// Time from the request reaching the runtime to the guest's instance being ready.
    pub(crate) start_seconds: Family<Start, Histogram, fn() -> Histogram>,
    /// Time from the request reaching the runtime to the guest finishing.
    pub(crate) duration: Family<Function, Histogram, fn() -> Histogram>,
}

impl Metrics {
    pub(crate) fn new() -> Self {
        Self {
            invocations: Family::default(),
            starts: Family::default(),
            start_seconds: Family::new_with_constructor(seconds),
            duration: Family::new_with_constructor(seconds),
        }
    }

    pub(crate) fn register(&self, r: &mut Registry) {
        r.register(
            "fn_invocations",
            "Function invocations by outcome",
            self.invocations.clone(),
        );
        r.register(
            "fn_starts",
            "Function starts: cold (loaded from the compiled cache) or warm (in memory)",
            self.starts.clone(),
        );
        r.register(
            "fn_start_seconds",
            "Time until a function's fresh instance is ready, by start kind",
            self.start_seconds.clone(),
        );
        r.register(
            "fn_duration_seconds",
            "Function invocation time, until the guest finished",
            self.duration.clone(),
        );
    }
}

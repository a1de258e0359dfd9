//! The operator's Prometheus metrics: reconciles and their errors and durations per kind, the
//! rollout phase of every object, and whether this replica leads.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use super::record::Key;
use crate::rollout::Phase;

type Labels = Vec<(&'static str, String)>;

const PHASES: [Phase; 4] = [
    Phase::Provisioning,
    Phase::Running,
    Phase::Failed,
    Phase::RolledBack,
];

/// Shared by the controllers and the metrics endpoint.
#[derive(Clone)]
pub struct Metrics {
    registry: Arc<Mutex<Registry>>,
    reconciles: Family<Labels, Counter>,
    errors: Family<Labels, Counter>,
    duration: Family<Labels, Histogram>,
    phase: Family<Labels, Gauge>,
    leader: Gauge,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        let mut r = Registry::with_prefix("rampart_operator");
        let reconciles = Family::<Labels, Counter>::default();
        r.register("reconciles", "Reconciles by kind", reconciles.clone());
        let errors = Family::<Labels, Counter>::default();
        r.register(
            "reconcile_errors",
            "Reconciles that failed (and are retried), by kind",
            errors.clone(),
        );
        let duration = Family::<Labels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.001, 2.0, 14))
        });
        r.register(
            "reconcile_duration_seconds",
            "Time spent in one reconcile, by kind",
            duration.clone(),
        );
        let phase = Family::<Labels, Gauge>::default();
        r.register(
            "rollout_phase",
            "1 for the phase each object's rollout is in, 0 for the others",
            phase.clone(),
        );
        let leader = Gauge::default();
        r.register(
            "leader",
            "1 while this replica holds the lease",
            leader.clone(),
        );
        Self {
            registry: Arc::new(Mutex::new(r)),
            reconciles,
            errors,
            duration,
            phase,
            leader,
        }
    }
}

impl Metrics {
    pub(crate) fn reconciled(&self, kind: &str, took: Duration, ok: bool) {
        let labels = vec![("kind", kind.to_owned())];
        self.reconciles.get_or_create(&labels).inc();
        if !ok {
            self.errors.get_or_create(&labels).inc();
        }
        self.duration
            .get_or_create(&labels)
            .observe(took.as_secs_f64());
    }

    pub(crate) fn phase(&self, key: &Key, now: Phase) {
        for p in PHASES {
            self.phase
                .get_or_create(&labels(key, p))
                .set(i64::from(p == now));
        }
    }

    pub(crate) fn forget(&self, key: &Key) {
        for p in PHASES {
            self.phase.remove(&labels(key, p));
        }
    }

    pub fn set_leader(&self, leading: bool) {
        self.leader.set(i64::from(leading));
    }

    /// The metrics in Prometheus' text format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        let reg = self
            .registry
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &reg);
        out
    }
}

fn labels(key: &Key, p: Phase) -> Labels {
    vec![
        ("kind", key.kind.to_owned()),
        ("namespace", key.namespace.clone()),
        ("name", key.name.clone()),
        ("phase", p.as_str().to_owned()),
    ]
}

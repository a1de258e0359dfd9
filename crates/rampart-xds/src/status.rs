//! What each connected node has been sent and what it did with it, per type (the data for
//! `rampart xds status`, as `istioctl proxy-status` shows it), and the control plane's
//! Prometheus metrics: streams open and refused, responses pushed and their latency, NACKs
//! received.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

type Labels = Vec<(&'static str, String)>;

/// What a client answered, or that a version is on its way.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Sent,
    Acked,
    Nacked(String),
}

/// One node's state for one type.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TypeStatus {
    pub sent: String,
    pub acked: String,
    /// The version rejected last, and why (cleared by the next ACK).
    pub nacked: Option<(String, String)>,
}

/// Every node's state and the counters, shared by all streams.
#[derive(Clone)]
pub struct Nodes {
    state: Arc<Mutex<BTreeMap<String, BTreeMap<String, TypeStatus>>>>,
    registry: Arc<Mutex<Registry>>,
    streams: Family<Labels, Gauge>,
    pushes: Family<Labels, Counter>,
    nacks: Family<Labels, Counter>,
    refused: Counter,
    latency: Family<Labels, Histogram>,
    /// Open streams per node: a node's state is dropped with its last stream, so the table
    /// holds connected nodes only (a storm of made-up node ids leaves nothing behind).
    streams_of: Arc<Mutex<BTreeMap<String, usize>>>,
}

impl std::fmt::Debug for Nodes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Nodes").finish_non_exhaustive()
    }
}

impl Default for Nodes {
    fn default() -> Self {
        let mut r = Registry::with_prefix("rampart_xds");
        let streams = Family::<Labels, Gauge>::default();
        r.register(
            "streams_active",
            "Open ADS streams by flavour (sotw, delta)",
            streams.clone(),
        );
        let pushes = Family::<Labels, Counter>::default();
        r.register("pushes", "Responses sent, by resource type", pushes.clone());
        let nacks = Family::<Labels, Counter>::default();
        r.register(
            "nacks",
            "Responses a client rejected, by resource type",
            nacks.clone(),
        );
        let refused = Counter::default();
        r.register(
            "streams_refused",
            "New streams turned away (RESOURCE_EXHAUSTED) because they came faster than the admission rate",
            refused.clone(),
        );
        let latency = Family::<Labels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.0005, 2.0, 16))
        });
        r.register(
            "push_latency_seconds",
            "From a snapshot's publication to a response of it sent, by resource type",
            latency.clone(),
        );
        Self {
            state: Arc::default(),
            registry: Arc::new(Mutex::new(r)),
            streams,
            pushes,
            nacks,
            refused,
            latency,
            streams_of: Arc::default(),
        }
    }
}

/// Counts an open stream until dropped.
pub(crate) struct StreamGuard(Gauge);

impl Drop for StreamGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// `type.googleapis.com/envoy.config.cluster.v3.Cluster` → `Cluster`.
pub fn short_type(type_url: &str) -> &str {
    type_url.rsplit('.').next().unwrap_or(type_url)
}

impl Nodes {
    pub(crate) fn stream_opened(&self, flavour: &'static str) -> StreamGuard {
        let g = self
            .streams
            .get_or_create(&vec![("flavour", flavour.to_owned())])
            .clone();
        g.inc();
        StreamGuard(g)
    }

    pub(crate) fn refused(&self) {
        self.refused.inc();
    }

    pub(crate) fn pushed_after(&self, type_url: &str, since: std::time::Instant) {
        self.latency
            .get_or_create(&vec![("type", short_type(type_url).to_owned())])
            .observe(since.elapsed().as_secs_f64());
    }

    /// A stream learned its node id.
    pub(crate) fn node_connected(&self, node: &str) {
        *self.lock_streams().entry(node.to_owned()).or_default() += 1;
    }

    /// A stream of `node` ended; the node's state goes with its last stream.
    pub(crate) fn node_disconnected(&self, node: &str) {
        let mut streams = self.lock_streams();
        let Some(n) = streams.get_mut(node) else {
            return;
        };
        *n -= 1;
        if *n == 0 {
            streams.remove(node);
            self.state
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .remove(node);
        }
    }

    fn lock_streams(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, usize>> {
        self.streams_of
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
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

    pub(crate) fn record(&self, node: &str, type_url: &str, version: &str, outcome: Outcome) {
        let labels = vec![("type", short_type(type_url).to_owned())];
        match &outcome {
            Outcome::Sent => self.pushes.get_or_create(&labels).inc(),
            Outcome::Nacked(_) => self.nacks.get_or_create(&labels).inc(),
            Outcome::Acked => 0,
        };
        let mut all = self
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let st = all
            .entry(node.to_owned())
            .or_default()
            .entry(type_url.to_owned())
            .or_default();
        match outcome {
            Outcome::Sent => st.sent = version.to_owned(),
            Outcome::Acked => {
                st.acked = version.to_owned();
                st.nacked = None;
            }
            Outcome::Nacked(why) => st.nacked = Some((version.to_owned(), why)),
        }
    }

    /// A copy of every node's state: node → type URL → status.
    pub fn snapshot(&self) -> BTreeMap<String, BTreeMap<String, TypeStatus>> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }
}

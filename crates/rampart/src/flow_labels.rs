//! The proxy's names on the kernel's flows: the gateway reports each downstream
//! connection's route, cluster and tenant ([`rampart_proxy::conn_labels`]) into the flow
//! tracer's label registry, keyed as the tracer sees the proxy's own socket; closed flows
//! that carry them are counted by route, cluster and tenant. The same labels go to the maps
//! pinned in bpffs ([`PinnedLabels`]) when they can be opened, so that `rampart flows top
//! --by route` and flow metrics in other processes carry them too.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use rampart_flows::{FlowKey, FlowLabels, LabelRegistry, PinnedLabels};
use rampart_proxy::conn_labels::{ConnectionLabels, Labels};

/// Reports the gateway's connection labels into a tracer's registry (in-process) and the
/// pinned maps (other processes).
pub(crate) struct LabelSink {
    registry: Option<LabelRegistry>,
    pinned: Option<PinnedLabels>,
    /// This process's network namespace (the proxy's sockets live in it).
    netns: u64,
    /// Failed reports to the pinned maps (logged once).
    pinned_errors: AtomicU64,
    /// The pinned maps' directory when this process made it: unpinned when the sink goes
    /// (the gateway stops), so the maps do not outlive everyone using them.
    created_dir: Option<std::path::PathBuf>,
}

impl Drop for LabelSink {
    fn drop(&mut self) {
        if let Some(dir) = &self.created_dir {
            // Processes that opened the maps keep them until they close them.
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

impl LabelSink {
    pub(crate) fn new(
        registry: Option<LabelRegistry>,
        pinned: Option<PinnedLabels>,
        created_dir: Option<std::path::PathBuf>,
    ) -> std::io::Result<Self> {
        Ok(Self {
            registry,
            pinned,
            netns: rampart_flows::current_netns()?,
            pinned_errors: AtomicU64::new(0),
            created_dir,
        })
    }
}

impl ConnectionLabels for LabelSink {
    fn label(&self, local: SocketAddr, peer: SocketAddr, l: &Labels) {
        let key = FlowKey::tcp(local, peer, self.netns);
        let labels = FlowLabels {
            route: l.route.to_string(),
            cluster: l.cluster.as_deref().unwrap_or_default().to_owned(),
            tenant: l.tenant.as_deref().unwrap_or_default().to_owned(),
        };
        if let Some(pinned) = &self.pinned
            && let Err(e) = pinned.report(&key, &labels)
            && self.pinned_errors.fetch_add(1, Ordering::Relaxed) == 0
        {
            tracing::warn!(error = %e, "flows: cannot share connection labels (further failures not logged)");
        }
        if let Some(registry) = &self.registry {
            registry.report(key, labels);
        }
    }
}

/// A sink that only shares labels through the maps pinned in `dir` (a proxy without a tracer
/// of its own), or `None` when `dir` is "off" or the maps cannot be opened (not root, no
/// bpffs): the proxy runs the same, its flows unnamed.
pub(crate) fn shared_sink(dir: &str) -> Option<std::sync::Arc<dyn ConnectionLabels>> {
    if dir == "off" {
        return None;
    }
    let path = std::path::Path::new(dir);
    let created = (!path.exists()).then(|| path.to_owned());
    let pinned = PinnedLabels::open_or_create(path)
        .inspect_err(|e| tracing::info!("flows: connection labels not shared: {e}"))
        .ok()?;
    let sink = LabelSink::new(None, Some(pinned), created)
        .inspect_err(|e| tracing::info!("flows: connection labels not shared: {e}"))
        .ok()?;
    tracing::info!(dir, "flows: connection labels shared in bpffs");
    Some(std::sync::Arc::new(sink))
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ByName {
    route: String,
    cluster: String,
    tenant: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BytesByName {
    direction: String,
    route: String,
    cluster: String,
    tenant: String,
}

/// Distinct (route, cluster, tenant) series kept before new ones are folded into
/// `other`: a tenant may come from a request header.
const MAX_NAMED: usize = 1_000;

/// Closed flows and their bytes by the names the proxy gave them.
pub(crate) struct NamedFlowMetrics {
    closed: Family<ByName, Counter>,
    bytes: Family<BytesByName, Counter>,
    seen: HashSet<(String, String, String)>,
}

impl NamedFlowMetrics {
    pub(crate) fn register(registry: &mut Registry) -> Self {
        let closed = Family::<ByName, Counter>::default();
        registry.register(
            "named_closed",
            "TCP flows closed that the gateway labelled, by route, cluster and tenant",
            closed.clone(),
        );
        let bytes = Family::<BytesByName, Counter>::default();
        registry.register(
            "named_bytes",
            "Payload bytes of closed flows the gateway labelled, by direction, route, cluster and tenant",
            bytes.clone(),
        );
        Self {
            closed,
            bytes,
            seen: HashSet::new(),
        }
    }

    /// Counts a closed flow with the proxy's labels and its byte counts.
    pub(crate) fn closed(&mut self, l: &FlowLabels, sent: u64, received: u64) {
        let key = (l.route.clone(), l.cluster.clone(), l.tenant.clone());
        let (route, cluster, tenant) = if self.seen.contains(&key) || self.seen.len() < MAX_NAMED {
            self.seen.insert(key.clone());
            key
        } else {
            ("other".into(), "other".into(), "other".into())
        };
        self.closed
            .get_or_create(&ByName {
                route: route.clone(),
                cluster: cluster.clone(),
                tenant: tenant.clone(),
            })
            .inc();
        for (direction, n) in [("sent", sent), ("received", received)] {
            self.bytes
                .get_or_create(&BytesByName {
                    direction: direction.into(),
                    route: route.clone(),
                    cluster: cluster.clone(),
                    tenant: tenant.clone(),
                })
                .inc_by(n);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn named_series_are_bounded() {
        let mut r = Registry::default();
        let mut m = NamedFlowMetrics::register(&mut r);
        let label = |i: usize| FlowLabels {
            route: format!("r{i}"),
            cluster: "c".into(),
            tenant: format!("t{i}"),
        };
        for i in 0..MAX_NAMED + 5 {
            m.closed(&label(i), 10, 20);
        }
        m.closed(&label(0), 1, 2);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &r).unwrap();
        assert!(
            text.contains(r#"named_closed_total{route="r0",cluster="c",tenant="t0"} 2"#),
            "{text}"
        );
        assert!(
            text.contains(r#"named_closed_total{route="other",cluster="other",tenant="other"} 5"#)
        );
        assert!(text.contains(
            r#"named_bytes_total{direction="sent",route="r0",cluster="c",tenant="t0"} 11"#
        ));
    }
}

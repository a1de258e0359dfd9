//! Per-connection labels reported by the proxy, attached to events and snapshots.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use crate::FlowKey;

/// What the proxy knows about a connection that the kernel does not.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct FlowLabels {
    /// The route that matched.
    pub route: String,
    /// The upstream cluster.
    pub cluster: String,
    /// The tenant.
    pub tenant: String,
}

/// A bounded map from [`FlowKey`] to [`FlowLabels`], shared between the proxy (which reports)
/// and a [`FlowTracer`](crate::FlowTracer) (which attaches labels to events and snapshots).
///
/// Rules:
/// - The key is the proxy socket's own view: `src` = `local_addr()`, `dst` = `peer_addr()`,
///   `netns` = [`current_netns`](crate::current_netns) (for a proxy in one namespace, read
///   once).
/// - An entry is forgotten when the tracer delivers that flow's `Close` (the event still
///   carries the labels), or by [`forget`](Self::forget).
/// - At most `capacity` entries: reporting one more evicts the oldest report (a flow whose
///   `Close` was lost must not pin memory forever); [`evicted`](Self::evicted) counts them.
///
/// Cloning is cheap and shares the registry.
#[derive(Debug, Clone)]
pub struct LabelRegistry {
    inner: Arc<Mutex<Inner>>,
}

#[derive(Debug)]
struct Inner {
    capacity: usize,
    entries: HashMap<FlowKey, (u64, FlowLabels)>,
    /// Report sequence number → key, oldest first.
    order: BTreeMap<u64, FlowKey>,
    next_seq: u64,
    evicted: u64,
}

impl LabelRegistry {
    /// An empty registry holding at most `capacity` entries (at least 1).
    pub fn new(capacity: usize) -> Self {
        Self {
            inner: Arc::new(Mutex::new(Inner {
                capacity: capacity.max(1),
                entries: HashMap::new(),
                order: BTreeMap::new(),
                next_seq: 0,
                evicted: 0,
            })),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // The map stays consistent across a panic elsewhere: every update is a few inserts.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Records (or replaces) the labels of a connection.
    pub fn report(&self, key: FlowKey, labels: FlowLabels) {
        let mut g = self.lock();
        let inner = &mut *g;
        let seq = inner.next_seq;
        inner.next_seq += 1;
        if let Some((old_seq, _)) = inner.entries.insert(key, (seq, labels)) {
            inner.order.remove(&old_seq);
        }
        inner.order.insert(seq, key);
        while inner.entries.len() > inner.capacity {
            let Some((_, oldest)) = inner.order.pop_first() else {
                break;
            };
            inner.entries.remove(&oldest);
            inner.evicted += 1;
        }
    }

    /// The labels reported for `key`, if any.
    pub fn get(&self, key: &FlowKey) -> Option<FlowLabels> {
        self.lock().entries.get(key).map(|(_, l)| l.clone())
    }

    /// Removes and returns the labels of `key`.
    pub fn forget(&self, key: &FlowKey) -> Option<FlowLabels> {
        let mut g = self.lock();
        let (seq, labels) = g.entries.remove(key)?;
        g.order.remove(&seq);
        Some(labels)
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.lock().entries.len()
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Entries dropped because the registry was full.
    pub fn evicted(&self) -> u64 {
        self.lock().evicted
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(port: u16) -> FlowKey {
        FlowKey::tcp(
            format!("127.0.0.1:{port}").parse().unwrap(),
            "127.0.0.1:80".parse().unwrap(),
            1,
        )
    }

    fn labels(route: &str) -> FlowLabels {
        FlowLabels {
            route: route.into(),
            cluster: "c".into(),
            tenant: "t".into(),
        }
    }

    #[test]
    fn report_get_forget() {
        let r = LabelRegistry::new(10);
        r.report(key(1), labels("a"));
        assert_eq!(r.get(&key(1)).unwrap().route, "a");
        assert!(r.get(&key(2)).is_none());
        r.report(key(1), labels("b"));
        assert_eq!(r.len(), 1);
        assert_eq!(r.forget(&key(1)).unwrap().route, "b");
        assert!(r.is_empty());
        assert!(r.forget(&key(1)).is_none());
    }

    #[test]
    fn bounded_evicting_the_oldest_report() {
        let r = LabelRegistry::new(3);
        for p in 1..=3 {
            r.report(key(p), labels("x"));
        }
        r.report(key(1), labels("refreshed")); // now 2 is the oldest
        r.report(key(4), labels("x"));
        assert_eq!(r.len(), 3);
        assert_eq!(r.evicted(), 1);
        assert!(r.get(&key(2)).is_none());
        assert_eq!(r.get(&key(1)).unwrap().route, "refreshed");
        assert!(r.get(&key(4)).is_some());
    }

    #[test]
    fn clones_share_state() {
        let r = LabelRegistry::new(4);
        let r2 = r.clone();
        r2.report(key(9), labels("shared"));
        assert_eq!(r.get(&key(9)).unwrap().route, "shared");
    }
}

//! Telling flow tracing what a connection carries. The kernel sees a TCP flow; only the
//! proxy knows the route, cluster and tenant of the requests on it. After a request, those
//! are handed to the [`ConnectionLabels`] sink the binary plugged in ([`crate::Plugins`]),
//! once per connection and change (a keep-alive connection repeating one route costs a
//! comparison, not a call).

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};

/// What the requests on a connection were last about.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Labels {
    pub route: Arc<str>,
    /// The upstream cluster, when the route forwards.
    pub cluster: Option<Arc<str>>,
    /// The tenant a policy decided for (the `authz` filter's).
    pub tenant: Option<Arc<str>>,
}

/// Where a connection's labels go (e.g. the flow tracer's label registry).
pub trait ConnectionLabels: Send + Sync + 'static {
    /// `local` and `peer`: the downstream socket's own addresses (the proxy's view).
    fn label(&self, local: SocketAddr, peer: SocketAddr, labels: &Labels);
}

/// The labels last reported for one connection.
#[derive(Debug, Default)]
pub(crate) struct Reported(Mutex<Option<Labels>>);

impl Reported {
    /// Reports `labels` to `sink` unless they are what was reported last.
    pub(crate) fn report(
        &self,
        sink: &dyn ConnectionLabels,
        (local, peer): (SocketAddr, SocketAddr),
        labels: Labels,
    ) {
        let mut last = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        if last.as_ref() == Some(&labels) {
            return;
        }
        sink.label(local, peer, &labels);
        *last = Some(labels);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct Seen(Mutex<Vec<Labels>>);

    impl ConnectionLabels for Seen {
        fn label(&self, _: SocketAddr, _: SocketAddr, labels: &Labels) {
            self.0.lock().unwrap().push(labels.clone());
        }
    }

    #[test]
    fn a_connection_is_reported_once_per_change() {
        let seen = Seen::default();
        let r = Reported::default();
        let addrs = (
            "127.0.0.1:80".parse().unwrap(),
            "127.0.0.1:5000".parse().unwrap(),
        );
        let a = Labels {
            route: "a".into(),
            cluster: Some("c".into()),
            tenant: None,
        };
        r.report(&seen, addrs, a.clone());
        r.report(&seen, addrs, a.clone());
        let b = Labels {
            tenant: Some("acme".into()),
            ..a.clone()
        };
        r.report(&seen, addrs, b.clone());
        r.report(&seen, addrs, a.clone());
        assert_eq!(*seen.0.lock().unwrap(), [a.clone(), b, a]);
    }
}

//! What each connected node has been sent and what it did with it, per type: the data for
//! `rampart xds status` (as `istioctl proxy-status` shows it).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

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

/// Every node's state, shared by all streams.
#[derive(Debug, Clone, Default)]
pub struct Nodes(Arc<Mutex<BTreeMap<String, BTreeMap<String, TypeStatus>>>>);

impl Nodes {
    pub(crate) fn record(&self, node: &str, type_url: &str, version: &str, outcome: Outcome) {
        let mut all = self
            .0
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
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }
}

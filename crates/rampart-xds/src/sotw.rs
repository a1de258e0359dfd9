//! State of the World over ADS: each response carries every subscribed resource of its type.
//!
//! Per stream and type: the names subscribed (none: all, for listeners and clusters), the
//! version and nonce last sent, and what the client did with it. A response is in flight
//! until the client answers its nonce; nothing more of that type is sent meanwhile (pushes
//! are paced by ACKs). A NACK keeps the client on its last good version and is not answered
//! with the same version again, so a rejected config never loops; the next change is sent.

use std::collections::{BTreeSet, HashMap};

use crate::snapshot::wildcard_type;
use crate::status::Outcome;
use crate::stream::{Common, Gone, Handler};
use envoy_types::pb::envoy::service::discovery::v3::{DiscoveryRequest, DiscoveryResponse};

/// What one stream knows of one type.
#[derive(Default)]
struct TypeState {
    /// `None`: every resource of the type.
    names: Option<BTreeSet<String>>,
    /// The version last sent, and the nonce awaiting the client's answer.
    sent: Option<String>,
    in_flight: Option<String>,
}

pub(crate) struct Stream {
    common: Common<DiscoveryResponse>,
    types: HashMap<String, TypeState>,
}

impl Stream {
    pub(crate) fn new(common: Common<DiscoveryResponse>) -> Self {
        Self {
            common,
            types: HashMap::new(),
        }
    }
}

impl Handler for Stream {
    type Req = DiscoveryRequest;
    type Resp = DiscoveryResponse;

    fn common(&mut self) -> &mut Common<DiscoveryResponse> {
        &mut self.common
    }

    fn types(&self) -> Vec<String> {
        crate::snapshot::push_order(self.types.keys())
    }

    async fn request(&mut self, req: DiscoveryRequest) -> Result<(), Gone> {
        self.common.note_node(req.node.as_ref());
        let type_url = req.type_url.clone();
        let st = self.types.entry(type_url.clone()).or_default();
        if !req.response_nonce.is_empty() {
            if st.in_flight.as_deref() != Some(req.response_nonce.as_str()) {
                // An answer to an older response: the newer one is still to be answered.
                return Ok(());
            }
            st.in_flight = None;
            let version = st.sent.clone().unwrap_or_default();
            let outcome = match &req.error_detail {
                Some(e) => Outcome::Nacked(e.message.clone()),
                None => Outcome::Acked,
            };
            if let Outcome::Nacked(why) = &outcome {
                tracing::warn!(node = %self.common.node, type_url, version, error = %why, "config rejected by the client");
            }
            self.common
                .nodes
                .record(&self.common.node, &type_url, &version, outcome);
        }
        let names: BTreeSet<String> = req.resource_names.iter().cloned().collect();
        let names = if names.is_empty() && wildcard_type(&type_url) {
            None
        } else {
            Some(names)
        };
        let st = self.types.entry(type_url.clone()).or_default();
        let changed_names = st.names != names;
        st.names = names;
        if changed_names {
            // A new subscription is answered whatever was sent before.
            st.sent = None;
        }
        self.push_if_due(&type_url).await
    }

    /// Sends the type's resources when nothing is in flight and the client lacks them.
    async fn push_if_due(&mut self, type_url: &str) -> Result<(), Gone> {
        let snap = self.common.current();
        if snap.version == 0 {
            // Nothing published yet (a control plane still reading its store): saying
            // nothing beats telling a reconnecting client that there is nothing.
            return Ok(());
        }
        let version = snap.type_version(type_url);
        let Some(st) = self.types.get_mut(type_url) else {
            return Ok(());
        };
        if st.in_flight.is_some() || st.sent.as_deref() == Some(version.as_str()) {
            return Ok(());
        }
        let resources = snap
            .of(type_url)
            .into_iter()
            .flat_map(|m| m.values())
            .filter(|r| st.names.as_ref().is_none_or(|n| n.contains(&r.name)))
            .map(|r| r.body.clone())
            .collect();
        let nonce = self.common.next_nonce();
        st.sent = Some(version.clone());
        st.in_flight = Some(nonce.clone());
        self.common
            .nodes
            .record(&self.common.node, type_url, &version, Outcome::Sent);
        self.common.nodes.pushed_after(type_url, snap.made);
        let resp = DiscoveryResponse {
            version_info: version,
            resources,
            type_url: type_url.to_owned(),
            nonce,
            ..Default::default()
        };
        self.common.send(resp).await
    }
}

//! Delta (incremental) xDS over ADS: each response carries only the resources the client
//! lacks or has an old version of, and the names it should remove.
//!
//! Per stream and type: the names subscribed (`*` or, for listeners and clusters, an empty
//! first subscription: all), the version of each resource the client holds (from
//! `initial_resource_versions` on reconnect, then from what was sent), and the nonce awaiting
//! an answer. As with State of the World, one response per type is in flight at a time, and
//! a NACK is not answered with the same versions again.
//!
//! Make before break (Envoy's "eventual consistency considerations"): additions and changes
//! go out in warming order (clusters, endpoints, listeners, routes), and a type's removals
//! wait until every later type the client follows holds the snapshot — so a cluster is
//! removed only once no route the client was sent still names it, and a client that checks
//! its config whole never sees a route pointing at nothing.

use std::collections::{BTreeSet, HashMap};

use crate::snapshot::wildcard_type;
use crate::status::Outcome;
use crate::stream::{Common, Gone, Handler};
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, Resource,
};

#[derive(Default)]
struct TypeState {
    wildcard: bool,
    names: BTreeSet<String>,
    /// Name → version the client holds (or was last sent).
    known: HashMap<String, String>,
    in_flight: Option<String>,
    /// Whether the first response for the type has gone (it is sent even when empty, so a
    /// client's warming can finish).
    answered: bool,
    /// The snapshot version the client has everything due from (nothing changed since in
    /// its subscription): the next push need only look at what changed after it.
    synced: Option<u64>,
}

impl TypeState {
    fn wants(&self, name: &str) -> bool {
        self.wildcard || self.names.contains(name)
    }
}

pub(crate) struct Stream {
    common: Common<DeltaDiscoveryResponse>,
    types: HashMap<String, TypeState>,
}

impl Stream {
    pub(crate) fn new(common: Common<DeltaDiscoveryResponse>) -> Self {
        Self {
            common,
            types: HashMap::new(),
        }
    }
}

impl Handler for Stream {
    type Req = DeltaDiscoveryRequest;
    type Resp = DeltaDiscoveryResponse;

    fn common(&mut self) -> &mut Common<DeltaDiscoveryResponse> {
        &mut self.common
    }

    fn types(&self) -> Vec<String> {
        crate::snapshot::push_order(self.types.keys())
    }

    async fn request(&mut self, req: DeltaDiscoveryRequest) -> Result<(), Gone> {
        self.common.note_node(req.node.as_ref());
        let type_url = req.type_url.clone();
        let first = !self.types.contains_key(&type_url);
        let st = self.types.entry(type_url.clone()).or_default();
        if first {
            st.known = req.initial_resource_versions.clone();
            st.wildcard = req.resource_names_subscribe.is_empty() && wildcard_type(&type_url);
        }
        if !req.resource_names_subscribe.is_empty() || !req.resource_names_unsubscribe.is_empty() {
            st.synced = None;
        }
        for name in &req.resource_names_subscribe {
            if name == "*" {
                st.wildcard = true;
            } else {
                st.names.insert(name.clone());
            }
        }
        for name in &req.resource_names_unsubscribe {
            if name == "*" {
                st.wildcard = false;
            } else {
                st.names.remove(name);
            }
            // Subscribing again later sends it again.
            st.known.remove(name);
        }
        if !req.response_nonce.is_empty() && st.in_flight.as_deref() == Some(&*req.response_nonce) {
            st.in_flight = None;
            let version = self.common.current().version.to_string();
            let outcome = match &req.error_detail {
                Some(e) => {
                    tracing::warn!(node = %self.common.node, type_url, error = %e.message, "config rejected by the client");
                    Outcome::Nacked(e.message.clone())
                }
                None => Outcome::Acked,
            };
            self.common
                .nodes
                .record(&self.common.node, &type_url, &version, outcome);
        }
        // An answer may let another type's deferred removals go (make before break).
        for t in self.types() {
            self.push_if_due(&t).await?;
        }
        Ok(())
    }

    /// Sends what the client lacks of one type, when nothing of it is in flight.
    async fn push_if_due(&mut self, type_url: &str) -> Result<(), Gone> {
        let snap = self.common.current();
        if snap.version == 0 {
            // Nothing published yet (a control plane still reading its store): saying
            // nothing beats removing everything a reconnecting client holds.
            return Ok(());
        }
        let lag = later_types_lag(&self.types, type_url, snap.version);
        let Some(st) = self.types.get_mut(type_url) else {
            return Ok(());
        };
        // In flight, or already up to date with this very snapshot (an ACK): nothing due.
        if st.in_flight.is_some() || st.synced == Some(snap.version) {
            return Ok(());
        }
        let current = snap.of(type_url);
        // Up to date with the snapshot before this one: only its changes can be due.
        let (resources, mut removed) = match st.synced.and_then(|v| snap.changed_since(v, type_url))
        {
            Some(names) => due(st, current, names.iter()),
            None => {
                let all = current.into_iter().flat_map(|m| m.keys());
                let known: Vec<String> = st.known.keys().cloned().collect();
                due(st, current, all.chain(known.iter()))
            }
        };
        st.synced = Some(snap.version);
        if !removed.is_empty() && lag {
            // Kept in `known`, so a full comparison finds them again once the later types
            // hold this snapshot (an answer of theirs brings us back here).
            removed.clear();
            st.synced = None;
        }
        if resources.is_empty() && removed.is_empty() && st.answered {
            return Ok(());
        }
        for r in &resources {
            st.known.insert(r.name.clone(), r.version.clone());
        }
        for n in &removed {
            st.known.remove(n);
        }
        st.answered = true;
        let nonce = self.common.next_nonce();
        st.in_flight = Some(nonce.clone());
        let version = snap.version.to_string();
        self.common
            .nodes
            .record(&self.common.node, type_url, &version, Outcome::Sent);
        self.common.nodes.pushed_after(type_url, snap.made);
        let resp = DeltaDiscoveryResponse {
            system_version_info: version,
            resources,
            type_url: type_url.to_owned(),
            removed_resources: removed,
            nonce,
            ..Default::default()
        };
        self.common.send(resp).await
    }
}

/// Whether a type the client follows that comes after `type_url` in warming order does not
/// hold snapshot `version` yet (not pushed, or not answered). A reconnecting client asks for
/// clusters before listeners, with the names it still holds: its first cluster response
/// must not remove any while it has not asked for listeners yet (its routes may still name
/// them); the next one may, once the listeners and routes have caught up.
fn later_types_lag(types: &HashMap<String, TypeState>, type_url: &str, version: u64) -> bool {
    let first = types.get(type_url).is_some_and(|st| !st.answered);
    let cluster_side =
        type_url == crate::snapshot::CLUSTER || type_url == crate::snapshot::ENDPOINT;
    if first && cluster_side && !types.contains_key(crate::snapshot::LISTENER) {
        return true;
    }
    let order = crate::snapshot::push_order(types.keys());
    order
        .iter()
        .skip_while(|t| *t != type_url)
        .skip(1)
        .filter_map(|t| types.get(t))
        .any(|st| st.synced != Some(version) || st.in_flight.is_some())
}

/// Of `names`, the resources the client wants and lacks (or holds in another version), and
/// those it holds that are gone; each name once.
fn due<'a>(
    st: &TypeState,
    current: Option<&std::collections::BTreeMap<String, crate::snapshot::Resource>>,
    names: impl Iterator<Item = &'a String>,
) -> (Vec<Resource>, Vec<String>) {
    let mut seen = BTreeSet::new();
    let (mut resources, mut removed) = (Vec::new(), Vec::new());
    for name in names {
        if !seen.insert(name) {
            continue;
        }
        match current.and_then(|m| m.get(name)) {
            Some(r) if st.wants(name) && st.known.get(name) != Some(&r.version) => {
                resources.push(Resource {
                    name: r.name.clone(),
                    version: r.version.clone(),
                    resource: Some(r.body.clone()),
                    ..Default::default()
                });
            }
            Some(_) => {}
            None if st.known.contains_key(name) => removed.push(name.clone()),
            None => {}
        }
    }
    (resources, removed)
}

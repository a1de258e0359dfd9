//! One version of everything the control plane serves: resources by type URL, each with a
//! content version, so a client is sent only what changed.

use std::collections::BTreeMap;
use std::hash::{Hash, Hasher};
use std::time::Instant;

use envoy_types::pb::google::protobuf::Any;

pub const CLUSTER: &str = "type.googleapis.com/envoy.config.cluster.v3.Cluster";
pub const ENDPOINT: &str = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment";
pub const LISTENER: &str = "type.googleapis.com/envoy.config.listener.v3.Listener";
pub const ROUTE: &str = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration";

/// Every type served, in Envoy's warming order (clusters before their endpoints, listeners
/// before their routes).
pub const TYPES: [&str; 4] = [CLUSTER, ENDPOINT, LISTENER, ROUTE];

/// `types` in the order to push them: [`TYPES`]' order (a proxy that checks references gets
/// a new cluster before the route that names it), then any others by name.
pub fn push_order<'a>(types: impl IntoIterator<Item = &'a String>) -> Vec<String> {
    let mut v: Vec<String> = types.into_iter().cloned().collect();
    v.sort_by_key(|t| {
        (
            TYPES.iter().position(|x| x == t).unwrap_or(TYPES.len()),
            t.clone(),
        )
    });
    v
}

/// Types a client may ask for with no names (all of them); the others are asked for by name.
pub fn wildcard_type(type_url: &str) -> bool {
    type_url == CLUSTER || type_url == LISTENER
}

/// One resource as served.
#[derive(Debug, Clone, PartialEq)]
pub struct Resource {
    pub name: String,
    /// A hash of the encoded resource: equal content, equal version.
    pub version: String,
    pub body: Any,
}

/// Resources by type URL, then by name.
#[derive(Debug, Clone, PartialEq)]
pub struct Snapshot {
    /// Increases with every snapshot a cache publishes.
    pub version: u64,
    types: BTreeMap<&'static str, BTreeMap<String, Resource>>,
    /// When it was made (push latency counts from here).
    pub made: Instant,
    /// What changed since the snapshot published before it ([`Snapshot::since`]): so a
    /// stream up to date with that one looks at these names only, not at every resource.
    changes: Option<Changes>,
}

/// The names, by type, that differ between two snapshots (changed, added or removed).
#[derive(Debug, Clone, PartialEq)]
struct Changes {
    /// The version of the snapshot compared with.
    from: u64,
    names: BTreeMap<&'static str, Vec<String>>,
}

impl Default for Snapshot {
    fn default() -> Self {
        Self::new(0, [])
    }
}

impl Snapshot {
    /// A snapshot of `resources` (type URL, name, body); versions are computed here.
    pub fn new(
        version: u64,
        resources: impl IntoIterator<Item = (&'static str, String, Any)>,
    ) -> Self {
        Self::with_versions(
            version,
            resources.into_iter().map(|(t, n, b)| (t, n, b, None)),
        )
    }

    /// [`Snapshot::new`], where a resource may bring its own content version (one whose
    /// encoding is not canonical: protobuf maps encode in a hash map's order).
    pub fn with_versions(
        version: u64,
        resources: impl IntoIterator<Item = (&'static str, String, Any, Option<String>)>,
    ) -> Self {
        let mut types: BTreeMap<&'static str, BTreeMap<String, Resource>> =
            TYPES.iter().map(|t| (*t, BTreeMap::new())).collect();
        for (type_url, name, body, given) in resources {
            let version = given.unwrap_or_else(|| content_version(&body));
            types.entry(type_url).or_default().insert(
                name.clone(),
                Resource {
                    name,
                    version,
                    body,
                },
            );
        }
        Self {
            version,
            types,
            made: Instant::now(),
            changes: None,
        }
    }

    /// Records what differs from `prev` (the snapshot published before this one).
    pub fn since(mut self, prev: &Snapshot) -> Self {
        let mut names = BTreeMap::new();
        for t in TYPES {
            let (old, new) = (prev.of(t), self.of(t));
            let mut changed: Vec<String> = new
                .into_iter()
                .flatten()
                .filter(|(n, r)| {
                    old.and_then(|o| o.get(*n)).map(|o| &o.version) != Some(&r.version)
                })
                .map(|(n, _)| n.clone())
                .collect();
            changed.extend(
                old.into_iter()
                    .flat_map(|o| o.keys())
                    .filter(|n| !new.is_some_and(|m| m.contains_key(*n)))
                    .cloned(),
            );
            names.insert(t, changed);
        }
        self.changes = Some(Changes {
            from: prev.version,
            names,
        });
        self
    }

    /// The names of `type_url` that changed since snapshot `version`, when this snapshot
    /// knows (it was published right after that one).
    pub fn changed_since(&self, version: u64, type_url: &str) -> Option<&[String]> {
        let c = self.changes.as_ref().filter(|c| c.from == version)?;
        Some(c.names.get(type_url).map_or(&[][..], Vec::as_slice))
    }

    /// The resources of one type (empty for a type not served).
    pub fn of(&self, type_url: &str) -> Option<&BTreeMap<String, Resource>> {
        self.types.get(type_url)
    }

    /// The version of one type's whole set: changes exactly when one of its resources does
    /// (a State-of-the-World client's `version_info`).
    pub fn type_version(&self, type_url: &str) -> String {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        for r in self.of(type_url).into_iter().flat_map(BTreeMap::values) {
            (&r.name, &r.version).hash(&mut h);
        }
        format!("{:016x}", h.finish())
    }
}

fn content_version(body: &Any) -> String {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    (&body.type_url, &body.value).hash(&mut h);
    format!("{:016x}", h.finish())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn any(v: &[u8]) -> Any {
        Any {
            type_url: CLUSTER.into(),
            value: v.to_vec(),
        }
    }

    #[test]
    fn clusters_are_pushed_before_the_routes_that_name_them() {
        let subscribed: Vec<String> = ["type.rampart.dev/x", ROUTE, LISTENER, ENDPOINT, CLUSTER]
            .iter()
            .map(|s| (*s).to_owned())
            .collect();
        assert_eq!(
            push_order(&subscribed),
            [CLUSTER, ENDPOINT, LISTENER, ROUTE, "type.rampart.dev/x"]
        );
    }

    #[test]
    fn a_snapshot_knows_what_changed_since_the_one_before() {
        let a = Snapshot::new(
            1,
            [
                (CLUSTER, "kept".to_owned(), any(b"1")),
                (CLUSTER, "changed".to_owned(), any(b"1")),
                (CLUSTER, "gone".to_owned(), any(b"1")),
            ],
        );
        let b = Snapshot::new(
            2,
            [
                (CLUSTER, "kept".to_owned(), any(b"1")),
                (CLUSTER, "changed".to_owned(), any(b"2")),
                (CLUSTER, "new".to_owned(), any(b"1")),
            ],
        )
        .since(&a);
        let mut changed = b.changed_since(1, CLUSTER).unwrap().to_vec();
        changed.sort();
        assert_eq!(changed, ["changed", "gone", "new"]);
        assert_eq!(b.changed_since(1, ROUTE), Some(&[][..]));
        assert_eq!(b.changed_since(0, CLUSTER), None, "not the one before");
    }

    #[test]
    fn versions_follow_content_only() {
        let a = Snapshot::new(1, [(CLUSTER, "a".to_owned(), any(b"1"))]);
        let b = Snapshot::new(2, [(CLUSTER, "a".to_owned(), any(b"1"))]);
        let c = Snapshot::new(3, [(CLUSTER, "a".to_owned(), any(b"2"))]);
        assert_eq!(a.type_version(CLUSTER), b.type_version(CLUSTER));
        assert_ne!(a.type_version(CLUSTER), c.type_version(CLUSTER));
        assert_eq!(
            a.type_version(ROUTE),
            c.type_version(ROUTE),
            "untouched type"
        );
        let ra = &a.of(CLUSTER).unwrap()["a"];
        let rc = &c.of(CLUSTER).unwrap()["a"];
        assert_ne!(ra.version, rc.version);
    }
}

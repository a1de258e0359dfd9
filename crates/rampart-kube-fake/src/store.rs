//! The objects, the global `resourceVersion`, the change history that watches replay, and the
//! removal rules shared by every write: finalizers hold an object that is being deleted, and a
//! removed object's dependents (by `metadata.ownerReferences[].uid`) are garbage-collected.
//!
//! Modelled: one counter for every write (as etcd's revision), each change kept with the
//! object's previous state (so that a watch with a selector sees an object leaving it as
//! DELETED, as the watch cache sends), compaction that expires older versions, background
//! cascading deletion (an object with other live owners only loses the dead owner reference),
//! `Orphan` propagation, and a Namespace's deletion deleting what is in it.
//! Simplified: garbage collection is immediate and synchronous; `Foreground` propagation is
//! served as `Background`; a Namespace is removed at once instead of waiting in `Terminating`
//! for its contents' finalizers; objects whose owner never existed are not collected.

use std::collections::BTreeMap;

use serde_json::{Value, json};

use crate::error::ApiError;
use crate::meta::{deleting, finalizers, generation, meta_mut, meta_str, now_rfc3339, owner_uids};
use crate::path::{ObjRef, Res};
use crate::select::Selector;

/// A watch event type, as stored in the history.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum EventType {
    Added,
    Modified,
    Deleted,
}

/// One write, as a watch replays it.
#[derive(Debug, Clone)]
pub(crate) struct Change {
    pub(crate) rv: u64,
    pub(crate) ty: EventType,
    pub(crate) object: Value,
    /// The object before a modification (for selector transitions).
    pub(crate) prev: Option<Value>,
}

#[derive(Debug, Default)]
struct ResState {
    objects: BTreeMap<(String, String), Value>,
    history: Vec<Change>,
    kind: Option<String>,
}

/// The fake's whole state.
#[derive(Debug, Default)]
pub(crate) struct Store {
    rv: u64,
    compacted: u64,
    pub(crate) uids: u64,
    pub(crate) names: u64,
    resources: BTreeMap<Res, ResState>,
}

impl Store {
    /// The current (latest written) resource version.
    pub(crate) fn resource_version(&self) -> u64 {
        self.rv
    }

    /// The kind of a resource's objects, once one has been stored.
    pub(crate) fn kind(&self, res: &Res) -> Option<&str> {
        self.resources.get(res)?.kind.as_deref()
    }

    pub(crate) fn get(&self, r: &ObjRef) -> Option<&Value> {
        self.resources.get(&r.res)?.objects.get(&r.key())
    }

    /// The objects in a namespace (or all), matching a selector, by namespace then name.
    pub(crate) fn list(&self, res: &Res, ns: Option<&str>, sel: &Selector) -> Vec<Value> {
        let Some(state) = self.resources.get(res) else {
            return Vec::new();
        };
        state
            .objects
            .iter()
            .filter(|((n, _), obj)| ns.is_none_or(|ns| ns == n) && sel.matches(obj))
            .map(|(_, obj)| obj.clone())
            .collect()
    }

    /// The changes of a resource after `since`, or 410 if `since` is older than a compaction.
    pub(crate) fn changes_since(&self, res: &Res, since: u64) -> Result<&[Change], ApiError> {
        if since < self.compacted {
            return Err(ApiError::expired(since));
        }
        let Some(state) = self.resources.get(res) else {
            return Ok(&[]);
        };
        let start = state.history.partition_point(|c| c.rv <= since);
        Ok(&state.history[start..])
    }

    /// Drops the history: watches from an older resource version get a 410.
    pub(crate) fn compact(&mut self) {
        for state in self.resources.values_mut() {
            state.history.clear();
        }
        self.compacted = self.rv;
    }

    /// Stores a new or changed object under a new resource version and records the change;
    /// an object being deleted without finalizers left is removed instead.
    pub(crate) fn commit(&mut self, r: &ObjRef, mut obj: Value, prev: Option<Value>) -> Value {
        if deleting(&obj) && finalizers(&obj).is_empty() {
            return self.remove(r, obj);
        }
        self.rv += 1;
        let rv = self.rv;
        meta_mut(&mut obj).insert("resourceVersion".into(), json!(rv.to_string()));
        let ty = if prev.is_some() {
            EventType::Modified
        } else {
            EventType::Added
        };
        let state = self.resources.entry(r.res.clone()).or_default();
        if let Some(kind) = obj.get("kind").and_then(Value::as_str) {
            state.kind = Some(kind.to_owned());
        }
        state.objects.insert(r.key(), obj.clone());
        let object = obj.clone();
        state.history.push(Change {
            rv,
            ty,
            object,
            prev,
        });
        obj
    }

    /// Removes an object (DELETED, at a new resource version) and collects its dependents.
    fn remove(&mut self, r: &ObjRef, mut obj: Value) -> Value {
        self.rv += 1;
        let rv = self.rv;
        meta_mut(&mut obj).insert("resourceVersion".into(), json!(rv.to_string()));
        let state = self.resources.entry(r.res.clone()).or_default();
        state.objects.remove(&r.key());
        let (ty, object) = (EventType::Deleted, obj.clone());
        state.history.push(Change {
            rv,
            ty,
            object,
            prev: None,
        });
        if let Some(uid) = meta_str(&obj, "uid") {
            self.collect_garbage(uid);
        }
        obj
    }

    /// Deletes as the server does: an object with finalizers gets `deletionTimestamp` (once,
    /// bumping `generation`) and stays until they are gone; one without is removed.
    pub(crate) fn delete_object(&mut self, r: &ObjRef, obj: Value) -> Value {
        if finalizers(&obj).is_empty() {
            return self.remove(r, obj);
        }
        if deleting(&obj) {
            return obj;
        }
        let mut marked = obj.clone();
        let generation = generation(&obj);
        let meta = meta_mut(&mut marked);
        meta.insert("deletionTimestamp".into(), json!(now_rfc3339()));
        meta.insert("deletionGracePeriodSeconds".into(), json!(0));
        if generation > 0 {
            meta.insert("generation".into(), json!(generation + 1));
        }
        self.commit(r, marked, Some(obj))
    }

    /// Background cascading deletion of the objects a removed `uid` owned.
    fn collect_garbage(&mut self, uid: &str) {
        for r in self.dependents(uid) {
            let Some(obj) = self.get(&r).cloned() else {
                continue;
            };
            let live: Vec<String> = owner_uids(&obj)
                .into_iter()
                .filter(|owner| *owner != uid && self.uid_exists(owner))
                .map(str::to_owned)
                .collect();
            if live.is_empty() {
                self.delete_object(&r, obj);
            } else {
                self.drop_owner_refs(&r, obj, |owner| live.iter().any(|l| l == owner));
            }
        }
    }

    /// `Orphan` propagation: the dependents of `uid` lose their reference to it.
    pub(crate) fn orphan_dependents(&mut self, uid: &str) {
        for r in self.dependents(uid) {
            if let Some(obj) = self.get(&r).cloned() {
                self.drop_owner_refs(&r, obj, |owner| owner != uid);
            }
        }
    }

    /// Deletes everything in a namespace (the namespace controller's work, done at once).
    pub(crate) fn delete_namespace_contents(&mut self, ns: &str) {
        let refs: Vec<ObjRef> = self
            .resources
            .iter()
            .flat_map(|(res, state)| {
                state
                    .objects
                    .keys()
                    .filter(|(n, _)| n == ns)
                    .map(|(n, name)| ObjRef {
                        res: res.clone(),
                        ns: Some(n.clone()),
                        name: name.clone(),
                    })
            })
            .collect();
        for r in refs {
            if let Some(obj) = self.get(&r).cloned() {
                self.delete_object(&r, obj);
            }
        }
    }

    fn dependents(&self, uid: &str) -> Vec<ObjRef> {
        let mut found = Vec::new();
        for (res, state) in &self.resources {
            for ((ns, name), obj) in &state.objects {
                if owner_uids(obj).contains(&uid) {
                    found.push(ObjRef {
                        res: res.clone(),
                        ns: Some(ns.clone()).filter(|n| !n.is_empty()),
                        name: name.clone(),
                    });
                }
            }
        }
        found
    }

    fn uid_exists(&self, uid: &str) -> bool {
        self.resources
            .values()
            .flat_map(|s| s.objects.values())
            .any(|obj| meta_str(obj, "uid") == Some(uid))
    }

    /// Keeps only the owner references whose uid passes `keep` (a MODIFIED change).
    fn drop_owner_refs(&mut self, r: &ObjRef, obj: Value, keep: impl Fn(&str) -> bool) {
        let mut new = obj.clone();
        let meta = meta_mut(&mut new);
        if let Some(Value::Array(refs)) = meta.get_mut("ownerReferences") {
            refs.retain(|o| o.get("uid").and_then(Value::as_str).is_none_or(&keep));
            if refs.is_empty() {
                meta.remove("ownerReferences");
            }
        }
        if new != obj {
            self.commit(r, new, Some(obj));
        }
    }
}

//! The write verbs' semantics: create, replace, patch (merge, JSON, apply), delete.
//!
//! Modelled after the API server:
//! - the server owns `uid`, `creationTimestamp`, `generation`, `resourceVersion`,
//!   `deletionTimestamp` and `deletionGracePeriodSeconds`; what a client sends there is ignored;
//! - `generation` starts at 1 and bumps when anything outside `metadata` and `status` changes;
//! - every resource behaves as one with a status subresource: a write to the main resource keeps
//!   the stored `status` (and a create drops it), a write to `/status` changes only `status`;
//! - a `metadata.resourceVersion` in a PUT body, a patch or an applied object is a precondition
//!   (409 Conflict when stale); without one an update is unconditional;
//! - a write that changes nothing is a no-op: no new `resourceVersion`, no watch event;
//! - no finalizer can be added to an object that is being deleted (422).
//!
//! Simplified: `metadata.managedFields` is never kept; server-side apply is a deep merge (see
//! [`crate::patch`]); there is no validation against schemas and no defaulting; namespaces need
//! not exist; `dryRun=All` answers without storing, but skips nothing else.

use serde_json::{Map, Value, json};

use crate::error::ApiError;
use crate::meta::{
    deleting, finalizers, generation, meta_mut, meta_str, now_rfc3339, same_spec, set_top,
};
use crate::patch::{json_patch, merge_patch};
use crate::path::{ObjRef, Res};
use crate::select::Selector;
use crate::store::Store;

/// The patch types the fake reads (by `Content-Type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PatchKind {
    /// `application/merge-patch+json` and `application/strategic-merge-patch+json`.
    Merge,
    /// `application/json-patch+json`.
    Json,
    /// `application/apply-patch+yaml` (server-side apply; the body must be JSON).
    Apply,
}

/// `DeleteOptions`, from the body and the query.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct DeleteOptions {
    pub(crate) orphan: bool,
    pub(crate) uid: Option<String>,
    pub(crate) resource_version: Option<String>,
}

/// The server-owned metadata fields, kept from the stored object on every update.
const SERVER_FIELDS: [&str; 6] = [
    "uid",
    "creationTimestamp",
    "generation",
    "resourceVersion",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
];

/// A non-empty `metadata.resourceVersion`.
fn rv_of(obj: &Value) -> Option<String> {
    meta_str(obj, "resourceVersion")
        .filter(|rv| !rv.is_empty())
        .map(str::to_owned)
}

/// The result of a write to the main resource (`status` kept) or to `/status` (only `status`).
fn scoped(old: &Value, written: Value, status: bool) -> Value {
    let status_of = |obj: &Value| obj.get("status").filter(|s| !s.is_null()).cloned();
    if status {
        let mut base = old.clone();
        set_top(&mut base, "status", status_of(&written));
        base
    } else {
        let mut base = written;
        set_top(&mut base, "status", status_of(old));
        base
    }
}

fn check_name(r: &ObjRef, obj: &mut Value) -> Result<(), ApiError> {
    let meta = meta_mut(obj);
    match meta
        .get("name")
        .and_then(Value::as_str)
        .filter(|n| !n.is_empty())
    {
        Some(name) if name != r.name => Err(ApiError::bad_request(format!(
            "the name of the object ({name}) does not match the name on the URL ({})",
            r.name
        ))),
        _ => {
            meta.insert("name".into(), json!(r.name));
            Ok(())
        }
    }
}

fn check_namespace(ns: Option<&str>, obj: &mut Value) -> Result<(), ApiError> {
    let meta = meta_mut(obj);
    let given = meta
        .get("namespace")
        .and_then(Value::as_str)
        .filter(|n| !n.is_empty());
    match (ns, given) {
        (Some(ns), Some(given)) if given != ns => Err(ApiError::bad_request(
            "the namespace of the provided object does not match the namespace sent on the request",
        )),
        (Some(ns), _) => {
            meta.insert("namespace".into(), json!(ns));
            Ok(())
        }
        (None, _) => {
            meta.remove("namespace");
            Ok(())
        }
    }
}

/// Five characters from the alphabet the server's `generateName` suffixes use.
fn name_suffix(n: u64) -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let mut x = n.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    (0..5)
        .map(|_| {
            let c = ALPHABET[(x % 27) as usize];
            x /= 27;
            char::from(c)
        })
        .collect()
}

impl Store {
    /// Checks a body is an object of the path's API version and fills `apiVersion`, `kind`
    /// (from the resource's earlier objects when missing) and an empty `metadata`.
    fn typed_body(&self, res: &Res, body: Value) -> Result<Value, ApiError> {
        let Value::Object(mut map) = body else {
            return Err(ApiError::bad_request("the body must be a JSON object"));
        };
        match map.get("apiVersion") {
            None | Some(Value::Null) => {
                map.insert("apiVersion".into(), json!(res.api_version));
            }
            Some(Value::String(v)) if *v == res.api_version => {}
            Some(other) => {
                return Err(ApiError::bad_request(format!(
                    "the API version in the data ({other}) does not match the expected API version ({})",
                    res.api_version
                )));
            }
        }
        let kind = map
            .get("kind")
            .and_then(Value::as_str)
            .filter(|k| !k.is_empty());
        if kind.is_none() {
            let known = self.kind(res).ok_or_else(|| {
                ApiError::bad_request(format!(
                    "Object 'Kind' is missing in the body for {}",
                    res.qualified()
                ))
            })?;
            map.insert("kind".into(), json!(known));
        }
        match map.get("metadata") {
            None | Some(Value::Null) => {
                map.insert("metadata".into(), Value::Object(Map::new()));
            }
            Some(Value::Object(_)) => {}
            Some(_) => return Err(ApiError::bad_request("metadata must be an object")),
        }
        Ok(Value::Object(map))
    }

    /// `metadata.name`, or one made from `metadata.generateName`.
    fn assign_name(
        &mut self,
        res: &Res,
        ns: Option<&str>,
        obj: &mut Value,
    ) -> Result<String, ApiError> {
        let meta = meta_mut(obj);
        match meta.get("name") {
            Some(Value::String(name)) if !name.is_empty() => return Ok(name.clone()),
            None | Some(Value::Null | Value::String(_)) => {}
            Some(_) => return Err(ApiError::bad_request("metadata.name must be a string")),
        }
        let prefix = meta
            .get("generateName")
            .and_then(Value::as_str)
            .filter(|p| !p.is_empty());
        let Some(prefix) = prefix.map(str::to_owned) else {
            let why = "metadata.name: Required value: name or generateName is required";
            return Err(ApiError::invalid(res, "", why));
        };
        loop {
            self.names += 1;
            let name = format!("{prefix}{}", name_suffix(self.names));
            let r = ObjRef {
                res: res.clone(),
                ns: ns.map(str::to_owned),
                name: name.clone(),
            };
            if self.get(&r).is_none() {
                meta.insert("name".into(), json!(name));
                return Ok(name);
            }
        }
    }

    /// POST: a new object (201), 409 if it exists.
    pub(crate) fn create(
        &mut self,
        res: &Res,
        ns: Option<&str>,
        body: Value,
        dry_run: bool,
    ) -> Result<Value, ApiError> {
        let mut obj = self.typed_body(res, body)?;
        if rv_of(&obj).is_some() {
            return Err(ApiError::internal(
                "resourceVersion should not be set on objects to be created",
            ));
        }
        let name = self.assign_name(res, ns, &mut obj)?;
        check_namespace(ns, &mut obj)?;
        let r = ObjRef {
            res: res.clone(),
            ns: ns.map(str::to_owned),
            name,
        };
        if self.get(&r).is_some() {
            return Err(ApiError::already_exists(res, &r.name));
        }
        self.uids += 1;
        let meta = meta_mut(&mut obj);
        for field in [
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
            "managedFields",
            "selfLink",
        ] {
            meta.remove(field);
        }
        meta.insert(
            "uid".into(),
            json!(format!("00000000-0000-4000-8000-{:012x}", self.uids)),
        );
        meta.insert("creationTimestamp".into(), json!(now_rfc3339()));
        meta.insert("generation".into(), json!(1));
        set_top(&mut obj, "status", None);
        if dry_run {
            return Ok(obj);
        }
        Ok(self.commit(&r, obj, None))
    }

    /// The common end of every update: precondition, identity, finalizer rule, server fields,
    /// generation, then a commit unless nothing changed.
    fn update(
        &mut self,
        r: &ObjRef,
        old: &Value,
        mut new: Value,
        precondition: Option<&str>,
        dry_run: bool,
    ) -> Result<Value, ApiError> {
        if precondition.is_some_and(|p| Some(p) != meta_str(old, "resourceVersion")) {
            return Err(ApiError::stale(&r.res, &r.name));
        }
        check_name(r, &mut new)?;
        check_namespace(r.ns.as_deref(), &mut new)?;
        let old_finalizers = finalizers(old);
        if deleting(old) && finalizers(&new).iter().any(|f| !old_finalizers.contains(f)) {
            let why = "metadata.finalizers: Forbidden: no new finalizers can be added if the object is being deleted";
            return Err(ApiError::invalid(&r.res, &r.name, why));
        }
        for field in ["apiVersion", "kind"] {
            set_top(&mut new, field, old.get(field).cloned());
        }
        let old_meta = old.get("metadata");
        let meta = meta_mut(&mut new);
        meta.remove("managedFields");
        meta.remove("selfLink");
        for field in SERVER_FIELDS {
            match old_meta.and_then(|m| m.get(field)) {
                Some(value) => meta.insert(field.into(), value.clone()),
                None => meta.remove(field),
            };
        }
        if !same_spec(old, &new) {
            meta_mut(&mut new).insert("generation".into(), json!(generation(old) + 1));
        }
        if new == *old || dry_run {
            return Ok(new);
        }
        Ok(self.commit(r, new, Some(old.clone())))
    }

    fn stored(&self, r: &ObjRef) -> Result<Value, ApiError> {
        self.get(r)
            .cloned()
            .ok_or_else(|| ApiError::not_found(&r.res, &r.name))
    }

    /// PUT on the object or its `/status`: 404 if absent.
    pub(crate) fn replace(
        &mut self,
        r: &ObjRef,
        body: Value,
        status: bool,
        dry_run: bool,
    ) -> Result<Value, ApiError> {
        let old = self.stored(r)?;
        let body = self.typed_body(&r.res, body)?;
        let precondition = rv_of(&body);
        let new = scoped(&old, body, status);
        self.update(r, &old, new, precondition.as_deref(), dry_run)
    }

    /// PATCH on the object or its `/status`; an apply creates a missing object (the bool).
    pub(crate) fn patch(
        &mut self,
        r: &ObjRef,
        kind: PatchKind,
        body: &Value,
        status: bool,
        dry_run: bool,
    ) -> Result<(Value, bool), ApiError> {
        let Some(old) = self.get(r).cloned() else {
            if kind == PatchKind::Apply && !status {
                return self.apply_create(r, body, dry_run).map(|obj| (obj, true));
            }
            return Err(ApiError::not_found(&r.res, &r.name));
        };
        let mut patched = old.clone();
        let precondition = match kind {
            PatchKind::Merge => {
                if !body.is_object() {
                    return Err(ApiError::bad_request("a merge patch must be a JSON object"));
                }
                merge_patch(&mut patched, body);
                rv_of(&patched)
            }
            PatchKind::Json => {
                json_patch(&mut patched, body)?;
                rv_of(&patched)
            }
            PatchKind::Apply => {
                let applied = self.applied(r, body)?;
                merge_patch(&mut patched, &applied);
                rv_of(&applied)
            }
        };
        let new = scoped(&old, patched, status);
        self.update(r, &old, new, precondition.as_deref(), dry_run)
            .map(|obj| (obj, false))
    }

    /// An applied configuration: an object with `kind` (which apply requires), of this path.
    fn applied(&self, r: &ObjRef, body: &Value) -> Result<Value, ApiError> {
        if body
            .get("kind")
            .and_then(Value::as_str)
            .is_none_or(str::is_empty)
        {
            return Err(ApiError::bad_request(
                "apply: the object must set apiVersion and kind",
            ));
        }
        let mut applied = self.typed_body(&r.res, body.clone())?;
        check_name(r, &mut applied)?;
        check_namespace(r.ns.as_deref(), &mut applied)?;
        Ok(applied)
    }

    fn apply_create(&mut self, r: &ObjRef, body: &Value, dry_run: bool) -> Result<Value, ApiError> {
        let applied = self.applied(r, body)?;
        if rv_of(&applied).is_some() {
            return Err(ApiError::stale(&r.res, &r.name));
        }
        self.create(&r.res, r.ns.as_deref(), applied, dry_run)
    }

    /// DELETE: 404 if absent, 409 on a failed precondition; finalizers hold the object.
    pub(crate) fn delete(
        &mut self,
        r: &ObjRef,
        opts: &DeleteOptions,
        dry_run: bool,
    ) -> Result<Value, ApiError> {
        let old = self.stored(r)?;
        let preconditions = [
            ("UID", "uid", &opts.uid),
            ("ResourceVersion", "resourceVersion", &opts.resource_version),
        ];
        for (label, field, want) in preconditions {
            let have = meta_str(&old, field).unwrap_or_default();
            if let Some(want) = want.as_deref().filter(|w| *w != have) {
                let why = format!(
                    "Precondition failed: {label} in precondition: {want}, {label} in object meta: {have}"
                );
                return Err(ApiError::conflict(&r.res, &r.name, &why));
            }
        }
        if dry_run {
            return Ok(old);
        }
        if let Some(uid) = meta_str(&old, "uid").filter(|_| opts.orphan) {
            self.orphan_dependents(uid);
        }
        if r.res.api_version == "v1" && r.res.plural == "namespaces" {
            self.delete_namespace_contents(&r.name);
        }
        let current = self.get(r).cloned().unwrap_or(old);
        Ok(self.delete_object(r, current))
    }

    /// DELETE on a collection: deletes each matching object, answers them.
    pub(crate) fn delete_collection(
        &mut self,
        res: &Res,
        ns: Option<&str>,
        sel: &Selector,
        opts: &DeleteOptions,
        dry_run: bool,
    ) -> Result<Vec<Value>, ApiError> {
        let mut deleted = Vec::new();
        for obj in self.list(res, ns, sel) {
            let r = ObjRef {
                res: res.clone(),
                ns: meta_str(&obj, "namespace").map(str::to_owned),
                name: meta_str(&obj, "name").unwrap_or_default().to_owned(),
            };
            match self.delete(&r, opts, dry_run) {
                Ok(obj) => deleted.push(obj),
                Err(e) if e.code() == 404 => {}
                Err(e) => return Err(e),
            }
        }
        Ok(deleted)
    }

    /// The test side's `kubectl apply`: creates, or replaces everything but `metadata` (merged
    /// over the stored one, so finalizers and owner references others added stay) and `status`.
    pub(crate) fn upsert(&mut self, res: &Res, body: Value) -> Result<Value, ApiError> {
        let ns = meta_str(&body, "namespace")
            .filter(|n| !n.is_empty())
            .map(str::to_owned);
        let name = meta_str(&body, "name")
            .filter(|n| !n.is_empty())
            .map(str::to_owned);
        let existing = name.map(|name| ObjRef {
            res: res.clone(),
            ns: ns.clone(),
            name,
        });
        let Some((r, old)) = existing.and_then(|r| Some((r.clone(), self.get(&r)?.clone()))) else {
            let mut body = body;
            meta_mut(&mut body).remove("resourceVersion");
            return self.create(res, ns.as_deref(), body, false);
        };
        let mut new = self.typed_body(res, body)?;
        let mut meta = old.get("metadata").cloned().unwrap_or_else(|| json!({}));
        let given = new.get("metadata").cloned().unwrap_or_else(|| json!({}));
        merge_patch(&mut meta, &given);
        set_top(&mut new, "metadata", Some(meta));
        let new = scoped(&old, new, false);
        self.update(&r, &old, new, None, false)
    }

    /// The test side's status write: replaces `status` (as a PUT on `/status` would).
    pub(crate) fn set_status(&mut self, r: &ObjRef, status: Value) -> Result<Value, ApiError> {
        let old = self.stored(r)?;
        let mut written = Map::new();
        written.insert("status".into(), status);
        let new = scoped(&old, Value::Object(written), true);
        self.update(r, &old, new, None, false)
    }
}

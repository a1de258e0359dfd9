//! Each object's rollout record: its phase, the spec the store carries for it and its last
//! good spec, kept in a ConfigMap in the operator's namespace (`rampart-rollout-KIND-HASH`,
//! annotated with the object it is about, removed when the object's finalizer runs). Gateway
//! API objects have a status defined by the Gateway API, so the record cannot live there; it
//! outlives the operator and moves with leadership.

use std::collections::HashMap;

use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Patch, PatchParams};
use kube::{Api, Client};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::FIELD_MANAGER;
use crate::rollout::{Phase, Rollout};

/// The ConfigMap key holding the record (JSON).
const KEY: &str = "record";

/// What an object's rollout has come to.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Record {
    /// The object's uid: a record of an earlier object of the same name is not this one's.
    pub uid: String,
    pub phase: String,
    pub generation: i64,
    pub applied_at: u64,
    #[serde(default)]
    pub last_good: Option<i64>,
    #[serde(default)]
    pub reason: Option<String>,
    /// When the phase last changed (seconds since the epoch), for conditions.
    #[serde(default)]
    pub since: u64,
    /// The store revision written for this generation (or its revert).
    #[serde(default)]
    pub revision: i64,
    /// The routes' `(requests, 5xx)` when the generation was applied, then again when the
    /// proxies acknowledged it (answers of the old config do not count against it).
    #[serde(default)]
    pub baseline: (u64, u64),
    /// Whether `baseline` was taken at the acknowledgement.
    #[serde(default)]
    pub baseline_acked: bool,
    /// The spec applied for `generation`.
    #[serde(default)]
    pub applied: Option<Value>,
    /// The spec of `last_good`.
    #[serde(default)]
    pub good: Option<Value>,
}

impl Record {
    pub(crate) fn rollout(&self) -> Rollout {
        let phase = match self.phase.as_str() {
            "Provisioning" => Phase::Provisioning,
            "Running" => Phase::Running,
            "RolledBack" => Phase::RolledBack,
            _ => Phase::Failed,
        };
        Rollout {
            phase,
            generation: self.generation,
            applied_at: self.applied_at,
            last_good: self.last_good,
            reason: self.reason.clone(),
        }
    }

    /// Takes the step's outcome; a phase change stamps `since`.
    pub(crate) fn set_rollout(&mut self, r: &Rollout, now: u64) {
        if self.phase != r.phase.as_str() || self.generation != r.generation {
            self.since = now;
        }
        self.phase = r.phase.as_str().to_owned();
        self.generation = r.generation;
        self.applied_at = r.applied_at;
        self.last_good = r.last_good;
        self.reason.clone_from(&r.reason);
    }

    /// The spec the store carries for the object: what was applied while it bakes or runs,
    /// the last good once rolled back, nothing when it failed with nothing to go back to.
    pub(crate) fn effective(&self) -> Option<&Value> {
        match self.rollout().phase {
            Phase::Provisioning | Phase::Running => self.applied.as_ref(),
            Phase::RolledBack => self.good.as_ref(),
            Phase::Failed => None,
        }
    }
}

/// Which object a record is for.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct Key {
    pub kind: &'static str,
    pub namespace: String,
    pub name: String,
}

impl Key {
    /// `KIND/NAMESPACE/NAME`, as the record's annotation says.
    fn id(&self) -> String {
        format!("{}/{}/{}", self.kind, self.namespace, self.name)
    }

    /// `rampart-rollout-KIND-HASH`: names of any length and namespace fit, and records of
    /// different objects never share one.
    fn config_map(&self) -> String {
        let digest = ring::digest::digest(&ring::digest::SHA256, self.id().as_bytes());
        let hash: String = digest.as_ref()[..8]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        format!("rampart-rollout-{}-{hash}", self.kind.to_ascii_lowercase())
    }
}

/// The annotation naming the object a record is about.
const OBJECT: &str = "rampart.dev/object";

/// The records read or written so far (only the leader writes them, so this cache is
/// coherent while it leads; a new leader starts empty). They live in the operator's own
/// namespace, not beside the objects: whoever may edit ConfigMaps in an application's
/// namespace must not be able to write what the store carries for a Gateway they cannot
/// edit.
#[derive(Debug)]
pub(crate) struct Records {
    namespace: String,
    cache: HashMap<Key, Record>,
    /// The object whose applied generation the proxies have not answered yet, and since
    /// when (seconds): one at a time, so that a NACK is pinned on what caused it.
    pub(crate) unanswered: Option<(Key, u64)>,
}

impl Records {
    pub(crate) fn new(namespace: &str) -> Self {
        Self {
            namespace: namespace.to_owned(),
            cache: HashMap::new(),
            unanswered: None,
        }
    }

    fn api(&self, client: &Client) -> Api<ConfigMap> {
        Api::namespaced(client.clone(), &self.namespace)
    }

    /// The record of the object `key` whose uid is `uid`, if it has one.
    pub(crate) async fn get(
        &mut self,
        client: &Client,
        key: &Key,
        uid: &str,
    ) -> Result<Option<Record>, kube::Error> {
        if let Some(r) = self.cache.get(key).filter(|r| r.uid == uid) {
            return Ok(Some(r.clone()));
        }
        let Some(cm) = self.api(client).get_opt(&key.config_map()).await? else {
            return Ok(None);
        };
        let about = cm.metadata.annotations.as_ref().and_then(|a| a.get(OBJECT));
        if about != Some(&key.id()) {
            return Ok(None);
        }
        let record = cm
            .data
            .as_ref()
            .and_then(|d| d.get(KEY))
            .and_then(|text| serde_json::from_str::<Record>(text).ok())
            .filter(|r| r.uid == uid);
        if let Some(r) = &record {
            self.cache.insert(key.clone(), r.clone());
        }
        Ok(record)
    }

    /// [`Records::get`], or a new record (nothing applied yet) for an object seen first.
    pub(crate) async fn get_or_new(
        &mut self,
        client: &Client,
        key: &Key,
        uid: &str,
    ) -> Result<Record, kube::Error> {
        Ok(self.get(client, key, uid).await?.unwrap_or_else(|| Record {
            uid: uid.to_owned(),
            ..Record::default()
        }))
    }

    /// Writes `record` for `key` (server-side apply).
    pub(crate) async fn save(
        &mut self,
        client: &Client,
        key: &Key,
        record: Record,
    ) -> Result<(), kube::Error> {
        let text = serde_json::to_string(&record).unwrap_or_default();
        let cm = json!({
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {
                "name": key.config_map(),
                "namespace": self.namespace,
                "labels": { "app.kubernetes.io/managed-by": FIELD_MANAGER },
                "annotations": { OBJECT: key.id() },
            },
            "data": { KEY: text },
        });
        self.api(client)
            .patch(
                &key.config_map(),
                &PatchParams::apply(FIELD_MANAGER).force(),
                &Patch::Apply(&cm),
            )
            .await?;
        self.cache.insert(key.clone(), record);
        Ok(())
    }

    /// Removes `key`'s record (the object is gone).
    pub(crate) async fn remove(&mut self, client: &Client, key: &Key) -> Result<(), kube::Error> {
        self.cache.remove(key);
        if self.unanswered.as_ref().is_some_and(|(k, _)| k == key) {
            self.unanswered = None;
        }
        match self
            .api(client)
            .delete(&key.config_map(), &kube::api::DeleteParams::default())
            .await
        {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
            Err(e) => Err(e),
        }
    }
}

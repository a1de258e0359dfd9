//! Each object's rollout record: its phase, the spec the store carries for it and its last
//! good spec, kept in a ConfigMap beside the object (`rampart-rollout-KIND-NAME`, owned by
//! it, so Kubernetes deletes the record with the object). Gateway API objects have a status
//! defined by the Gateway API, so the record cannot live there; it outlives the operator and
//! moves with leadership.

use std::collections::HashMap;

use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
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
    /// The routes' `(requests, 5xx)` when the generation was applied.
    #[serde(default)]
    pub baseline: (u64, u64),
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
    fn config_map(&self) -> String {
        format!(
            "rampart-rollout-{}-{}",
            self.kind.to_ascii_lowercase(),
            self.name
        )
    }
}

/// The records read or written so far (only the leader writes them, so this cache is
/// coherent while it leads; a new leader starts empty).
#[derive(Debug, Default)]
pub(crate) struct Records(HashMap<Key, Record>);

impl Records {
    /// The record of the object `key` whose uid is `uid`, if it has one.
    pub(crate) async fn get(
        &mut self,
        client: &Client,
        key: &Key,
        uid: &str,
    ) -> Result<Option<Record>, kube::Error> {
        if let Some(r) = self.0.get(key).filter(|r| r.uid == uid) {
            return Ok(Some(r.clone()));
        }
        let api: Api<ConfigMap> = Api::namespaced(client.clone(), &key.namespace);
        let Some(cm) = api.get_opt(&key.config_map()).await? else {
            return Ok(None);
        };
        let record = cm
            .data
            .as_ref()
            .and_then(|d| d.get(KEY))
            .and_then(|text| serde_json::from_str::<Record>(text).ok())
            .filter(|r| r.uid == uid);
        if let Some(r) = &record {
            self.0.insert(key.clone(), r.clone());
        }
        Ok(record)
    }

    /// Writes `record` for `key` (server-side apply), owned by the object.
    pub(crate) async fn save(
        &mut self,
        client: &Client,
        key: &Key,
        owner: OwnerReference,
        record: Record,
    ) -> Result<(), kube::Error> {
        let api: Api<ConfigMap> = Api::namespaced(client.clone(), &key.namespace);
        let text = serde_json::to_string(&record).unwrap_or_default();
        let cm = json!({
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {
                "name": key.config_map(),
                "namespace": key.namespace,
                "labels": { "app.kubernetes.io/managed-by": FIELD_MANAGER },
                "ownerReferences": [owner],
            },
            "data": { KEY: text },
        });
        api.patch(
            &key.config_map(),
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&cm),
        )
        .await?;
        self.0.insert(key.clone(), record);
        Ok(())
    }

    /// Drops `key`'s record from the cache (the object is gone; Kubernetes removes the
    /// ConfigMap it owns).
    pub(crate) fn forget(&mut self, key: &Key) {
        self.0.remove(key);
    }
}

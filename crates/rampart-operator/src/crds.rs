//! Rampart's custom resources, for what the Gateway API does not say: Rego bundles per
//! tenant, functions, WebAssembly plugins, store clusters. The CRDs are generated from these
//! types (`rampart operator crds`), never written by hand; every kind carries the rollout's
//! status ([`RolloutStatus`]).

use std::collections::BTreeMap;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::{CustomResource, CustomResourceExt};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::rollout::{Phase, Rollout};

/// The API group of Rampart's kinds.
pub const GROUP: &str = "rampart.dev";

/// A tenant's Rego policy bundle: modules by file name, and data, evaluated by the gateway's
/// `authz` filter for the tenant's routes.
#[derive(CustomResource, Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "rampart.dev",
    version = "v1alpha1",
    kind = "RampartPolicy",
    namespaced,
    status = "RolloutStatus",
    shortname = "rpolicy",
    printcolumn = r#"{"name":"Tenant","type":"string","jsonPath":".spec.tenant"}"#,
    printcolumn = r#"{"name":"Phase","type":"string","jsonPath":".status.phase"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct RampartPolicySpec {
    pub tenant: String,
    /// Rego modules by file name (`authz.rego`), as in an OPA bundle.
    pub modules: BTreeMap<String, String>,
    /// The bundle's `data.json`, as text (any JSON document).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<String>,
}

/// Where a WebAssembly component or module comes from: a ConfigMap key, or a URL whose
/// bytes must have the given SHA-256.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct WasmSource {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_map: Option<KeyRef>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    /// The detached Ed25519 signature (`rampart wasm sign`), base64.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature: Option<String>,
}

/// A key of a ConfigMap in the resource's namespace (its `binaryData`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct KeyRef {
    pub name: String,
    pub key: String,
}

/// A `wasi:http/proxy` component served as a function (`rampart fn deploy`).
#[derive(CustomResource, Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "rampart.dev",
    version = "v1alpha1",
    kind = "RampartFunction",
    namespaced,
    status = "RolloutStatus",
    shortname = "rfn",
    printcolumn = r#"{"name":"Route","type":"string","jsonPath":".spec.route"}"#,
    printcolumn = r#"{"name":"Phase","type":"string","jsonPath":".status.phase"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct RampartFunctionSpec {
    pub source: WasmSource,
    /// `HOST/PATH`, `/PATH` or `HOST`: where it answers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub route: Option<String>,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_concurrency: Option<u32>,
    /// Per-invocation memory (`64Mi`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<String>,
    /// Per-invocation deadline (`5s`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<String>,
    /// Clusters it may call.
    #[serde(default)]
    pub clusters: Vec<String>,
    /// Deploy without a signature (development only; gateways log it).
    #[serde(default)]
    pub allow_unsigned: bool,
}

/// A proxy-wasm plugin as a filter on the routes of some HTTPRoutes.
#[derive(CustomResource, Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "rampart.dev",
    version = "v1alpha1",
    kind = "RampartWasmPlugin",
    namespaced,
    status = "RolloutStatus",
    shortname = "rwasm",
    printcolumn = r#"{"name":"Phase","type":"string","jsonPath":".status.phase"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct RampartWasmPluginSpec {
    pub source: WasmSource,
    /// HTTPRoutes (in this namespace) whose routes get the plugin.
    pub target_routes: Vec<String>,
    /// The plugin's configuration, handed to it as text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config: Option<String>,
    /// Let requests through when the plugin fails.
    #[serde(default)]
    pub fail_open: bool,
    /// Run it without a signature (development only; gateways log it).
    #[serde(default)]
    pub allow_unsigned: bool,
}

/// A replicated config store: a StatefulSet of store nodes with peer TLS.
#[derive(CustomResource, Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "rampart.dev",
    version = "v1alpha1",
    kind = "RampartCluster",
    namespaced,
    status = "RolloutStatus",
    shortname = "rcluster",
    printcolumn = r#"{"name":"Replicas","type":"integer","jsonPath":".spec.replicas"}"#,
    printcolumn = r#"{"name":"Phase","type":"string","jsonPath":".status.phase"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct RampartClusterSpec {
    /// Store nodes (an odd number: 3 or 5).
    #[serde(default = "three")]
    pub replicas: u32,
    /// Each node's volume (`10Gi`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage: Option<String>,
    /// The Rampart image to run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// Proxies (a Deployment fed by the store's control plane).
    #[serde(default)]
    pub proxies: u32,
}

fn three() -> u32 {
    3
}

/// Where a resource's rollout is, kept in its status (so it outlives the operator).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RolloutStatus {
    /// Provisioning, Running, Failed or RolledBack.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// When the observed generation was applied (seconds since the Unix epoch).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub applied_at: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_good_generation: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(default)]
    pub conditions: Vec<Condition>,
}

/// A status condition, as Kubernetes writes them (`Accepted`, `Programmed`, `ResolvedRefs`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    #[serde(rename = "type")]
    pub kind: String,
    /// `True`, `False` or `Unknown`.
    pub status: String,
    pub reason: String,
    pub message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// RFC 3339.
    pub last_transition_time: String,
}

impl RolloutStatus {
    /// The rollout kept in this status (a new resource's is [`Rollout::new`]).
    pub fn rollout(&self) -> Rollout {
        let phase = match self.phase.as_deref() {
            Some("Provisioning") => Phase::Provisioning,
            Some("Running") => Phase::Running,
            Some("RolledBack") => Phase::RolledBack,
            _ => Phase::Failed,
        };
        Rollout {
            phase,
            generation: self.observed_generation.unwrap_or(0),
            applied_at: self.applied_at.unwrap_or(0),
            last_good: self.last_good_generation,
            reason: self.reason.clone(),
        }
    }

    /// This status with `r` written into it (conditions are set by the caller).
    pub fn with_rollout(&self, r: &Rollout) -> Self {
        Self {
            phase: Some(r.phase.as_str().to_owned()),
            observed_generation: Some(r.generation),
            applied_at: Some(r.applied_at),
            last_good_generation: r.last_good,
            reason: r.reason.clone(),
            conditions: self.conditions.clone(),
        }
    }
}

/// Every CRD the operator serves, in a stable order.
pub fn all() -> Vec<CustomResourceDefinition> {
    vec![
        RampartPolicy::crd(),
        RampartFunction::crd(),
        RampartWasmPlugin::crd(),
        RampartCluster::crd(),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rollout::{ConfigStatus, Observation, Policy, step};

    #[test]
    fn the_crds_name_the_group_kinds_and_a_status_subresource() {
        let crds = all();
        let names: Vec<String> = crds
            .iter()
            .map(|c| c.metadata.name.clone().unwrap_or_default())
            .collect();
        assert_eq!(
            names,
            [
                "rampartpolicies.rampart.dev",
                "rampartfunctions.rampart.dev",
                "rampartwasmplugins.rampart.dev",
                "rampartclusters.rampart.dev"
            ]
        );
        for c in &crds {
            assert_eq!(c.spec.group, GROUP);
            let v = &c.spec.versions[0];
            assert!(v.subresources.as_ref().is_some_and(|s| s.status.is_some()));
            let schema = serde_json::to_value(&v.schema).unwrap();
            assert_eq!(
                schema["openAPIV3Schema"]["properties"]["status"]["properties"]["phase"]["type"],
                "string"
            );
        }
    }

    #[test]
    fn the_rollout_round_trips_through_the_status() {
        let (r, _) = step(
            &RolloutStatus::default().rollout(),
            &Observation {
                generation: 4,
                config: ConfigStatus::Pending,
                health: None,
                error_rate: None,
                now: 1_000,
            },
            &Policy::default(),
        );
        let status = RolloutStatus::default().with_rollout(&r);
        assert_eq!(status.phase.as_deref(), Some("Provisioning"));
        assert_eq!(status.rollout(), r);
        let text = serde_json::to_string(&status).unwrap();
        assert!(text.contains("\"observedGeneration\":4"), "{text}");
    }
}

//! What installs the operator on a cluster, generated like the CRDs: its namespace and
//! service account, RBAC with the least the operator needs (reading routes and its own
//! kinds, writing their status and finalizers, managing the store's and proxies' workloads,
//! events, a Lease for leader election in its own namespace only), and its Deployment (two
//! replicas, one leader).

use serde_json::{Value, json};

/// The operator's install settings.
#[derive(Debug, Clone)]
pub struct Install {
    pub namespace: String,
    pub image: String,
    pub replicas: u32,
}

impl Default for Install {
    fn default() -> Self {
        Self {
            namespace: "rampart-system".into(),
            image: "rampart:latest".into(),
            replicas: 2,
        }
    }
}

const NAME: &str = "rampart-operator";
const READ: [&str; 3] = ["get", "list", "watch"];
const MANAGE: [&str; 6] = ["get", "list", "watch", "create", "patch", "delete"];
const STATUS: [&str; 2] = ["patch", "update"];

fn rule(group: &str, resources: &[&str], verbs: &[&str]) -> Value {
    json!({ "apiGroups": [group], "resources": resources, "verbs": verbs })
}

/// Every object, in the order to apply them.
pub fn all(i: &Install) -> Vec<Value> {
    let ns = i.namespace.as_str();
    let labels = json!({ "app.kubernetes.io/name": NAME });
    let gateway_api = "gateway.networking.k8s.io";
    let ours = [
        "rampartpolicies",
        "rampartfunctions",
        "rampartwasmplugins",
        "rampartclusters",
    ];
    let status_of =
        |names: &[&str]| -> Vec<String> { names.iter().map(|n| format!("{n}/status")).collect() };
    let finalizers_of = |names: &[&str]| -> Vec<String> {
        names.iter().map(|n| format!("{n}/finalizers")).collect()
    };
    let routes = ["gatewayclasses", "gateways", "httproutes"];
    let rolled_out = ["gateways", "httproutes"];
    let cluster_rules = vec![
        rule(gateway_api, &routes, &READ),
        // Its finalizer on the objects it rolls out (JSON patches of metadata.finalizers),
        // and owner references that block their deletion on the records it keeps.
        rule(gateway_api, &rolled_out, &["patch"]),
        json!({ "apiGroups": [gateway_api], "resources": finalizers_of(&rolled_out), "verbs": ["update"] }),
        json!({ "apiGroups": [gateway_api], "resources": status_of(&routes), "verbs": STATUS }),
        json!({ "apiGroups": ["rampart.dev"], "resources": ours, "verbs": ["get", "list", "watch", "patch", "update"] }),
        json!({ "apiGroups": ["rampart.dev"], "resources": status_of(&ours), "verbs": STATUS }),
        json!({ "apiGroups": ["rampart.dev"], "resources": finalizers_of(&ours), "verbs": ["update"] }),
        // WebAssembly sources in ConfigMaps, and each rollout's record (a ConfigMap beside
        // the object it is about); the workloads of store clusters and proxies.
        rule(
            "",
            &["configmaps"],
            &["get", "list", "watch", "create", "patch"],
        ),
        rule("", &["services"], &MANAGE),
        // A RampartCluster's peer certificates: read by name, never listed.
        rule("", &["secrets"], &["get", "create", "patch"]),
        rule("apps", &["statefulsets", "deployments"], &MANAGE),
        rule("policy", &["poddisruptionbudgets"], &MANAGE),
        rule("events.k8s.io", &["events"], &["create", "patch"]),
        // Which backend pods pass their readiness probes (a rollout's health).
        rule("discovery.k8s.io", &["endpointslices"], &["list"]),
    ];
    vec![
        json!({ "apiVersion": "v1", "kind": "Namespace", "metadata": { "name": ns } }),
        json!({
            "apiVersion": "v1", "kind": "ServiceAccount",
            "metadata": { "name": NAME, "namespace": ns, "labels": labels },
        }),
        json!({
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
            "metadata": { "name": NAME, "labels": labels },
            "rules": cluster_rules,
        }),
        json!({
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
            "metadata": { "name": NAME, "labels": labels },
            "roleRef": { "apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": NAME },
            "subjects": [{ "kind": "ServiceAccount", "name": NAME, "namespace": ns }],
        }),
        // Leader election: Leases in its own namespace only.
        json!({
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
            "metadata": { "name": format!("{NAME}-leader"), "namespace": ns, "labels": labels },
            "rules": [
                rule("coordination.k8s.io", &["leases"], &["get", "create", "update"]),
                // Rollout records, in its own namespace only.
                rule("", &["configmaps"], &["get", "create", "patch", "delete"]),
            ],
        }),
        json!({
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
            "metadata": { "name": format!("{NAME}-leader"), "namespace": ns, "labels": labels },
            "roleRef": { "apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": format!("{NAME}-leader") },
            "subjects": [{ "kind": "ServiceAccount", "name": NAME, "namespace": ns }],
        }),
        deployment(i, &labels),
    ]
}

fn deployment(i: &Install, labels: &Value) -> Value {
    json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": { "name": NAME, "namespace": i.namespace, "labels": labels },
        "spec": {
            "replicas": i.replicas,
            "selector": { "matchLabels": labels },
            "template": {
                "metadata": { "labels": labels },
                "spec": {
                    "serviceAccountName": NAME,
                    "securityContext": { "runAsNonRoot": true, "runAsUser": 65532, "seccompProfile": { "type": "RuntimeDefault" } },
                    "containers": [{
                        "name": "operator",
                        "image": i.image,
                        "args": [
                            "operator", "run", "--metrics", "0.0.0.0:9090",
                            "--store", format!("rampart-store.{}.svc:2379", i.namespace),
                            "--control-plane-admin", format!("rampart-store-control-plane-pods.{}.svc:18001", i.namespace),
                            "--proxy-admin", format!("rampart-store-proxy-pods.{}.svc:15000", i.namespace),
                        ],
                        "ports": [{ "name": "metrics", "containerPort": 9090 }],
                        "env": [
                            { "name": "POD_NAME", "valueFrom": { "fieldRef": { "fieldPath": "metadata.name" } } },
                            { "name": "POD_NAMESPACE", "valueFrom": { "fieldRef": { "fieldPath": "metadata.namespace" } } },
                        ],
                        "resources": {
                            "requests": { "cpu": "50m", "memory": "64Mi" },
                            "limits": { "memory": "256Mi" },
                        },
                        "securityContext": {
                            "allowPrivilegeEscalation": false,
                            "readOnlyRootFilesystem": true,
                            "capabilities": { "drop": ["ALL"] },
                        },
                    }],
                },
            },
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rbac_grants_no_wildcards_and_leases_only_in_its_namespace() {
        let objs = all(&Install::default());
        for o in &objs {
            for r in o["rules"].as_array().into_iter().flatten() {
                for field in ["apiGroups", "resources", "verbs"] {
                    assert!(
                        r[field].as_array().unwrap().iter().all(|v| v != "*"),
                        "a wildcard in {r}"
                    );
                }
            }
        }
        let cluster = objs.iter().find(|o| o["kind"] == "ClusterRole").unwrap();
        let text = cluster.to_string();
        assert!(!text.contains("leases"), "leases are namespaced: {text}");
        assert!(!text.contains("\"escalate\"") && !text.contains("\"bind\""));
        let role = objs.iter().find(|o| o["kind"] == "Role").unwrap();
        assert_eq!(role["metadata"]["namespace"], "rampart-system");
        let d = objs.iter().find(|o| o["kind"] == "Deployment").unwrap();
        assert_eq!(d["spec"]["replicas"], 2);
        assert_eq!(
            d["spec"]["template"]["spec"]["containers"][0]["securityContext"]["allowPrivilegeEscalation"],
            false
        );
    }
}

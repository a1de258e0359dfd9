//! What a RampartCluster runs, as Kubernetes objects (a pure function of the resource and its
//! peer PKI): a StatefulSet of store nodes that find each other through a headless Service
//! and talk over mutual TLS, a client Service, a PodDisruptionBudget that keeps a quorum, the
//! control plane (Deployment and Service) and the proxies it feeds (Deployment, Service,
//! PodDisruptionBudget). Every object is owned by the RampartCluster, so deleting it deletes
//! them.
//!
//! ```text
//!   NAME-0 ─┐  peer mTLS :2380 (NAME-i.NAME-peers.NS.svc)
//!   NAME-1 ─┼─ clients :2379 ◄── NAME (Service) ◄── NAME-control-plane ◄── NAME-proxy (xDS)
//!   NAME-2 ─┘
//! ```

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use serde_json::{Value, json};

use crate::crds::RampartCluster;
use kube::{Resource, ResourceExt};

/// The peer PKI of one cluster: a CA and a certificate per store node (PEM).
#[derive(Debug, Clone)]
pub struct Pki {
    pub ca: String,
    /// `(certificate, key)` per node, in ordinal order.
    pub nodes: Vec<(String, String)>,
}

/// Names of a cluster's objects.
fn names(c: &RampartCluster) -> (String, String) {
    let name = c.name_any();
    let ns = c.namespace().unwrap_or_else(|| "default".into());
    (name, ns)
}

/// Node `i`'s stable DNS name through the headless Service.
fn node_host(name: &str, ns: &str, i: u32) -> String {
    format!("{name}-{i}.{name}-peers.{ns}.svc")
}

/// A new CA and node certificates for `c` (server and client use: peers authenticate each
/// other), valid for the node's DNS names (short, `.svc`, `.svc.cluster.local`) and for
/// loopback, so the same files also serve a node run by hand.
pub fn pki(c: &RampartCluster) -> Result<Pki, rcgen::Error> {
    let (name, ns) = names(c);
    let mut ca = CertificateParams::new(Vec::<String>::new())?;
    ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca.distinguished_name
        .push(DnType::CommonName, format!("{name} peer CA"));
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca_key = KeyPair::generate()?;
    let ca_pem = ca.self_signed(&ca_key)?.pem();
    let issuer = Issuer::new(ca, ca_key);
    let mut nodes = Vec::new();
    for i in 0..c.spec.replicas {
        let host = node_host(&name, &ns, i);
        let sans = vec![
            format!("{name}-{i}"),
            host.clone(),
            format!("{host}.cluster.local"),
            "localhost".into(),
            "127.0.0.1".into(),
        ];
        let mut leaf = CertificateParams::new(sans)?;
        leaf.distinguished_name
            .push(DnType::CommonName, format!("{name}-{i}"));
        leaf.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        leaf.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let key = KeyPair::generate()?;
        let cert = leaf.signed_by(&key, &issuer)?;
        nodes.push((cert.pem(), key.serialize_pem()));
    }
    Ok(Pki { ca: ca_pem, nodes })
}

/// The Secret holding `pki` (`ca.crt`, `NAME-i.crt`, `NAME-i.key`), owned by the cluster.
pub fn peer_secret(c: &RampartCluster, pki: &Pki) -> Value {
    let (name, ns) = names(c);
    let mut data = serde_json::Map::new();
    data.insert("ca.crt".into(), json!(pki.ca));
    for (i, (cert, key)) in pki.nodes.iter().enumerate() {
        data.insert(format!("{name}-{i}.crt"), json!(cert));
        data.insert(format!("{name}-{i}.key"), json!(key));
    }
    json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": meta(c, &format!("{name}-peer-tls"), &ns, "store"),
        "type": "Opaque",
        "stringData": data,
    })
}

/// Every workload object of `c` except its Secret.
pub fn objects(c: &RampartCluster) -> Vec<Value> {
    let (name, _) = names(c);
    let mut out = vec![
        service(
            c,
            &format!("{name}-peers"),
            "store",
            true,
            &[("client", 2379), ("peer", 2380)],
        ),
        service(c, &name, "store", false, &[("client", 2379)]),
        store_set(c),
        budget(c, &name, "store", c.spec.replicas.saturating_sub(1) / 2),
        control_plane(c),
        service(
            c,
            &format!("{name}-control-plane"),
            "control-plane",
            false,
            &[("ads", 18000), ("admin", 18001)],
        ),
        // Every control plane by name, for the operator: each knows only its own proxies.
        pods_service(
            c,
            &format!("{name}-control-plane-pods"),
            "control-plane",
            ("admin", 18001),
        ),
    ];
    if c.spec.proxies > 0 {
        out.push(proxies(c));
        out.push(service(
            c,
            &format!("{name}-proxy"),
            "proxy",
            false,
            &[("http", 8080), ("admin", 15000)],
        ));
        out.push(budget(c, &format!("{name}-proxy"), "proxy", 1));
        // Every proxy by name, for the operator's error rates (each counts its own).
        out.push(pods_service(
            c,
            &format!("{name}-proxy-pods"),
            "proxy",
            ("admin", 15000),
        ));
    }
    out
}

fn labels(c: &RampartCluster, component: &str) -> Value {
    json!({
        "app.kubernetes.io/name": "rampart",
        "app.kubernetes.io/instance": c.name_any(),
        "app.kubernetes.io/component": component,
        "app.kubernetes.io/managed-by": "rampart-operator",
    })
}

fn meta(c: &RampartCluster, name: &str, ns: &str, component: &str) -> Value {
    let owner = c
        .controller_owner_ref(&())
        .map(|o| vec![o])
        .unwrap_or_default();
    json!({ "name": name, "namespace": ns, "labels": labels(c, component), "ownerReferences": owner })
}

fn selector(c: &RampartCluster, component: &str) -> Value {
    json!({ "app.kubernetes.io/instance": c.name_any(), "app.kubernetes.io/component": component })
}

fn service(
    c: &RampartCluster,
    name: &str,
    component: &str,
    headless: bool,
    ports: &[(&str, u16)],
) -> Value {
    let (_, ns) = names(c);
    let ports: Vec<Value> = ports
        .iter()
        .map(|(n, p)| json!({ "name": n, "port": p, "targetPort": p }))
        .collect();
    let mut spec = json!({ "selector": selector(c, component), "ports": ports });
    if headless {
        // Peers must find each other before they are ready (they form the quorum that
        // makes them ready).
        spec["clusterIP"] = json!("None");
        spec["publishNotReadyAddresses"] = json!(true);
    }
    json!({ "apiVersion": "v1", "kind": "Service", "metadata": meta(c, name, &ns, component), "spec": spec })
}

/// A headless Service resolving to every ready pod of `component`.
fn pods_service(c: &RampartCluster, name: &str, component: &str, port: (&str, u16)) -> Value {
    let mut s = service(c, name, component, false, &[port]);
    s["spec"]["clusterIP"] = json!("None");
    s
}

fn budget(c: &RampartCluster, name: &str, component: &str, max_unavailable: u32) -> Value {
    let (_, ns) = names(c);
    json!({
        "apiVersion": "policy/v1", "kind": "PodDisruptionBudget",
        "metadata": meta(c, name, &ns, component),
        "spec": { "maxUnavailable": max_unavailable.max(1), "selector": { "matchLabels": selector(c, component) } },
    })
}

fn image(c: &RampartCluster) -> String {
    c.spec
        .image
        .clone()
        .unwrap_or_else(|| "rampart:latest".into())
}

/// A container's hardening: no privileges, read-only root, nothing from the host.
fn hardened() -> Value {
    json!({
        "allowPrivilegeEscalation": false,
        "readOnlyRootFilesystem": true,
        "capabilities": { "drop": ["ALL"] },
    })
}

fn pod_security() -> Value {
    json!({ "runAsNonRoot": true, "runAsUser": 65532, "fsGroup": 65532, "seccompProfile": { "type": "RuntimeDefault" } })
}

/// The store's StatefulSet: each pod names itself from its ordinal and reaches its peers
/// by their stable DNS names over mutual TLS.
fn store_set(c: &RampartCluster) -> Value {
    let (name, ns) = names(c);
    let peers: Vec<String> = (0..c.spec.replicas)
        .map(|i| format!("{name}-{i}=https://{}:2380", node_host(&name, &ns, i)))
        .collect();
    let me = format!("$(POD_NAME).{name}-peers.{ns}.svc");
    let args = json!([
        "kv",
        "serve",
        "--name",
        "$(POD_NAME)",
        "--data-dir",
        "/data",
        "--listen-client-urls",
        "http://0.0.0.0:2379",
        "--advertise-client-urls",
        format!("http://{me}:2379"),
        "--listen-peer-urls",
        "https://0.0.0.0:2380",
        "--initial-advertise-peer-urls",
        format!("https://{me}:2380"),
        "--initial-cluster",
        peers.join(","),
        "--peer-cert-file",
        "/tls/$(POD_NAME).crt",
        "--peer-key-file",
        "/tls/$(POD_NAME).key",
        "--peer-trusted-ca-file",
        "/tls/ca.crt",
        "--peer-client-cert-auth",
    ]);
    let storage = c.spec.storage.clone().unwrap_or_else(|| "1Gi".into());
    json!({
        "apiVersion": "apps/v1", "kind": "StatefulSet",
        "metadata": meta(c, &name, &ns, "store"),
        "spec": {
            "replicas": c.spec.replicas,
            "serviceName": format!("{name}-peers"),
            "podManagementPolicy": "Parallel",
            "selector": { "matchLabels": selector(c, "store") },
            "template": {
                "metadata": { "labels": labels(c, "store") },
                "spec": {
                    "securityContext": pod_security(),
                    "containers": [{
                        "name": "store", "image": image(c), "args": args,
                        "env": [{ "name": "POD_NAME", "valueFrom": { "fieldRef": { "fieldPath": "metadata.name" } } }],
                        "ports": [{ "name": "client", "containerPort": 2379 }, { "name": "peer", "containerPort": 2380 }],
                        "readinessProbe": { "tcpSocket": { "port": 2379 }, "periodSeconds": 5 },
                        "volumeMounts": [
                            { "name": "data", "mountPath": "/data" },
                            { "name": "tls", "mountPath": "/tls", "readOnly": true },
                        ],
                        "securityContext": hardened(),
                    }],
                    "volumes": [{ "name": "tls", "secret": { "secretName": format!("{name}-peer-tls") } }],
                },
            },
            "volumeClaimTemplates": [{
                "metadata": { "name": "data" },
                "spec": { "accessModes": ["ReadWriteOnce"], "resources": { "requests": { "storage": storage } } },
            }],
        },
    })
}

fn deployment(
    c: &RampartCluster,
    name: &str,
    component: &str,
    replicas: u32,
    args: &Value,
    ports: &Value,
) -> Value {
    let (_, ns) = names(c);
    json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": meta(c, name, &ns, component),
        "spec": {
            "replicas": replicas,
            "selector": { "matchLabels": selector(c, component) },
            "template": {
                "metadata": { "labels": labels(c, component) },
                "spec": {
                    "securityContext": pod_security(),
                    "containers": [{
                        "name": component, "image": image(c), "args": args, "ports": ports,
                        "env": [{ "name": "POD_NAME", "valueFrom": { "fieldRef": { "fieldPath": "metadata.name" } } }],
                        "securityContext": hardened(),
                    }],
                },
            },
        },
    })
}

/// Two control planes following the store (stateless: proxies move to the other).
fn control_plane(c: &RampartCluster) -> Value {
    let (name, ns) = names(c);
    let args = json!([
        "control-plane",
        "--store",
        format!("{name}.{ns}.svc:2379"),
        "--listen",
        "0.0.0.0:18000",
        "--admin",
        "0.0.0.0:18001",
    ]);
    let ports = json!([{ "name": "ads", "containerPort": 18000 }, { "name": "admin", "containerPort": 18001 }]);
    deployment(
        c,
        &format!("{name}-control-plane"),
        "control-plane",
        2,
        &args,
        &ports,
    )
}

/// The proxies, fed over xDS; each reports as its pod's name.
fn proxies(c: &RampartCluster) -> Value {
    let (name, ns) = names(c);
    let args = json!([
        "proxy",
        "--xds",
        format!("{name}-control-plane.{ns}.svc:18000"),
        "--node-id",
        "$(POD_NAME)",
        "--admin",
        "0.0.0.0:15000",
        "--store",
        format!("{name}.{ns}.svc:2379"),
    ]);
    let ports = json!([{ "name": "http", "containerPort": 8080 }, { "name": "admin", "containerPort": 15000 }]);
    deployment(
        c,
        &format!("{name}-proxy"),
        "proxy",
        c.spec.proxies,
        &args,
        &ports,
    )
}

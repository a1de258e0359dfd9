//! `rampart operator crds` and `manifests`: the CRDs generated from the operator's Rust
//! types and the install objects (namespace, RBAC, Deployment) pass kubernetes-validate
//! (PyPI, with Kubernetes 1.33's schemas bundled) in strict mode; the CRDs are structural
//! (every schema node typed, as the API server requires), with a status subresource and the
//! rollout's status fields.

mod support;

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use serde_json::Value;
use support::*;

/// kubernetes-validate from the virtualenv scripts/test.sh makes, or `RAMPART_KUBE_VALIDATE`.
fn kubernetes_validate() -> Option<PathBuf> {
    let v = std::env::var_os("RAMPART_KUBE_VALIDATE").map_or_else(
        || PathBuf::from("/var/cache/rampart/venv/bin/kubernetes-validate"),
        PathBuf::from,
    );
    Command::new(&v)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
        .then_some(v)
}

/// kubernetes-validate in strict mode against Kubernetes 1.33's schemas: every one of the
/// `objects` documents of `text` passes.
fn strictly_valid(test: &str, text: &str, objects: usize) {
    let Some(validate) = kubernetes_validate() else {
        loud_skip(
            test,
            &"no kubernetes-validate (scripts/test.sh installs it in /var/cache/rampart/venv)",
        );
        return;
    };
    let dir = TempDir::new("kubernetes-validate");
    let file = dir.path("objects.yaml");
    std::fs::write(&file, text).unwrap();
    let checked = Command::new(validate)
        .args(["--strict", "-k", "1.33.0"])
        .arg(&file)
        .output()
        .unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&checked.stdout),
        String::from_utf8_lossy(&checked.stderr)
    );
    assert!(checked.status.success(), "kubernetes-validate: {said}");
    assert_eq!(said.matches(" passed ").count(), objects, "{said}");
}

/// Where a schema is not structural: a node with neither a type nor one of the extensions
/// that stand for one.
fn untyped(schema: &Value, at: &str, out: &mut Vec<String>) {
    let Some(m) = schema.as_object() else {
        out.push(format!("{at}: not an object"));
        return;
    };
    let typed = m.contains_key("type")
        || m.get("x-kubernetes-preserve-unknown-fields") == Some(&Value::Bool(true))
        || m.get("x-kubernetes-int-or-string") == Some(&Value::Bool(true));
    if !typed {
        out.push(format!("{at}: no type"));
    }
    for (name, sub) in m
        .get("properties")
        .and_then(Value::as_object)
        .into_iter()
        .flatten()
    {
        untyped(sub, &format!("{at}.{name}"), out);
    }
    if let Some(items) = m.get("items") {
        untyped(items, &format!("{at}[]"), out);
    }
    if let Some(extra) = m.get("additionalProperties").filter(|v| v.is_object()) {
        untyped(extra, &format!("{at}{{}}"), out);
    }
}

/// Multi-document YAML as values.
fn documents(text: &str) -> Vec<Value> {
    text.split("\n---")
        .map(|d| d.trim_start_matches("---").trim())
        .filter(|d| !d.is_empty())
        .map(|d| serde_saphyr::from_str(d).unwrap())
        .collect()
}

#[test]
fn generated_crds_are_valid_and_structural() {
    let text = rampart_ok(&["operator", "crds"]);
    let docs = documents(&text);
    let kinds: Vec<&str> = docs
        .iter()
        .map(|d| d["spec"]["names"]["kind"].as_str().unwrap())
        .collect();
    assert_eq!(
        kinds,
        [
            "RampartPolicy",
            "RampartFunction",
            "RampartWasmPlugin",
            "RampartCluster"
        ]
    );
    for d in &docs {
        assert_eq!(d["apiVersion"], "apiextensions.k8s.io/v1");
        assert_eq!(d["kind"], "CustomResourceDefinition");
        assert_eq!(d["spec"]["group"], "rampart.dev");
        assert_eq!(d["spec"]["scope"], "Namespaced");
        let v = &d["spec"]["versions"][0];
        assert!(v["subresources"]["status"].is_object(), "{d}");
        let schema = &v["schema"]["openAPIV3Schema"];
        let mut bad = Vec::new();
        untyped(schema, "", &mut bad);
        assert!(
            bad.is_empty(),
            "{}: not structural: {bad:?}",
            d["metadata"]["name"]
        );
        let status = &schema["properties"]["status"]["properties"];
        for field in [
            "phase",
            "observedGeneration",
            "lastGoodGeneration",
            "conditions",
        ] {
            assert!(status[field].is_object(), "{field} in {status}");
        }
    }

    strictly_valid("generated_crds_are_valid_and_structural", &text, 4);
}

#[test]
fn install_manifests_are_valid_kubernetes_objects() {
    let text = rampart_ok(&["operator", "manifests", "--namespace", "edge-system"]);
    let kinds: Vec<String> = text
        .split("\n---")
        .map(|d| d.trim_start_matches("---").trim())
        .filter(|d| !d.is_empty())
        .map(|d| {
            let v: Value = serde_saphyr::from_str(d).unwrap();
            v["kind"].as_str().unwrap().to_owned()
        })
        .collect();
    assert_eq!(
        kinds,
        [
            "Namespace",
            "ServiceAccount",
            "ClusterRole",
            "ClusterRoleBinding",
            "Role",
            "RoleBinding",
            "Deployment"
        ]
    );
    assert!(text.contains("namespace: edge-system"), "{text}");
    strictly_valid("install_manifests_are_valid_kubernetes_objects", &text, 7);
}

/// Gateway API objects, translated as the controller does, applied to a real store and
/// served by a control plane and an xDS-fed proxy: requests land where the Gateway API's
/// precedence says (the longer prefix first, by whole segments; other paths to the catch-all).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_api_routes_drive_a_real_store_control_plane_and_proxy() {
    let dir = TempDir::new("operator-gateway-api");
    let (api, web) = (demo_upstream("api").await, demo_upstream("web").await);
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let objects = dir.path("gateway.yaml");
    std::fs::write(
        &objects,
        format!(
            "apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {{ name: edge, namespace: shop }}\n\
             spec:\n  gatewayClassName: rampart\n  listeners: [{{ name: http, port: {port}, protocol: HTTP }}]\n---\n\
             apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{ name: site, namespace: shop }}\n\
             spec:\n  parentRefs: [{{ name: edge }}]\n  rules:\n    - backendRefs: [{{ name: web, port: 80 }}]\n---\n\
             apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{ name: api, namespace: shop }}\n\
             spec:\n  parentRefs: [{{ name: edge }}]\n  rules:\n    - matches: [{{ path: {{ type: PathPrefix, value: /api }} }}]\n      \
             backendRefs: [{{ name: api, port: 8080 }}]\n"
        ),
    )
    .unwrap();
    let desired = rampart_ok(&[
        "operator",
        "translate",
        "-f",
        objects.to_str().unwrap(),
        "--listen-host",
        "127.0.0.1",
        "--backend",
        &format!("shop/api:8080={}", api.addr),
        "--backend",
        &format!("shop/web:80={}", web.addr),
    ]);
    let (_store, eps) = store_with(&dir, &desired).await;
    let (_cp, ads) = spawn_control_plane(&eps).await;
    let mut proxy = spawn_xds_proxy(&ads, "gw");
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let _ = bound(&mut proxy, "listener=k8s-gw_shop_edge_http local=").await;
    let upstream = |path: &'static str| async move {
        send(
            &h1(),
            http::Request::get(format!("http://{addr}{path}"))
                .body(http_body_util::Full::new(bytes::Bytes::new()))
                .unwrap(),
        )
        .await
        .header("x-upstream-name")
        .map(str::to_owned)
    };
    assert_eq!(upstream("/api/orders").await.as_deref(), Some("api"));
    assert_eq!(upstream("/api").await.as_deref(), Some("api"));
    assert_eq!(
        upstream("/apix").await.as_deref(),
        Some("web"),
        "PathPrefix is by segment"
    );
    assert_eq!(upstream("/").await.as_deref(), Some("web"));
}

/// `rampart operator workloads`: what a RampartCluster runs passes kubernetes-validate, is
/// owned by the cluster, and its peer PKI is one the store accepts: three `rampart kv serve`
/// nodes with the generated certificates and mutual TLS between peers form a cluster that
/// takes writes (the flags are the StatefulSet's, on loopback instead of pod names).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_workloads_are_valid_and_their_peer_pki_forms_a_store() {
    let dir = TempDir::new("operator-workloads");
    let file = dir.path("cluster.yaml");
    std::fs::write(
        &file,
        "apiVersion: rampart.dev/v1alpha1\nkind: RampartCluster\n\
         metadata: { name: edge-store, namespace: edge, uid: 0b6e1c52-1111-2222-3333-444455556666 }\n\
         spec: { replicas: 3, proxies: 2, storage: 5Gi, image: rampart:dev }\n",
    )
    .unwrap();
    let text = rampart_ok(&["operator", "workloads", "-f", file.to_str().unwrap()]);
    let docs = documents(&text);
    let kinds: Vec<&str> = docs.iter().map(|d| d["kind"].as_str().unwrap()).collect();
    assert_eq!(
        kinds,
        [
            "Secret",
            "Service",
            "Service",
            "StatefulSet",
            "PodDisruptionBudget",
            "Deployment",
            "Service",
            "Service",
            "Deployment",
            "Service",
            "PodDisruptionBudget",
            "Service"
        ]
    );
    for d in &docs {
        let owner = &d["metadata"]["ownerReferences"][0];
        assert_eq!(owner["kind"], "RampartCluster", "{d}");
        assert_eq!(owner["controller"], true);
    }
    let set = &docs[3];
    assert_eq!(set["spec"]["serviceName"], "edge-store-peers");
    assert_eq!(docs[1]["spec"]["clusterIP"], "None");
    assert_eq!(
        docs[4]["spec"]["maxUnavailable"], 1,
        "a 3-node store keeps a quorum"
    );
    strictly_valid(
        "cluster_workloads_are_valid_and_their_peer_pki_forms_a_store",
        &text,
        12,
    );

    // The generated PKI, used by three local nodes with the StatefulSet's TLS flags.
    let secret = &docs[0]["stringData"];
    let certs = dir.path("tls");
    std::fs::create_dir_all(&certs).unwrap();
    for (k, v) in secret.as_object().unwrap() {
        std::fs::write(certs.join(k), v.as_str().unwrap()).unwrap();
    }
    let ports: Vec<(u16, u16)> = (0..3)
        .map(|_| {
            (
                rampart_test_support::free_port(),
                rampart_test_support::free_port(),
            )
        })
        .collect();
    let initial: Vec<String> = ports
        .iter()
        .enumerate()
        .map(|(i, (_, p))| format!("edge-store-{i}=https://127.0.0.1:{p}"))
        .collect();
    let initial = initial.join(",");
    let path = |f: String| certs.join(f).to_str().unwrap().to_owned();
    let _nodes: Vec<(Proc, String)> = ports
        .iter()
        .enumerate()
        .map(|(i, (c, p))| {
            let name = format!("edge-store-{i}");
            let (cert, key, ca) = (
                path(format!("{name}.crt")),
                path(format!("{name}.key")),
                path("ca.crt".into()),
            );
            let extra = [
                "--name",
                &name,
                "--initial-cluster",
                &initial,
                "--peer-cert-file",
                &cert,
                "--peer-key-file",
                &key,
                "--peer-trusted-ca-file",
                &ca,
                "--peer-client-cert-auth",
                "--heartbeat-interval",
                "50ms",
                "--election-timeout",
                "500ms",
            ];
            let peer_url = format!("https://127.0.0.1:{p}");
            let mut args = extra.to_vec();
            args.extend(["--initial-advertise-peer-urls", &peer_url]);
            spawn_kv_node_on_scheme(&dir.path(&name), *c, *p, "https", &args)
        })
        .collect();
    let eps: Vec<String> = ports
        .iter()
        .map(|(c, _)| format!("127.0.0.1:{c}"))
        .collect();
    let eps = eps.join(",");
    let wrote = rampart_test_support::eventually(Duration::from_secs(20), || async {
        Command::new(bin())
            .args(["kv", "put", "peer-tls", "works", "--endpoints", &eps])
            .output()
            .is_ok_and(|o| o.status.success())
    })
    .await;
    assert!(wrote, "the store never took a write over its peer mTLS");
    let got = rampart_ok(&["kv", "get", "peer-tls", "--endpoints", &eps]);
    assert!(got.contains("works"), "{got}");
}

//! An xDS client Rampart did not write walks Rampart's control plane: Python's gRPC (C core)
//! and protobuf runtime with Envoy's protos compiled by protoc (`scripts/xds_client.py`;
//! scripts/test.sh installs them in a virtualenv). State of the World and Delta: ACKs
//! answered by silence, names asked for and served, a NACK not looped, an unsubscribe, a
//! resume that re-sends only the stale resource.

mod support;

use std::path::PathBuf;
use std::process::Command;

use support::*;

const CONFIG: &str = r#"
listeners:
  - { name: main, address: "127.0.0.1:10000", route_table: main }
  - { name: internal, address: "127.0.0.1:10001", route_table: other }
route_tables:
  - name: main
    virtual_hosts:
      - name: all
        domains: ["*"]
        routes:
          - { match: { path: { prefix: /a } }, forward: { cluster: c1 } }
          - { forward: { cluster: dns } }
  - name: other
    virtual_hosts: [{ name: o, domains: ["*"], routes: [{ forward: { cluster: c2 } }] }]
clusters:
  - { name: c1, endpoints: ["127.0.0.1:9001"] }
  - { name: c2, endpoints: ["127.0.0.1:9002", "127.0.0.1:9003"] }
  - { name: dns, endpoints: ["localhost:9004"] }
"#;

/// The virtualenv's Python (scripts/test.sh), or `RAMPART_PYTHON`; `None` when it lacks
/// grpcio and grpcio-tools.
fn python() -> Option<PathBuf> {
    let py = std::env::var_os("RAMPART_PYTHON").map_or_else(
        || PathBuf::from("/var/cache/rampart/venv/bin/python"),
        PathBuf::from,
    );
    let ok = Command::new(&py)
        .args(["-c", "import grpc, grpc_tools"])
        .status()
        .is_ok_and(|s| s.success());
    ok.then_some(py)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_python_grpc_client_walks_sotw_and_delta() {
    let Some(py) = python() else {
        loud_skip(
            "a_python_grpc_client_walks_sotw_and_delta",
            &"no Python with grpcio and grpcio-tools (scripts/test.sh makes /var/cache/rampart/venv)",
        );
        return;
    };
    let dir = TempDir::new("xds-python");
    let path = dir.path("rampart.yaml");
    std::fs::write(&path, CONFIG).unwrap();
    let mut cp = Proc::spawn(
        "control-plane",
        &[
            "control-plane",
            "--config",
            path.to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
            "--admin",
            "127.0.0.1:0",
        ],
    );
    let ads = bound(&mut cp, "xds listening addr=").await;
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../../scripts/xds_client.py");
    let protos = rampart_test_support::envoy_proto_dir();
    let out = tokio::task::spawn_blocking(move || {
        Command::new(py)
            .arg(script)
            .args(["--server", &ads.to_string(), "--proto-dir"])
            .arg(protos)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "the Python client: {stderr}");
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let sotw = &summary["sotw"];
    let t = |s: &str| format!("type.googleapis.com/envoy.config.{s}");
    assert_eq!(
        sotw[t("cluster.v3.Cluster")],
        serde_json::json!(["c1", "c2", "dns"])
    );
    // A cluster with a DNS name carries its endpoints; the others are EDS.
    assert_eq!(
        sotw[t("endpoint.v3.ClusterLoadAssignment")],
        serde_json::json!(["c1", "c2"])
    );
    assert_eq!(
        sotw[t("listener.v3.Listener")],
        serde_json::json!(["internal", "main"])
    );
    assert_eq!(
        sotw[t("route.v3.RouteConfiguration")],
        serde_json::json!(["main", "other"])
    );
    assert_eq!(summary["delta"]["eds"], serde_json::json!(["c1", "c2"]));
    assert_eq!(summary["delta"]["resumed"], serde_json::json!(["c1"]));
    assert!(cp.exited().is_none(), "{}", cp.stderr());
}

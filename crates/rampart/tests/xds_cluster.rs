//! The control plane as it is deployed, all real processes: a 3-node config store, two
//! control planes side by side on it, two Rampart proxies fed by them over ADS.
//!
//! `rampart apply` of a route reaches both proxies; the control plane they talk to dies and
//! they move to the other; with every control plane gone they keep serving, and come back
//! in sync when one returns; the store's leader dies and the control plane carries on
//! after the election.

mod support;

use std::process::Command;
use std::time::Duration;

use rampart_test_support::{free_port, local};
use support::*;

fn rampart(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(bin()).args(args).output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The desired state: a listener on port 0 (each proxy picks its own), a route table whose
/// `/version` answers `version`, and a catch-all to the upstream.
fn docs(version: &str, upstream: std::net::SocketAddr) -> String {
    format!(
        "kind: Listener\nname: main\naddress: \"127.0.0.1:0\"\nroute_table: main\n---\n\
         kind: RouteTable\nname: main\nvirtual_hosts:\n  - name: all\n    domains: [\"*\"]\n    routes:\n      \
         - {{ match: {{ path: {{ exact: /version }} }}, direct_response: {{ status: 200, body: \"{version}\" }} }}\n      \
         - {{ forward: {{ cluster: up }} }}\n---\n\
         kind: Cluster\nname: up\nendpoints: [\"{upstream}\"]\n"
    )
}

fn control_plane(store: &str, listen: u16) -> Proc {
    let listen = local(listen).to_string();
    Proc::spawn(
        "control-plane",
        &[
            "control-plane",
            "--store",
            store,
            "--listen",
            &listen,
            "--admin",
            "127.0.0.1:0",
        ],
    )
}

async fn proxy(node: &str, xds: &str) -> (Proc, std::net::SocketAddr) {
    let mut p = Proc::spawn(
        "proxy",
        &[
            "proxy",
            "--xds",
            xds,
            "--node-id",
            node,
            "--admin",
            "127.0.0.1:0",
            "--workers",
            "1",
        ],
    );
    let addr = bound(&mut p, "listener=main local=").await;
    (p, addr)
}

/// Whether `addr` answers `/version` with `want` within 15 s.
async fn serves(addr: std::net::SocketAddr, want: &str) -> bool {
    eventually(Duration::from_secs(15), || async move {
        let req = request(http::Method::GET, addr, "/version", &[]);
        try_send(&h1(), req).await.is_ok_and(|r| r.text() == want)
    })
    .await
}

fn apply(dir: &TempDir, store: &str, version: &str, upstream: std::net::SocketAddr) {
    let file = dir.path("desired.yaml");
    std::fs::write(&file, docs(version, upstream)).unwrap();
    let (ok, out, err) = rampart(&["apply", "-f", file.to_str().unwrap(), "--endpoints", store]);
    assert!(ok, "apply {version}: {out}{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_stores_two_control_planes_two_proxies() {
    let dir = TempDir::new("xds-cluster");
    let upstream = demo_upstream("up").await;
    let mut store = StoreCluster::start(&dir);
    let eps = store.endpoints();
    let ready = eventually(Duration::from_secs(20), || {
        let ok = store.leader().is_some() && rampart(&["get", "cluster", "--endpoints", &eps]).0;
        async move { ok }
    })
    .await;
    assert!(ready, "the store never elected a leader");
    apply(&dir, &eps, "v1", upstream.addr);

    let (a, b) = (free_port(), free_port());
    let mut cp_a = control_plane(&eps, a);
    let _ = bound(&mut cp_a, "xds listening addr=").await;
    let mut cp_b = control_plane(&eps, b);
    let _ = bound(&mut cp_b, "xds listening addr=").await;
    let xds = format!("{},{}", local(a), local(b));
    let (mut p1, addr1) = proxy("edge-1", &xds).await;
    let (mut p2, addr2) = proxy("edge-2", &xds).await;
    assert!(serves(addr1, "v1").await, "{}", p1.stderr());
    assert!(serves(addr2, "v1").await, "{}", p2.stderr());
    let r = get(addr1, "/through").await;
    assert_eq!(
        r.header("x-upstream-name"),
        Some("up"),
        "forwarded upstream"
    );

    // A route applied to the store reaches both proxies.
    apply(&dir, &eps, "v2", upstream.addr);
    assert!(serves(addr1, "v2").await, "{}", p1.stderr());
    assert!(serves(addr2, "v2").await, "{}", p2.stderr());

    // The control plane they talk to dies: they move to the other one.
    cp_a.signal("KILL");
    apply(&dir, &eps, "v3", upstream.addr);
    assert!(serves(addr1, "v3").await, "{}", p1.stderr());
    assert!(serves(addr2, "v3").await, "{}", p2.stderr());

    // No control plane at all: the proxies keep serving what they have...
    cp_b.signal("KILL");
    let _ = cp_b.wait_exit(Duration::from_secs(5)).await;
    apply(&dir, &eps, "v4", upstream.addr);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(get(addr1, "/version").await.text(), "v3");
    assert_eq!(get(addr2, "/through").await.status, http::StatusCode::OK);
    // ... and come back in sync when one returns (on the address they know).
    let mut cp_a = control_plane(&eps, a);
    let _ = bound(&mut cp_a, "xds listening addr=").await;
    assert!(serves(addr1, "v4").await, "{}", p1.stderr());
    assert!(serves(addr2, "v4").await, "{}", p2.stderr());

    // The store's leader dies: after the election, the control plane serves the next write.
    let leader = store.leader().expect("a leader");
    store.nodes[leader].0.signal("KILL");
    let (_, gone) = store.nodes.remove(leader);
    let eps = store.endpoints();
    let written = eventually(Duration::from_secs(20), || {
        let file = dir.path("desired.yaml");
        std::fs::write(&file, docs("v5", upstream.addr)).unwrap();
        let ok = rampart(&["apply", "-f", file.to_str().unwrap(), "--endpoints", &eps]).0;
        async move { ok }
    })
    .await;
    assert!(written, "the store took no write after losing {gone}");
    assert!(
        serves(addr1, "v5").await,
        "{}\n{}",
        cp_a.stderr(),
        p1.stderr()
    );
    assert!(serves(addr2, "v5").await, "{}", p2.stderr());
    assert!(p1.exited().is_none() && p2.exited().is_none());
}

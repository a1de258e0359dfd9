//! Desired state in the config store, end to end with real processes: `rampart apply`
//! (checked as a whole config, errors told by resource; dry run), `get`, `delete`; a
//! control plane serving the store over ADS; a proxy fed by it serving a route that
//! `rampart apply` changed.

mod support;

use std::process::Command;
use std::time::Duration;

use support::*;

fn rampart(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(bin()).args(args).output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn docs(body: &str, cluster: &str) -> String {
    format!(
        "kind: Listener\nname: main\naddress: \"127.0.0.1:0\"\nroute_table: main\n---\n\
         kind: RouteTable\nname: main\nvirtual_hosts:\n  - name: all\n    domains: [\"*\"]\n    routes:\n      \
         - {{ match: {{ path: {{ prefix: /hello }} }}, direct_response: {{ status: 200, body: \"{body}\" }} }}\n      \
         - {{ forward: {{ cluster: {cluster} }} }}\n---\n\
         kind: Cluster\nname: c\nendpoints: [\"127.0.0.1:9\"]\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apply_get_delete_and_a_proxy_serving_the_store_through_the_control_plane() {
    let dir = TempDir::new("desired");
    let (mut kv, ep) = spawn_kv_node(&dir.path("data"));
    let ready = eventually(Duration::from_secs(20), || {
        let ok = rampart(&["get", "cluster", "--endpoints", &ep]).0;
        async move { ok }
    })
    .await;
    assert!(ready, "store never ready: {}", kv.stderr());
    assert!(kv.exited().is_none());

    // A route naming a cluster nobody defined: refused, told by resource, nothing written.
    let file = dir.path("app.yaml");
    std::fs::write(&file, docs("one", "missing")).unwrap();
    let f = file.to_str().unwrap();
    let (ok, _, err) = rampart(&["apply", "-f", f, "--endpoints", &ep]);
    assert!(!ok, "accepted");
    assert!(
        err.contains("RouteTable/main: virtual_hosts[0].routes[1].forward.cluster: no cluster named \"missing\""),
        "{err}"
    );
    assert_eq!(rampart(&["get", "routetable", "--endpoints", &ep]).1, "");

    // Dry run: says what would happen, writes nothing.
    std::fs::write(&file, docs("one", "c")).unwrap();
    let (ok, out, err) = rampart(&["apply", "-f", f, "--endpoints", &ep, "--dry-run"]);
    assert!(ok, "{err}");
    assert!(out.contains("Cluster/c created (dry run)"), "{out}");
    assert_eq!(rampart(&["get", "clusters", "--endpoints", &ep]).1, "");

    let (ok, out, err) = rampart(&["apply", "-f", f, "--endpoints", &ep]);
    assert!(ok, "{err}");
    assert!(
        out.contains("Listener/main created") && out.contains("Cluster/c created"),
        "{out}"
    );
    let (ok, out, _) = rampart(&["get", "cluster", "c", "--endpoints", &ep]);
    assert!(
        ok && out.contains("\"kind\": \"Cluster\"") && out.contains("127.0.0.1:9"),
        "{out}"
    );
    let (ok, _, err) = rampart(&["delete", "cluster", "c", "--endpoints", &ep]);
    assert!(
        !ok && err.contains("no cluster named \"c\""),
        "a route still needs it: {err}"
    );

    // The control plane serves the store; a proxy takes it from there.
    let store_arg = ep.clone();
    let mut cp = Proc::spawn(
        "control-plane",
        &[
            "control-plane",
            "--store",
            &store_arg,
            "--listen",
            "127.0.0.1:0",
            "--admin",
            "127.0.0.1:0",
        ],
    );
    let ads = bound(&mut cp, "xds listening addr=").await.to_string();
    let mut proxy = Proc::spawn(
        "proxy",
        &[
            "proxy",
            "--xds",
            &ads,
            "--node-id",
            "edge-1",
            "--admin",
            "127.0.0.1:0",
            "--workers",
            "1",
        ],
    );
    let addr = bound(&mut proxy, "listener=main local=").await;
    let serves = |want: &'static str| async move {
        eventually(Duration::from_secs(10), || async move {
            let req = request(http::Method::GET, addr, "/hello", &[]);
            try_send(&h1(), req).await.is_ok_and(|r| r.text() == want)
        })
        .await
    };
    assert!(serves("one").await, "{}", proxy.stderr());

    // A store write reaches the proxy; first its diff, with nothing written.
    std::fs::write(&file, docs("two", "c")).unwrap();
    let (ok, out, err) = rampart(&["apply", "-f", f, "--endpoints", &ep, "--dry-run", "--diff"]);
    assert!(ok, "{err}");
    let diff: Vec<&str> = out.lines().collect();
    assert!(diff.contains(&"--- a/RouteTable/main"), "{out}");
    assert!(diff.contains(&"+++ b/RouteTable/main"), "{out}");
    assert!(
        diff.iter()
            .any(|l| l.starts_with('-') && l.contains("\"body\": \"one\"")),
        "{out}"
    );
    assert!(
        diff.iter()
            .any(|l| l.starts_with('+') && l.contains("\"body\": \"two\"")),
        "{out}"
    );
    assert!(
        !out.contains("a/Cluster/c"),
        "an unchanged resource has no diff: {out}"
    );
    assert!(serves("one").await, "a dry run changed the store");
    let (ok, out, err) = rampart(&["apply", "-f", f, "--endpoints", &ep]);
    assert!(ok, "{err}");
    assert!(
        out.contains("RouteTable/main configured") && out.contains("Cluster/c unchanged"),
        "{out}"
    );
    assert!(serves("two").await, "{}\n{}", cp.stderr(), proxy.stderr());
}

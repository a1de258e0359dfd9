//! A Rampart proxy fed over xDS by a Rampart control plane, both real processes: the proxy
//! starts with no listeners, serves what the control plane sends, follows a route change,
//! keeps serving when the control plane dies, catches up when it comes back, and NACKs what
//! it cannot run without holding on to it.

mod support;

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use support::*;

/// A listener on port 0 whose one route answers `body` directly, and a cluster.
fn config(body: &str) -> String {
    format!(
        "listeners: [{{ name: main, address: \"127.0.0.1:0\", route_table: main }}]\n\
         route_tables:\n  - name: main\n    virtual_hosts:\n      - name: all\n        domains: [\"*\"]\n        routes:\n          \
         - {{ match: {{ path: {{ prefix: /hello }} }}, direct_response: {{ status: 200, body: \"{body}\" }} }}\n          \
         - {{ forward: {{ cluster: c }} }}\n\
         clusters: [{{ name: c, endpoints: [\"127.0.0.1:9\"] }}]\n"
    )
}

fn control_plane(config: &Path, listen: &str) -> Proc {
    let file = config.to_str().unwrap();
    Proc::spawn(
        "control-plane",
        &[
            "control-plane",
            "--config",
            file,
            "--listen",
            listen,
            "--admin",
            "127.0.0.1:0",
            "--watch-interval",
            "50ms",
        ],
    )
}

async fn serves(addr: SocketAddr, body: &str) -> bool {
    let want = body.to_owned();
    eventually(Duration::from_secs(10), || {
        let want = want.clone();
        async move {
            let req = request(http::Method::GET, addr, "/hello", &[]);
            try_send(&h1(), req).await.is_ok_and(|r| r.text() == want)
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proxy_fed_over_xds_follows_changes_and_survives_the_control_plane() {
    let dir = TempDir::new("xds-proxy");
    let path = dir.path("rampart.yaml");
    write_atomically(&path, &config("one"));
    let mut cp = control_plane(&path, "127.0.0.1:0");
    let ads = bound(&mut cp, "xds listening addr=").await;

    let ads_arg = ads.to_string();
    let args = [
        "proxy",
        "--xds",
        &ads_arg,
        "--node-id",
        "proxy-1",
        "--admin",
        "127.0.0.1:0",
        "--workers",
        "1",
    ];
    let mut proxy = Proc::spawn("proxy", &args);
    let addr = bound(&mut proxy, "listener=main local=").await;
    assert!(serves(addr, "one").await, "{}", proxy.stderr());

    // A route change reaches the proxy.
    write_atomically(&path, &config("two"));
    assert!(serves(addr, "two").await, "{}", proxy.stderr());

    // The control plane dies: the proxy keeps serving its last config.
    drop(cp);
    assert!(serves(addr, "two").await);
    write_atomically(&path, &config("three"));

    // It comes back on the same address with a newer config: the proxy reconnects and
    // catches up.
    let mut cp = control_plane(&path, &ads_arg);
    bound(&mut cp, "xds listening addr=").await;
    assert!(serves(addr, "three").await, "{}", proxy.stderr());
    assert!(
        proxy.stderr().contains("xDS connection lost"),
        "the proxy noticed the control plane going: {}",
        proxy.stderr()
    );

    // A config the proxy cannot run (its listener moves to a port taken here) is NACKed
    // with the reason, visible in `rampart xds status`; the proxy keeps serving.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    write_atomically(
        &path,
        &config("three").replace("127.0.0.1:0", &format!("127.0.0.1:{port}")),
    );
    let admin = bound(&mut cp, "xds admin listening addr=").await;
    let status = || {
        let out = std::process::Command::new(bin())
            .args(["xds", "status", "--admin", &admin.to_string()])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let nacked = eventually(Duration::from_secs(10), || {
        let s = status();
        async move {
            s.lines()
                .any(|l| l.starts_with("proxy-1 ") && l.contains("cannot listen"))
        }
    })
    .await;
    assert!(nacked, "{}", status());
    assert!(
        serves(addr, "three").await,
        "the last good config keeps serving"
    );
    // The rejected listener is not kept: a later route change applies on top of the last
    // good listener instead of failing again on the rejected one.
    write_atomically(
        &path,
        &config("four").replace("127.0.0.1:0", &format!("127.0.0.1:{port}")),
    );
    assert!(serves(addr, "four").await, "{}", proxy.stderr());
    drop(taken);
}

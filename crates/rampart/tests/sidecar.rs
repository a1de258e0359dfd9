//! `rampart sidecar` as a real process: inbound header injection in front of a local app,
//! and transparent outbound interception with iptables REDIRECT + SO_ORIGINAL_DST inside a
//! network namespace made by the test (root only; CI runs as root).

mod support;

use std::process::Command;
use std::time::Duration;

use http::Method;
use support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inbound_injects_sidecar_headers_in_front_of_the_local_app() {
    let app = demo_upstream("app").await;
    let (inbound, outbound, admin) = (local(free_port()), local(free_port()), local(free_port()));
    let app_port = app.addr.port().to_string();
    let (i, o, a) = (inbound.to_string(), outbound.to_string(), admin.to_string());
    let mut proc = Proc::spawn(
        "sidecar",
        &[
            "sidecar",
            "--app-port",
            &app_port,
            "--inbound",
            &i,
            "--outbound",
            &o,
            "--admin",
            &a,
        ],
    );
    assert!(
        await_ok(&mut proc, admin, "/ready").await,
        "sidecar did not start; stderr:\n{}",
        proc.stderr()
    );
    let r = send(
        &h1(),
        request(
            Method::GET,
            inbound,
            "/orders?id=7",
            &[("host", "orders.svc.local")],
        ),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let j: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(j["server"], "app");
    assert_eq!(j["headers"]["x-sidecar-injected"], "true");
    assert_eq!(j["headers"]["x-original-host"], "orders.svc.local");
    assert_eq!(j["headers"]["host"], "orders.svc.local", "Host preserved");
    assert_eq!(j["headers"]["x-forwarded-for"], "127.0.0.1");
    assert_eq!(j["headers"]["x-forwarded-proto"], "http");
    assert_eq!(j["query"], "id=7");

    // The outbound listener reached directly (no REDIRECT) has no original destination.
    let r = send(&h1(), request(Method::GET, outbound, "/", &[])).await;
    assert_eq!(r.status, 503);
    assert!(r.text().contains("not redirected"), "{}", r.text());
}

#[test]
fn iptables_rules_are_printed() {
    let out = Command::new(bin())
        .args([
            "sidecar",
            "iptables",
            "--proxy-uid",
            "1337",
            "--app-ports",
            "8080,9090",
        ])
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    for want in [
        "iptables -t nat -N RAMPART_INBOUND",
        "iptables -t nat -A RAMPART_INBOUND -p tcp --dport 8080 -j REDIRECT --to-ports 15006",
        "iptables -t nat -A RAMPART_INBOUND -p tcp --dport 9090 -j REDIRECT --to-ports 15006",
        "iptables -t nat -A RAMPART_OUTBOUND -m owner --uid-owner 1337 -j RETURN",
        "iptables -t nat -A RAMPART_OUTBOUND -p tcp -j REDIRECT --to-ports 15001",
        "iptables -t nat -A OUTPUT -p tcp -j RAMPART_OUTBOUND",
    ] {
        assert!(text.contains(want), "missing {want:?} in:\n{text}");
    }
}

/// A network namespace deleted on drop (its iptables rules go with it).
struct Netns(String);

impl Netns {
    fn new() -> Self {
        let name = format!("rampart-sidecar-{}", std::process::id());
        let _ = Command::new("ip").args(["netns", "del", &name]).status();
        let ok = Command::new("ip")
            .args(["netns", "add", &name])
            .status()
            .unwrap();
        assert!(ok.success(), "ip netns add failed");
        let ns = Self(name);
        assert!(ns.run(&["ip", "link", "set", "lo", "up"]).status.success());
        ns
    }

    fn run(&self, cmd: &[&str]) -> std::process::Output {
        Command::new("ip")
            .args(["netns", "exec", &self.0])
            .args(cmd)
            .output()
            .unwrap()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

fn have(tool: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .output()
        .is_ok_and(|o| o.status.success())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outbound_interception_recovers_the_original_destination() {
    let root = Command::new("id").arg("-u").output().unwrap().stdout == b"0\n";
    let missing: Vec<_> = ["ip", "iptables", "curl", "runuser"]
        .into_iter()
        .filter(|t| !have(t))
        .collect();
    if !root || !missing.is_empty() {
        rampart_test_support::skip(
            "outbound_interception_recovers_the_original_destination",
            &format!(
                "needs root and {missing:?} (root: {root}); scripts/test.sh installs them and \
                 CI runs as root"
            ),
        );
        return;
    }
    let ns = Netns::new();
    let bin = bin();
    let exec = |args: &[&str]| -> Vec<String> {
        ["netns", "exec", &ns.0, bin]
            .iter()
            .map(|s| (*s).to_owned())
            .chain(args.iter().map(|s| (*s).to_owned()))
            .collect()
    };
    // A "remote" service on 127.0.0.2 inside the namespace, and the sidecar.
    let up_args = exec(&[
        "demo-upstream",
        "--listen",
        "127.0.0.2:9999",
        "--name",
        "remote",
    ]);
    let up_refs: Vec<&str> = up_args.iter().map(String::as_str).collect();
    let _remote = Proc::spawn_program("remote", "ip", &up_refs);
    let sc_args = exec(&[
        "sidecar",
        "--app-port",
        "8080",
        "--inbound",
        "127.0.0.1:15006",
        "--outbound",
        "127.0.0.1:15001",
        "--admin",
        "127.0.0.1:15000",
    ]);
    let sc_refs: Vec<&str> = sc_args.iter().map(String::as_str).collect();
    let mut sidecar = Proc::spawn_program("sidecar in netns", "ip", &sc_refs);
    assert!(
        eventually(Duration::from_secs(10), || async {
            ns.run(&["curl", "-sf", "http://127.0.0.1:15000/ready"])
                .status
                .success()
                && ns
                    .run(&["curl", "-sf", "http://127.0.0.2:9999/"])
                    .status
                    .success()
        })
        .await,
        "processes in the namespace did not start; sidecar stderr:\n{}",
        sidecar.stderr()
    );
    // Redirect everyone's egress but root's (the sidecar runs as root) to the sidecar.
    let apply = ns.run(&[
        bin,
        "sidecar",
        "iptables",
        "--proxy-uid",
        "0",
        "--app-ports",
        "15999",
        "--apply",
    ]);
    assert!(
        apply.status.success(),
        "apply: {}",
        String::from_utf8_lossy(&apply.stderr)
    );

    // An application running as nobody calls the remote service by its real address.
    let out = ns.run(&[
        "runuser",
        "-u",
        "nobody",
        "--",
        "curl",
        "-s",
        "-H",
        "host: remote.example",
        "http://127.0.0.2:9999/via-sidecar",
    ]);
    let body = String::from_utf8_lossy(&out.stdout);
    let j: serde_json::Value = serde_json::from_str(&body).unwrap_or_else(|e| {
        panic!(
            "not JSON ({e}): {body}; sidecar stderr:\n{}",
            sidecar.stderr()
        )
    });
    assert_eq!(j["server"], "remote");
    assert_eq!(j["path"], "/via-sidecar");
    // It went through the sidecar: only the proxy adds these.
    assert!(j["headers"]["x-request-id"].is_string(), "{j}");
    assert_eq!(j["headers"]["x-forwarded-for"], "127.0.0.1");
    assert_eq!(j["headers"]["host"], "remote.example");
    // The sidecar counted it on its passthrough cluster.
    let metrics = ns.run(&["curl", "-s", "http://127.0.0.1:15000/metrics"]);
    let m = String::from_utf8_lossy(&metrics.stdout);
    assert!(
        m.contains("rampart_requests_total{listener=\"outbound\",route=\"sidecar-outbound\",cluster=\"sidecar-passthrough\",class=\"2xx\"} 1"),
        "{m}"
    );

    // Removing the rules restores direct traffic (no proxy headers).
    let remove = ns.run(&[bin, "sidecar", "iptables", "--proxy-uid", "0", "--remove"]);
    assert!(remove.status.success());
    let out = ns.run(&[
        "runuser",
        "-u",
        "nobody",
        "--",
        "curl",
        "-s",
        "http://127.0.0.2:9999/direct",
    ]);
    let j: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        j["headers"]["x-request-id"].is_null(),
        "still intercepted: {j}"
    );
    sidecar.signal("TERM");
    assert!(sidecar.wait_exit(Duration::from_secs(5)).await.success());
}

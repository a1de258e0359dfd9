//! Debian's `etcdctl` (etcd's own client) against `rampart kv serve`: the wire API is etcd's.

mod support;

use std::process::Command;
use std::time::{Duration, Instant};

use support::*;

fn etcdctl(endpoint: &str, args: &[&str], stdin: Option<&str>) -> (bool, String) {
    use std::io::Write;
    let mut cmd = Command::new("etcdctl");
    cmd.env("ETCDCTL_API", "3")
        .arg(format!("--endpoints={endpoint}"))
        .arg("--command-timeout=5s")
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut child = cmd.spawn().unwrap_or_else(|e| {
        panic!("etcdctl is required (Debian package etcd-client; scripts/test.sh installs it): {e}")
    });
    if let Some(input) = stdin {
        child
            .stdin
            .take()
            .unwrap()
            .write_all(input.as_bytes())
            .unwrap();
    }
    drop(child.stdin.take());
    let out = child.wait_with_output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[test]
fn etcdctl_put_get_del_txn_lease_and_watch() {
    let dir = TempDir::new("etcdctl");
    let (mut node, ep) = spawn_kv_node(&dir.path("data"));
    let start = Instant::now();
    while !etcdctl(&ep, &["put", "ready", "1"], None).0 {
        assert!(
            node.exited().is_none(),
            "rampart kv serve exited: {}",
            node.stderr()
        );
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "store never became ready"
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    // A watch from the revision after `ready` (a fresh store is at 1, the put made it 2) sees
    // every write below, however long etcdctl takes to set the watch up.
    let mut watch = Proc::spawn_program(
        "watch",
        "etcdctl",
        &[
            &format!("--endpoints={ep}"),
            "watch",
            "app/",
            "--prefix",
            "--rev=3",
        ],
    );

    let (ok, out) = etcdctl(&ep, &["put", "app/a", "1"], None);
    assert!(ok && out.trim() == "OK", "{out}");
    etcdctl(&ep, &["put", "app/b", "2"], None);
    let (ok, out) = etcdctl(&ep, &["get", "app/", "--prefix"], None);
    assert!(ok);
    assert_eq!(
        out.lines().collect::<Vec<_>>(),
        ["app/a", "1", "app/b", "2"]
    );
    let (_, out) = etcdctl(&ep, &["get", "app/a", "-w", "json"], None);
    assert!(out.contains("\"version\":1"), "{out}");

    let txn = "value(\"app/a\") = \"1\"\n\nput app/a 10\n\nput app/a never\n\n";
    let (ok, out) = etcdctl(&ep, &["txn"], Some(txn));
    assert!(ok && out.starts_with("SUCCESS"), "{out}");
    let (_, out) = etcdctl(&ep, &["txn"], Some(txn));
    assert!(out.starts_with("FAILURE"), "{out}");
    let (_, out) = etcdctl(&ep, &["get", "app/a", "--print-value-only"], None);
    assert_eq!(out.trim(), "never", "the failure branch ran");

    let (ok, out) = etcdctl(&ep, &["del", "app/b"], None);
    assert!(ok && out.trim() == "1", "{out}");

    // Leases: grant, attach, keep alive, time to live, revoke deletes the key.
    let (ok, out) = etcdctl(&ep, &["lease", "grant", "60"], None);
    assert!(ok, "{out}");
    let id = out.split_whitespace().nth(1).unwrap().to_string();
    let (ok, out) = etcdctl(
        &ep,
        &["put", "app/leased", "x", &format!("--lease={id}")],
        None,
    );
    assert!(ok, "{out}");
    let (ok, out) = etcdctl(&ep, &["lease", "keep-alive", "--once", &id], None);
    assert!(ok && out.contains("keepalived with TTL(60)"), "{out}");
    let (_, out) = etcdctl(&ep, &["lease", "timetolive", &id, "--keys"], None);
    assert!(
        out.contains("granted with TTL(60s)") && out.contains("app/leased"),
        "{out}"
    );
    let (ok, out) = etcdctl(&ep, &["lease", "revoke", &id], None);
    assert!(ok, "{out}");
    let (_, out) = etcdctl(&ep, &["get", "app/leased"], None);
    assert_eq!(out.trim(), "", "the leased key went with its lease");

    let (ok, out) = etcdctl(&ep, &["endpoint", "status"], None);
    assert!(ok && out.contains("3.5.0"), "{out}");
    let (ok, out) = etcdctl(&ep, &["member", "list"], None);
    assert!(ok && out.contains("started, default"), "{out}");

    // The watch printed every change under app/, in order.
    let want = [
        "PUT", "app/a", "1", "PUT", "app/b", "2", "PUT", "app/a", "10", "PUT", "app/a", "never",
        "DELETE", "app/b",
    ];
    let start = Instant::now();
    loop {
        let got = watch.stdout();
        let lines: Vec<&str> = got.lines().collect();
        if lines.len() >= want.len() {
            assert_eq!(&lines[..want.len()], &want[..]);
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "watch output so far: {got:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    watch.signal("TERM");
    node.signal("TERM");
}

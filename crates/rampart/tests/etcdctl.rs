//! Debian's `etcdctl` (etcd's own client) against `rampart kv serve`: the wire API is etcd's.

mod support;

use std::process::Command;
use std::time::{Duration, Instant};

use support::*;

fn etcdctl(endpoint: &str, args: &[&str], stdin: Option<&str>) -> (bool, String) {
    etcdctl_with(endpoint, &[], args, stdin)
}

/// etcdctl with global flags (`--user`, TLS files) before the command.
fn etcdctl_with(
    endpoint: &str,
    global: &[&str],
    args: &[&str],
    stdin: Option<&str>,
) -> (bool, String) {
    use std::io::Write;
    let mut cmd = Command::new("etcdctl");
    cmd.env("ETCDCTL_API", "3")
        .arg(format!("--endpoints={endpoint}"))
        .arg("--command-timeout=5s")
        .args(global)
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

/// Poll until a put succeeds (the node has elected itself), for at most 20 s.
fn wait_ready(node: &mut Proc, ep: &str, global: &[&str]) {
    let start = Instant::now();
    loop {
        let (ok, out) = etcdctl_with(ep, global, &["put", "ready", "1"], None);
        if ok {
            return;
        }
        assert!(
            node.exited().is_none(),
            "rampart kv serve exited: {}",
            node.stderr()
        );
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "store never became ready: {out}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The command failed and printed `error`.
#[track_caller]
fn refused((ok, out): (bool, String), error: &str) {
    assert!(!ok && out.contains(error), "wanted {error:?}, got: {out}");
}

/// The command succeeded and printed exactly `want` (trimmed).
#[track_caller]
fn answered((ok, out): (bool, String), want: &str) {
    assert!(ok && out.trim() == want, "wanted {want:?}, got: {out}");
}

/// Stop a node with SIGTERM and wait (at most 10 s) until it has exited.
fn stop(node: &mut Proc) {
    node.signal("TERM");
    let start = Instant::now();
    while node.exited().is_none() {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "node did not stop"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn etcdctl_put_get_del_txn_lease_and_watch() {
    let dir = TempDir::new("etcdctl");
    let (mut node, ep) = spawn_kv_node(&dir.path("data"));
    wait_ready(&mut node, &ep, &[]);

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

    answered(etcdctl(&ep, &["put", "app/a", "1"], None), "OK");
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

    answered(etcdctl(&ep, &["del", "app/b"], None), "1");

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

/// Strict reconfiguration: on a single-node store, adding a voter that does not answer would
/// need 2 of 2 votes for every later write; it is refused, and writes keep working (also
/// after a restart). A learner never counts towards the quorum, so it may be added while
/// down, and promoting it is refused until it has caught up.
#[test]
fn member_add_of_an_unreachable_voter_is_refused_and_puts_keep_working() {
    let dir = TempDir::new("etcdctl-reconfig");
    let data = dir.path("data");
    let (client, peer) = (free_port(), free_port());
    let (mut node, ep) = spawn_kv_node_on(&data, client, peer, &[]);
    wait_ready(&mut node, &ep, &[]);

    let rogue = format!("--peer-urls=http://127.0.0.1:{}", free_port());
    refused(
        etcdctl(&ep, &["member", "add", "rogue", &rogue], None),
        "etcdserver: unhealthy cluster",
    );
    answered(etcdctl(&ep, &["put", "after-refusal", "1"], None), "OK");
    let (_, out) = etcdctl(&ep, &["member", "list"], None);
    assert_eq!(
        out.lines().count(),
        1,
        "the rogue member was not added: {out}"
    );

    let far = format!("--peer-urls=http://127.0.0.1:{}", free_port());
    let (ok, out) = etcdctl(&ep, &["member", "add", "far", "--learner", &far], None);
    assert!(ok && out.contains("added to cluster"), "{out}");
    let learner_id = out
        .split_whitespace()
        .nth(1)
        .expect("etcdctl prints: Member ID added to cluster ...")
        .to_string();
    answered(etcdctl(&ep, &["put", "after-learner", "2"], None), "OK");
    refused(
        etcdctl(&ep, &["member", "promote", &learner_id], None),
        "can only promote a learner member which is in sync with leader",
    );

    stop(&mut node);
    let (mut node, ep) = spawn_kv_node_on(&data, client, peer, &[]);
    wait_ready(&mut node, &ep, &[]);
    answered(
        etcdctl(&ep, &["get", "after-refusal", "--print-value-only"], None),
        "1",
    );
    answered(etcdctl(&ep, &["put", "after-restart", "3"], None), "OK");
    // The learner is still a member, and removing it needs no quorum check.
    let (ok, out) = etcdctl(&ep, &["member", "remove", &learner_id], None);
    assert!(ok && out.contains("removed from cluster"), "{out}");
    stop(&mut node);
}

/// etcd's auth with etcd's own client: users, roles, key-range permissions, root-only
/// administration, the errors etcdctl prints, and the state surviving a restart.
#[test]
fn auth_users_roles_and_permissions_with_etcdctl() {
    let dir = TempDir::new("etcdctl-auth");
    let data = dir.path("data");
    let (client, peer) = (free_port(), free_port());
    let (mut node, ep) = spawn_kv_node_on(&data, client, peer, &[]);
    wait_ready(&mut node, &ep, &[]);
    let ok = |args: &[&str], want: &str| {
        let (ok, out) = etcdctl(&ep, args, None);
        assert!(ok && out.contains(want), "{args:?}: {out}");
    };
    ok(&["user", "add", "root:rootpw"], "User root created");
    ok(&["user", "add", "alice:alicepw"], "User alice created");
    ok(&["role", "add", "app"], "Role app created");
    ok(
        &[
            "role",
            "grant-permission",
            "app",
            "readwrite",
            "app/",
            "--prefix",
        ],
        "Role app updated",
    );
    ok(
        &["role", "grant-permission", "app", "read", "shared"],
        "Role app updated",
    );
    ok(
        &["user", "grant-role", "alice", "app"],
        "Role app is granted to user alice",
    );
    let (ok_, out) = etcdctl(&ep, &["user", "add", "alice:again"], None);
    assert!(
        !ok_ && out.contains("etcdserver: user name already exists"),
        "{out}"
    );
    // etcdctl creates the root role and grants it when AuthEnable says it is missing.
    ok(&["auth", "enable"], "Authentication Enabled");

    let root = ["--user", "root:rootpw"];
    let alice = ["--user", "alice:alicepw"];
    let run = |global: &[&str], args: &[&str]| etcdctl_with(&ep, global, args, None);

    refused(
        run(&[], &["put", "app/a", "1"]),
        "etcdserver: user name is empty",
    );
    refused(
        run(&[], &["get", "app/a"]),
        "etcdserver: user name is empty",
    );
    refused(
        run(&["--user", "alice:wrong"], &["get", "app/a"]),
        "etcdserver: authentication failed, invalid user ID or password",
    );

    answered(run(&alice, &["put", "app/a", "1"]), "OK");
    let (ok_, out) = run(&alice, &["get", "app/", "--prefix"]);
    assert!(
        ok_ && out.lines().collect::<Vec<_>>() == ["app/a", "1"],
        "{out}"
    );
    refused(
        run(&alice, &["put", "secret", "x"]),
        "etcdserver: permission denied",
    );
    refused(
        run(&alice, &["get", "secret"]),
        "etcdserver: permission denied",
    );
    let (ok_, out) = run(&alice, &["put", "shared", "x"]);
    assert!(
        !ok_ && out.contains("etcdserver: permission denied"),
        "read-only: {out}"
    );
    refused(
        run(&alice, &["get", "", "--from-key"]),
        "etcdserver: permission denied",
    );
    // A txn is checked in both branches: a forbidden key in the failure branch refuses it.
    let txn = "value(\"app/a\") = \"1\"\n\nput app/b 2\n\nput secret 2\n\n";
    refused(
        etcdctl_with(&ep, &alice, &["txn"], Some(txn)),
        "etcdserver: permission denied",
    );
    let txn = "value(\"app/a\") = \"1\"\n\nput app/b 2\n\nput app/c 2\n\n";
    let (ok_, out) = etcdctl_with(&ep, &alice, &["txn"], Some(txn));
    assert!(ok_ && out.starts_with("SUCCESS"), "{out}");
    // Administration needs root.
    let rogue = format!("--peer-urls=http://127.0.0.1:{}", free_port());
    refused(
        run(&alice, &["member", "add", "x", "--learner", &rogue]),
        "etcdserver: permission denied",
    );
    refused(
        run(&alice, &["user", "add", "mallory:pw"]),
        "etcdserver: permission denied",
    );
    refused(
        run(&alice, &["compaction", "1"]),
        "etcdserver: permission denied",
    );
    answered(run(&root, &["put", "secret", "s"]), "OK");
    let (ok_, out) = run(&root, &["user", "list"]);
    assert!(
        ok_ && out.contains("alice") && out.contains("root"),
        "{out}"
    );
    let (ok_, out) = run(&root, &["role", "get", "app"]);
    assert!(ok_ && out.contains("[app/, app0)"), "{out}");
    refused(
        run(&root, &["user", "delete", "root"]),
        "etcdserver: invalid auth management",
    );

    // Users, roles and the switch are replicated state: they survive a restart.
    stop(&mut node);
    let (mut node, ep) = spawn_kv_node_on(&data, client, peer, &[]);
    wait_ready(&mut node, &ep, &root);
    let run = |global: &[&str], args: &[&str]| etcdctl_with(&ep, global, args, None);
    answered(run(&alice, &["get", "app/a", "--print-value-only"]), "1");
    refused(
        run(&[], &["get", "app/a"]),
        "etcdserver: user name is empty",
    );
    let (ok_, out) = run(
        &root,
        &["role", "revoke-permission", "app", "app/", "--prefix"],
    );
    assert!(ok_, "{out}");
    refused(
        run(&alice, &["get", "app/a"]),
        "etcdserver: permission denied",
    );
    let (ok_, out) = run(&root, &["auth", "disable"]);
    assert!(ok_ && out.contains("Authentication Disabled"), "{out}");
    answered(run(&[], &["put", "open", "again"]), "OK");
    stop(&mut node);
}

/// etcd's space quota: writes that would pass `--quota-backend-bytes` raise NOSPACE; while
/// it is raised puts are refused but reads, deletes and compaction work; the alarm is
/// replicated state (it survives a restart) and `alarm disarm` clears it. Requests larger
/// than `--max-request-bytes` (1.5 MiB by default) are refused as etcd does.
#[test]
fn quota_raises_nospace_until_disarmed_and_large_requests_are_refused() {
    let dir = TempDir::new("etcdctl-quota");
    let data = dir.path("data");
    let (client, peer) = (free_port(), free_port());
    let quota = ["--quota-backend-bytes", "8000000"];
    let (mut node, ep) = spawn_kv_node_on(&data, client, peer, &quota);
    wait_ready(&mut node, &ep, &[]);

    let big = "x".repeat(1_700_000);
    refused(
        etcdctl(&ep, &["put", "too-big"], Some(&big)),
        "etcdserver: request is too large",
    );

    // Fill the store with 512 KiB values until the quota refuses one (bounded).
    let value = "v".repeat(512 * 1024);
    let mut refusal = None;
    for i in 0..40 {
        let (ok, out) = etcdctl(&ep, &["put", &format!("fill/{i:02}")], Some(&value));
        if !ok {
            refusal = Some(out);
            break;
        }
    }
    let refusal = refusal.expect("40 puts of 512 KiB never hit an 8 MB quota");
    assert!(
        refusal.contains("etcdserver: mvcc: database space exceeded"),
        "{refusal}"
    );
    let (ok, out) = etcdctl(&ep, &["alarm", "list"], None);
    assert!(ok && out.contains("alarm:NOSPACE"), "{out}");
    refused(
        etcdctl(&ep, &["put", "small", "1"], None),
        "etcdserver: mvcc: database space exceeded",
    );
    let (ok, out) = etcdctl(&ep, &["endpoint", "status"], None);
    assert!(ok && out.contains("alarm:NOSPACE"), "{out}");
    // Reads, deletes and compaction still work.
    answered(
        etcdctl(&ep, &["get", "ready", "--print-value-only"], None),
        "1",
    );
    let (ok, out) = etcdctl(&ep, &["del", "fill/", "--prefix"], None);
    assert!(ok && out.trim() != "0", "{out}");
    let (ok, out) = etcdctl(&ep, &["get", "ready", "-w", "json"], None);
    assert!(ok, "{out}");
    let rev = out
        .split("\"revision\":")
        .nth(1)
        .and_then(|r| r.split(|c: char| !c.is_ascii_digit()).next())
        .expect("a revision in the JSON header")
        .to_string();
    let (ok, out) = etcdctl(&ep, &["compaction", &rev], None);
    assert!(ok && out.contains("compacted revision"), "{out}");

    // The alarm survives a restart (with a larger quota) until it is disarmed.
    stop(&mut node);
    let larger = ["--quota-backend-bytes", "1000000000"];
    let (mut node, ep) = spawn_kv_node_on(&data, client, peer, &larger);
    let start = Instant::now();
    loop {
        let (ok, out) = etcdctl(&ep, &["alarm", "list"], None);
        if ok {
            assert!(out.contains("alarm:NOSPACE"), "the alarm was lost: {out}");
            break;
        }
        assert!(node.exited().is_none(), "{}", node.stderr());
        assert!(start.elapsed() < Duration::from_secs(20), "{out}");
        std::thread::sleep(Duration::from_millis(100));
    }
    refused(
        etcdctl(&ep, &["put", "small", "1"], None),
        "etcdserver: mvcc: database space exceeded",
    );
    let (ok, out) = etcdctl(&ep, &["alarm", "disarm"], None);
    assert!(ok && out.contains("alarm:NOSPACE"), "{out}");
    answered(etcdctl(&ep, &["alarm", "list"], None), "");
    answered(etcdctl(&ep, &["put", "small", "1"], None), "OK");
    stop(&mut node);
}

/// `rampart kv certs` for a certificate directory; panics with the output if it fails.
fn make_certs(dir: &std::path::Path, nodes: &str) {
    let out = Command::new(bin())
        .args([
            "kv",
            "certs",
            "--dir",
            dir.to_str().unwrap(),
            "--nodes",
            nodes,
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
}

/// A TLS member: peer mutual TLS with the certificates in `certs` (as `name`), and a client
/// port that is https with client certificates required when `client_tls`.
fn spawn_tls_node(
    dir: &TempDir,
    certs: &std::path::Path,
    name: &str,
    (client, peer): (u16, u16),
    client_tls: bool,
    existing: bool,
) -> Proc {
    let f = |n: &str| certs.join(n).to_str().unwrap().to_string();
    let scheme = if client_tls { "https" } else { "http" };
    let mut args: Vec<String> = [
        "kv",
        "serve",
        "--name",
        name,
        "--data-dir",
        dir.path(name).to_str().unwrap(),
    ]
    .map(String::from)
    .to_vec();
    args.extend([
        format!("--listen-client-urls={scheme}://127.0.0.1:{client}"),
        format!("--listen-peer-urls=https://127.0.0.1:{peer}"),
        format!("--peer-cert-file={}", f(&format!("{name}.pem"))),
        format!("--peer-key-file={}", f(&format!("{name}-key.pem"))),
        format!("--peer-trusted-ca-file={}", f("ca.pem")),
        "--peer-client-cert-auth".into(),
    ]);
    if client_tls {
        args.extend([
            format!("--cert-file={}", f(&format!("{name}.pem"))),
            format!("--key-file={}", f(&format!("{name}-key.pem"))),
            format!("--trusted-ca-file={}", f("ca.pem")),
            "--client-cert-auth".into(),
        ]);
    }
    if existing {
        args.push("--initial-cluster-state=existing".into());
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    Proc::spawn(name, &args)
}

/// TLS in etcd's vocabulary: etcdctl reaches the client port over https with the CA and a
/// client certificate, not over plain http nor without a certificate; between members, a
/// node whose peer certificate comes from another CA is added (as a learner) but never
/// receives anything, while a node with a CA-signed certificate catches up and is promoted
/// (the strict-reconfiguration ping goes over mutual TLS too).
#[test]
fn tls_for_clients_and_mutual_tls_between_peers() {
    let dir = TempDir::new("etcdctl-tls");
    let (certs, other) = (dir.path("certs"), dir.path("other-ca"));
    make_certs(&certs, "n1,n2");
    make_certs(&other, "n3");
    let c = |n: &str| certs.join(n).to_str().unwrap().to_string();
    let tls_flags = [
        format!("--cacert={}", c("ca.pem")),
        format!("--cert={}", c("client.pem")),
        format!("--key={}", c("client-key.pem")),
    ];
    let tls: Vec<&str> = tls_flags.iter().map(String::as_str).collect();

    let ports1 = (free_port(), free_port());
    let mut n1 = spawn_tls_node(&dir, &certs, "n1", ports1, true, false);
    let ep1 = format!("https://127.0.0.1:{}", ports1.0);
    wait_ready(&mut n1, &ep1, &tls);
    answered(etcdctl_with(&ep1, &tls, &["put", "k", "v"], None), "OK");
    let plain = format!("http://127.0.0.1:{}", ports1.0);
    let (ok, out) = etcdctl(&plain, &["get", "k"], None);
    assert!(!ok, "plain http was served: {out}");
    let (ok, out) = etcdctl_with(&ep1, &tls[..1], &["get", "k"], None);
    assert!(!ok, "a client without a certificate was served: {out}");
    // Rampart's own CLI client, with the same flags.
    let out = Command::new(bin())
        .args(["kv", "--endpoints", &format!("127.0.0.1:{}", ports1.0)])
        .args(&tls_flags)
        .args(["get", "k"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && text.contains('v'), "{out:?}");

    // n3's peer certificate is signed by another CA.
    let add_learner = |name: &str, peer: u16| {
        let url = format!("--peer-urls=https://127.0.0.1:{peer}");
        let args = ["member", "add", name, "--learner", &url];
        let (ok, out) = etcdctl_with(&ep1, &tls, &args, None);
        assert!(ok, "{out}");
        out.split_whitespace().nth(1).unwrap().to_string()
    };
    let ports3 = (free_port(), free_port());
    let id3 = add_learner("n3", ports3.1);
    let mut n3 = spawn_tls_node(&dir, &other, "n3", ports3, false, true);
    let ep3 = format!("http://127.0.0.1:{}", ports3.0);

    let ports2 = (free_port(), free_port());
    let id2 = add_learner("n2", ports2.1);
    let mut n2 = spawn_tls_node(&dir, &certs, "n2", ports2, true, true);
    let ep2 = format!("https://127.0.0.1:{}", ports2.0);
    let start = Instant::now();
    loop {
        let (ok, out) = etcdctl_with(&ep2, &tls, &["get", "k", "--consistency=s"], None);
        if ok && out.contains('v') {
            break;
        }
        assert!(n2.exited().is_none(), "{}", n2.stderr());
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "n2 never caught up: {out}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // By now n3 had the same chance, and has nothing.
    assert!(n3.exited().is_none(), "{}", n3.stderr());
    let (_, out) = etcdctl(&ep3, &["get", "k", "--consistency=s"], None);
    assert!(
        !out.contains('v'),
        "n3 was replicated to without a CA-signed certificate: {out}"
    );
    refused(
        etcdctl_with(&ep1, &tls, &["member", "promote", &id3], None),
        "can only promote a learner member which is in sync with leader",
    );
    let (ok, out) = etcdctl_with(&ep1, &tls, &["member", "promote", &id2], None);
    assert!(ok && out.contains("promoted"), "{out}");
    answered(etcdctl_with(&ep1, &tls, &["put", "k2", "v2"], None), "OK");
    stop(&mut n2);
    stop(&mut n3);
    stop(&mut n1);
}

//! The network nemesis against real network namespaces (root only; CI runs as root).
//!
//! Each test builds its own net under its own prefix, runs a tiny TCP listener (python3)
//! in the nodes' namespaces, and proves reachability by connecting with bash's
//! `/dev/tcp` under `timeout`: exit 0 is a connection, 124 is a timeout (packets
//! dropped), anything else (1: refused) is a failure of the test setup.

use std::collections::BTreeSet;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rampart_jepsen::netns::{self, CHAIN, Net};

const PORT: u16 = 7000;

/// Whether this process can run the tests, and if not, why.
fn missing_requirements() -> Option<String> {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let euid = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|ids| ids.split_whitespace().nth(1))
        .unwrap_or("unknown");
    if euid != "0" {
        return Some(format!("effective uid is {euid}"));
    }
    let missing: Vec<&str> = ["ip", "iptables-restore", "python3", "timeout", "bash"]
        .into_iter()
        .filter(|tool| {
            !Command::new("sh")
                .args(["-c", &format!("command -v {tool}")])
                .stdout(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        })
        .collect();
    (!missing.is_empty()).then(|| format!("missing tools {missing:?}"))
}

macro_rules! require_root {
    ($name:literal) => {
        if let Some(why) = missing_requirements() {
            rampart_test_support::skip(
                $name,
                &format!(
                    "needs root and iproute2, iptables, python3 ({why}); scripts/test.sh \
                     installs the tools and CI runs as root"
                ),
            );
            return;
        }
    };
}

/// Builds a net after removing what a crashed earlier run of the same test left.
fn net(prefix: &str, nodes: usize) -> Net {
    netns::cleanup_stale(prefix).unwrap();
    Net::create(prefix, nodes).unwrap()
}

/// TCP listeners that accept and close, one per node, killed on drop.
struct Listeners(Vec<Child>);

impl Listeners {
    fn start(net: &Net) -> Self {
        let script = format!(
            "import socket\n\
             s = socket.socket()\n\
             s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n\
             s.bind(('0.0.0.0', {PORT}))\n\
             s.listen(64)\n\
             while True:\n    c, _ = s.accept()\n    c.close()\n"
        );
        let children = net
            .nodes()
            .map(|i| {
                net.command(i, "python3")
                    .args(["-c", &script])
                    .stdin(Stdio::null())
                    .spawn()
                    .unwrap()
            })
            .collect();
        let listeners = Self(children);
        // Poll, with a deadline, until every node reaches its right-hand neighbour.
        let deadline = Instant::now() + Duration::from_secs(10);
        let n = net.len();
        let pairs: Vec<_> = net.nodes().map(|i| (i, i % n + 1)).collect();
        loop {
            let results = probe(net, &pairs, 2);
            if results.iter().all(|&r| r == Reach::Connected) {
                return listeners;
            }
            assert!(
                Instant::now() < deadline,
                "listeners did not come up: {results:?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Listeners {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reach {
    Connected,
    TimedOut,
    Other(i32),
}

/// Connects from each `(from, to)` node to the other's listener, all at once, each bounded
/// by `secs`.
fn probe(net: &Net, pairs: &[(usize, usize)], secs: u32) -> Vec<Reach> {
    let children: Vec<Child> = pairs
        .iter()
        .map(|&(from, to)| {
            let target = format!("echo > /dev/tcp/{}/{PORT}", net.addr(to));
            net.command(from, "timeout")
                .args([&secs.to_string(), "bash", "-c", &target])
                .stdin(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap()
        })
        .collect();
    children
        .into_iter()
        .map(|mut c| match c.wait().unwrap().code() {
            Some(0) => Reach::Connected,
            Some(124) => Reach::TimedOut,
            other => Reach::Other(other.unwrap_or(-1)),
        })
        .collect()
}

/// Asserts reachability for each pair: a pair that should connect gets 5 s (it takes
/// milliseconds); one that should not gets 1 s to prove that it times out.
#[track_caller]
fn assert_reach(net: &Net, connected: &[(usize, usize)], cut: &[(usize, usize)]) {
    let mut pairs = connected.to_vec();
    pairs.extend_from_slice(cut);
    let ok = probe(net, connected, 5);
    let blocked = probe(net, cut, 1);
    let want: Vec<Reach> = connected
        .iter()
        .map(|_| Reach::Connected)
        .chain(cut.iter().map(|_| Reach::TimedOut))
        .collect();
    let got: Vec<Reach> = ok.into_iter().chain(blocked).collect();
    let table: Vec<_> = pairs.iter().zip(got.iter().zip(&want)).collect();
    assert_eq!(got, want, "(from, to): (got, want): {table:?}");
}

fn chain_rules(net: &Net, node: usize) -> Vec<String> {
    let out = net
        .command(node, "iptables")
        .args(["-S", CHAIN])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .filter(|l| l.starts_with("-A "))
        .map(str::to_owned)
        .collect()
}

fn namespaces() -> BTreeSet<String> {
    let out = Command::new("ip").args(["netns", "list"]).output().unwrap();
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_owned)
        .collect()
}

#[test]
fn isolate_cuts_a_node_off_both_ways_and_heal_restores_it() {
    require_root!("isolate_cuts_a_node_off_both_ways_and_heal_restores_it");
    let net = net("rjt-iso", 3);
    let _listeners = Listeners::start(&net);
    assert_reach(&net, &[(1, 3), (3, 1), (1, 2)], &[]);

    net.isolate(3).unwrap();
    // Applying the same partition again changes nothing: no duplicate rules.
    net.isolate(3).unwrap();
    assert_eq!(chain_rules(&net, 3).len(), 4, "{:?}", chain_rules(&net, 3));
    assert_eq!(chain_rules(&net, 1).len(), 2, "{:?}", chain_rules(&net, 1));
    assert_reach(&net, &[(1, 2), (2, 1)], &[(1, 3), (3, 1), (2, 3)]);

    net.heal().unwrap();
    assert!(chain_rules(&net, 3).is_empty());
    assert_reach(&net, &[(1, 3), (3, 1), (2, 3)], &[]);
}

#[test]
fn majority_minority_split_blocks_across_groups_only() {
    require_root!("majority_minority_split_blocks_across_groups_only");
    let net = net("rjt-split", 5);
    let _listeners = Listeners::start(&net);
    net.partition(&[vec![1, 2, 3], vec![4, 5]]).unwrap();
    assert_reach(
        &net,
        &[(1, 2), (3, 1), (4, 5), (5, 4)],
        &[(1, 4), (5, 3), (2, 5)],
    );
    // A new partition replaces the old one rather than adding to it.
    net.partition(&[vec![1, 4], vec![2, 3, 5]]).unwrap();
    assert_reach(&net, &[(1, 4), (5, 3)], &[(1, 2), (4, 5)]);
    net.heal().unwrap();
    assert_reach(&net, &[(1, 5), (2, 4)], &[]);
}

#[test]
fn bridge_partition_lets_only_the_bridge_see_both_sides() {
    require_root!("bridge_partition_lets_only_the_bridge_see_both_sides");
    let net = net("rjt-bridge", 5);
    let _listeners = Listeners::start(&net);
    net.bridge_partition(&[1, 2], 3, &[4, 5]).unwrap();
    assert_reach(
        &net,
        &[(1, 2), (1, 3), (3, 5), (5, 3), (4, 5)],
        &[(1, 4), (5, 2)],
    );
}

#[test]
fn invalid_partitions_are_rejected_before_touching_anything() {
    require_root!("invalid_partitions_are_rejected_before_touching_anything");
    let net = net("rjt-invalid", 3);
    for (groups, want) in [
        (vec![vec![1, 2]], "node 3 is in no group"),
        (vec![vec![1, 2], vec![2, 3]], "node 2 is in two groups"),
        (vec![vec![1, 2, 3], vec![4]], "node 4 does not exist"),
    ] {
        let err = net.partition(&groups).unwrap_err().to_string();
        assert!(err.contains(want), "{groups:?}: {err}");
    }
    let err = net.bridge_partition(&[1], 2, &[2]).unwrap_err().to_string();
    assert!(err.contains("listed twice"), "{err}");
    assert!(chain_rules(&net, 1).is_empty());
    // The same names cannot be created twice; the error says what to do.
    let err = Net::create("rjt-invalid", 3).unwrap_err().to_string();
    assert!(err.contains("cleanup_stale"), "{err}");
}

#[test]
fn drop_and_cleanup_stale_remove_every_namespace() {
    require_root!("drop_and_cleanup_stale_remove_every_namespace");
    let ours = |prefix: &str| -> BTreeSet<String> {
        namespaces()
            .into_iter()
            .filter(|n| n.starts_with(&format!("{prefix}-")))
            .collect()
    };
    let root_links = || {
        let out = Command::new("ip")
            .args(["-o", "link", "show"])
            .output()
            .unwrap();
        String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .filter_map(|l| l.split(": ").nth(1))
            // "name@ifN" for veths; other tests' control links come and go concurrently.
            .map(|l| l.split('@').next().unwrap_or(l).to_owned())
            .filter(|l| !l.starts_with("rjc-") || *l == netns::control_link_name("rjt-drop"))
            .collect::<BTreeSet<String>>()
    };
    let before = root_links();
    let net = net("rjt-drop", 2);
    assert_eq!(
        root_links(),
        before,
        "the root namespace's interfaces are untouched"
    );
    let want: BTreeSet<String> = ["rjt-drop-hub", "rjt-drop-n1", "rjt-drop-n2"]
        .map(String::from)
        .into();
    assert_eq!(ours("rjt-drop"), want);
    drop(net);
    assert!(ours("rjt-drop").is_empty(), "{:?}", ours("rjt-drop"));

    // A run that crashed: its namespaces survive it, one with a process still inside.
    let net = Net::create("rjt-drop", 2).unwrap();
    let mut orphan = net.command(1, "sleep").arg("30").spawn().unwrap();
    std::mem::forget(net);
    // Names that merely start like the prefix are not ours.
    assert!(netns::cleanup_stale("rjt-dro").unwrap().is_empty());
    assert_eq!(ours("rjt-drop"), want);
    let mut removed = netns::cleanup_stale("rjt-drop").unwrap();
    removed.sort();
    assert_eq!(removed, want.iter().cloned().collect::<Vec<_>>());
    assert!(ours("rjt-drop").is_empty());
    // cleanup_stale killed the process that kept the namespace alive.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if let Some(status) = orphan.try_wait().unwrap() {
            assert!(!status.success(), "{status}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "process in the stale namespace still runs"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Connects from the root namespace (this process's) to each node's listener, all at once.
fn probe_from_root(net: &Net, nodes: &[usize], secs: u32) -> Vec<Reach> {
    let children: Vec<Child> = nodes
        .iter()
        .map(|&to| {
            let target = format!("echo > /dev/tcp/{}/{PORT}", net.addr(to));
            Command::new("timeout")
                .args([&secs.to_string(), "bash", "-c", &target])
                .stdin(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap()
        })
        .collect();
    children
        .into_iter()
        .map(|mut c| match c.wait().unwrap().code() {
            Some(0) => Reach::Connected,
            Some(124) => Reach::TimedOut,
            other => Reach::Other(other.unwrap_or(-1)),
        })
        .collect()
}

#[test]
fn control_link_reaches_every_node_through_any_partition() {
    require_root!("control_link_reaches_every_node_through_any_partition");
    let link = netns::control_link_name("rjt-ctl");
    let link_exists = || {
        Command::new("ip")
            .args(["link", "show", "dev", &link])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .unwrap()
            .success()
    };
    netns::cleanup_stale("rjt-ctl").unwrap();
    let net = Net::create_with_control("rjt-ctl", 3).unwrap();
    let ctl = net.control_addr().unwrap();
    assert_eq!(ctl.octets()[3], netns::CONTROL_HOST);
    assert!(link_exists());
    let _listeners = Listeners::start(&net);
    let all = [1, 2, 3];
    assert_eq!(probe_from_root(&net, &all, 5), [Reach::Connected; 3]);

    // Node 1 is cut off from its peers, but not from the control address.
    net.isolate(1).unwrap();
    assert_reach(&net, &[(2, 3)], &[(1, 2), (3, 1)]);
    assert_eq!(probe_from_root(&net, &all, 5), [Reach::Connected; 3]);
    net.bridge_partition(&[1], 2, &[3]).unwrap();
    assert_eq!(probe_from_root(&net, &all, 5), [Reach::Connected; 3]);
    net.heal().unwrap();
    assert_reach(&net, &[(1, 2), (3, 1)], &[]);

    // Drop removes the root namespace's end too; so does cleanup_stale after a crash.
    drop(net);
    assert!(!link_exists(), "{link} survived the drop");
    let net = Net::create_with_control("rjt-ctl", 2).unwrap();
    std::mem::forget(net);
    assert!(link_exists());
    let removed = netns::cleanup_stale("rjt-ctl").unwrap();
    assert!(removed.contains(&link), "{removed:?}");
    assert!(!link_exists());
}

//! Integration tests: load the real programs and drive real TCP traffic on loopback and in
//! network namespaces this test creates. They need root (or CAP_BPF + CAP_PERFMON), kernel BTF
//! and tracefs; without them each test prints `*** SKIPPED: <reason> ***` and returns.
//!
//! Tests run in parallel and each starts its own tracer, which sees all TCP traffic on the
//! machine, so every assertion filters on the ports (and namespaces) the test itself made.

use std::collections::{HashMap, HashSet};
use std::fs;
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsFd;
use std::path::Path;
use std::process::Command;
use std::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard, mpsc};
use std::thread;
use std::time::{Duration, Instant};

use rampart_flows::{
    Direction, EventKinds, FlowEvent, FlowKey, FlowLabels, FlowTracer, FlowTracerOptions,
    FlowsError, PinnedLabels, ResetBy, current_netns,
};

/// Normal tests share; the detach test runs alone (it checks that no `rf_` program is left).
static EXCLUSIVE: RwLock<()> = RwLock::new(());

fn shared() -> RwLockReadGuard<'static, ()> {
    EXCLUSIVE
        .read()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn exclusive() -> RwLockWriteGuard<'static, ()> {
    EXCLUSIVE
        .write()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Prints `*** SKIPPED: ... ***` to the real stderr: `eprintln!` would be captured (and
/// hidden) by the test harness for a passing test.
fn loud_skip(test: &str, why: &dyn std::fmt::Display) {
    rampart_test_support::skip(test, why);
}

/// Returns true (after a loud line on stderr) when this machine cannot run BPF tests.
fn skip(test: &str) -> bool {
    match rampart_flows::check_environment(false) {
        Ok(()) => false,
        Err(
            e @ (FlowsError::NotPermitted { .. }
            | FlowsError::NoBtf { .. }
            | FlowsError::TracefsNotMounted { .. }
            | FlowsError::ProcStatus { .. }),
        ) => {
            loud_skip(test, &e);
            true
        }
        Err(e) => panic!("environment check failed: {e}"),
    }
}

fn start(opts: FlowTracerOptions) -> FlowTracer {
    FlowTracer::start(opts).unwrap_or_else(|e| panic!("FlowTracer::start: {e}"))
}

/// Polls until `done` holds for the events kept by `keep`, or `limit` passes. Returns what it
/// kept either way; the caller's assertions say what was missing.
fn collect(
    tracer: &FlowTracer,
    limit: Duration,
    keep: impl Fn(&FlowEvent) -> bool,
    done: impl Fn(&[FlowEvent]) -> bool,
) -> Vec<FlowEvent> {
    let deadline = Instant::now() + limit;
    let mut kept = Vec::new();
    loop {
        tracer
            .poll(Duration::from_millis(50), |ev| {
                if keep(&ev) {
                    kept.push(ev);
                }
            })
            .expect("poll");
        if done(&kept) || Instant::now() > deadline {
            return kept;
        }
    }
}

fn touches_port(ev: &FlowEvent, port: u16) -> bool {
    let k = ev.key();
    k.src.port() == port || k.dst.port() == port
}

fn closes(events: &[FlowEvent]) -> impl Iterator<Item = &FlowEvent> {
    events
        .iter()
        .filter(|e| matches!(e, FlowEvent::Close { .. }))
}

/// N connections to a listener on `ip`: client i writes 1000+i bytes and half-closes, the
/// server reads them all and answers 2000+i bytes, then both close. Checks every flow's open,
/// established and close events, exact bytes each way, duration, pid and namespace.
fn connections_are_traced_exactly(ip: IpAddr, n: usize) {
    let tracer = start(FlowTracerOptions::default());
    let listener = TcpListener::bind((ip, 0)).expect("bind");
    let port = listener.local_addr().unwrap().port();
    let server = thread::spawn(move || {
        for _ in 0..n {
            let (mut s, _) = listener.accept().expect("accept");
            let mut got = Vec::new();
            s.read_to_end(&mut got).expect("server read");
            let i = got.len() - 1000;
            s.write_all(&vec![b's'; 2000 + i]).expect("server write");
        }
    });

    let started = Instant::now();
    let mut client_index = HashMap::new(); // client port -> i
    for i in 0..n {
        let mut c = TcpStream::connect((ip, port)).expect("connect");
        client_index.insert(c.local_addr().unwrap().port(), i as u64);
        c.write_all(&vec![b'c'; 1000 + i]).expect("client write");
        c.shutdown(Shutdown::Write).expect("shutdown");
        let mut got = Vec::new();
        c.read_to_end(&mut got).expect("client read");
        assert_eq!(got.len(), 2000 + i);
    }
    server.join().expect("server thread");
    let elapsed = started.elapsed();

    let events = collect(
        &tracer,
        Duration::from_secs(10),
        |ev| touches_port(ev, port) && ev.key().src.ip() == ip,
        |evs| closes(evs).count() >= 2 * n,
    );

    let me = std::process::id();
    let netns = current_netns().expect("netns");
    let opened: HashSet<u64> = events
        .iter()
        .filter(|e| matches!(e, FlowEvent::Open { .. }))
        .map(|e| e.flow().flow_id)
        .collect();
    let established: HashSet<u64> = events
        .iter()
        .filter(|e| matches!(e, FlowEvent::Established { .. }))
        .map(|e| e.flow().flow_id)
        .collect();
    let (mut clients, mut servers) = (0, 0);
    for ev in closes(&events) {
        let FlowEvent::Close {
            flow,
            duration,
            stats,
            established: was_established,
            ..
        } = ev
        else {
            unreachable!()
        };
        assert!(opened.contains(&flow.flow_id), "no Open for {flow:?}");
        assert!(
            established.contains(&flow.flow_id),
            "no Established for {flow:?}"
        );
        assert!(*was_established, "{flow:?}");
        assert_eq!(flow.pid, me, "pid of {flow:?}");
        assert_eq!(flow.key.netns, netns, "{flow:?}");
        assert!(flow.key.is_complete(), "{flow:?}");
        // Each close is after the first connect; allow slack for the last FIN/ACK exchange.
        let bound = elapsed + Duration::from_secs(1);
        assert!(
            *duration > Duration::ZERO && *duration <= bound,
            "{duration:?} vs {elapsed:?}"
        );
        assert!(
            stats.packets_sent > 0 && stats.packets_received > 0,
            "{stats:?}"
        );
        if flow.key.dst.port() == port {
            clients += 1;
            assert_eq!(flow.direction, Direction::Outbound, "{flow:?}");
            let i = client_index[&flow.key.src.port()];
            assert_eq!(stats.bytes_sent, 1000 + i, "client {i} sent: {flow:?}");
            assert_eq!(
                stats.bytes_received,
                2000 + i,
                "client {i} received: {flow:?}"
            );
        } else {
            servers += 1;
            assert_eq!(flow.direction, Direction::Inbound, "{flow:?}");
            let i = client_index[&flow.key.dst.port()];
            assert_eq!(
                stats.bytes_received,
                1000 + i,
                "server {i} received: {flow:?}"
            );
            assert_eq!(stats.bytes_sent, 2000 + i, "server {i} sent: {flow:?}");
        }
    }
    assert_eq!((clients, servers), (n, n), "close events: {events:#?}");
    let c = tracer.counters().expect("counters");
    assert_eq!(c.decode_errors, 0, "{c:?}");
}

#[test]
fn ipv4_connections_bytes_and_lifecycle() {
    let _g = shared();
    if skip("ipv4_connections_bytes_and_lifecycle") {
        return;
    }
    connections_are_traced_exactly(IpAddr::V4(Ipv4Addr::LOCALHOST), 20);
}

#[test]
fn ipv6_connections_bytes_and_lifecycle() {
    let _g = shared();
    if skip("ipv6_connections_bytes_and_lifecycle") {
        return;
    }
    if TcpListener::bind("[::1]:0").is_err() {
        loud_skip(
            "ipv6_connections_bytes_and_lifecycle",
            &"no IPv6 on loopback",
        );
        return;
    }
    connections_are_traced_exactly(IpAddr::V6(Ipv6Addr::LOCALHOST), 20);
}

#[test]
fn abortive_close_is_reported_as_reset() {
    let _g = shared();
    if skip("abortive_close_is_reported_as_reset") {
        return;
    }
    let tracer = start(FlowTracerOptions::default());
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let client = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let (mut server, _) = listener.accept().unwrap();
    let client_port = client.local_addr().unwrap().port();
    // SO_LINGER with a zero timeout: close() sends RST instead of FIN.
    socket2::SockRef::from(&client)
        .set_linger(Some(Duration::ZERO))
        .unwrap();
    drop(client);
    let mut buf = [0u8; 16];
    let read = server.read(&mut buf);
    assert!(read.is_err(), "server should see the reset, got {read:?}");
    drop(server);

    let events = collect(
        &tracer,
        Duration::from_secs(10),
        |ev| touches_port(ev, port),
        |evs| closes(evs).count() >= 2,
    );
    let local_reset = events.iter().any(|e| {
        matches!(e, FlowEvent::Reset { by: ResetBy::Local, flow }
            if flow.key.src.port() == client_port && flow.flow_id != 0)
    });
    let remote_reset = events.iter().any(|e| {
        matches!(e, FlowEvent::Reset { by: ResetBy::Remote, flow }
            if flow.key.dst.port() == client_port && flow.key.src.port() == port)
    });
    assert!(
        local_reset,
        "no local reset on the client flow: {events:#?}"
    );
    assert!(
        remote_reset,
        "no remote reset on the server flow: {events:#?}"
    );
    let client_close = closes(&events)
        .find(|e| e.key().src.port() == client_port)
        .unwrap_or_else(|| panic!("no client close: {events:#?}"));
    assert!(
        matches!(
            client_close,
            FlowEvent::Close {
                reset_sent: true,
                ..
            }
        ),
        "{client_close:?}"
    );
    let server_close = closes(&events)
        .find(|e| e.key().src.port() == port)
        .unwrap_or_else(|| panic!("no server close: {events:#?}"));
    assert!(
        matches!(
            server_close,
            FlowEvent::Close {
                reset_received: true,
                ..
            }
        ),
        "{server_close:?}"
    );
}

/// A connected client and server on loopback, `n` bytes sent from the client and read.
fn loopback_pair(n: usize) -> (TcpStream, TcpStream) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let mut client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    let (mut server, _) = listener.accept().unwrap();
    client.write_all(&vec![7u8; n]).unwrap();
    let mut buf = vec![0u8; n];
    server.read_exact(&mut buf).unwrap();
    (client, server)
}

/// The flow key of `socket` as the tracer sees it from that socket's side.
fn key_of(socket: &TcpStream) -> FlowKey {
    FlowKey::tcp(
        socket.local_addr().unwrap(),
        socket.peer_addr().unwrap(),
        current_netns().unwrap(),
    )
}

fn labels(route: &str, cluster: &str, tenant: &str) -> FlowLabels {
    FlowLabels {
        route: route.into(),
        cluster: cluster.into(),
        tenant: tenant.into(),
    }
}

#[test]
fn snapshot_shows_live_flows_with_labels() {
    let _g = shared();
    if skip("snapshot_shows_live_flows_with_labels") {
        return;
    }
    let tracer = start(FlowTracerOptions::default());
    let (client, server) = loopback_pair(777);
    let key = key_of(&client);
    let labels = labels("r1", "c1", "t1");
    tracer.labels().report(key, labels.clone());

    let deadline = Instant::now() + Duration::from_secs(5);
    let live = loop {
        let snap = tracer.snapshot().expect("snapshot");
        if let Some(f) = snap.into_iter().find(|f| f.flow.key == key)
            && f.stats.bytes_sent == 777
        {
            break f;
        }
        assert!(
            Instant::now() < deadline,
            "client flow not in the snapshot with 777 bytes"
        );
        thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(live.flow.labels.as_ref(), Some(&labels));
    assert_eq!(live.flow.pid, std::process::id());
    assert!(live.established);
    assert_eq!(live.stats.bytes_received, 0);
    let server_key = FlowKey::tcp(key.dst, key.src, key.netns);
    let server_flow = tracer
        .snapshot()
        .unwrap()
        .into_iter()
        .find(|f| f.flow.key == server_key)
        .expect("server flow in the snapshot");
    assert_eq!(server_flow.stats.bytes_received, 777);
    assert!(server_flow.flow.labels.is_none());

    drop(client);
    drop(server);
    let events = collect(
        &tracer,
        Duration::from_secs(10),
        |ev| ev.key() == &key,
        |evs| closes(evs).count() >= 1,
    );
    let close = closes(&events).next().expect("client close");
    assert_eq!(
        close.flow().labels.as_ref(),
        Some(&labels),
        "labels on the close event"
    );
    assert!(
        tracer.labels().get(&key).is_none(),
        "labels are forgotten when the flow closes"
    );
    let c = tracer.counters().unwrap();
    assert!(c.flows_opened >= 2 && c.events_emitted > 0, "{c:?}");
}

/// A tracer told to emit only closes emits nothing else, yet tracks and counts every flow
/// and measures its bytes exactly.
#[test]
fn close_only_tracer_emits_only_closes() {
    let _g = shared();
    if skip("close_only_tracer_emits_only_closes") {
        return;
    }
    let tracer = start(FlowTracerOptions {
        events: EventKinds::CLOSE,
        ..FlowTracerOptions::default()
    });
    let before = tracer.counters().unwrap();
    let (client, server) = loopback_pair(321);
    let key = key_of(&client);
    drop(client);
    drop(server);
    let events = collect(
        &tracer,
        Duration::from_secs(10),
        |ev| touches_port(ev, key.dst.port()),
        |evs| closes(evs).count() >= 2,
    );
    assert_eq!(closes(&events).count(), 2, "{events:?}");
    assert_eq!(events.len(), 2, "only closes: {events:?}");
    let client_close = closes(&events)
        .find(|e| e.key() == &key)
        .expect("the client's close");
    let FlowEvent::Close { stats, .. } = client_close else {
        unreachable!()
    };
    assert_eq!(stats.bytes_sent, 321);
    let after = tracer.counters().unwrap();
    assert!(
        after.flows_opened >= before.flows_opened + 2,
        "flows are still counted: {before:?} -> {after:?}"
    );
}

/// A proxy in another process reports its connection's labels in the pinned maps; a tracer
/// that shares them shows them in snapshots and on the close, and leaves them for others.
#[test]
fn labels_pinned_by_another_process_reach_the_tracer() {
    let _g = shared();
    if skip("labels_pinned_by_another_process_reach_the_tracer") {
        return;
    }
    let dir = std::path::PathBuf::from(format!("/sys/fs/bpf/rampart-test-{}", std::process::id()));
    // The "proxy": its own handle on the maps, as another process would open them.
    let proxy = PinnedLabels::open_or_create(&dir).expect("pinned labels");
    assert!(dir.join("rf_labels").exists() && dir.join("rf_label_names").exists());
    let mut tracer = start(FlowTracerOptions::default());
    tracer.share_labels(&dir).expect("share labels");

    let (client, server) = loopback_pair(100);
    // The proxy's view of its accepted socket.
    let key = key_of(&server);
    let labels = labels("orders", "backend", "acme");
    proxy.report(&key, &labels).expect("report");
    assert_eq!(proxy.get(&key).as_ref(), Some(&labels));

    let deadline = Instant::now() + Duration::from_secs(5);
    let live = loop {
        if let Some(f) = tracer
            .snapshot()
            .expect("snapshot")
            .into_iter()
            .find(|f| f.flow.key == key)
        {
            break f;
        }
        assert!(Instant::now() < deadline, "server flow not in the snapshot");
        thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(live.flow.labels.as_ref(), Some(&labels));

    drop(client);
    drop(server);
    let events = collect(
        &tracer,
        Duration::from_secs(10),
        |ev| ev.key() == &key,
        |evs| closes(evs).count() >= 1,
    );
    let close = closes(&events).next().expect("server close");
    assert_eq!(close.flow().labels.as_ref(), Some(&labels));
    assert_eq!(
        proxy.get(&key).as_ref(),
        Some(&labels),
        "a reader leaves shared labels for other readers"
    );
    proxy.forget(&key);
    assert!(proxy.get(&key).is_none());

    drop(tracer);
    drop(proxy);
    let _ = fs::remove_dir_all(&dir);
    assert!(!dir.exists(), "{} left behind", dir.display());
}

#[test]
fn full_ring_buffer_counts_lost_events() {
    let _g = shared();
    if skip("full_ring_buffer_counts_lost_events") {
        return;
    }
    // One page: 26 events of 152 bytes. 40 connections make 240 events (open, established and
    // close for both sockets), and nobody consumes until they are done.
    let tracer = start(FlowTracerOptions {
        ring_buffer_bytes: 4096,
        ..Default::default()
    });
    let before = tracer.counters().unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    const N: u64 = 40;
    for _ in 0..N {
        let c = TcpStream::connect(addr).unwrap();
        let (s, _) = listener.accept().unwrap();
        drop(c);
        drop(s);
    }
    // Both sockets of every connection destroyed: their close events were attempted.
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut c = tracer.counters().unwrap();
    while c.flows_closed - before.flows_closed < 2 * N && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(20));
        c = tracer.counters().unwrap();
    }
    assert!(
        c.events_lost > 0,
        "nothing lost with a 4 KiB ring buffer: {c:?}"
    );
    assert!(
        c.events_emitted + c.events_lost >= 6 * N,
        "emitted + lost must cover the {} events of this test: {c:?}",
        6 * N
    );

    // Drain; every delivered event was emitted, and the ring accepts events again.
    let mut delivered = 0u64;
    while tracer.poll(Duration::ZERO, |_| delivered += 1).unwrap() > 0 {}
    let after = tracer.counters().unwrap();
    assert!(
        delivered > 0 && delivered <= after.events_emitted,
        "{delivered} vs {after:?}"
    );
    assert_eq!(after.decode_errors, 0);
}

#[test]
fn stopping_leaves_no_programs_links_or_maps() {
    let _g = exclusive();
    if skip("stopping_leaves_no_programs_links_or_maps") {
        return;
    }
    if Command::new("bpftool").arg("version").output().is_err() {
        loud_skip(
            "stopping_leaves_no_programs_links_or_maps",
            &"bpftool missing",
        );
        return;
    }
    let tracer = start(FlowTracerOptions::default());
    let ours = our_programs();
    assert_eq!(
        ours.len(),
        tracer.programs().count(),
        "bpftool sees: {ours:?}"
    );
    let ids: Vec<&str> = ours.iter().map(|(id, _)| id.as_str()).collect();
    assert!(links_of(&ids) > 0, "no links for our programs");
    tracer.stop();

    // The kernel frees programs and maps asynchronously after the last reference goes.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (progs, links, maps) = (our_programs(), links_of(&ids), our_maps());
        if progs.is_empty() && links == 0 && maps.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "left behind: programs {progs:?}, {links} links, maps {maps:?}"
        );
        thread::sleep(Duration::from_millis(50));
    }
    // No TC hooks are used, so no qdisc can be left on lo.
    let tc = Command::new("tc")
        .args(["qdisc", "show", "dev", "lo"])
        .output();
    if let Ok(out) = tc {
        assert!(!String::from_utf8_lossy(&out.stdout).contains("clsact"));
    }
}

fn bpftool(args: &[&str]) -> String {
    let out = Command::new("bpftool")
        .args(args)
        .output()
        .expect("bpftool");
    assert!(
        out.status.success(),
        "bpftool {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `(id, name)` of loaded programs whose name starts with `rf_`.
fn our_programs() -> Vec<(String, String)> {
    bpftool(&["prog", "list"])
        .lines()
        .filter_map(|l| {
            let (id, rest) = l.split_once(':')?;
            let name = rest
                .split_whitespace()
                .skip_while(|w| *w != "name")
                .nth(1)?;
            name.starts_with("rf_")
                .then(|| (id.trim().to_owned(), name.to_owned()))
        })
        .collect()
}

fn links_of(prog_ids: &[&str]) -> usize {
    bpftool(&["link", "list"])
        .lines()
        .filter(|l| {
            let mut w = l.split_whitespace().skip_while(|w| *w != "prog");
            w.nth(1).is_some_and(|id| prog_ids.contains(&id))
        })
        .count()
}

/// The tracer's own maps still loaded. Not the pinned label maps (`rf_labels`,
/// `rf_label_names`): they outlive whichever proxy or tracer pinned them, by design.
fn our_maps() -> Vec<String> {
    bpftool(&["map", "list"])
        .lines()
        .filter_map(|l| l.split_whitespace().skip_while(|w| *w != "name").nth(1))
        .filter(|n| ["rf_flows", "rf_events", "rf_counters"].contains(n))
        .map(str::to_owned)
        .collect()
}

/// Two network namespaces joined by a veth pair, removed (with everything in them, iptables
/// rules included) on drop.
struct NetnsPair {
    a: String,
    b: String,
}

impl NetnsPair {
    fn create() -> Self {
        let id = std::process::id() % 100_000;
        let pair = Self {
            a: format!("rf-test-a-{id}"),
            b: format!("rf-test-b-{id}"),
        };
        pair.remove(); // leftovers from a killed run
        let ip = |args: &[&str]| run("ip", args);
        ip(&["netns", "add", &pair.a]);
        ip(&["netns", "add", &pair.b]);
        let (va, vb) = (format!("rfa{id}"), format!("rfb{id}"));
        ip(&[
            "link", "add", &va, "netns", &pair.a, "type", "veth", "peer", "name", &vb, "netns",
            &pair.b,
        ]);
        for (ns, dev, addr) in [
            (&pair.a, &va, "10.241.0.1/24"),
            (&pair.b, &vb, "10.241.0.2/24"),
        ] {
            ip(&["-n", ns, "addr", "add", addr, "dev", dev]);
            ip(&["-n", ns, "link", "set", dev, "up"]);
            ip(&["-n", ns, "link", "set", "lo", "up"]);
        }
        pair
    }

    fn remove(&self) {
        for ns in [&self.a, &self.b] {
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
        }
    }

    fn iptables(&self, ns: &str, args: &[&str]) {
        let mut full = vec!["netns", "exec", ns, "iptables"];
        full.extend_from_slice(args);
        run("ip", &full);
    }
}

impl Drop for NetnsPair {
    fn drop(&mut self) {
        self.remove();
    }
}

fn run(cmd: &str, args: &[&str]) {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{cmd}: {e}"));
    assert!(
        out.status.success(),
        "{cmd} {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Moves the calling thread into the named network namespace.
fn enter_netns(name: &str) -> u64 {
    let f = fs::File::open(Path::new("/run/netns").join(name)).expect("open netns");
    rustix::thread::move_into_link_name_space(
        f.as_fd(),
        Some(rustix::thread::LinkNameSpaceType::Network),
    )
    .expect("setns");
    current_netns().expect("netns inode")
}

#[test]
fn dropped_packets_are_counted_as_retransmits() {
    let _g = shared();
    if skip("dropped_packets_are_counted_as_retransmits") {
        return;
    }
    for tool in ["ip", "iptables"] {
        if Command::new(tool).arg("-V").output().is_err() {
            loud_skip(
                "dropped_packets_are_counted_as_retransmits",
                &format!("{tool} missing"),
            );
            return;
        }
    }
    let tracer = start(FlowTracerOptions::default());
    let pair = NetnsPair::create();
    let server_addr: SocketAddr = "10.241.0.2:0".parse().unwrap();

    let (port_tx, port_rx) = mpsc::channel();
    let ns_b = pair.b.clone();
    let server = thread::spawn(move || {
        enter_netns(&ns_b);
        let l = TcpListener::bind(server_addr).expect("bind in netns");
        port_tx.send(l.local_addr().unwrap().port()).unwrap();
        let (mut s, _) = l.accept().expect("accept");
        let mut got = Vec::new();
        s.read_to_end(&mut got).expect("server read");
        s.write_all(b"done").unwrap();
        got.len()
    });
    let port = port_rx
        .recv_timeout(Duration::from_secs(10))
        .expect("server port");

    let (go_tx, go_rx) = mpsc::channel::<()>();
    let (info_tx, info_rx) = mpsc::channel();
    let ns_a = pair.a.clone();
    let client = thread::spawn(move || {
        let netns = enter_netns(&ns_a);
        let mut c = TcpStream::connect((Ipv4Addr::new(10, 241, 0, 2), port)).expect("connect");
        info_tx
            .send((c.local_addr().unwrap().port(), netns))
            .unwrap();
        go_rx.recv().unwrap(); // the DROP rule is in place
        c.write_all(&[1u8; 64 * 1024]).expect("client write");
        go_rx.recv().unwrap(); // the rule is gone
        c.shutdown(Shutdown::Write).unwrap();
        let mut reply = Vec::new();
        c.read_to_end(&mut reply).expect("client read");
        reply
    });
    let (client_port, netns_a) = info_rx
        .recv_timeout(Duration::from_secs(10))
        .expect("client");

    let port_s = port.to_string();
    let rule = [
        "INPUT",
        "-p",
        "tcp",
        "--dport",
        port_s.as_str(),
        "-j",
        "DROP",
    ];
    pair.iptables(&pair.b, &[&["-I"][..], &rule[..]].concat());
    go_tx.send(()).unwrap();
    // Fault injection, not a wait for a condition: keep dropping long enough for several RTOs
    // (200 ms minimum each) to fire.
    thread::sleep(Duration::from_millis(1200));
    pair.iptables(&pair.b, &[&["-D"][..], &rule[..]].concat());
    go_tx.send(()).unwrap();

    let reply = client.join().expect("client thread");
    assert_eq!(reply, b"done");
    assert_eq!(server.join().expect("server thread"), 64 * 1024);

    let ours = |ev: &FlowEvent| ev.key().netns == netns_a && ev.key().src.port() == client_port;
    let events = collect(&tracer, Duration::from_secs(10), ours, |evs| {
        closes(evs).count() >= 1
    });
    let retransmit_events = events
        .iter()
        .filter(|e| matches!(e, FlowEvent::Retransmit { .. }))
        .count();
    let close = closes(&events)
        .next()
        .unwrap_or_else(|| panic!("no close: {events:#?}"));
    let FlowEvent::Close { stats, flow, .. } = close else {
        unreachable!()
    };
    assert!(stats.retransmits > 0, "no retransmits counted: {close:?}");
    assert!(retransmit_events > 0, "no retransmit events: {events:#?}");
    assert_eq!(stats.bytes_sent, 64 * 1024);
    assert_eq!(stats.bytes_received, 4);
    assert_eq!(
        flow.key.dst,
        SocketAddr::from((Ipv4Addr::new(10, 241, 0, 2), port))
    );
    let ns_path = Path::new("/run/netns").join(&pair.a);
    drop(pair);
    assert!(!ns_path.exists(), "{} left behind", ns_path.display());
}

/// The committed objects must be what the sources compile to (see `src/lib.rs`, "Building
/// without clang"): `flows.bpf.o`, `tc_bytes.bpf.o` and `labels.bpf.o`. `RAMPART_FLOWS_BLESS=1` updates them.
#[test]
fn committed_object_matches_source() {
    let objects = [
        (
            "flows",
            env!("RAMPART_FLOWS_FRESH_OBJ"),
            env!("RAMPART_FLOWS_FRESH_META"),
        ),
        (
            "tc_bytes",
            env!("RAMPART_FLOWS_TC_FRESH_OBJ"),
            env!("RAMPART_FLOWS_TC_FRESH_META"),
        ),
        (
            "labels",
            env!("RAMPART_FLOWS_LABELS_FRESH_OBJ"),
            env!("RAMPART_FLOWS_LABELS_FRESH_META"),
        ),
    ];
    for (name, fresh, fresh_meta) in objects {
        check_committed_object(name, fresh, fresh_meta);
    }
}

fn check_committed_object(name: &str, fresh: &str, fresh_meta: &str) {
    let test = format!("committed_object_matches_source ({name})");
    if fresh.is_empty() {
        loud_skip(&test, &fresh_meta);
        return;
    }
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/bpf");
    let (obj, meta) = (
        dir.join(format!("{name}.bpf.o")),
        dir.join(format!("{name}.bpf.o.meta")),
    );
    if std::env::var_os("RAMPART_FLOWS_BLESS").is_some_and(|v| v == "1") {
        fs::copy(fresh, &obj).expect("copy object");
        fs::write(&meta, format!("{fresh_meta}\n")).expect("write meta");
        let _ = writeln!(
            std::io::stderr(),
            "blessed {} ({fresh_meta})",
            obj.display()
        );
        return;
    }
    let committed_meta = fs::read_to_string(&meta).unwrap_or_default();
    if committed_meta.trim() != fresh_meta {
        let why = format!(
            "the committed object was built with [{}], this build with [{fresh_meta}]; a byte \
             comparison needs the same clang and vmlinux.h",
            committed_meta.trim()
        );
        rampart_test_support::not_applicable(&test, &why);
        return;
    }
    let same = fs::read(&obj).ok() == fs::read(fresh).ok();
    assert!(
        same,
        "src/bpf/{name}.bpf.o is stale: it differs from what src/bpf/{name}.bpf.c compiles to. \
         Run `RAMPART_FLOWS_BLESS=1 cargo test -p rampart-flows --test flows \
         committed_object_matches_source` and commit the result."
    );
}

/// A program the verifier refuses is reported as `FlowsError::Load`, naming the program and
/// carrying the verifier's log (the same path `FlowTracer::start` takes). The bad program is
/// compiled here with clang; a good one passes.
#[test]
fn a_verifier_rejection_names_the_program_and_carries_the_log() {
    let test = "a_verifier_rejection_names_the_program_and_carries_the_log";
    if skip(test) {
        return;
    }
    if std::process::Command::new("clang")
        .arg("--version")
        .output()
        .is_err()
    {
        loud_skip(
            test,
            &"clang is not installed (scripts/test.sh installs it)",
        );
        return;
    }
    let dir = std::env::temp_dir().join(format!("rf-verifier-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let build = |name: &str, body: &str| {
        let src = dir.join(format!("{name}.bpf.c"));
        let obj = dir.join(format!("{name}.bpf.o"));
        std::fs::write(
            &src,
            format!(
                "__attribute__((section(\"license\"), used)) char _license[] = \"GPL\";\n\
                 __attribute__((section(\"tracepoint/sock/inet_sock_set_state\"), used))\n\
                 int {name}(void *ctx) {{ {body} }}\n"
            ),
        )
        .unwrap();
        let out = std::process::Command::new("clang")
            .args(["-O2", "-target", "bpf", "-c"])
            .arg(&src)
            .arg("-o")
            .arg(&obj)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        obj
    };
    // Dereferencing a null pointer: the verifier refuses the load.
    let bad = build(
        "rf_test_bad",
        "volatile int *p = (volatile int *)0; return *p;",
    );
    match rampart_flows::check_object(&bad) {
        Err(FlowsError::Load { program, log, .. }) => {
            assert_eq!(program.as_deref(), Some("rf_test_bad"), "{log}");
            assert!(
                log.contains("invalid mem access"),
                "the verifier's log: {log}"
            );
        }
        other => panic!("expected a verifier rejection, got {other:?}"),
    }
    let good = build("rf_test_good", "return 0;");
    assert_eq!(
        rampart_flows::check_object(&good).unwrap(),
        vec!["rf_test_good".to_string()]
    );
    let _ = std::fs::remove_dir_all(&dir);
}

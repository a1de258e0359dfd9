//! Integration tests of [`TcCounter`]: real TC programs on `lo` and on a veth pair into a
//! network namespace this test creates, compared with the application's own byte counts and
//! with the socket-level counts of [`FlowTracer`] in the same run. They need root (CAP_BPF,
//! CAP_NET_ADMIN, CAP_PERFMON), kernel BTF, tracefs, and `ip`, `tc`, `bpftool`, `iptables`;
//! without them each test prints `*** SKIPPED: <reason> ***` and returns.
//!
//! The tests run one at a time (a lock): the cleanup checks count every `rf_tc_` program and
//! link on the machine.
//!
//! Each exact comparison prints a report line to stderr (`cargo test --test tc -- --nocapture`
//! is not needed: it bypasses the harness' capture).

use std::collections::HashMap;
use std::fs;
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsFd;
use std::path::Path;
use std::process::Command;
use std::sync::{Mutex, MutexGuard, mpsc};
use std::thread;
use std::time::{Duration, Instant};

use rampart_flows::{
    FlowEvent, FlowStats, FlowTracer, FlowTracerOptions, FlowsError, TcCounter, TcCounterOptions,
    TcSnapshot, TcStats, current_netns,
};

static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> MutexGuard<'static, ()> {
    SERIAL
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Writes to the real stderr: `eprintln!` would be captured by the harness.
fn say(text: &str) {
    let _ = writeln!(std::io::stderr().lock(), "{text}");
}

fn loud_skip(test: &str, why: &dyn std::fmt::Display) {
    rampart_test_support::skip(test, why);
}

/// Returns true (after a loud line) when this machine cannot run these tests.
fn skip(test: &str, tools: &[&str]) -> bool {
    let env = rampart_flows::check_tc_environment()
        .and_then(|()| rampart_flows::check_environment(false));
    match env {
        Ok(()) => {}
        Err(
            e @ (FlowsError::NotPermitted { .. }
            | FlowsError::TcNotPermitted { .. }
            | FlowsError::NoBtf { .. }
            | FlowsError::TracefsNotMounted { .. }
            | FlowsError::ProcStatus { .. }),
        ) => {
            loud_skip(test, &e);
            return true;
        }
        Err(e) => panic!("environment check failed: {e}"),
    }
    for tool in tools {
        let arg = if *tool == "bpftool" { "version" } else { "-V" };
        if Command::new(tool).arg(arg).output().is_err() {
            loud_skip(test, &format!("{tool} missing"));
            return true;
        }
    }
    false
}

fn run(cmd: &str, args: &[&str]) -> String {
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
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A network namespace joined to this one by a veth pair (host end `host_if` with
/// 10.243.0.1/24, namespace end `ns_if` with 10.243.0.2/24); deleting the namespace on drop
/// deletes the pair, and whatever is attached to it, too.
struct VethNetns {
    ns: String,
    host_if: String,
    ns_if: String,
}

impl VethNetns {
    const HOST_IP: Ipv4Addr = Ipv4Addr::new(10, 243, 0, 1);
    const NS_IP: Ipv4Addr = Ipv4Addr::new(10, 243, 0, 2);

    fn create(tag: &str) -> Self {
        let id = std::process::id() % 100_000;
        let me = Self {
            ns: format!("rf-tc-{tag}-{id}"),
            host_if: format!("rftc{tag}{id}h"),
            ns_if: format!("rftc{tag}{id}n"),
        };
        me.remove(); // leftovers from a killed run
        run("ip", &["netns", "add", &me.ns]);
        run(
            "ip",
            &[
                "link",
                "add",
                &me.host_if,
                "type",
                "veth",
                "peer",
                "name",
                &me.ns_if,
                "netns",
                &me.ns,
            ],
        );
        run("ip", &["addr", "add", "10.243.0.1/24", "dev", &me.host_if]);
        run("ip", &["link", "set", &me.host_if, "up"]);
        run(
            "ip",
            &[
                "-n",
                &me.ns,
                "addr",
                "add",
                "10.243.0.2/24",
                "dev",
                &me.ns_if,
            ],
        );
        run("ip", &["-n", &me.ns, "link", "set", &me.ns_if, "up"]);
        run("ip", &["-n", &me.ns, "link", "set", "lo", "up"]);
        me
    }

    fn remove(&self) {
        let _ = Command::new("ip").args(["netns", "del", &self.ns]).output();
        let _ = Command::new("ip")
            .args(["link", "del", &self.host_if])
            .output();
    }
}

impl Drop for VethNetns {
    fn drop(&mut self) {
        self.remove();
    }
}

/// Moves the calling thread into the named network namespace; returns its inode.
fn enter_netns(name: &str) -> u64 {
    let f = fs::File::open(Path::new("/run/netns").join(name)).expect("open netns");
    rustix::thread::move_into_link_name_space(
        f.as_fd(),
        Some(rustix::thread::LinkNameSpaceType::Network),
    )
    .expect("setns");
    current_netns().expect("netns inode")
}

/// Application bytes of connection `i`: what the client writes, what the server answers.
/// Large enough for GSO super-packets and several windows, and not round.
fn up_bytes(i: usize) -> u64 {
    100_000 + 1_111 * i as u64
}

fn down_bytes(i: usize) -> u64 {
    250_000 + 3_333 * i as u64
}

/// One connection as the client saw it.
#[derive(Debug, Clone, Copy)]
struct Conn {
    client: SocketAddr,
    server: SocketAddr,
    up: u64,
    down: u64,
}

/// Serves `n` connections on a listener bound to `bind` (in `netns` when given): reads the
/// request to EOF, answers `down_bytes(i)` where `i` comes from the request size, closes.
fn spawn_server(
    bind: SocketAddr,
    netns: Option<String>,
    n: usize,
) -> (SocketAddr, thread::JoinHandle<()>) {
    let (tx, rx) = mpsc::channel();
    let h = thread::spawn(move || {
        if let Some(ns) = netns {
            enter_netns(&ns);
        }
        let l = TcpListener::bind(bind).expect("bind");
        tx.send(l.local_addr().unwrap()).unwrap();
        for _ in 0..n {
            let (mut s, _) = l.accept().expect("accept");
            let mut got = Vec::new();
            s.read_to_end(&mut got).expect("server read");
            let i = ((got.len() as u64 - up_bytes(0)) / 1_111) as usize;
            assert_eq!(got.len() as u64, up_bytes(i));
            s.write_all(&vec![b's'; down_bytes(i) as usize])
                .expect("server write");
        }
    });
    let addr = rx.recv_timeout(Duration::from_secs(10)).expect("server up");
    (addr, h)
}

/// `n` sequential connections: write `up_bytes(i)`, half-close, read `down_bytes(i)`.
fn exchange(server: SocketAddr, n: usize) -> Vec<Conn> {
    (0..n)
        .map(|i| {
            let mut c = TcpStream::connect(server).expect("connect");
            c.write_all(&vec![b'c'; up_bytes(i) as usize])
                .expect("client write");
            c.shutdown(Shutdown::Write).expect("shutdown");
            let mut got = Vec::new();
            c.read_to_end(&mut got).expect("client read");
            assert_eq!(got.len() as u64, down_bytes(i));
            Conn {
                client: c.local_addr().unwrap(),
                server,
                up: up_bytes(i),
                down: down_bytes(i),
            }
        })
        .collect()
}

/// Final socket stats (from the close events) of every socket touching `port`, keyed by
/// (local, remote).
fn socket_stats(
    tracer: &FlowTracer,
    port: u16,
    sockets: usize,
) -> HashMap<(SocketAddr, SocketAddr), FlowStats> {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut out = HashMap::new();
    while out.len() < sockets && Instant::now() < deadline {
        tracer
            .poll(Duration::from_millis(50), |ev| {
                if let FlowEvent::Close { flow, stats, .. } = &ev
                    && (flow.key.src.port() == port || flow.key.dst.port() == port)
                {
                    out.insert((flow.key.src, flow.key.dst), *stats);
                }
            })
            .expect("poll");
    }
    assert_eq!(out.len(), sockets, "close events for port {port}: {out:?}");
    out
}

/// What TC saw for one socket, one way.
#[derive(Debug, Clone, Copy)]
struct Way {
    app: u64,
    socket: u64,
    tc: TcStats,
    socket_segs: u64,
    retransmits: u64,
    /// Segments TC sees that the socket does not count: the SYN-ACK of an accepted
    /// connection is sent by the listener's request socket, before the child socket exists.
    extra_segs: u64,
}

fn line(what: &str, w: &Way) -> String {
    format!(
        "{what:<28} app {:>7}  socket {:>7}  tc payload {:>7} ({:+})  tc packets {:>3}  tc segs {:>3}  socket segs {:>3}  retransmits {}",
        w.app,
        w.socket,
        w.tc.payload_bytes,
        w.tc.payload_bytes as i64 - w.app as i64,
        w.tc.packets,
        w.tc.segments,
        w.socket_segs,
        w.retransmits
    )
}

/// For every connection: the client's sent/received bytes by the application, by the
/// socket tracepoints and by TC (`snap` is from the interface the client's packets leave by;
/// `server_side`, when given, from the interface the server's packets leave by). Asserts that
/// TC payload bytes equal application bytes when the socket saw no retransmission, and that
/// the socket bytes always do. Returns the report.
fn compare(
    test: &str,
    conns: &[Conn],
    sockets: &HashMap<(SocketAddr, SocketAddr), FlowStats>,
    client_side: &TcSnapshot,
    server_side: Option<&TcSnapshot>,
) {
    say(&format!(
        "\n--- {test}: application vs socket tracepoints vs TC ---"
    ));
    for c in conns {
        let cs = sockets[&(c.client, c.server)];
        let ss = sockets[&(c.server, c.client)];
        let (c_rtx, s_rtx) = (cs.retransmits, ss.retransmits);
        let mut ways = vec![
            (
                "client sent (egress)",
                Way {
                    app: c.up,
                    socket: cs.bytes_sent,
                    tc: client_side.sent(c.client, c.server),
                    socket_segs: cs.packets_sent,
                    retransmits: c_rtx,
                    extra_segs: 0,
                },
            ),
            (
                "client received (ingress)",
                Way {
                    app: c.down,
                    socket: cs.bytes_received,
                    tc: client_side.received(c.client, c.server),
                    socket_segs: cs.packets_received,
                    retransmits: s_rtx,
                    extra_segs: 0,
                },
            ),
        ];
        if let Some(server_side) = server_side {
            ways.push((
                "server received (ingress)",
                Way {
                    app: c.up,
                    socket: ss.bytes_received,
                    tc: server_side.received(c.server, c.client),
                    socket_segs: ss.packets_received,
                    retransmits: c_rtx,
                    extra_segs: 0,
                },
            ));
            ways.push((
                "server sent (egress)",
                Way {
                    app: c.down,
                    socket: ss.bytes_sent,
                    tc: server_side.sent(c.server, c.client),
                    socket_segs: ss.packets_sent,
                    retransmits: s_rtx,
                    extra_segs: 1,
                },
            ));
        }
        say(&format!("{} -> {}", c.client, c.server));
        for (what, w) in &ways {
            say(&format!("  {}", line(what, w)));
            assert_eq!(w.socket, w.app, "{test}: socket bytes, {what}: {w:?}");
            if w.retransmits == 0 {
                assert_eq!(
                    w.tc.payload_bytes, w.app,
                    "{test}: TC payload bytes without retransmits, {what}: {w:?}"
                );
                // TCP segments (gso_segs summed) are the socket's segs_out / segs_in, plus
                // the SYN-ACK for the accepting side's egress.
                assert_eq!(
                    w.tc.segments,
                    w.socket_segs + w.extra_segs,
                    "{test}: TC segments, {what}: {w:?}"
                );
            } else {
                assert!(w.tc.payload_bytes >= w.app, "{test}: {what}: {w:?}");
            }
            assert!(w.tc.packets > 0 && w.tc.segments >= w.tc.packets, "{w:?}");
        }
    }
}

fn start_tracer() -> FlowTracer {
    FlowTracer::start(FlowTracerOptions::default())
        .unwrap_or_else(|e| panic!("FlowTracer::start: {e}"))
}

fn attach(interface: &str) -> TcCounter {
    TcCounter::attach(interface, TcCounterOptions::default())
        .unwrap_or_else(|e| panic!("TcCounter::attach({interface}): {e}"))
}

fn loopback(test: &str, ip: IpAddr) {
    let tracer = start_tracer();
    let tc = attach("lo");
    const N: usize = 4;
    let (server, h) = spawn_server(SocketAddr::new(ip, 0), None, N);
    let conns = exchange(server, N);
    h.join().expect("server thread");
    let sockets = socket_stats(&tracer, server.port(), 2 * N);
    let snap = tc.snapshot().expect("snapshot");
    let counters = tc.counters().expect("counters");
    say(&format!("  {counters:?}"));
    // On lo the same packets pass egress and ingress: the client's egress is the server's
    // ingress, so one snapshot serves both sides.
    compare(test, &conns, &sockets, &snap, Some(&snap));
    assert_eq!(counters.insert_failed, 0, "{counters:?}");
}

#[test]
fn loopback_ipv4_tc_bytes_are_exact() {
    let _g = serial();
    if skip("loopback_ipv4_tc_bytes_are_exact", &[]) {
        return;
    }
    loopback(
        "loopback_ipv4_tc_bytes_are_exact",
        IpAddr::V4(Ipv4Addr::LOCALHOST),
    );
}

#[test]
fn loopback_ipv6_tc_bytes_are_exact() {
    let _g = serial();
    if skip("loopback_ipv6_tc_bytes_are_exact", &[]) {
        return;
    }
    if TcpListener::bind("[::1]:0").is_err() {
        loud_skip("loopback_ipv6_tc_bytes_are_exact", &"no IPv6 on loopback");
        return;
    }
    loopback(
        "loopback_ipv6_tc_bytes_are_exact",
        IpAddr::V6(Ipv6Addr::LOCALHOST),
    );
}

/// TC on both ends of a veth pair: the host end attached from this thread, the namespace end
/// from a thread inside the namespace (and dropped from this one, in the host namespace).
#[test]
fn veth_tc_bytes_are_exact_on_both_ends() {
    const TEST: &str = "veth_tc_bytes_are_exact_on_both_ends";
    let _g = serial();
    if skip(TEST, &["ip", "tc"]) {
        return;
    }
    let tracer = start_tracer();
    let net = VethNetns::create("v");
    let host_tc = attach(&net.host_if);
    let (ns, ns_if) = (net.ns.clone(), net.ns_if.clone());
    let ns_tc = thread::spawn(move || {
        enter_netns(&ns);
        attach(&ns_if)
    })
    .join()
    .expect("attach in the namespace");
    assert_eq!(our_links(), 4, "two TCX links per counter");

    const N: usize = 3;
    let (server, h) = spawn_server(
        SocketAddr::new(VethNetns::NS_IP.into(), 0),
        Some(net.ns.clone()),
        N,
    );
    let conns = exchange(server, N);
    h.join().expect("server thread");
    for c in &conns {
        assert_eq!(c.client.ip(), IpAddr::from(VethNetns::HOST_IP));
    }
    let sockets = socket_stats(&tracer, server.port(), 2 * N);
    let (host_snap, ns_snap) = (host_tc.snapshot().unwrap(), ns_tc.snapshot().unwrap());
    compare(TEST, &conns, &sockets, &host_snap, Some(&ns_snap));
    // What leaves one end enters the other: same packets, same bytes.
    for c in &conns {
        assert_eq!(
            host_snap.sent(c.client, c.server).payload_bytes,
            ns_snap.received(c.server, c.client).payload_bytes
        );
    }

    // Dropped here, in the host namespace: the namespace end's links go all the same (they
    // are file descriptors, not netlink filters), and no qdisc was ever needed.
    drop(ns_tc);
    wait_until("the namespace end's links to go", || our_links() == 2);
    let qdiscs = run(
        "ip",
        &[
            "netns", "exec", &net.ns, "tc", "qdisc", "show", "dev", &net.ns_if,
        ],
    );
    assert!(
        !qdiscs.contains("clsact"),
        "a qdisc in the namespace: {qdiscs}"
    );
    drop(host_tc);
    wait_until("the host end's links to go", || our_links() == 0);
    let qdiscs = run("tc", &["qdisc", "show", "dev", &net.host_if]);
    assert!(
        !qdiscs.contains("clsact"),
        "a qdisc on the host end: {qdiscs}"
    );
    let ns_path = Path::new("/run/netns").join(&net.ns);
    drop(net);
    assert!(!ns_path.exists(), "{} left behind", ns_path.display());
}

/// Dropped segments are retransmitted: TC (before the drop point) counts their payload again,
/// the socket tracepoints count what the application wrote, once.
#[test]
fn retransmissions_count_again_at_tc_but_not_at_the_socket() {
    const TEST: &str = "retransmissions_count_again_at_tc_but_not_at_the_socket";
    let _g = serial();
    if skip(TEST, &["ip", "tc", "iptables"]) {
        return;
    }
    let tracer = start_tracer();
    let net = VethNetns::create("r");
    let tc = attach(&net.host_if);

    let (tx, rx) = mpsc::channel();
    let ns = net.ns.clone();
    let server = thread::spawn(move || {
        enter_netns(&ns);
        let l = TcpListener::bind((VethNetns::NS_IP, 0)).expect("bind");
        tx.send(l.local_addr().unwrap()).unwrap();
        let (mut s, _) = l.accept().expect("accept");
        let mut got = Vec::new();
        s.read_to_end(&mut got).expect("server read");
        s.write_all(b"done").unwrap();
        got.len() as u64
    });
    let server_addr = rx.recv_timeout(Duration::from_secs(10)).unwrap();
    let mut c = TcpStream::connect(server_addr).expect("connect");
    let client_addr = c.local_addr().unwrap();
    let port = server_addr.port().to_string();
    let rule = ["INPUT", "-p", "tcp", "--dport", port.as_str(), "-j", "DROP"];
    let iptables = |op: &str| {
        let mut args = vec!["netns", "exec", net.ns.as_str(), "iptables", op];
        args.extend_from_slice(&rule);
        run("ip", &args);
    };
    iptables("-I");
    const SENT: u64 = 64 * 1024;
    let writer = thread::spawn(move || {
        c.write_all(&[1u8; SENT as usize]).expect("client write");
        c
    });
    // Fault injection, not a wait for a condition: keep dropping long enough for several RTOs.
    thread::sleep(Duration::from_millis(1200));
    iptables("-D");
    let mut c = writer.join().expect("writer");
    c.shutdown(Shutdown::Write).unwrap();
    let mut reply = Vec::new();
    c.read_to_end(&mut reply).unwrap();
    assert_eq!(reply, b"done");
    assert_eq!(server.join().unwrap(), SENT);
    drop(c);

    let sockets = socket_stats(&tracer, server_addr.port(), 2);
    let stats = sockets[&(client_addr, server_addr)];
    let retransmits = stats.retransmits;
    let tc_sent = tc.snapshot().unwrap().sent(client_addr, server_addr);
    say(&format!("\n--- {TEST} ---"));
    say(&format!(
        "  {}",
        line(
            "client sent (egress)",
            &Way {
                app: SENT,
                socket: stats.bytes_sent,
                tc: tc_sent,
                socket_segs: stats.packets_sent,
                retransmits,
                extra_segs: 0,
            }
        )
    ));
    assert!(retransmits > 0, "no retransmits: {stats:?}");
    assert_eq!(
        stats.bytes_sent, SENT,
        "socket bytes are what the app wrote"
    );
    assert!(
        tc_sent.payload_bytes > SENT,
        "TC should count retransmitted payload again: {tc_sent:?}"
    );
    // Both count segments on the wire, retransmitted ones included.
    assert_eq!(
        tc_sent.segments, stats.packets_sent,
        "{tc_sent:?} vs {stats:?}"
    );
    drop(tc);
}

/// TCX runs before the classic TC filters and leaves them alone: a clsact qdisc with a filter
/// of someone else's stays as it was, and that filter keeps seeing packets.
#[test]
fn classic_tc_filters_of_others_are_left_in_place() {
    const TEST: &str = "classic_tc_filters_of_others_are_left_in_place";
    let _g = serial();
    if skip(TEST, &["ip", "tc"]) {
        return;
    }
    let net = VethNetns::create("q");
    run("tc", &["qdisc", "add", "dev", &net.host_if, "clsact"]);
    run(
        "tc",
        &[
            "filter",
            "add",
            "dev",
            &net.host_if,
            "egress",
            "protocol",
            "all",
            "u32",
            "match",
            "u32",
            "0",
            "0",
            "classid",
            "1:1",
        ],
    );
    let tc = attach(&net.host_if);
    assert_eq!(our_links(), 2);
    // Traffic through the interface: the counter counts it.
    let (server, h) = spawn_server(
        SocketAddr::new(VethNetns::NS_IP.into(), 0),
        Some(net.ns.clone()),
        1,
    );
    let conns = exchange(server, 1);
    h.join().expect("server thread");
    let snap = tc.snapshot().unwrap();
    assert_eq!(
        snap.sent(conns[0].client, conns[0].server).payload_bytes,
        up_bytes(0)
    );
    tc.detach();
    wait_until("our links to go", || our_links() == 0);
    let qdiscs = run("tc", &["qdisc", "show", "dev", &net.host_if]);
    assert!(
        qdiscs.contains("clsact"),
        "the existing qdisc went: {qdiscs}"
    );
    let filters = run(
        "tc",
        &["-s", "filter", "show", "dev", &net.host_if, "egress"],
    );
    assert!(filters.contains("u32"), "the other filter went: {filters}");
}

#[test]
fn attaching_to_a_missing_interface_names_it() {
    let _g = serial();
    if skip("attaching_to_a_missing_interface_names_it", &[]) {
        return;
    }
    let e = TcCounter::attach("rf-no-such-if", TcCounterOptions::default()).unwrap_err();
    assert!(matches!(e, FlowsError::NoSuchInterface { .. }), "{e}");
    assert!(e.to_string().contains("rf-no-such-if"), "{e}");
}

/// `(id, name)` of loaded programs whose name starts with `rf_tc_`.
fn our_programs() -> Vec<(String, String)> {
    run("bpftool", &["prog", "list"])
        .lines()
        .filter_map(|l| {
            let (id, rest) = l.split_once(':')?;
            let name = rest
                .split_whitespace()
                .skip_while(|w| *w != "name")
                .nth(1)?;
            name.starts_with("rf_tc_")
                .then(|| (id.trim().to_owned(), name.to_owned()))
        })
        .collect()
}

fn our_maps() -> Vec<String> {
    run("bpftool", &["map", "list"])
        .lines()
        .filter_map(|l| l.split_whitespace().skip_while(|w| *w != "name").nth(1))
        .filter(|n| n.starts_with("rf_tc_") || n.starts_with("tc_bytes"))
        .map(str::to_owned)
        .collect()
}

/// Links of `rf_tc_` programs (TCX links show up in `bpftool link list` with their program).
fn our_links() -> usize {
    let ids: Vec<String> = our_programs().into_iter().map(|(id, _)| id).collect();
    run("bpftool", &["link", "list"])
        .lines()
        .filter(|l| {
            let mut w = l.split_whitespace().skip_while(|w| *w != "prog");
            w.nth(1).is_some_and(|id| ids.iter().any(|i| i == id))
        })
        .count()
}

/// Waits up to 10 s for `cond`: the kernel frees programs and maps asynchronously after the
/// last reference goes.
fn wait_until(what: &str, cond: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !cond() {
        assert!(Instant::now() < deadline, "waited 10 s for {what}");
        thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn dropping_leaves_no_links_programs_maps_or_qdisc() {
    const TEST: &str = "dropping_leaves_no_links_programs_maps_or_qdisc";
    let _g = serial();
    if skip(TEST, &["tc", "bpftool"]) {
        return;
    }
    let before = run("tc", &["qdisc", "show", "dev", "lo"]);
    if before.contains("clsact") {
        loud_skip(TEST, &"lo already has a clsact qdisc (not ours)");
        return;
    }
    // An earlier test's programs may still be on their way out.
    wait_until("rf_tc_ programs loaded before the test to go", || {
        our_programs().is_empty()
    });
    let tc = attach("lo");
    let names: Vec<String> = our_programs().into_iter().map(|(_, n)| n).collect();
    assert_eq!(names.len(), 2, "bpftool sees: {names:?}");
    for p in tc.programs() {
        assert!(names.iter().any(|n| n == p), "{p} not in {names:?}");
    }
    assert_eq!(our_links(), 2, "one TCX link per hook");
    let qdiscs = run("tc", &["qdisc", "show", "dev", "lo"]);
    assert!(!qdiscs.contains("clsact"), "TCX needs no qdisc: {qdiscs}");
    drop(tc);

    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (progs, links, maps) = (our_programs(), our_links(), our_maps());
        if progs.is_empty() && links == 0 && maps.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "left behind: programs {progs:?}, {links} links, maps {maps:?}"
        );
        thread::sleep(Duration::from_millis(50));
    }
    let qdiscs = run("tc", &["qdisc", "show", "dev", "lo"]);
    assert!(!qdiscs.contains("clsact"), "a qdisc on lo: {qdiscs}");
}

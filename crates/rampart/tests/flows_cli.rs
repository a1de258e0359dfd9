//! `rampart flows watch` and `serve` as real processes, as root: events with exact bytes for
//! connections made here, Prometheus metrics, and a clean detach on SIGTERM.
#![cfg(feature = "flows")]

mod support;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use support::*;

fn skip_reason() -> Option<String> {
    if rustix::process::geteuid().as_raw() != 0 {
        return Some("not root (eBPF needs CAP_BPF and CAP_PERFMON)".into());
    }
    if !std::path::Path::new("/sys/kernel/btf/vmlinux").exists() {
        return Some("no kernel BTF".into());
    }
    if !std::path::Path::new("/sys/kernel/tracing/events").exists() {
        return Some("tracefs not mounted (mount -t tracefs tracefs /sys/kernel/tracing)".into());
    }
    None
}

/// A `rampart flows` child, killed if the test ends (or panics) without reaping it: a
/// leaked tracer keeps its programs attached and fails every later test that counts them.
struct Flows(Child);

impl std::ops::Deref for Flows {
    type Target = Child;
    fn deref(&self) -> &Child {
        &self.0
    }
}

impl std::ops::DerefMut for Flows {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.0
    }
}

impl Drop for Flows {
    fn drop(&mut self) {
        if matches!(self.0.try_wait(), Ok(None)) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// Starts `rampart flows ARGS` and waits for its "tracing" line on stderr.
fn start(args: &[&str]) -> (Flows, std::thread::JoinHandle<String>) {
    let mut child = Flows(
        Command::new(bin())
            .arg("flows")
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let mut err = BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        line.clear();
        assert!(
            err.read_line(&mut line).unwrap() > 0,
            "rampart flows exited early"
        );
        if line.starts_with("flows: tracing") {
            break;
        }
        assert!(Instant::now() < deadline, "no tracing line");
    }
    // Keep draining stderr so the child never blocks on it.
    let rest = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    (child, rest)
}

/// One connection to `listener`: the client sends `up` bytes, the server answers `down`.
fn exchange(listener: &TcpListener, up: usize, down: usize) {
    let addr = listener.local_addr().unwrap();
    let mut c = TcpStream::connect(addr).unwrap();
    let (mut s, _) = listener.accept().unwrap();
    c.write_all(&vec![b'u'; up]).unwrap();
    let mut buf = vec![0; up];
    s.read_exact(&mut buf).unwrap();
    s.write_all(&vec![b'd'; down]).unwrap();
    drop(s);
    let mut got = Vec::new();
    c.read_to_end(&mut got).unwrap();
    assert_eq!(got.len(), down);
}

/// The tests count loaded `rf_` programs, so they must not overlap.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Takes the serial lock; `None` (after a loud SKIPPED line) when BPF cannot run here.
fn begin(test: &str) -> Option<std::sync::MutexGuard<'static, ()>> {
    let guard = SERIAL
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    match skip_reason() {
        Some(why) => {
            loud_skip(test, &why);
            None
        }
        None => Some(guard),
    }
}

fn rf_programs_loaded() -> usize {
    let out = Command::new("bpftool")
        .args(["prog", "list"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .matches(" name rf_")
        .count()
}

#[test]
fn watch_and_serve_report_flows_and_detach_on_sigterm() {
    let Some(_serial) = begin("watch_and_serve_report_flows_and_detach_on_sigterm") else {
        return;
    };
    // watch: the close events of three connections, with exact bytes each way.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port().to_string();
    let (mut watch, _) = start(&["watch", "--port", &port, "--count", "6"]);
    for i in 0..3 {
        exchange(&listener, 1000 + i, 3000 + i);
    }
    let mut out = String::new();
    watch
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    assert!(watch.wait().unwrap().success());
    let events: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let closes: Vec<_> = events.iter().filter(|e| e["event"] == "close").collect();
    // 3 connections × 2 sockets; --count 6 may stop before the last closes, so count what came.
    assert!(!closes.is_empty(), "{out}");
    for c in &closes {
        let (sent, recv) = (
            c["stats"]["bytes_sent"].as_u64().unwrap(),
            c["stats"]["bytes_received"].as_u64().unwrap(),
        );
        // Client side sends 1000+i and receives 3000+i; the server side the other way round.
        assert!(
            (1000..1003).contains(&sent) && recv == sent + 2000
                || (1000..1003).contains(&recv) && sent == recv + 2000,
            "bytes: {c}"
        );
        assert_eq!(
            c["pid"].as_u64().unwrap(),
            u64::from(std::process::id()),
            "{c}"
        );
    }

    // serve: metrics by local port, then SIGTERM detaches everything.
    let mport = free_port();
    let listen = format!("127.0.0.1:{mport}");
    let (mut serve, stderr) = start(&["serve", "--listen", &listen]);
    for i in 0..4 {
        exchange(&listener, 100 + i, 200);
    }
    let lport = format!("local_port=\"{port}\"");
    let deadline = Instant::now() + Duration::from_secs(10);
    let metrics = loop {
        // `serve` loads its programs before it listens: until then, connections are refused.
        let Ok(mut s) = TcpStream::connect(&listen) else {
            assert!(
                Instant::now() < deadline,
                "flows serve never listened on {listen}"
            );
            std::thread::sleep(Duration::from_millis(100));
            continue;
        };
        s.write_all(b"GET /metrics HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
            .unwrap();
        let mut text = String::new();
        s.read_to_string(&mut text).unwrap();
        let closed = text
            .lines()
            .find(|l| l.starts_with("rampart_flows_closed_total") && l.contains(&lport))
            .and_then(|l| l.rsplit(' ').next()?.parse::<u64>().ok());
        if closed == Some(4) || Instant::now() > deadline {
            break text;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("rampart_flows_closed_total")
                && l.contains(&lport)
                && l.ends_with(" 4")),
        "{metrics}"
    );
    assert!(metrics.contains("rampart_flows_events_lost 0"), "{metrics}");
    assert!(metrics.contains("direction=\"received\""), "{metrics}");
    assert!(rf_programs_loaded() > 0);
    rustix::process::kill_process(
        rustix::process::Pid::from_child(&serve),
        rustix::process::Signal::TERM,
    )
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(s) = serve.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "serve did not exit on SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(
        status.success(),
        "exit {status:?}: {}",
        stderr.join().unwrap()
    );
    assert_eq!(
        rf_programs_loaded(),
        0,
        "programs left attached after SIGTERM"
    );
}

/// A tracer killed with SIGKILL leaves nothing attached (links and programs are not pinned,
/// so the kernel drops them with the process's descriptors); `top` draws its table.
#[test]
fn sigkill_leaves_nothing_behind_and_top_draws() {
    let Some(_serial) = begin("sigkill_leaves_nothing_behind_and_top_draws") else {
        return;
    };
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port().to_string();
    let (mut top, _) = start(&[
        "top",
        "--port",
        &port,
        "--interval",
        "300ms",
        "--iterations",
        "3",
        "--no-clear",
    ]);
    // A connection that stays open while top samples, with bytes each way.
    let mut c = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    let (mut s, _) = listener.accept().unwrap();
    c.write_all(&[1; 700]).unwrap();
    let mut buf = [0; 700];
    s.read_exact(&mut buf).unwrap();
    let mut out = String::new();
    top.stdout.take().unwrap().read_to_string(&mut out).unwrap();
    assert!(top.wait().unwrap().success());
    assert!(out.contains("TX_BYTES"), "{out}");
    assert!(
        out.lines()
            .any(|l| l.contains(&format!(":{port}")) && l.contains(" 700 ")),
        "{out}"
    );
    drop((c, s));

    let (mut watch, _) = start(&["watch"]);
    assert!(rf_programs_loaded() > 0);
    watch.kill().unwrap();
    watch.wait().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while rf_programs_loaded() > 0 {
        assert!(
            Instant::now() < deadline,
            "programs left attached after SIGKILL"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `watch` filters: by address (only the 127.0.0.2 connection shows) and by pid (another
/// process's connection does not show; ours does).
#[test]
fn watch_filters_by_address_and_pid() {
    let Some(_serial) = begin("watch_filters_by_address_and_pid") else {
        return;
    };
    let listener = TcpListener::bind("0.0.0.0:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let p = port.to_string();
    let connect = |ip: &str| {
        let mut c = TcpStream::connect(format!("{ip}:{port}")).unwrap();
        let (mut s, _) = listener.accept().unwrap();
        c.write_all(b"hello").unwrap();
        let mut b = [0; 5];
        s.read_exact(&mut b).unwrap();
    };
    let collect = |mut child: Flows| {
        let mut out = String::new();
        child
            .stdout
            .take()
            .unwrap()
            .read_to_string(&mut out)
            .unwrap();
        child.wait().unwrap();
        out.lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
            .collect::<Vec<_>>()
    };

    let (watch, _) = start(&["watch", "--port", &p, "--addr", "127.0.0.2", "--count", "2"]);
    connect("127.0.0.1");
    connect("127.0.0.2");
    let events = collect(watch);
    assert_eq!(events.len(), 2);
    for e in &events {
        let (src, dst) = (e["src"].as_str().unwrap(), e["dst"].as_str().unwrap());
        assert!(
            src.starts_with("127.0.0.2:") || dst.starts_with("127.0.0.2:"),
            "{e}"
        );
    }

    // By pid: another process's connection comes first and must not show; ours, after it,
    // is the one event (ordering in the ring buffer bounds the check, not a sleep).
    let me = std::process::id().to_string();
    let (mine, _) = start(&["watch", "--port", &p, "--pid", &me, "--count", "1"]);
    let other = Command::new("python3")
        .args([
            "-c",
            &format!("import socket; socket.create_connection(('127.0.0.1', {port})).close()"),
        ])
        .status()
        .unwrap();
    assert!(other.success(), "the other process could not connect");
    drop(listener.accept().unwrap());
    connect("127.0.0.1");
    let events = collect(mine);
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(
        events[0]["pid"].as_u64().unwrap(),
        u64::from(std::process::id()),
        "another process's flow passed the pid filter: {events:?}"
    );
}

/// `watch --cgroup`: only flows owned by processes in that cgroup (v2) are shown.
#[test]
fn watch_filters_by_cgroup() {
    let Some(_serial) = begin("watch_filters_by_cgroup") else {
        return;
    };
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap();
    let Some(root) = mounts
        .lines()
        .find(|l| l.split_whitespace().nth(2) == Some("cgroup2"))
        .and_then(|l| l.split_whitespace().nth(1))
        .map(str::to_string)
    else {
        loud_skip("watch_filters_by_cgroup", &"no cgroup2 mount");
        return;
    };
    let name = format!("rampart-flows-test-{}", std::process::id());
    let dir = std::path::Path::new(&root).join(&name);
    std::fs::create_dir(&dir).unwrap();
    struct Cleanup(std::path::PathBuf, Option<Child>);
    impl Drop for Cleanup {
        fn drop(&mut self) {
            if let Some(c) = &mut self.1 {
                let _ = c.kill();
                let _ = c.wait();
            }
            let _ = std::fs::remove_dir(&self.0);
        }
    }
    let mut guard = Cleanup(dir.clone(), None);

    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let (watch, _) = start(&[
        "watch",
        "--port",
        &port.to_string(),
        "--cgroup",
        &format!("/{name}"),
        "--count",
        "2",
    ]);
    // A connection from this process (not in the cgroup), then one from a child moved into it
    // before it connects; the child stays alive so its cgroup can be read.
    drop(TcpStream::connect(("127.0.0.1", port)).unwrap());
    let _ = listener.accept().unwrap();
    let script = format!(
        "echo $$ > {}/cgroup.procs && exec python3 -c \"import socket,time; s=socket.create_connection(('127.0.0.1',{port})); time.sleep(20)\"",
        dir.display()
    );
    let child = Command::new("sh").args(["-c", &script]).spawn().unwrap();
    let child_pid = child.id();
    guard.1 = Some(child);
    let _ = listener.accept().unwrap();
    let mut out = String::new();
    let mut watch = watch;
    watch
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    watch.wait().unwrap();
    let events: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(events.len(), 2, "{out}");
    for e in &events {
        assert_eq!(e["pid"].as_u64().unwrap(), u64::from(child_pid), "{e}");
    }
}

//! Support for end-to-end tests: the built `rampart` binary as a child process (killed on
//! drop), scratch directories, free ports, an HTTP client, polling and metric parsing.
#![allow(dead_code)] // each test binary uses a different subset

use std::io::Read;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, Request, StatusCode, Version};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

/// How long a started process may take to become ready.
pub(crate) const STARTUP: Duration = Duration::from_secs(10);
/// Upper bound for one HTTP exchange in a test.
pub(crate) const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// The binary under test, built by cargo for this test target.
pub(crate) fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_rampart")
}

#[allow(unused_imports)] // each test binary uses a different subset
pub(crate) use rampart_test_support::{free_port, local};

/// A scratch directory, removed on drop.
pub(crate) struct TempDir(PathBuf);

impl TempDir {
    pub(crate) fn new(test: &str) -> Self {
        static SEQ: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "rampart-e2e-{}-{}-{test}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).expect("create scratch dir");
        Self(dir)
    }

    pub(crate) fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Copies a directory tree (test fixtures such as policy bundles).
pub(crate) fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("create the copy's directory");
    for e in std::fs::read_dir(from).expect("read the fixture directory") {
        let e = e.expect("a directory entry");
        let dst = to.join(e.file_name());
        if e.file_type().expect("file type").is_dir() {
            copy_dir(&e.path(), &dst);
        } else {
            std::fs::copy(e.path(), dst).expect("copy a fixture file");
        }
    }
}

/// Replaces `path` atomically (write a sibling, then rename), as editors and config
/// management do, so a watcher never reads half a file.
pub(crate) fn write_atomically(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).expect("write temp config");
    std::fs::rename(&tmp, path).expect("rename config into place");
}

type Captured = Arc<Mutex<Vec<u8>>>;

fn capture(mut from: impl Read + Send + 'static, into: Captured) -> JoinHandle<()> {
    std::thread::spawn(move || {
        let mut buf = [0u8; 8192];
        loop {
            match from.read(&mut buf) {
                Ok(0) | Err(_) => return,
                Ok(n) => into
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .extend_from_slice(&buf[..n]),
            }
        }
    })
}

fn text_of(c: &Captured) -> String {
    String::from_utf8_lossy(&c.lock().unwrap_or_else(std::sync::PoisonError::into_inner))
        .into_owned()
}

/// A running `rampart` process with stdout and stderr captured. Killed and reaped on drop;
/// if the test is panicking, its stderr is printed to help explain why.
pub(crate) struct Proc {
    label: String,
    child: Child,
    exit: Option<ExitStatus>,
    stdout: Captured,
    stderr: Captured,
    readers: Vec<JoinHandle<()>>,
}

impl Proc {
    pub(crate) fn spawn(label: &str, args: &[&str]) -> Self {
        Self::spawn_program(label, bin(), args)
    }

    /// Runs another program (e.g. `ip netns exec NS rampart ...`) the same way.
    pub(crate) fn spawn_program(label: &str, program: &str, args: &[&str]) -> Self {
        let mut child = Command::new(program)
            .args(args)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {program}: {e}"));
        let stdout = Captured::default();
        let stderr = Captured::default();
        let readers = vec![
            capture(child.stdout.take().expect("piped stdout"), stdout.clone()),
            capture(child.stderr.take().expect("piped stderr"), stderr.clone()),
        ];
        Self {
            label: label.to_owned(),
            child,
            exit: None,
            stdout,
            stderr,
            readers,
        }
    }

    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    pub(crate) fn stdout(&self) -> String {
        text_of(&self.stdout)
    }

    pub(crate) fn stderr(&self) -> String {
        text_of(&self.stderr)
    }

    /// The exit status, if the process has exited (reaps it).
    pub(crate) fn exited(&mut self) -> Option<ExitStatus> {
        if self.exit.is_none() {
            self.exit = self.child.try_wait().expect("try_wait");
        }
        self.exit
    }

    /// Sends a signal (`TERM`, `HUP`, ...) with kill(1). Never signals a reaped pid.
    pub(crate) fn signal(&mut self, sig: &str) {
        assert!(
            self.exited().is_none(),
            "{} already exited before SIG{sig}; stderr:\n{}",
            self.label,
            self.stderr()
        );
        let status = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.child.id().to_string())
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{sig} failed");
    }

    /// Waits for the process to exit; panics with its stderr if it does not within `within`.
    /// Once it has exited, everything it wrote has been captured.
    pub(crate) async fn wait_exit(&mut self, within: Duration) -> ExitStatus {
        let deadline = Instant::now() + within;
        let status = loop {
            if let Some(s) = self.exited() {
                break s;
            }
            assert!(
                Instant::now() < deadline,
                "{} did not exit within {within:?}; stderr:\n{}",
                self.label,
                self.stderr()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        // The pipes close at exit: the readers finish promptly.
        for r in self.readers.drain(..) {
            let _ = r.join();
        }
        status
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if self.exited().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        if std::thread::panicking() {
            eprintln!(
                "---- {} stderr ----\n{}---- {} stdout ----\n{}",
                self.label,
                self.stderr(),
                self.label,
                self.stdout()
            );
        }
    }
}

#[allow(unused_imports)] // each test binary uses a different subset
pub(crate) use rampart_test_support::eventually;

/// One response, fully read.
#[derive(Debug)]
pub(crate) struct Reply {
    pub(crate) status: StatusCode,
    pub(crate) version: Version,
    pub(crate) headers: HeaderMap,
    pub(crate) body: Bytes,
}

impl Reply {
    pub(crate) fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }

    pub(crate) fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

pub(crate) type HttpClient = Client<HttpConnector, Full<Bytes>>;

/// HTTP/1.1 with keep-alive.
pub(crate) fn h1() -> HttpClient {
    Client::builder(TokioExecutor::new()).build_http()
}

/// HTTP/2 over cleartext with prior knowledge.
pub(crate) fn h2c() -> HttpClient {
    Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http()
}

pub(crate) fn request(
    method: http::Method,
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
) -> Request<Full<Bytes>> {
    let mut b = Request::builder()
        .method(method)
        .uri(format!("http://{addr}{path}"));
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    b.body(Full::new(Bytes::new())).expect("valid request")
}

/// Sends a request; any transport error or timeout is an `Err` with a description.
pub(crate) async fn try_send(
    client: &HttpClient,
    req: Request<Full<Bytes>>,
) -> Result<Reply, String> {
    let what = format!("{} {}", req.method(), req.uri());
    let exchange = async {
        let resp = client.request(req).await.map_err(|e| format!("{e:?}"))?;
        let (parts, body) = resp.into_parts();
        let body = body
            .collect()
            .await
            .map_err(|e| format!("body: {e:?}"))?
            .to_bytes();
        Ok::<_, String>(Reply {
            status: parts.status,
            version: parts.version,
            headers: parts.headers,
            body,
        })
    };
    match tokio::time::timeout(REQUEST_TIMEOUT, exchange).await {
        Ok(r) => r.map_err(|e| format!("{what}: {e}")),
        Err(_) => Err(format!("{what}: timed out after {REQUEST_TIMEOUT:?}")),
    }
}

pub(crate) async fn send(client: &HttpClient, req: Request<Full<Bytes>>) -> Reply {
    try_send(client, req).await.expect("request failed")
}

/// A GET over a fresh HTTP/1.1 client.
pub(crate) async fn get(addr: SocketAddr, path: &str) -> Reply {
    send(&h1(), request(http::Method::GET, addr, path, &[])).await
}

/// The value of an exact series (name plus labels as encoded) in Prometheus text.
pub(crate) fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
}

/// Fetches the admin `/metrics` text, or an empty string if it cannot.
pub(crate) async fn metrics(admin: SocketAddr) -> String {
    match try_send(&h1(), request(http::Method::GET, admin, "/metrics", &[])).await {
        Ok(r) if r.status == StatusCode::OK => r.text(),
        _ => String::new(),
    }
}

/// Polls `/metrics` until `series` has `value`; panics with the last scrape otherwise.
pub(crate) async fn await_metric(admin: SocketAddr, series: &str, value: f64) {
    await_metric_where(admin, series, value, |v| v == value).await;
}

/// Waits until `series` is at least `value`.
pub(crate) async fn await_metric_at_least(admin: SocketAddr, series: &str, value: f64) {
    await_metric_where(admin, series, value, |v| v >= value).await;
}

async fn await_metric_where(admin: SocketAddr, series: &str, value: f64, ok: impl Fn(f64) -> bool) {
    let deadline = Instant::now() + STARTUP;
    loop {
        let scrape = metrics(admin).await;
        if metric(&scrape, series).is_some_and(&ok) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{series} never became {value}; last scrape:\n{}",
            scrape
                .lines()
                .filter(|l| !l.starts_with('#'))
                .collect::<Vec<_>>()
                .join("\n")
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Polls `path` on `addr` until it answers 200. Returns false if the process exits first
/// (its output is then fully captured); panics if it neither exits nor answers in time.
pub(crate) async fn await_ok(proc: &mut Proc, addr: SocketAddr, path: &str) -> bool {
    let deadline = Instant::now() + STARTUP;
    let client = h1();
    while Instant::now() < deadline {
        if proc.exited().is_some() {
            proc.wait_exit(Duration::ZERO).await;
            return false;
        }
        let req = request(http::Method::GET, addr, path, &[]);
        if let Ok(Ok(r)) = tokio::time::timeout(Duration::from_secs(1), client.request(req)).await
            && r.status() == StatusCode::OK
        {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!(
        "{} did not answer 200 on http://{addr}{path} within {STARTUP:?}; stderr:\n{}",
        proc.label,
        proc.stderr()
    );
}

/// A `rampart demo-upstream` process on a port of its choosing.
pub(crate) struct Upstream {
    pub(crate) addr: SocketAddr,
    /// Kept for its drop: the process dies with the guard.
    _proc: Proc,
}

/// The upstream binds port 0 itself and says which port it got, so no other test can take
/// its port between a probe and the bind.
pub(crate) async fn demo_upstream(name: &str) -> Upstream {
    let mut proc = Proc::spawn(
        &format!("demo-upstream {name}"),
        &["demo-upstream", "--listen", "127.0.0.1:0", "--name", name],
    );
    let addr = bound(&mut proc, "demo upstream listening addr=").await;
    assert!(
        await_ok(&mut proc, addr, "/").await,
        "demo upstream {name} did not start; stderr:\n{}",
        proc.stderr()
    );
    Upstream { addr, _proc: proc }
}

/// The address a child process logged after `marker` (e.g. `... local=127.0.0.1:PORT ...`):
/// how tests learn the port of a server that bound port 0.
pub(crate) async fn bound(proc: &mut Proc, marker: &str) -> SocketAddr {
    let deadline = Instant::now() + STARTUP;
    loop {
        let found = proc.stderr().lines().find_map(|l| {
            let at = l.find(marker)? + marker.len();
            l[at..].split_whitespace().next()?.parse().ok()
        });
        if let Some(addr) = found {
            return addr;
        }
        assert!(
            proc.exited().is_none() && Instant::now() < deadline,
            "{} never logged {marker:?}; stderr:\n{}",
            proc.label,
            proc.stderr()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A `rampart serve` process on free ports, with its config file.
pub(crate) struct Served {
    pub(crate) addr: SocketAddr,
    pub(crate) admin: SocketAddr,
    pub(crate) config: PathBuf,
    pub(crate) proc: Proc,
    _dir: TempDir,
}

impl Served {
    /// Writes a new config with the same listeners (atomically): as configured, on port 0,
    /// so the running listeners are kept.
    pub(crate) fn rewrite(&self, body: &str) {
        write_atomically(&self.config, &config_file(ANY_PORT, ANY_PORT, body));
    }
}

/// The config file for a listener `main` on `addr` and admin on `admin`; `body` adds the
/// rest (`route_tables`, `clusters`, `access_log`, ...), starting at column 0.
pub(crate) fn config_file(addr: SocketAddr, admin: SocketAddr, body: &str) -> String {
    format!(
        "workers: 1\nadmin: {{ address: \"{admin}\" }}\nlisteners:\n  - name: main\n    \
         address: \"{addr}\"\n    route_table: main\n{body}"
    )
}

/// Starts `rampart serve --config F <extra>` where F holds [`config_file`] for `body`, and
/// waits for the admin `/ready`.
pub(crate) async fn serve(test: &str, body: &str, extra: &[&str]) -> Served {
    let dir = TempDir::new(test);
    let config = dir.path("rampart.yaml");
    let (proc, addr, admin) = spawn_serve(
        test,
        &config,
        |addr, admin| config_file(addr, admin, body),
        extra,
    )
    .await;
    Served {
        addr,
        admin,
        config,
        proc,
        _dir: dir,
    }
}

/// Writes `text(listener, admin)` to `config` with both addresses on port 0, starts
/// `rampart serve --config <config> <extra>`, learns the ports it bound from its log and
/// waits for the admin `/ready`. The server binds its own ports, so no other test can take
/// one between a probe and the bind. Returns the process, the listener and admin address.
pub(crate) async fn spawn_serve(
    test: &str,
    config: &Path,
    text: impl Fn(SocketAddr, SocketAddr) -> String,
    extra: &[&str],
) -> (Proc, SocketAddr, SocketAddr) {
    write_atomically(config, &text(ANY_PORT, ANY_PORT));
    let path = config.to_str().expect("utf-8 temp path");
    let mut args = vec!["serve", "--config", path];
    args.extend_from_slice(extra);
    let mut proc = Proc::spawn(&format!("serve ({test})"), &args);
    let addr = bound(&mut proc, "listener=main local=").await;
    let admin = bound(&mut proc, "admin endpoint listening local=").await;
    assert!(
        await_ok(&mut proc, admin, "/ready").await,
        "rampart serve did not become ready; stderr:\n{}",
        proc.stderr()
    );
    (proc, addr, admin)
}

/// `127.0.0.1:0`: what configs written by tests listen on (the server picks the port).
pub(crate) const ANY_PORT: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 0);

/// A route table `main` with one catch-all virtual host holding `routes` (YAML list items
/// indented by 10 spaces), then `clusters` (list items indented by 2).
pub(crate) fn routes_and_clusters(routes: &str, clusters: &str) -> String {
    format!(
        "route_tables:\n  - name: main\n    virtual_hosts:\n      - name: all\n        \
         domains: [\"*\"]\n        routes:\n{routes}clusters:\n{clusters}"
    )
}

pub(crate) fn cluster(name: &str, addr: SocketAddr) -> String {
    format!("  - {{ name: {name}, endpoints: [\"{addr}\"] }}\n")
}

/// `rampart kv serve` as a single node with its data in `data`; returns the process and
/// its client address (`127.0.0.1:PORT`).
pub(crate) fn spawn_kv_node(data: &Path) -> (Proc, String) {
    let (client, peer) = (free_port(), free_port());
    spawn_kv_node_on(data, client, peer, &[])
}

/// `rampart kv serve` on given ports (a restart keeps its peer URL, its identity) with extra
/// flags; returns the process and its client address.
pub(crate) fn spawn_kv_node_on(
    data: &Path,
    client: u16,
    peer: u16,
    extra: &[&str],
) -> (Proc, String) {
    spawn_kv_node_on_scheme(data, client, peer, "http", extra)
}

/// [`spawn_kv_node_on`] with peers on `peer_scheme` (`https` with the peer TLS flags).
pub(crate) fn spawn_kv_node_on_scheme(
    data: &Path,
    client: u16,
    peer: u16,
    peer_scheme: &str,
    extra: &[&str],
) -> (Proc, String) {
    let client_url = format!("http://127.0.0.1:{client}");
    let peer_url = format!("{peer_scheme}://127.0.0.1:{peer}");
    let mut args = vec![
        "kv",
        "serve",
        "--data-dir",
        data.to_str().expect("utf-8 path"),
        "--listen-client-urls",
        &client_url,
        "--listen-peer-urls",
        &peer_url,
    ];
    args.extend_from_slice(extra);
    let node = Proc::spawn("kv", &args);
    (node, format!("127.0.0.1:{client}"))
}

/// A loud skip outside CI, a failure in CI (`rampart_test_support::skip`).
#[track_caller]
pub(crate) fn loud_skip(test: &str, why: &dyn std::fmt::Display) {
    rampart_test_support::skip(test, why);
}

/// `rampart control-plane` serving the store at `eps` over ADS on a free port, and that
/// port's address.
pub(crate) async fn spawn_control_plane(eps: &str) -> (Proc, String) {
    let mut cp = Proc::spawn(
        "control-plane",
        &[
            "control-plane",
            "--store",
            eps,
            "--listen",
            "127.0.0.1:0",
            "--admin",
            "127.0.0.1:0",
        ],
    );
    let ads = bound(&mut cp, "xds listening addr=").await.to_string();
    (cp, ads)
}

/// A fresh store (`rampart kv serve` on free ports) holding `desired` (multi-document YAML,
/// written with `rampart apply`), once it answers; and its client endpoint.
pub(crate) async fn store_with(dir: &TempDir, desired: &str) -> (Proc, String) {
    let (store, eps) = spawn_kv_node(&dir.path("kv"));
    let cli = |args: &[&str]| {
        let out = std::process::Command::new(bin())
            .args(args)
            .output()
            .unwrap();
        (
            out.status.success(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        )
    };
    let ready = eventually(Duration::from_secs(15), || async {
        cli(&["get", "cluster", "--endpoints", &eps]).0
    })
    .await;
    assert!(ready, "the store did not come up");
    let file = dir.path("desired.yaml");
    std::fs::write(&file, desired).unwrap();
    let (ok, out) = cli(&["apply", "-f", file.to_str().unwrap(), "--endpoints", &eps]);
    assert!(ok, "apply: {out}");
    (store, eps)
}

/// A spec from crates/rampart-openapi/tests/specs.
pub(crate) fn openapi_spec(name: &str) -> String {
    format!(
        "{}/../rampart-openapi/tests/specs/{name}",
        env!("CARGO_MANIFEST_DIR")
    )
}

/// `rampart openapi codegen SPEC --out OUT ARGS...`, which must succeed.
pub(crate) fn openapi_codegen(spec: &str, out: &Path, args: &[&str]) {
    let generated = Command::new(bin())
        .args(["openapi", "codegen", spec, "--out"])
        .arg(out)
        .args(args)
        .output()
        .unwrap();
    assert!(
        generated.status.success(),
        "codegen {spec}: {}",
        String::from_utf8_lossy(&generated.stderr)
    );
}

/// `cargo SUBCOMMAND ARGS --manifest-path MANIFEST` for a generated crate, warnings denied,
/// in the build directory generated crates share beside the workspace's; its output.
pub(crate) fn cargo_generated(manifest: &Path, args: &[&str]) -> std::process::Output {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map_or_else(|| PathBuf::from("target"), PathBuf::from)
        .join("openapi-codegen");
    Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args(args)
        .arg("--manifest-path")
        .arg(manifest)
        .env("CARGO_TARGET_DIR", &target)
        .env("RUSTFLAGS", "-D warnings")
        .env("CARGO_TERM_COLOR", "never")
        .output()
        .unwrap()
}

/// The desired state for an API gateway test: listener `main` on a free port, route table
/// `main` answering 404 to anything no imported route takes, cluster `NAME` at `endpoint`.
pub(crate) fn api_gateway_config(cluster: &str, endpoint: &str) -> String {
    format!(
        "kind: Listener\nname: main\naddress: \"127.0.0.1:0\"\nroute_table: main\n---\n\
         kind: RouteTable\nname: main\nvirtual_hosts:\n  - name: all\n    domains: [\"*\"]\n    routes:\n      \
         - {{ match: {{ path: {{ prefix: / }} }}, direct_response: {{ status: 404, body: \"no such API\" }} }}\n---\n\
         kind: Cluster\nname: {cluster}\nendpoints: [\"{endpoint}\"]\n"
    )
}

/// `rampart ARGS...`, which must succeed; its standard output.
pub(crate) fn rampart_ok(args: &[&str]) -> String {
    let out = Command::new(bin()).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "rampart {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// `rampart proxy` fed by the control plane at `ads` as node `node`: one worker, its admin
/// endpoint on a free port.
pub(crate) fn spawn_xds_proxy(ads: &str, node: &str) -> Proc {
    Proc::spawn(
        "proxy",
        &[
            "proxy",
            "--xds",
            ads,
            "--node-id",
            node,
            "--workers",
            "1",
            "--admin",
            "127.0.0.1:0",
        ],
    )
}

/// A store of three members (`rampart kv serve`), each a child process.
pub(crate) struct StoreCluster {
    pub(crate) nodes: Vec<(Proc, String)>,
}

impl StoreCluster {
    /// Three members on fresh ports, with short election timeouts.
    pub(crate) fn start(dir: &TempDir) -> Self {
        let ports: Vec<(u16, u16)> = (0..3).map(|_| (free_port(), free_port())).collect();
        let initial = ports
            .iter()
            .enumerate()
            .map(|(i, (_, p))| format!("n{i}=http://127.0.0.1:{p}"))
            .collect::<Vec<_>>()
            .join(",");
        let nodes = ports
            .iter()
            .enumerate()
            .map(|(i, (c, p))| {
                let data = dir.path(&format!("n{i}"));
                let name = format!("n{i}");
                let extra = [
                    "--name",
                    &name,
                    "--initial-cluster",
                    &initial,
                    "--heartbeat-interval",
                    "50ms",
                    "--election-timeout",
                    "500ms",
                ];
                spawn_kv_node_on(&data, *c, *p, &extra)
            })
            .collect();
        Self { nodes }
    }

    pub(crate) fn endpoints(&self) -> String {
        self.alive().join(",")
    }

    pub(crate) fn alive(&self) -> Vec<String> {
        self.nodes.iter().map(|(_, e)| e.clone()).collect()
    }

    /// The leader's index, as etcdctl (Debian's etcd-client) reports it.
    pub(crate) fn leader(&self) -> Option<usize> {
        let out = Command::new("etcdctl")
            .env("ETCDCTL_API", "3")
            .args([
                &format!("--endpoints={}", self.endpoints()),
                "endpoint",
                "status",
                "-w",
                "json",
            ])
            .output()
            .expect("etcdctl (Debian's etcd-client; scripts/test.sh installs it)");
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
        v.as_array()?.iter().position(|s| {
            let st = &s["Status"];
            st["leader"].as_u64().is_some() && st["leader"] == st["header"]["member_id"]
        })
    }
}

/// `rampart up` on its fixed ports with its data (`kv`, `tenants`, `admin.token`) in
/// `dir`, its shared flow labels in `labels_dir` (removed by `up` on exit) and `extra`
/// arguments, once its admin port answers `/ready`.
/// (Callers check the ports first: [`assert_up_ports_free`].)
pub(crate) async fn spawn_up(dir: &TempDir, labels_dir: &str, extra: &[&str]) -> Proc {
    let (data, policy) = (dir.path("kv"), dir.path("tenants"));
    let mut args = vec![
        "up",
        "--data-dir",
        data.to_str().unwrap(),
        "--policy-dir",
        policy.to_str().unwrap(),
        "--flow-labels-dir",
        labels_dir,
    ];
    args.extend_from_slice(extra);
    let mut up = Proc::spawn("rampart up", &args);
    assert!(
        await_ok(&mut up, local(9901), "/ready").await,
        "rampart up exited before it was ready: {:?}",
        up.exited()
    );
    up
}

/// The fixed ports `rampart up` takes by default; panics naming one already in use.
pub(crate) fn assert_up_ports_free() {
    for port in [8080, 9901, 8081, 2379, 2380, 9435, 18000, 18001] {
        assert!(
            std::net::TcpListener::bind(local(port)).is_ok(),
            "port {port} is in use; this test runs `rampart up` on its fixed ports 8080/9901/8081/2379/2380/9435/18000/18001"
        );
    }
}

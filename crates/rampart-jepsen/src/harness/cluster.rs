//! The nodes under test: real `rampart kv serve` processes, one per network namespace.

use std::fs::{self, OpenOptions};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use rampart_kv::client::{Client, Security};
use rampart_kv::proto::etcdserverpb as pb;
use rampart_kv::types::member_id;

use crate::netns::{self, Net};

/// Every node listens on its own namespace address with etcd's usual ports.
pub const CLIENT_PORT: u16 = 2379;
pub const PEER_PORT: u16 = 2380;

/// How the nodes are started; see [`super::Config`].
#[derive(Debug, Clone)]
pub(crate) struct NodeSettings {
    pub(crate) server: super::Server,
    pub(crate) bin: PathBuf,
    pub(crate) dir: PathBuf,
    pub(crate) heartbeat: Duration,
    pub(crate) election_timeout: Duration,
    pub(crate) server_request_timeout: Duration,
    /// TLS on both ports (mutual between nodes) and, once [`Cluster::enable_auth`] ran,
    /// auth: see `Config::secure`.
    pub(crate) secure: bool,
}

#[derive(Debug)]
struct Node {
    child: Option<Child>,
    paused: bool,
}

/// The running cluster. Dropping it kills every node, then removes the network.
#[derive(Debug)]
pub(crate) struct Cluster {
    // Declared before `net`, but `Drop` kills the processes explicitly anyway: a namespace
    // that still holds a process cannot be removed.
    nodes: Vec<Node>,
    net: Arc<Net>,
    settings: NodeSettings,
    /// Member id of node `i` at index `i - 1`: derived from the peer URL for Rampart, and
    /// learnt from each node's status replies (etcd picks its own ids).
    ids: std::sync::Mutex<Vec<u64>>,
    /// One single-endpoint client per node, for status probes and readiness reads.
    probes: Vec<Client>,
    /// How every client reaches the nodes (TLS and the root login when secure).
    security: Security,
}

/// The `root` password of secure runs.
const ROOT_PASSWORD: &str = "jepsen";

fn duration_flag(d: Duration) -> String {
    format!("{}ms", d.as_millis())
}

impl Cluster {
    /// Builds the network (removing what a crashed run with the same prefix left behind)
    /// and starts every node. Does not wait for a leader; see [`Cluster::wait_ready`].
    pub(crate) fn start(prefix: &str, nodes: usize, settings: NodeSettings) -> Result<Self> {
        if settings.server == super::Server::Rampart && !settings.bin.is_file() {
            bail!(
                "the rampart binary {} does not exist: build it with `cargo build -p rampart` \
                 (and point RAMPART_BIN or --rampart-bin at it)",
                settings.bin.display()
            );
        }
        let stale = netns::cleanup_stale(prefix)?;
        if !stale.is_empty() {
            tracing::warn!(?stale, "removed what an earlier run left behind");
        }
        let net = Net::create_with_control(prefix, nodes)?;
        let secure = settings.secure;
        let ids = std::sync::Mutex::new(
            net.nodes()
                .map(|i| member_id(&peer_url(&net, i, secure)))
                .collect(),
        );
        let security = if secure {
            // One certificate per node, named by (and valid for) its namespace address.
            let names: Vec<String> = net.nodes().map(|i| net.addr(i).to_string()).collect();
            let certs = settings.dir.join("certs");
            rampart_kv::tls::dev_certs(&certs, &names).context("making certificates")?;
            Security {
                tls: Some(rampart_kv::tls::client_tls(
                    &certs.join("ca.pem"),
                    Some((&certs.join("client.pem"), &certs.join("client-key.pem"))),
                )?),
                user: Some(("root".into(), ROOT_PASSWORD.into())),
            }
        } else {
            Security::default()
        };
        let probes = net
            .nodes()
            .map(|i| {
                Client::with_security(
                    &[client_url(&net, i, secure)],
                    Duration::from_millis(500),
                    security.clone(),
                )
            })
            .collect::<Result<Vec<_>, _>>()?;
        let mut cluster = Self {
            nodes: (0..nodes)
                .map(|_| Node {
                    child: None,
                    paused: false,
                })
                .collect(),
            net: Arc::new(net),
            settings,
            ids,
            probes,
            security,
        };
        for i in 1..=nodes {
            cluster.spawn(i)?;
        }
        Ok(cluster)
    }

    pub(crate) fn len(&self) -> usize {
        self.nodes.len()
    }

    pub(crate) fn net(&self) -> Arc<Net> {
        self.net.clone()
    }

    /// Node `i`'s client URL, as the harness (in the root namespace) dials it.
    pub(crate) fn client_url(&self, i: usize) -> String {
        client_url(&self.net, i, self.settings.secure)
    }

    pub(crate) fn security(&self) -> Security {
        self.security.clone()
    }

    /// Secure runs: add `root` with the root role and enable auth (through any node).
    pub(crate) async fn enable_auth(&self) -> Result<()> {
        let endpoints: Vec<String> = self.net.nodes().map(|i| self.client_url(i)).collect();
        let plain = Security {
            user: None,
            ..self.security.clone()
        };
        let mut c = Client::with_security(&endpoints, Duration::from_secs(5), plain)?;
        c.user_add("root", ROOT_PASSWORD).await?;
        c.user_grant_role("root", "root").await?;
        c.auth_enable().await?;
        Ok(())
    }

    fn node(&mut self, i: usize) -> &mut Node {
        &mut self.nodes[i - 1]
    }

    pub(crate) fn data_dir(&self, i: usize) -> PathBuf {
        self.settings.dir.join(format!("n{i}"))
    }

    pub(crate) fn log_path(&self, i: usize) -> PathBuf {
        self.settings.dir.join(format!("n{i}.log"))
    }

    /// Starts node `i` (again): same data directory, same flags; output appended to its log.
    pub(crate) fn spawn(&mut self, i: usize) -> Result<()> {
        if self.nodes[i - 1].child.is_some() {
            bail!("node {i} is already running");
        }
        let initial_cluster = self
            .net
            .nodes()
            .map(|j| format!("n{j}={}", peer_url(&self.net, j, self.settings.secure)))
            .collect::<Vec<_>>()
            .join(",");
        let log_path = self.log_path(i);
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .with_context(|| format!("opening {}", log_path.display()))?;
        let log_err = log.try_clone().context("duplicating the log file handle")?;
        let data_dir = self.data_dir(i);
        fs::create_dir_all(&data_dir)
            .with_context(|| format!("creating {}", data_dir.display()))?;
        let mut cmd = match self.settings.server {
            super::Server::Rampart => self.rampart_command(i, &data_dir, &initial_cluster),
            super::Server::Etcd => self.etcd_command(i, &data_dir, &initial_cluster),
        };
        cmd.stdin(Stdio::null()).stdout(log).stderr(log_err);
        let child = cmd
            .spawn()
            .with_context(|| format!("starting node {i}: {cmd:?}"))?;
        tracing::info!(node = i, pid = child.id(), "node started");
        let node = self.node(i);
        node.child = Some(child);
        node.paused = false;
        Ok(())
    }

    /// `rampart kv serve` for node `i`, with TLS on both ports when secure.
    fn rampart_command(&self, i: usize, data_dir: &Path, initial_cluster: &str) -> Command {
        let bin = self.settings.bin.to_string_lossy().into_owned();
        let mut cmd = self.net.command(i, &bin);
        let secure = self.settings.secure;
        cmd.args(["kv", "serve", "--name", &format!("n{i}")])
            .arg("--data-dir")
            .arg(data_dir)
            .args([
                "--listen-client-urls",
                &client_url(&self.net, i, secure),
                "--listen-peer-urls",
                &peer_url(&self.net, i, secure),
                "--initial-cluster",
                initial_cluster,
                "--initial-cluster-state",
                "new",
                "--heartbeat-interval",
                &duration_flag(self.settings.heartbeat),
                "--election-timeout",
                &duration_flag(self.settings.election_timeout),
                "--request-timeout",
                &duration_flag(self.settings.server_request_timeout),
            ]);
        if secure {
            let certs = self.settings.dir.join("certs");
            let own = self.net.addr(i).to_string();
            let cert = certs.join(format!("{own}.pem"));
            let key = certs.join(format!("{own}-key.pem"));
            let ca = certs.join("ca.pem");
            for (flag, path) in [
                ("--cert-file", &cert),
                ("--key-file", &key),
                ("--trusted-ca-file", &ca),
                ("--peer-cert-file", &cert),
                ("--peer-key-file", &key),
                ("--peer-trusted-ca-file", &ca),
            ] {
                cmd.arg(flag).arg(path);
            }
            cmd.args(["--client-cert-auth", "--peer-client-cert-auth"]);
        }
        cmd
    }

    /// `etcd` for node `i`, as the reference to compare Rampart with.
    fn etcd_command(&self, i: usize, data_dir: &Path, initial_cluster: &str) -> Command {
        let mut cmd = self.net.command(i, "etcd");
        cmd.args(["--name", &format!("n{i}")])
            .arg("--data-dir")
            .arg(data_dir)
            .args([
                "--listen-client-urls",
                &client_url(&self.net, i, false),
                "--advertise-client-urls",
                &client_url(&self.net, i, false),
                "--listen-peer-urls",
                &peer_url(&self.net, i, false),
                "--initial-advertise-peer-urls",
                &peer_url(&self.net, i, false),
                "--initial-cluster",
                initial_cluster,
                "--initial-cluster-state",
                "new",
                "--initial-cluster-token",
                "rampart-jepsen",
                "--heartbeat-interval",
                &self.settings.heartbeat.as_millis().to_string(),
                "--election-timeout",
                &self.settings.election_timeout.as_millis().to_string(),
                "--log-level",
                "warn",
            ]);
        cmd
    }

    pub(crate) fn is_running(&self, i: usize) -> bool {
        self.nodes[i - 1].child.is_some()
    }

    /// `kill -9`: no chance to flush or say goodbye.
    pub(crate) fn kill(&mut self, i: usize) -> Result<()> {
        let Some(mut child) = self.node(i).child.take() else {
            bail!("node {i} is not running");
        };
        child.kill().with_context(|| format!("killing node {i}"))?;
        // SIGKILL cannot be caught, so this wait is short even for a paused process.
        child.wait().with_context(|| format!("reaping node {i}"))?;
        self.node(i).paused = false;
        Ok(())
    }

    /// SIGSTOP (`pause: true`) or SIGCONT: the process freezes with its sockets open, so
    /// peers and clients see silence rather than refusals, like a long GC pause.
    pub(crate) fn pause(&mut self, i: usize, pause: bool) -> Result<()> {
        let node = &mut self.nodes[i - 1];
        let Some(child) = &node.child else {
            bail!("node {i} is not running");
        };
        let signal = if pause { "-STOP" } else { "-CONT" };
        let status = Command::new("kill")
            .args([signal, &child.id().to_string()])
            .stdin(Stdio::null())
            .status()
            .context("running kill")?;
        if !status.success() {
            bail!("kill {signal} node {i} failed: {status}");
        }
        node.paused = pause;
        Ok(())
    }

    pub(crate) fn is_paused(&self, i: usize) -> bool {
        self.nodes[i - 1].paused
    }

    /// Undoes every process fault: resumes paused nodes and starts dead ones.
    pub(crate) fn revive_all(&mut self) -> Result<()> {
        for i in 1..=self.len() {
            if self.is_paused(i) {
                self.pause(i, false)?;
            }
            if !self.is_running(i) {
                self.spawn(i)?;
            }
        }
        Ok(())
    }

    /// Kills every node (resuming none first: SIGKILL works on stopped processes).
    pub(crate) fn kill_all(&mut self) -> Result<()> {
        for i in 1..=self.len() {
            if self.is_running(i) {
                self.kill(i)?;
            }
        }
        Ok(())
    }

    /// The node the cluster currently follows, and its term: of the leaders reported by
    /// the nodes that answer, the one reported in the highest term. `None` when nobody
    /// knows a leader. During a partition an old leader may still believe in itself, in
    /// an older term; the highest term is the one the majority follows.
    pub(crate) async fn leader(&self) -> Option<(usize, u64)> {
        let mut best: Option<(u64, u64)> = None;
        for (j, st) in self.statuses().await.into_iter().enumerate() {
            let Some(st) = st else { continue };
            if let Some(h) = &st.header {
                self.ids
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)[j] = h.member_id;
            }
            if st.leader == 0 || self.is_paused(j + 1) {
                continue;
            }
            if best.is_none_or(|(term, _)| st.raft_term > term) {
                best = Some((st.raft_term, st.leader));
            }
        }
        let (term, id) = best?;
        self.ids
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .iter()
            .position(|&x| x == id)
            .map(|p| (p + 1, term))
    }

    /// Maintenance.Status from every node, concurrently (each bounded by the probe timeout).
    async fn statuses(&self) -> Vec<Option<pb::StatusResponse>> {
        let mut set = tokio::task::JoinSet::new();
        for (j, probe) in self.probes.iter().enumerate() {
            let probe = probe.clone();
            set.spawn(async move {
                let st = probe.status_all().await.pop().and_then(|(_, r)| r.ok());
                (j, st)
            });
        }
        let mut out = vec![None; self.probes.len()];
        while let Some(r) = set.join_next().await {
            if let Ok((j, st)) = r {
                out[j] = st;
            }
        }
        out
    }

    /// Waits until a linearizable read succeeds on every running, unpaused node (so a
    /// leader exists and every node can reach it), or the deadline passes.
    pub(crate) async fn wait_ready(&self, within: Duration) -> Result<()> {
        let deadline = Instant::now() + within;
        let mut last_err = String::from("no attempt made");
        loop {
            let mut all = true;
            for (j, probe) in self.probes.iter().enumerate() {
                if !self.is_running(j + 1) || self.is_paused(j + 1) {
                    continue;
                }
                let mut probe = probe.clone();
                let read = probe.range(pb::RangeRequest {
                    key: b"jepsen-ready".to_vec(),
                    ..Default::default()
                });
                if let Err(e) = read.await {
                    all = false;
                    last_err = format!("node {}: {e}", j + 1);
                    break;
                }
            }
            if all {
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!(
                    "the cluster did not become ready within {within:?} (last error: \
                     {last_err}); see the node logs in {}",
                    self.settings.dir.display()
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// The directory holding the node data and logs.
    pub(crate) fn dir(&self) -> &Path {
        &self.settings.dir
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for (j, node) in self.nodes.iter_mut().enumerate() {
            if let Some(mut child) = node.child.take()
                && let Err(e) = child.kill().and_then(|()| child.wait().map(drop))
            {
                tracing::warn!(node = j + 1, error = %e, "could not kill node");
            }
        }
    }
}

fn scheme(secure: bool) -> &'static str {
    if secure { "https" } else { "http" }
}

fn client_url(net: &Net, i: usize, secure: bool) -> String {
    format!("{}://{}:{CLIENT_PORT}", scheme(secure), net.addr(i))
}

fn peer_url(net: &Net, i: usize, secure: bool) -> String {
    format!("{}://{}:{PEER_PORT}", scheme(secure), net.addr(i))
}

//! One store node: storage, Raft and the leader's duties (expiring leases). Every request
//! that needs the leader goes through here: writes are proposed locally or forwarded,
//! linearizable reads get a read index from the leader, and each waits at most
//! `request_timeout` so that a cluster without quorum answers UNAVAILABLE instead of hanging.
//!
//! The write path (proposal batching, forwarding) is in `node/writes.rs`, linearizable reads
//! (read-index rounds) in `node/reads.rs`, membership changes in `membership.rs`.
//!
//! The node knows nothing of gRPC serving: [`KvNode::start`] (in `server.rs`) opens it here
//! and then serves the client and peer ports on it.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use openraft::error::RaftError;
use openraft::{Config, ServerState, SnapshotPolicy};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tonic::transport::{Channel, ClientTlsConfig, ServerTlsConfig};

use crate::error::KvError;
use crate::log_store::LogStore;
use crate::network::{Network, peer_client};
use crate::proto::etcdserverpb as pb;
use crate::proto::peer::LeaseId;
use crate::proto::peer::peer_client::PeerClient;
use crate::state::{self, Shared, StateMachine};
use crate::tls::{self, TlsError, TlsFiles};
use crate::types::{Command, Member, Raft, member_id};
use crate::watch;

mod reads;
mod writes;

use reads::ReadRounds;
use writes::{Proposal, propose_loop};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClusterState {
    /// Bootstrap a new cluster from `initial_cluster` (ignored once the data directory holds
    /// a log).
    New,
    /// Join a running cluster: wait to be added (`member add`) and replicated to.
    Existing,
}

#[derive(Debug, Clone)]
pub struct NodeConfig {
    pub name: String,
    pub data_dir: PathBuf,
    pub listen_client: SocketAddr,
    pub advertise_client: String,
    pub listen_peer: SocketAddr,
    pub advertise_peer: String,
    /// `(name, peer URL)` of every initial member.
    pub initial_cluster: Vec<(String, String)>,
    pub cluster_state: ClusterState,
    /// Longest wait for a write or linearizable read (quorum loss ends in UNAVAILABLE).
    pub request_timeout: Duration,
    pub heartbeat: Duration,
    pub election_timeout: Duration,
    /// Build a snapshot (and allow log compaction) every this many applied entries.
    pub snapshot_count: u64,
    /// Revisions of history kept for watches and past reads (0: until an explicit Compact).
    pub history_retention: u64,
    /// Largest request accepted (etcd's `--max-request-bytes`, 1.5 MiB by default).
    pub max_request_bytes: usize,
    pub watch_progress_interval: Duration,
    /// How long an auth token stays valid (etcd's `--auth-token-ttl`, 300 s by default).
    pub auth_token_ttl: Duration,
    /// Largest state file before NOSPACE is raised (etcd's `--quota-backend-bytes`).
    pub quota_backend_bytes: u64,
    /// TLS on the client port (etcd's `--cert-file` ...); `None`: plain HTTP/2.
    pub client_tls: Option<TlsFiles>,
    /// Mutual TLS between members (etcd's `--peer-cert-file` ...); `None`: plain HTTP/2.
    pub peer_tls: Option<TlsFiles>,
}

impl NodeConfig {
    /// A single-node store with etcd's default addresses under `data_dir`.
    pub fn single(name: &str, data_dir: PathBuf, client: SocketAddr, peer: SocketAddr) -> Self {
        let advertise_peer = format!("http://{peer}");
        NodeConfig {
            name: name.to_string(),
            data_dir,
            listen_client: client,
            advertise_client: format!("http://{client}"),
            listen_peer: peer,
            advertise_peer: advertise_peer.clone(),
            initial_cluster: vec![(name.to_string(), advertise_peer)],
            cluster_state: ClusterState::New,
            request_timeout: Duration::from_secs(5),
            heartbeat: Duration::from_millis(100),
            election_timeout: Duration::from_millis(1000),
            snapshot_count: 10_000,
            history_retention: 100_000,
            max_request_bytes: 3 * 512 * 1024,
            watch_progress_interval: Duration::from_secs(600),
            auth_token_ttl: Duration::from_secs(300),
            quota_backend_bytes: crate::quota::DEFAULT_QUOTA_BYTES,
            client_tls: None,
            peer_tls: None,
        }
    }
}

/// Why a node could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot create the data directory {path}: {source}")]
    DataDir {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Log(#[from] crate::log_store::OpenError),
    #[error(transparent)]
    State(#[from] state::StateOpenError),
    #[error("invalid Raft settings: {0}")]
    Config(String),
    #[error("cannot listen on {addr} ({what}): {source}")]
    Listen {
        addr: SocketAddr,
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot start Raft: {0}")]
    Raft(String),
    #[error("this node's peer URL {url} is not in --initial-cluster")]
    NotInCluster { url: String },
    #[error(transparent)]
    Tls(#[from] TlsError),
}

/// A running node.
pub struct KvNode {
    pub id: u64,
    pub config: NodeConfig,
    pub raft: Raft,
    pub shared: Arc<Shared>,
    peers: Mutex<HashMap<u64, PeerClient<Channel>>>,
    reads: Mutex<ReadRounds>,
    proposals: mpsc::UnboundedSender<Proposal>,
    shutdown: CancellationToken,
    tasks: Mutex<JoinSet<()>>,
    /// Serves the Watch streams; also makes this node's response headers.
    watches: Arc<watch::Hub>,
    pub client_addr: SocketAddr,
    pub peer_addr: SocketAddr,
    /// How this node connects to other members (mutual TLS), if configured.
    pub(crate) peer_client_tls: Option<ClientTlsConfig>,
}

impl std::fmt::Debug for KvNode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KvNode")
            .field("id", &self.id)
            .field("name", &self.config.name)
            .finish_non_exhaustive()
    }
}

/// A node's storage and Raft, running but not serving yet: what [`KvNode::open`] hands to
/// [`KvNode::assemble`].
pub(crate) struct Opened {
    id: u64,
    raft: Raft,
    shared: Arc<Shared>,
    peer_client_tls: Option<ClientTlsConfig>,
}

/// The server side of TLS on the client and peer ports, read with the rest of the config.
pub(crate) struct ServerTls {
    pub(crate) client: Option<ServerTlsConfig>,
    pub(crate) peer: Option<ServerTlsConfig>,
}

/// Where proposed writes wait for the proposer ([`KvNode::spawn_duties`] starts it).
pub(crate) type ProposalQueue = mpsc::UnboundedReceiver<Proposal>;

impl KvNode {
    /// Open storage and start Raft; the first step of [`KvNode::start`].
    pub(crate) async fn open(config: &NodeConfig) -> Result<(Opened, ServerTls), StartError> {
        std::fs::create_dir_all(&config.data_dir).map_err(|source| StartError::DataDir {
            path: config.data_dir.display().to_string(),
            source,
        })?;
        let log = LogStore::open(&config.data_dir.join("raft-log.redb"))?;
        state::verify_snapshot_file(&config.data_dir)?;
        let (sm, shared) = StateMachine::open(&config.data_dir, config.history_retention)?;
        let id = member_id(&config.advertise_peer);

        let election_ms = u64::try_from(config.election_timeout.as_millis()).unwrap_or(1000);
        let raft_config = Config {
            cluster_name: "rampart-kv".into(),
            heartbeat_interval: u64::try_from(config.heartbeat.as_millis()).unwrap_or(100),
            election_timeout_min: election_ms,
            election_timeout_max: election_ms * 2,
            snapshot_policy: SnapshotPolicy::LogsSinceLast(config.snapshot_count),
            max_in_snapshot_log_to_keep: 1000,
            ..Default::default()
        }
        .validate()
        .map_err(|e| StartError::Config(e.to_string()))?;
        // TLS files are read now, so a bad path stops the start with the flag's file named.
        let server_tls = ServerTls {
            client: config
                .client_tls
                .as_ref()
                .map(tls::server_config)
                .transpose()?,
            peer: config
                .peer_tls
                .as_ref()
                .map(tls::server_config)
                .transpose()?,
        };
        let peer_client_tls = config
            .peer_tls
            .as_ref()
            .map(tls::client_config)
            .transpose()?;
        let network = Network {
            connect_timeout: config.heartbeat.max(Duration::from_millis(200)),
            tls: peer_client_tls.clone(),
        };
        let raft = Raft::new(id, Arc::new(raft_config), network, log, sm)
            .await
            .map_err(|e| StartError::Raft(e.to_string()))?;
        let opened = Opened {
            id,
            raft,
            shared,
            peer_client_tls,
        };
        Ok((opened, server_tls))
    }

    /// The node over `opened`, its servers bound to `client_addr` and `peer_addr`, and the
    /// queue its proposer will read.
    pub(crate) fn assemble(
        config: NodeConfig,
        opened: Opened,
        client_addr: SocketAddr,
        peer_addr: SocketAddr,
    ) -> (Arc<KvNode>, ProposalQueue) {
        let Opened {
            id,
            raft,
            shared,
            peer_client_tls,
        } = opened;
        let (proposals_tx, proposals_rx) = mpsc::unbounded_channel();
        let shutdown = CancellationToken::new();
        let watches = Arc::new(watch::Hub::new(
            shared.clone(),
            raft.clone(),
            id,
            shutdown.clone(),
            config.watch_progress_interval,
        ));
        let node = Arc::new(KvNode {
            id,
            config,
            raft,
            shared,
            peers: Mutex::new(HashMap::new()),
            reads: Mutex::new(ReadRounds::default()),
            proposals: proposals_tx,
            shutdown,
            tasks: Mutex::new(JoinSet::new()),
            watches,
            client_addr,
            peer_addr,
            peer_client_tls,
        });
        (node, proposals_rx)
    }

    /// Run `task` as one of this node's tasks: [`KvNode::shutdown`] stops it.
    pub(crate) fn spawn(&self, task: impl Future<Output = ()> + Send + 'static) {
        self.tasks
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .spawn(task);
    }

    /// Start the node's own duties: the proposer, lease expiry (while it leads) and
    /// publishing its name and client URL.
    pub(crate) fn spawn_duties(self: &Arc<Self>, proposals: ProposalQueue) {
        self.spawn(propose_loop(self.raft.clone(), proposals));
        self.spawn(lease_expiry_loop(self.clone()));
        self.spawn(publish_attributes(self.clone()));
    }

    /// Initialize a new cluster from `initial_cluster`, unless the log already holds one.
    pub(crate) async fn bootstrap(&self) -> Result<(), StartError> {
        let initialized = self
            .raft
            .is_initialized()
            .await
            .map_err(|e| StartError::Raft(e.to_string()))?;
        if initialized {
            return Ok(());
        }
        let members: BTreeMap<u64, Member> = self
            .config
            .initial_cluster
            .iter()
            .map(|(name, url)| {
                (
                    member_id(url),
                    Member {
                        name: name.clone(),
                        peer_url: url.clone(),
                    },
                )
            })
            .collect();
        if !members.contains_key(&self.id) {
            return Err(StartError::NotInCluster {
                url: self.config.advertise_peer.clone(),
            });
        }
        // Every initial member initializes with the same membership; openraft accepts that,
        // and whichever vote wins first leads.
        match self.raft.initialize(members).await {
            Ok(()) => Ok(()),
            Err(RaftError::APIError(e)) => {
                tracing::debug!(error = %e, "already initialized");
                Ok(())
            }
            Err(e) => Err(StartError::Raft(e.to_string())),
        }
    }

    /// Stop serving and stop Raft.
    pub async fn shutdown(&self) {
        self.shutdown.cancel();
        if let Err(e) = self.raft.shutdown().await {
            tracing::warn!(error = %e, "raft shutdown");
        }
        let mut tasks = std::mem::take(
            &mut *self
                .tasks
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        );
        tasks.abort_all();
        while tasks.join_next().await.is_some() {}
    }

    /// Resolves when Raft has stopped on an error (a failed disk write, for example): the
    /// member can no longer take part and should exit so that it is restarted once the
    /// cause is fixed (etcd does the same).
    pub async fn stopped_on_error(&self) -> String {
        let mut rx = self.raft.metrics();
        loop {
            if let Err(e) = &rx.borrow_and_update().running_state {
                return e.to_string();
            }
            if rx.changed().await.is_err() {
                return "raft stopped".into();
            }
        }
    }

    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// A response header for this node at `revision`.
    pub fn header(&self, revision: i64) -> pb::ResponseHeader {
        self.watches.header(revision)
    }

    /// The hub this node's Watch streams are served from.
    pub(crate) fn watches(&self) -> &Arc<watch::Hub> {
        &self.watches
    }

    pub(crate) fn deadline(&self) -> Instant {
        Instant::now() + self.config.request_timeout
    }

    async fn wait_leader(&self, deadline: Instant) -> Result<u64, KvError> {
        let mut rx = self.raft.metrics();
        loop {
            if let Some(l) = rx.borrow_and_update().current_leader {
                return Ok(l);
            }
            match tokio::time::timeout_at(deadline, rx.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => return Err(KvError::Internal("raft stopped".into())),
                Err(_) => return Err(KvError::NoLeader),
            }
        }
    }

    fn peer(&self, id: u64) -> Result<PeerClient<Channel>, KvError> {
        let mut peers = self
            .peers
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(c) = peers.get(&id) {
            return Ok(c.clone());
        }
        let metrics = self.raft.metrics().borrow().clone();
        let node = metrics
            .membership_config
            .membership()
            .get_node(&id)
            .cloned()
            .ok_or(KvError::NoLeader)?;
        let client = peer_client(
            &node.peer_url,
            Duration::from_secs(1),
            self.peer_client_tls.as_ref(),
        )
        .map_err(KvError::Internal)?;
        peers.insert(id, client.clone());
        Ok(client)
    }

    /// The keys attached to a lease (for the permission check of LeaseRevoke).
    pub fn lease_keys(&self, id: i64) -> Vec<Vec<u8>> {
        self.shared
            .lease_keys(id)
            .ok()
            .flatten()
            .unwrap_or_default()
    }

    /// Renew a lease (on the leader; forwarded otherwise). TTL 0 if it does not exist.
    pub async fn lease_keep_alive(&self, id: i64) -> Result<i64, KvError> {
        let deadline = self.deadline();
        let leader = self.wait_leader(deadline).await?;
        if leader == self.id {
            let mut lessor = self
                .shared
                .lessor
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            return Ok(lessor.renew(id).unwrap_or(0));
        }
        let mut client = self.peer(leader)?;
        match tokio::time::timeout_at(deadline, client.lease_keep_alive(LeaseId { id })).await {
            Ok(Ok(r)) => Ok(r.into_inner().ttl),
            Ok(Err(_)) | Err(_) => Err(KvError::Timeout),
        }
    }

    /// Seconds left on a lease and its granted TTL, as the leader sees it.
    pub async fn lease_time_to_live(&self, id: i64) -> Result<Option<(i64, i64)>, KvError> {
        let deadline = self.deadline();
        let leader = self.wait_leader(deadline).await?;
        if leader == self.id {
            let lessor = self
                .shared
                .lessor
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            return Ok(lessor.remaining(id));
        }
        let mut client = self.peer(leader)?;
        match tokio::time::timeout_at(deadline, client.lease_time_to_live(LeaseId { id })).await {
            Ok(Ok(r)) => {
                let r = r.into_inner();
                Ok((r.ttl >= 0).then_some((r.ttl, r.granted)))
            }
            Ok(Err(_)) | Err(_) => Err(KvError::Timeout),
        }
    }

    /// The smallest TTL granted: a lease must outlive a leader election (as in etcd).
    pub fn min_lease_ttl(&self) -> i64 {
        let ms = self.config.election_timeout.as_millis() * 3;
        i64::try_from(ms.div_ceil(1000)).unwrap_or(1).max(1)
    }

    pub fn is_leader(&self) -> bool {
        let m = self.raft.metrics();
        let m = m.borrow();
        m.state == ServerState::Leader
    }

    pub fn max_request_bytes(&self) -> usize {
        self.config.max_request_bytes
    }
}

/// The leader revokes expired leases through the log; a new leader first gives every lease
/// a fresh TTL (it cannot know how long the old leader's keep-alives still had to run).
async fn lease_expiry_loop(node: Arc<KvNode>) {
    let mut led_term: Option<u64> = None;
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = node.shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let (leader, term) = {
            let m = node.raft.metrics();
            let m = m.borrow();
            (m.state == ServerState::Leader, m.current_term)
        };
        if !leader {
            led_term = None;
            continue;
        }
        if led_term != Some(term) {
            led_term = Some(term);
            node.shared
                .lessor
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .refresh_all();
            continue;
        }
        let expired = node
            .shared
            .lessor
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .expired(std::time::Instant::now());
        for id in expired {
            match node.write(Command::LeaseRevoke { id }).await {
                Ok(_) | Err(KvError::LeaseNotFound) => {
                    tracing::debug!(lease = id, "lease expired and revoked");
                }
                Err(e) => {
                    tracing::warn!(lease = id, error = %e, "revoking an expired lease failed");
                    break;
                }
            }
        }
    }
}

/// Publish this node's name and client URL through the log, retrying until it lands.
async fn publish_attributes(node: Arc<KvNode>) {
    let want = state::MemberAttrs {
        name: node.config.name.clone(),
        client_urls: vec![node.config.advertise_client.clone()],
    };
    loop {
        let current = node
            .shared
            .members
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(&node.id)
            .cloned();
        if current.as_ref() == Some(&want) {
            return;
        }
        let cmd = Command::SetMemberAttrs {
            id: node.id,
            name: want.name.clone(),
            client_urls: want.client_urls.clone(),
        };
        if node.write(cmd).await.is_ok() {
            return;
        }
        tokio::select! {
            () = node.shutdown.cancelled() => return,
            () = tokio::time::sleep(Duration::from_millis(500)) => {}
        }
    }
}

//! Start real store nodes in-process on loopback ports.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rampart_kv::client::Client;
use rampart_kv::proto::etcdserverpb as pb;
use rampart_kv::{ClusterState, KvNode, NodeConfig};

/// Sockets bound by [`free_addr`], held until a node starts on them ([`start`]).
static HELD: std::sync::Mutex<Vec<std::net::TcpListener>> = std::sync::Mutex::new(Vec::new());

/// A loopback address bound here and held, so no other test can take it before the node
/// that [`start`]s on it.
pub(crate) fn free_addr() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    HELD.lock().unwrap().push(l);
    addr
}

/// The held socket for `addr`, if [`free_addr`] still holds it.
fn take_held(addr: SocketAddr) -> Option<std::net::TcpListener> {
    let mut held = HELD.lock().unwrap();
    let at = held
        .iter()
        .position(|l| l.local_addr().is_ok_and(|a| a == addr))?;
    Some(held.swap_remove(at))
}

/// Starts a node: on the sockets [`free_addr`] held for it, the first time; binding its
/// addresses again on a restart (its own earlier run released them).
pub(crate) async fn start(config: NodeConfig) -> Result<Arc<KvNode>, rampart_kv::node::StartError> {
    match (
        take_held(config.listen_client),
        take_held(config.listen_peer),
    ) {
        (Some(client), Some(peer)) => {
            KvNode::start_on(config, rampart_kv::Listeners { client, peer }).await
        }
        _ => KvNode::start(config).await,
    }
}

/// Configs for an `n`-node cluster with data under `dir/nodeI`.
pub(crate) fn cluster_configs(dir: &Path, n: usize) -> Vec<NodeConfig> {
    let addrs: Vec<(SocketAddr, SocketAddr)> = (0..n).map(|_| (free_addr(), free_addr())).collect();
    let initial: Vec<(String, String)> = addrs
        .iter()
        .enumerate()
        .map(|(i, (_, peer))| (format!("n{i}"), format!("http://{peer}")))
        .collect();
    addrs
        .iter()
        .enumerate()
        .map(|(i, (client, peer))| {
            let mut c = NodeConfig::single(
                &format!("n{i}"),
                dir.join(format!("node{i}")),
                *client,
                *peer,
            );
            c.initial_cluster = initial.clone();
            c.request_timeout = Duration::from_secs(3);
            c.heartbeat = Duration::from_millis(50);
            c.election_timeout = Duration::from_millis(300);
            c
        })
        .collect()
}

pub(crate) async fn start_all(configs: &[NodeConfig]) -> Vec<Arc<KvNode>> {
    let mut nodes = Vec::new();
    for c in configs {
        nodes.push(start(c.clone()).await.unwrap());
    }
    nodes
}

/// Start a node again from its data directory (waits for the previous instance's files).
pub(crate) async fn restart(config: &NodeConfig) -> Arc<KvNode> {
    let mut c = config.clone();
    c.cluster_state = ClusterState::Existing;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        match start(c.clone()).await {
            Ok(n) => return n,
            Err(e) if tokio::time::Instant::now() < deadline => {
                let _ = e;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("restart failed: {e}"),
        }
    }
}

pub(crate) fn client(nodes: &[&NodeConfig]) -> Client {
    let eps: Vec<String> = nodes.iter().map(|c| c.listen_client.to_string()).collect();
    Client::new(&eps, Duration::from_secs(5)).unwrap()
}

pub(crate) async fn leader_of(nodes: &[Arc<KvNode>]) -> usize {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(i) = nodes.iter().position(|n| n.is_leader()) {
            return i;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no leader elected within 10 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Polls `f` until it returns true, failing the test after `within` with `what`.
pub(crate) async fn eventually<F, Fut>(within: Duration, what: &str, f: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    assert!(
        rampart_test_support::eventually(within, f).await,
        "timed out waiting for: {what}"
    );
}

/// A put that asks for the previous value.
pub(crate) fn put(key: &str, value: &str) -> pb::PutRequest {
    pb::PutRequest {
        key: key.into(),
        value: value.into(),
        prev_kv: true,
        ..Default::default()
    }
}

pub(crate) fn get(key: &str) -> pb::RangeRequest {
    pb::RangeRequest {
        key: key.into(),
        ..Default::default()
    }
}

/// Starting a node from `config` must fail: the error text (after waiting out the previous
/// instance's lock on its files).
pub(crate) async fn refused_start(config: &NodeConfig) -> String {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        match start(config.clone()).await {
            Ok(_) => panic!(
                "a node started from damaged files in {}",
                config.data_dir.display()
            ),
            Err(e)
                if e.to_string().contains("already open")
                    && tokio::time::Instant::now() < deadline =>
            {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => return e.to_string(),
        }
    }
}

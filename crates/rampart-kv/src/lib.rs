//! Rampart's replicated config store: an etcd v3-compatible key-value store on openraft.
//!
//! - **Consensus:** openraft 0.9 ([`types::TypeConfig`]); peers talk gRPC ([`network`]).
//! - **Storage:** one redb file for the Raft log and vote ([`log_store`], fsync before a
//!   write is acknowledged) and one for the MVCC state machine ([`state`]). The state
//!   machine commits without fsync and is made durable before every snapshot; after a crash
//!   openraft replays the committed log on top of it, so nothing acknowledged is lost.
//! - **API:** etcd's v3 gRPC services KV, Watch, Lease, Cluster, Maintenance.Status
//!   ([`service`]) and Auth ([`auth_service`]), wire-compatible with etcd's clients,
//!   `etcdctl` included.
//! - **Security:** membership changes that would lose quorum are refused ([`membership`]);
//!   users, roles and key-range permissions live in the replicated state ([`auth`]) and are
//!   enforced per request ([`access`]); the space quota raises etcd's NOSPACE alarm
//!   ([`quota`]); both ports speak TLS, mutual between members ([`tls`]).
//! - **Reads** are linearizable by default (openraft's read-index: the leader confirms its
//!   leadership with a quorum, and the serving node waits until it has applied that index),
//!   serializable on request. Followers forward writes and read-index requests to the leader.
// Panics on outside input are forbidden here; unit tests may unwrap (clippy.toml).
#![warn(clippy::unwrap_used)]
// openraft's StorageError and RaftError are large by design; they are rare, not hot.
#![allow(clippy::result_large_err)]

pub mod access;
pub mod auth;
pub mod auth_service;
pub mod client;
pub mod error;
pub mod log_store;
pub mod membership;
pub mod network;
pub mod node;
pub mod proto;
pub mod quota;
mod server;
pub mod service;
pub mod state;
pub mod tls;
pub mod types;
pub mod watch;

pub use error::KvError;
pub use node::{ClusterState, KvNode, NodeConfig};
pub use server::Listeners;

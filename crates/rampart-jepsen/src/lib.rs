//! The verification side of `rampart-kv`: Jepsen-style tools that judge the store from the
//! outside, by what its clients saw, rather than by trusting its own logs.
//!
//! - [`history`]: the JSON-lines history format a test harness records (one line per
//!   invocation and per completion), a parser that pairs them into operations, and a
//!   thread-safe [`history::HistoryWriter`] for the harness.
//! - [`checker`]: a linearizability checker for a register-per-key model (read, write,
//!   compare-and-set), so a test run ends in a verdict, not in someone reading logs.
//! - [`netns`]: the network nemesis: nodes in their own network namespaces on a private
//!   bridge, with partitions made by iptables inside those namespaces (Linux, root).
//!
//! - [`harness`]: the Jepsen-style test itself: a real `rampart` cluster in those
//!   namespaces, concurrent clients recording a history, a nemesis (kills, pauses,
//!   partitions) on a schedule, and the checker's verdict. The `rampart-jepsen` binary
//!   runs it from the command line.
//!
//! It knows nothing about `rampart-kv`'s internals: the harness talks to the nodes only
//! through the etcd API and signals, and the checker only needs a history, so it can
//! equally judge etcd.
// Panics on outside input are forbidden here; unit tests may unwrap (clippy.toml).
#![warn(clippy::unwrap_used)]

pub mod checker;
pub mod harness;
pub mod history;
pub mod netns;

pub use checker::{CheckOptions, Report, check_file, check_history};
pub use history::{HistoryError, HistoryWriter, Op};

//! Rampart's xDS v3 control plane.
//!
//! A Rampart [`Config`](rampart_config::Config) becomes Envoy resources ([`translate`]):
//! listeners with an HTTP connection manager fed by RDS, route configurations, EDS clusters
//! and their load assignments, all over ADS. A [`Cache`] holds the current [`Snapshot`];
//! every ADS stream, State of the World ([`sotw`]) or Delta ([`delta`]), serves the latest
//! one and pushes only what its client lacks, one response per type in flight, without ever
//! answering a NACK with the same version again.
// Panics on outside input are forbidden here; unit tests may unwrap (clippy.toml).
#![warn(clippy::unwrap_used)]

mod delta;
pub mod desired;
mod envoy_filters;
pub mod extra;
mod pbtime;
pub mod reverse;
mod server;
pub mod snapshot;
mod sotw;
pub mod status;
mod stream;
pub mod translate;

/// Envoy's API types, for clients of this crate (Rampart proxies, tests).
pub use envoy_filters::POLICY_CLUSTER;
pub use envoy_types;
pub use server::{ADMIT_BURST, ADMIT_PER_SECOND, Ads, Cache};
pub use snapshot::Snapshot;

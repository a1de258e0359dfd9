//! Rampart's multi-tenant policy engine: Rego bundles evaluated by regorus.
//!
//! Each tenant has a [`Bundle`] (Rego modules, a data document, an entry point such as
//! `data.authz.decision`). [`PolicyEngine`] compiles bundles once, runs their `test_*`
//! rules before accepting them, swaps them in atomically, caches compiled forms under a
//! count and memory bound (LRU), and decides per request without a lock on the hot path
//! (each worker thread evaluates on its own clone of the compiled engine). Bundles come
//! from a watched directory ([`watch::watch_dir`]) or through [`PolicyEngine::put_bundle`].
// Panics on outside input are forbidden here; unit tests may unwrap (clippy.toml).
#![warn(clippy::unwrap_used)]

pub mod bundle;
pub mod compiled;
pub mod decision;
pub mod engine;
mod equivalence;
pub mod error;
pub mod log;
pub mod status;
pub mod watch;

pub use bundle::{Bundle, BundleError};
pub use compiled::{Compiled, TestReport};
pub use decision::Decision;
pub use engine::{
    DecideError, Decided, EngineConfig, PolicyEngine, PolicyMetrics, ReloadReport, TracedFile,
};
pub use log::DecisionLogConfig;
pub use regorus::Value;
pub use status::{Decisions, Rejection, TenantStatus};

//! Rampart's WASM layer on wasmtime.
//!
//! - [`Sandbox`]: the one engine configuration every guest runs under — the pooling
//!   allocator, per-instance memory, table and stack caps, epoch deadlines driven by a
//!   ticker thread, no threads — and stores that carry those limits.
//! - [`signing`]: Ed25519 detached signatures over a module's bytes and the trusted keys
//!   that may sign them; an unsigned or wrongly signed module is refused.
//! - [`Profile`]: what a guest may import, deny by default: `clock-only` (an allow-list of
//!   clock functions; anything else fails at link time, named) or `wasi` (WASI preview 1
//!   and 2 with explicit preopened directories, environment and arguments; no sockets).
//! - [`ModuleCache`]: compiled modules kept on disk, keyed by the module's hash and the
//!   engine's compatibility hash, so a restart deserializes instead of compiling.
//! - [`command`]: runs a WASI command module or component under a profile, as
//!   `wasmtime run` does, and [`inspect`] lists a module's imports, exports and memories.
// Panics on outside input are forbidden here; unit tests may unwrap (clippy.toml).
#![warn(clippy::unwrap_used)]

mod cache;
pub mod command;
mod error;
pub mod inspect;
mod profile;
pub mod proxy_wasm;
mod sandbox;
pub mod signing;

pub use cache::ModuleCache;
pub use error::WasmError;
pub use profile::{CLOCK_ONLY, Preopen, Profile, WasiGrants};
pub use sandbox::{Limits, Sandbox, StoreLimits, TICK};

//! A deployed function as the store keeps it (`/rampart/functions/<name>`, JSON): its
//! component by digest, its signature, and the limits each invocation runs under.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::blob::BlobRef;

/// Where function specs live in the store.
pub const SPEC_PREFIX: &str = "/rampart/functions/";

/// Per-invocation memory unless the deploy says otherwise.
pub const DEFAULT_MEMORY: u64 = 64 << 20;
/// The most any function may ask for: the pool's slot size.
pub const MAX_MEMORY: u64 = 256 << 20;
/// A Rust guest needs its default stack and a heap to start.
pub const MIN_MEMORY: u64 = 2 << 20;

fn default_memory() -> u64 {
    DEFAULT_MEMORY
}
fn default_concurrency() -> u32 {
    64
}
fn default_queue() -> u32 {
    256
}
fn default_timeout_ms() -> u64 {
    5_000
}
fn default_response_bytes() -> u64 {
    16 << 20
}

/// One function.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FunctionSpec {
    pub name: String,
    /// The component.
    pub blob: BlobRef,
    /// Base64 Ed25519 signature of the component (as `rampart wasm sign` makes), checked
    /// against the gateway's `wasm.trusted_keys`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature: Option<String>,
    /// Run without a signature (development only; each gateway logs it).
    #[serde(default)]
    pub allow_unsigned: bool,
    /// The environment the function sees (`wasi:cli/environment`).
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Invocations running at once on one gateway.
    #[serde(default = "default_concurrency")]
    pub max_concurrency: u32,
    /// Requests waiting for a slot; past this, 503 at once.
    #[serde(default = "default_queue")]
    pub max_queue: u32,
    /// Linear memory of one invocation, in bytes.
    #[serde(default = "default_memory")]
    pub memory_bytes: u64,
    /// One invocation, from its start to its last response byte.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    /// The most a response body may carry.
    #[serde(default = "default_response_bytes")]
    pub max_response_bytes: u64,
    /// Clusters the function may send requests to (`http://<cluster>/...`); nothing else.
    #[serde(default)]
    pub clusters: Vec<String>,
    /// `HOST/PATH` the deploy routed to it, if any (what `rampart fn delete` unroutes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub route: Option<String>,
}

impl FunctionSpec {
    /// A spec for `blob` with every setting at its default.
    pub fn new(name: &str, blob: BlobRef) -> Self {
        Self {
            name: name.to_owned(),
            blob,
            signature: None,
            allow_unsigned: false,
            env: BTreeMap::new(),
            max_concurrency: default_concurrency(),
            max_queue: default_queue(),
            memory_bytes: default_memory(),
            timeout_ms: default_timeout_ms(),
            max_response_bytes: default_response_bytes(),
            clusters: Vec::new(),
            route: None,
        }
    }

    /// A short digest of the whole spec: what `rampart fn deploy` prints and the gateway's
    /// `/functions/NAME` shows once that exact version runs.
    pub fn version(&self) -> String {
        let json = serde_json::to_vec(self).unwrap_or_default();
        crate::blob::sha256_hex(&json)[..16].to_owned()
    }

    pub fn timeout(&self) -> Duration {
        Duration::from_millis(self.timeout_ms)
    }

    /// Every problem, each with its field's name.
    pub fn check(&self) -> Result<(), Vec<String>> {
        let mut errors = Vec::new();
        let mut err = |field: &str, msg: String| errors.push(format!("{field}: {msg}"));
        if !rampart_config::is_function_name(&self.name) {
            err(
                "name",
                format!(
                    "{:?} is not a function name (1-63 of a-z, 0-9 and '-')",
                    self.name
                ),
            );
        }
        if let Err(e) = self.blob.prefix() {
            err("blob.sha256", e.to_string());
        }
        if !(MIN_MEMORY..=MAX_MEMORY).contains(&self.memory_bytes) {
            err(
                "memory_bytes",
                format!(
                    "{} is outside {MIN_MEMORY}..={MAX_MEMORY}",
                    self.memory_bytes
                ),
            );
        }
        if self.max_concurrency == 0 {
            err("max_concurrency", "must be at least 1".into());
        }
        if !(1..=600_000).contains(&self.timeout_ms) {
            err("timeout_ms", "must be between 1 ms and 10 minutes".into());
        }
        if self.max_response_bytes == 0 {
            err("max_response_bytes", "must be at least 1".into());
        }
        for k in self.env.keys() {
            if k.is_empty() || k.contains('=') || k.contains('\0') {
                err(&format!("env.{k}"), "not a variable name".into());
            }
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors)
        }
    }
}

/// `64MiB`, `512KiB`, `1GiB`, `2M`, `65536`: a size in bytes.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a size (e.g. 64MiB)"))?;
    let mult: u64 = match unit.trim() {
        "" | "B" => 1,
        "K" | "KiB" | "k" => 1 << 10,
        "M" | "MiB" => 1 << 20,
        "G" | "GiB" => 1 << 30,
        other => {
            return Err(format!(
                "unknown unit {other:?} in {s:?}: use KiB, MiB or GiB"
            ));
        }
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("{s:?} is too large"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> FunctionSpec {
        FunctionSpec::new("hello", BlobRef::of(b"x", 4).unwrap())
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("64MiB"), Ok(64 << 20));
        assert_eq!(parse_size("512KiB"), Ok(512 << 10));
        assert_eq!(parse_size("1G"), Ok(1 << 30));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert!(parse_size("64 furlongs").is_err());
        assert!(parse_size("MiB").is_err());
        assert!(parse_size("99999999999999999999GiB").is_err());
    }

    #[test]
    fn defaults_pass_and_errors_name_fields() {
        assert_eq!(spec().check(), Ok(()));
        let mut bad = spec();
        bad.name = "Hello World".into();
        bad.memory_bytes = 1 << 30;
        bad.max_concurrency = 0;
        bad.env.insert("A=B".into(), "x".into());
        let errors = bad.check().unwrap_err();
        for field in ["name:", "memory_bytes:", "max_concurrency:", "env.A=B:"] {
            assert!(
                errors.iter().any(|e| e.starts_with(field)),
                "{field} in {errors:?}"
            );
        }
    }

    #[test]
    fn round_trips_as_json_and_rejects_unknown_fields() {
        let s = spec();
        let text = serde_json::to_string(&s).unwrap();
        assert_eq!(serde_json::from_str::<FunctionSpec>(&text).unwrap(), s);
        let mut v: serde_json::Value = serde_json::from_str(&text).unwrap();
        v["memroy_bytes"] = 5.into();
        assert!(serde_json::from_value::<FunctionSpec>(v).is_err());
    }
}

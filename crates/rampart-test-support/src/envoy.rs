//! Envoy's `.proto` files, as the envoy-types crate ships them in its source
//! (`<cargo home>/registry/src/*/envoy-types-<version>/proto`): for tests that check
//! Rampart's xDS output with tools Rampart did not write (protox and PGV rules, Python's
//! protobuf and gRPC).

use std::path::{Path, PathBuf};

/// Set to a `proto` directory laid out like envoy-types' to use it instead of the crate's.
const OVERRIDE: &str = "ENVOY_PROTO_DIR";
/// A file every envoy-types `proto` directory has.
const MARKER: &str = "protoc-gen-validate/validate/validate.proto";

/// envoy-types' `proto` directory (Envoy's API, PGV annotations included): [`OVERRIDE`], or the crate's source in a cargo home
/// (`$CARGO_HOME`, then `~/.cargo`), for the version in the workspace's Cargo.lock.
/// Panics with what was tried when there is none: the check must not pass by not running.
pub fn envoy_proto_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os(OVERRIDE) {
        let dir = PathBuf::from(dir);
        assert!(
            dir.join(MARKER).is_file(),
            "{OVERRIDE}={}: no {MARKER} there",
            dir.display()
        );
        return dir;
    }
    let wanted = format!("envoy-types-{}", locked_version("envoy-types"));
    let mut tried = Vec::new();
    for home in cargo_homes() {
        let src = home.join("registry").join("src");
        let Ok(registries) = std::fs::read_dir(&src) else {
            tried.push(src);
            continue;
        };
        for registry in registries.flatten() {
            let dir = registry.path().join(&wanted).join("proto");
            if dir.join(MARKER).is_file() {
                return dir;
            }
            tried.push(dir);
        }
    }
    panic!(
        "Envoy's .proto files not found: no {wanted}/proto (with {MARKER}) in {tried:#?}. \
         Build or `cargo fetch` the workspace so that cargo unpacks envoy-types, set \
         CARGO_HOME to where it did, or point {OVERRIDE} at a copy."
    );
}

fn cargo_homes() -> Vec<PathBuf> {
    let mut homes: Vec<PathBuf> = Vec::new();
    if let Some(h) = std::env::var_os("CARGO_HOME") {
        homes.push(h.into());
    }
    if let Some(h) = std::env::var_os("HOME") {
        homes.push(PathBuf::from(h).join(".cargo"));
    }
    homes.dedup();
    homes
}

/// The version of `name` in the Cargo.lock of the workspace this crate is in.
fn locked_version(name: &str) -> String {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    let Some(lock) = manifest
        .ancestors()
        .map(|d| d.join("Cargo.lock"))
        .find(|p| p.is_file())
    else {
        panic!("no Cargo.lock above {}", manifest.display());
    };
    let text = std::fs::read_to_string(&lock)
        .unwrap_or_else(|e| panic!("reading {}: {e}", lock.display()));
    let header = format!("name = \"{name}\"");
    let mut lines = text.lines();
    while let Some(line) = lines.next() {
        if line.trim() == header {
            let version = lines
                .next()
                .and_then(|l| l.trim().strip_prefix("version = \""));
            if let Some(v) = version.and_then(|v| v.strip_suffix('"')) {
                return v.to_owned();
            }
        }
    }
    panic!("{} does not lock {name}", lock.display());
}

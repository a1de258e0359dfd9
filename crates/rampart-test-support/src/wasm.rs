//! The WASM test guests (`crates/rampart-wasm/guests`), built with the public toolchain for
//! wasm32-wasip1 and wasm32-wasip2 once per test binary.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// The compiled guest `name` (`hello`, `escape`, `spin`; `rampart_test_plugins`, the
/// proxy-wasm plugin, for wasm32-wasip1) for `target`, or why it could not be built (the
/// target not installed: scripts/test.sh adds both).
pub fn wasm_guest(target: &str, name: &str) -> Result<PathBuf, String> {
    static BUILT: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    let dir = BUILT.get_or_init(build).clone()?;
    let path = dir
        .join(target)
        .join("release")
        .join(format!("{name}.wasm"));
    if path.is_file() {
        Ok(path)
    } else {
        Err(format!(
            "no guest {name} for {target} at {}",
            path.display()
        ))
    }
}

fn build() -> Result<PathBuf, String> {
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let manifest = workspace.join("crates/rampart-wasm/guests/Cargo.toml");
    let target_dir = std::env::var_os("CARGO_TARGET_DIR")
        .map_or_else(|| workspace.join("target"), PathBuf::from)
        .join("wasm-guests");
    // The commands for both targets; the proxy-wasm plugins for preview 1, as Envoy's are.
    for (target, packages) in [
        ("wasm32-wasip1", &["--workspace"][..]),
        ("wasm32-wasip2", &["-p", "rampart-test-guests"][..]),
    ] {
        let out = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
            .args(["build", "--release", "--locked", "--target", target])
            .args(packages)
            .arg("--manifest-path")
            .arg(&manifest)
            .env("CARGO_TARGET_DIR", &target_dir)
            .output()
            .map_err(|e| format!("cannot run cargo: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "building the WASM guests for {target} failed (is it installed? `rustup target add {target}`):\n{}",
                String::from_utf8_lossy(&out.stderr)
            ));
        }
    }
    Ok(target_dir)
}

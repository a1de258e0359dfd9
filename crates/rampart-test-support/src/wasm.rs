//! The WASM test guests (`crates/rampart-wasm/guests`), built with the public toolchain for
//! wasm32-wasip1 and wasm32-wasip2 once per test binary, and the example functions
//! (`examples/functions`), `wasi:http/proxy` components built for wasm32-wasip2.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// The compiled guest `name` (`hello`, `escape`, `spin`; `rampart_test_plugins`, the
/// proxy-wasm plugin, for wasm32-wasip1) for `target`, or why it could not be built (the
/// target not installed: scripts/test.sh adds both).
pub fn wasm_guest(target: &str, name: &str) -> Result<PathBuf, String> {
    static BUILT: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    let dir = BUILT.get_or_init(build_guests).clone()?;
    release_file(&dir, target, &format!("{name}.wasm"))
        .map_err(|path| format!("no guest {name} for {target} at {path}"))
}

/// The compiled example function `name` (`hello`, `echo`, `json`, `fetch`, `misbehave`:
/// `examples/functions/<name>`, an unmodified `wasi:http/proxy` component), or why it could
/// not be built (the target not installed: `rustup target add wasm32-wasip2`).
pub fn function_example(name: &str) -> Result<PathBuf, String> {
    static BUILT: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    let dir = BUILT.get_or_init(build_functions).clone()?;
    release_file(&dir, "wasm32-wasip2", &format!("fn_{name}.wasm"))
        .map_err(|path| format!("no example function {name} at {path}"))
}

fn build_guests() -> Result<PathBuf, String> {
    let manifest = workspace().join("crates/rampart-wasm/guests/Cargo.toml");
    let target_dir = target_dir("wasm-guests");
    // The commands for both targets; the proxy-wasm plugins for preview 1, as Envoy's are.
    for (target, packages) in [
        ("wasm32-wasip1", &["--workspace"][..]),
        ("wasm32-wasip2", &["-p", "rampart-test-guests"][..]),
    ] {
        cargo_build(&manifest, &target_dir, target, packages, "the WASM guests")?;
    }
    Ok(target_dir)
}

fn build_functions() -> Result<PathBuf, String> {
    let manifest = workspace().join("examples/functions/Cargo.toml");
    let target_dir = target_dir("wasm-functions");
    cargo_build(
        &manifest,
        &target_dir,
        "wasm32-wasip2",
        &[],
        "the example functions",
    )?;
    Ok(target_dir)
}

/// `<dir>/<target>/release/<file>` if it was built, else that path for the error.
fn release_file(dir: &Path, target: &str, file: &str) -> Result<PathBuf, String> {
    let path = dir.join(target).join("release").join(file);
    if path.is_file() {
        Ok(path)
    } else {
        Err(path.display().to_string())
    }
}

/// The repository's root.
fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// `name` under the target directory the tests themselves are built in.
fn target_dir(name: &str) -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map_or_else(|| workspace().join("target"), PathBuf::from)
        .join(name)
}

/// `cargo build --release --locked --target <target> <args>` of the workspace at `manifest`
/// into `target_dir`; `what` names it in the error.
fn cargo_build(
    manifest: &Path,
    target_dir: &Path,
    target: &str,
    args: &[&str],
    what: &str,
) -> Result<(), String> {
    let out = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args(["build", "--release", "--locked", "--target", target])
        .args(args)
        .arg("--manifest-path")
        .arg(manifest)
        .env("CARGO_TARGET_DIR", target_dir)
        .output()
        .map_err(|e| format!("cannot run cargo: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "building {what} for {target} failed (is it installed? `rustup target add {target}`):\n{}",
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

//! `rampart openapi codegen`: for every spec in crates/rampart-openapi/tests/specs, the
//! generated crate (types, axum server, reqwest client) builds with warnings denied, and its
//! tests, which read each example of the spec into its type and write it back, pass.

mod support;

use std::process::Command;

use support::*;

fn generated_crate_builds_and_round_trips(spec: &str, min_examples: usize) {
    let dir = TempDir::new(&format!("codegen-{spec}"));
    let out = dir.path("crate");
    let spec_path = format!(
        "{}/../rampart-openapi/tests/specs/{spec}",
        env!("CARGO_MANIFEST_DIR")
    );
    let generated = Command::new(bin())
        .args([
            "openapi",
            "codegen",
            &spec_path,
            "--out",
            out.to_str().unwrap(),
            "--server",
            "--client",
        ])
        .output()
        .unwrap();
    assert!(
        generated.status.success(),
        "{}",
        String::from_utf8_lossy(&generated.stderr)
    );
    // Its own target directory beside the workspace's build cache, shared by the specs.
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map_or_else(
            || std::path::PathBuf::from("target"),
            std::path::PathBuf::from,
        )
        .join("openapi-codegen");
    let test = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args(["test", "--manifest-path"])
        .arg(out.join("Cargo.toml"))
        .env("CARGO_TARGET_DIR", &target)
        .env("RUSTFLAGS", "-D warnings")
        .env("CARGO_TERM_COLOR", "never")
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&test.stdout),
        String::from_utf8_lossy(&test.stderr)
    );
    assert!(
        test.status.success(),
        "the generated crate for {spec}:\n{text}"
    );
    let passed: usize = text
        .lines()
        .filter_map(|l| l.strip_prefix("test result: ok. "))
        .filter_map(|l| l.split(' ').next()?.parse::<usize>().ok())
        .sum();
    assert!(
        passed >= min_examples,
        "{passed} example round trips for {spec}:\n{text}"
    );
}

#[test]
fn every_spec_generates_a_crate_that_compiles_and_round_trips_its_examples() {
    generated_crate_builds_and_round_trips("zoo.yaml", 4);
    generated_crate_builds_and_round_trips("shop.yaml", 0);
}

//! `rampart openapi codegen`: for every spec in crates/rampart-openapi/tests/specs, the
//! generated crate (types, axum server, reqwest client) builds with warnings denied, and its
//! tests, which read each example of the spec into its type and write it back, pass.

mod support;

use support::*;

fn generated_crate_builds_and_round_trips(spec: &str, min_examples: usize) {
    let dir = TempDir::new(&format!("codegen-{spec}"));
    let out = dir.path("crate");
    openapi_codegen(&openapi_spec(spec), &out, &["--server", "--client"]);
    let test = cargo_generated(&out.join("Cargo.toml"), &["test"]);
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
    generated_crate_builds_and_round_trips("minimal.yaml", 2);
}

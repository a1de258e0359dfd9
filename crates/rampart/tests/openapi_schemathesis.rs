//! The whole OpenAPI pipeline against a client no one here wrote: `rampart openapi codegen`
//! makes the shop API's crate, a server is written on its `Api` trait
//! (crates/rampart-openapi/tests/servers/shop.rs) and run; `rampart openapi import` puts the
//! spec's operations in front of it on an xDS-fed proxy (requests validated, responses
//! enforced); then schemathesis (PyPI, installed by scripts/test.sh) generates conforming and
//! non-conforming requests from the same spec. It must find no 5xx, every non-conforming
//! request refused (its own `negative_data_rejection`), every conforming one passed through
//! (`positive_data_acceptance`), and, by a check of ours
//! (tests/schemathesis/rampart_checks.py), every refusal an RFC 9457 problem document from
//! the gateway and every 2xx from the server.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use support::*;

/// The virtualenv's schemathesis (scripts/test.sh), or `RAMPART_SCHEMATHESIS`.
fn schemathesis() -> Option<PathBuf> {
    let st = std::env::var_os("RAMPART_SCHEMATHESIS").map_or_else(
        || PathBuf::from("/var/cache/rampart/venv/bin/schemathesis"),
        PathBuf::from,
    );
    let ok = Command::new(&st)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    ok.then_some(st)
}

/// The generated crate with the hand-written server as a binary, built; its path.
fn build_server(spec: &str, out: &Path) -> PathBuf {
    openapi_codegen(spec, out, &["--server", "--name", "shop-api"]);
    std::fs::create_dir_all(out.join("src/bin")).unwrap();
    std::fs::copy(
        concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../rampart-openapi/tests/servers/shop.rs"
        ),
        out.join("src/bin/shop-server.rs"),
    )
    .unwrap();
    // What a user adds to serve it: a runtime.
    let manifest = out.join("Cargo.toml");
    let mut text = std::fs::read_to_string(&manifest).unwrap();
    text.push_str("tokio = { version = \"1\", features = [\"rt\", \"macros\", \"net\"] }\n");
    std::fs::write(&manifest, text).unwrap();
    let build = cargo_generated(&manifest, &["build", "--bin", "shop-server"]);
    assert!(
        build.status.success(),
        "the shop server:\n{}",
        String::from_utf8_lossy(&build.stderr)
    );
    std::env::var_os("CARGO_TARGET_DIR")
        .map_or_else(|| PathBuf::from("target"), PathBuf::from)
        .join("openapi-codegen/debug/shop-server")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schemathesis_finds_nothing_through_the_gateway_in_front_of_a_generated_server() {
    let Some(st) = schemathesis() else {
        loud_skip(
            "schemathesis_finds_nothing_through_the_gateway_in_front_of_a_generated_server",
            &"no schemathesis (scripts/test.sh installs it in /var/cache/rampart/venv)",
        );
        return;
    };
    let dir = TempDir::new("openapi-schemathesis");
    let spec = openapi_spec("shop.yaml");
    let server_bin = build_server(&spec, &dir.path("shop-api"));
    let server = Proc::spawn_program("shop-server", server_bin.to_str().unwrap(), &[]);
    let deadline = Instant::now() + STARTUP;
    let server_addr = loop {
        if let Some(a) = server
            .stdout()
            .lines()
            .find_map(|l| l.strip_prefix("listening ").map(str::to_owned))
        {
            break a;
        }
        assert!(Instant::now() < deadline, "the shop server did not start");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };

    // Only the imported operations and a 404 for anything else.
    let (_store, eps) = store_with(&dir, &api_gateway_config("shop", &server_addr)).await;
    let import = Command::new(bin())
        .args(["openapi", "import", &spec, "--cluster", "shop"])
        .args(["--responses", "enforce", "--endpoints", &eps])
        .output()
        .unwrap();
    assert!(
        import.status.success(),
        "{}",
        String::from_utf8_lossy(&import.stderr)
    );
    let (_cp, ads) = spawn_control_plane(&eps).await;
    let mut proxy = Proc::spawn(
        "proxy",
        &["proxy", "--xds", &ads, "--node-id", "oas", "--workers", "1"],
    );
    let addr = bound(&mut proxy, "listener=main local=").await;
    let ready = eventually(Duration::from_secs(15), || async {
        let r = send(
            &h1(),
            http::Request::get(format!("http://{addr}/orders"))
                .header("x-api-key", "k")
                .body(http_body_util::Full::new(bytes::Bytes::new()))
                .unwrap(),
        )
        .await;
        r.header("x-served-by") == Some("shop-server")
    })
    .await;
    assert!(
        ready,
        "the imported routes never served:\n{}",
        proxy.stderr()
    );

    // A fixed seed and no example database: the same cases every run. (Query values lose
    // their JSON type on the wire: some seeds make a "negative" boolean `false` for an array
    // of strings, which arrives as the conforming string "false", and schemathesis reports
    // it as accepted. The spec's `status` has `minItems: 1` for the same reason: schemathesis
    // writes `[]` as `status=`, which is `[""]` to RFC 6570 and to the gateway.)
    let checks = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/schemathesis");
    let url = format!("http://{addr}");
    let out = tokio::task::spawn_blocking(move || {
        // Bounded from outside: schemathesis's own --max-time is a budget it spends whole.
        Command::new("timeout")
            .arg("300")
            .arg(st)
            .args(["run", &spec, "--url", &url])
            .args([
                "--checks",
                "not_a_server_error,negative_data_rejection,positive_data_acceptance,rampart_gateway_answers",
            ])
            .args(["--max-examples", "60", "--seed", "1"])
            .args(["--generation-database", "none", "--no-color"])
            .args(["--request-timeout", "5"])
            // The spec asks for an API key or a bearer token on every operation; a user
            // gives schemathesis theirs (the gateway checks that one is present, and a
            // request without any is refused with 401 before anything else).
            .args(["-H", "x-api-key: schemathesis"])
            .env("PYTHONPATH", checks)
            .env("SCHEMATHESIS_HOOKS", "rampart_checks")
            .current_dir(std::env::temp_dir())
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "schemathesis found problems:\n{report}\n{}\nproxy:\n{}",
        String::from_utf8_lossy(&out.stderr),
        proxy.stderr()
    );
    // It did test: conforming and non-conforming cases went through all four operations.
    let generated: usize = report
        .lines()
        .find(|l| l.contains(" generated, "))
        .and_then(|l| l.split_whitespace().next()?.parse().ok())
        .unwrap_or(0);
    assert!(generated >= 100, "only {generated} cases:\n{report}");
    assert!(report.contains("Tested: 4"), "{report}");
    drop(server);
}

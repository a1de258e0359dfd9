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

/// One API: its spec, its server (crates/rampart-openapi/tests/servers/NAME.rs), a path that
/// answers GET once the routes are in, and what a user tells schemathesis.
struct Api {
    name: &'static str,
    ready_path: &'static str,
    headers: &'static [(&'static str, &'static str)],
}

/// The generated crate with the hand-written server as a binary, built; its path.
fn build_server(api: &Api, spec: &str, out: &Path) -> PathBuf {
    let name = api.name;
    openapi_codegen(spec, out, &["--server", "--name", &format!("{name}-api")]);
    std::fs::create_dir_all(out.join("src/bin")).unwrap();
    std::fs::copy(
        format!(
            "{}/../rampart-openapi/tests/servers/{name}.rs",
            env!("CARGO_MANIFEST_DIR")
        ),
        out.join(format!("src/bin/{name}-server.rs")),
    )
    .unwrap();
    // What a user adds to serve it: a runtime.
    let manifest = out.join("Cargo.toml");
    let mut text = std::fs::read_to_string(&manifest).unwrap();
    text.push_str("tokio = { version = \"1\", features = [\"rt\", \"macros\", \"net\"] }\n");
    std::fs::write(&manifest, text).unwrap();
    let bin_name = format!("{name}-server");
    let build = cargo_generated(&manifest, &["build", "--bin", &bin_name]);
    assert!(
        build.status.success(),
        "the {name} server:\n{}",
        String::from_utf8_lossy(&build.stderr)
    );
    std::env::var_os("CARGO_TARGET_DIR")
        .map_or_else(|| PathBuf::from("target"), PathBuf::from)
        .join("openapi-codegen/debug")
        .join(bin_name)
}

/// The server's address, from its first line.
async fn listening(server: &Proc) -> String {
    let deadline = Instant::now() + STARTUP;
    loop {
        if let Some(a) = server
            .stdout()
            .lines()
            .find_map(|l| l.strip_prefix("listening ").map(str::to_owned))
        {
            return a;
        }
        assert!(Instant::now() < deadline, "the server did not start");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn schemathesis_through_the_gateway(test: &str, api: Api) {
    let Some(st) = schemathesis() else {
        loud_skip(
            test,
            &"no schemathesis (scripts/test.sh installs it in /var/cache/rampart/venv)",
        );
        return;
    };
    let name = api.name;
    let dir = TempDir::new(&format!("openapi-schemathesis-{name}"));
    let spec = openapi_spec(&format!("{name}.yaml"));
    let server_bin = build_server(&api, &spec, &dir.path(&format!("{name}-api")));
    let server = Proc::spawn_program(&format!("{name}-server"), server_bin.to_str().unwrap(), &[]);
    let server_addr = listening(&server).await;

    // Only the imported operations and a 404 for anything else.
    let (_store, eps) = store_with(&dir, &api_gateway_config(name, &server_addr)).await;
    let import = Command::new(bin())
        .args(["openapi", "import", &spec, "--cluster", name])
        .args(["--responses", "enforce", "--endpoints", &eps])
        .output()
        .unwrap();
    assert!(
        import.status.success(),
        "{}",
        String::from_utf8_lossy(&import.stderr)
    );
    let (_cp, ads) = spawn_control_plane(&eps).await;
    let mut proxy = spawn_xds_proxy(&ads, name);
    let addr = bound(&mut proxy, "listener=main local=").await;
    let ready = eventually(Duration::from_secs(15), || async {
        let mut req = http::Request::get(format!("http://{addr}{}", api.ready_path));
        for (k, v) in api.headers {
            req = req.header(*k, *v);
        }
        let r = send(
            &h1(),
            req.body(http_body_util::Full::new(bytes::Bytes::new()))
                .unwrap(),
        )
        .await;
        r.header("x-served-by").is_some()
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
    // it as accepted. The shop's `status` has `minItems: 1` for the same reason: schemathesis
    // writes `[]` as `status=`, which is `[""]` to RFC 6570 and to the gateway.)
    let checks = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/schemathesis");
    let url = format!("http://{addr}");
    let headers: Vec<String> = api
        .headers
        .iter()
        .map(|(k, v)| format!("{k}: {v}"))
        .collect();
    // Other seeds and more cases, for a longer hunt by hand.
    let seed = std::env::var("RAMPART_SCHEMATHESIS_SEED").unwrap_or_else(|_| "1".into());
    let examples = std::env::var("RAMPART_SCHEMATHESIS_EXAMPLES").unwrap_or_else(|_| "60".into());
    let out = tokio::task::spawn_blocking(move || {
        let mut cmd = Command::new("timeout");
        // Bounded from outside: schemathesis's own --max-time is a budget it spends whole.
        cmd.arg("300")
            .arg(st)
            .args(["run", &spec, "--url", &url])
            .args([
                "--checks",
                "not_a_server_error,negative_data_rejection,positive_data_acceptance,rampart_gateway_answers",
            ])
            .args(["--max-examples", &examples, "--seed", &seed])
            .args(["--generation-database", "none", "--no-color"])
            .args(["--request-timeout", "5"]);
        for h in &headers {
            cmd.args(["-H", h]);
        }
        cmd.env("PYTHONPATH", checks)
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schemathesis_finds_nothing_wrong_with_the_shop() {
    // The spec asks for an API key or a bearer token on every operation; a user gives
    // schemathesis theirs (the gateway checks that one is present, and a request without any
    // is refused with 401 before anything else).
    let api = Api {
        name: "shop",
        ready_path: "/orders",
        headers: &[("x-api-key", "schemathesis")],
    };
    schemathesis_through_the_gateway("schemathesis_finds_nothing_wrong_with_the_shop", api).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schemathesis_finds_nothing_wrong_with_the_zoo() {
    let api = Api {
        name: "zoo",
        ready_path: "/animals",
        headers: &[],
    };
    schemathesis_through_the_gateway("schemathesis_finds_nothing_wrong_with_the_zoo", api).await;
}

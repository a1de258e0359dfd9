//! `rampart wasm` end to end: a key pair, a signed module that runs, and every way an
//! unsigned, forged or tampered module is refused; a WASI p1 module and a p2 component
//! built from Rust sources run under the wasi profile with a preopen; `inspect`.

mod support;

use std::path::Path;
use std::process::Command;

use support::*;

fn rampart(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(bin()).args(args).output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A clock-only module whose `_start` exits normally.
const CLOCK: &str = r#"(module
  (import "wasi_snapshot_preview1" "clock_time_get" (func $now (param i32 i64 i32) (result i32)))
  (memory (export "memory") 1)
  (func (export "_start") (drop (call $now (i32.const 0) (i64.const 1) (i32.const 0)))))"#;

/// `rampart wasm run MODULE --profile clock-only` with `extra` arguments.
fn run_clock(module: &str, extra: &[&str]) -> (i32, String, String) {
    let mut args = vec!["wasm", "run", module, "--profile", "clock-only"];
    args.extend_from_slice(extra);
    rampart(&args)
}

fn keygen(dir: &TempDir, name: &str) -> (String, String) {
    let key = dir.path(name);
    let (code, public, err) = rampart(&["wasm", "keygen", "--out", key.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    (key.to_str().unwrap().to_owned(), public.trim().to_owned())
}

#[test]
fn signed_modules_run_and_unsigned_forged_or_tampered_ones_do_not() {
    let dir = TempDir::new("wasm-cli");
    let module = dir.path("clock.wat");
    std::fs::write(&module, CLOCK).unwrap();
    let m = module.to_str().unwrap();
    let (key, public) = keygen(&dir, "key");
    let (_, stranger) = keygen(&dir, "other-key");
    let mode = std::fs::metadata(&key).unwrap();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&mode.permissions()) & 0o777,
        0o600
    );

    // No signature yet: refused, whatever keys are trusted; no keys at all: refused too.
    let (code, _, err) = run_clock(m, &["--trusted-key", &public]);
    assert_ne!(code, 0);
    assert!(
        err.contains("no signature") && err.contains("clock.wat.sig"),
        "{err}"
    );
    let (code, _, err) = run_clock(m, &[]);
    assert_ne!(code, 0);
    assert!(err.contains("--allow-unsigned"), "{err}");

    let (code, _, err) = rampart(&["wasm", "sign", m, "--key", &key]);
    assert_eq!(code, 0, "{err}");
    let (code, out, err) = rampart(&[
        "wasm",
        "verify",
        m,
        "--trusted-key",
        &stranger,
        "--trusted-key",
        &public,
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("signed by trusted key 1"), "{out}");
    let (code, _, err) = run_clock(m, &["--trusted-key", &public]);
    assert_eq!(code, 0, "{err}");

    // Signed by a key nobody trusts: refused.
    let (code, _, err) = run_clock(m, &["--trusted-key", &stranger]);
    assert_ne!(code, 0);
    assert!(err.contains("no trusted key signed this module"), "{err}");
    // A forged signature (someone else's, over these bytes, in the .sig): refused.
    let forged = dir.path("forged.wat");
    std::fs::write(&forged, CLOCK).unwrap();
    let f = forged.to_str().unwrap();
    let other_key = dir.path("other-key");
    assert_eq!(
        rampart(&["wasm", "sign", f, "--key", other_key.to_str().unwrap()]).0,
        0
    );
    let (code, _, _) = run_clock(f, &["--trusted-key", &public]);
    assert_ne!(code, 0);
    // One byte changed after signing: refused.
    std::fs::write(
        &module,
        CLOCK.replace("i32.const 0) (i64", "i32.const 1) (i64"),
    )
    .unwrap();
    let (code, _, err) = run_clock(m, &["--trusted-key", &public]);
    assert_ne!(code, 0);
    assert!(err.contains("no trusted key signed this module"), "{err}");
    // Development: --allow-unsigned runs it, and says so.
    let (code, _, err) = run_clock(m, &["--allow-unsigned"]);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("WITHOUT checking its signature"), "{err}");
}

#[test]
fn wasi_p1_and_p2_commands_run_with_their_grants() {
    let dir = TempDir::new("wasm-cli-wasi");
    let data = dir.path("data");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::write(data.join("in.txt"), "from the host\n").unwrap();
    let out_dir = dir.path("out");
    std::fs::create_dir_all(&out_dir).unwrap();
    for target in ["wasm32-wasip1", "wasm32-wasip2"] {
        let guest = match rampart_test_support::wasm_guest(target, "hello") {
            Ok(p) => p,
            Err(why) => {
                loud_skip("wasi_p1_and_p2_commands_run_with_their_grants", &why);
                return;
            }
        };
        let _ = std::fs::remove_file(out_dir.join("out.txt"));
        let d = format!("{}::/data", data.display());
        let o = format!("{}::/out::rw", out_dir.display());
        let g = guest.to_str().unwrap();
        let (code, stdout, err) = rampart(&[
            "wasm",
            "run",
            g,
            "--allow-unsigned",
            "--dir",
            &d,
            "--dir",
            &o,
            "--env",
            "GREETING=hej",
            "--",
            "x",
            "5",
        ]);
        // WASI 0.2's `exit` says only success or failure: a component's 5 arrives as 1.
        let want = if target == "wasm32-wasip1" { 5 } else { 1 };
        assert_eq!(code, want, "{target}: {stdout}{err}");
        assert!(stdout.contains("args=[\"x\", \"5\"]"), "{target}: {stdout}");
        assert!(
            stdout.contains("greeting=hej") && stdout.contains("home=unset"),
            "{stdout}"
        );
        assert!(stdout.contains("in=from the host"), "{stdout}");
        assert!(Path::new(&out_dir.join("out.txt")).exists(), "{target}");
        let (code, out, err) = rampart(&["wasm", "inspect", g]);
        assert_eq!(code, 0, "{err}");
        let wanted = if target == "wasm32-wasip1" {
            "import wasi_snapshot_preview1::fd_write func"
        } else {
            "export wasi:cli/run"
        };
        assert!(out.contains(wanted), "{target}: {out}");
    }
}

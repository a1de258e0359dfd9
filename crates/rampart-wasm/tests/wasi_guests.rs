//! Rust guests built with the public toolchain (`crates/rampart-wasm/guests`, for
//! wasm32-wasip1 and wasm32-wasip2) run under the `wasi` profile: arguments, environment
//! and preopens exactly as granted; every way out of a preopen refused; a deadline stops a
//! spinning guest; the compiled-module cache is used on the second load.

use std::path::PathBuf;
use std::time::Duration;

use rampart_wasm::command::{is_component, run};
use rampart_wasm::{Limits, ModuleCache, Preopen, Profile, Sandbox, WasiGrants, WasmError};

/// The guest's bytes; `None` (with a loud skip, a failure in CI) when the wasm targets are
/// not installed here (scripts/test.sh adds them).
fn guest(target: &str, name: &str) -> Option<Vec<u8>> {
    match rampart_test_support::wasm_guest(target, name) {
        Ok(path) => Some(std::fs::read(path).unwrap()),
        Err(why) => {
            rampart_test_support::skip(&format!("WASI guest {name} for {target}"), &why);
            None
        }
    }
}

fn sandbox() -> Sandbox {
    Sandbox::new(Limits {
        deadline: Duration::from_millis(500),
        ..Limits::default()
    })
    .unwrap()
}

struct Fixture {
    root: PathBuf,
}

impl Fixture {
    /// data/in.txt, data/sub/, data/link-out → ../secret.txt, data/dir-out → .., secret.txt
    /// beside data, and an empty out/.
    fn new(test: &str) -> Self {
        let root = std::env::temp_dir().join(format!("rampart-wasm-{test}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(root.join("data/sub")).unwrap();
        std::fs::create_dir_all(root.join("out")).unwrap();
        std::fs::write(root.join("data/in.txt"), "hello from the host\n").unwrap();
        std::fs::write(root.join("secret.txt"), "the host's secret\n").unwrap();
        std::os::unix::fs::symlink("../secret.txt", root.join("data/link-out")).unwrap();
        std::os::unix::fs::symlink("..", root.join("data/dir-out")).unwrap();
        Self { root }
    }

    fn grants(&self, out_writable: bool, args: &[&str]) -> WasiGrants {
        let mut preopens = vec![Preopen {
            host: self.root.join("data"),
            guest: "/data".into(),
            writable: false,
        }];
        if out_writable {
            preopens.push(Preopen {
                host: self.root.join("out"),
                guest: "/out".into(),
                writable: true,
            });
        }
        WasiGrants {
            preopens,
            env: vec![("GREETING".into(), "hi".into())],
            args: std::iter::once("guest")
                .chain(args.iter().copied())
                .map(String::from)
                .collect(),
            inherit_stdio: false,
        }
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

#[test]
fn p1_and_p2_commands_get_exactly_their_grants() {
    let s = sandbox();
    for target in ["wasm32-wasip1", "wasm32-wasip2"] {
        let Some(bytes) = guest(target, "hello") else {
            return;
        };
        assert_eq!(is_component(&bytes), target == "wasm32-wasip2");
        let f = Fixture::new(&format!("hello-{target}"));
        let code = run(
            &s,
            &bytes,
            &Profile::Wasi(f.grants(true, &["a", "7"])),
            None,
        )
        .unwrap();
        // WASI 0.2's `exit` says only success or failure: a component's 7 arrives as 1.
        let want = if target == "wasm32-wasip1" { 7 } else { 1 };
        assert_eq!(code, want, "{target}: the guest's exit code");
        assert_eq!(
            std::fs::read_to_string(f.root.join("out/out.txt")).unwrap(),
            "written by the guest\n",
            "{target}"
        );
        // Without /out granted, the write has nowhere to go; the guest still finishes.
        let f = Fixture::new(&format!("hello-ro-{target}"));
        let code = run(&s, &bytes, &Profile::Wasi(f.grants(false, &["0"])), None).unwrap();
        assert_eq!(code, 0);
        assert!(!f.root.join("out/out.txt").exists(), "{target}");
    }
}

#[test]
fn nothing_gets_out_of_a_preopen() {
    let s = sandbox();
    for target in ["wasm32-wasip1", "wasm32-wasip2"] {
        let Some(bytes) = guest(target, "escape") else {
            return;
        };
        let f = Fixture::new(&format!("escape-{target}"));
        let code = run(&s, &bytes, &Profile::Wasi(f.grants(false, &[])), None).unwrap();
        assert_eq!(code, 0, "{target}: an attempt got out of /data");
        assert!(
            !f.root.join("data/new.txt").exists(),
            "{target}: wrote to a read-only preopen"
        );
    }
}

#[test]
fn a_spinning_guest_is_stopped_and_the_next_one_runs() {
    let s = sandbox();
    for target in ["wasm32-wasip1", "wasm32-wasip2"] {
        let Some(spin) = guest(target, "spin") else {
            return;
        };
        let e = run(&s, &spin, &Profile::Wasi(WasiGrants::default()), None).unwrap_err();
        assert!(matches!(e, WasmError::Deadline(_)), "{target}: {e}");
        let Some(hello) = guest(target, "hello") else {
            return;
        };
        let f = Fixture::new(&format!("after-spin-{target}"));
        assert_eq!(
            run(&s, &hello, &Profile::Wasi(f.grants(false, &["0"])), None).unwrap(),
            0
        );
    }
}

#[test]
fn a_wasi_guest_under_clock_only_is_refused_by_its_first_import() {
    let s = sandbox();
    let Some(bytes) = guest("wasm32-wasip1", "hello") else {
        return;
    };
    let e = run(&s, &bytes, &Profile::ClockOnly, None).unwrap_err();
    assert!(
        matches!(&e, WasmError::ForbiddenImport { module, profile: "clock-only", .. } if module == "wasi_snapshot_preview1"),
        "{e}"
    );
}

#[test]
fn the_cache_keeps_compiled_modules_across_sandboxes() {
    let Some(bytes) = guest("wasm32-wasip1", "hello") else {
        return;
    };
    let dir = std::env::temp_dir().join(format!("rampart-wasm-modcache-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let cache = ModuleCache::new(&dir).unwrap();
    let f = Fixture::new("cache");
    let s = sandbox();
    assert_eq!(
        run(
            &s,
            &bytes,
            &Profile::Wasi(f.grants(false, &["0"])),
            Some(&cache)
        )
        .unwrap(),
        0
    );
    let entries: Vec<_> = std::fs::read_dir(&dir).unwrap().flatten().collect();
    assert_eq!(
        entries.len(),
        1,
        "one compiled entry: {:?}",
        entries
            .iter()
            .map(std::fs::DirEntry::file_name)
            .collect::<Vec<_>>()
    );
    let written = entries[0].metadata().unwrap().modified().unwrap();
    // A new sandbox with the same configuration reads the entry instead of compiling.
    let s2 = sandbox();
    assert_eq!(
        run(
            &s2,
            &bytes,
            &Profile::Wasi(f.grants(false, &["0"])),
            Some(&cache)
        )
        .unwrap(),
        0
    );
    let again: Vec<_> = std::fs::read_dir(&dir).unwrap().flatten().collect();
    assert_eq!(again.len(), 1);
    assert_eq!(
        again[0].metadata().unwrap().modified().unwrap(),
        written,
        "not rewritten"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

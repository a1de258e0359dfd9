//! Hostile guests against the sandbox: each is contained with a named outcome, and the next
//! guest on the same engine runs normally. (Written in WAT, so each attack is exactly what
//! it says; Rust guests built with the public toolchains are in `wasi_guests.rs`.)

use std::time::{Duration, Instant};

use rampart_wasm::command::run;
use rampart_wasm::{Limits, Profile, Sandbox, WasmError};

fn sandbox() -> Sandbox {
    Sandbox::new(Limits {
        memory_bytes: 4 << 20,
        table_elements: 1000,
        deadline: Duration::from_millis(100),
        ..Limits::default()
    })
    .unwrap()
}

fn run_wat(s: &Sandbox, wat: &str) -> Result<i32, WasmError> {
    run(s, wat.as_bytes(), &Profile::ClockOnly, None)
}

/// A guest that reads the monotonic clock twice and exits normally.
const CLOCK_READER: &str = r#"
(module
  (import "wasi_snapshot_preview1" "clock_time_get" (func $now (param i32 i64 i32) (result i32)))
  (memory (export "memory") 1)
  (func (export "_start")
    (if (i32.ne (call $now (i32.const 1) (i64.const 1) (i32.const 0)) (i32.const 0)) (then unreachable))
    (if (i32.ne (call $now (i32.const 1) (i64.const 1) (i32.const 8)) (i32.const 0)) (then unreachable))
    ;; time does not go backwards
    (if (i64.lt_u (i64.load (i32.const 8)) (i64.load (i32.const 0))) (then unreachable))))
"#;

/// After an attack, the sandbox still runs an honest guest.
fn still_serves(s: &Sandbox) {
    assert_eq!(run_wat(s, CLOCK_READER).unwrap(), 0);
}

#[test]
fn a_clock_only_guest_reads_the_clock() {
    still_serves(&sandbox());
}

#[test]
fn an_import_outside_the_profile_fails_at_link_time_by_name() {
    let s = sandbox();
    let e = run_wat(
        &s,
        r#"(module (import "wasi_snapshot_preview1" "fd_write" (func (param i32 i32 i32 i32) (result i32)))
                   (func (export "_start")))"#,
    )
    .unwrap_err();
    assert!(
        matches!(&e, WasmError::ForbiddenImport { module, name, profile: "clock-only" }
            if module == "wasi_snapshot_preview1" && name == "fd_write"),
        "{e}"
    );
    assert!(e.to_string().contains("wasi_snapshot_preview1::fd_write"));
    let e = run_wat(
        &s,
        r#"(module (import "env" "system" (func)) (func (export "_start")))"#,
    )
    .unwrap_err();
    assert!(e.to_string().contains("env::system"), "{e}");
    still_serves(&s);
}

#[test]
fn an_infinite_loop_stops_at_the_deadline() {
    let s = sandbox();
    let t = Instant::now();
    let e = run_wat(&s, r#"(module (func (export "_start") (loop (br 0))))"#).unwrap_err();
    assert!(matches!(e, WasmError::Deadline(_)), "{e}");
    assert!(
        t.elapsed() < Duration::from_secs(2),
        "stopped after {:?}",
        t.elapsed()
    );
    still_serves(&s);
}

#[test]
fn a_memory_bomb_hits_the_cap() {
    let s = sandbox();
    // Grows a page at a time until refused, then traps: refused growth is what the guest sees.
    let e = run_wat(
        &s,
        r#"(module (memory 1)
             (func (export "_start")
               (loop (if (i32.ne (memory.grow (i32.const 1)) (i32.const -1)) (then (br 1))))
               ;; 4 MiB cap: 64 pages
               (if (i32.gt_u (memory.size) (i32.const 64)) (then (return)))
               unreachable))"#,
    )
    .unwrap_err();
    assert!(
        matches!(&e, WasmError::Trap(m) if m.contains("unreachable")),
        "{e}"
    );
    // A module declaring more than the cap is refused before it runs.
    let e = run_wat(&s, r#"(module (memory 1000) (func (export "_start")))"#).unwrap_err();
    assert!(
        matches!(&e, WasmError::Compile(m) if m.contains("exceeds the limit")),
        "{e}"
    );
    still_serves(&s);
}

#[test]
fn a_stack_overflow_is_a_trap() {
    let s = sandbox();
    let e = run_wat(
        &s,
        r#"(module (func $f (param i64) (result i64) (call $f (i64.add (local.get 0) (i64.const 1))))
                   (func (export "_start") (drop (call $f (i64.const 0)))))"#,
    )
    .unwrap_err();
    assert!(
        matches!(&e, WasmError::Trap(m) if m.contains("call stack exhausted")),
        "{e}"
    );
    still_serves(&s);
}

#[test]
fn table_growth_hits_the_cap() {
    let s = sandbox();
    let e = run_wat(
        &s,
        r#"(module (table 1 funcref)
             (func (export "_start")
               (loop (if (i32.ne (table.grow (ref.null func) (i32.const 100)) (i32.const -1)) (then (br 1))))
               (if (i32.gt_u (table.size) (i32.const 1000)) (then (return)))
               unreachable))"#,
    )
    .unwrap_err();
    assert!(
        matches!(&e, WasmError::Trap(m) if m.contains("unreachable")),
        "{e}"
    );
    still_serves(&s);
}

#[test]
fn many_guests_in_a_row_reuse_the_pool() {
    // More runs than the pool has slots: each run's instance goes back to the pool.
    let s = Sandbox::new(Limits {
        instances: 4,
        ..Limits::default()
    })
    .unwrap();
    for _ in 0..20 {
        still_serves(&s);
    }
}

//! Instantiation latency, for bench/wasm-instantiate.sh: a fresh store and instance per
//! iteration from a pre-linked module (`InstancePre`), under Rampart's sandbox (pooling
//! allocator, limits, deadline) and under wasmtime's default engine (on-demand allocation)
//! in the same process, for a tiny module and, when given, a Rust WASI guest.
//!
//! Usage: instantiate [--iterations N] [--guest PATH.wasm]
//! Prints one line per case: `case=... engine=... p50_us=... p99_us=... mean_us=...`.

use std::time::{Duration, Instant};

use rampart_wasm::{Limits, Sandbox, StoreLimits};
use wasmtime::{Engine, InstancePre, Linker, Module, Store};

const TINY: &str =
    r#"(module (memory (export "memory") 1) (func (export "run") (result i32) i32.const 42))"#;

struct Data {
    limits: wasmtime::StoreLimits,
    wasi: Option<wasmtime_wasi::p1::WasiP1Ctx>,
}

impl StoreLimits for Data {
    fn limits(&mut self) -> &mut wasmtime::StoreLimits {
        &mut self.limits
    }
}

fn main() -> Result<(), String> {
    let args: Vec<String> = std::env::args().collect();
    let flag = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1).cloned())
    };
    let iterations: usize = flag("--iterations").map_or(Ok(20_000), |v| {
        v.parse().map_err(|e| format!("--iterations: {e}"))
    })?;
    let guest = flag("--guest")
        .map(|p| std::fs::read(&p).map_err(|e| format!("{p}: {e}")))
        .transpose()?;
    let sandbox = Sandbox::new(Limits::default()).map_err(|e| e.to_string())?;
    let default = Engine::default();
    let mut cases: Vec<(&str, &[u8], bool)> = vec![("tiny", TINY.as_bytes(), false)];
    if let Some(g) = &guest {
        cases.push(("rust-wasi-guest", g.as_slice(), true));
    }
    for (case, bytes, wasi) in cases {
        for (engine_name, engine, sb) in [
            ("rampart-sandbox", sandbox.engine(), Some(&sandbox)),
            ("wasmtime-default", &default, None),
        ] {
            let times = measure(engine, sb, bytes, wasi, iterations)?;
            report(case, engine_name, &times);
        }
    }
    Ok(())
}

fn measure(
    engine: &Engine,
    sandbox: Option<&Sandbox>,
    bytes: &[u8],
    wasi: bool,
    iterations: usize,
) -> Result<Vec<Duration>, String> {
    let module = Module::new(engine, bytes).map_err(|e| e.to_string())?;
    let mut linker: Linker<Data> = Linker::new(engine);
    if wasi {
        wasmtime_wasi::p1::add_to_linker_sync(&mut linker, |d: &mut Data| {
            d.wasi.as_mut().expect("a WASI context for a WASI guest")
        })
        .map_err(|e| e.to_string())?;
    }
    let pre: InstancePre<Data> = linker.instantiate_pre(&module).map_err(|e| e.to_string())?;
    let mut times = Vec::with_capacity(iterations);
    for _ in 0..iterations {
        let t = Instant::now();
        let data = Data {
            limits: sandbox.map_or_else(
                || wasmtime::StoreLimitsBuilder::new().build(),
                Sandbox::store_limits,
            ),
            wasi: wasi.then(|| wasmtime_wasi::WasiCtxBuilder::new().build_p1()),
        };
        let mut store = match sandbox {
            Some(s) => s.store(data),
            None => Store::new(engine, data),
        };
        let instance = pre.instantiate(&mut store).map_err(|e| e.to_string())?;
        std::hint::black_box(&instance);
        drop(store);
        times.push(t.elapsed());
    }
    Ok(times)
}

fn report(case: &str, engine: &str, times: &[Duration]) {
    let mut sorted = times.to_vec();
    sorted.sort_unstable();
    let at = |p: f64| {
        let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
        sorted[i].as_secs_f64() * 1e6
    };
    let mean = sorted.iter().map(Duration::as_secs_f64).sum::<f64>() / sorted.len() as f64 * 1e6;
    println!(
        "case={case} engine={engine} n={} p50_us={:.2} p99_us={:.2} mean_us={:.2}",
        sorted.len(),
        at(0.5),
        at(0.99),
        mean
    );
}

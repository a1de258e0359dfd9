//! Running a command module (`_start`, WASI preview 1 or `clock-only`) or a command
//! component (`wasi:cli/run`, WASI preview 2) under the sandbox's limits, as `wasmtime run`
//! does.

use wasmtime::component::ResourceTable;
use wasmtime::{Linker, Module};
use wasmtime_wasi::p1::WasiP1Ctx;
use wasmtime_wasi::p2::bindings::sync::Command;
use wasmtime_wasi::{I32Exit, WasiCtx, WasiCtxView, WasiView};

use crate::profile::link_clocks;
use crate::{ModuleCache, Profile, Sandbox, StoreLimits, WasmError};

/// Whether `bytes` is a component (binary layer 1) rather than a core module.
pub fn is_component(bytes: &[u8]) -> bool {
    bytes.len() >= 8 && bytes[..4] == *b"\0asm" && bytes[6..8] == [1, 0]
}

/// Runs `bytes` to completion; its exit code (0 when `_start` or `run` returns normally).
pub fn run(
    sandbox: &Sandbox,
    bytes: &[u8],
    profile: &Profile,
    cache: Option<&ModuleCache>,
) -> Result<i32, WasmError> {
    if is_component(bytes) {
        let Profile::Wasi(grants) = profile else {
            return Err(WasmError::Instantiate(
                "a component imports WASI interfaces; run it with the wasi profile".into(),
            ));
        };
        let component = match cache {
            Some(c) => c.component(sandbox.engine(), bytes)?,
            None => wasmtime::component::Component::new(sandbox.engine(), bytes)
                .map_err(|e| WasmError::Compile(format!("{e:#}")))?,
        };
        return run_component(sandbox, &component, grants.builder()?.build());
    }
    let module = match cache {
        Some(c) => c.module(sandbox.engine(), bytes)?,
        None => Module::new(sandbox.engine(), bytes)
            .map_err(|e| WasmError::Compile(format!("{e:#}")))?,
    };
    profile.check_imports(&module)?;
    match profile {
        Profile::ClockOnly => run_clock_only(sandbox, &module),
        Profile::Wasi(grants) => run_p1(sandbox, &module, grants.builder()?.build_p1()),
    }
}

struct Bare {
    limits: wasmtime::StoreLimits,
}

impl StoreLimits for Bare {
    fn limits(&mut self) -> &mut wasmtime::StoreLimits {
        &mut self.limits
    }
}

fn run_clock_only(sandbox: &Sandbox, module: &Module) -> Result<i32, WasmError> {
    let mut linker = Linker::new(sandbox.engine());
    link_clocks(&mut linker)?;
    let store = sandbox.store(Bare {
        limits: sandbox.store_limits(),
    });
    call_start(sandbox, &linker, store, module)
}

/// Instantiates `module` and runs its `_start`.
fn call_start<T: 'static>(
    sandbox: &Sandbox,
    linker: &Linker<T>,
    mut store: wasmtime::Store<T>,
    module: &Module,
) -> Result<i32, WasmError> {
    let instance = linker
        .instantiate(&mut store, module)
        .map_err(|e| WasmError::Instantiate(format!("{e:#}")))?;
    let start = instance
        .get_typed_func::<(), ()>(&mut store, "_start")
        .map_err(|e| WasmError::Instantiate(format!("no `_start`: {e:#}")))?;
    exit_code(start.call(&mut store, ()), sandbox)
}

struct P1 {
    wasi: WasiP1Ctx,
    limits: wasmtime::StoreLimits,
}

impl StoreLimits for P1 {
    fn limits(&mut self) -> &mut wasmtime::StoreLimits {
        &mut self.limits
    }
}

fn run_p1(sandbox: &Sandbox, module: &Module, wasi: WasiP1Ctx) -> Result<i32, WasmError> {
    let mut linker: Linker<P1> = Linker::new(sandbox.engine());
    wasmtime_wasi::p1::add_to_linker_sync(&mut linker, |h: &mut P1| &mut h.wasi)
        .map_err(|e| WasmError::Engine(format!("{e:#}")))?;
    let store = sandbox.store(P1 {
        wasi,
        limits: sandbox.store_limits(),
    });
    call_start(sandbox, &linker, store, module)
}

struct P2 {
    ctx: WasiCtx,
    table: ResourceTable,
    limits: wasmtime::StoreLimits,
}

impl WasiView for P2 {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.ctx,
            table: &mut self.table,
        }
    }
}

impl StoreLimits for P2 {
    fn limits(&mut self) -> &mut wasmtime::StoreLimits {
        &mut self.limits
    }
}

fn run_component(
    sandbox: &Sandbox,
    component: &wasmtime::component::Component,
    ctx: WasiCtx,
) -> Result<i32, WasmError> {
    let mut linker = wasmtime::component::Linker::<P2>::new(sandbox.engine());
    wasmtime_wasi::p2::add_to_linker_sync(&mut linker)
        .map_err(|e| WasmError::Engine(format!("{e:#}")))?;
    let mut store = sandbox.store(P2 {
        ctx,
        table: ResourceTable::new(),
        limits: sandbox.store_limits(),
    });
    let command = Command::instantiate(&mut store, component, &linker)
        .map_err(|e| WasmError::Instantiate(format!("{e:#}")))?;
    match command.wasi_cli_run().call_run(&mut store) {
        Ok(Ok(())) => Ok(0),
        Ok(Err(())) => Ok(1),
        Err(e) => exit_code(Err(e), sandbox),
    }
}

/// A guest's `proc_exit`/`exit` is its exit code; a trap or a deadline is an error.
fn exit_code(result: wasmtime::Result<()>, sandbox: &Sandbox) -> Result<i32, WasmError> {
    match result {
        Ok(()) => Ok(0),
        Err(e) => match e.downcast_ref::<I32Exit>() {
            Some(exit) => Ok(exit.0),
            None => Err(WasmError::from_run(&e, sandbox.limits().deadline)),
        },
    }
}

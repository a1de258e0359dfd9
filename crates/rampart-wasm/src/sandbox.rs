//! The one engine configuration every guest runs under, and stores that carry its limits.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use wasmtime::{Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig, Store};

use crate::WasmError;

/// How often the engine's epoch advances: the granularity of deadlines.
pub const TICK: Duration = Duration::from_millis(1);

/// What one guest may use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Linear memory per memory (the pool's slot size, and the most `memory.grow` reaches).
    pub memory_bytes: usize,
    /// Elements per table.
    pub table_elements: usize,
    /// Native stack the guest's code may use before it traps with a stack overflow.
    pub max_stack: usize,
    /// Instances the pool holds at once (each memory and table has a slot).
    pub instances: u32,
    /// How long one call into the guest (a command's whole run, a filter callback) may take.
    pub deadline: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            memory_bytes: 64 << 20,
            table_elements: 10_000,
            max_stack: 512 << 10,
            instances: 128,
            deadline: Duration::from_secs(1),
        }
    }
}

/// A store's data that carries the limits a [`Sandbox`] enforces on growth.
pub trait StoreLimits {
    fn limits(&mut self) -> &mut wasmtime::StoreLimits;
}

/// An engine configured for untrusted guests, with the thread that drives its deadlines.
pub struct Sandbox {
    engine: Engine,
    limits: Limits,
    _ticker: Ticker,
}

impl Sandbox {
    pub fn new(limits: Limits) -> Result<Self, WasmError> {
        let mut pool = PoolingAllocationConfig::default();
        // A component holds several core instances (a Rust wasip2 one: its module and the
        // shims that wire its imports) and tables, but one memory.
        pool.total_core_instances(limits.instances.saturating_mul(4))
            .total_component_instances(limits.instances)
            .total_memories(limits.instances)
            .total_tables(limits.instances.saturating_mul(2))
            .max_memory_size(limits.memory_bytes)
            .table_elements(limits.table_elements);
        let mut config = Config::new();
        config
            .allocation_strategy(InstanceAllocationStrategy::Pooling(pool))
            .epoch_interruption(true)
            .max_wasm_stack(limits.max_stack)
            // No threads: wasmtime is built without the proposal. No relaxed SIMD, whose
            // results may differ between hosts.
            .wasm_relaxed_simd(false)
            .wasm_component_model(true);
        let engine = Engine::new(&config).map_err(|e| WasmError::Engine(format!("{e:#}")))?;
        let ticker = Ticker::start(engine.clone())
            .map_err(|e| WasmError::Engine(format!("cannot start the epoch thread: {e}")))?;
        Ok(Self {
            engine,
            limits,
            _ticker: ticker,
        })
    }

    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// The growth limits for one guest's store.
    pub fn store_limits(&self) -> wasmtime::StoreLimits {
        wasmtime::StoreLimitsBuilder::new()
            .memory_size(self.limits.memory_bytes)
            .table_elements(self.limits.table_elements)
            .instances(64)
            .tables(64)
            .memories(16)
            .build()
    }

    /// A store for one guest: growth limited, and a call into it trapping after the
    /// deadline (re-armed with [`Sandbox::arm`] before each call).
    pub fn store<T: StoreLimits + 'static>(&self, data: T) -> Store<T> {
        let mut store = Store::new(&self.engine, data);
        store.limiter(|d| d.limits());
        self.arm(&mut store);
        store
    }

    /// Gives the next call into `store` a fresh deadline.
    pub fn arm<T>(&self, store: &mut Store<T>) {
        store.set_epoch_deadline(ticks(self.limits.deadline));
        store.epoch_deadline_trap();
    }
}

fn ticks(d: Duration) -> u64 {
    let t = d.as_nanos() / TICK.as_nanos();
    u64::try_from(t).unwrap_or(u64::MAX).max(1)
}

/// Advances the engine's epoch every [`TICK`] until dropped.
struct Ticker {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Ticker {
    /// Without this thread no deadline fires, so failing to start it fails the sandbox.
    fn start(engine: Engine) -> std::io::Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::Builder::new()
            .name("wasm-epoch".into())
            .spawn(move || {
                while !flag.load(Ordering::Relaxed) {
                    std::thread::sleep(TICK);
                    engine.increment_epoch();
                }
            })?;
        Ok(Self {
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for Ticker {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

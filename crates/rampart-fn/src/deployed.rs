//! One deployed function on this gateway: its spec, whether its component is ready in
//! memory (warm) or only in the on-disk cache (scaled to zero), its concurrency gate and
//! queue, and its counters.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use wasmtime_wasi_http::p2::bindings::ProxyPre;

use crate::host::Host;
use crate::logs::Ring;
use crate::spec::FunctionSpec;

pub(crate) type Ready = Arc<ProxyPre<Host>>;

pub(crate) struct Deployed {
    pub(crate) spec: FunctionSpec,
    pub(crate) env: Vec<(String, String)>,
    pub(crate) clusters: Arc<[String]>,
    pub(crate) logs: Arc<Ring>,
    warm: Mutex<Option<Ready>>,
    gate: Arc<Semaphore>,
    queued: AtomicU32,
    inflight: AtomicU32,
    /// When the last invocation ended, in ms since `base`.
    last_used: AtomicU64,
    base: Instant,
    pub(crate) stats: Stats,
}

#[derive(Default)]
pub(crate) struct Stats {
    pub(crate) invocations: AtomicU64,
    pub(crate) errors: AtomicU64,
    pub(crate) cold_starts: AtomicU64,
    pub(crate) warm_starts: AtomicU64,
}

/// Why a request got no slot.
pub(crate) struct Busy {
    pub(crate) running: u32,
    pub(crate) queued: u32,
}

impl Deployed {
    pub(crate) fn new(spec: FunctionSpec, ready: Ready, logs: Arc<Ring>) -> Self {
        Self {
            env: spec
                .env
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            clusters: spec
                .clusters
                .iter()
                .map(|c| c.to_ascii_lowercase())
                .collect(),
            gate: Arc::new(Semaphore::new(spec.max_concurrency as usize)),
            spec,
            logs,
            warm: Mutex::new(Some(ready)),
            queued: AtomicU32::new(0),
            inflight: AtomicU32::new(0),
            last_used: AtomicU64::new(0),
            base: Instant::now(),
            stats: Stats::default(),
        }
    }

    /// A slot to run in: at once, or after waiting in the bounded queue until `until`.
    pub(crate) async fn slot(&self, until: Instant) -> Result<OwnedSemaphorePermit, Busy> {
        if let Ok(p) = self.gate.clone().try_acquire_owned() {
            return Ok(p);
        }
        let busy = || Busy {
            running: self.spec.max_concurrency,
            queued: self.queued.load(Ordering::Relaxed),
        };
        if self.queued.fetch_add(1, Ordering::AcqRel) >= self.spec.max_queue {
            self.queued.fetch_sub(1, Ordering::AcqRel);
            return Err(busy());
        }
        let waited = tokio::time::timeout_at(until.into(), self.gate.clone().acquire_owned()).await;
        self.queued.fetch_sub(1, Ordering::AcqRel);
        match waited {
            Ok(Ok(p)) => Ok(p),
            _ => Err(busy()),
        }
    }

    /// The component ready to instantiate, and whether it had to be loaded (a cold start).
    pub(crate) fn ready(
        &self,
        load: impl FnOnce() -> Result<ProxyPre<Host>, crate::FnError>,
    ) -> Result<(Ready, bool), crate::FnError> {
        let mut warm = self.warm.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(r) = &*warm {
            return Ok((r.clone(), false));
        }
        let r = Arc::new(load()?);
        *warm = Some(r.clone());
        Ok((r, true))
    }

    pub(crate) fn is_warm(&self) -> bool {
        self.warm
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .is_some()
    }

    pub(crate) fn begin(&self) {
        self.inflight.fetch_add(1, Ordering::AcqRel);
    }

    /// Ends an invocation; with a zero idle timeout the last one out drops the component.
    pub(crate) fn end(&self, idle: Duration) {
        let now = u64::try_from(self.base.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_used.store(now, Ordering::Release);
        if self.inflight.fetch_sub(1, Ordering::AcqRel) == 1 && idle.is_zero() {
            self.evict();
        }
    }

    pub(crate) fn inflight(&self) -> u32 {
        self.inflight.load(Ordering::Acquire)
    }

    pub(crate) fn queued(&self) -> u32 {
        self.queued.load(Ordering::Acquire)
    }

    /// Drops the component from memory when nothing ran for `idle`.
    pub(crate) fn evict_if_idle(&self, idle: Duration) -> bool {
        let now = u64::try_from(self.base.elapsed().as_millis()).unwrap_or(u64::MAX);
        let last = self.last_used.load(Ordering::Acquire);
        let idle_ms = u64::try_from(idle.as_millis()).unwrap_or(u64::MAX);
        if self.inflight() == 0 && now.saturating_sub(last) >= idle_ms && self.is_warm() {
            self.evict();
            return true;
        }
        false
    }

    fn evict(&self) {
        *self.warm.lock().unwrap_or_else(PoisonError::into_inner) = None;
    }
}

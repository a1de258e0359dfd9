//! Functions: WebAssembly components on the standard `wasi:http/proxy` world (what
//! `wasmtime serve` and Spin run), deployed to the gateway at run time and answering the
//! routes that name them (`function: NAME`).
//!
//! - **Deploy** ([`Functions::deploy`]): the component's signature is checked against the
//!   gateway's trusted keys (unless its spec allows unsigned), it is compiled once (or read
//!   from the on-disk cache of compiled components) and linked against WASI preview 2 and
//!   wasi:http into an `InstancePre`; only then does it replace the previous version, so
//!   requests in flight finish on the version they started on and none fails.
//! - **Invoke**: a fresh instance per request from the pooling allocator, in a store with
//!   the function's memory limit, an epoch deadline (the guest yields every millisecond and
//!   traps past its timeout), its environment and nothing else (no files, sockets, or host
//!   environment); stdout and stderr captured and kept by request id; outgoing HTTP only to
//!   the clusters it was granted, through the gateway's own pools and balancers; the
//!   response body cut at its size limit. A trap, a runaway loop or a memory blow-up fails
//!   only that request (500), and a full function answers 503 at once.
//! - **Scale to zero**: a function idle for the gateway's idle timeout is dropped from
//!   memory; its next request loads the compiled component from disk (a cold start).
//! - **Metrics**: `rampart_fn_invocations_total{function,outcome}`,
//!   `rampart_fn_starts_total{function,kind=cold|warm}`, `rampart_fn_start_seconds`,
//!   `rampart_fn_duration_seconds`; `GET /functions`, `/functions/NAME`,
//!   `/functions/NAME/logs` on the admin port.
//!
//! Where specs and components come from (the replicated store: [`spec`], [`blob`]) is the
//! binary's business; this crate is handed both.

pub mod blob;
mod deployed;
mod engine;
mod host;
mod invoke;
pub mod logs;
mod metrics;
pub mod spec;

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::Duration;

use arc_swap::ArcSwap;
use http::{Request, StatusCode};
use hyper::body::Incoming;
use rampart_proxy::callout::Upstreams;
use rampart_proxy::error::local_response;
use rampart_proxy::filter::BuildEnv;
use rampart_proxy::function::{FunctionFuture, FunctionHost, Invocation};
use rampart_wasm::signing::TrustedKeys;
use serde_json::{Value, json};

pub use engine::Settings;

use crate::deployed::Deployed;
use crate::engine::FnEngine;
use crate::logs::Ring;
use crate::spec::FunctionSpec;

#[derive(Debug, thiserror::Error)]
pub enum FnError {
    #[error(transparent)]
    Wasm(#[from] rampart_wasm::WasmError),
    #[error("the function engine: {0}")]
    Engine(String),
    #[error("{0}")]
    Io(String),
    #[error("{0}")]
    Link(String),
    #[error("the spec: {0}")]
    Spec(String),
    #[error("signature: {0}")]
    Signature(String),
}

/// The function runtime of one gateway (cheap to clone).
#[derive(Clone)]
pub struct Functions(Arc<Runtime>);

pub(crate) struct Runtime {
    engine: FnEngine,
    settings: Settings,
    trusted: TrustedKeys,
    deployed: ArcSwap<HashMap<String, Arc<Deployed>>>,
    /// Deploys and removals, one at a time.
    changes: Mutex<()>,
    /// Functions whose latest spec could not be deployed, and why.
    rejected: Mutex<HashMap<String, String>>,
    /// Log rings by name, kept across versions.
    logs: Mutex<HashMap<String, Arc<Ring>>>,
    metrics: metrics::Metrics,
    upstreams: OnceLock<Upstreams>,
}

impl Functions {
    pub fn new(settings: Settings) -> Result<Self, FnError> {
        let trusted = TrustedKeys::parse(&settings.trusted_keys)
            .map_err(|e| FnError::Signature(e.to_string()))?;
        Ok(Self(Arc::new(Runtime {
            engine: FnEngine::new(&settings)?,
            settings,
            trusted,
            deployed: ArcSwap::from_pointee(HashMap::new()),
            changes: Mutex::new(()),
            rejected: Mutex::new(HashMap::new()),
            logs: Mutex::new(HashMap::new()),
            metrics: metrics::Metrics::new(),
            upstreams: OnceLock::new(),
        })))
    }

    /// Deploys (or redeploys) `spec` with its component `bytes`, already checked against
    /// the spec's digest. Blocking: compiles on a miss of the compiled cache. A spec equal
    /// to the running one changes nothing.
    pub fn deploy(&self, spec: &FunctionSpec, bytes: &[u8]) -> Result<bool, FnError> {
        let rt = &self.0;
        let _one = rt.changes.lock().unwrap_or_else(PoisonError::into_inner);
        let result = self.deploy_checked(spec, bytes);
        let mut rejected = rt.rejected.lock().unwrap_or_else(PoisonError::into_inner);
        match &result {
            Ok(_) => {
                rejected.remove(&spec.name);
            }
            Err(e) => {
                rejected.insert(spec.name.clone(), e.to_string());
            }
        }
        result
    }

    fn deploy_checked(&self, spec: &FunctionSpec, bytes: &[u8]) -> Result<bool, FnError> {
        let rt = &self.0;
        if rt
            .deployed
            .load()
            .get(&spec.name)
            .is_some_and(|d| d.spec == *spec)
        {
            return Ok(false);
        }
        spec.check().map_err(|e| FnError::Spec(e.join("; ")))?;
        if blob::sha256_hex(bytes) != spec.blob.sha256 {
            return Err(FnError::Spec(
                "the component does not match blob.sha256".into(),
            ));
        }
        self.check_signature(spec, bytes)?;
        let ready = rt.engine.prepare(&spec.blob.sha256, bytes)?;
        let logs = rt
            .logs
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(spec.name.clone())
            .or_default()
            .clone();
        let d = Arc::new(Deployed::new(spec.clone(), Arc::new(ready), logs));
        let mut next = HashMap::clone(&rt.deployed.load());
        next.insert(spec.name.clone(), d);
        rt.deployed.store(Arc::new(next));
        tracing::info!(function = %spec.name, sha256 = %spec.blob.sha256, "function deployed");
        Ok(true)
    }

    fn check_signature(&self, spec: &FunctionSpec, bytes: &[u8]) -> Result<(), FnError> {
        if spec.allow_unsigned {
            tracing::warn!(function = %spec.name, "running a function WITHOUT checking its signature (allow_unsigned)");
            return Ok(());
        }
        let Some(sig) = &spec.signature else {
            return Err(FnError::Signature(
                "the function is not signed (sign it with `rampart wasm sign`, or deploy with --allow-unsigned for development)".into(),
            ));
        };
        if self.0.trusted.is_empty() {
            return Err(FnError::Signature(
                "this gateway trusts no keys (wasm.trusted_keys / --wasm-trusted-key)".into(),
            ));
        }
        self.0
            .trusted
            .verify(bytes, sig)
            .map(|_| ())
            .map_err(|e| FnError::Signature(e.to_string()))
    }

    /// Records that `name`'s latest spec could not even be read (a damaged blob, say).
    pub fn reject(&self, name: &str, why: String) {
        self.0
            .rejected
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(name.to_owned(), why);
    }

    /// Removes a function; requests in flight on it finish.
    pub fn remove(&self, name: &str) -> bool {
        let rt = &self.0;
        let _one = rt.changes.lock().unwrap_or_else(PoisonError::into_inner);
        rt.rejected
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(name);
        let mut next = HashMap::clone(&rt.deployed.load());
        let gone = next.remove(name).is_some();
        rt.deployed.store(Arc::new(next));
        gone
    }

    /// The specs running now, by name.
    pub fn specs(&self) -> HashMap<String, FunctionSpec> {
        self.0
            .deployed
            .load()
            .iter()
            .map(|(k, d)| (k.clone(), d.spec.clone()))
            .collect()
    }

    /// Drops idle functions from memory; returns how many.
    pub fn evict_idle(&self) -> usize {
        let idle = self.0.settings.idle_timeout;
        self.0
            .deployed
            .load()
            .values()
            .filter(|d| d.evict_if_idle(idle))
            .count()
    }

    fn status(&self, name: &str, d: &Deployed) -> Value {
        let s = &d.spec;
        json!({
            "name": name,
            "state": if d.is_warm() { "warm" } else { "idle" },
            "version": s.version(),
            "sha256": s.blob.sha256,
            "size": s.blob.size,
            "signed": s.signature.is_some(),
            "route": s.route,
            "clusters": s.clusters,
            "max_concurrency": s.max_concurrency,
            "max_queue": s.max_queue,
            "memory_bytes": s.memory_bytes,
            "timeout_ms": s.timeout_ms,
            "inflight": d.inflight(),
            "queued": d.queued(),
            "invocations": d.stats.invocations.load(Ordering::Relaxed),
            "errors": d.stats.errors.load(Ordering::Relaxed),
            "cold_starts": d.stats.cold_starts.load(Ordering::Relaxed),
            "warm_starts": d.stats.warm_starts.load(Ordering::Relaxed),
        })
    }

    fn list(&self) -> Value {
        let deployed = self.0.deployed.load();
        let mut out: Vec<Value> = deployed.iter().map(|(n, d)| self.status(n, d)).collect();
        for (name, why) in self
            .0
            .rejected
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
        {
            match out.iter_mut().find(|v| v["name"] == name.as_str()) {
                // A newer spec was refused: the older version still runs.
                Some(v) => v["rejected"] = json!(why),
                None => out.push(json!({ "name": name, "state": "rejected", "rejected": why })),
            }
        }
        out.sort_by(|a, b| a["name"].as_str().cmp(&b["name"].as_str()));
        json!({ "functions": out })
    }
}

impl FunctionHost for Functions {
    fn attach(&self, env: &BuildEnv) {
        if let Some(u) = env.get::<Upstreams>() {
            let _ = self.0.upstreams.set(u);
        }
        env.metrics.register_with(|r| self.0.metrics.register(r));
        let idle = self.0.settings.idle_timeout;
        if !idle.is_zero() {
            let me = self.clone();
            let stop = env.stop.clone();
            let every = (idle / 4).clamp(Duration::from_millis(10), Duration::from_secs(5));
            env.tasks.spawn_on(
                async move {
                    loop {
                        tokio::select! {
                            () = stop.cancelled() => return,
                            () = tokio::time::sleep(every) => {}
                        }
                        let n = me.evict_idle();
                        if n > 0 {
                            tracing::debug!(functions = n, "idle functions dropped from memory");
                        }
                    }
                },
                &env.control,
            );
        }
    }

    fn invoke(&self, name: &str, req: Request<Incoming>, call: Invocation) -> FunctionFuture {
        let Some(d) = self.0.deployed.load().get(name).cloned() else {
            let msg = format!("no function {name} is deployed\n");
            return Box::pin(async move { local_response(StatusCode::NOT_FOUND, &msg) });
        };
        Box::pin(invoke::invoke(self.0.clone(), d, req, call))
    }

    fn admin(&self, path: &str) -> Option<Value> {
        let path = path.trim_end_matches('/');
        if path.is_empty() {
            return Some(self.list());
        }
        let rest = path.strip_prefix('/')?;
        let (name, tail) = rest.split_once('/').unwrap_or((rest, ""));
        let deployed = self.0.deployed.load();
        let d = deployed.get(name)?;
        match tail {
            "" => Some(self.status(name, d)),
            "logs" => Some(json!({ "function": name, "lines": d.logs.lines() })),
            _ => None,
        }
    }
}

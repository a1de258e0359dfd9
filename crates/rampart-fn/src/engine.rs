//! The functions' engine: one async sandbox (pooling allocator, epoch deadlines) with a
//! linker holding WASI preview 2 and wasi:http, and the on-disk cache of compiled
//! components that makes a start after idle eviction a file map instead of a compile.

use std::path::PathBuf;
use std::time::Duration;

use rampart_wasm::{Limits, ModuleCache, Sandbox};
use wasmtime::component::Linker;
use wasmtime_wasi_http::p2::bindings::ProxyPre;

use crate::FnError;
use crate::host::Host;
use crate::spec::MAX_MEMORY;

/// Gateway-wide settings of the function runtime.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Compiled components (and their sources) are kept here, per engine build.
    pub cache_dir: PathBuf,
    /// A function unused this long is dropped from memory (zero: after every request);
    /// its next request loads it from `cache_dir` (a cold start).
    pub idle_timeout: Duration,
    /// Base64 Ed25519 keys a function's signature must verify against.
    pub trusted_keys: Vec<String>,
    /// Invocations running at once across all functions (the pool's instance slots).
    pub instances: u32,
}

impl Settings {
    pub fn new(cache_dir: impl Into<PathBuf>) -> Self {
        Self {
            cache_dir: cache_dir.into(),
            idle_timeout: Duration::from_secs(300),
            trusted_keys: Vec::new(),
            instances: 512,
        }
    }
}

pub(crate) struct FnEngine {
    sandbox: Sandbox,
    linker: Linker<Host>,
    cache: ModuleCache,
    sources: PathBuf,
}

impl FnEngine {
    pub(crate) fn new(s: &Settings) -> Result<Self, FnError> {
        let sandbox = Sandbox::new(Limits {
            memory_bytes: usize::try_from(MAX_MEMORY).unwrap_or(usize::MAX),
            instances: s.instances,
            // Invocations bound their own time (epoch callbacks); this is unused.
            deadline: Duration::from_secs(600),
            ..Limits::default()
        })?;
        let mut linker = Linker::new(sandbox.engine());
        let wasm = |e: wasmtime::Error| FnError::Engine(format!("{e:#}"));
        // All of WASI preview 2 (a Rust guest's std imports wasi:cli and wasi:filesystem
        // even when it never uses them); the store's WasiCtx grants no files, sockets or
        // inherited environment.
        wasmtime_wasi::p2::add_to_linker_async(&mut linker).map_err(wasm)?;
        wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker).map_err(wasm)?;
        let cache = ModuleCache::new(s.cache_dir.join("compiled"))?;
        let sources = s.cache_dir.join("sources");
        std::fs::create_dir_all(&sources)
            .map_err(|e| FnError::Io(format!("{}: {e}", sources.display())))?;
        Ok(Self {
            sandbox,
            linker,
            cache,
            sources,
        })
    }

    pub(crate) fn engine(&self) -> &wasmtime::Engine {
        self.sandbox.engine()
    }

    /// A deployed component made ready to instantiate: compiled (or read from the cache),
    /// its imports resolved once. The source is kept so the cache can be refilled.
    pub(crate) fn prepare(&self, sha256: &str, bytes: &[u8]) -> Result<ProxyPre<Host>, FnError> {
        let source = self.sources.join(format!("{sha256}.wasm"));
        if !source.is_file() {
            let tmp = source.with_extension(format!("tmp{}", std::process::id()));
            std::fs::write(&tmp, bytes)
                .and_then(|()| std::fs::rename(&tmp, &source))
                .map_err(|e| FnError::Io(format!("{}: {e}", source.display())))?;
        }
        let component = self
            .cache
            .component_keyed(self.engine(), sha256, || Ok(bytes.to_vec()))?;
        self.link(&component)
    }

    /// A component deployed earlier, from the cache (a cold start).
    pub(crate) fn reload(&self, sha256: &str) -> Result<ProxyPre<Host>, FnError> {
        let component = self.cache.component_keyed(self.engine(), sha256, || {
            let source = self.sources.join(format!("{sha256}.wasm"));
            std::fs::read(&source).map_err(rampart_wasm::WasmError::io(&source))
        })?;
        self.link(&component)
    }

    fn link(&self, component: &wasmtime::component::Component) -> Result<ProxyPre<Host>, FnError> {
        let pre = self
            .linker
            .instantiate_pre(component)
            .map_err(|e| FnError::Link(format!("{e:#}")))?;
        ProxyPre::new(pre).map_err(|e| {
            FnError::Link(format!(
                "not a wasi:http/proxy component (it must export wasi:http/incoming-handler): {e:#}"
            ))
        })
    }
}

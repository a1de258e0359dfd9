//! `wasm`: a proxy-wasm plugin (ABI 0.2.1, e.g. written for Envoy with the public SDK) as a
//! gateway filter, run in Rampart's WASM sandbox.
//!
//! ```yaml
//! wasm: { trusted_keys: ["<base64 Ed25519 public key>"] }   # top level
//! ...
//!     filters:
//!       - wasm:
//!           module: plugins/add_header.wasm   # signed: plugins/add_header.wasm.sig
//!           config: "x-tenant=acme"           # a string as is, anything else as JSON text
//!           fail_open: false                  # a failing plugin fails the request (500)
//!           allow_unsigned: false             # development only; logged
//! ```
//!
//! The module's signature is checked and the plugin started (and its configuration
//! accepted) when the config is applied, so a bad module rejects the config with the
//! field's path; compiled modules are reused across versions (and kept in
//! `wasm.cache_dir` across restarts when set). Each worker thread runs its own VM, made
//! when the filter is built (no lock on the request path); a new config version starts new
//! VMs while requests in flight finish on the old ones. A plugin that traps or runs past
//! its deadline fails only that request (500, or on through with `fail_open`), and its VM
//! is replaced.
//!
//! What a plugin sees: request and response heads with `:method`, `:path`, `:authority`,
//! `:scheme` / `:status` (the path was normalised before any filter runs, so a change to
//! `:path` is refused, logged); bodies, buffered while it pauses (up to 1 MiB); trailers;
//! HTTP calls to the gateway's clusters (the request waits for the answer); ticks, shared
//! data and queues; request properties. Calls made from body callbacks are not sent.
//! Metrics per plugin: `rampart_wasm_calls_total`, `rampart_wasm_failures_total`,
//! `rampart_wasm_callback_seconds`.

mod callout;
mod convert;
mod phases;
mod vms;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use http::StatusCode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use rampart_config::FieldError;
use rampart_config::filters::typed;
use rampart_config::model::WasmTrust;
use rampart_proxy::body::ProxyBody;
use rampart_proxy::callout::Upstreams;
use rampart_proxy::filter::{BuildEnv, FilterBuildError, FilterFactory, FilterRef};
use rampart_wasm::proxy_wasm::{Plugin, Prepared, Vm};
use rampart_wasm::signing::TrustedKeys;
use rampart_wasm::{Limits, ModuleCache, Sandbox, WasmError};

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWasmFilter {
    module: String,
    #[serde(default)]
    config: Option<serde_json::Value>,
    #[serde(default)]
    fail_open: bool,
    #[serde(default)]
    allow_unsigned: bool,
    /// The module's detached signature (base64), instead of a `.sig` file beside it.
    #[serde(default)]
    signature: Option<String>,
}

/// Where `module: store:sha256:HEX` modules come from: the config store the gateway
/// follows, handed to the filter by the binary (`Plugins::services`). Answers the module's
/// bytes (checked against the digest by the filter).
#[derive(Clone)]
pub struct ModuleStore(pub Arc<ReadModule>);

/// Reads a module's bytes by its SHA-256 (hex).
pub type ReadModule = dyn Fn(&str) -> Result<Vec<u8>, String> + Send + Sync;

/// The prefix of a module kept in the config store, by SHA-256.
pub const STORED: &str = "store:sha256:";

/// A checked `wasm` entry.
#[derive(Debug, Clone)]
pub struct WasmFilterConfig {
    pub module: PathBuf,
    /// What `proxy_on_configure` reads.
    pub config: Vec<u8>,
    pub fail_open: bool,
    pub allow_unsigned: bool,
    pub signature: Option<String>,
    /// The SHA-256 (hex) of a module kept in the config store (`module: store:sha256:HEX`).
    pub stored: Option<String>,
}

/// Registers as `wasm`.
pub struct WasmFactory;

impl FilterFactory for WasmFactory {
    type Config = WasmFilterConfig;

    fn name(&self) -> &'static str {
        "wasm"
    }

    fn parse(
        &self,
        path: &str,
        config: &serde_json::Value,
    ) -> Result<WasmFilterConfig, Vec<FieldError>> {
        let raw: RawWasmFilter = typed(path, config).map_err(|e| vec![e])?;
        if raw.module.trim().is_empty() {
            return Err(vec![FieldError {
                path: format!("{path}.module"),
                rule: "must name the plugin's .wasm file".into(),
            }]);
        }
        let stored = raw.module.strip_prefix(STORED).map(str::to_owned);
        if let Some(hex) = &stored
            && (hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()))
        {
            return Err(vec![FieldError {
                path: format!("{path}.module"),
                rule: format!("{STORED} must be followed by a SHA-256 in hex"),
            }]);
        }
        let config = match raw.config {
            None => Vec::new(),
            Some(serde_json::Value::String(s)) => s.into_bytes(),
            Some(other) => other.to_string().into_bytes(),
        };
        Ok(WasmFilterConfig {
            module: raw.module.into(),
            config,
            fail_open: raw.fail_open,
            allow_unsigned: raw.allow_unsigned,
            signature: raw.signature,
            stored,
        })
    }

    fn build(
        &self,
        config: WasmFilterConfig,
        env: &BuildEnv,
    ) -> Result<FilterRef, FilterBuildError> {
        let fail = |field: &str, message: String| FilterBuildError {
            field: field.to_owned(),
            message,
        };
        let bytes = module_bytes(&config, env).map_err(|m| fail("module", m))?;
        check_signature(&config, &bytes, env).map_err(|m| fail("module", m))?;
        let engine = env.shared(Engine::new);
        let sandbox = engine.sandbox.clone().map_err(|m| fail("module", m))?;
        let module = engine.compile(env, &bytes).map_err(|m| fail("module", m))?;
        let name = match &config.stored {
            Some(hex) => format!("sha256-{}", &hex[..12]),
            None => config
                .module
                .file_stem()
                .map_or_else(|| "plugin".to_owned(), |s| s.to_string_lossy().into_owned()),
        };
        let plugin = Plugin {
            config: config.config,
            name: name.clone(),
            vm_id: name.clone(),
        };
        let prepared =
            Prepared::new(&sandbox, &module, plugin).map_err(|e| fail("module", e.to_string()))?;
        // Started once here, so a plugin that rejects its configuration rejects the config.
        Vm::start(&sandbox, &prepared, None).map_err(|e| fail("config", e.to_string()))?;
        let metrics = env.shared(Metrics::register);
        let labels = vec![("plugin", name.clone())];
        let shared = Arc::new(Shared {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            sandbox,
            prepared,
            fail_open: config.fail_open,
            upstreams: env.get::<Upstreams>(),
            calls: metrics.calls.get_or_create(&labels).clone(),
            failures: metrics.failures.get_or_create(&labels).clone(),
            time: metrics.time.get_or_create(&labels).clone(),
            plugin: name,
        });
        for worker in &env.workers {
            let s = Arc::downgrade(&shared);
            worker.spawn(async move {
                if let Some(s) = s.upgrade() {
                    vms::warm(&s);
                }
            });
        }
        Ok(Arc::new(WasmFilter { shared }))
    }
}

/// The module: from the config store by digest (checked), or from its file.
fn module_bytes(config: &WasmFilterConfig, env: &BuildEnv) -> Result<Vec<u8>, String> {
    let Some(hex) = &config.stored else {
        return std::fs::read(&config.module)
            .map_err(|e| format!("cannot read {}: {e}", config.module.display()));
    };
    let store = env.get::<ModuleStore>().ok_or(
        "this gateway follows no config store to read the module from (rampart proxy --store)",
    )?;
    let bytes = (store.0)(hex)?;
    let digest = ring::digest::digest(&ring::digest::SHA256, &bytes);
    let got: String = digest.as_ref().iter().map(|b| format!("{b:02x}")).collect();
    if !got.eq_ignore_ascii_case(hex) {
        return Err(format!("the stored module's SHA-256 is {got}, not {hex}"));
    }
    Ok(bytes)
}

/// The module's signature checked against the config's `wasm.trusted_keys`, unless the
/// entry allows unsigned modules (logged).
fn check_signature(config: &WasmFilterConfig, bytes: &[u8], env: &BuildEnv) -> Result<(), String> {
    if config.allow_unsigned {
        tracing::warn!(module = %config.module.display(), "wasm filter: running a module WITHOUT checking its signature (allow_unsigned)");
        return Ok(());
    }
    let keys = env.get::<WasmTrust>().unwrap_or_default();
    let trusted = TrustedKeys::parse(&keys.trusted_keys).map_err(|e| e.to_string())?;
    if trusted.is_empty() {
        return Err("no wasm.trusted_keys in the config to check the module's signature with (or set allow_unsigned for development)".into());
    }
    let sig = match (&config.signature, &config.stored) {
        (Some(sig), _) => sig.clone(),
        (None, Some(_)) => {
            return Err(
                "a module from the store needs its signature in the entry (signature:)".into(),
            );
        }
        (None, None) => {
            let mut sig_path = config.module.as_os_str().to_owned();
            sig_path.push(".sig");
            std::fs::read_to_string(&sig_path)
                .map_err(|_| format!("no signature at {}", PathBuf::from(&sig_path).display()))?
        }
    };
    trusted
        .verify(bytes, &sig)
        .map(|_| ())
        .map_err(|e| e.to_string())
}

/// One sandbox per gateway, shared by its wasm filters, and the modules compiled for it
/// (by content: a new config version with the same module does not compile it again).
#[derive(Clone)]
struct Engine {
    sandbox: Result<Arc<Sandbox>, String>,
    compiled: Arc<Mutex<HashMap<Vec<u8>, wasmtime::Module>>>,
}

impl Engine {
    fn new(_: &BuildEnv) -> Self {
        Self {
            sandbox: Sandbox::new(Limits::default())
                .map(Arc::new)
                .map_err(|e| e.to_string()),
            compiled: Arc::default(),
        }
    }

    /// Most modules kept compiled in memory (each version's are reused by the next).
    const KEEP: usize = 64;

    fn compile(&self, env: &BuildEnv, bytes: &[u8]) -> Result<wasmtime::Module, String> {
        let sandbox = self.sandbox.as_ref().map_err(Clone::clone)?;
        let key = ring::digest::digest(&ring::digest::SHA256, bytes)
            .as_ref()
            .to_vec();
        let mut compiled = self.compiled.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(m) = compiled.get(&key) {
            return Ok(m.clone());
        }
        let dir = env.get::<WasmTrust>().and_then(|w| w.cache_dir);
        let module = match dir {
            Some(d) => ModuleCache::new(d).and_then(|c| c.module(sandbox.engine(), bytes)),
            None => wasmtime::Module::new(sandbox.engine(), bytes)
                .map_err(|e| WasmError::Compile(format!("{e:#}"))),
        }
        .map_err(|e| e.to_string())?;
        if compiled.len() >= Self::KEEP {
            compiled.clear();
        }
        compiled.insert(key, module.clone());
        Ok(module)
    }
}

type Labels = Vec<(&'static str, String)>;
type TimeFamily = Family<Labels, Histogram, fn() -> Histogram>;

fn callback_histogram() -> Histogram {
    // 1 µs to about 260 ms.
    Histogram::new(exponential_buckets(1e-6, 4.0, 10))
}

#[derive(Clone)]
struct Metrics {
    calls: Family<Labels, Counter>,
    failures: Family<Labels, Counter>,
    time: TimeFamily,
}

impl Metrics {
    fn register(env: &BuildEnv) -> Self {
        let m = Self {
            calls: Family::default(),
            failures: Family::default(),
            time: Family::new_with_constructor(callback_histogram),
        };
        env.metrics.register_with(|r| {
            r.register("wasm_calls", "Requests a wasm plugin was called for", m.calls.clone());
            r.register(
                "wasm_failures",
                "Plugin calls that trapped, ran past their deadline or broke the ABI (the VM is replaced)",
                m.failures.clone(),
            );
            r.register(
                "wasm_callback_seconds",
                "Time spent in a plugin's callbacks, per call into the VM",
                m.time.clone(),
            );
        });
        m
    }
}

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// A plugin as one config version runs it.
struct Shared {
    id: u64,
    sandbox: Arc<Sandbox>,
    prepared: Prepared,
    fail_open: bool,
    upstreams: Option<Upstreams>,
    plugin: String,
    calls: Counter,
    failures: Counter,
    time: Histogram,
}

impl Shared {
    /// A VM failed outside a request (a tick, a queue notice): counted and logged.
    fn failed_vm(&self, e: &WasmError) {
        self.failures.inc();
        tracing::warn!(plugin = %self.plugin, error = %e, "wasm plugin failed");
    }

    /// A VM failed on a request: counted and logged; the response to answer with unless
    /// the filter fails open.
    fn failed_request(&self, e: &WasmError) -> Option<http::Response<ProxyBody>> {
        self.failures.inc();
        tracing::warn!(plugin = %self.plugin, error = %e, fail_open = self.fail_open, "wasm plugin failed");
        (!self.fail_open)
            .then(|| convert::plain(StatusCode::INTERNAL_SERVER_ERROR, "plugin failed\n"))
    }
}

pub struct WasmFilter {
    shared: Arc<Shared>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stored_module_is_named_by_its_digest() {
        let hex = "ab".repeat(32);
        let ok = WasmFactory
            .parse(
                "f",
                &serde_json::json!({ "module": format!("{STORED}{hex}"), "signature": "c2ln" }),
            )
            .unwrap();
        assert_eq!(ok.stored.as_deref(), Some(hex.as_str()));
        assert_eq!(ok.signature.as_deref(), Some("c2ln"));
        for bad in ["store:sha256:", "store:sha256:xyz", "store:sha256:abab"] {
            let e = WasmFactory
                .parse("f", &serde_json::json!({ "module": bad }))
                .unwrap_err();
            assert_eq!(e[0].path, "f.module", "{bad}");
        }
        let file = WasmFactory
            .parse("f", &serde_json::json!({ "module": "/plugins/a.wasm" }))
            .unwrap();
        assert!(file.stored.is_none());
    }
}

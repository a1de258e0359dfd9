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
//! field's path. Each worker thread runs its own VM, made on its first request (no lock on
//! the request path). A plugin that traps or runs past its deadline fails only that request
//! (500, or on through with `fail_open`), and its VM is replaced on the thread's next
//! request. Request and response headers reach the plugin with `:method`, `:path`,
//! `:authority`, `:scheme` / `:status`; the path was normalised before any filter runs, so
//! a plugin's change to `:path` is refused (logged), not applied.

use std::cell::RefCell;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};

use http::{HeaderName, HeaderValue, StatusCode, request, response};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use rampart_config::FieldError;
use rampart_config::filters::typed;
use rampart_config::model::WasmTrust;
use rampart_proxy::body::ProxyBody;
use rampart_proxy::filter::{
    BuildEnv, FilterBuildError, FilterFactory, FilterRef, Flow, HttpFilter, RequestContext,
};
use rampart_wasm::proxy_wasm::{LocalResponse, Verdict, Vm};
use rampart_wasm::signing::TrustedKeys;
use rampart_wasm::{Limits, Sandbox, WasmError};

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
}

/// A checked `wasm` entry.
#[derive(Debug, Clone)]
pub struct WasmFilterConfig {
    pub module: PathBuf,
    /// What `proxy_on_configure` reads.
    pub config: Vec<u8>,
    pub fail_open: bool,
    pub allow_unsigned: bool,
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
        let bytes = std::fs::read(&config.module).map_err(|e| {
            fail(
                "module",
                format!("cannot read {}: {e}", config.module.display()),
            )
        })?;
        check_signature(&config, &bytes, env).map_err(|m| fail("module", m))?;
        let sandbox = env
            .shared(|_| {
                SharedSandbox(
                    Sandbox::new(Limits::default())
                        .map(Arc::new)
                        .map_err(|e| e.to_string()),
                )
            })
            .0
            .map_err(|m| fail("module", m))?;
        let module = wasmtime::Module::new(sandbox.engine(), &bytes)
            .map_err(|e| fail("module", format!("does not compile: {e:#}")))?;
        // Started once here, so a plugin that rejects its configuration rejects the config.
        Vm::start(&sandbox, &module, &config.config).map_err(|e| fail("config", e.to_string()))?;
        let plugin = config
            .module
            .file_stem()
            .map_or_else(|| "plugin".to_owned(), |s| s.to_string_lossy().into_owned());
        let metrics = env.shared(Metrics::register);
        Ok(Arc::new(WasmFilter {
            shared: Arc::new(Shared {
                id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
                sandbox,
                module,
                config: config.config,
                fail_open: config.fail_open,
                calls: metrics
                    .calls
                    .get_or_create(&vec![("plugin", plugin.clone())])
                    .clone(),
                failures: metrics
                    .failures
                    .get_or_create(&vec![("plugin", plugin.clone())])
                    .clone(),
                plugin,
            }),
        }))
    }
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
    let mut sig_path = config.module.as_os_str().to_owned();
    sig_path.push(".sig");
    let sig = std::fs::read_to_string(&sig_path)
        .map_err(|_| format!("no signature at {}", PathBuf::from(&sig_path).display()))?;
    trusted
        .verify(bytes, &sig)
        .map(|_| ())
        .map_err(|e| e.to_string())
}

/// One sandbox per gateway, shared by its wasm filters.
#[derive(Clone)]
struct SharedSandbox(Result<Arc<Sandbox>, String>);

type Labels = Vec<(&'static str, String)>;

#[derive(Clone)]
struct Metrics {
    calls: Family<Labels, Counter>,
    failures: Family<Labels, Counter>,
}

impl Metrics {
    fn register(env: &BuildEnv) -> Self {
        let m = Self {
            calls: Family::default(),
            failures: Family::default(),
        };
        env.metrics.register_with(|r| {
            r.register("wasm_calls", "Requests a wasm plugin was called for", m.calls.clone());
            r.register(
                "wasm_failures",
                "Plugin calls that trapped, ran past their deadline or broke the ABI (the VM is replaced)",
                m.failures.clone(),
            );
        });
        m
    }
}

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

struct Shared {
    id: u64,
    sandbox: Arc<Sandbox>,
    module: wasmtime::Module,
    config: Vec<u8>,
    fail_open: bool,
    plugin: String,
    calls: Counter,
    failures: Counter,
}

pub struct WasmFilter {
    shared: Arc<Shared>,
}

thread_local! {
    /// This thread's VM of each plugin, with the filter it belongs to (entries of filters
    /// a reload dropped are cleared on the next lookup).
    static VMS: RefCell<HashMap<u64, (Weak<Shared>, Vm)>> = RefCell::new(HashMap::new());
}

/// The request's context id in a plugin's VM, kept between the header phases.
#[derive(Clone, Default)]
struct Contexts(HashMap<u64, i32>);

impl WasmFilter {
    /// Runs `f` on this thread's VM of the plugin, making it first if needed; a failure
    /// drops the VM (the next request gets a fresh one).
    fn with_vm<T>(
        &self,
        f: impl FnOnce(&Sandbox, &mut Vm) -> Result<T, WasmError>,
    ) -> Result<T, WasmError> {
        let s = &self.shared;
        VMS.with(|cell| {
            let mut vms = cell.borrow_mut();
            vms.retain(|_, (owner, _)| owner.strong_count() > 0);
            let vm = match vms.entry(s.id) {
                std::collections::hash_map::Entry::Occupied(e) => &mut e.into_mut().1,
                std::collections::hash_map::Entry::Vacant(e) => {
                    let vm = Vm::start(&s.sandbox, &s.module, &s.config)?;
                    &mut e.insert((Arc::downgrade(s), vm)).1
                }
            };
            let result = f(&s.sandbox, vm);
            for line in vm.take_logs() {
                tracing::info!(plugin = %s.plugin, level = line.level, "{}", line.message);
            }
            if result.is_err() {
                vms.remove(&s.id);
            }
            result
        })
    }

    /// A failed call: counted, logged, and the request answered per `fail_open`.
    fn failed<'a>(&self, e: &WasmError) -> Flow<'a> {
        self.shared.failures.inc();
        tracing::warn!(plugin = %self.shared.plugin, error = %e, fail_open = self.shared.fail_open, "wasm plugin failed");
        if self.shared.fail_open {
            Flow::Continue
        } else {
            Flow::Respond(plain(StatusCode::INTERNAL_SERVER_ERROR, "plugin failed\n"))
        }
    }
}

impl HttpFilter for WasmFilter {
    fn name(&self) -> &'static str {
        "wasm"
    }

    fn on_request_headers<'a>(
        &'a self,
        ctx: &'a mut RequestContext,
        req: &'a mut request::Parts,
    ) -> Flow<'a> {
        self.shared.calls.inc();
        let mut headers = request_pairs(req);
        let outcome = self.with_vm(|sb, vm| {
            let id = vm.open(sb)?;
            let verdict = vm.request_headers(sb, id, &mut headers, false)?;
            if !matches!(verdict, Verdict::Continue) {
                vm.done(sb, id)?;
            }
            Ok((id, verdict))
        });
        match outcome {
            Ok((id, Verdict::Continue)) => {
                ctx.extensions
                    .get_or_insert_default::<Contexts>()
                    .0
                    .insert(self.shared.id, id);
                apply_request(req, &headers, &self.shared.plugin);
                Flow::Continue
            }
            Ok((_, Verdict::Respond(r))) => Flow::Respond(local(r)),
            // Nothing this host offers can resume a paused request yet.
            Ok((_, Verdict::Paused)) => {
                self.failed(&WasmError::Trap("the plugin paused the request".into()))
            }
            Err(e) => self.failed(&e),
        }
    }

    fn on_response_headers<'a>(
        &'a self,
        ctx: &'a mut RequestContext,
        resp: &'a mut response::Parts,
    ) -> Flow<'a> {
        let Some(id) = ctx
            .extensions
            .get::<Contexts>()
            .and_then(|c| c.0.get(&self.shared.id).copied())
        else {
            return Flow::Continue;
        };
        let mut headers = vec![(":status".to_owned(), resp.status.as_str().to_owned())];
        headers.extend(pairs(&resp.headers));
        let outcome = self.with_vm(|sb, vm| {
            let verdict = vm.response_headers(sb, id, &mut headers, false)?;
            vm.done(sb, id)?;
            Ok(verdict)
        });
        match outcome {
            Ok(Verdict::Continue) => {
                replace_headers(&mut resp.headers, &headers, &self.shared.plugin);
                Flow::Continue
            }
            Ok(Verdict::Respond(r)) => Flow::Respond(local(r)),
            Ok(Verdict::Paused) => {
                self.failed(&WasmError::Trap("the plugin paused the response".into()))
            }
            Err(e) => self.failed(&e),
        }
    }
}

/// The headers a plugin sees: pseudo-headers first, then each header whose value is text.
fn request_pairs(req: &request::Parts) -> Vec<(String, String)> {
    let mut out = vec![
        (":method".to_owned(), req.method.as_str().to_owned()),
        (
            ":path".to_owned(),
            req.uri
                .path_and_query()
                .map_or("/", |p| p.as_str())
                .to_owned(),
        ),
    ];
    if let Some(host) = req
        .headers
        .get(http::header::HOST)
        .and_then(|h| h.to_str().ok())
    {
        out.push((":authority".to_owned(), host.to_owned()));
    }
    out.push((
        ":scheme".to_owned(),
        req.uri.scheme_str().unwrap_or("http").to_owned(),
    ));
    out.extend(pairs(&req.headers));
    out
}

fn pairs(headers: &http::HeaderMap) -> impl Iterator<Item = (String, String)> + '_ {
    headers.iter().filter_map(|(k, v)| {
        v.to_str()
            .ok()
            .map(|v| (k.as_str().to_owned(), v.to_owned()))
    })
}

fn apply_request(req: &mut request::Parts, after: &[(String, String)], plugin: &str) {
    let path = req.uri.path_and_query().map_or("/", |p| p.as_str());
    if let Some((_, p)) = after.iter().find(|(k, _)| k == ":path")
        && p != path
    {
        tracing::warn!(plugin, from = path, to = %p, "a wasm plugin's change to :path is not applied (paths are normalised before filters run)");
    }
    replace_headers(&mut req.headers, after, plugin);
}

/// The text headers of `map` become those in `after` (pseudo-headers aside); headers whose
/// values are not text, which the plugin never saw, stay.
fn replace_headers(map: &mut http::HeaderMap, after: &[(String, String)], plugin: &str) {
    let text: Vec<HeaderName> = map
        .iter()
        .filter(|(_, v)| v.to_str().is_ok())
        .map(|(k, _)| k.clone())
        .collect();
    for k in text {
        map.remove(&k);
    }
    for (k, v) in after.iter().filter(|(k, _)| !k.starts_with(':')) {
        match (
            HeaderName::from_bytes(k.as_bytes()),
            HeaderValue::from_str(v),
        ) {
            (Ok(k), Ok(v)) => {
                map.append(k, v);
            }
            _ => {
                tracing::warn!(plugin, header = %k, "a wasm plugin set an invalid header; dropped");
            }
        }
    }
}

fn local(r: LocalResponse) -> http::Response<ProxyBody> {
    let mut resp = http::Response::new(ProxyBody::full(r.body));
    *resp.status_mut() =
        StatusCode::from_u16(r.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    for (k, v) in r.headers {
        if let (Ok(k), Ok(v)) = (
            HeaderName::from_bytes(k.as_bytes()),
            HeaderValue::from_str(&v),
        ) {
            resp.headers_mut().append(k, v);
        }
    }
    resp
}

fn plain(status: StatusCode, body: &'static str) -> http::Response<ProxyBody> {
    let mut resp = http::Response::new(ProxyBody::full(body));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

//! A proxy-wasm host (ABI 0.2.1): runs plugins written for Envoy with the public SDKs.
//!
//! A [`Vm`] is one plugin instance in the sandbox, made from a [`Prepared`] plugin (linked
//! once): started with its configuration (`proxy_on_vm_start`, `proxy_on_configure`), then
//! driven per request through a context id — `proxy_on_context_create`, the request and
//! response header, body and trailer callbacks, `proxy_on_done`, `proxy_on_log`,
//! `proxy_on_delete` — and on the root context by ticks, queue notices and the answers to
//! its HTTP calls.
//!
//! The caller lends each callback what it may see (a header map, the body buffered so far)
//! and gets it back as the plugin left it, with a [`Verdict`]. What the host offers:
//! header maps, body and call-response buffers, local responses, continue, shared data and
//! queues (per VM id, bounded), tick periods, `proxy_http_call` (recorded; the caller sends
//! it and hands the answer back), `proxy_get_property` / `proxy_set_property`, logs and the
//! clock. gRPC calls and metrics answer `Unimplemented`.
//!
//! Every call runs under the sandbox's deadline; a trap or a deadline is the call's error,
//! and the caller decides (fail open or closed) and replaces the VM.

mod abi;
mod buffers;
mod calls;
mod headers;
mod host;
mod link;
mod properties;
mod shared;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use wasmtime::{Func, Instance, InstancePre, Linker, Module, Store, Val};

pub use self::buffers::MAX_BODY_BYTES;
pub use self::calls::MAX_PENDING_CALLS;
pub use self::headers::{Headers, MAX_HEADERS, decode_pairs};
pub use self::host::{CallResponse, Host, HttpCall, LocalResponse, LogLine, Plugin};
pub use self::properties::RequestInfo;
pub use self::shared::{MAX_QUEUE_ITEMS, MAX_SHARED_BYTES, QueueNotifier};
use crate::{Sandbox, WasmError};

/// The root context's id; request contexts count up from it.
pub const ROOT: i32 = 1;

/// What the plugin decided in a callback.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Continue,
    /// It answered the request itself.
    Respond(LocalResponse),
    /// It paused the stream: to buffer the body, or until an HTTP call it made comes back.
    Paused,
}

/// A plugin compiled and linked once, from which VMs are made.
pub struct Prepared {
    pre: InstancePre<Host>,
    plugin: Arc<Plugin>,
}

impl Prepared {
    pub fn new(sandbox: &Sandbox, module: &Module, plugin: Plugin) -> Result<Self, WasmError> {
        check_imports(module)?;
        let mut linker: Linker<Host> = Linker::new(sandbox.engine());
        wasmtime_wasi::p1::add_to_linker_sync(&mut linker, |h: &mut Host| &mut h.wasi)
            .map_err(|e| WasmError::Engine(format!("{e:#}")))?;
        link::link_abi(&mut linker, module)?;
        let pre = linker
            .instantiate_pre(module)
            .map_err(|e| WasmError::Instantiate(format!("{e:#}")))?;
        Ok(Self {
            pre,
            plugin: Arc::new(plugin),
        })
    }

    pub fn plugin(&self) -> &Plugin {
        &self.plugin
    }
}

/// An export with its arity, read once (a function's type is not free to ask for).
#[derive(Clone, Copy)]
struct Export {
    func: Func,
    params: usize,
    results: usize,
}

impl Export {
    fn of(store: &Store<Host>, func: Option<Func>) -> Option<Self> {
        let func = func?;
        let ty = func.ty(store);
        Some(Self {
            func,
            params: ty.params().len(),
            results: ty.results().len(),
        })
    }
}

/// The callbacks a VM calls, looked up once.
#[derive(Clone, Copy)]
struct Exports {
    context_create: Option<Export>,
    request_headers: Option<Export>,
    request_body: Option<Export>,
    request_trailers: Option<Export>,
    response_headers: Option<Export>,
    response_body: Option<Export>,
    response_trailers: Option<Export>,
    done: Option<Export>,
    log: Option<Export>,
    delete: Option<Export>,
    tick: Option<Export>,
    queue_ready: Option<Export>,
    call_response: Option<Export>,
}

impl Exports {
    fn find(instance: &Instance, store: &mut Store<Host>) -> Self {
        let mut f = |name: &str| {
            let func = instance.get_func(&mut *store, name);
            Export::of(store, func)
        };
        Self {
            context_create: f("proxy_on_context_create"),
            request_headers: f("proxy_on_request_headers"),
            request_body: f("proxy_on_request_body"),
            request_trailers: f("proxy_on_request_trailers"),
            response_headers: f("proxy_on_response_headers"),
            response_body: f("proxy_on_response_body"),
            response_trailers: f("proxy_on_response_trailers"),
            done: f("proxy_on_done"),
            log: f("proxy_on_log"),
            delete: f("proxy_on_delete"),
            tick: f("proxy_on_tick"),
            queue_ready: f("proxy_on_queue_ready"),
            call_response: f("proxy_on_http_call_response"),
        }
    }
}

static SERIAL: AtomicU64 = AtomicU64::new(1);

/// One plugin instance.
pub struct Vm {
    store: Store<Host>,
    exports: Exports,
    next_context: i32,
    serial: u64,
}

impl Vm {
    /// Instantiates the plugin and configures it; a plugin whose `proxy_on_configure` says
    /// no is refused. `notifier` hears of items on the queues this VM registers.
    pub fn start(
        sandbox: &Sandbox,
        prepared: &Prepared,
        notifier: Option<QueueNotifier>,
    ) -> Result<Self, WasmError> {
        let host = Host::new(sandbox.store_limits(), prepared.plugin.clone(), notifier);
        let mut store = sandbox.store(host);
        sandbox.arm(&mut store);
        let instance = prepared
            .pre
            .instantiate(&mut store)
            .map_err(|e| WasmError::from_run(&e, sandbox.limits().deadline))?;
        store.data_mut().guest.memory = instance.get_memory(&mut store, "memory");
        store.data_mut().guest.alloc = instance
            .get_func(&mut store, "proxy_on_memory_allocate")
            .or_else(|| instance.get_func(&mut store, "malloc"));
        let exports = Exports::find(&instance, &mut store);
        let mut vm = Self {
            store,
            exports,
            next_context: ROOT + 1,
            serial: SERIAL.fetch_add(1, Ordering::Relaxed),
        };
        // A reactor's (cdylib's) initialiser: the SDK's `main!` runs in it.
        let init = instance.get_func(&mut vm.store, "_initialize");
        let init = Export::of(&vm.store, init);
        vm.call(sandbox, init, &[])?;
        vm.call(sandbox, vm.exports.context_create, &[ROOT, 0])?;
        let on_start = instance.get_func(&mut vm.store, "proxy_on_vm_start");
        let on_start = Export::of(&vm.store, on_start);
        vm.call(sandbox, on_start, &[ROOT, 0])?;
        let size = i32::try_from(prepared.plugin.config.len()).unwrap_or(i32::MAX);
        let on_configure = instance.get_func(&mut vm.store, "proxy_on_configure");
        let on_configure = Export::of(&vm.store, on_configure);
        if on_configure.is_some() && vm.call(sandbox, on_configure, &[ROOT, size])? == 0 {
            return Err(WasmError::Instantiate(
                "the plugin rejected its configuration (proxy_on_configure returned false)".into(),
            ));
        }
        Ok(vm)
    }

    /// Tells this VM apart from any other of the process (a replaced VM gets a new one).
    pub fn serial(&self) -> u64 {
        self.serial
    }

    /// What the plugin logged since the last call.
    pub fn take_logs(&mut self) -> Vec<LogLine> {
        std::mem::take(&mut self.store.data_mut().logs)
    }

    /// The HTTP calls the plugin dispatched and the caller has not taken yet.
    pub fn take_calls(&mut self) -> Vec<HttpCall> {
        std::mem::take(&mut self.store.data_mut().effects.calls)
    }

    /// How often the plugin asked for `proxy_on_tick` (none: never).
    pub fn tick_period(&self) -> Option<Duration> {
        self.store.data().tick
    }

    /// A new request context with the facts `proxy_get_property` answers from; pass its id
    /// to the stream callbacks and [`Vm::done`].
    pub fn open(&mut self, sandbox: &Sandbox, info: RequestInfo) -> Result<i32, WasmError> {
        let id = self.next_context;
        self.next_context = self.next_context.checked_add(1).unwrap_or(ROOT + 1);
        self.store.data_mut().requests.insert(id, info);
        self.call(sandbox, self.exports.context_create, &[id, ROOT])?;
        Ok(id)
    }

    /// Runs `proxy_on_request_headers`; `headers` come back as the plugin left them.
    pub fn request_headers(
        &mut self,
        sandbox: &Sandbox,
        context: i32,
        headers: &mut Headers,
        end_of_stream: bool,
    ) -> Result<Verdict, WasmError> {
        let n = count(headers.len());
        let f = self.exports.request_headers;
        self.lend(
            headers,
            |h| &mut h.stream.request,
            |vm| vm.callback(sandbox, context, f, &[context, n, i32::from(end_of_stream)]),
        )
    }

    /// Runs `proxy_on_response_headers`, as [`Vm::request_headers`].
    pub fn response_headers(
        &mut self,
        sandbox: &Sandbox,
        context: i32,
        headers: &mut Headers,
        end_of_stream: bool,
    ) -> Result<Verdict, WasmError> {
        if let Some(code) = headers.pseudo(":status").and_then(|s| s.parse().ok())
            && let Some(info) = self.store.data_mut().requests.get_mut(&context)
        {
            info.response_code = Some(code);
        }
        let n = count(headers.len());
        let f = self.exports.response_headers;
        self.lend(
            headers,
            |h| &mut h.stream.response,
            |vm| vm.callback(sandbox, context, f, &[context, n, i32::from(end_of_stream)]),
        )
    }

    /// Runs `proxy_on_request_body` (`response` false) or `proxy_on_response_body` with
    /// the body buffered so far, which comes back as the plugin left it. `Paused` asks the
    /// caller to keep buffering.
    pub fn body(
        &mut self,
        sandbox: &Sandbox,
        (context, response): (i32, bool),
        body: &mut Vec<u8>,
        end_of_stream: bool,
    ) -> Result<Verdict, WasmError> {
        let (kind, f) = if response {
            (abi::RESPONSE_BODY, self.exports.response_body)
        } else {
            (abi::REQUEST_BODY, self.exports.request_body)
        };
        let n = count(body.len());
        self.store.data_mut().stream.body = Some((kind, std::mem::take(body)));
        let verdict = self.callback(sandbox, context, f, &[context, n, i32::from(end_of_stream)]);
        if let Some((_, b)) = self.store.data_mut().stream.body.take() {
            *body = b;
        }
        verdict
    }

    /// Runs `proxy_on_request_trailers` (`response` false) or `proxy_on_response_trailers`.
    pub fn trailers(
        &mut self,
        sandbox: &Sandbox,
        (context, is_response): (i32, bool),
        trailers: &mut Headers,
    ) -> Result<Verdict, WasmError> {
        let n = count(trailers.len());
        let f = if is_response {
            self.exports.response_trailers
        } else {
            self.exports.request_trailers
        };
        fn request(h: &mut Host) -> &mut Option<Headers> {
            &mut h.stream.request_trailers
        }
        fn response(h: &mut Host) -> &mut Option<Headers> {
            &mut h.stream.response_trailers
        }
        let slot = if is_response { response } else { request };
        self.lend(trailers, slot, |vm| {
            vm.callback(sandbox, context, f, &[context, n])
        })
    }

    /// Hands an HTTP call's answer (`None`: it failed or timed out) to the context that made
    /// it, with the request headers lent meanwhile (a plugin often sets one from the answer
    /// before it resumes). `Continue` once the plugin resumed the request.
    pub fn http_call_response(
        &mut self,
        sandbox: &Sandbox,
        (context, token): (i32, u32),
        response: Option<CallResponse>,
        request: Option<&mut Headers>,
    ) -> Result<Verdict, WasmError> {
        let r = response.unwrap_or_default();
        let args = [
            context,
            i32::from_le_bytes(token.to_le_bytes()),
            count(r.headers.len()),
            count(r.body.len()),
            count(r.trailers.len()),
        ];
        self.store.data_mut().stream.call = Some(r);
        let f = self.exports.call_response;
        let verdict = match request {
            Some(h) => self.lend(
                h,
                |h| &mut h.stream.request,
                |vm| vm.callback(sandbox, context, f, &args),
            ),
            None => self.callback(sandbox, context, f, &args),
        };
        self.store.data_mut().stream.call = None;
        verdict
    }

    /// The request is over: `proxy_on_done`, `proxy_on_log`, `proxy_on_delete`.
    pub fn done(&mut self, sandbox: &Sandbox, context: i32) -> Result<(), WasmError> {
        let e = self.exports;
        self.store.data_mut().stream.context = context;
        let result = self
            .call(sandbox, e.done, &[context])
            .and_then(|_| self.call(sandbox, e.log, &[context]))
            .and_then(|_| self.call(sandbox, e.delete, &[context]));
        self.store.data_mut().requests.remove(&context);
        result.map(|_| ())
    }

    /// `proxy_on_tick` on the root context.
    pub fn tick(&mut self, sandbox: &Sandbox) -> Result<(), WasmError> {
        self.callback(sandbox, ROOT, self.exports.tick, &[ROOT])
            .map(|_| ())
    }

    /// `proxy_on_queue_ready` on the root context.
    pub fn queue_ready(&mut self, sandbox: &Sandbox, queue: u32) -> Result<(), WasmError> {
        let q = i32::from_le_bytes(queue.to_le_bytes());
        self.callback(sandbox, ROOT, self.exports.queue_ready, &[ROOT, q])
            .map(|_| ())
    }

    /// Open request contexts (a leak shows here).
    pub fn open_contexts(&self) -> usize {
        self.store.data().requests.len()
    }

    /// Lends `value` to the host in `slot` for `f`, and takes it back.
    fn lend<T>(
        &mut self,
        value: &mut T,
        slot: fn(&mut Host) -> &mut Option<T>,
        f: impl FnOnce(&mut Self) -> Result<Verdict, WasmError>,
    ) -> Result<Verdict, WasmError>
    where
        T: Default,
    {
        *slot(self.store.data_mut()) = Some(std::mem::take(value));
        let verdict = f(self);
        if let Some(v) = slot(self.store.data_mut()).take() {
            *value = v;
        }
        verdict
    }

    /// A stream callback on `context`: what the plugin decided.
    fn callback(
        &mut self,
        sandbox: &Sandbox,
        context: i32,
        f: Option<Export>,
        args: &[i32],
    ) -> Result<Verdict, WasmError> {
        let host = self.store.data_mut();
        host.stream.context = context;
        host.effects.local = None;
        host.effects.resumed = false;
        let action = self.call(sandbox, f, args)?;
        let effects = &mut self.store.data_mut().effects;
        Ok(if let Some(r) = effects.local.take() {
            Verdict::Respond(r)
        } else if action == 0 || effects.resumed {
            Verdict::Continue
        } else {
            Verdict::Paused
        })
    }

    /// Calls an export (absent: nothing to do) with i32 arguments under a fresh deadline;
    /// its i32 result (0 when it returns nothing).
    fn call(
        &mut self,
        sandbox: &Sandbox,
        f: Option<Export>,
        args: &[i32],
    ) -> Result<i32, WasmError> {
        let Some(f) = f else { return Ok(0) };
        let mut params = [const { Val::I32(0) }; 5];
        for (p, a) in params.iter_mut().zip(args) {
            *p = Val::I32(*a);
        }
        let n = f.params.min(params.len());
        let mut results = [Val::I32(0)];
        let r = f.results.min(1);
        sandbox.arm(&mut self.store);
        f.func
            .call(&mut self.store, &params[..n], &mut results[..r])
            .map_err(|e| WasmError::from_run(&e, sandbox.limits().deadline))?;
        Ok(results[0].i32().unwrap_or(0))
    }
}

fn count(n: usize) -> i32 {
    i32::try_from(n).unwrap_or(i32::MAX)
}

/// Plugins import the ABI (`env`) and WASI preview 1, nothing else.
fn check_imports(module: &Module) -> Result<(), WasmError> {
    for i in module.imports() {
        if i.module() != "env" && i.module() != "wasi_snapshot_preview1" {
            return Err(WasmError::ForbiddenImport {
                module: i.module().to_owned(),
                name: i.name().to_owned(),
                profile: "proxy-wasm",
            });
        }
    }
    Ok(())
}

//! A proxy-wasm host (ABI 0.2.1): runs plugins written for Envoy with the public SDKs.
//!
//! A [`Vm`] is one plugin instance in the sandbox: started with its configuration
//! (`proxy_on_vm_start`, `proxy_on_configure`), then driven per request through a context
//! id (`proxy_on_context_create`, request and response header callbacks, `proxy_on_done`,
//! `proxy_on_log`, `proxy_on_delete`). The host side so far: header maps (get, set, add,
//! replace, remove, pairs), local responses, the plugin configuration buffer, logging and
//! the clock. The other ABI functions answer `Unimplemented` (bodies, trailers, shared
//! data and queues, timers, HTTP and gRPC calls come next). Every call runs under the
//! sandbox's deadline; a trap or a deadline is the call's error, and the caller decides
//! (fail open or closed) and replaces the VM.

use wasmtime::{Caller, Extern, Instance, Linker, Module, Store, Val};
use wasmtime_wasi::p1::WasiP1Ctx;

use crate::{Sandbox, StoreLimits, WasmError};

/// Header map types of the ABI.
const REQUEST_HEADERS: i32 = 0;
const RESPONSE_HEADERS: i32 = 2;
/// Buffer types of the ABI.
const VM_CONFIGURATION: i32 = 6;
const PLUGIN_CONFIGURATION: i32 = 7;

/// Status codes of the ABI.
const OK: i32 = 0;
const NOT_FOUND: i32 = 1;
const BAD_ARGUMENT: i32 = 2;
const INVALID_MEMORY_ACCESS: i32 = 6;
const UNIMPLEMENTED: i32 = 12;

/// Most entries a plugin may leave in a header map.
pub const MAX_HEADERS: usize = 512;

/// The root context's id; request contexts count up from it.
const ROOT: i32 = 1;

/// A response the plugin answered with instead of letting the request through.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

/// What the plugin decided about a request or response head.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Continue,
    Respond(LocalResponse),
    /// The plugin paused without answering (it waits for something this host does not
    /// offer yet, such as an HTTP call).
    Paused,
}

/// A log line the plugin wrote, with its ABI level (0 trace … 5 critical).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogLine {
    pub level: i32,
    pub message: String,
}

/// The host's side of one VM.
pub struct Host {
    limits: wasmtime::StoreLimits,
    wasi: WasiP1Ctx,
    config: Vec<u8>,
    request_headers: Vec<(String, String)>,
    response_headers: Vec<(String, String)>,
    local: Option<LocalResponse>,
    /// What the plugin logged (the caller drains it into its own log).
    pub logs: Vec<LogLine>,
}

impl StoreLimits for Host {
    fn limits(&mut self) -> &mut wasmtime::StoreLimits {
        &mut self.limits
    }
}

/// One plugin instance.
pub struct Vm {
    store: Store<Host>,
    instance: Instance,
    next_context: i32,
}

impl Vm {
    /// Instantiates `module` (already checked against its signature) and configures it
    /// with `config`; a plugin whose `proxy_on_configure` says no is refused.
    pub fn start(sandbox: &Sandbox, module: &Module, config: &[u8]) -> Result<Self, WasmError> {
        check_imports(module)?;
        let mut linker: Linker<Host> = Linker::new(sandbox.engine());
        wasmtime_wasi::p1::add_to_linker_sync(&mut linker, |h: &mut Host| &mut h.wasi)
            .map_err(|e| WasmError::Engine(format!("{e:#}")))?;
        link_abi(&mut linker, module)?;
        let host = Host {
            limits: sandbox.store_limits(),
            wasi: wasmtime_wasi::WasiCtxBuilder::new().build_p1(),
            config: config.to_vec(),
            request_headers: Vec::new(),
            response_headers: Vec::new(),
            local: None,
            logs: Vec::new(),
        };
        let mut store = sandbox.store(host);
        let instance = linker
            .instantiate(&mut store, module)
            .map_err(|e| WasmError::Instantiate(format!("{e:#}")))?;
        let mut vm = Self {
            store,
            instance,
            next_context: ROOT + 1,
        };
        if vm.instance.get_func(&mut vm.store, "_initialize").is_some() {
            vm.call(sandbox, "_initialize", &[])?;
        }
        vm.call(sandbox, "proxy_on_context_create", &[ROOT, 0])?;
        vm.call(sandbox, "proxy_on_vm_start", &[ROOT, 0])?;
        let size = i32::try_from(config.len()).unwrap_or(i32::MAX);
        if vm.call(sandbox, "proxy_on_configure", &[ROOT, size])? == 0 {
            return Err(WasmError::Instantiate(
                "the plugin rejected its configuration (proxy_on_configure returned false)".into(),
            ));
        }
        Ok(vm)
    }

    /// What the plugin logged since the last call.
    pub fn take_logs(&mut self) -> Vec<LogLine> {
        std::mem::take(&mut self.store.data_mut().logs)
    }

    /// A new request context; pass its id to the header callbacks and [`Vm::done`].
    pub fn open(&mut self, sandbox: &Sandbox) -> Result<i32, WasmError> {
        let id = self.next_context;
        self.next_context = self.next_context.checked_add(1).unwrap_or(ROOT + 1);
        self.call(sandbox, "proxy_on_context_create", &[id, ROOT])?;
        Ok(id)
    }

    /// Runs `proxy_on_request_headers`; `headers` (with `:method`, `:path`, `:authority`
    /// pseudo-headers first) come back as the plugin left them.
    pub fn request_headers(
        &mut self,
        sandbox: &Sandbox,
        context: i32,
        headers: &mut Vec<(String, String)>,
        end_of_stream: bool,
    ) -> Result<Verdict, WasmError> {
        self.headers(sandbox, (context, REQUEST_HEADERS), headers, end_of_stream)
    }

    /// Runs `proxy_on_response_headers`, as [`Vm::request_headers`].
    pub fn response_headers(
        &mut self,
        sandbox: &Sandbox,
        context: i32,
        headers: &mut Vec<(String, String)>,
        end_of_stream: bool,
    ) -> Result<Verdict, WasmError> {
        self.headers(sandbox, (context, RESPONSE_HEADERS), headers, end_of_stream)
    }

    /// A header callback on `(context, map type)`: the map lent to the plugin meanwhile.
    fn headers(
        &mut self,
        sandbox: &Sandbox,
        (context, kind): (i32, i32),
        headers: &mut Vec<(String, String)>,
        end_of_stream: bool,
    ) -> Result<Verdict, WasmError> {
        let export = if kind == REQUEST_HEADERS {
            "proxy_on_request_headers"
        } else {
            "proxy_on_response_headers"
        };
        let n = i32::try_from(headers.len()).unwrap_or(i32::MAX);
        if let Some(m) = map(self.store.data_mut(), kind) {
            *m = std::mem::take(headers);
        }
        let action = self.call(sandbox, export, &[context, n, i32::from(end_of_stream)]);
        if let Some(m) = map(self.store.data_mut(), kind) {
            *headers = std::mem::take(m);
        }
        self.verdict(action?)
    }

    /// The request is over: `proxy_on_done`, `proxy_on_log`, `proxy_on_delete`.
    pub fn done(&mut self, sandbox: &Sandbox, context: i32) -> Result<(), WasmError> {
        self.call(sandbox, "proxy_on_done", &[context])?;
        self.call(sandbox, "proxy_on_log", &[context])?;
        self.call(sandbox, "proxy_on_delete", &[context])?;
        Ok(())
    }

    fn verdict(&mut self, action: i32) -> Result<Verdict, WasmError> {
        if let Some(r) = self.store.data_mut().local.take() {
            return Ok(Verdict::Respond(r));
        }
        Ok(if action == 0 {
            Verdict::Continue
        } else {
            Verdict::Paused
        })
    }

    /// Calls an export with i32 arguments under a fresh deadline; its i32 result (0 when
    /// it returns nothing).
    fn call(&mut self, sandbox: &Sandbox, name: &str, args: &[i32]) -> Result<i32, WasmError> {
        let f = self
            .instance
            .get_func(&mut self.store, name)
            .ok_or_else(|| WasmError::Instantiate(format!("the plugin does not export {name}")))?;
        let params: Vec<Val> = args.iter().map(|a| Val::I32(*a)).collect();
        let mut results = vec![Val::I32(0); f.ty(&self.store).results().len()];
        sandbox.arm(&mut self.store);
        f.call(&mut self.store, &params, &mut results)
            .map_err(|e| WasmError::from_run(&e, sandbox.limits().deadline))?;
        Ok(results.first().and_then(Val::i32).unwrap_or(0))
    }
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

/// The `env` functions this host implements; the other `env` imports answer
/// `Unimplemented`.
const IMPLEMENTED: &[&str] = &[
    "proxy_log",
    "proxy_get_buffer_bytes",
    "proxy_get_header_map_pairs",
    "proxy_get_header_map_value",
    "proxy_add_header_map_value",
    "proxy_replace_header_map_value",
    "proxy_remove_header_map_value",
    "proxy_send_local_response",
    "proxy_get_current_time_nanoseconds",
    "proxy_continue_stream",
    "proxy_close_stream",
    "proxy_done",
];

/// The ABI functions this host implements (their signatures are the ABI's), and
/// `Unimplemented` for the other `env` imports of `module`, whatever their signature.
fn link_abi(linker: &mut Linker<Host>, module: &Module) -> Result<(), WasmError> {
    type C<'a> = Caller<'a, Host>;
    let e = |e: wasmtime::Error| WasmError::Engine(format!("{e:#}"));
    linker.func_wrap("env", "proxy_log", proxy_log).map_err(e)?;
    linker
        .func_wrap(
            "env",
            "proxy_get_buffer_bytes",
            |c: C<'_>, kind: i32, start: i32, max: i32, out_p: i32, out_l: i32| {
                get_buffer_bytes(c, kind, (start, max), (out_p, out_l))
            },
        )
        .map_err(e)?;
    linker
        .func_wrap("env", "proxy_get_header_map_pairs", get_header_map_pairs)
        .map_err(e)?;
    linker
        .func_wrap(
            "env",
            "proxy_get_header_map_value",
            |c: C<'_>, kind: i32, kp: i32, kl: i32, out_p: i32, out_l: i32| {
                get_header_map_value(c, kind, (kp, kl), (out_p, out_l))
            },
        )
        .map_err(e)?;
    linker
        .func_wrap(
            "env",
            "proxy_add_header_map_value",
            |c: C<'_>, kind: i32, kp: i32, kl: i32, vp: i32, vl: i32| {
                set_header(c, kind, (kp, kl), (vp, vl), false)
            },
        )
        .map_err(e)?;
    linker
        .func_wrap(
            "env",
            "proxy_replace_header_map_value",
            |c: C<'_>, kind: i32, kp: i32, kl: i32, vp: i32, vl: i32| {
                set_header(c, kind, (kp, kl), (vp, vl), true)
            },
        )
        .map_err(e)?;
    linker
        .func_wrap(
            "env",
            "proxy_remove_header_map_value",
            remove_header_map_value,
        )
        .map_err(e)?;
    linker
        .func_wrap(
            "env",
            "proxy_send_local_response",
            |c: C<'_>,
             status: i32,
             _dp: i32,
             _dl: i32,
             bp: i32,
             bl: i32,
             hp: i32,
             hl: i32,
             _grpc: i32| { send_local_response(c, status, (bp, bl), (hp, hl)) },
        )
        .map_err(e)?;
    linker
        .func_wrap("env", "proxy_get_current_time_nanoseconds", current_time)
        .map_err(e)?;
    for ok in ["proxy_continue_stream", "proxy_close_stream"] {
        linker.func_wrap("env", ok, |_: i32| OK).map_err(e)?;
    }
    linker.func_wrap("env", "proxy_done", || OK).map_err(e)?;
    link_unimplemented(linker, module)
}

/// `Unimplemented` for the `env` imports of `module` this host does not implement.
fn link_unimplemented(linker: &mut Linker<Host>, module: &Module) -> Result<(), WasmError> {
    let e = |e: wasmtime::Error| WasmError::Engine(format!("{e:#}"));
    for import in module.imports() {
        if import.module() != "env" || IMPLEMENTED.contains(&import.name()) {
            continue;
        }
        if let wasmtime::ExternType::Func(ty) = import.ty() {
            linker
                .func_new("env", import.name(), ty, |_, _, results| {
                    for r in results.iter_mut() {
                        *r = Val::I32(UNIMPLEMENTED);
                    }
                    Ok(())
                })
                .map_err(e)?;
        }
    }
    Ok(())
}

/// An ABI pointer or size: a wasm32 `u32` that travels as `i32`.
fn u(x: i32) -> usize {
    usize::try_from(u32::from_le_bytes(x.to_le_bytes())).unwrap_or(usize::MAX)
}

fn memory(caller: &mut Caller<'_, Host>) -> Option<wasmtime::Memory> {
    match caller.get_export("memory") {
        Some(Extern::Memory(m)) => Some(m),
        _ => None,
    }
}

/// `len` bytes at `ptr` in the guest's memory.
fn read(caller: &mut Caller<'_, Host>, ptr: i32, len: i32) -> Option<Vec<u8>> {
    let mem = memory(caller)?;
    let (ptr, len) = (u(ptr), u(len));
    // A guest cannot make the host allocate more than its own memory holds.
    if len > mem.data_size(&caller) {
        return None;
    }
    let mut buf = vec![0; len];
    mem.read(&caller, ptr, &mut buf).ok()?;
    Some(buf)
}

fn read_str(caller: &mut Caller<'_, Host>, ptr: i32, len: i32) -> Option<String> {
    read(caller, ptr, len).map(|b| String::from_utf8_lossy(&b).into_owned())
}

/// Copies `bytes` into memory the guest allocates, and writes where and how long at
/// `out_ptr` and `out_len`.
fn give(caller: &mut Caller<'_, Host>, bytes: &[u8], out_ptr: i32, out_len: i32) -> i32 {
    let Some(alloc) = caller
        .get_export("proxy_on_memory_allocate")
        .or_else(|| caller.get_export("malloc"))
        .and_then(Extern::into_func)
    else {
        return INVALID_MEMORY_ACCESS;
    };
    let Ok(len) = i32::try_from(bytes.len()) else {
        return BAD_ARGUMENT;
    };
    let mut res = [Val::I32(0)];
    if alloc
        .call(&mut *caller, &[Val::I32(len)], &mut res)
        .is_err()
    {
        return INVALID_MEMORY_ACCESS;
    }
    let ptr = res[0].i32().unwrap_or(0);
    let Some(mem) = memory(caller) else {
        return INVALID_MEMORY_ACCESS;
    };
    let at = u;
    let ok = mem.write(&mut *caller, at(ptr), bytes).is_ok()
        && mem
            .write(&mut *caller, at(out_ptr), &ptr.to_le_bytes())
            .is_ok()
        && mem
            .write(&mut *caller, at(out_len), &len.to_le_bytes())
            .is_ok();
    if ok { OK } else { INVALID_MEMORY_ACCESS }
}

fn proxy_log(mut caller: Caller<'_, Host>, level: i32, ptr: i32, len: i32) -> i32 {
    let Some(message) = read_str(&mut caller, ptr, len) else {
        return INVALID_MEMORY_ACCESS;
    };
    let logs = &mut caller.data_mut().logs;
    // A plugin that floods its log is cut off, not the host's memory.
    if logs.len() < 1000 {
        logs.push(LogLine { level, message });
    }
    OK
}

fn get_buffer_bytes(
    mut caller: Caller<'_, Host>,
    kind: i32,
    range: (i32, i32),
    out: (i32, i32),
) -> i32 {
    if kind != PLUGIN_CONFIGURATION && kind != VM_CONFIGURATION {
        return NOT_FOUND;
    }
    let config = if kind == PLUGIN_CONFIGURATION {
        caller.data().config.clone()
    } else {
        Vec::new()
    };
    let start = u(range.0).min(config.len());
    let end = start.saturating_add(u(range.1)).min(config.len());
    give(&mut caller, &config[start..end], out.0, out.1)
}

fn map(host: &mut Host, kind: i32) -> Option<&mut Vec<(String, String)>> {
    match kind {
        REQUEST_HEADERS => Some(&mut host.request_headers),
        RESPONSE_HEADERS => Some(&mut host.response_headers),
        _ => None,
    }
}

/// The ABI's header map encoding: count, then each key and value length, then each key
/// and value, each followed by a NUL.
fn encode_pairs(pairs: &[(String, String)]) -> Vec<u8> {
    let mut out = Vec::new();
    let len = |n: usize| u32::try_from(n).unwrap_or(u32::MAX).to_le_bytes();
    out.extend_from_slice(&len(pairs.len()));
    for (k, v) in pairs {
        out.extend_from_slice(&len(k.len()));
        out.extend_from_slice(&len(v.len()));
    }
    for (k, v) in pairs {
        out.extend_from_slice(k.as_bytes());
        out.push(0);
        out.extend_from_slice(v.as_bytes());
        out.push(0);
    }
    out
}

fn get_header_map_pairs(
    mut caller: Caller<'_, Host>,
    kind: i32,
    out_ptr: i32,
    out_len: i32,
) -> i32 {
    let Some(pairs) = map(caller.data_mut(), kind).map(|m| encode_pairs(m)) else {
        return NOT_FOUND;
    };
    give(&mut caller, &pairs, out_ptr, out_len)
}

fn get_header_map_value(
    mut caller: Caller<'_, Host>,
    kind: i32,
    key: (i32, i32),
    out: (i32, i32),
) -> i32 {
    let Some(key) = read_str(&mut caller, key.0, key.1) else {
        return INVALID_MEMORY_ACCESS;
    };
    let value = map(caller.data_mut(), kind)
        .and_then(|m| m.iter().find(|(k, _)| k.eq_ignore_ascii_case(&key)))
        .map(|(_, v)| v.clone());
    match value {
        Some(v) => give(&mut caller, v.as_bytes(), out.0, out.1),
        None => NOT_FOUND,
    }
}

/// Key and value of a header call, or the status to answer.
fn key_value(
    caller: &mut Caller<'_, Host>,
    k: (i32, i32),
    v: (i32, i32),
) -> Result<(String, String), i32> {
    let key = read_str(caller, k.0, k.1).ok_or(INVALID_MEMORY_ACCESS)?;
    let value = read_str(caller, v.0, v.1).ok_or(INVALID_MEMORY_ACCESS)?;
    Ok((key.to_ascii_lowercase(), value))
}

/// Adds a header, or (`replace`) sets it in place of any with that name.
fn set_header(
    mut caller: Caller<'_, Host>,
    kind: i32,
    k: (i32, i32),
    v: (i32, i32),
    replace: bool,
) -> i32 {
    let (key, value) = match key_value(&mut caller, k, v) {
        Ok(kv) => kv,
        Err(status) => return status,
    };
    match map(caller.data_mut(), kind) {
        Some(m) => {
            if replace {
                m.retain(|(name, _)| !name.eq_ignore_ascii_case(&key));
            }
            // A plugin cannot grow a header map without bound.
            if m.len() >= MAX_HEADERS {
                return BAD_ARGUMENT;
            }
            m.push((key, value));
            OK
        }
        None => NOT_FOUND,
    }
}

fn remove_header_map_value(mut caller: Caller<'_, Host>, kind: i32, kp: i32, kl: i32) -> i32 {
    let Some(key) = read_str(&mut caller, kp, kl) else {
        return INVALID_MEMORY_ACCESS;
    };
    match map(caller.data_mut(), kind) {
        Some(m) => {
            m.retain(|(k, _)| !k.eq_ignore_ascii_case(&key));
            OK
        }
        None => NOT_FOUND,
    }
}

/// Decodes the ABI's header map encoding ([`encode_pairs`]); `None` if it is malformed.
fn decode_pairs(bytes: &[u8]) -> Option<Vec<(String, String)>> {
    let word = |at: usize| -> Option<usize> {
        let b: [u8; 4] = bytes.get(at..at + 4)?.try_into().ok()?;
        usize::try_from(u32::from_le_bytes(b)).ok()
    };
    let n = word(0)?;
    let mut lens = Vec::with_capacity(n.min(1024));
    for i in 0..n {
        lens.push((word(4 + i * 8)?, word(8 + i * 8)?));
    }
    let mut at = 4 + n.checked_mul(8)?;
    let mut out = Vec::with_capacity(lens.len());
    for (kl, vl) in lens {
        let k = bytes.get(at..at.checked_add(kl)?)?;
        at += kl + 1;
        let v = bytes.get(at..at.checked_add(vl)?)?;
        at += vl + 1;
        out.push((
            String::from_utf8_lossy(k).into_owned(),
            String::from_utf8_lossy(v).into_owned(),
        ));
    }
    Some(out)
}

fn send_local_response(
    mut caller: Caller<'_, Host>,
    status: i32,
    body: (i32, i32),
    headers: (i32, i32),
) -> i32 {
    let (Some(body), Some(raw)) = (
        read(&mut caller, body.0, body.1),
        read(&mut caller, headers.0, headers.1),
    ) else {
        return INVALID_MEMORY_ACCESS;
    };
    let Some(headers) = decode_pairs(&raw) else {
        return BAD_ARGUMENT;
    };
    let Ok(status) = u16::try_from(status) else {
        return BAD_ARGUMENT;
    };
    caller.data_mut().local = Some(LocalResponse {
        status,
        headers,
        body,
    });
    OK
}

fn current_time(mut caller: Caller<'_, Host>, out: i32) -> i32 {
    let ns = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
    let Some(mem) = memory(&mut caller) else {
        return INVALID_MEMORY_ACCESS;
    };
    match mem.write(&mut caller, u(out), &ns.to_le_bytes()) {
        Ok(()) => OK,
        Err(_) => INVALID_MEMORY_ACCESS,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_pairs_round_trip_and_malformed_ones_are_refused() {
        let pairs = vec![
            (":path".to_owned(), "/a".to_owned()),
            ("x".to_owned(), String::new()),
        ];
        assert_eq!(decode_pairs(&encode_pairs(&pairs)), Some(pairs));
        assert_eq!(
            decode_pairs(&[9, 0, 0, 0]),
            None,
            "claims 9 pairs, has none"
        );
        assert_eq!(decode_pairs(&[]), None);
        let mut long = encode_pairs(&[("k".into(), "v".into())]);
        long.truncate(long.len() - 2);
        assert_eq!(decode_pairs(&long), None);
    }
}

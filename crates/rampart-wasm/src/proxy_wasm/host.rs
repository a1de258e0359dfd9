//! The host's state of one VM: what the current callback may see (the stream) and what the
//! plugin asked for during it (the effects).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use wasmtime::{Func, Memory};
use wasmtime_wasi::p1::WasiP1Ctx;

use super::Headers;
use super::properties::RequestInfo;
use super::shared::QueueNotifier;
use crate::StoreLimits;

/// Most log lines one callback may leave (a plugin that floods its log is cut off).
const MAX_LOG_LINES: usize = 1000;

/// A plugin as configured: shared by its VMs on every thread.
#[derive(Debug, Clone, Default)]
pub struct Plugin {
    /// What `proxy_on_configure` reads.
    pub config: Vec<u8>,
    /// Its name (`plugin_name`), as metrics and logs call it.
    pub name: String,
    /// Plugins with the same VM id share their shared data and queues.
    pub vm_id: String,
}

/// A response the plugin answered with instead of letting the request through.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

/// A log line the plugin wrote, with its ABI level (0 trace … 5 critical).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogLine {
    pub level: i32,
    pub message: String,
}

/// An HTTP call the plugin dispatched (`proxy_http_call`): the caller sends it and hands
/// the answer back through [`super::Vm::http_call_response`].
#[derive(Debug, Clone)]
pub struct HttpCall {
    pub token: u32,
    /// The context that made it; its answer goes back there.
    pub context: i32,
    /// The cluster to send it to.
    pub upstream: String,
    /// `:method`, `:path`, `:authority` and the headers.
    pub headers: Headers,
    pub body: Vec<u8>,
    pub timeout: Duration,
}

/// What an HTTP call came back with.
#[derive(Debug, Clone, Default)]
pub struct CallResponse {
    /// `:status` and the headers.
    pub headers: Headers,
    pub body: Vec<u8>,
    pub trailers: Headers,
}

/// What a callback may see: maps and buffers the caller lent for it.
#[derive(Default)]
pub(super) struct Stream {
    pub context: i32,
    pub request: Option<Headers>,
    pub response: Option<Headers>,
    pub request_trailers: Option<Headers>,
    pub response_trailers: Option<Headers>,
    /// The body buffered so far (request or response, by `body_kind`).
    pub body: Option<(i32, Vec<u8>)>,
    pub call: Option<CallResponse>,
}

/// What the plugin asked for during a callback.
#[derive(Default)]
pub(super) struct Effects {
    pub local: Option<LocalResponse>,
    /// `proxy_continue_stream` for the stream of the callback's context.
    pub resumed: bool,
    pub calls: Vec<HttpCall>,
}

/// The guest's exports the host calls back into while serving a host function.
#[derive(Default)]
pub(super) struct Guest {
    pub memory: Option<Memory>,
    pub alloc: Option<Func>,
}

/// The host's side of one VM.
pub struct Host {
    pub(super) limits: wasmtime::StoreLimits,
    pub(super) wasi: WasiP1Ctx,
    pub(super) plugin: Arc<Plugin>,
    pub(super) notifier: Option<QueueNotifier>,
    pub(super) guest: Guest,
    pub(super) stream: Stream,
    pub(super) effects: Effects,
    /// Facts of each open request context (`proxy_get_property`).
    pub(super) requests: HashMap<i32, RequestInfo>,
    pub(super) tick: Option<Duration>,
    pub(super) next_token: u32,
    pub(super) logs: Vec<LogLine>,
}

impl StoreLimits for Host {
    fn limits(&mut self) -> &mut wasmtime::StoreLimits {
        &mut self.limits
    }
}

impl Host {
    pub(super) fn new(
        limits: wasmtime::StoreLimits,
        plugin: Arc<Plugin>,
        notifier: Option<QueueNotifier>,
    ) -> Self {
        Self {
            limits,
            wasi: wasmtime_wasi::WasiCtxBuilder::new().build_p1(),
            plugin,
            notifier,
            guest: Guest::default(),
            stream: Stream::default(),
            effects: Effects::default(),
            requests: HashMap::new(),
            tick: None,
            next_token: 1,
            logs: Vec::new(),
        }
    }

    pub(super) fn log(&mut self, level: i32, message: String) {
        if self.logs.len() < MAX_LOG_LINES {
            self.logs.push(LogLine { level, message });
        }
    }
}

//! What one invocation's store holds: WASI with nothing granted but the function's
//! environment and captured stdout/stderr, wasi:http, and the hooks that send its outgoing
//! requests to the clusters it was granted, and nowhere else.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, Uri};
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use rampart_proxy::callout::{CalloutError, Upstreams};
use wasmtime::component::ResourceTable;
use wasmtime_wasi::p2::pipe::MemoryOutputPipe;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};
use wasmtime_wasi_http::{
    Error as HttpError, RequestOptions, WasiBody, WasiHttpCtx, WasiHttpCtxView, WasiHttpHooks,
    WasiHttpView,
};

/// The most a function's outgoing request body, or the answer to it, may carry.
pub(crate) const MAX_OUTGOING_BYTES: usize = 4 << 20;

/// How much stdout and stderr one invocation may write (past it, writes fail).
pub(crate) const MAX_OUTPUT_BYTES: usize = 1 << 20;

/// Store data of one invocation.
pub(crate) struct Host {
    wasi: WasiCtx,
    http: WasiHttpCtx,
    table: ResourceTable,
    pub(crate) limits: wasmtime::StoreLimits,
    hooks: Hooks,
}

/// What the invocation's stdout and stderr wrote.
#[derive(Clone)]
pub(crate) struct Output {
    pub(crate) stdout: MemoryOutputPipe,
    pub(crate) stderr: MemoryOutputPipe,
}

impl Host {
    pub(crate) fn new(
        env: &[(String, String)],
        memory_bytes: usize,
        outgoing: Outgoing,
    ) -> (Self, Output) {
        let out = Output {
            stdout: MemoryOutputPipe::new(MAX_OUTPUT_BYTES),
            stderr: MemoryOutputPipe::new(MAX_OUTPUT_BYTES),
        };
        let wasi = WasiCtx::builder()
            .envs(env)
            .stdout(out.stdout.clone())
            .stderr(out.stderr.clone())
            // No sockets and no name lookups: outgoing HTTP goes through the hooks.
            .allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false)
            .build();
        let limits = wasmtime::StoreLimitsBuilder::new()
            .memory_size(memory_bytes)
            .table_elements(100_000)
            .instances(64)
            .tables(64)
            .memories(4)
            .trap_on_grow_failure(false)
            .build();
        let host = Self {
            wasi,
            http: WasiHttpCtx::new(),
            table: ResourceTable::new(),
            limits,
            hooks: Hooks { outgoing },
        };
        (host, out)
    }
}

impl WasiView for Host {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl WasiHttpView for Host {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView {
            ctx: &mut self.http,
            table: &mut self.table,
            hooks: &mut self.hooks,
        }
    }
}

/// Where a function's outgoing requests may go.
#[derive(Clone)]
pub(crate) struct Outgoing {
    /// The clusters it was granted.
    pub(crate) clusters: Arc<[String]>,
    /// The gateway's clusters (absent before the gateway attached the runtime).
    pub(crate) upstreams: Option<Upstreams>,
    /// Longest wait for an answer (the function's own deadline bounds it too).
    pub(crate) timeout: Duration,
}

struct Hooks {
    outgoing: Outgoing,
}

type Sent = Box<dyn Future<Output = Result<(), HttpError>> + Send>;

impl WasiHttpHooks for Hooks {
    fn send_request(
        &mut self,
        request: Request<WasiBody>,
        options: Option<RequestOptions>,
        fut: Sent,
    ) -> Box<dyn Future<Output = Result<(Response<WasiBody>, Sent), HttpError>> + Send> {
        drop(fut);
        let out = self.outgoing.clone();
        let timeout = options
            .and_then(|o| o.first_byte_timeout)
            .map_or(out.timeout, |t| t.min(out.timeout));
        Box::new(async move {
            let resp = send(out, request, timeout).await?;
            let resp = resp.map(|b| Full::new(b).map_err(|never| match never {}).boxed_unsync());
            Ok((resp, Box::new(async { Ok(()) }) as Sent))
        })
    }
}

/// Sends a granted request through the gateway's cluster of the same name.
async fn send(
    out: Outgoing,
    request: Request<WasiBody>,
    timeout: Duration,
) -> Result<Response<Bytes>, HttpError> {
    let host = request.uri().host().map(str::to_ascii_lowercase);
    let Some(cluster) = host.filter(|h| out.clusters.iter().any(|c| c == h)) else {
        return Err(HttpError::HttpRequestDenied);
    };
    let upstreams = out.upstreams.ok_or(HttpError::DestinationUnavailable)?;
    let (mut parts, body) = request.into_parts();
    let body = Limited::new(body, MAX_OUTGOING_BYTES)
        .collect()
        .await
        .map_err(|e| {
            if e.downcast_ref::<LengthLimitError>().is_some() {
                HttpError::HttpRequestBodySize(None)
            } else {
                HttpError::HttpRequestDenied
            }
        })?
        .to_bytes();
    // The cluster's endpoints are the destination: the URI goes on in origin form.
    parts.uri = parts
        .uri
        .path_and_query()
        .map_or_else(|| Uri::from_static("/"), |pq| Uri::from(pq.clone()));
    parts.headers.insert(
        http::header::HOST,
        http::HeaderValue::from_str(&cluster).map_err(|_| HttpError::HttpRequestUriInvalid)?,
    );
    upstreams
        .call(
            &cluster,
            Request::from_parts(parts, body),
            timeout,
            MAX_OUTGOING_BYTES,
        )
        .await
        .map_err(|e| match e {
            CalloutError::NoCluster(_) => HttpError::DestinationNotFound,
            CalloutError::Timeout(_) => HttpError::ConnectionReadTimeout,
            CalloutError::TooLarge(_) => HttpError::HttpResponseBodySize(None),
            CalloutError::Stopped | CalloutError::Upstream(_) => HttpError::DestinationUnavailable,
        })
}

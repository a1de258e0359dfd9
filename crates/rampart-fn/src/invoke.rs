//! One invocation: a slot, the component ready (loading it is a cold start), a fresh
//! instance in its own store with the function's limits, the request handed to
//! `wasi:http/incoming-handler.handle`, and the response streamed back while the guest
//! runs on in its own task until it finishes or its deadline ends it.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use http::{HeaderValue, Request, Response, StatusCode};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use hyper::body::Incoming;
use rampart_proxy::body::ProxyBody;
use rampart_proxy::error::local_response;
use rampart_proxy::function::Invocation;
use tokio::sync::OwnedSemaphorePermit;
use wasmtime::{Store, UpdateDeadline};
use wasmtime_wasi_http::p2::bindings::Proxy;
use wasmtime_wasi_http::p2::bindings::http::types::{ErrorCode, Scheme};
use wasmtime_wasi_http::p2::body::HyperOutgoingBody;
use wasmtime_wasi_http::{Error as HttpError, WasiHttpView};

use crate::Runtime;
use crate::deployed::{Busy, Deployed};
use crate::host::{Host, Outgoing, Output};
use crate::metrics::{Function, Outcome, Start};

pub(crate) async fn invoke(
    rt: Arc<Runtime>,
    d: Arc<Deployed>,
    req: Request<Incoming>,
    call: Invocation,
) -> Response<ProxyBody> {
    let started = Instant::now();
    let deadline = started + d.spec.timeout();
    let permit = match d.slot(deadline).await {
        Ok(p) => p,
        Err(busy) => {
            rt.count(&d, "overloaded");
            return overloaded(&d.spec.name, &busy);
        }
    };
    d.begin();
    let end = Ending {
        d: d.clone(),
        rt: rt.clone(),
        started,
        request_id: call.request_id.to_str().unwrap_or("").to_owned(),
        output: None,
        _permit: permit,
    };
    let guest = match Guest::start(end, deadline).await {
        Ok(g) => g,
        Err(refused) => return unavailable(&refused.0, &refused.1),
    };
    let scheme = if call.scheme == "https" {
        Scheme::Https
    } else {
        Scheme::Http
    };
    let (rx, task) = match guest.handle(scheme, request_body(req, call.body_limit), deadline) {
        Ok(running) => running,
        Err(refused) => return unavailable(&refused.0, &refused.1),
    };
    match rx.await {
        Ok(Ok(resp)) => response(resp, d.spec.max_response_bytes),
        Ok(Err(code)) => failed(&d.spec.name, &format!("the function answered {code:?}")),
        Err(_) => {
            // The guest ended without answering: its task says why.
            let why = match task.await {
                Ok(Some(why)) => why,
                Ok(None) => "it returned without setting a response".to_owned(),
                Err(e) => e.to_string(),
            };
            failed(&d.spec.name, &why)
        }
    }
}

type Answer = Result<Response<HyperOutgoingBody>, ErrorCode>;

/// An invocation that could not start, and why.
type Refused = Box<(Ending, String)>;

/// A fresh instance of the function in its own store.
struct Guest {
    store: Store<Host>,
    proxy: Proxy,
    end: Ending,
}

impl Guest {
    /// The component ready (loading it is a cold start), a store with the function's
    /// limits, and an instance in it.
    async fn start(mut end: Ending, deadline: Instant) -> Result<Self, Refused> {
        let (d, rt) = (end.d.clone(), end.rt.clone());
        let (ready, cold) = match d.ready(|| rt.engine.reload(&d.spec.blob.sha256)) {
            Ok(r) => r,
            Err(e) => return Err(Box::new((end, e.to_string()))),
        };
        let outgoing = Outgoing {
            clusters: d.clusters.clone(),
            upstreams: rt.upstreams.get().cloned(),
            timeout: d.spec.timeout(),
        };
        let memory = usize::try_from(d.spec.memory_bytes).unwrap_or(usize::MAX);
        let (host, output) = Host::new(&d.env, memory, outgoing);
        end.output = Some(output);
        let mut store = Store::new(rt.engine.engine(), host);
        store.limiter(|h| &mut h.limits);
        // Every epoch tick (1 ms) a running guest yields to the worker's other tasks; past
        // its deadline it traps instead.
        store.set_epoch_deadline(1);
        // tokio's yield_now: the worker polls its sockets before running the guest again
        // (a plain yield may be re-polled first, starving the worker's other requests).
        store.epoch_deadline_callback(move |_| {
            if Instant::now() >= deadline {
                Ok(UpdateDeadline::Interrupt)
            } else {
                Ok(UpdateDeadline::YieldCustom(
                    1,
                    Box::pin(tokio::task::yield_now()),
                ))
            }
        });
        match ready.instantiate_async(&mut store).await {
            Ok(proxy) => {
                rt.started(&d, cold, end.started);
                Ok(Self { store, proxy, end })
            }
            Err(e) => Err(Box::new((end, format!("{e:#}")))),
        }
    }

    /// Hands the request to `wasi:http/incoming-handler.handle` in a task of its own, which
    /// runs until the guest finishes or its deadline passes (the response streams from it
    /// meanwhile). Returns where the response head arrives, and the task, which ends with
    /// why the guest failed, if it did.
    #[allow(clippy::type_complexity)]
    fn handle(
        mut self,
        scheme: Scheme,
        body: Request<
            impl hyper::body::Body<Data = bytes::Bytes, Error = HttpError> + Send + 'static,
        >,
        deadline: Instant,
    ) -> Result<
        (
            tokio::sync::oneshot::Receiver<Answer>,
            tokio::task::JoinHandle<Option<String>>,
        ),
        Refused,
    > {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let http = &mut self.store.data_mut().http();
        let handles = http
            .new_incoming_request(scheme, body)
            .and_then(|r| Ok((r, http.new_response_outparam(tx)?)));
        let (request, outparam) = match handles {
            Ok(h) => h,
            Err(e) => return Err(Box::new((self.end, format!("{e:#}")))),
        };
        let Self {
            mut store,
            proxy,
            end,
        } = self;
        let task = tokio::spawn(async move {
            let ran = tokio::time::timeout_at(
                deadline.into(),
                proxy
                    .wasi_http_incoming_handler()
                    .call_handle(&mut store, request, outparam),
            )
            .await;
            drop(store);
            let (outcome, why) = match ran {
                Ok(Ok(())) => ("ok", None),
                Ok(Err(e)) if is_deadline(&e) => ("timeout", Some(trap_message(&e))),
                Ok(Err(e)) => ("trap", Some(trap_message(&e))),
                Err(_) => ("timeout", Some("its deadline passed".to_owned())),
            };
            end.finish(outcome, why.as_deref());
            why
        });
        Ok((rx, task))
    }
}

/// One invocation's end, whenever it comes: the slot is released, the function's
/// in-flight count drops (maybe letting it scale to zero), and what the guest wrote is
/// kept by request id.
struct Ending {
    d: Arc<Deployed>,
    rt: Arc<Runtime>,
    started: Instant,
    request_id: String,
    output: Option<Output>,
    _permit: OwnedSemaphorePermit,
}

impl Drop for Ending {
    fn drop(&mut self) {
        self.d.end(self.rt.settings.idle_timeout);
    }
}

impl Ending {
    /// Logs what the guest wrote and how it ended; counts the outcome.
    fn finish(&self, outcome: &'static str, why: Option<&str>) {
        let (d, request_id) = (&self.d, self.request_id.as_str());
        if let Some(out) = &self.output {
            d.logs.add(request_id, "stdout", &out.stdout.contents());
            d.logs.add(request_id, "stderr", &out.stderr.contents());
        }
        if let Some(why) = why {
            d.logs.add(
                request_id,
                "rampart",
                format!("{outcome}: {why}").as_bytes(),
            );
            tracing::info!(function = %d.spec.name, request_id, outcome, error = why, "function failed");
        }
        self.rt.count(d, outcome);
        self.rt
            .metrics
            .duration
            .get_or_create(&Function {
                function: d.spec.name.clone(),
            })
            .observe(self.started.elapsed().as_secs_f64());
    }
}

/// One line for the log: the trap's kind (its backtrace is at debug level).
fn trap_message(e: &wasmtime::Error) -> String {
    tracing::debug!(error = format!("{e:#}"), "function trap");
    match e.downcast_ref::<wasmtime::Trap>() {
        Some(wasmtime::Trap::Interrupt) => "its deadline passed (wasm trap: interrupt)".to_owned(),
        Some(t) => format!("wasm trap: {t}"),
        None => format!("{e:#}").lines().last().unwrap_or("").to_owned(),
    }
}

fn is_deadline(e: &wasmtime::Error) -> bool {
    matches!(
        e.downcast_ref::<wasmtime::Trap>(),
        Some(wasmtime::Trap::Interrupt)
    )
}

/// The request body as wasi:http reads it, cut at the route's limit.
fn request_body(
    req: Request<Incoming>,
    limit: Option<u64>,
) -> Request<impl hyper::body::Body<Data = bytes::Bytes, Error = HttpError> + Send + 'static> {
    let max = limit.map_or(usize::MAX, |l| usize::try_from(l).unwrap_or(usize::MAX));
    req.map(move |b| {
        Limited::new(b, max).map_err(move |e| match e.downcast::<hyper::Error>() {
            Ok(h) => HttpError::Hyper(*h),
            Err(e) if e.is::<LengthLimitError>() => HttpError::HttpRequestBodySize(limit),
            Err(_) => HttpError::HttpRequestBodySize(None),
        })
    })
}

/// The guest's response, its body cut off past the function's limit.
fn response(resp: Response<HyperOutgoingBody>, max: u64) -> Response<ProxyBody> {
    let declared = resp
        .headers()
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if declared.is_some_and(|n| n > max) {
        return local_response(
            StatusCode::BAD_GATEWAY,
            &format!("the function's response is larger than its {max}-byte limit\n"),
        );
    }
    let max = usize::try_from(max).unwrap_or(usize::MAX);
    let mut resp = resp.map(|b| ProxyBody::boxed(Limited::new(b, max)));
    // A guest cannot pass its answers off as the gateway's own.
    resp.headers_mut().remove("x-rampart-local");
    resp
}

fn overloaded(name: &str, busy: &Busy) -> Response<ProxyBody> {
    let mut r = local_response(
        StatusCode::SERVICE_UNAVAILABLE,
        &format!(
            "function {name} is busy: {} running, {} waiting; try again later\n",
            busy.running, busy.queued
        ),
    );
    r.headers_mut()
        .insert("x-rampart-overloaded", HeaderValue::from_static("function"));
    r.headers_mut()
        .insert(http::header::RETRY_AFTER, HeaderValue::from_static("1"));
    r
}

fn unavailable(end: &Ending, why: &str) -> Response<ProxyBody> {
    let (d, rt, request_id) = (&end.d, &end.rt, end.request_id.as_str());
    d.logs.add(
        request_id,
        "rampart",
        format!("could not start: {why}").as_bytes(),
    );
    tracing::warn!(function = %d.spec.name, request_id, error = why, "function could not start");
    rt.count(d, "unavailable");
    local_response(
        StatusCode::SERVICE_UNAVAILABLE,
        &format!("function {} could not start\n", d.spec.name),
    )
}

fn failed(name: &str, why: &str) -> Response<ProxyBody> {
    tracing::debug!(function = name, why, "function failed its request");
    local_response(
        StatusCode::INTERNAL_SERVER_ERROR,
        &format!("function {name} failed\n"),
    )
}

impl Runtime {
    pub(crate) fn count(&self, d: &Deployed, outcome: &'static str) {
        d.stats.invocations.fetch_add(1, Ordering::Relaxed);
        if outcome != "ok" {
            d.stats.errors.fetch_add(1, Ordering::Relaxed);
        }
        self.metrics
            .invocations
            .get_or_create(&Outcome {
                function: d.spec.name.clone(),
                outcome,
            })
            .inc();
    }

    fn started(&self, d: &Deployed, cold: bool, since: Instant) {
        let kind = if cold { "cold" } else { "warm" };
        let stat = if cold {
            &d.stats.cold_starts
        } else {
            &d.stats.warm_starts
        };
        stat.fetch_add(1, Ordering::Relaxed);
        let label = Start {
            function: d.spec.name.clone(),
            kind,
        };
        self.metrics.starts.get_or_create(&label).inc();
        self.metrics
            .start_seconds
            .get_or_create(&label)
            .observe(since.elapsed().as_secs_f64());
    }
}

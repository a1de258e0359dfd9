//! The filter's phases: request and response heads (with the pauses of HTTP calls), then
//! the bodies and trailers, buffered while the plugin asks.

use std::sync::Arc;

use bytes::Bytes;
use http::{StatusCode, request, response};
use rampart_proxy::filter::{
    BodyObserver, BodyReject, FilterFuture, Flow, HttpFilter, RequestContext, Verdict as Step,
};
use rampart_wasm::WasmError;
use rampart_wasm::proxy_wasm::{Headers, HttpCall, Verdict};

use crate::vms::{self, Stream};
use crate::{Shared, WasmFilter, callout, convert};

/// Most bytes of a body the filter holds while a plugin buffers it.
pub(crate) const MAX_BUFFER: usize = 1 << 20;

/// This request's contexts, by filter.
#[derive(Clone, Default)]
struct Streams(Vec<(u64, Arc<Stream>)>);

impl WasmFilter {
    fn stream(&self, ctx: &RequestContext) -> Option<Arc<Stream>> {
        ctx.extensions
            .get::<Streams>()?
            .0
            .iter()
            .find(|(id, _)| *id == self.shared.id)
            .map(|(_, s)| s.clone())
    }

    /// A failed call: counted, logged, and the request answered per `fail_open`.
    fn failed<'a>(&self, e: &WasmError) -> Flow<'a> {
        match self.shared.failed_request(e) {
            None => Flow::Continue,
            Some(r) => Flow::Respond(r),
        }
    }

    /// What a head phase's verdict means for the request. A pause with calls waits for
    /// their answers; a pause without any lets the head go on (the plugin waits for the
    /// body, which it still sees).
    fn head_flow<'a>(
        &'a self,
        outcome: Option<Result<(Verdict, Vec<HttpCall>), WasmError>>,
        stream: Arc<Stream>,
        head: Head<'a>,
    ) -> Flow<'a> {
        match outcome {
            None => Flow::Continue,
            Some(Err(e)) => self.failed(&e),
            Some(Ok((Verdict::Continue, _))) => Flow::Continue,
            Some(Ok((Verdict::Respond(r), _))) => Flow::Respond(convert::local(r)),
            Some(Ok((Verdict::Paused, calls))) if calls.is_empty() => Flow::Continue,
            Some(Ok((Verdict::Paused, calls))) => {
                let fut: FilterFuture<'a> =
                    Box::pin(await_calls(self.shared.clone(), stream, head, calls));
                Flow::Async(fut)
            }
        }
    }
}

/// The head a paused phase lends the plugin again when an answer comes.
enum Head<'a> {
    Request(&'a mut request::Parts),
    Response(&'a mut response::Parts),
}

impl Head<'_> {
    fn with<T>(&mut self, plugin: &str, f: impl FnOnce(&mut Headers) -> T) -> T {
        match self {
            Head::Request(req) => {
                let mut taken = convert::take_request(req);
                let out = f(&mut taken.0);
                convert::give_back_request(req, taken, plugin);
                out
            }
            Head::Response(resp) => {
                let mut h = convert::take_response(resp);
                let out = f(&mut h);
                convert::give_back_response(resp, h);
                out
            }
        }
    }
}

/// Sends the plugin's calls one by one and hands each answer back, until the plugin
/// resumes the stream, answers it, or has nothing left to wait for.
async fn await_calls(
    s: Arc<Shared>,
    stream: Arc<Stream>,
    mut head: Head<'_>,
    mut calls: Vec<HttpCall>,
) -> Step {
    while !calls.is_empty() {
        let call = calls.remove(0);
        let answer = callout::send(&s, &call).await;
        let outcome = head.with(&s.plugin, |h| {
            vms::with_vm(&s, Some(stream.serial), |sb, vm| {
                let v = vm.http_call_response(sb, (call.context, call.token), answer, Some(h))?;
                Ok((v, vm.take_calls()))
            })
        });
        match outcome {
            None => return Step::Continue,
            Some(Err(e)) => {
                return match s.failed_request(&e) {
                    None => Step::Continue,
                    Some(r) => Step::Respond(r),
                };
            }
            Some(Ok((Verdict::Continue, _))) => return Step::Continue,
            Some(Ok((Verdict::Respond(r), _))) => return Step::Respond(convert::local(r)),
            Some(Ok((Verdict::Paused, more))) => calls.extend(more),
        }
    }
    // Paused with nothing to wait for: Envoy would hold the request until its timeout.
    let e = WasmError::Trap("the plugin paused the request with nothing to wait for".into());
    match s.failed_request(&e) {
        None => Step::Continue,
        Some(r) => Step::Respond(r),
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
        let s = &self.shared;
        s.calls.inc();
        let eos = convert::no_body(req);
        let info = convert::info(ctx, req);
        let mut taken = convert::take_request(req);
        let outcome = vms::with_vm(s, None, |sb, vm| {
            let id = vm.open(sb, info)?;
            let v = vm.request_headers(sb, id, &mut taken.0, eos)?;
            Ok((vm.serial(), id, v, vm.take_calls()))
        });
        convert::give_back_request(req, taken, &s.plugin);
        let (serial, id, verdict, calls) = match outcome {
            Some(Ok(o)) => o,
            Some(Err(e)) => return self.failed(&e),
            None => return Flow::Continue,
        };
        let stream = Arc::new(Stream {
            owner: Arc::downgrade(s),
            serial,
            id,
        });
        let outcome = Some(Ok((verdict, calls)));
        ctx.extensions
            .get_or_insert_default::<Streams>()
            .0
            .push((s.id, stream.clone()));
        self.head_flow(outcome, stream, Head::Request(req))
    }

    fn request_body_observer(&self, ctx: &RequestContext) -> Option<Box<dyn BodyObserver>> {
        Some(Box::new(Body::new(
            self.shared.clone(),
            self.stream(ctx)?,
            false,
        )))
    }

    fn on_response_headers<'a>(
        &'a self,
        ctx: &'a mut RequestContext,
        resp: &'a mut response::Parts,
    ) -> Flow<'a> {
        let Some(stream) = self.stream(ctx) else {
            return Flow::Continue;
        };
        let s = &self.shared;
        let mut h = convert::take_response(resp);
        let outcome = vms::with_vm(s, Some(stream.serial), |sb, vm| {
            let v = vm.response_headers(sb, stream.id, &mut h, false)?;
            Ok((v, vm.take_calls()))
        });
        convert::give_back_response(resp, h);
        self.head_flow(outcome, stream, Head::Response(resp))
    }

    fn response_body_observer(
        &self,
        ctx: &RequestContext,
        _resp: &response::Parts,
    ) -> Option<Box<dyn BodyObserver>> {
        Some(Box::new(Body::new(
            self.shared.clone(),
            self.stream(ctx)?,
            true,
        )))
    }
}

/// A body on its way through the plugin: chunks are held while it pauses (buffers), and
/// released, as it left them, when it continues.
struct Body {
    s: Arc<Shared>,
    stream: Arc<Stream>,
    response: bool,
    held: Vec<u8>,
    seen: bool,
    /// The plugin failed and the filter fails open: the rest passes untouched.
    bypass: bool,
}

impl Body {
    fn new(s: Arc<Shared>, stream: Arc<Stream>, response: bool) -> Self {
        Self {
            s,
            stream,
            response,
            held: Vec::new(),
            seen: false,
            bypass: false,
        }
    }

    fn release(&mut self, chunk: &mut Bytes) {
        *chunk = Bytes::from(std::mem::take(&mut self.held));
    }

    fn reject(&self, status: StatusCode, reason: String) -> BodyReject {
        BodyReject::new(status, reason)
    }

    fn failed(&mut self, e: &WasmError, chunk: &mut Bytes) -> Result<(), BodyReject> {
        match self.s.failed_request(e) {
            None => {
                self.bypass = true;
                self.release(chunk);
                Ok(())
            }
            Some(_) => Err(self.reject(StatusCode::INTERNAL_SERVER_ERROR, "plugin failed".into())),
        }
    }
}

impl BodyObserver for Body {
    fn on_data(&mut self, chunk: &mut Bytes, eos: bool) -> Result<(), BodyReject> {
        // No body at all: nothing to tell the plugin (Envoy does not call it either).
        if self.bypass || (!self.seen && chunk.is_empty() && eos) {
            return Ok(());
        }
        self.seen = true;
        if self.held.is_empty() {
            self.held = Vec::from(std::mem::take(chunk));
        } else {
            self.held.extend_from_slice(chunk);
            *chunk = Bytes::new();
        }
        let (s, stream, response) = (&self.s, &self.stream, self.response);
        let held = &mut self.held;
        let outcome = vms::with_vm(s, Some(stream.serial), |sb, vm| {
            vm.body(sb, (stream.id, response), held, eos)
        });
        match outcome {
            None | Some(Ok(Verdict::Continue)) => self.release(chunk),
            Some(Ok(Verdict::Paused)) if eos => self.release(chunk),
            Some(Ok(Verdict::Paused)) => {
                if self.held.len() > MAX_BUFFER {
                    let status = if response {
                        StatusCode::BAD_GATEWAY
                    } else {
                        StatusCode::PAYLOAD_TOO_LARGE
                    };
                    return Err(self.reject(status, "body larger than a plugin may buffer".into()));
                }
            }
            Some(Ok(Verdict::Respond(r))) => {
                let status = StatusCode::from_u16(r.status).unwrap_or(StatusCode::FORBIDDEN);
                return Err(self.reject(status, String::from_utf8_lossy(&r.body).into_owned()));
            }
            Some(Err(e)) => return self.failed(&e, chunk),
        }
        Ok(())
    }

    fn on_trailers(&mut self, trailers: &mut http::HeaderMap) -> Result<(), BodyReject> {
        if self.bypass {
            return Ok(());
        }
        let mut h = Headers::new(Vec::new(), std::mem::take(trailers));
        let (s, stream, response) = (&self.s, &self.stream, self.response);
        let outcome = vms::with_vm(s, Some(stream.serial), |sb, vm| {
            vm.trailers(sb, (stream.id, response), &mut h)
        });
        *trailers = h.map;
        match outcome {
            Some(Err(e)) => {
                let mut none = Bytes::new();
                self.failed(&e, &mut none)
            }
            Some(Ok(Verdict::Respond(r))) => {
                let status = StatusCode::from_u16(r.status).unwrap_or(StatusCode::FORBIDDEN);
                Err(self.reject(status, String::from_utf8_lossy(&r.body).into_owned()))
            }
            _ => Ok(()),
        }
    }
}

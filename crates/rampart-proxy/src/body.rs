//! The one body type the proxy moves in both directions.
//!
//! An enum rather than a boxed trait object so the common paths (a streamed upstream or
//! downstream body, a small local response) allocate nothing; only filtered bodies are boxed.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::OnceLock;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::combinators::UnsyncBoxBody;
use hyper::body::Incoming;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A body chunk was refused; the stream is cut and, if nothing was sent yet, this answers.
#[derive(Debug, Clone)]
pub struct BodyReject {
    pub status: http::StatusCode,
    pub reason: String,
    /// A whole answer the observer prepared (its content type and body, e.g. an RFC 9457
    /// problem document); without one the client gets the reason as text.
    pub answer: Option<(http::HeaderValue, Bytes)>,
}

impl BodyReject {
    pub fn new(status: http::StatusCode, reason: impl Into<String>) -> Self {
        Self {
            status,
            reason: reason.into(),
            answer: None,
        }
    }
}

impl std::fmt::Display for BodyReject {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.status.as_u16(), self.reason)
    }
}

impl std::error::Error for BodyReject {}

/// What an upstream response body carries along: the pooled connection that feeds it and the
/// endpoint's in-flight count. Driven while the body is polled, finished when it ends, dropped
/// (connection discarded) when it fails or is dropped early.
pub trait UpstreamTail: Send {
    /// Drives the connection so the body it feeds can make progress.
    fn drive(&mut self, cx: &mut Context<'_>);
    /// The body completed: the connection may carry another request.
    fn finish(&mut self);
}

/// Why a request body was cut short (a size limit, a filter, the client's own malformed or
/// too slow body), shared between the body and the handler so that the handler answers with
/// that status and blames the client instead of reporting an upstream failure. Created only
/// for requests that stream a body.
#[derive(Debug, Clone, Default)]
pub struct BodyAbort(Arc<OnceLock<BodyReject>>);

impl BodyAbort {
    pub fn set(&self, reject: BodyReject) {
        let _ = self.0.set(reject);
    }

    pub fn get(&self) -> Option<&BodyReject> {
        self.0.get()
    }
}

pub enum ProxyBody {
    Empty,
    Full(Option<Bytes>),
    /// A body streamed from a peer, with an optional byte limit and a guard released when the
    /// body is done or dropped (used for least-request accounting of in-flight responses).
    Stream {
        inner: Incoming,
        /// Set for a downstream request body: its limits and the abort slot.
        request: Option<Box<RequestBody>>,
        /// Set for an upstream response body.
        tail: Option<Box<dyn UpstreamTail>>,
    },
    Boxed(UnsyncBoxBody<Bytes, BoxError>),
}

impl ProxyBody {
    pub fn empty() -> Self {
        Self::Empty
    }

    pub fn full(b: impl Into<Bytes>) -> Self {
        Self::Full(Some(b.into()))
    }

    pub fn stream(inner: Incoming) -> Self {
        Self::Stream {
            inner,
            request: None,
            tail: None,
        }
    }

    /// A client's request body: fails (recording why in `abort`) once more than `max` bytes
    /// have passed, when the body is malformed or cut short, or when it is not complete by its
    /// deadline.
    pub fn request(
        inner: Incoming,
        max: Option<u64>,
        pace: Option<BodyPace>,
        abort: BodyAbort,
    ) -> Self {
        Self::Stream {
            inner,
            request: Some(Box::new(RequestBody {
                max,
                seen: 0,
                abort,
                waited: Duration::ZERO,
                waiting_since: None,
                pace: pace.map(|p| (p, Box::pin(tokio::time::sleep(p.budget(0))))),
            })),
            tail: None,
        }
    }

    /// An upstream response body: keeps the endpoint counted as busy and drives (then
    /// returns) the upstream connection until the body ends.
    pub fn upstream(inner: Incoming, tail: Box<dyn UpstreamTail>) -> Self {
        Self::Stream {
            inner,
            request: None,
            tail: Some(tail),
        }
    }

    pub fn boxed<B>(body: B) -> Self
    where
        B: Body<Data = Bytes, Error = BoxError> + Send + 'static,
    {
        Self::Boxed(UnsyncBoxBody::new(body))
    }
}

/// A body completed: its upstream connection may carry another request, its endpoint is free.
fn finish(tail: &mut Option<Box<dyn UpstreamTail>>) {
    if let Some(mut t) = tail.take() {
        t.finish();
    }
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            Self::Empty => Poll::Ready(None),
            Self::Full(data) => Poll::Ready(data.take().map(|d| Ok(Frame::data(d)))),
            Self::Stream {
                inner,
                request,
                tail,
            } => {
                if let Some(t) = tail.as_mut() {
                    t.drive(cx);
                }
                let polled = Pin::new(&mut *inner).poll_frame(cx);
                match polled {
                    Poll::Ready(Some(Ok(frame))) => {
                        if let Some(r) = request.as_mut() {
                            r.stop_waiting();
                        }
                        if let (Some(r), Some(data)) = (request.as_mut(), frame.data_ref()) {
                            r.seen += data.len() as u64;
                            if let Some(max) = r.max.filter(|max| r.seen > *max) {
                                return Poll::Ready(Some(Err(r.reject(
                                    http::StatusCode::PAYLOAD_TOO_LARGE,
                                    format!("request body exceeds the limit of {max} bytes"),
                                ))));
                            }
                        }
                        // The server may stop polling once the body says it has ended.
                        if inner.is_end_stream() {
                            finish(tail);
                        }
                        Poll::Ready(Some(Ok(frame)))
                    }
                    Poll::Ready(Some(Err(e))) => {
                        tail.take();
                        if let Some(r) = request {
                            // The client's fault (bad chunk framing, a reset, a short body):
                            // never the upstream's.
                            return Poll::Ready(Some(Err(r.reject(
                                http::StatusCode::BAD_REQUEST,
                                format!("the request body could not be read: {e}"),
                            ))));
                        }
                        Poll::Ready(Some(Err(Box::new(e))))
                    }
                    Poll::Ready(None) => {
                        finish(tail);
                        Poll::Ready(None)
                    }
                    Poll::Pending => match request {
                        Some(r) => {
                            if r.timed_out(cx) {
                                Poll::Ready(Some(Err(r.reject(
                                    http::StatusCode::REQUEST_TIMEOUT,
                                    "the request body was not received in time".to_owned(),
                                ))))
                            } else {
                                Poll::Pending
                            }
                        }
                        None => Poll::Pending,
                    },
                }
            }
            Self::Boxed(b) => Pin::new(b).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Self::Empty => true,
            Self::Full(d) => d.is_none(),
            Self::Stream { inner, .. } => inner.is_end_stream(),
            Self::Boxed(b) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Self::Empty => SizeHint::with_exact(0),
            Self::Full(d) => SizeHint::with_exact(d.as_ref().map_or(0, |d| d.len() as u64)),
            Self::Stream { inner, .. } => inner.size_hint(),
            Self::Boxed(b) => b.size_hint(),
        }
    }
}

/// How long a request body may take: `timeout`, plus one second per `min_rate` bytes received
/// (0: a fixed deadline). A trickling client runs out of time; a large upload at a fair rate
/// does not.
#[derive(Debug, Clone, Copy)]
pub struct BodyPace {
    pub timeout: Duration,
    pub min_rate: u64,
}

impl BodyPace {
    /// How long the client may have kept us waiting once `received` bytes have arrived.
    pub fn budget(&self, received: u64) -> Duration {
        let earned = if self.min_rate == 0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(received as f64 / self.min_rate as f64)
        };
        self.timeout + earned
    }
}

/// A downstream request body's bookkeeping (boxed: only requests with a body pay for it).
pub struct RequestBody {
    max: Option<u64>,
    seen: u64,
    abort: BodyAbort,
    /// Time spent waiting for the client's bytes, so far. Time the body was not polled (the
    /// upstream not reading fast) does not count against the client.
    waited: Duration,
    waiting_since: Option<tokio::time::Instant>,
    /// The rule and its timer; none for long-lived streams (gRPC).
    pace: Option<(BodyPace, Pin<Box<tokio::time::Sleep>>)>,
}

impl RequestBody {
    fn reject(&self, status: http::StatusCode, reason: String) -> BoxError {
        let reject = BodyReject::new(status, reason);
        self.abort.set(reject.clone());
        Box::new(reject)
    }

    fn stop_waiting(&mut self) {
        if let Some(since) = self.waiting_since.take() {
            self.waited += since.elapsed();
        }
    }

    /// The client has nothing for us: whether it has now kept us waiting longer than its
    /// budget (which grows with the bytes received); otherwise the timer is armed to wake
    /// this task when the budget runs out.
    fn timed_out(&mut self, cx: &mut Context<'_>) -> bool {
        let Some((pace, timer)) = self.pace.as_mut() else {
            return false;
        };
        let now = tokio::time::Instant::now();
        let since = match self.waiting_since {
            Some(t) => t,
            None => {
                self.waiting_since = Some(now);
                let left = pace.budget(self.seen).saturating_sub(self.waited);
                timer.as_mut().reset(now + left);
                now
            }
        };
        loop {
            let waited = self.waited + tokio::time::Instant::now().saturating_duration_since(since);
            let left = pace.budget(self.seen).saturating_sub(waited);
            if left.is_zero() {
                return true;
            }
            if timer.as_mut().poll(cx).is_pending() {
                return false;
            }
            timer.as_mut().reset(tokio::time::Instant::now() + left);
        }
    }
}

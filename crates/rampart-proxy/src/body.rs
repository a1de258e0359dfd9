//! The one body type the proxy moves in both directions.
//!
//! An enum rather than a boxed trait object so the common paths (a streamed upstream or
//! downstream body, a small local response) allocate nothing; only filtered bodies are boxed.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::OnceLock;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::combinators::UnsyncBoxBody;
use hyper::body::Incoming;

use crate::filter::BodyReject;
use crate::pool::Lease;
use crate::upstream::InflightGuard;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Why a request body was cut short by the proxy itself (a size limit or a filter), shared
/// between the body and the handler so that the handler answers with that status instead of
/// reporting an upstream failure. Created only for requests that have a limit or observers.
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
        limit: Option<(u64, u64, BodyAbort)>,
        guard: Option<InflightGuard>,
        /// The upstream connection feeding `inner`, polled here and pooled when done.
        lease: Option<Lease>,
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
            limit: None,
            guard: None,
            lease: None,
        }
    }

    /// Streams `inner`, failing once more than `max` bytes have passed and recording why.
    pub fn limited(inner: Incoming, max: u64, flag: BodyAbort) -> Self {
        Self::Stream {
            inner,
            limit: Some((max, 0, flag)),
            guard: None,
            lease: None,
        }
    }

    /// An upstream response body: keeps the endpoint counted as busy and drives (then
    /// returns) the upstream connection until the body ends.
    pub fn upstream(inner: Incoming, guard: InflightGuard, lease: Option<Lease>) -> Self {
        Self::Stream {
            inner,
            limit: None,
            guard: Some(guard),
            lease,
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
fn finish(lease: &mut Option<Lease>, guard: &mut Option<InflightGuard>) {
    if let Some(mut l) = lease.take() {
        l.finish();
    }
    guard.take();
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
                limit,
                guard,
                lease,
            } => {
                if let Some(l) = lease.as_mut() {
                    l.drive(cx);
                }
                let polled = Pin::new(&mut *inner).poll_frame(cx);
                match polled {
                    Poll::Ready(Some(Ok(frame))) => {
                        if let (Some((max, seen, flag)), Some(data)) =
                            (limit.as_mut(), frame.data_ref())
                        {
                            *seen += data.len() as u64;
                            if *seen > *max {
                                let reject = BodyReject {
                                    status: http::StatusCode::PAYLOAD_TOO_LARGE,
                                    reason: format!(
                                        "request body exceeds the limit of {max} bytes"
                                    ),
                                };
                                flag.set(reject.clone());
                                return Poll::Ready(Some(Err(Box::new(reject))));
                            }
                        }
                        // The server may stop polling once the body says it has ended.
                        if inner.is_end_stream() {
                            finish(lease, guard);
                        }
                        Poll::Ready(Some(Ok(frame)))
                    }
                    Poll::Ready(Some(Err(e))) => {
                        lease.take();
                        guard.take();
                        Poll::Ready(Some(Err(Box::new(e))))
                    }
                    Poll::Ready(None) => {
                        finish(lease, guard);
                        Poll::Ready(None)
                    }
                    Poll::Pending => Poll::Pending,
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

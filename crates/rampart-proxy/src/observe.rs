//! A body whose chunks pass through filter observers.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};

use crate::body::{BodyAbort, BoxError, ProxyBody};
use crate::filter::{BodyObserver, BodyReject};

pub(crate) struct ObservedBody {
    inner: ProxyBody,
    observers: Vec<Box<dyn BodyObserver>>,
    done: bool,
    abort: Option<BodyAbort>,
}

impl ObservedBody {
    /// `abort` records a rejection for the handler (request bodies); responses pass `None`.
    pub(crate) fn new(
        inner: ProxyBody,
        observers: Vec<Box<dyn BodyObserver>>,
        abort: Option<BodyAbort>,
    ) -> Self {
        Self {
            inner,
            observers,
            done: false,
            abort,
        }
    }

    fn reject(&mut self, reject: BodyReject) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.done = true;
        if let Some(a) = &self.abort {
            a.set(reject.clone());
        }
        Poll::Ready(Some(Err(Box::new(reject))))
    }
}

impl Body for ObservedBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if self.done {
            return Poll::Ready(None);
        }
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                Ok(mut data) => {
                    let eos = this.inner.is_end_stream();
                    let mut rejected = None;
                    for o in &mut this.observers {
                        if let Err(reject) = o.on_data(&mut data, eos) {
                            rejected = Some(reject);
                            break;
                        }
                    }
                    match rejected {
                        Some(r) => this.reject(r),
                        None => Poll::Ready(Some(Ok(Frame::data(data)))),
                    }
                }
                Err(frame) => Poll::Ready(Some(Ok(frame))),
            },
            Poll::Ready(None) => {
                this.done = true;
                // Tell observers the stream ended, with an empty final chunk.
                let mut empty = Bytes::new();
                let mut rejected = None;
                for o in &mut this.observers {
                    if let Err(reject) = o.on_data(&mut empty, true) {
                        rejected = Some(reject);
                        break;
                    }
                }
                if let Some(r) = rejected {
                    return this.reject(r);
                }
                if empty.is_empty() {
                    Poll::Ready(None)
                } else {
                    Poll::Ready(Some(Ok(Frame::data(empty))))
                }
            }
            other => other,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}

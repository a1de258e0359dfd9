//! A body whose chunks pass through filter observers.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};

use crate::body::{BodyAbort, BoxError, ProxyBody};
use crate::filter::{BodyObserver, BodyReject};

/// Whether `observers` let a body through byte for byte, so that its length (and the
/// `content-length` saying it) stands; otherwise the length is no longer known up front.
pub(crate) fn keeps_length(observers: &[Box<dyn BodyObserver>]) -> bool {
    observers.iter().all(|o| o.keeps_length())
}

pub(crate) struct ObservedBody {
    inner: ProxyBody,
    observers: Vec<Box<dyn BodyObserver>>,
    /// [`keeps_length`] of the observers, for the size hint.
    keeps_length: bool,
    /// The observers were told the data ended.
    ended: bool,
    done: bool,
    /// Trailers held back while the data flushed at their arrival goes out first.
    pending: Option<Frame<Bytes>>,
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
            keeps_length: keeps_length(&observers),
            observers,
            ended: false,
            done: false,
            pending: None,
            abort,
        }
    }

    fn reject(&mut self, reject: BodyReject) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.done = true;
        self.pending = None;
        if let Some(a) = &self.abort {
            a.set(reject.clone());
        }
        Poll::Ready(Some(Err(Box::new(reject))))
    }

    /// Passes a chunk through every observer, in order.
    fn observe(&mut self, data: &mut Bytes, eos: bool) -> Result<(), BodyReject> {
        if eos {
            self.ended = true;
        }
        self.observers
            .iter_mut()
            .try_for_each(|o| o.on_data(data, eos))
    }

    /// The data ended (the stream, or trailers came): observers flush what they held.
    fn flush(&mut self) -> Result<Bytes, BodyReject> {
        let mut rest = Bytes::new();
        if !self.ended {
            self.observe(&mut rest, true)?;
        }
        Ok(rest)
    }

    fn on_trailers(
        &mut self,
        mut trailers: http::HeaderMap,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let flushed = match self.flush() {
            Ok(b) => b,
            Err(r) => return self.reject(r),
        };
        if let Err(r) = self
            .observers
            .iter_mut()
            .try_for_each(|o| o.on_trailers(&mut trailers))
        {
            return self.reject(r);
        }
        let trailers = Frame::trailers(trailers);
        if flushed.is_empty() {
            return Poll::Ready(Some(Ok(trailers)));
        }
        self.pending = Some(trailers);
        Poll::Ready(Some(Ok(Frame::data(flushed))))
    }
}

impl Body for ObservedBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        if let Some(frame) = this.pending.take() {
            return Poll::Ready(Some(Ok(frame)));
        }
        loop {
            if this.done {
                return Poll::Ready(None);
            }
            let frame = match Pin::new(&mut this.inner).poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => frame,
                Poll::Ready(None) => {
                    this.done = true;
                    // Tell observers the stream ended, with an empty final chunk.
                    return match this.flush() {
                        Err(r) => this.reject(r),
                        Ok(rest) if rest.is_empty() => Poll::Ready(None),
                        Ok(rest) => Poll::Ready(Some(Ok(Frame::data(rest)))),
                    };
                }
                other => return other,
            };
            let frame = match frame.into_data() {
                Ok(mut data) => {
                    let eos = this.inner.is_end_stream();
                    if let Err(r) = this.observe(&mut data, eos) {
                        return this.reject(r);
                    }
                    // An observer holding the chunk back (buffering) leaves nothing to send.
                    if data.is_empty() && !eos {
                        continue;
                    }
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Err(frame) => frame,
            };
            return match frame.into_trailers() {
                Ok(trailers) => this.on_trailers(trailers),
                Err(frame) => Poll::Ready(Some(Ok(frame))),
            };
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done && self.pending.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        if self.keeps_length {
            self.inner.size_hint()
        } else {
            SizeHint::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use http_body_util::BodyExt;

    use super::*;

    /// Holds every chunk back and releases them upper-cased at the end; counts trailers.
    struct Buffering {
        held: Vec<u8>,
        ends: usize,
    }

    impl BodyObserver for Buffering {
        fn on_data(&mut self, chunk: &mut Bytes, eos: bool) -> Result<(), BodyReject> {
            self.held.extend_from_slice(chunk);
            *chunk = Bytes::new();
            if eos {
                self.ends += 1;
                assert_eq!(self.ends, 1, "the end comes once");
                *chunk = Bytes::from(self.held.to_ascii_uppercase());
            }
            Ok(())
        }

        fn on_trailers(&mut self, t: &mut http::HeaderMap) -> Result<(), BodyReject> {
            t.insert("x-seen", http::HeaderValue::from_static("1"));
            Ok(())
        }
    }

    /// A body of these frames, one per poll.
    struct Frames(std::collections::VecDeque<Frame<Bytes>>);

    impl Body for Frames {
        type Data = Bytes;
        type Error = BoxError;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
            Poll::Ready(self.0.pop_front().map(Ok))
        }

        fn is_end_stream(&self) -> bool {
            self.0.is_empty()
        }
    }

    fn body(frames: Vec<Frame<Bytes>>) -> ProxyBody {
        ProxyBody::boxed(Frames(frames.into()))
    }

    #[tokio::test]
    async fn held_data_goes_out_before_the_trailers_and_no_empty_frames() {
        let mut trailers = http::HeaderMap::new();
        trailers.insert("grpc-status", http::HeaderValue::from_static("0"));
        let inner = body(vec![
            Frame::data(Bytes::from_static(b"ab")),
            Frame::data(Bytes::from_static(b"cd")),
            Frame::trailers(trailers),
        ]);
        let o = Buffering {
            held: Vec::new(),
            ends: 0,
        };
        let mut b = ObservedBody::new(inner, vec![Box::new(o)], None);
        let mut frames = Vec::new();
        while let Some(f) = b.frame().await {
            frames.push(f.unwrap());
        }
        assert_eq!(frames.len(), 2, "one data frame, then the trailers");
        assert_eq!(frames[0].data_ref().unwrap(), &Bytes::from_static(b"ABCD"));
        let t = frames[1].trailers_ref().unwrap();
        assert_eq!(t["grpc-status"], "0");
        assert_eq!(t["x-seen"], "1");
        assert!(b.is_end_stream());
    }

    #[tokio::test]
    async fn a_stream_without_trailers_ends_with_what_was_held() {
        let inner = body(vec![Frame::data(Bytes::from_static(b"xy"))]);
        let o = Buffering {
            held: Vec::new(),
            ends: 0,
        };
        let all = ObservedBody::new(inner, vec![Box::new(o)], None)
            .collect()
            .await
            .unwrap()
            .to_bytes();
        assert_eq!(all, Bytes::from_static(b"XY"));
    }
}

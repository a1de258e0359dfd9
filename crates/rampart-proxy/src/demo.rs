//! A small built-in origin server: what `rampart up` puts behind the demo routes, and what
//! tests and benchmarks use as a real upstream process.
//!
//! Paths:
//! - `/bytes/N` — N bytes (streamed in 64 KiB chunks, never held whole)
//! - `/delay/MS` — answers after MS milliseconds
//! - `/status/CODE` — answers with that status
//! - `/echo...` with a body — streams the request body back
//! - `/count` — reads the request body and answers with its length
//! - anything else — JSON describing the request (method, path, headers, server name)

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode, header};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::body::{BoxError, ProxyBody};

const CHUNK: usize = 64 * 1024;

/// Serves until `stop` is cancelled. `name` is reported in JSON answers and the
/// `x-upstream-name` header so tests can tell upstreams apart.
pub async fn serve(listener: TcpListener, name: String, stop: CancellationToken) {
    let name: Arc<str> = name.into();
    loop {
        let (stream, peer) = tokio::select! {
            () = stop.cancelled() => return,
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(_) => continue,
            },
        };
        let _ = stream.set_nodelay(true);
        let name = name.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| handle(name.clone(), peer, req));
            let builder = auto::Builder::new(TokioExecutor::new());
            let conn = builder.serve_connection(TokioIo::new(stream), svc);
            tokio::pin!(conn);
            tokio::select! {
                _ = conn.as_mut() => {}
                () = stop.cancelled() => {}
            }
        });
    }
}

/// Binds `addr` and serves on the current runtime.
pub async fn bind_and_serve(
    addr: SocketAddr,
    name: String,
    stop: CancellationToken,
) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    tokio::spawn(serve(listener, name, stop));
    Ok(local)
}

fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<ProxyBody> {
    let mut r = Response::new(ProxyBody::full(body.into()));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/plain"),
    );
    r
}

async fn handle(
    name: Arc<str>,
    peer: SocketAddr,
    req: Request<Incoming>,
) -> Result<Response<ProxyBody>, Infallible> {
    let path = req.uri().path().to_owned();
    let mut resp = if let Some(n) = path.strip_prefix("/bytes/") {
        bytes(n)
    } else if let Some(ms) = path.strip_prefix("/delay/") {
        delay(ms).await
    } else if let Some(code) = path.strip_prefix("/status/") {
        status(code)
    } else if path.starts_with("/echo") && req.method() != http::Method::GET {
        let body = req.into_body();
        let mut r = Response::new(ProxyBody::stream(body));
        r.headers_mut().insert(
            header::CONTENT_TYPE,
            header::HeaderValue::from_static("application/octet-stream"),
        );
        r
    } else if path == "/count" {
        match body_len(req.into_body()).await {
            Some(n) => text(StatusCode::OK, format!("{n}\n")),
            // Returned as it is: a failed body gets no x-upstream-name header.
            None => return Ok(text(StatusCode::BAD_REQUEST, "body failed\n")),
        }
    } else {
        describe(&name, peer, &req, &path)
    };
    if let Ok(v) = header::HeaderValue::from_str(&name) {
        resp.headers_mut().insert("x-upstream-name", v);
    }
    Ok(resp)
}

/// `/bytes/N`: N bytes, streamed in chunks.
fn bytes(n: &str) -> Response<ProxyBody> {
    let Ok(n) = n.parse::<usize>() else {
        return text(StatusCode::BAD_REQUEST, "bad length\n");
    };
    let chunks = (0..n.div_ceil(CHUNK)).map(move |i| {
        let len = CHUNK.min(n - i * CHUNK);
        Ok::<_, BoxError>(Frame::data(Bytes::from(vec![b'x'; len])))
    });
    let mut r = Response::new(ProxyBody::boxed(StreamBody::new(futures_lite_iter(chunks))));
    r.headers_mut().insert(header::CONTENT_LENGTH, n.into());
    r
}

/// `/delay/MS`: answers after MS milliseconds (at most a minute).
async fn delay(ms: &str) -> Response<ProxyBody> {
    let Ok(ms) = ms.parse::<u64>() else {
        return text(StatusCode::BAD_REQUEST, "bad delay\n");
    };
    tokio::time::sleep(Duration::from_millis(ms.min(60_000))).await;
    text(StatusCode::OK, format!("waited {ms} ms\n"))
}

/// `/status/CODE`: answers with that status.
fn status(code: &str) -> Response<ProxyBody> {
    match code
        .parse::<u16>()
        .ok()
        .and_then(|c| StatusCode::from_u16(c).ok())
    {
        Some(s) => text(s, format!("{s}\n")),
        None => text(StatusCode::BAD_REQUEST, "bad status\n"),
    }
}

/// The request body's length in bytes, or None when reading it failed.
async fn body_len(mut body: Incoming) -> Option<u64> {
    let mut n: u64 = 0;
    while let Some(frame) = body.frame().await {
        n += frame.ok()?.data_ref().map_or(0, |d| d.len() as u64);
    }
    Some(n)
}

/// Any other path: the request described in JSON.
fn describe(
    name: &str,
    peer: SocketAddr,
    req: &Request<Incoming>,
    path: &str,
) -> Response<ProxyBody> {
    let headers: serde_json::Map<String, serde_json::Value> = req
        .headers()
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().to_owned(),
                String::from_utf8_lossy(v.as_bytes()).into_owned().into(),
            )
        })
        .collect();
    let body = serde_json::json!({
        "server": name,
        "method": req.method().as_str(),
        "path": path,
        "query": req.uri().query(),
        "version": format!("{:?}", req.version()),
        "peer": peer.to_string(),
        "headers": headers,
    });
    let mut r = text(StatusCode::OK, body.to_string() + "\n");
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    r
}

/// Adapts an iterator into a stream without pulling in a streams crate.
fn futures_lite_iter<I: Iterator + Unpin>(iter: I) -> IterStream<I> {
    IterStream(iter)
}

struct IterStream<I>(I);

impl<I: Iterator + Unpin> futures_core::Stream for IterStream<I> {
    type Item = I::Item;
    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<I::Item>> {
        std::task::Poll::Ready(self.0.next())
    }
}

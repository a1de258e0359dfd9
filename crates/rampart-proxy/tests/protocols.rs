//! Protocols riding on HTTP through the proxy: gRPC (HTTP/2 with trailers, streaming, and
//! grpc-status on errors the proxy generates) and HTTP/1.1 upgrades (WebSocket).

mod common;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Frame;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A gRPC-shaped h2 server: answers every call with `n` length-prefixed messages 40 ms apart
/// (n from the request path's last segment), then trailers `grpc-status: 0`.
async fn grpc_upstream() -> SocketAddr {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((s, _)) = l.accept().await else { return };
            tokio::spawn(async move {
                let svc = service_fn(|req: Request<hyper::body::Incoming>| async move {
                    let n: usize = req
                        .uri()
                        .path()
                        .rsplit('/')
                        .next()
                        .unwrap()
                        .parse()
                        .unwrap_or(1);
                    let req_body = req.into_body().collect().await.unwrap().to_bytes();
                    let (tx, rx) =
                        tokio::sync::mpsc::channel::<Result<Frame<Bytes>, Infallible>>(4);
                    tokio::spawn(async move {
                        for i in 0..n {
                            tokio::time::sleep(Duration::from_millis(40)).await;
                            let msg = format!("reply {i} to {} bytes", req_body.len());
                            let mut framed = vec![0u8];
                            framed.extend_from_slice(&(msg.len() as u32).to_be_bytes());
                            framed.extend_from_slice(msg.as_bytes());
                            let _ = tx.send(Ok(Frame::data(Bytes::from(framed)))).await;
                        }
                        let mut trailers = HeaderMap::new();
                        trailers.insert("grpc-status", "0".parse().unwrap());
                        trailers.insert("grpc-message", "all good".parse().unwrap());
                        let _ = tx.send(Ok(Frame::trailers(trailers))).await;
                    });
                    let stream = tokio_stream_from(rx);
                    let mut r = Response::new(StreamBody::new(stream));
                    r.headers_mut()
                        .insert("content-type", "application/grpc".parse().unwrap());
                    Ok::<_, Infallible>(r)
                });
                let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(s), svc)
                    .await;
            });
        }
    });
    addr
}

/// Adapts an mpsc receiver into a `Stream` without a streams crate.
fn tokio_stream_from<T>(rx: tokio::sync::mpsc::Receiver<T>) -> RxStream<T> {
    RxStream(rx)
}

struct RxStream<T>(tokio::sync::mpsc::Receiver<T>);

impl<T> futures_core::Stream for RxStream<T> {
    type Item = T;
    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<T>> {
        self.0.poll_recv(cx)
    }
}

/// A gRPC call over a fresh h2c connection to the proxy: returns (status, headers, message
/// arrival times, trailers).
async fn grpc_call(
    proxy: SocketAddr,
    path: &str,
) -> (
    StatusCode,
    HeaderMap,
    Vec<(Instant, Bytes)>,
    Option<HeaderMap>,
) {
    let tcp = tokio::net::TcpStream::connect(proxy).await.unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
            .await
            .unwrap();
    tokio::spawn(conn);
    let req = Request::post(format!("http://grpc.test{path}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(Full::new(Bytes::from_static(b"\0\0\0\0\x05hello")))
        .unwrap();
    let resp = sender.send_request(req).await.unwrap();
    let (parts, mut body) = resp.into_parts();
    let mut messages = Vec::new();
    let mut trailers = None;
    while let Some(frame) = body.frame().await {
        let frame = frame.unwrap();
        match frame.into_data() {
            Ok(d) => messages.push((Instant::now(), d)),
            Err(f) => trailers = f.into_trailers().ok(),
        }
    }
    (parts.status, parts.headers, messages, trailers)
}

#[tokio::test]
async fn grpc_streams_with_trailers_through_the_proxy() {
    let up = grpc_upstream().await;
    let tg = gateway(&config(
        "          - { match: { path: { prefix: /echo.Echo/ } }, forward: { cluster: grpc } }\n",
        &format!("  - {{ name: grpc, endpoints: [\"{up}\"], protocol: http2 }}\n"),
    ))
    .await;

    // Unary.
    let (status, headers, messages, trailers) = grpc_call(tg.addr, "/echo.Echo/Say/1").await;
    assert_eq!(status, 200);
    assert_eq!(headers["content-type"], "application/grpc");
    assert_eq!(messages.len(), 1);
    assert_eq!(&messages[0].1[5..], b"reply 0 to 10 bytes");
    let trailers = trailers.expect("trailers kept");
    assert_eq!(trailers["grpc-status"], "0");
    assert_eq!(trailers["grpc-message"], "all good");

    // Server streaming: messages arrive as they are sent, not all at the end.
    let (_, _, messages, trailers) = grpc_call(tg.addr, "/echo.Echo/Stream/5").await;
    assert_eq!(messages.len(), 5, "one frame per message");
    let spread = messages[4].0 - messages[0].0;
    assert!(
        spread >= Duration::from_millis(120),
        "streamed, not buffered: {spread:?}"
    );
    assert_eq!(trailers.unwrap()["grpc-status"], "0");
}

#[tokio::test]
async fn proxy_errors_reach_grpc_clients_as_grpc_status() {
    let refused = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let tg = gateway(&config(
        "          - { match: { path: { prefix: /down.Svc/ } }, forward: { cluster: down } }\n",
        &format!("  - {{ name: down, endpoints: [\"{refused}\"], protocol: http2 }}\n"),
    ))
    .await;
    let (status, headers, messages, _) = grpc_call(tg.addr, "/down.Svc/Call/1").await;
    assert_eq!(status, 200, "gRPC errors travel in grpc-status");
    assert_eq!(headers["grpc-status"], "14", "UNAVAILABLE");
    assert!(
        headers["grpc-message"]
            .to_str()
            .unwrap()
            .contains("upstream connect error")
    );
    assert!(messages.is_empty());
    let (_, headers, _, _) = grpc_call(tg.addr, "/nope.Svc/Call/1").await;
    assert_eq!(headers["grpc-status"], "12", "UNIMPLEMENTED for no route");
}

/// An upstream that accepts `Connection: upgrade` and then echoes every byte.
async fn echo_upgrade_upstream() -> SocketAddr {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((s, _)) = l.accept().await else { return };
            tokio::spawn(async move {
                let svc = service_fn(|mut req: Request<hyper::body::Incoming>| async move {
                    let proto = req.headers().get("upgrade").cloned();
                    let Some(proto) = proto else {
                        return Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(
                            b"plain",
                        ))));
                    };
                    let on = hyper::upgrade::on(&mut req);
                    // A body sent with the upgrade request is read first; its length is
                    // reported back.
                    let body = http_body_util::BodyExt::collect(req.into_body())
                        .await
                        .map(|b| b.to_bytes().len())
                        .unwrap_or(usize::MAX);
                    tokio::spawn(async move {
                        let up = on.await.unwrap();
                        let mut io = TokioIo::new(up);
                        let mut buf = [0u8; 1024];
                        loop {
                            match io.read(&mut buf).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => {
                                    if io.write_all(&buf[..n]).await.is_err() {
                                        return;
                                    }
                                }
                            }
                        }
                    });
                    let mut r = Response::new(Full::new(Bytes::new()));
                    *r.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
                    r.headers_mut().insert("upgrade", proto);
                    r.headers_mut()
                        .insert("connection", "upgrade".parse().unwrap());
                    r.headers_mut().insert(
                        "sec-websocket-accept",
                        "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=".parse().unwrap(),
                    );
                    r.headers_mut().insert("x-body-len", body.into());
                    Ok(r)
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(s), svc)
                    .with_upgrades()
                    .await;
            });
        }
    });
    addr
}

#[tokio::test]
async fn websocket_upgrade_is_relayed_both_ways() {
    let up = echo_upgrade_upstream().await;
    let tg = gateway(&config(
        "          - forward: { cluster: ws }\n",
        &format!("  - {{ name: ws, endpoints: [\"{up}\"] }}\n"),
    ))
    .await;
    let mut s = tokio::net::TcpStream::connect(tg.addr).await.unwrap();
    s.write_all(
        b"GET /chat HTTP/1.1\r\nhost: ws.test\r\nconnection: Upgrade\r\nupgrade: websocket\r\n\
          sec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\nsec-websocket-version: 13\r\n\r\n",
    )
    .await
    .unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        assert_eq!(
            s.read(&mut byte).await.unwrap(),
            1,
            "closed during the handshake"
        );
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head).to_lowercase();
    assert!(head.starts_with("http/1.1 101"), "{head}");
    assert!(head.contains("upgrade: websocket"), "{head}");
    assert!(
        head.contains("sec-websocket-accept: s3pplmbitxaq9kygzzhzrbk+xoo="),
        "{head}"
    );
    // A masked WebSocket text frame "hi", then more bytes: each comes back unchanged.
    for msg in [
        &b"\x81\x82\x01\x02\x03\x04\x69\x6b"[..],
        b"second message",
        &[0u8; 700],
    ] {
        s.write_all(msg).await.unwrap();
        let mut back = vec![0u8; msg.len()];
        tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut back))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(back, msg);
    }
    // A plain request on the same route still works.
    assert_eq!(get(tg.addr, "/", &[]).await.text(), "plain");

    // An upgrade request with a body: the body reaches the upstream with the request.
    let mut s = tokio::net::TcpStream::connect(tg.addr).await.unwrap();
    s.write_all(
        b"POST /chat HTTP/1.1\r\nhost: ws.test\r\nconnection: Upgrade\r\nupgrade: websocket\r\n\
          content-length: 5\r\n\r\nhello",
    )
    .await
    .unwrap();
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        assert_eq!(s.read(&mut byte).await.unwrap(), 1, "closed: {head:?}");
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head).to_lowercase();
    assert!(head.starts_with("http/1.1 101"), "{head}");
    assert!(head.contains("x-body-len: 5"), "{head}");
}

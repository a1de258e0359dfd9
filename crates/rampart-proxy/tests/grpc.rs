//! A real gRPC service and client (tonic + prost) talking through the gateway: unary and
//! server-streaming calls, status codes from the service, and grpc-status from the proxy.

mod common;

use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};

use common::*;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};

use tonic::{Request, Response, Status};
use tonic_prost::ProstCodec;

#[derive(Clone, PartialEq, prost::Message)]
struct EchoRequest {
    #[prost(string, tag = "1")]
    message: String,
    #[prost(uint32, tag = "2")]
    repeat: u32,
}

#[derive(Clone, PartialEq, prost::Message)]
struct EchoReply {
    #[prost(string, tag = "1")]
    message: String,
    #[prost(uint32, tag = "2")]
    index: u32,
}

struct Unary;

impl tonic::server::UnaryService<EchoRequest> for Unary {
    type Response = EchoReply;
    type Future = Pin<Box<dyn Future<Output = Result<Response<EchoReply>, Status>> + Send>>;

    fn call(&mut self, req: Request<EchoRequest>) -> Self::Future {
        Box::pin(async move {
            let m = req.into_inner().message;
            if m == "fail" {
                return Err(Status::invalid_argument("the service refused"));
            }
            Ok(Response::new(EchoReply {
                message: format!("echo: {m}"),
                index: 0,
            }))
        })
    }
}

struct Streaming;

type ReplyStream = Pin<Box<dyn futures_core::Stream<Item = Result<EchoReply, Status>> + Send>>;

impl tonic::server::ServerStreamingService<EchoRequest> for Streaming {
    type Response = EchoReply;
    type ResponseStream = ReplyStream;
    type Future = Pin<Box<dyn Future<Output = Result<Response<ReplyStream>, Status>> + Send>>;

    fn call(&mut self, req: Request<EchoRequest>) -> Self::Future {
        Box::pin(async move {
            let r = req.into_inner();
            let stream: ReplyStream = Box::pin(Replies {
                message: r.message,
                left: r.repeat,
                index: 0,
            });
            Ok(Response::new(stream))
        })
    }
}

struct Replies {
    message: String,
    left: u32,
    index: u32,
}

impl futures_core::Stream for Replies {
    type Item = Result<EchoReply, Status>;
    fn poll_next(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.left == 0 {
            return Poll::Ready(None);
        }
        self.left -= 1;
        self.index += 1;
        let reply = EchoReply {
            message: self.message.clone(),
            index: self.index,
        };
        Poll::Ready(Some(Ok(reply)))
    }
}

/// Serves `echo.Echo/Unary` and `echo.Echo/Stream` over h2c.
async fn echo_server() -> SocketAddr {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((s, _)) = l.accept().await else { return };
            tokio::spawn(async move {
                let svc = service_fn(|req: http::Request<hyper::body::Incoming>| async move {
                    let mut grpc =
                        tonic::server::Grpc::new(ProstCodec::<EchoReply, EchoRequest>::default());
                    let resp = match req.uri().path() {
                        "/echo.Echo/Unary" => grpc.unary(Unary, req).await,
                        "/echo.Echo/Stream" => grpc.server_streaming(Streaming, req).await,
                        _ => Status::unimplemented("no such method").into_http(),
                    };
                    Ok::<_, std::convert::Infallible>(resp)
                });
                let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(s), svc)
                    .await;
            });
        }
    });
    addr
}

type GrpcClient = tonic::client::Grpc<
    hyper_util::client::legacy::Client<
        hyper_util::client::legacy::connect::HttpConnector,
        tonic::body::Body,
    >,
>;

fn client(proxy: SocketAddr) -> GrpcClient {
    let http = hyper_util::client::legacy::Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http();
    tonic::client::Grpc::with_origin(http, format!("http://{proxy}").parse().unwrap())
}

async fn unary(c: &mut GrpcClient, message: &str) -> Result<EchoReply, Status> {
    c.ready().await.unwrap();
    let req = Request::new(EchoRequest {
        message: message.into(),
        repeat: 0,
    });
    let path = http::uri::PathAndQuery::from_static("/echo.Echo/Unary");
    c.unary(req, path, ProstCodec::default())
        .await
        .map(Response::into_inner)
}

#[tokio::test]
async fn tonic_unary_and_streaming_calls_through_the_gateway() {
    let up = echo_server().await;
    let tg = gateway(&config(
        "          - { match: { path: { prefix: /echo.Echo/ } }, forward: { cluster: echo } }\n",
        &format!("  - {{ name: echo, endpoints: [\"{up}\"], protocol: http2 }}\n"),
    ))
    .await;
    let mut c = client(tg.addr);
    assert_eq!(unary(&mut c, "hello").await.unwrap().message, "echo: hello");

    // The service's own status passes through.
    let e = unary(&mut c, "fail").await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    assert_eq!(e.message(), "the service refused");

    // Server streaming: every message, in order, then a clean end.
    c.ready().await.unwrap();
    let req = Request::new(EchoRequest {
        message: "tick".into(),
        repeat: 25,
    });
    let path = http::uri::PathAndQuery::from_static("/echo.Echo/Stream");
    let mut stream = c
        .server_streaming(req, path, ProstCodec::<EchoRequest, EchoReply>::default())
        .await
        .unwrap()
        .into_inner();
    let mut got = Vec::new();
    while let Some(m) = stream.message().await.unwrap() {
        got.push(m.index);
    }
    assert_eq!(got, (1..=25).collect::<Vec<_>>());
}

#[tokio::test]
async fn tonic_clients_see_proxy_failures_as_grpc_codes() {
    let refused = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let tg = gateway(&config(
        "          - { match: { path: { prefix: /echo.Echo/ } }, forward: { cluster: down, timeout: 2s } }\n",
        &format!("  - {{ name: down, endpoints: [\"{refused}\"], protocol: http2 }}\n"),
    ))
    .await;
    let mut c = client(tg.addr);
    let e = unary(&mut c, "hello").await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unavailable, "{e:?}");
    assert_eq!(e.message(), "upstream connect error", "{e:?}");
}

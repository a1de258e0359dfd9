//! A small client for the gateway's admin API, for CLI commands.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, Result};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;

/// Sends one request (with `Authorization: Bearer <token>` when given); returns the status
/// and the body as text. Bounded by a 30 s deadline.
pub(crate) fn send(
    admin: SocketAddr,
    method: http::Method,
    path: &str,
    token: Option<&str>,
    body: Vec<u8>,
) -> Result<(http::StatusCode, String)> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(request(
        admin,
        method,
        path,
        token,
        body,
        Duration::from_secs(30),
    ))
}

/// [`send`] on the caller's runtime, giving up after `timeout`.
pub(crate) async fn request(
    admin: SocketAddr,
    method: http::Method,
    path: &str,
    token: Option<&str>,
    body: Vec<u8>,
    timeout: Duration,
) -> Result<(http::StatusCode, String)> {
    let work = async {
        let tcp = tokio::net::TcpStream::connect(admin)
            .await
            .with_context(|| format!("cannot connect to the admin API at {admin}"))?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await?;
        tokio::spawn(conn);
        let mut req = http::Request::builder()
            .method(method)
            .uri(path)
            .header(http::header::HOST, format!("localhost:{}", admin.port()))
            .header(http::header::CONTENT_TYPE, "application/json");
        if let Some(t) = token {
            req = req.header(http::header::AUTHORIZATION, format!("Bearer {t}"));
        }
        let resp = sender
            .send_request(req.body(Full::new(Bytes::from(body)))?)
            .await?;
        let status = resp.status();
        let text = resp.into_body().collect().await?.to_bytes();
        anyhow::Ok((status, String::from_utf8_lossy(&text).into_owned()))
    };
    tokio::time::timeout(timeout, work)
        .await
        .with_context(|| format!("{admin} did not answer within {timeout:?}"))?
}

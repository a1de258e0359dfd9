//! The byte streams under upstream connections: plain TCP or TLS over TCP.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use rampart_config::tls::ClusterTls;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use crate::error::ProxyError;

/// TLS origination settings of a cluster, rebuilt (files re-read) with every config version.
pub struct UpstreamTls {
    pub connector: TlsConnector,
    pub config: ClusterTls,
}

impl UpstreamTls {
    pub fn new(config: &ClusterTls, alpn: &[Vec<u8>]) -> Result<Self, crate::tls::TlsError> {
        Ok(Self {
            connector: TlsConnector::from(crate::tls::client_config(config, alpn)?),
            config: config.clone(),
        })
    }

    /// Runs the TLS handshake on `tcp` for the endpoint named `source` (`host:port` or
    /// `ip:port`, as configured).
    pub async fn connect(
        self: &Arc<Self>,
        tcp: TcpStream,
        source: &str,
    ) -> Result<UpstreamStream, ProxyError> {
        let fail = |reason: String| ProxyError::UpstreamConnect {
            endpoint: source.to_owned(),
            reason,
        };
        let origin = rampart_config::endpoint(source).map_err(fail)?;
        let name = crate::tls::upstream_server_name(&self.config, &origin)
            .map_err(|e| fail(e.to_string()))?;
        let tls = self
            .connector
            .connect(name, tcp)
            .await
            .map_err(|e| fail(format!("TLS handshake failed: {e}")))?;
        Ok(UpstreamStream::Tls(Box::new(tls)))
    }
}

pub enum UpstreamStream {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl UpstreamStream {
    pub fn negotiated_h2(&self) -> bool {
        match self {
            Self::Plain(_) => false,
            Self::Tls(t) => t.get_ref().1.alpn_protocol() == Some(b"h2".as_slice()),
        }
    }
}

impl AsyncRead for UpstreamStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for UpstreamStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_flush(cx),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Self::Plain(s) => s.is_write_vectored(),
            Self::Tls(s) => s.is_write_vectored(),
        }
    }
}

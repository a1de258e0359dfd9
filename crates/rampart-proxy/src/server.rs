//! Accepting downstream connections and serving them with hyper (HTTP/1.1 and h2c).

use std::future::{Future, poll_fn};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use http::HeaderValue;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use rampart_config::model::Limits;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::Shared;
use crate::proxy::{ConnCtx, handle};

pub(crate) struct AcceptCtx {
    pub(crate) worker: usize,
    pub(crate) listener: TcpListener,
    pub(crate) name: Arc<str>,
    pub(crate) shared: Arc<Shared>,
    pub(crate) slots: Arc<Semaphore>,
    pub(crate) stop: CancellationToken,
    pub(crate) drain: CancellationToken,
    pub(crate) tracker: TaskTracker,
}

pub(crate) async fn accept_loop(cx: AcceptCtx) {
    let AcceptCtx {
        worker,
        listener,
        name,
        shared,
        slots,
        stop,
        drain,
        tracker,
    } = cx;
    let (active, total) = shared.metrics.downstream(&name);
    let recover_original_dst = shared
        .snapshot
        .load()
        .config
        .listeners
        .iter()
        .any(|l| *l.name == *name && l.original_dst);
    loop {
        // Accept, then wait for a slot: a worker never holds a slot while its own socket is
        // idle (with several workers, a slot reserved that way starved connections queued on
        // another worker's socket). When the listener is full, each worker holds at most one
        // accepted connection waiting for a slot; the rest stay in the kernel backlog.
        let Some((stream, peer)) = accept(&listener, &name, &stop).await else {
            return;
        };
        let Some(permit) = acquire_slot(&slots, &stop).await else {
            return;
        };
        let _ = stream.set_nodelay(true);
        let tls = shared
            .snapshot
            .load()
            .listeners
            .get(&*name)
            .and_then(|l| l.tls.clone());
        let original_dst = if recover_original_dst {
            original_destination(&stream)
        } else {
            None
        };
        total.inc();
        active.inc();
        let conn = Arc::new(ConnCtx {
            shared: shared.clone(),
            listener: name.clone(),
            worker,
            client: peer,
            client_ip: HeaderValue::from_str(&peer.ip().to_string())
                .unwrap_or_else(|_| HeaderValue::from_static("unknown")),
            original_dst,
            scheme: if tls.is_some() { "https" } else { "http" },
            inflight: AtomicUsize::new(0),
            requests: AtomicU64::new(0),
            local: shared
                .connection_labels
                .as_ref()
                .and_then(|_| stream.local_addr().ok()),
            labelled: crate::conn_labels::Reported::default(),
        });
        let active = active.clone();
        // A token of its own: polling it then takes only this connection's lock, not one
        // shared by every connection.
        let drain = drain.child_token();
        tracker.spawn(async move {
            serve_accepted(stream, tls, conn, drain).await;
            active.dec();
            drop(permit);
        });
    }
}

/// The next connection on `listener`, or None once `stop` is cancelled.
async fn accept(
    listener: &TcpListener,
    name: &str,
    stop: &CancellationToken,
) -> Option<(TcpStream, SocketAddr)> {
    loop {
        tokio::select! {
            () = stop.cancelled() => return None,
            r = listener.accept() => match r {
                Ok(x) => return Some(x),
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(listener = %name, error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
        }
    }
}

/// One of the listener's connection slots, or None once `stop` is cancelled (or the
/// semaphore is closed).
async fn acquire_slot(
    slots: &Arc<Semaphore>,
    stop: &CancellationToken,
) -> Option<OwnedSemaphorePermit> {
    tokio::select! {
        () = stop.cancelled() => None,
        p = slots.clone().acquire_owned() => p.ok(),
    }
}

/// Serves an accepted connection: directly, or after a TLS handshake that must finish within
/// the listener's header read timeout.
async fn serve_accepted(
    stream: TcpStream,
    tls: Option<TlsAcceptor>,
    conn: Arc<ConnCtx>,
    drain: CancellationToken,
) {
    let Some(acceptor) = tls else {
        return serve_connection(stream, conn, drain).await;
    };
    let timeout = conn
        .shared
        .snapshot
        .load()
        .listeners
        .get(&*conn.listener)
        .map_or(Duration::from_secs(10), |l| l.limits.header_read_timeout);
    match tokio::time::timeout(timeout, acceptor.accept(stream)).await {
        Ok(Ok(tls)) => serve_connection(tls, conn, drain).await,
        Ok(Err(e)) => {
            tracing::debug!(client = %conn.client, error = %e, "TLS handshake failed");
        }
        Err(_) => tracing::debug!(client = %conn.client, "TLS handshake timed out"),
    }
}

/// The address the client connected to before an iptables REDIRECT (`SO_ORIGINAL_DST`), or
/// None when the connection was not redirected (the original destination is this listener).
fn original_destination(stream: &TcpStream) -> Option<SocketAddr> {
    let sock = socket2::SockRef::from(stream);
    let local = stream.local_addr().ok()?;
    let dst = if local.is_ipv4() {
        sock.original_dst_v4()
    } else {
        sock.original_dst_v6()
    };
    let dst = dst.ok()?.as_socket()?;
    (dst != local).then_some(dst)
}

async fn serve_connection<I>(stream: I, conn: Arc<ConnCtx>, drain: CancellationToken)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let limits = conn
        .shared
        .snapshot
        .load()
        .listeners
        .get(&*conn.listener)
        .map(|l| l.limits.clone())
        .unwrap_or_default();
    let builder = http_builder(&limits);
    let activity = Arc::new(AtomicU64::new(0));
    let io = TokioIo::new(Tracked {
        inner: stream,
        activity: activity.clone(),
    });
    let svc_conn = conn.clone();
    let service = service_fn(move |req| handle(svc_conn.clone(), req));
    let served = builder.serve_connection_with_upgrades(io, service);
    tokio::pin!(served);

    let tick = (limits.idle_timeout / 2).max(Duration::from_millis(50));
    let mut idle = IdleWatch {
        activity,
        last_seen: u64::MAX,
        quiet_ticks: 0,
    };
    let mut sleep = std::pin::pin!(tokio::time::sleep(tick));
    let mut drain_wait = std::pin::pin!(drain.cancelled());
    let mut draining = false;
    // The drain signal and the idle tick wake this task through wakers registered once; on
    // every other wake-up only the connection is polled and two cheap flags are checked.
    // (A `select!` would re-poll both, and polling a cancellation future takes a lock.)
    let mut registered = false;
    poll_fn(|cx| {
        if !registered {
            registered = true;
            if drain_wait.as_mut().poll(cx).is_ready() {
                draining = true;
                served.as_mut().graceful_shutdown();
            }
            let _ = sleep.as_mut().poll(cx);
        }
        if !draining && drain.is_cancelled() {
            draining = true;
            served.as_mut().graceful_shutdown();
        }
        if let Poll::Ready(res) = served.as_mut().poll(cx) {
            if let Err(e) = res {
                tracing::debug!(client = %conn.client, error = %e, "connection ended with an error");
            }
            return Poll::Ready(());
        }
        if sleep.is_elapsed() {
            if idle.is_idle(conn.inflight.load(Ordering::Relaxed) > 0) {
                tracing::debug!(client = %conn.client, "closing idle connection");
                return Poll::Ready(());
            }
            sleep.as_mut().reset(tokio::time::Instant::now() + tick);
            let _ = sleep.as_mut().poll(cx);
        }
        Poll::Pending
    })
    .await;
}

/// hyper's HTTP/1.1 and HTTP/2 settings from the listener's limits.
fn http_builder(limits: &Limits) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .keep_alive(true)
        .header_read_timeout(limits.header_read_timeout)
        // hyper's minimum buffer is 8 KiB; validation enforces it.
        .max_buf_size(limits.max_header_bytes.max(8192))
        .max_headers(limits.max_header_count);
    // No keep-alive PINGs from our side: their bytes would count as activity and the idle
    // watchdog in `serve_connection` could never close an idle HTTP/2 connection. A silent
    // peer is closed by the watchdog instead.
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX))
        .max_concurrent_streams(1024);
    builder
}

/// Two ticks without a byte read or written and without a request in progress: idle.
struct IdleWatch {
    activity: Arc<AtomicU64>,
    last_seen: u64,
    quiet_ticks: u32,
}

impl IdleWatch {
    fn is_idle(&mut self, busy: bool) -> bool {
        let now = self.activity.load(Ordering::Relaxed);
        if now == self.last_seen && !busy {
            self.quiet_ticks += 1;
        } else {
            self.quiet_ticks = 0;
        }
        self.last_seen = now;
        self.quiet_ticks >= 2
    }
}

/// A stream that counts reads and writes, so the idle watchdog can tell silence.
struct Tracked<I> {
    inner: I,
    activity: Arc<AtomicU64>,
}

impl<I: AsyncRead + Unpin> AsyncRead for Tracked<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if r.is_ready() {
            self.activity.fetch_add(1, Ordering::Relaxed);
        }
        r
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Tracked<I> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        if r.is_ready() {
            self.activity.fetch_add(1, Ordering::Relaxed);
        }
        r
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if r.is_ready() {
            self.activity.fetch_add(1, Ordering::Relaxed);
        }
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

//! HTTP/1.1 upstream connections, pooled per worker and driven by the request's own task.
//!
//! A pooled client that runs each upstream connection as its own task (as hyper-util's does)
//! costs two cross-task hand-offs per request. Here the task that proxies a request polls the
//! upstream connection itself: while it waits for the response head, and then from the
//! response body (the connection travels inside the body as a [`Lease`]) until the body ends,
//! when the connection goes back to the worker's idle list if it can carry another request.
//!
//! Rules: a connection is used by one request at a time; a connection whose future finished
//! (closed, errored) is never polled again or reused; an idle connection past `idle_timeout`
//! is dropped; a request that was not written at all on a reused connection (it went stale
//! while idle) is retried once on a fresh one, since the upstream cannot have seen it.

use std::collections::HashMap;
use std::future::{Future, poll_fn};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use http::{Request, Response};
use http_body::Body;
use hyper::body::Incoming;
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use prometheus_client::metrics::gauge::Gauge;
use tokio::sync::Notify;

use super::stream::{UpstreamStream, UpstreamTls};
use super::{Counted, Endpoint};
use crate::body::ProxyBody;
use crate::error::ProxyError;

/// One HTTP/1.1 connection to an upstream endpoint.
pub(crate) struct H1Conn {
    sender: http1::SendRequest<ProxyBody>,
    conn: http1::Connection<Counted, ProxyBody>,
    /// The connection future finished: the connection is closed and must not be polled.
    done: bool,
    idle_since: Instant,
}

impl H1Conn {
    /// Drives the connection; returns true once it has finished (closed).
    fn drive(&mut self, cx: &mut Context<'_>) -> bool {
        if !self.done && Pin::new(&mut self.conn).poll(cx).is_ready() {
            self.done = true;
        }
        self.done
    }

    /// Whether it can take a new request now, without waiting.
    fn reusable(&mut self) -> bool {
        let mut cx = Context::from_waker(Waker::noop());
        !self.drive(&mut cx) && matches!(self.sender.poll_ready(&mut cx), Poll::Ready(Ok(())))
    }
}

/// Idle connections of one cluster, one list per worker, keyed by endpoint.
#[allow(clippy::vec_box)] // boxed so a connection moves in and out as one pointer
pub(crate) struct H1Pool {
    /// Boxed so a connection moves between pool and response body as one pointer.
    idle: Vec<Mutex<HashMap<SocketAddr, Vec<Box<H1Conn>>>>>,
    limits: PoolLimits,
    /// Open connections of the cluster (all workers); also what `max_connections` caps.
    gauge: Gauge,
    /// Connections open or being opened, against `max_connections`.
    slots: Arc<AtomicUsize>,
    /// Requests waiting for a connection because `max_connections` is reached (this pool's
    /// count decides; the gauge shows the cluster's).
    pending: AtomicUsize,
    pending_gauge: Gauge,
    /// Signalled when a connection is checked in.
    returned: Notify,
    cluster: String,
    tls: Arc<ArcSwapOption<UpstreamTls>>,
}

/// Sizes and timeouts of a pool; `max_connections` and `max_pending` are circuit breakers.
pub(crate) struct PoolLimits {
    pub(crate) max_idle: usize,
    pub(crate) idle_timeout: Duration,
    pub(crate) connect_timeout: Duration,
    pub(crate) max_connections: usize,
    pub(crate) max_pending: usize,
}

/// The cluster's gauges a pool keeps up to date.
pub(crate) struct PoolGauges {
    /// Open connections.
    pub(crate) connections: Gauge,
    /// Requests waiting for a connection.
    pub(crate) pending: Gauge,
}

/// Decrements the pending count when a waiting request stops waiting.
struct Pending<'a>(&'a AtomicUsize, &'a Gauge);

impl Drop for Pending<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
        self.1.dec();
    }
}

impl H1Pool {
    pub(crate) fn new(
        workers: usize,
        limits: PoolLimits,
        gauges: PoolGauges,
        cluster: String,
        tls: Arc<ArcSwapOption<UpstreamTls>>,
    ) -> Self {
        Self {
            idle: (0..workers.max(1)).map(|_| Mutex::default()).collect(),
            limits,
            gauge: gauges.connections,
            slots: Arc::default(),
            pending: AtomicUsize::new(0),
            pending_gauge: gauges.pending,
            returned: Notify::new(),
            cluster,
            tls,
        }
    }

    /// Reserves a connection slot under `max_connections` (reserved before connecting, so
    /// a burst of requests cannot all connect at once past the limit).
    fn reserve(&self) -> bool {
        if self.slots.fetch_add(1, Ordering::AcqRel) < self.limits.max_connections {
            true
        } else {
            self.slots.fetch_sub(1, Ordering::AcqRel);
            false
        }
    }

    /// Connects using a reserved slot, releasing it if the connection fails.
    async fn connect_reserved(&self, ep: &Endpoint) -> Result<Box<H1Conn>, ProxyError> {
        let r = self.connect(ep).await;
        if r.is_err() {
            self.slots.fetch_sub(1, Ordering::AcqRel);
        }
        r
    }

    /// An idle connection, or a new one if the cluster is under `max_connections`; otherwise
    /// waits (as a pending request, up to `max_pending`) for either. Returns whether the
    /// connection was reused. The caller's timeout bounds the wait.
    async fn acquire(
        &self,
        ep: &Endpoint,
        worker: usize,
    ) -> Result<(Box<H1Conn>, bool), ProxyError> {
        let addr = ep.addr;
        // While others wait, a newcomer queues behind them rather than taking the next free
        // connection first: waiting requests are served in order, which bounds the tail.
        if self.pending.load(Ordering::Relaxed) == 0
            && let Some(c) = self.checkout(worker, addr)
        {
            return Ok((c, true));
        }
        if self.reserve() {
            return Ok((self.connect_reserved(ep).await?, false));
        }
        if self.pending.fetch_add(1, Ordering::Relaxed) >= self.limits.max_pending {
            self.pending.fetch_sub(1, Ordering::Relaxed);
            return Err(ProxyError::Overflow {
                cluster: self.cluster.clone(),
                limit: "max_pending_requests",
            });
        }
        self.pending_gauge.inc();
        let _pending = Pending(&self.pending, &self.pending_gauge);
        loop {
            // A check-in wakes one waiter; closed connections (and check-ins on another
            // worker's list) are noticed by the short re-check.
            tokio::select! {
                () = self.returned.notified() => {}
                () = tokio::time::sleep(Duration::from_millis(5)) => {}
            }
            if let Some(c) = self.checkout(worker, addr) {
                return Ok((c, true));
            }
            if self.reserve() {
                return Ok((self.connect_reserved(ep).await?, false));
            }
        }
    }

    #[allow(clippy::vec_box)] // see the field
    fn slot(
        &self,
        worker: usize,
    ) -> std::sync::MutexGuard<'_, HashMap<SocketAddr, Vec<Box<H1Conn>>>> {
        // Each worker only touches its own slot, so the lock is never contended; a poisoned
        // one only means a panic elsewhere mid-push, and the map is still sound.
        self.idle[worker % self.idle.len()]
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// The most recently used idle connection to `addr` that can still carry a request.
    fn checkout(&self, worker: usize, addr: SocketAddr) -> Option<Box<H1Conn>> {
        let mut slot = self.slot(worker);
        let list = slot.get_mut(&addr)?;
        while let Some(mut c) = list.pop() {
            if c.idle_since.elapsed() < self.limits.idle_timeout && c.reusable() {
                return Some(c);
            }
        }
        None
    }

    fn checkin(&self, worker: usize, addr: SocketAddr, mut c: Box<H1Conn>) {
        if !c.reusable() {
            return;
        }
        c.idle_since = Instant::now();
        let mut slot = self.slot(worker);
        let list = slot.entry(addr).or_default();
        if list.len() < self.limits.max_idle {
            list.push(c);
        }
        drop(slot);
        // One connection came back: wake one waiter, not all of them.
        self.returned.notify_one();
    }

    /// A new connection to `ep` (the caller has reserved its slot): TCP, then TLS when the cluster originates it, both within
    /// the connect timeout.
    async fn connect(&self, ep: &Endpoint) -> Result<Box<H1Conn>, ProxyError> {
        let endpoint = || ep.addr.to_string();
        let tls = self.tls.load_full();
        let open = async {
            let tcp = tokio::net::TcpStream::connect(ep.addr).await.map_err(|e| {
                ProxyError::UpstreamConnect {
                    endpoint: endpoint(),
                    reason: e.to_string(),
                }
            })?;
            let _ = tcp.set_nodelay(true);
            match &tls {
                Some(t) => t.connect(tcp, &ep.source).await,
                None => Ok(UpstreamStream::Plain(tcp)),
            }
        };
        let stream = match tokio::time::timeout(self.limits.connect_timeout, open).await {
            Err(_) => {
                return Err(ProxyError::ConnectTimeout {
                    endpoint: endpoint(),
                });
            }
            Ok(r) => r?,
        };
        let io = Counted::with_slot(TokioIo::new(stream), self.gauge.clone(), self.slots.clone());
        let (sender, conn) =
            http1::Builder::new()
                .handshake(io)
                .await
                .map_err(|e| ProxyError::UpstreamConnect {
                    endpoint: endpoint(),
                    reason: e.to_string(),
                })?;
        Ok(Box::new(H1Conn {
            sender,
            conn,
            done: false,
            idle_since: Instant::now(),
        }))
    }

    /// Sends `req` (origin-form URI) to `addr` on one of `worker`'s connections; returns the
    /// response head and the lease that must travel with the response body.
    pub(crate) async fn send(
        self: &Arc<Self>,
        worker: usize,
        ep: &Endpoint,
        mut req: Request<ProxyBody>,
    ) -> Result<(Response<Incoming>, Lease), ProxyError> {
        let addr = ep.addr;
        loop {
            let (mut c, reused) = self.acquire(ep, worker).await?;
            let mut fut = std::pin::pin!(c.sender.try_send_request(req));
            let result = poll_fn(|cx| {
                let closed = c.drive(cx);
                match fut.as_mut().poll(cx) {
                    Poll::Ready(r) => Poll::Ready(Some(r)),
                    // Closed without answering this request: hyper has already failed it
                    // or will; never poll a finished connection again.
                    Poll::Pending if closed => Poll::Ready(None),
                    Poll::Pending => Poll::Pending,
                }
            })
            .await;
            let reset = |reason: String| ProxyError::UpstreamReset {
                endpoint: addr.to_string(),
                reason,
            };
            match result {
                Some(Ok(resp)) => {
                    let mut lease = Lease {
                        conn: Some(c),
                        pool: self.clone(),
                        addr,
                        worker,
                    };
                    if resp.body().is_end_stream() {
                        lease.finish();
                    }
                    return Ok((resp, lease));
                }
                Some(Err(mut e)) => match e.take_message() {
                    // Never written: a stale idle connection. The upstream has not seen it.
                    Some(unsent) if reused => req = unsent,
                    _ => return Err(reset(super::root_cause(e.error()))),
                },
                None => return Err(reset("connection closed before the response".into())),
            }
        }
    }
}

impl H1Pool {
    /// Sends an upgrade request on a connection of its own (never pooled: after a 101 it
    /// belongs to the tunnel). Driven by its own task so the upgrade can complete.
    pub(crate) async fn send_upgrade(
        &self,
        ep: &Endpoint,
        req: Request<ProxyBody>,
    ) -> Result<Response<Incoming>, ProxyError> {
        let addr = ep.addr;
        if !self.reserve() {
            return Err(ProxyError::Overflow {
                cluster: self.cluster.clone(),
                limit: "max_connections",
            });
        }
        let c = self.connect_reserved(ep).await?;
        let H1Conn {
            mut sender, conn, ..
        } = *c;
        tokio::spawn(conn.with_upgrades());
        sender
            .send_request(req)
            .await
            .map_err(|e| ProxyError::UpstreamReset {
                endpoint: addr.to_string(),
                reason: super::root_cause(&e),
            })
    }
}

/// An upstream connection on loan to one response body.
pub struct Lease {
    conn: Option<Box<H1Conn>>,
    pool: Arc<H1Pool>,
    addr: SocketAddr,
    /// Whose idle list the connection goes back to.
    worker: usize,
}

impl Lease {
    /// Drives the connection so the body it feeds can make progress.
    pub fn drive(&mut self, cx: &mut Context<'_>) {
        if let Some(c) = &mut self.conn {
            c.drive(cx);
        }
    }

    /// The body is complete: hand the connection back if it can carry another request.
    pub fn finish(&mut self) {
        if let Some(c) = self.conn.take() {
            self.pool.checkin(self.worker, self.addr, c);
        }
    }
}

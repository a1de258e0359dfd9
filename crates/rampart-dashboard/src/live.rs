//! The live feed: while at least one page listens, a task reads the platform every second
//! and publishes each topic (`overview`, `routes`, `clusters`, `policies`, `functions`, and
//! the binary's panels: `xds`, `store`, `flows`) when it changed. A page gets every topic's
//! latest value when it connects, then changes, over one server-sent-event stream.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http_body::Frame;
use rampart_proxy::admin_page::AdminApi;
use serde_json::{Value, json};
use tokio::sync::{broadcast, mpsc};

use crate::openmetrics;
use crate::traffic::{self, Scrape};

/// Something outside the gateway the dashboard shows (the store, the control plane, the flow
/// tracer): the binary implements it and hands it to [`crate::Dashboard::new`].
pub trait Panel: Send + Sync {
    /// The topic its values are published under (`store`, `xds`, `flows`).
    fn topic(&self) -> &'static str;

    /// Reads its current state (an `{"error": ...}` object when it cannot).
    fn read(&self) -> Pin<Box<dyn Future<Output = Value> + Send + 'static>>;
}

/// How long a panel may take to answer before it is shown as not answering.
const PANEL_TIMEOUT: Duration = Duration::from_secs(2);

/// Changes held for a slow page before it is sent everything again.
const BACKLOG: usize = 64;

/// A page with nothing new gets a comment this often, so a closed page is noticed.
const KEEP_ALIVE: Duration = Duration::from_secs(15);

type Event = (&'static str, Arc<str>);

/// The topics' latest values and the stream of their changes.
pub(crate) struct Hub {
    every: Duration,
    panels: Vec<Arc<dyn Panel>>,
    tx: broadcast::Sender<Event>,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    latest: BTreeMap<&'static str, Arc<str>>,
    running: bool,
}

impl Hub {
    pub(crate) fn new(panels: Vec<Arc<dyn Panel>>, every: Duration) -> Arc<Self> {
        let (tx, _) = broadcast::channel(BACKLOG);
        Arc::new(Self {
            every,
            panels,
            tx,
            state: Mutex::new(State::default()),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn latest(&self) -> Vec<Event> {
        self.lock()
            .latest
            .iter()
            .map(|(t, v)| (*t, v.clone()))
            .collect()
    }

    /// A page's event stream: the latest of every topic, then changes; the reader task
    /// starts with the first page and stops after the last one leaves.
    /// The stream ends (cleanly, so the page reconnects) at `until`.
    pub(crate) fn subscribe(
        self: &Arc<Self>,
        api: AdminApi,
        until: Option<tokio::time::Instant>,
    ) -> SseBody {
        let mut changes = self.tx.subscribe();
        let start = {
            let mut s = self.lock();
            !std::mem::replace(&mut s.running, true)
        };
        if start {
            tokio::spawn(self.clone().run(api));
        }
        let (out, body) = mpsc::channel::<Bytes>(16);
        let hub = self.clone();
        tokio::spawn(async move {
            let send_all = |events: Vec<Event>| {
                let out = out.clone();
                async move {
                    for (t, v) in events {
                        out.send(frame(t, &v)).await.ok()?;
                    }
                    Some(())
                }
            };
            if out
                .send(Bytes::from_static(b"retry: 1000\n\n"))
                .await
                .is_err()
                || send_all(hub.latest()).await.is_none()
            {
                return;
            }
            loop {
                let sent = tokio::select! {
                    r = changes.recv() => match r {
                        Ok((t, v)) => out.send(frame(t, &v)).await.ok(),
                        // Too slow to keep up: send the whole state again.
                        Err(broadcast::error::RecvError::Lagged(_)) => send_all(hub.latest()).await,
                        Err(broadcast::error::RecvError::Closed) => None,
                    },
                    () = tokio::time::sleep(KEEP_ALIVE) => {
                        out.send(Bytes::from_static(b": keep-alive\n\n")).await.ok()
                    }
                    () = out.closed() => None,
                    () = ended(until) => None,
                };
                if sent.is_none() {
                    return;
                }
            }
        });
        SseBody { rx: body }
    }

    /// Reads everything every `every` while anyone listens.
    async fn run(self: Arc<Self>, api: AdminApi) {
        let mut before: Option<Scrape> = None;
        loop {
            self.tick(&api, &mut before).await;
            tokio::time::sleep(self.every).await;
            let mut s = self.lock();
            if self.tx.receiver_count() == 0 {
                s.running = false;
                return;
            }
        }
    }

    async fn tick(&self, api: &AdminApi, before: &mut Option<Scrape>) {
        let metrics = api.get("/metrics");
        let samples = openmetrics::parse(&String::from_utf8_lossy(&metrics.body));
        let now = Scrape::new(&samples, Instant::now());
        self.publish("plugins", &plugins(&samples));
        if let Some(b) = before.as_ref() {
            self.publish("overview", &traffic::overview(b, &now, unix_ms()));
        }
        *before = Some(now);
        self.publish("routes", &routes(api));
        for (topic, path) in [
            ("clusters", "/clusters"),
            ("policies", "/policy/tenants"),
            ("functions", "/functions"),
        ] {
            let r = api.get(path);
            let v = serde_json::from_slice::<Value>(&r.body)
                .unwrap_or_else(|_| json!({ "error": String::from_utf8_lossy(&r.body).trim() }));
            self.publish(topic, &json!({ "status": r.status.as_u16(), "data": v }));
        }
        let mut reads = tokio::task::JoinSet::new();
        for p in &self.panels {
            let (topic, read) = (p.topic(), p.read());
            reads.spawn(async move {
                let v = tokio::time::timeout(PANEL_TIMEOUT, read)
                    .await
                    .unwrap_or_else(|_| json!({ "error": "did not answer within 2 s" }));
                (topic, v)
            });
        }
        while let Some(r) = reads.join_next().await {
            if let Ok((topic, v)) = r {
                self.publish(topic, &v);
            }
        }
    }

    /// Records `v` as `topic`'s latest and sends it to every page, when it changed.
    fn publish(&self, topic: &'static str, v: &Value) {
        let text: Arc<str> = v.to_string().into();
        let mut s = self.lock();
        if s.latest.get(topic).is_some_and(|old| *old == text) {
            return;
        }
        s.latest.insert(topic, text.clone());
        drop(s);
        let _ = self.tx.send((topic, text));
    }
}

/// Each WASM plugin's calls and failures (`rampart_wasm_*_total{plugin}`).
fn plugins(samples: &[openmetrics::Sample]) -> Value {
    let mut by: BTreeMap<&str, (f64, f64)> = BTreeMap::new();
    for s in samples {
        let Some(plugin) = s.label("plugin") else {
            continue;
        };
        match s.name.as_str() {
            "rampart_wasm_calls_total" => by.entry(plugin).or_default().0 += s.value,
            "rampart_wasm_failures_total" => by.entry(plugin).or_default().1 += s.value,
            _ => {}
        }
    }
    Value::Array(
        by.into_iter()
            .map(|(p, (calls, failures))| json!({ "plugin": p, "calls": calls, "failures": failures }))
            .collect(),
    )
}

/// The listeners and route tables of the running config (`/config_dump`).
fn routes(api: &AdminApi) -> Value {
    let Some(dump) = api.get_json("/config_dump") else {
        return json!({ "error": "no /config_dump" });
    };
    json!({
        "version": dump["version"],
        "last_reload_error": dump["last_reload_error"],
        "listeners": dump["config"]["listeners"],
        "route_tables": dump["config"]["route_tables"],
    })
}

/// Resolves at `until`, or never.
async fn ended(until: Option<tokio::time::Instant>) {
    match until {
        Some(u) => tokio::time::sleep_until(u).await,
        None => std::future::pending().await,
    }
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// One server-sent event (JSON has no raw newlines, so `data` is one line).
fn frame(topic: &str, data: &str) -> Bytes {
    Bytes::from(format!("event: {topic}\ndata: {data}\n\n"))
}

/// A response body fed by the page's forwarding task.
pub(crate) struct SseBody {
    rx: mpsc::Receiver<Bytes>,
}

impl http_body::Body for SseBody {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        self.rx.poll_recv(cx).map(|b| b.map(|b| Ok(Frame::data(b))))
    }
}

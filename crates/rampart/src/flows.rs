//! `rampart flows`: TCP flow tracing with eBPF (see `rampart-flows`).
//!
//! - `watch`: one JSON line per flow event (open, established, close, retransmit, reset),
//!   filtered by port, pid, address or cgroup;
//! - `top`: a live table of flows sorted by bytes, like `tcptop`;
//! - `serve`: Prometheus `/metrics` (flows opened/closed and bytes by local port, bytes and
//!   retransmits by remote address, lost events).
//!
//! Every subcommand detaches cleanly on SIGINT/SIGTERM: the tracer is dropped before exit.

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use rampart_flows::{FlowEvent, FlowTracer, FlowTracerOptions};

#[derive(Args)]
pub(crate) struct FlowsArgs {
    /// Mount tracefs on /sys/kernel/tracing if it is missing.
    #[arg(long, global = true)]
    mount_tracefs: bool,
    /// BPF ring buffer size in bytes (a power of two).
    #[arg(long, global = true, default_value_t = 1 << 22)]
    ring_buffer_bytes: u32,
    /// The bpffs directory where proxies share their connections' route, cluster and tenant
    /// (`rampart up --flow-labels-dir`). "off": no labels from other processes.
    #[arg(long, global = true, default_value = rampart_flows::DEFAULT_LABELS_PIN_DIR)]
    labels_dir: String,
    /// Which events the kernel emits: all, or some of open,established,close,retransmit,reset
    /// (fewer events, less CPU per connection; `serve`'s opened counter needs open).
    #[arg(long, global = true, default_value = "all", value_parser = rampart_flows::EventKinds::parse)]
    events: rampart_flows::EventKinds,
    #[command(subcommand)]
    command: FlowsCommand,
}

#[derive(Subcommand)]
enum FlowsCommand {
    /// Print flow events as JSON lines
    Watch {
        #[command(flatten)]
        filter: Filter,
        /// Stop after this many events (default: until SIGINT/SIGTERM).
        #[arg(long)]
        count: Option<u64>,
    },
    /// A live view of flows sorted by bytes
    Top(TopArgs),
    /// Serve Prometheus metrics about flows
    Serve {
        #[arg(long, default_value = "127.0.0.1:9435")]
        listen: SocketAddr,
    },
}

#[derive(Args)]
struct TopArgs {
    #[command(flatten)]
    filter: Filter,
    /// Refresh interval.
    #[arg(long, default_value = "1s", value_parser = crate::cli_args::duration)]
    interval: Duration,
    /// Rows shown.
    #[arg(long, default_value_t = 20)]
    rows: usize,
    /// Stop after this many refreshes (default: until SIGINT/SIGTERM).
    #[arg(long)]
    iterations: Option<u64>,
    /// Print plain tables one after another instead of redrawing the screen.
    #[arg(long)]
    no_clear: bool,
    /// One row per route, cluster or tenant a proxy gave its connections (live flows, and
    /// flows closed since `top` started), instead of one row per flow.
    #[arg(long, value_enum)]
    by: Option<By>,
}

/// What `top --by` groups labelled flows by.
#[derive(Clone, Copy, clap::ValueEnum)]
enum By {
    Route,
    Cluster,
    Tenant,
}

impl By {
    fn pick(self, l: &rampart_flows::FlowLabels) -> &str {
        match self {
            Self::Route => &l.route,
            Self::Cluster => &l.cluster,
            Self::Tenant => &l.tenant,
        }
    }

    fn heading(self) -> &'static str {
        match self {
            Self::Route => "ROUTE",
            Self::Cluster => "CLUSTER",
            Self::Tenant => "TENANT",
        }
    }
}

/// One row of `top --by`.
#[derive(Default)]
struct Group {
    live: u64,
    closed: u64,
    sent: u64,
    received: u64,
}

/// Which flows to show. Unset fields match everything.
#[derive(Args, Clone, Default)]
struct Filter {
    /// Local or remote port (repeatable).
    #[arg(long = "port")]
    ports: Vec<u16>,
    /// Owning process id (repeatable).
    #[arg(long = "pid")]
    pids: Vec<u32>,
    /// Local or remote address (repeatable).
    #[arg(long = "addr")]
    addrs: Vec<IpAddr>,
    /// A cgroup path (as in /proc/PID/cgroup, e.g. /system.slice/nginx.service): flows whose
    /// owning process is in it or below it.
    #[arg(long)]
    cgroup: Option<String>,
}

impl Filter {
    fn matches(&self, ev: &FlowEvent) -> bool {
        let f = ev.flow();
        let (src, dst) = (f.key.src, f.key.dst);
        (self.ports.is_empty()
            || self.ports.contains(&src.port())
            || self.ports.contains(&dst.port()))
            && (self.pids.is_empty() || self.pids.contains(&f.pid))
            && (self.addrs.is_empty()
                || self.addrs.contains(&src.ip())
                || self.addrs.contains(&dst.ip()))
            && self.cgroup.as_deref().is_none_or(|c| in_cgroup(f.pid, c))
    }
}

/// Whether `pid`'s cgroup (v2) is `path` or below it. A process that is gone matches nothing.
fn in_cgroup(pid: u32, path: &str) -> bool {
    let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/cgroup")) else {
        return false;
    };
    let path = path.trim_end_matches('/');
    text.lines().any(|l| {
        let cg = l.rsplit(':').next().unwrap_or("");
        cg == path || cg.starts_with(&format!("{path}/"))
    })
}

pub(crate) fn run(args: FlowsArgs) -> ExitCode {
    match run_inner(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run_inner(args: FlowsArgs) -> Result<()> {
    let opts = FlowTracerOptions {
        ring_buffer_bytes: args.ring_buffer_bytes,
        mount_tracefs: args.mount_tracefs,
        events: args.events,
        ..FlowTracerOptions::default()
    };
    let stop = stop_on_signals()?;
    let mut tracer = FlowTracer::start(opts).context("cannot start flow tracing")?;
    // Labels from proxies, when one shares them (it made the directory): otherwise no
    // lookups per close, and no maps pinned for nobody.
    let labels_dir = std::path::Path::new(&args.labels_dir);
    if args.labels_dir != "off"
        && labels_dir.exists()
        && let Err(e) = tracer.share_labels(labels_dir)
    {
        eprintln!("flows: no labels from proxies: {e}");
    }
    // Scripts and tests wait for this line: from here on every new flow is seen.
    eprintln!(
        "flows: tracing ({} programs attached)",
        tracer.programs().count()
    );
    let result = match args.command {
        FlowsCommand::Watch { filter, count } => watch(&tracer, &filter, count, &stop),
        FlowsCommand::Top(args) => top(&tracer, args, &stop),
        FlowsCommand::Serve { listen } => serve(tracer, listen, &stop),
    };
    // `tracer` (when still owned here) is dropped on return: programs and links detach.
    result
}

/// SIGINT and SIGTERM set the returned flag (the loops check it between polls).
fn stop_on_signals() -> Result<Arc<AtomicBool>> {
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    std::thread::Builder::new()
        .name("flows-signals".into())
        .spawn(move || {
            rt.block_on(async {
                let Ok(mut term) =
                    tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                else {
                    return;
                };
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
                flag.store(true, Ordering::Relaxed);
            });
        })?;
    Ok(stop)
}

fn event_json(ev: &FlowEvent) -> serde_json::Value {
    let f = ev.flow();
    let mut v = serde_json::json!({
        "ts_ns": u64::try_from(f.timestamp.as_nanos()).unwrap_or(u64::MAX),
        "flow_id": f.flow_id,
        "src": f.key.src.to_string(),
        "dst": f.key.dst.to_string(),
        "netns": f.key.netns,
        "direction": format!("{:?}", f.direction).to_lowercase(),
        "pid": f.pid,
        "comm": f.comm,
    });
    if let Some(l) = &f.labels {
        v["labels"] =
            serde_json::json!({"route": l.route, "cluster": l.cluster, "tenant": l.tenant});
    }
    let stats = |s: &rampart_flows::FlowStats| {
        serde_json::json!({
            "bytes_sent": s.bytes_sent, "bytes_received": s.bytes_received,
            "packets_sent": s.packets_sent, "packets_received": s.packets_received,
            "retransmits": s.retransmits,
        })
    };
    match ev {
        FlowEvent::Open { .. } => v["event"] = "open".into(),
        FlowEvent::Established { handshake, .. } => {
            v["event"] = "established".into();
            v["handshake_us"] = serde_json::json!(handshake.as_secs_f64() * 1e6);
        }
        FlowEvent::Close {
            duration,
            stats: s,
            established,
            reset_sent,
            reset_received,
            ..
        } => {
            v["event"] = "close".into();
            v["duration_us"] = serde_json::json!(duration.as_secs_f64() * 1e6);
            v["stats"] = stats(s);
            v["established"] = (*established).into();
            v["reset_sent"] = (*reset_sent).into();
            v["reset_received"] = (*reset_received).into();
        }
        FlowEvent::Retransmit { stats: s, .. } => {
            v["event"] = "retransmit".into();
            v["stats"] = stats(s);
        }
        FlowEvent::Reset { by, .. } => {
            v["event"] = "reset".into();
            v["by"] = format!("{by:?}").to_lowercase().into();
        }
        _ => v["event"] = "other".into(),
    }
    v
}

fn watch(
    tracer: &FlowTracer,
    filter: &Filter,
    count: Option<u64>,
    stop: &AtomicBool,
) -> Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let mut seen = 0u64;
    let mut lost_reported = 0u64;
    while !stop.load(Ordering::Relaxed) && count.is_none_or(|c| seen < c) {
        let mut lines = Vec::new();
        tracer.poll(Duration::from_millis(100), |ev| {
            if filter.matches(&ev) {
                lines.push(event_json(&ev).to_string());
            }
        })?;
        for l in lines {
            if count.is_some_and(|c| seen >= c) {
                break;
            }
            writeln!(out, "{l}")?;
            seen += 1;
        }
        out.flush()?;
        let lost = tracer.counters()?.events_lost;
        if lost > lost_reported {
            // Losses are reported on stderr, never silently dropped.
            eprintln!(
                "flows: {} events lost (ring buffer full); total {lost}",
                lost - lost_reported
            );
            lost_reported = lost;
        }
    }
    Ok(())
}

/// Redraws the table of flows every `interval` until stopped or `iterations` are done.
fn top(tracer: &FlowTracer, args: TopArgs, stop: &AtomicBool) -> Result<()> {
    let TopArgs {
        filter,
        interval,
        rows,
        iterations,
        no_clear,
        by,
    } = args;
    let mut done = 0u64;
    // `--by`: what closed while `top` ran, per name.
    let mut closed: HashMap<String, Group> = HashMap::new();
    while !stop.load(Ordering::Relaxed) && iterations.is_none_or(|n| done < n) {
        let deadline = Instant::now() + interval;
        // Drain events meanwhile so the ring buffer never fills while `top` runs.
        while Instant::now() < deadline && !stop.load(Ordering::Relaxed) {
            tracer.poll(Duration::from_millis(50), |ev| {
                if let (Some(by), FlowEvent::Close { flow, stats, .. }) = (by, &ev)
                    && let Some(l) = &flow.labels
                    && filter.matches(&ev)
                {
                    let g = closed.entry(by.pick(l).to_owned()).or_default();
                    g.closed += 1;
                    g.sent += stats.bytes_sent;
                    g.received += stats.bytes_received;
                }
            })?;
        }
        let mut flows: Vec<_> = tracer
            .snapshot()?
            .into_iter()
            .filter(|s| {
                filter.matches(&FlowEvent::Open {
                    flow: s.flow.clone(),
                })
            })
            .collect();
        flows.sort_by_key(|s| std::cmp::Reverse(s.stats.bytes_sent + s.stats.bytes_received));
        let c = tracer.counters()?;
        if !no_clear {
            print!("\x1b[2J\x1b[H");
        }
        println!(
            "flows: {} live, {} opened, {} closed, {} events lost",
            c.live_flows, c.flows_opened, c.flows_closed, c.events_lost
        );
        match by {
            Some(by) => print_groups(by, &flows, &closed, rows),
            None => print_flows(&flows, rows),
        }
        done += 1;
    }
    Ok(())
}

fn print_flows(flows: &[rampart_flows::FlowSnapshot], rows: usize) {
    println!(
        "{:>7} {:<16} {:<47} {:<47} {:>12} {:>12} {:>7} {:>9}",
        "PID", "COMM", "LOCAL", "REMOTE", "TX_BYTES", "RX_BYTES", "RETRANS", "AGE_S"
    );
    for s in flows.iter().take(rows) {
        println!(
            "{:>7} {:<16} {:<47} {:<47} {:>12} {:>12} {:>7} {:>9.1}",
            s.flow.pid,
            s.flow.comm,
            s.flow.key.src.to_string(),
            s.flow.key.dst.to_string(),
            s.stats.bytes_sent,
            s.stats.bytes_received,
            s.stats.retransmits,
            s.age.as_secs_f64()
        );
    }
}

/// Labelled flows per name: live ones now, closed ones since `top` started; bytes as the
/// proxy's socket saw them (TX = to the client).
fn print_groups(
    by: By,
    flows: &[rampart_flows::FlowSnapshot],
    closed: &HashMap<String, Group>,
    rows: usize,
) {
    let mut groups: HashMap<&str, Group> = HashMap::new();
    let mut unlabelled = 0usize;
    for s in flows {
        let Some(l) = &s.flow.labels else {
            unlabelled += 1;
            continue;
        };
        let g = groups.entry(by.pick(l)).or_default();
        g.live += 1;
        g.sent += s.stats.bytes_sent;
        g.received += s.stats.bytes_received;
    }
    for (name, c) in closed {
        let g = groups.entry(name.as_str()).or_default();
        g.closed += c.closed;
        g.sent += c.sent;
        g.received += c.received;
    }
    let mut groups: Vec<_> = groups.into_iter().collect();
    groups.sort_by_key(|(name, g)| (std::cmp::Reverse(g.sent + g.received), *name));
    println!("({unlabelled} live flows carry no proxy labels)");
    println!(
        "{:<32} {:>7} {:>9} {:>12} {:>12}",
        by.heading(),
        "LIVE",
        "CLOSED",
        "TX_BYTES",
        "RX_BYTES"
    );
    for (name, g) in groups.iter().take(rows) {
        let name = if name.is_empty() { "-" } else { name };
        println!(
            "{:<32} {:>7} {:>9} {:>12} {:>12}",
            name, g.live, g.closed, g.sent, g.received
        );
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PortLabels {
    local_port: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BytesLabels {
    direction: String,
    local_port: String,
    remote_address: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RemoteLabels {
    local_port: String,
    remote_address: String,
}

/// Distinct (local port, remote address) series kept before new ones are folded into
/// `remote_address="other"`, so a scan of many addresses cannot grow the registry forever.
const MAX_SERIES: usize = 10_000;

fn port_label(port: u16) -> String {
    if port == 0 {
        "ephemeral".to_owned()
    } else {
        port.to_string()
    }
}

fn remote_label(addr: Option<IpAddr>) -> String {
    addr.map_or_else(|| "other".to_owned(), |a| a.to_string())
}

fn port_counter<'a>(
    handles: &'a mut HashMap<u16, Counter>,
    family: &Family<PortLabels, Counter>,
    port: u16,
) -> &'a Counter {
    handles.entry(port).or_insert_with(|| {
        family
            .get_or_create(&PortLabels {
                local_port: port_label(port),
            })
            .clone()
    })
}

fn remote_counter<'a>(
    handles: &'a mut HashMap<Remote, Counter>,
    family: &Family<RemoteLabels, Counter>,
    remote: Remote,
) -> &'a Counter {
    handles.entry(remote).or_insert_with(|| {
        family
            .get_or_create(&RemoteLabels {
                local_port: port_label(remote.0),
                remote_address: remote_label(remote.1),
            })
            .clone()
    })
}

/// The flow metrics, fed from events.
pub(crate) struct FlowMetrics {
    registry: Registry,
    opened: Family<PortLabels, Counter>,
    closed: Family<PortLabels, Counter>,
    bytes: Family<BytesLabels, Counter>,
    retransmits: Family<RemoteLabels, Counter>,
    resets: Family<RemoteLabels, Counter>,
    lost: Gauge,
    live: Gauge,
    series: HashSet<(u16, IpAddr)>,
    /// Handles on the series already made, so that an event costs a hash lookup and an
    /// atomic add, not label strings built and hashed (that was most of the tracer's CPU
    /// per event). Bounded like `series`: one entry per series.
    handles: Handles,
    /// Closed flows by the gateway's route, cluster and tenant (in-process tracing).
    named: crate::flow_labels::NamedFlowMetrics,
}

/// A local port (0: ephemeral) and a remote address (`None`: folded into "other").
type Remote = (u16, Option<IpAddr>);

#[derive(Default)]
struct Handles {
    opened: HashMap<u16, Counter>,
    closed: HashMap<u16, Counter>,
    /// Sent, received.
    bytes: HashMap<Remote, [Counter; 2]>,
    retransmits: HashMap<Remote, Counter>,
    resets: HashMap<Remote, Counter>,
}

impl FlowMetrics {
    pub(crate) fn new() -> Self {
        let mut registry = Registry::with_prefix("rampart_flows");
        let opened = Family::<PortLabels, Counter>::default();
        registry.register("opened", "TCP flows opened, by local port", opened.clone());
        let closed = Family::<PortLabels, Counter>::default();
        registry.register("closed", "TCP flows closed, by local port", closed.clone());
        let bytes = Family::<BytesLabels, Counter>::default();
        registry.register(
            "bytes",
            "Payload bytes of closed flows by direction (sent/received), local port and remote address",
            bytes.clone(),
        );
        let retransmits = Family::<RemoteLabels, Counter>::default();
        registry.register(
            "retransmits",
            "TCP retransmits by local port and remote address",
            retransmits.clone(),
        );
        let resets = Family::<RemoteLabels, Counter>::default();
        registry.register(
            "resets",
            "TCP resets by local port and remote address",
            resets.clone(),
        );
        let lost = Gauge::default();
        registry.register(
            "events_lost",
            "Events dropped because the ring buffer was full",
            lost.clone(),
        );
        let live = Gauge::default();
        registry.register("live", "Flows in the kernel flow table", live.clone());
        let named = crate::flow_labels::NamedFlowMetrics::register(&mut registry);
        Self {
            registry,
            opened,
            closed,
            bytes,
            retransmits,
            resets,
            lost,
            live,
            series: HashSet::new(),
            handles: Handles::default(),
            named,
        }
    }

    /// The remote address as a series label, or `None` (`other`) past [`MAX_SERIES`].
    fn remote(&mut self, port: u16, addr: IpAddr) -> Option<IpAddr> {
        if self.series.contains(&(port, addr)) {
            return Some(addr);
        }
        if self.series.len() < MAX_SERIES {
            self.series.insert((port, addr));
            return Some(addr);
        }
        None
    }

    pub(crate) fn record(&mut self, ev: &FlowEvent) {
        let key = ev.key();
        // A client socket's local port is ephemeral: one series per connection would grow
        // without bound, so outbound flows share `local_port="ephemeral"`.
        let port = match ev.flow().direction {
            rampart_flows::Direction::Outbound => 0,
            _ => key.src.port(),
        };
        match ev {
            FlowEvent::Open { .. } => {
                port_counter(&mut self.handles.opened, &self.opened, port).inc();
            }
            FlowEvent::Close { stats, .. } => {
                if let Some(l) = &ev.flow().labels {
                    self.named.closed(l, stats.bytes_sent, stats.bytes_received);
                }
                port_counter(&mut self.handles.closed, &self.closed, port).inc();
                let remote = (port, self.remote(port, key.dst.ip()));
                let family = &self.bytes;
                let [sent, received] = self.handles.bytes.entry(remote).or_insert_with(|| {
                    ["sent", "received"].map(|direction| {
                        family
                            .get_or_create(&BytesLabels {
                                direction: direction.into(),
                                local_port: port_label(port),
                                remote_address: remote_label(remote.1),
                            })
                            .clone()
                    })
                });
                sent.inc_by(stats.bytes_sent);
                received.inc_by(stats.bytes_received);
            }
            FlowEvent::Retransmit { .. } => {
                let remote = (port, self.remote(port, key.dst.ip()));
                remote_counter(&mut self.handles.retransmits, &self.retransmits, remote).inc();
            }
            FlowEvent::Reset { .. } => {
                let remote = (port, self.remote(port, key.dst.ip()));
                remote_counter(&mut self.handles.resets, &self.resets, remote).inc();
            }
            _ => {}
        }
    }

    pub(crate) fn set_counters(&self, counters: &rampart_flows::FlowCounters) {
        self.lost
            .set(i64::try_from(counters.events_lost).unwrap_or(i64::MAX));
        self.live
            .set(i64::try_from(counters.live_flows).unwrap_or(i64::MAX));
    }

    pub(crate) fn encode(&self) -> String {
        let mut out = String::new();
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

/// Pause between ring-buffer drains in `serve`.
const BATCH_PAUSE: Duration = Duration::from_millis(10);

/// Runs the tracer and its metrics endpoint until `stop` is set. Used by `rampart flows
/// serve` and, in-process, by `rampart up` when it may load BPF programs.
pub(crate) fn serve(tracer: FlowTracer, listen: SocketAddr, stop: &AtomicBool) -> Result<()> {
    // Encoded only when scraped: encoding after every poll cost more than tracing itself.
    let metrics = Arc::new(std::sync::Mutex::new(FlowMetrics::new()));
    let http = std::net::TcpListener::bind(listen)
        .with_context(|| format!("cannot listen on {listen}"))?;
    http.set_nonblocking(true)?;
    let local = http.local_addr()?;
    eprintln!("flows: metrics on http://{local}/metrics");
    let served = metrics.clone();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let server_stop = Arc::new(AtomicBool::new(false));
    let server_flag = server_stop.clone();
    let server = std::thread::Builder::new()
        .name("flows-metrics".into())
        .spawn(move || rt.block_on(metrics_server(http, served, server_flag)))?;
    let lock = || {
        metrics
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    };
    lock().set_counters(&tracer.counters()?);
    let mut counters_read = Instant::now();
    while !stop.load(Ordering::Relaxed) {
        let mut batch = Vec::new();
        tracer.poll(Duration::from_millis(100), |ev| batch.push(ev))?;
        let mut m = lock();
        for ev in &batch {
            m.record(ev);
        }
        if counters_read.elapsed() >= Duration::from_millis(250) {
            m.set_counters(&tracer.counters()?);
            counters_read = Instant::now();
        }
        drop(m);
        // Consume in batches: waking for every event cost more CPU than handling it. The
        // ring buffer holds far more than 10 ms of events at the rates measured.
        std::thread::sleep(BATCH_PAUSE);
    }
    server_stop.store(true, Ordering::Relaxed);
    let _ = server.join();
    drop(tracer);
    Ok(())
}

async fn metrics_server(
    listener: std::net::TcpListener,
    metrics: Arc<std::sync::Mutex<FlowMetrics>>,
    stop: Arc<AtomicBool>,
) -> Result<()> {
    use hyper::service::service_fn;
    use hyper_util::rt::TokioIo;
    let listener = tokio::net::TcpListener::from_std(listener)?;
    while !stop.load(Ordering::Relaxed) {
        let Ok(Ok((stream, _))) =
            tokio::time::timeout(Duration::from_millis(200), listener.accept()).await
        else {
            continue;
        };
        let metrics = metrics.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req: http::Request<hyper::body::Incoming>| {
                let metrics = metrics.clone();
                async move {
                    let (status, body) = if req.uri().path() == "/metrics" {
                        let body = metrics
                            .lock()
                            .unwrap_or_else(std::sync::PoisonError::into_inner)
                            .encode();
                        (http::StatusCode::OK, body)
                    } else {
                        (http::StatusCode::NOT_FOUND, "GET /metrics\n".to_string())
                    };
                    let mut resp =
                        http::Response::new(http_body_util::Full::new(bytes::Bytes::from(body)));
                    *resp.status_mut() = status;
                    Ok::<_, std::convert::Infallible>(resp)
                }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
    Ok(())
}

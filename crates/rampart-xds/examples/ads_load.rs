//! Load for the xDS control plane (`bench/xds-clients.sh`), in two modes.
//!
//! `ads_load clients --server URL --clients N --pushes P --timeout-secs S [--per-conn 100]
//! [--threads 1]`: N Delta ADS streams, `--per-conn` of them multiplexed on each HTTP/2
//! connection. Each follows its resources as a Rampart proxy does (listeners and clusters by
//! wildcard, then the route configurations and EDS endpoints they name, by name) and ACKs
//! every response. Prints `warm ...` once every stream holds a whole config, then one
//! `round=...` line per push that reached every stream (a push: a snapshot version newer than
//! the one each stream last saw), with the spread from the first stream's receipt to each
//! stream's. Exits 0 two seconds after P rounds (the streams stay open meanwhile); 1 when
//! the timeout passes first or a stream fails, with how many streams each pending version
//! reached.
//!
//! `ads_load diff --clusters N [--rounds 5] [--streams 1]`: in process, a config of N
//! clusters (one endpoint each) and a route table with a route to each. Times parsing and
//! translating it, then, for each round, publishing a snapshot where one cluster's endpoint
//! changed until each of S Delta streams holding everything has the change: the control
//! plane diffs per stream, so that is where the diff's time goes. Prints medians. (This
//! process runs on the system allocator; the `rampart` binary runs on mimalloc.)

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt::Write as _;
use std::process::ExitCode;
use std::str::FromStr;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse,
};
use prost::Message;
use rampart_xds::reverse::{self, Held};
use rampart_xds::snapshot::{CLUSTER, ENDPOINT, LISTENER, ROUTE, TYPES};
use rampart_xds::{Cache, Snapshot};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Channel, Endpoint};

/// Largest response a load stream accepts (tonic's default is 4 MiB; the diff mode's initial
/// responses can be larger, and their sizes are printed).
const MAX_MESSAGE: usize = 256 << 20;

/// How long `clients` keeps its streams open after the last round.
const LINGER: Duration = Duration::from_secs(2);

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("clients") => Args::parse(&args[1..]).and_then(|a| clients(&a)),
        Some("diff") => Args::parse(&args[1..]).and_then(|a| diff(&a)),
        _ => Err(
            "usage: ads_load clients --server URL --clients N --pushes P --timeout-secs S \
             [--per-conn 100] [--threads 1]\n       ads_load diff --clusters N [--rounds 5] \
             [--streams 1]"
                .to_owned(),
        ),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ads_load: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `--key value` pairs.
struct Args(HashMap<String, String>);

impl Args {
    fn parse(args: &[String]) -> Result<Self, String> {
        let mut m = HashMap::new();
        let mut it = args.iter();
        while let Some(k) = it.next() {
            let key = k
                .strip_prefix("--")
                .ok_or_else(|| format!("unexpected argument {k}"))?;
            let v = it.next().ok_or_else(|| format!("--{key} needs a value"))?;
            m.insert(key.to_owned(), v.clone());
        }
        Ok(Self(m))
    }

    /// Fails on a key not in `known`.
    fn only(&self, known: &[&str]) -> Result<(), String> {
        match self.0.keys().find(|k| !known.contains(&k.as_str())) {
            Some(k) => Err(format!("unknown option --{k}")),
            None => Ok(()),
        }
    }

    fn get<T: FromStr>(&self, key: &str, default: Option<T>) -> Result<T, String> {
        match self.0.get(key) {
            Some(v) => v.parse().map_err(|_| format!("--{key}: cannot read {v:?}")),
            None => default.ok_or_else(|| format!("--{key} is required")),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// One stream, following its resources as a Rampart proxy does
// ---------------------------------------------------------------------------------------------

/// What a stream reports to the tally.
enum Event {
    /// The stream holds a whole config, as of this snapshot version.
    Warm {
        version: u64,
        bytes: usize,
    },
    /// The stream saw versions `from + 1 ..= to`, first at `at`.
    Saw {
        from: u64,
        to: u64,
        at: Instant,
    },
    /// The control plane turned a new stream away; it will try again.
    Refused,
    Failed {
        client: usize,
        error: String,
    },
}

/// What one stream holds.
#[derive(Default)]
struct View {
    /// Listener and cluster bodies: what names the routes and endpoints to ask for.
    held: Held,
    /// Names held of the other types.
    names: HashMap<String, BTreeSet<String>>,
    /// Names subscribed to, of routes and endpoints.
    subscribed: HashMap<&'static str, BTreeSet<String>>,
    /// Types with a response.
    answered: BTreeSet<String>,
}

impl View {
    /// Takes a response in; returns the subscriptions it calls for.
    fn take(
        &mut self,
        node: &str,
        resp: &DeltaDiscoveryResponse,
    ) -> Result<Vec<DeltaDiscoveryRequest>, String> {
        self.answered.insert(resp.type_url.clone());
        let bodies = resp.type_url == CLUSTER || resp.type_url == LISTENER;
        if !bodies {
            let names = self.names.entry(resp.type_url.clone()).or_default();
            names.extend(resp.resources.iter().map(|r| r.name.clone()));
            for n in &resp.removed_resources {
                names.remove(n);
            }
            return Ok(Vec::new());
        }
        let held = self.held.entry(resp.type_url.clone()).or_default();
        for r in &resp.resources {
            if let Some(body) = &r.resource {
                held.insert(r.name.clone(), body.clone());
            }
        }
        for n in &resp.removed_resources {
            held.remove(n);
        }
        let (routes, eds) = reverse::wanted(&self.held)?;
        let mut out = Vec::new();
        for (t, want) in [(ROUTE, routes), (ENDPOINT, eds)] {
            let want: BTreeSet<String> = want.into_iter().collect();
            let have = self.subscribed.entry(t).or_default();
            if *have == want {
                continue;
            }
            let mut req = request(node, t);
            req.resource_names_subscribe = want.difference(have).cloned().collect();
            req.resource_names_unsubscribe = have.difference(&want).cloned().collect();
            *have = want;
            out.push(req);
        }
        Ok(out)
    }

    /// Whether it holds a whole config: listeners, clusters and everything they name.
    fn whole(&self) -> bool {
        [CLUSTER, LISTENER]
            .iter()
            .all(|t| self.answered.contains(*t))
            && self.subscribed.iter().all(|(t, want)| {
                let have = self.names.get(*t);
                want.iter().all(|n| have.is_some_and(|h| h.contains(n)))
            })
    }
}

fn request(node: &str, type_url: &str) -> DeltaDiscoveryRequest {
    DeltaDiscoveryRequest {
        node: Some(Node {
            id: node.to_owned(),
            ..Default::default()
        }),
        type_url: type_url.to_owned(),
        ..Default::default()
    }
}

/// One stream until it ends; its end is reported as a failure.
/// Why a stream ended.
enum Ended {
    /// Turned away at the start (RESOURCE_EXHAUSTED: the control plane admits new streams at
    /// a set rate); tried again after a backoff, as a Rampart proxy does.
    Refused,
    Error(String),
}

impl From<String> for Ended {
    fn from(e: String) -> Self {
        Self::Error(e)
    }
}

/// One stream until it ends (other than refused); its end is reported as a failure.
async fn stream(client: usize, channel: Channel, events: mpsc::UnboundedSender<Event>) {
    let mut backoff = Duration::from_millis(100);
    let error = loop {
        match follow(client, channel.clone(), &events).await {
            Ok(()) => break "the control plane closed the stream".to_owned(),
            Err(Ended::Error(e)) => break e,
            Err(Ended::Refused) => {
                let _ = events.send(Event::Refused);
                // Spread by client, so the refused do not all come back together.
                let spread = u64::try_from(client % 97).unwrap_or(0) * 10;
                tokio::time::sleep(backoff + Duration::from_millis(spread)).await;
                backoff = (backoff * 2).min(Duration::from_secs(2));
            }
        }
    };
    let _ = events.send(Event::Failed { client, error });
}

async fn follow(
    client: usize,
    channel: Channel,
    events: &mpsc::UnboundedSender<Event>,
) -> Result<(), Ended> {
    let node = format!("ads-load-{client}");
    let gone = |_| "the request stream closed".to_owned();
    let mut ads =
        AggregatedDiscoveryServiceClient::new(channel).max_decoding_message_size(MAX_MESSAGE);
    let (tx, rx) = mpsc::channel(16);
    for t in [CLUSTER, LISTENER] {
        tx.send(request(&node, t)).await.map_err(gone)?;
    }
    let mut responses = ads
        .delta_aggregated_resources(ReceiverStream::new(rx))
        .await
        .map_err(|e| match e.code() {
            tonic::Code::ResourceExhausted => Ended::Refused,
            _ => Ended::Error(e.to_string()),
        })?
        .into_inner();
    let mut view = View::default();
    let mut seen: Option<u64> = None;
    let mut bytes = 0;
    while let Some(resp) = responses.message().await.map_err(|e| e.to_string())? {
        let at = Instant::now();
        bytes = resp.encoded_len().max(bytes);
        for req in view.take(&node, &resp)? {
            tx.send(req).await.map_err(gone)?;
        }
        let mut ack = request(&node, &resp.type_url);
        ack.response_nonce = resp.nonce.clone();
        tx.send(ack).await.map_err(gone)?;
        let version = resp.system_version_info.parse::<u64>().unwrap_or(0);
        match seen {
            None if view.whole() => {
                seen = Some(version);
                let _ = events.send(Event::Warm { version, bytes });
            }
            Some(from) if version > from => {
                seen = Some(version);
                let _ = events.send(Event::Saw {
                    from,
                    to: version,
                    at,
                });
            }
            _ => {}
        }
    }
    Ok(())
}

/// `n` streams, `per_conn` on each connection to `server`.
async fn open_streams(
    server: &str,
    n: usize,
    per_conn: usize,
    events: &mpsc::UnboundedSender<Event>,
) -> Result<usize, String> {
    let endpoint = Endpoint::from_shared(server.to_owned()).map_err(|e| e.to_string())?;
    let mut connections = 0;
    let mut channel = None;
    for i in 0..n {
        if i % per_conn == 0 {
            let c = endpoint
                .connect()
                .await
                .map_err(|e| format!("cannot connect to {server}: {e}"))?;
            channel = Some(c);
            connections += 1;
        }
        if let Some(c) = &channel {
            tokio::spawn(stream(i, c.clone(), events.clone()));
        }
    }
    Ok(connections)
}

// ---------------------------------------------------------------------------------------------
// `clients`
// ---------------------------------------------------------------------------------------------

fn clients(args: &Args) -> Result<(), String> {
    args.only(&[
        "server",
        "clients",
        "pushes",
        "timeout-secs",
        "per-conn",
        "threads",
    ])?;
    let server: String = args.get("server", None)?;
    let n: usize = args.get("clients", None)?;
    let pushes: usize = args.get("pushes", None)?;
    let timeout = Duration::from_secs(args.get("timeout-secs", None)?);
    let per_conn: usize = args.get("per-conn", Some(100))?;
    let threads: usize = args.get("threads", Some(1))?;
    if n == 0 || per_conn == 0 || threads == 0 {
        return Err("--clients, --per-conn and --threads must be at least 1".into());
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    rt.block_on(async {
        let deadline = tokio::time::Instant::now() + timeout;
        let start = Instant::now();
        let (tx, mut rx) = mpsc::unbounded_channel();
        let connections = open_streams(&server, n, per_conn, &tx).await?;
        drop(tx);
        let mut tally = Tally::new(n, pushes, connections, start);
        loop {
            let ev = tokio::select! {
                ev = rx.recv() => ev.ok_or("every stream ended")?,
                () = tokio::time::sleep_until(deadline) => return Err(tally.timed_out(timeout)),
            };
            if tally.take(ev)? {
                // The streams stay open a little, so that closing them is not counted in
                // the last push's CPU.
                tokio::time::sleep(LINGER).await;
                return Ok(());
            }
        }
    })
}

/// Warm streams and push rounds, as the streams report them.
struct Tally {
    clients: usize,
    pushes: usize,
    connections: usize,
    start: Instant,
    warm: usize,
    refused: usize,
    /// Version → when each stream first saw it (or a later one).
    pending: BTreeMap<u64, Vec<Instant>>,
    rounds: usize,
}

impl Tally {
    fn new(clients: usize, pushes: usize, connections: usize, start: Instant) -> Self {
        Self {
            clients,
            pushes,
            connections,
            start,
            warm: 0,
            refused: 0,
            pending: BTreeMap::new(),
            rounds: 0,
        }
    }

    /// Takes one event; true once every round asked for was seen.
    fn take(&mut self, ev: Event) -> Result<bool, String> {
        match ev {
            Event::Failed { client, error } => return Err(format!("stream {client}: {error}")),
            Event::Refused => self.refused += 1,
            Event::Warm { version, .. } => {
                self.warm += 1;
                if self.warm == self.clients {
                    println!(
                        "warm clients={} connections={} refused={} version={version} secs={:.3}",
                        self.clients,
                        self.connections,
                        self.refused,
                        self.start.elapsed().as_secs_f64()
                    );
                    return Ok(self.pushes == 0);
                }
            }
            Event::Saw { from, to, at } => {
                for v in from + 1..=to {
                    self.pending.entry(v).or_default().push(at);
                }
            }
        }
        while let Some(e) = self.pending.first_entry() {
            if e.get().len() < self.clients {
                break;
            }
            let (version, times) = e.remove_entry();
            self.rounds += 1;
            print_round(self.rounds, version, &times);
            if self.rounds == self.pushes {
                return Ok(true);
            }
        }
        Ok(false)
    }

    fn timed_out(&self, after: Duration) -> String {
        let mut s = format!(
            "timed out after {after:?}: {} of {} streams warm ({} refusals), {} of {} rounds seen",
            self.warm, self.clients, self.refused, self.rounds, self.pushes
        );
        for (v, times) in &self.pending {
            let _ = write!(
                s,
                "; version {v} reached {} of {} streams",
                times.len(),
                self.clients
            );
        }
        s
    }
}

/// One line per round: the spread from the first stream's receipt to each stream's.
fn print_round(round: usize, version: u64, times: &[Instant]) {
    let Some(first) = times.iter().min().copied() else {
        return;
    };
    let mut spread: Vec<Duration> = times.iter().map(|t| *t - first).collect();
    spread.sort_unstable();
    let first_unix = SystemTime::now()
        .checked_sub(first.elapsed())
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .unwrap_or_default();
    println!(
        "round={round} version={version} clients={} first_unix_us={} p50_ms={:.3} p99_ms={:.3} max_ms={:.3}",
        times.len(),
        first_unix.as_micros(),
        ms(pct(&spread, 50.0)),
        ms(pct(&spread, 99.0)),
        ms(pct(&spread, 100.0)),
    );
}

/// The `p`-th percentile (nearest rank) of sorted samples.
fn pct(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    #[allow(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        clippy::cast_precision_loss
    )]
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

// ---------------------------------------------------------------------------------------------
// `diff`
// ---------------------------------------------------------------------------------------------

/// A config of `clusters` clusters with one endpoint each and a route to each; cluster `c0`'s
/// endpoint port differs per `round`.
fn yaml(clusters: usize, round: usize) -> String {
    let mut s = String::with_capacity(clusters * 140);
    s.push_str("listeners: [{ name: main, address: \"127.0.0.1:10000\", route_table: main }]\n");
    s.push_str("route_tables:\n  - name: main\n    virtual_hosts:\n      - name: all\n");
    s.push_str("        domains: [\"*\"]\n        routes:\n");
    for i in 0..clusters {
        let _ = writeln!(
            s,
            "          - {{ match: {{ path: {{ prefix: /c{i}/ }} }}, forward: {{ cluster: c{i} }} }}"
        );
    }
    s.push_str("clusters:\n");
    for i in 0..clusters {
        let port = if i == 0 { 20000 + round } else { 80 };
        let (a, b, c) = ((i >> 16) & 255, (i >> 8) & 255, i & 255);
        let _ = writeln!(
            s,
            "  - {{ name: c{i}, endpoints: [\"10.{a}.{b}.{c}:{port}\"] }}"
        );
    }
    s
}

/// Parses and translates round `round`'s config; how long each took.
fn build(clusters: usize, round: usize) -> Result<(Snapshot, Duration, Duration), String> {
    let text = yaml(clusters, round);
    let t = Instant::now();
    let config = rampart_config::from_yaml(&text).map_err(|e| e.to_string())?;
    let parse = t.elapsed();
    let t = Instant::now();
    let version = u64::try_from(round).unwrap_or(u64::MAX) + 1;
    let snap = rampart_xds::translate::snapshot(&config, version);
    Ok((snap, parse, t.elapsed()))
}

/// Per type, how many resources differ between two snapshots.
fn changed(old: &Snapshot, new: &Snapshot) -> String {
    let mut parts = Vec::new();
    for t in TYPES {
        let (o, n) = (old.of(t), new.of(t));
        let differ = n
            .into_iter()
            .flatten()
            .filter(|(name, r)| {
                o.and_then(|o| o.get(*name)).map(|r| &r.version) != Some(&r.version)
            })
            .count();
        let gone = o
            .into_iter()
            .flatten()
            .filter(|(name, _)| !n.is_some_and(|n| n.contains_key(*name)))
            .count();
        parts.push(format!(
            "{}={}",
            rampart_xds::status::short_type(t),
            differ + gone
        ));
    }
    parts.join(",")
}

fn diff(args: &Args) -> Result<(), String> {
    args.only(&["clusters", "rounds", "streams"])?;
    let clusters: usize = args.get("clusters", None)?;
    let rounds: usize = args.get("rounds", Some(5))?;
    let streams: usize = args.get("streams", Some(1))?;
    if clusters == 0 || !(1..=1000).contains(&rounds) || streams == 0 {
        return Err("--clusters and --streams ≥ 1, --rounds 1..=1000".into());
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    rt.block_on(diff_rounds(clusters, rounds, streams))
}

/// Waits (at most `within`) for `n` events of the kind `want` picks; the latest time and
/// size it carried.
async fn wait_for(
    events: &mut mpsc::UnboundedReceiver<Event>,
    n: usize,
    within: Duration,
    want: fn(&Event) -> Option<(Instant, usize)>,
) -> Result<(Instant, usize), String> {
    let deadline = tokio::time::Instant::now() + within;
    let (mut last, mut bytes, mut got) = (Instant::now(), 0, 0);
    while got < n {
        let ev = tokio::time::timeout_at(deadline, events.recv())
            .await
            .map_err(|_| format!("only {got} of {n} streams answered within {within:?}"))?
            .ok_or("every stream ended")?;
        match (&ev, want(&ev)) {
            (Event::Failed { client, error }, _) => {
                return Err(format!("stream {client}: {error}"));
            }
            (Event::Refused, _) => {}
            (_, Some((at, b))) => (last, bytes, got) = (at, bytes.max(b), got + 1),
            (_, None) => return Err("an unexpected event".into()),
        }
    }
    Ok((last, bytes))
}

async fn diff_rounds(clusters: usize, rounds: usize, streams: usize) -> Result<(), String> {
    let (first, parse0, translate0) = build(clusters, 0)?;
    let (mut parse, mut translate) = (vec![parse0], vec![translate0]);
    let (mut publish, mut delivered) = (Vec::new(), Vec::new());
    let cache = Cache::new();
    cache.publish(first);
    let stop = tokio_util::sync::CancellationToken::new();
    let _stop = stop.clone().drop_guard();
    let addr = cache
        .spawn(([127, 0, 0, 1], 0).into(), stop)
        .await
        .map_err(|e| e.to_string())?;
    let (tx, mut rx) = mpsc::unbounded_channel();
    let start = Instant::now();
    open_streams(&format!("http://{addr}"), streams, 100, &tx).await?;
    let warm = |ev: &Event| match ev {
        Event::Warm { bytes, .. } => Some((Instant::now(), *bytes)),
        _ => None,
    };
    let (_, bytes) = wait_for(&mut rx, streams, Duration::from_secs(120), warm).await?;
    println!(
        "diff clusters={clusters} streams={streams} initial_sync_ms={:.1} largest_response_bytes={bytes}",
        ms(start.elapsed())
    );
    let saw = |ev: &Event| match ev {
        Event::Saw { at, .. } => Some((*at, 0)),
        _ => None,
    };
    for round in 1..=rounds {
        let (snap, p, t) = build(clusters, round)?;
        let what = changed(&cache.current(), &snap);
        let t0 = Instant::now();
        cache.publish(snap);
        publish.push(t0.elapsed());
        let (at, _) = wait_for(&mut rx, streams, Duration::from_secs(30), saw).await?;
        delivered.push(at - t0);
        parse.push(p);
        translate.push(t);
        println!(
            "diff round={round} changed={what} parse_ms={:.1} translate_ms={:.1} publish_ms={:.3} publish_to_all_streams_ms={:.3}",
            ms(p),
            ms(t),
            ms(publish[round - 1]),
            ms(delivered[round - 1])
        );
    }
    let med = |v: &mut Vec<Duration>| {
        v.sort_unstable();
        ms(pct(v, 50.0))
    };
    println!(
        "diff median clusters={clusters} streams={streams} rounds={rounds} parse_ms={:.1} translate_ms={:.1} publish_ms={:.3} publish_to_all_streams_ms={:.3}",
        med(&mut parse),
        med(&mut translate),
        med(&mut publish),
        med(&mut delivered)
    );
    Ok(())
}

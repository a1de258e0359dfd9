//! A Rampart proxy fed over xDS: a Delta ADS client as a config source. It subscribes to all
//! listeners and clusters, then to the route configurations the listeners name and the
//! endpoints of EDS clusters; once the set is whole it goes through the gateway's one
//! `apply`, and is ACKed, or NACKed with the reason (the proxy keeps serving its last good
//! config). When the control plane is gone the proxy keeps serving, reconnects with backoff
//! (to the next control plane when several are given) and resumes with the versions it
//! holds (`initial_resource_versions`). The gateway-wide settings (admin, workers, policy
//! engine, access log) come from a local bootstrap, as Envoy's do.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use rampart_xds::envoy_types::pb::envoy::config::core::v3::Node;
use rampart_xds::envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use rampart_xds::envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse,
};
use rampart_xds::envoy_types::pb::google::rpc::Status as RpcStatus;
use rampart_proxy::source::{Applier, ConfigSource, SourceFuture};
use rampart_xds::reverse::{self, Held, Incomplete};
use rampart_xds::snapshot::{CLUSTER, ENDPOINT, LISTENER, ROUTE};
use tokio::sync::mpsc;
use tokio_stream::StreamExt;
use tokio_util::sync::CancellationToken;

#[derive(clap::Args)]
pub(crate) struct ProxyArgs {
    /// The control planes' ADS addresses, comma-separated: the proxy talks to one and moves
    /// to the next when it is gone.
    #[arg(long, default_value = "127.0.0.1:18000", value_delimiter = ',')]
    xds: Vec<SocketAddr>,
    /// This proxy's node id, as the control plane reports it.
    #[arg(long)]
    node_id: String,
    /// The admin endpoint (read-only: config comes from the control plane).
    #[arg(long, default_value = "127.0.0.1:15000")]
    admin: SocketAddr,
    /// Data-plane worker threads (default: one per CPU).
    #[arg(long)]
    workers: Option<usize>,
    /// Ed25519 public keys (base64, comma-separated) that wasm plugins named by the control
    /// plane must be signed with (the bootstrap's `wasm.trusted_keys`).
    #[arg(long, value_delimiter = ',')]
    wasm_trusted_key: Vec<String>,
    /// Follow this config store (its client endpoints, comma-separated): serve the
    /// functions kept in it and decide with its policy bundles.
    #[arg(long, alias = "functions-store", value_delimiter = ',')]
    store: Vec<String>,
    /// Where compiled functions are kept (default: a directory under the system's temp dir).
    #[arg(long)]
    functions_cache: Option<std::path::PathBuf>,
    /// A function unused this long is dropped from memory (0s: after every request).
    #[arg(long, default_value = "5m", value_parser = crate::cli_args::duration)]
    fn_idle_timeout: Duration,
    /// The bpffs directory where the proxy shares its connections' route, cluster and tenant
    /// with flow tracers (`rampart flows top --by route`); needs root. "off": not shared.
    #[cfg(feature = "flows")]
    #[arg(long, default_value = rampart_flows::DEFAULT_LABELS_PIN_DIR)]
    flow_labels_dir: String,
}

/// `rampart proxy`: starts with no listeners; the control plane supplies them.
pub(crate) fn proxy(a: ProxyArgs) -> anyhow::Result<ExitCode> {
    let mut yaml = format!("admin: {{ address: \"{}\" }}\n", a.admin);
    if let Some(w) = a.workers {
        yaml.push_str(&format!("workers: {w}\n"));
    }
    if !a.wasm_trusted_key.is_empty() {
        let keys = serde_json::to_string(&a.wasm_trusted_key)?;
        yaml.push_str(&format!("wasm: {{ trusted_keys: {keys} }}\n"));
    }
    if !a.store.is_empty() {
        // The store's bundles go into an engine of the proxy's own (`policy::store`).
        yaml.push_str("policy: {}\n");
    }
    let cfg = rampart_config::from_yaml(&yaml).map_err(|e| anyhow::anyhow!("{e}"))?;
    let servers = a.xds.iter().map(|s| format!("http://{s}")).collect();
    let functions = (!a.store.is_empty()).then(|| {
        let cache = a.functions_cache.clone().unwrap_or_else(|| {
            std::env::temp_dir().join(format!("rampart-functions-{}", a.node_id))
        });
        let mut settings = rampart_fn::Settings::new(cache);
        settings.idle_timeout = a.fn_idle_timeout;
        settings.trusted_keys = a.wasm_trusted_key.clone();
        crate::functions::Options {
            settings,
            store: a.store.clone(),
        }
    });
    let around = crate::Around {
        xds: Some(XdsSource::new(servers, a.node_id, cfg.raw.clone())),
        functions,
        #[cfg(feature = "flows")]
        connection_labels: crate::flow_labels::shared_sink(&a.flow_labels_dir),
        ..crate::Around::default()
    };
    crate::serve(cfg, around)
}

/// What one response changed of one type: each name with its body and version before.
struct Undo {
    type_url: String,
    before: Vec<(
        String,
        Option<(rampart_xds::envoy_types::pb::google::protobuf::Any, String)>,
    )>,
}

/// Longest wait between two connection attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(5);

pub(crate) struct XdsSource {
    /// `http://host:port` of each control plane's ADS; `next` is tried first.
    servers: Vec<String>,
    next: usize,
    node: String,
    /// The gateway-wide settings; xDS supplies the listeners, routes and clusters.
    bootstrap: rampart_config::RawConfig,
    /// What the proxy holds, kept across connections.
    held: Held,
    /// Type → name → version held (sent back on reconnect).
    versions: HashMap<String, HashMap<String, String>>,
    /// Whether the current connection got a response (then backoff starts over).
    answered: bool,
}

impl XdsSource {
    pub(crate) fn new(
        servers: Vec<String>,
        node: String,
        bootstrap: rampart_config::RawConfig,
    ) -> Self {
        Self {
            servers,
            next: 0,
            node,
            bootstrap,
            held: BTreeMap::new(),
            versions: HashMap::new(),
            answered: false,
        }
    }

    fn request(&self, type_url: &str) -> DeltaDiscoveryRequest {
        DeltaDiscoveryRequest {
            node: Some(Node {
                id: self.node.clone(),
                ..Default::default()
            }),
            type_url: type_url.to_owned(),
            ..Default::default()
        }
    }

    /// One connection, until it fails or `stop`.
    async fn session(&mut self, applier: &Applier, stop: &CancellationToken) -> Result<(), String> {
        let server = self.servers[self.next % self.servers.len()].clone();
        // A control plane that stops answering without closing the connection (a host gone,
        // a partition) is noticed by HTTP/2 pings, not after the kernel's TCP timeouts.
        let channel = tonic::transport::Endpoint::from_shared(server.clone())
            .map_err(|e| format!("{server}: {e}"))?
            .connect_timeout(Duration::from_secs(2))
            .http2_keep_alive_interval(Duration::from_secs(10))
            .keep_alive_timeout(Duration::from_secs(5))
            .keep_alive_while_idle(true)
            .connect()
            .await
            .map_err(|e| format!("cannot connect to {server}: {e}"))?;
        let mut client = AggregatedDiscoveryServiceClient::new(channel);
        tracing::info!(%server, "xDS stream open");
        let (tx, rx) = mpsc::channel(16);
        // The stream's response headers come at once from a live control plane.
        let opened =
            client.delta_aggregated_resources(tokio_stream::wrappers::ReceiverStream::new(rx));
        let mut responses = tokio::time::timeout(Duration::from_secs(5), opened)
            .await
            .map_err(|_| format!("{server} did not open the stream"))?
            .map_err(|e| e.to_string())?
            .into_inner();
        // Named subscriptions made on this connection.
        let mut subscribed: HashMap<&'static str, BTreeSet<String>> = HashMap::new();
        for t in [CLUSTER, LISTENER] {
            let mut req = self.request(t);
            req.initial_resource_versions = self.versions.get(t).cloned().unwrap_or_default();
            tx.send(req).await.map_err(|e| e.to_string())?;
        }
        loop {
            let resp = tokio::select! {
                () = stop.cancelled() => return Ok(()),
                r = responses.next() => match r {
                    Some(Ok(r)) => r,
                    Some(Err(e)) => return Err(e.to_string()),
                    None => return Err("the control plane closed the stream".into()),
                },
            };
            self.answered = true;
            let undo = self.take(&resp);
            for req in self.follow(&mut subscribed) {
                tx.send(req).await.map_err(|e| e.to_string())?;
            }
            let error = self.offer(applier).await;
            if error.is_some() {
                self.revert(undo);
            }
            let mut answer = self.request(&resp.type_url);
            answer.response_nonce = resp.nonce.clone();
            answer.error_detail = error.map(|message| RpcStatus {
                code: 3, // INVALID_ARGUMENT
                message,
                ..Default::default()
            });
            tx.send(answer).await.map_err(|e| e.to_string())?;
        }
    }

    /// Records a response's resources and removals; returns what they replaced, to put
    /// back if the result is rejected.
    fn take(&mut self, resp: &DeltaDiscoveryResponse) -> Undo {
        let held = self.held.entry(resp.type_url.clone()).or_default();
        let versions = self.versions.entry(resp.type_url.clone()).or_default();
        let mut undo = Undo {
            type_url: resp.type_url.clone(),
            before: Vec::new(),
        };
        let mut note =
            |name: &str, held: &BTreeMap<String, _>, versions: &HashMap<String, String>| {
                let prev = held.get(name).cloned().zip(versions.get(name).cloned());
                undo.before.push((name.to_owned(), prev));
            };
        for r in &resp.resources {
            if let Some(body) = &r.resource {
                note(&r.name, held, versions);
                held.insert(r.name.clone(), body.clone());
                versions.insert(r.name.clone(), r.version.clone());
            }
        }
        for name in &resp.removed_resources {
            note(name, held, versions);
            held.remove(name);
            versions.remove(name);
        }
        undo
    }

    /// Puts back what a rejected response replaced: the proxy holds (and on reconnect
    /// reports) the versions it runs, and later updates apply on top of those rather than
    /// failing again on the rejected one.
    fn revert(&mut self, undo: Undo) {
        let held = self.held.entry(undo.type_url.clone()).or_default();
        let versions = self.versions.entry(undo.type_url).or_default();
        for (name, prev) in undo.before.into_iter().rev() {
            match prev {
                Some((body, version)) => {
                    held.insert(name.clone(), body);
                    versions.insert(name, version);
                }
                None => {
                    held.remove(&name);
                    versions.remove(&name);
                }
            }
        }
    }

    /// Subscriptions to follow what listeners and clusters name.
    fn follow(
        &self,
        subscribed: &mut HashMap<&'static str, BTreeSet<String>>,
    ) -> Vec<DeltaDiscoveryRequest> {
        let Ok((routes, eds)) = reverse::wanted(&self.held) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for (t, want) in [(ROUTE, routes), (ENDPOINT, eds)] {
            let want: BTreeSet<String> = want.into_iter().collect();
            let have = subscribed.entry(t).or_default();
            if *have == want {
                continue;
            }
            let mut req = self.request(t);
            if have.is_empty() {
                req.initial_resource_versions = self.versions.get(t).cloned().unwrap_or_default();
            }
            req.resource_names_subscribe = want.difference(have).cloned().collect();
            req.resource_names_unsubscribe = have.difference(&want).cloned().collect();
            *have = want;
            out.push(req);
        }
        out
    }

    /// Applies the held set when it is whole; the error to NACK with, if any.
    async fn offer(&self, applier: &Applier) -> Option<String> {
        match reverse::config(&self.held) {
            Err(Incomplete::Waiting(what)) => {
                tracing::debug!(waiting = ?what, "xDS config still warming");
                None
            }
            Err(Incomplete::Invalid(why)) => Some(why),
            Ok(dynamic) => {
                let raw = rampart_config::RawConfig {
                    listeners: dynamic.listeners,
                    route_tables: dynamic.route_tables,
                    clusters: dynamic.clusters,
                    ..self.bootstrap.clone()
                };
                let config = rampart_config::validate_with(raw, &crate::plugins::filters());
                applier.apply(config).await.err().map(|e| e.to_string())
            }
        }
    }
}

impl ConfigSource for XdsSource {
    fn name(&self) -> &'static str {
        "xds"
    }

    fn warms(&self) -> bool {
        true
    }

    fn run(mut self: Box<Self>, applier: Applier, stop: CancellationToken) -> SourceFuture {
        Box::pin(async move {
            let mut backoff = Duration::from_millis(100);
            loop {
                if let Err(e) = self.session(&applier, &stop).await {
                    // A connection that worked starts the backoff over.
                    if std::mem::take(&mut self.answered) {
                        backoff = Duration::from_millis(100);
                    }
                    // The next attempt goes to the next control plane.
                    self.next = (self.next + 1) % self.servers.len();
                    tracing::warn!(error = %e, retry_in = ?backoff, "xDS connection lost; serving the last good config");
                } else {
                    return;
                }
                // Jittered (half to all of the backoff), so that proxies losing the same
                // control plane do not all come back in the same instant.
                let wait = backoff.mul_f64(0.5 + fastrand::f64() / 2.0);
                tokio::select! {
                    () = stop.cancelled() => return,
                    () = tokio::time::sleep(wait) => {}
                }
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        })
    }
}

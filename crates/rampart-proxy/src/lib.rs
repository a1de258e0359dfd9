//! Rampart's HTTP data plane.
//!
//! A [`Gateway`] runs the listeners of a validated [`Config`] on tokio + hyper 1 (HTTP/1.1
//! keep-alive and HTTP/2 prior knowledge on the same port), routes with `rampart-router`,
//! runs the [`filter`] chain, forwards to [`upstream`] clusters, and serves the admin endpoint
//! on a separate runtime. Config changes are applied with [`Gateway::reload`]: the new config
//! is compiled into a [`snapshot::Snapshot`] and swapped atomically; requests in flight
//! finish on the snapshot they started with. This crate does not parse files or handle
//! signals; the binary does.
// Panics on outside input are forbidden here; unit tests may unwrap (clippy.toml).
#![warn(clippy::unwrap_used)]

pub mod access_log;
pub mod admin;
pub mod admin_page;
pub mod body;
pub mod callout;
pub mod conn_labels;
pub mod demo;
pub mod error;
pub mod filter;
pub mod filters;
pub mod function;
mod ingress;
pub mod metrics;
mod observe;
#[cfg(feature = "policy")]
pub mod policy;
mod proxy;
mod server;
pub mod snapshot;
pub mod source;
pub mod tls;
pub mod upstream;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use arc_swap::ArcSwap;
use rampart_config::{Config, ConfigError};
use tokio::runtime::Handle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::access_log::AccessLog;
use crate::filter::{BuildEnv, FilterBuildError, FilterRegistry};
use crate::metrics::Metrics;
use crate::snapshot::{Builder, ExtraFilter, Snapshot};

pub use crate::filter::{FilterFactory, HttpFilter, RequestContext};

/// State shared by every connection and the admin endpoint.
pub(crate) struct Shared {
    pub(crate) snapshot: ArcSwap<Snapshot>,
    pub(crate) metrics: Metrics,
    pub(crate) access_log: AccessLog,
    pub(crate) ready: AtomicBool,
    pub(crate) last_reload_error: std::sync::Mutex<Option<String>>,
    /// Where the admin API sends `PUT /config` (the admin config source).
    pub(crate) admin_configs: tokio::sync::mpsc::Sender<source::AdminPush>,
    /// For the admin API's `/policy/tenants`.
    #[cfg(feature = "policy")]
    pub(crate) policy: Arc<policy::PolicyRuntime>,
    /// Serves `function:` routes, when the binary links a function runtime.
    pub(crate) functions: Option<Arc<dyn function::FunctionHost>>,
    /// Told each connection's route, cluster and tenant (flow tracing), when plugged in.
    pub(crate) connection_labels: Option<Arc<dyn conn_labels::ConnectionLabels>>,
}

/// What a gateway is extended with: the filters config can name, and filters added in code.
#[derive(Clone)]
pub struct Plugins {
    pub filters: FilterRegistry,
    pub extra: Vec<ExtraFilter>,
    /// Run on the control thread after each config is installed, e.g. to hand the memory
    /// building it took back to the OS (the binary's allocator keeps freed pages until it
    /// next allocates much, and an idle proxy rarely does).
    pub after_install: Option<fn()>,
    /// The runtime `function:` routes go to; without one they answer 503.
    pub functions: Option<Arc<dyn function::FunctionHost>>,
    /// Run once on the gateway's build environment before any config is built: how the
    /// binary hands filters a service of its own (`BuildEnv::provide`), e.g. a store that
    /// `wasm` entries read their modules from.
    pub services: Vec<Service>,
    /// Told which route, cluster and tenant each downstream connection's requests take
    /// (the binary's flow tracer labels the connection's flow with them).
    pub connection_labels: Option<Arc<dyn conn_labels::ConnectionLabels>>,
    /// Pages served on the admin port below their prefix (the binary's dashboard).
    pub admin_pages: Vec<Arc<dyn admin_page::AdminPage>>,
}

/// Something the binary hands the filters at start (see [`Plugins::services`]).
pub type Service = Arc<dyn Fn(&BuildEnv) + Send + Sync>;

impl Default for Plugins {
    /// The built-in filters, nothing added.
    fn default() -> Self {
        Self {
            filters: filters::builtins(),
            extra: Vec::new(),
            after_install: None,
            functions: None,
            services: Vec::new(),
            connection_labels: None,
            admin_pages: Vec::new(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("cannot listen on {address} for listener {listener:?}: {source}")]
    Bind {
        listener: String,
        address: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("{field}: {source}")]
    Tls {
        field: String,
        #[source]
        source: tls::TlsError,
    },
    /// A filter's material (e.g. a JWKS file) did not load; `field` is its config path.
    #[error("{field}: {message}")]
    Filter { field: String, message: String },
    #[error("admin.token_file {}: {reason}", path.display())]
    AdminToken {
        path: std::path::PathBuf,
        reason: String,
    },
    #[error("cannot listen on {address} for the admin endpoint: {source}")]
    AdminBind {
        address: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("the gateway has stopped")]
    Stopped,
}

/// Where tasks run. Each `data` handle is one data-plane worker: the binary gives each its
/// own single-threaded runtime and thread (thread per core, as nginx does), each accepting on
/// its own `SO_REUSEPORT` socket with its own upstream pools, so a request never crosses
/// threads. Control work (admin, DNS, file watching) runs on `control`, so a stalled control
/// task never holds up a request.
#[derive(Clone, Debug)]
pub struct Runtimes {
    pub data: Vec<Handle>,
    pub control: Handle,
}

impl Runtimes {
    /// Both roles on the current runtime (tests, small embeddings).
    pub fn current() -> Self {
        let h = Handle::current();
        Self {
            data: vec![h.clone()],
            control: h,
        }
    }

    fn workers(&self) -> usize {
        self.data.len().max(1)
    }
}

struct ListenerHandle {
    address: SocketAddr,
    local: SocketAddr,
    stop: CancellationToken,
}

/// A running gateway.
pub struct Gateway {
    shared: Arc<Shared>,
    runtimes: Runtimes,
    listeners: tokio::sync::Mutex<HashMap<String, ListenerHandle>>,
    /// Cancelled at shutdown: connections finish their current request and close.
    drain: CancellationToken,
    connections: TaskTracker,
    /// Builds each config version (filter registry, state filters share across versions).
    builder: Builder,
    admin_addr: Option<SocketAddr>,
}

impl Gateway {
    /// Binds every listener and the admin endpoint, then starts serving, with the built-in
    /// filters.
    pub async fn start(config: Config, runtimes: Runtimes) -> Result<Arc<Self>, GatewayError> {
        Self::start_with(config, runtimes, Plugins::default()).await
    }

    /// As [`Gateway::start`], with the built-in filters and `extra` added in code.
    pub async fn start_with_filters(
        config: Config,
        runtimes: Runtimes,
        extra: Vec<ExtraFilter>,
    ) -> Result<Arc<Self>, GatewayError> {
        let plugins = Plugins {
            extra,
            ..Plugins::default()
        };
        Self::start_with(config, runtimes, plugins).await
    }

    /// As [`Gateway::start`], with the filters of `plugins`.
    pub async fn start_with(
        config: Config,
        runtimes: Runtimes,
        plugins: Plugins,
    ) -> Result<Arc<Self>, GatewayError> {
        let metrics = Metrics::new();
        let access_log = AccessLog::new(config.access_log);
        let admin = config.admin.clone();
        let drain = CancellationToken::new();
        let mut env = BuildEnv::new(
            metrics.clone(),
            runtimes.control.clone(),
            drain.child_token(),
        );
        env.workers = runtimes.data.clone();
        let upstreams = callout::Upstreams::default();
        env.provide(upstreams.clone());
        for service in &plugins.services {
            service(&env);
        }
        #[cfg(feature = "policy")]
        let policy = {
            let p = Arc::new(policy::PolicyRuntime::new(&metrics));
            env.provide(p.clone());
            p
        };
        if let Some(f) = &plugins.functions {
            f.attach(&env);
        }
        let builder = Builder {
            env,
            filters: plugins.filters,
            extra: plugins.extra,
            workers: runtimes.workers(),
            after_install: plugins.after_install,
        };
        let snap = prepare(&builder, config, 1, None)?;
        resolve_dns(&snap, &runtimes).await;
        metrics.config_version.set(1);
        let (admin_configs, admin_inbox) = tokio::sync::mpsc::channel(4);
        let shared = Arc::new(Shared {
            admin_configs,
            snapshot: ArcSwap::from_pointee(snap),
            metrics,
            access_log,
            ready: AtomicBool::new(false),
            last_reload_error: std::sync::Mutex::new(None),
            #[cfg(feature = "policy")]
            policy,
            functions: plugins.functions,
            connection_labels: plugins.connection_labels,
        });
        upstreams.attach(&shared);
        let admin_addr = match admin {
            Some(a) => Some(
                admin::spawn(&a, shared.clone(), plugins.admin_pages, &runtimes.control).await?,
            ),
            None => None,
        };
        let gw = Arc::new(Self {
            shared,
            runtimes,
            listeners: tokio::sync::Mutex::new(HashMap::new()),
            drain,
            connections: TaskTracker::new(),
            builder,
            admin_addr,
        });
        let cfg = gw.shared.snapshot.load().config.clone();
        gw.sync_listeners(&cfg).await?;
        gw.add_source(Box::new(source::AdminSource { inbox: admin_inbox }));
        gw.shared.ready.store(true, Ordering::Release);
        if let Some(f) = gw.builder.after_install {
            f();
        }
        Ok(gw)
    }

    /// The actual address of a listener (useful with port 0).
    pub async fn listener_addr(&self, name: &str) -> Option<SocketAddr> {
        self.listeners.lock().await.get(name).map(|l| l.local)
    }

    /// Whether `/ready` answers 200: started, and every warming source's first config in.
    pub fn is_ready(&self) -> bool {
        self.shared.ready.load(Ordering::Acquire)
    }

    /// Why the last config was refused, if the last attempt was (as `/config_dump` says).
    pub fn last_reload_error(&self) -> Option<String> {
        self.shared
            .last_reload_error
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin_addr
    }

    pub fn config_version(&self) -> u64 {
        self.shared.snapshot.load().version
    }

    pub fn metrics(&self) -> &Metrics {
        &self.shared.metrics
    }

    /// The running policy engine, when the config has a `policy:` section: bundles can be
    /// put and removed through it (as the admin API and, later, the control plane do).
    #[cfg(feature = "policy")]
    pub fn policy_engine(&self) -> Option<Arc<rampart_policy::PolicyEngine>> {
        self.shared.policy.engine()
    }

    /// The filters this gateway's configs can name.
    pub fn filters(&self) -> &FilterRegistry {
        &self.builder.filters
    }

    /// Applies a config from any source (the file, the admin API, later xDS): checks its
    /// filters, compiles it, binds any new listeners, then swaps atomically; returns the new
    /// version. `config` may be the error that reading it gave. On failure the running
    /// config stays, and the failure is recorded in one place for every source:
    /// `rampart_config_reloads_total{result="failure"}`, `rampart_config_last_reload_success
    /// 0` and `/config_dump`'s `last_reload_error`.
    pub async fn apply(
        &self,
        origin: &str,
        config: Result<Config, ConfigError>,
    ) -> Result<u64, GatewayError> {
        let result = match config {
            Ok(c) => self.install(c).await,
            Err(e) => Err(GatewayError::Config(e)),
        };
        match &result {
            Ok(version) => tracing::info!(origin, version, "config applied"),
            Err(e) => {
                self.shared.metrics.reload(false);
                *self.lock_reload_error() = Some(e.to_string());
                tracing::error!(origin, error = %e, "config rejected; still serving the previous version");
            }
        }
        result
    }

    /// [`Gateway::apply`] for a config built in code.
    pub async fn reload(&self, config: Config) -> Result<u64, GatewayError> {
        self.apply("api", Ok(config)).await
    }

    /// Runs a config source on the control runtime until the gateway shuts down.
    pub fn add_source(self: &Arc<Self>, source: Box<dyn source::ConfigSource>) {
        let applier = source::Applier {
            gateway: Arc::downgrade(self),
            origin: source.name(),
        };
        if source.warms() {
            // Set before the control runtime (which serves `/ready`) runs again.
            self.shared.ready.store(false, Ordering::Release);
        }
        tracing::debug!(source = applier.origin, "config source started");
        self.runtimes
            .control
            .spawn(source.run(applier, self.drain.clone()));
    }

    /// A warming source's first config is in: ready, unless already shutting down.
    fn warmed(&self) {
        if !self.drain.is_cancelled() {
            self.shared.ready.store(true, Ordering::Release);
        }
    }

    async fn install(&self, config: Config) -> Result<u64, GatewayError> {
        // Holding the listener lock serializes reloads.
        let mut listeners = self.listeners.lock().await;
        let old = self.shared.snapshot.load_full();
        let version = old.version + 1;
        let snap = prepare(&self.builder, config, version, Some(&old))?;
        resolve_dns(&snap, &self.runtimes).await;
        let cfg = snap.config.clone();
        // Bind new listeners before anything changes, so a bind failure rejects the reload.
        let new_binds = self.bind_new(&listeners, &cfg)?;
        self.shared.snapshot.store(Arc::new(snap));
        self.apply_listener_changes(&mut listeners, &cfg, new_binds);
        self.shared.metrics.config_version.set(version as i64);
        self.shared.metrics.reload(true);
        *self.lock_reload_error() = None;
        drop(old);
        if let Some(f) = self.builder.after_install {
            f();
        }
        Ok(version)
    }

    fn lock_reload_error(&self) -> std::sync::MutexGuard<'_, Option<String>> {
        self.shared
            .last_reload_error
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Stops accepting, lets in-flight requests finish up to `deadline`, then returns.
    /// Returns true if every connection closed in time.
    pub async fn shutdown(&self, deadline: Duration) -> bool {
        self.shared.ready.store(false, Ordering::Release);
        for (_, l) in self.listeners.lock().await.drain() {
            l.stop.cancel();
        }
        self.drain.cancel();
        // Cancelled with `drain`: filters' background work (key refreshes) ends at once.
        self.builder.env.tasks.close();
        self.builder.env.tasks.wait().await;
        self.connections.close();
        let drained = tokio::time::timeout(deadline, self.connections.wait())
            .await
            .is_ok();
        if !drained {
            tracing::warn!(
                remaining = self.connections.len(),
                "drain deadline passed; closing remaining connections"
            );
        }
        drained
    }

    fn bind_new(
        &self,
        current: &HashMap<String, ListenerHandle>,
        cfg: &Config,
    ) -> Result<Vec<(String, Vec<std::net::TcpListener>)>, GatewayError> {
        cfg.listeners
            .iter()
            .filter(|l| current.get(&l.name).is_none_or(|h| h.address != l.address))
            .filter(|l| {
                // Moving a listener to an address another listener frees in this same
                // reload is not supported; it is bound after that one stops.
                !current.values().any(|h| h.address == l.address)
            })
            .map(|l| {
                bind(l.address, self.runtimes.workers())
                    .map(|s| (l.name.clone(), s))
                    .map_err(|source| GatewayError::Bind {
                        listener: l.name.clone(),
                        address: l.address,
                        source,
                    })
            })
            .collect()
    }

    fn apply_listener_changes(
        &self,
        current: &mut HashMap<String, ListenerHandle>,
        cfg: &Config,
        new_binds: Vec<(String, Vec<std::net::TcpListener>)>,
    ) {
        current.retain(|name, h| {
            let keep = cfg
                .listeners
                .iter()
                .any(|l| &l.name == name && l.address == h.address);
            if !keep {
                tracing::info!(listener = %name, "listener removed; draining its connections");
                h.stop.cancel();
            }
            keep
        });
        for (name, sockets) in new_binds {
            match self.spawn_listener(&name, sockets) {
                Ok(h) => {
                    current.insert(name, h);
                }
                Err(e) => tracing::error!(listener = %name, error = %e, "cannot start listener"),
            }
        }
    }

    async fn sync_listeners(&self, cfg: &Config) -> Result<(), GatewayError> {
        let mut listeners = self.listeners.lock().await;
        let binds = self.bind_new(&listeners, cfg)?;
        self.apply_listener_changes(&mut listeners, cfg, binds);
        Ok(())
    }

    fn spawn_listener(
        &self,
        name: &str,
        sockets: Vec<std::net::TcpListener>,
    ) -> std::io::Result<ListenerHandle> {
        let local = sockets
            .first()
            .ok_or_else(|| std::io::Error::other("no socket bound"))?
            .local_addr()?;
        let snap = self.shared.snapshot.load();
        let address = snap
            .config
            .listeners
            .iter()
            .find(|l| l.name == name)
            .map_or(local, |l| l.address);
        let max = snap.listeners.get(name).map_or(
            rampart_config::model::Limits::default().max_connections,
            |l| l.limits.max_connections,
        );
        let stop = self.drain.child_token();
        // One connection budget for the listener, shared by its workers.
        let slots = Arc::new(tokio::sync::Semaphore::new(max));
        for (worker, (socket, rt)) in sockets.into_iter().zip(&self.runtimes.data).enumerate() {
            let listener = {
                let _guard = rt.enter();
                tokio::net::TcpListener::from_std(socket)?
            };
            rt.spawn(server::accept_loop(server::AcceptCtx {
                worker,
                listener,
                name: name.into(),
                shared: self.shared.clone(),
                slots: slots.clone(),
                stop: stop.clone(),
                drain: self.drain.clone(),
                tracker: self.connections.clone(),
            }));
        }
        tracing::info!(listener = %name, %local, workers = self.runtimes.workers(), "listening");
        Ok(ListenerHandle {
            address,
            local,
            stop,
        })
    }
}

/// Checks `config`'s filter entries, loads its certificates and policy, and compiles it.
fn prepare(
    builder: &Builder,
    config: Config,
    version: u64,
    prev: Option<&Snapshot>,
) -> Result<Snapshot, GatewayError> {
    let invalid = builder.filters.check_config(&config);
    if !invalid.is_empty() {
        return Err(GatewayError::Config(ConfigError::Invalid(invalid)));
    }
    let tls = load_tls(&config)?;
    configure_policy(&builder.env, &config)?;
    // Filters that load signed code (wasm) check it against the config's trusted keys.
    builder.env.provide(config.wasm.clone());
    builder
        .build(config, version, prev, tls)
        .map_err(filter_error)
}

fn load_tls(config: &Config) -> Result<snapshot::TlsMaterial, GatewayError> {
    snapshot::TlsMaterial::load(config)
        .map_err(|(field, source)| GatewayError::Tls { field, source })
}

/// Starts or updates the policy engine for `config.policy` (a no-op without the feature).
fn configure_policy(env: &BuildEnv, config: &Config) -> Result<(), GatewayError> {
    #[cfg(feature = "policy")]
    if let Some(policy) = env.get::<Arc<policy::PolicyRuntime>>() {
        policy
            .configure(config.policy.as_ref())
            .map_err(|message| GatewayError::Filter {
                field: "policy.bundles_dir".into(),
                message,
            })?;
    }
    #[cfg(not(feature = "policy"))]
    let _ = (env, config);
    Ok(())
}

fn filter_error(e: FilterBuildError) -> GatewayError {
    GatewayError::Filter {
        field: e.field,
        message: e.message,
    }
}

/// Binds `n` sockets to `addr` with `SO_REUSEPORT`, one per worker; the kernel spreads new
/// connections across them. With port 0 the first picks the port and the rest join it.
fn bind(addr: SocketAddr, n: usize) -> std::io::Result<Vec<std::net::TcpListener>> {
    use socket2::{Domain, Protocol, Socket, Type};
    let mut out: Vec<std::net::TcpListener> = Vec::with_capacity(n);
    for _ in 0..n {
        let target = match out.first() {
            Some(first) => first.local_addr()?,
            None => addr,
        };
        let s = Socket::new(
            Domain::for_address(target),
            Type::STREAM,
            Some(Protocol::TCP),
        )?;
        s.set_reuse_address(true)?;
        s.set_reuse_port(true)?;
        s.set_nonblocking(true)?;
        s.bind(&target.into())?;
        s.listen(4096)?;
        out.push(s.into());
    }
    Ok(out)
}

/// Resolves the DNS endpoints of new clusters and starts their refresh and health-check loops.
async fn resolve_dns(snap: &Snapshot, runtimes: &Runtimes) {
    for c in snap.clusters.values() {
        if let Some(hc) = &c.config.health_check
            && !c.health_checks_started.swap(true, Ordering::AcqRel)
        {
            runtimes.control.spawn(upstream::health::check_loop(
                Arc::downgrade(c),
                (**hc).clone(),
            ));
        }
        if c.has_dns() && !c.dns_refresh_started.swap(true, Ordering::AcqRel) {
            // Bounded so an unreachable resolver cannot stall a reload.
            let _ = tokio::time::timeout(Duration::from_secs(5), c.refresh_dns()).await;
            runtimes.control.spawn(upstream::dns_refresh_loop(
                Arc::downgrade(c),
                c.config.dns_refresh,
            ));
        }
    }
}

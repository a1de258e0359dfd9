//! `rampart operator run`: Gateways and HTTPRoutes reconciled into the store, each
//! generation rolled out through [`crate::rollout`] and reverted when the proxies refuse it or
//! its routes start failing.
//!
//! One reconcile of one object, under a lock that serializes every write to the store:
//!
//! ```text
//!  record (ConfigMap) ──► Observation ──► rollout::step ──► actions
//!   phase, generation,     generation,        │               Apply:  applied spec := spec
//!   applied spec,          ACK/NACK of the    │               Revert: applied spec := last good
//!   last good spec         revision written,  │               then the whole translation of every
//!                          5xx share since     │               object's effective spec is written
//!                                              ▼               (one checked store transaction)
//!                                         record saved, status conditions, Events, metrics
//! ```
//!
//! An object's *effective* spec is what the store carries for it: the spec applied while it
//! is Provisioning or Running, its last good spec once RolledBack, nothing when it Failed with
//! nothing to go back to (or before its first reconcile). Because every object's record says
//! that, any reconcile writes the same whole state for the same records (level-triggered).
//!
//! The controller never talks to the store or the proxies itself: [`Platform`] is the seam
//! the binary fills (the store's checked apply path, the control plane's status, the proxies'
//! metrics).

mod cluster;
mod functions;
mod health;
mod lease;
mod metrics;
mod policies;
mod reconcile;
mod record;
mod source;
mod status;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use kube::runtime::controller::Controller;
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::watcher;
use kube::{Api, Client};
use serde_json::Value;

pub use lease::{Lease, LeaseSettings};
pub use metrics::Metrics;

use crate::crds::{RampartCluster, RampartFunction, RampartPolicy, RampartWasmPlugin};
use crate::gateway::{Gateway, HTTPRoute};
use crate::rollout::{self, ConfigStatus};
use crate::translate::Backends;

/// The name the operator writes with (server-side apply's field manager) and reports as.
pub const FIELD_MANAGER: &str = "rampart-operator";
/// The finalizer that holds a deleted object until its routes are out of the store.
pub const FINALIZER: &str = "rampart.dev/store-cleanup";
/// The Gateway API controller name in GatewayClasses and route status.
pub const CONTROLLER_NAME: &str = "rampart.dev/gateway-controller";

/// What the controller needs from the Rampart side. Implementations must be safe to call
/// from several reconciles in turn; the controller never calls two at once.
pub trait Platform: Send + Sync + 'static {
    /// Makes the store's operator-owned resources exactly `documents` (desired-state documents
    /// with `kind`, as [`crate::translate::Translated::documents`] gives), leaving every other
    /// resource alone, through the same checked transaction as `rampart apply`. Returns the
    /// store revision that holds them; `Err` carries the store's reasons (nothing written).
    fn write(&self, documents: Vec<Value>) -> impl Future<Output = Result<i64, String>> + Send;

    /// What the proxies did with the config at `revision` or later: Pending until the
    /// control plane serves it and every proxy answered.
    fn config_status(
        &self,
        revision: i64,
    ) -> impl Future<Output = Result<ConfigStatus, String>> + Send;

    /// `(requests, 5xx answers)` so far on the proxies' routes whose names start with
    /// `prefix`, summed over every proxy.
    fn route_counts(&self, prefix: &str)
    -> impl Future<Output = Result<(u64, u64), String>> + Send;

    /// Deploys function `name` (a wasi:http component's `bytes`, with `settings`) to the
    /// store, as `rampart fn deploy` does, keeping the components of the specs in `keep`
    /// (earlier generations it may go back to). Returns the spec as stored.
    fn deploy_function(
        &self,
        name: &str,
        bytes: Vec<u8>,
        settings: &crate::crds::RampartFunctionSpec,
        keep: &[Value],
    ) -> impl Future<Output = Result<Value, String>> + Send;

    /// Puts back a spec `deploy_function` returned (its component is still stored).
    fn restore_function(&self, spec: &Value) -> impl Future<Output = Result<(), String>> + Send;

    /// Stores a wasm module (as a content-addressed blob) for `owner`, which keeps it and
    /// the modules whose SHA-256 is in `keep` (earlier generations it may go back to) from
    /// garbage collection. Returns its SHA-256 (hex).
    fn put_module(
        &self,
        owner: &str,
        bytes: Vec<u8>,
        keep: &[String],
    ) -> impl Future<Output = Result<String, String>> + Send;

    /// Lets go of every module `owner` kept.
    fn forget_modules(&self, owner: &str) -> impl Future<Output = Result<(), String>> + Send;

    /// Removes function `name` and the components nothing else keeps.
    fn delete_function(&self, name: &str) -> impl Future<Output = Result<(), String>> + Send;

    /// `(invocations, failures)` of function `name` so far, summed over every proxy.
    fn function_counts(
        &self,
        name: &str,
    ) -> impl Future<Output = Result<(u64, u64), String>> + Send;

    /// Checks a RampartPolicy's bundle (`spec`: its spec as JSON; compiled and its tests
    /// run) and writes it as `tenant`'s for every proxy following the store. Returns the
    /// revision the proxies will report for it; `Err` says why it was refused (nothing
    /// written).
    fn put_policy(
        &self,
        tenant: &str,
        spec: &Value,
    ) -> impl Future<Output = Result<String, String>> + Send;

    /// Removes `tenant`'s bundle from the store.
    fn delete_policy(&self, tenant: &str) -> impl Future<Output = Result<(), String>> + Send;

    /// What the proxies say of `tenant`'s bundle `revision`: Acked when every proxy decides
    /// with it, Nacked when one refused it, else Pending; with `(decisions, errors)` of that
    /// revision so far, summed over the proxies that have it.
    fn policy_status(
        &self,
        tenant: &str,
        revision: &str,
    ) -> impl Future<Output = Result<(ConfigStatus, (u64, u64)), String>> + Send;
}

/// How the controller runs.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The GatewayClass whose Gateways this operator programs.
    pub gateway_class: String,
    pub backends: Backends,
    pub rollout: rollout::Policy,
    /// Fewer requests than this since a generation was applied say nothing of its error rate.
    pub min_requests: u64,
    /// How often a generation in its bake time is looked at again.
    pub poll: Duration,
    /// The identity reported in Events (the pod's name).
    pub instance: String,
    /// Where rollout records are kept (the operator's own namespace).
    pub records_namespace: String,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            gateway_class: "rampart".into(),
            backends: Backends::default(),
            rollout: rollout::Policy::default(),
            min_requests: 20,
            poll: Duration::from_secs(1),
            instance: "rampart-operator".into(),
            records_namespace: "rampart-system".into(),
        }
    }
}

/// Errors of one reconcile; the controller retries with backoff.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("the store: {0}")]
    Store(String),
    #[error("observing the rollout: {0}")]
    Observe(String),
    #[error("{0}")]
    Finalizer(String),
    #[error("the object has no {0}")]
    Incomplete(&'static str),
    #[error("issuing peer certificates: {0}")]
    Pki(String),
}

/// Shared by every reconcile.
pub(crate) struct Context<P> {
    pub(crate) client: Client,
    pub(crate) platform: P,
    pub(crate) settings: Settings,
    pub(crate) gateways: kube::runtime::reflector::Store<Gateway>,
    pub(crate) routes: kube::runtime::reflector::Store<HTTPRoute>,
    pub(crate) plugins: kube::runtime::reflector::Store<RampartWasmPlugin>,
    pub(crate) policies: kube::runtime::reflector::Store<RampartPolicy>,
    pub(crate) records: tokio::sync::Mutex<record::Records>,
    pub(crate) recorder: Recorder,
    pub(crate) metrics: Metrics,
}

/// Runs the controllers until `stop` resolves: Gateways of `settings.gateway_class`, every
/// HTTPRoute, RampartWasmPlugin, RampartPolicy, RampartFunction and RampartCluster, in all
/// namespaces. Call it while holding the [`Lease`].
pub async fn run<P: Platform>(
    client: Client,
    platform: P,
    settings: Settings,
    metrics: Metrics,
    stop: impl Future<Output = ()> + Send + 'static,
) {
    let gw_api: Api<Gateway> = Api::all(client.clone());
    let route_api: Api<HTTPRoute> = Api::all(client.clone());
    let cluster_api: Api<RampartCluster> = Api::all(client.clone());
    // A store node turning ready wakes its cluster's reconcile.
    let cluster_ctl = Controller::new(cluster_api, watcher::Config::default().any_semantic()).owns(
        Api::<k8s_openapi::api::apps::v1::StatefulSet>::all(client.clone()),
        watcher::Config::default(),
    );
    let plugin_api: Api<RampartWasmPlugin> = Api::all(client.clone());
    let plugin_ctl = Controller::new(plugin_api, watcher::Config::default().any_semantic());
    let policy_api: Api<RampartPolicy> = Api::all(client.clone());
    let policy_ctl = Controller::new(policy_api, watcher::Config::default().any_semantic());
    let fn_api: Api<RampartFunction> = Api::all(client.clone());
    let fn_ctl = Controller::new(fn_api, watcher::Config::default().any_semantic());
    let gw_ctl = Controller::new(gw_api, watcher::Config::default().any_semantic());
    let route_ctl = Controller::new(route_api, watcher::Config::default().any_semantic());
    // A Gateway changing (created, its class, deleted) changes which routes are ours.
    let routes = route_ctl.store();
    let route_ctl = route_ctl.watches(
        Api::<Gateway>::all(client.clone()),
        watcher::Config::default(),
        move |gw| reconcile::routes_of(&routes, &gw),
    );
    // A policy coming or going resolves (or breaks) the rules naming it: their status.
    let routes = route_ctl.store();
    let route_ctl = route_ctl.watches(
        Api::<RampartPolicy>::all(client.clone()),
        watcher::Config::default(),
        move |p| reconcile::routes_naming(&routes, &p),
    );
    let reporter = Reporter {
        controller: FIELD_MANAGER.into(),
        instance: Some(settings.instance.clone()),
    };
    let records = tokio::sync::Mutex::new(record::Records::new(&settings.records_namespace));
    let ctx = Arc::new(Context {
        recorder: Recorder::new(client.clone(), reporter),
        gateways: gw_ctl.store(),
        routes: route_ctl.store(),
        plugins: plugin_ctl.store(),
        policies: policy_ctl.store(),
        client,
        platform,
        settings,
        records,
        metrics,
    });
    let stop = Stop::new(stop);
    let gws = gw_ctl
        .graceful_shutdown_on(stop.wait())
        .run(reconcile::gateway, reconcile::retry, ctx.clone())
        .for_each(|r| async move { reconcile::log_outcome("Gateway", r) });
    let routes = route_ctl
        .graceful_shutdown_on(stop.wait())
        .run(reconcile::route, reconcile::retry, ctx.clone())
        .for_each(|r| async move { reconcile::log_outcome("HTTPRoute", r) });
    let functions = fn_ctl
        .graceful_shutdown_on(stop.wait())
        .run(functions::function, reconcile::retry, ctx.clone())
        .for_each(|r| async move { reconcile::log_outcome("RampartFunction", r) });
    let plugins = plugin_ctl
        .graceful_shutdown_on(stop.wait())
        .run(reconcile::plugin, reconcile::retry, ctx.clone())
        .for_each(|r| async move { reconcile::log_outcome("RampartWasmPlugin", r) });
    let policies = policy_ctl
        .graceful_shutdown_on(stop.wait())
        .run(policies::policy, reconcile::retry, ctx.clone())
        .for_each(|r| async move { reconcile::log_outcome("RampartPolicy", r) });
    let clusters = cluster_ctl
        .graceful_shutdown_on(stop.wait())
        .run(cluster::cluster, reconcile::retry, ctx)
        .for_each(|r| async move { reconcile::log_outcome("RampartCluster", r) });
    tokio::join!(gws, routes, functions, plugins, policies, clusters);
}

/// A stop signal both controllers can wait on.
#[derive(Clone)]
struct Stop(tokio::sync::watch::Receiver<bool>);

impl Stop {
    fn new(stop: impl Future<Output = ()> + Send + 'static) -> Self {
        let (tx, rx) = tokio::sync::watch::channel(false);
        tokio::spawn(async move {
            stop.await;
            let _ = tx.send(true);
        });
        Self(rx)
    }

    fn wait(&self) -> impl Future<Output = ()> + Send + 'static {
        let mut rx = self.0.clone();
        async move {
            let _ = rx.wait_for(|stopped| *stopped).await;
        }
    }
}

//! One reconcile of one Gateway or HTTPRoute: observe, [`rollout::step`], carry the actions
//! out. See the module above for the picture.

use std::fmt::Debug;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use kube::api::Api;
use kube::runtime::controller::Action;
use kube::runtime::finalizer::{self, Event as Finalized};
use kube::runtime::reflector::ObjectRef;
use kube::{Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use super::record::{Key, Record, Records};
use super::{Context, Error, FINALIZER, Platform, Settings, status};
use crate::crds::{RampartFunction, RampartPolicy, RampartWasmPlugin};
use crate::gateway::{Gateway, HTTPRoute};
use crate::rollout::{self, Action as Step, ConfigStatus, Observation, Phase};
use crate::translate::{Backends, Extensions, RouteFilter, Translated, translate_with};

/// What the controller reconciles: a namespaced Gateway API object with a spec that rolls out.
pub(crate) trait Unit:
    Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
    + Clone
    + Debug
    + Serialize
    + DeserializeOwned
    + Send
    + Sync
    + 'static
{
    const KIND: &'static str;
    fn spec_value(&self) -> Value;
    /// This object with `spec` (an effective spec from its record) instead of its own.
    fn with_spec(&self, spec: &Value) -> Option<Self>;
    /// The prefix of the proxies' route names made from this object, if any.
    fn route_prefix(&self) -> Option<String>;
    /// Whether this operator programs it (`gateways`: every Gateway known).
    fn ours(&self, settings: &Settings, gateways: &[Arc<Gateway>]) -> bool;
    /// The Services (`namespace`, `name`) it sends traffic to, whose readiness is its health.
    fn services(&self) -> Vec<(String, String)> {
        Vec::new()
    }
    /// What translating it beside `gateways` (with `extensions`) reports against it.
    fn problems(
        &self,
        _gateways: &[Gateway],
        _extensions: &Extensions,
        _backends: &Backends,
    ) -> Vec<String> {
        Vec::new()
    }
    /// What is applied for a generation (its record's applied spec): the spec, after any
    /// work the generation needs first (a plugin's module stored). `rec` is its record.
    fn prepare<'a, P: Platform>(
        &'a self,
        _ctx: &'a Context<P>,
        _rec: &'a Record,
    ) -> impl std::future::Future<Output = Result<Value, String>> + Send + 'a {
        std::future::ready(Ok(self.spec_value()))
    }
    /// What a deleted object lets go of besides its place in the translation.
    fn release<'a, P: Platform>(
        &'a self,
        _ctx: &'a Context<P>,
    ) -> impl std::future::Future<Output = Result<(), String>> + Send + 'a {
        std::future::ready(Ok(()))
    }
}

/// `spec_value` and `with_spec`, the same for every kind with a serde `spec`.
macro_rules! spec_accessors {
    () => {
        fn spec_value(&self) -> Value {
            serde_json::to_value(&self.spec).unwrap_or_default()
        }
        fn with_spec(&self, spec: &Value) -> Option<Self> {
            Some(Self {
                spec: serde_json::from_value(spec.clone()).ok()?,
                ..self.clone()
            })
        }
    };
}

impl Unit for RampartWasmPlugin {
    const KIND: &'static str = "RampartWasmPlugin";
    spec_accessors!();
    fn route_prefix(&self) -> Option<String> {
        None
    }
    fn ours(&self, _: &Settings, _: &[Arc<Gateway>]) -> bool {
        true
    }
    /// The module stored (content-addressed) and named in the applied spec as
    /// `module: store:sha256:HEX`; the last good generation's module stays kept.
    async fn prepare<P: Platform>(&self, ctx: &Context<P>, rec: &Record) -> Result<Value, String> {
        let ns = self.namespace().unwrap_or_default();
        let bytes = super::source::wasm(ctx, &ns, &self.spec.source).await?;
        let keep: Vec<String> = rec
            .good
            .as_ref()
            .and_then(|g| {
                g["module"]
                    .as_str()?
                    .strip_prefix(STORED)
                    .map(str::to_owned)
            })
            .into_iter()
            .collect();
        let hex = ctx
            .platform
            .put_module(&plugin_owner(self), bytes, &keep)
            .await?;
        let mut v = self.spec_value();
        v["module"] = json!(format!("{STORED}{hex}"));
        Ok(v)
    }
    async fn release<P: Platform>(&self, ctx: &Context<P>) -> Result<(), String> {
        ctx.platform.forget_modules(&plugin_owner(self)).await
    }
}

/// A `module:` kept in the store, by SHA-256 (what the gateway's `wasm` filter reads).
const STORED: &str = "store:sha256:";

/// Whose modules the store keeps for a plugin.
fn plugin_owner(p: &RampartWasmPlugin) -> String {
    format!(
        "wasm/{}/{}",
        p.namespace().unwrap_or_default(),
        p.name_any()
    )
}

/// A plugin's effective spec as the filter it puts on its target routes.
fn route_filter(namespace: &str, v: &Value) -> Option<RouteFilter> {
    let routes = v["targetRoutes"]
        .as_array()?
        .iter()
        .filter_map(|r| r.as_str().map(str::to_owned))
        .collect();
    let mut wasm = json!({
        "module": v["module"].as_str()?,
        "fail_open": v["failOpen"].as_bool().unwrap_or(false),
        "allow_unsigned": v["allowUnsigned"].as_bool().unwrap_or(false),
    });
    if let Some(c) = v["config"].as_str() {
        wasm["config"] = json!(c);
    }
    if let Some(s) = v["source"]["signature"].as_str() {
        wasm["signature"] = json!(s);
    }
    Some(RouteFilter {
        namespace: namespace.to_owned(),
        routes,
        filter: json!({ "wasm": wasm }),
    })
}

/// Functions roll out in `super::functions`; as a Unit they have a record key.
impl Unit for RampartFunction {
    const KIND: &'static str = "RampartFunction";
    spec_accessors!();
    fn route_prefix(&self) -> Option<String> {
        None
    }
    fn ours(&self, _: &Settings, _: &[Arc<Gateway>]) -> bool {
        true
    }
}

/// Policies roll out in `super::policies`; as a Unit they only give their effective specs
/// (the tenant routes name) to the translation.
impl Unit for RampartPolicy {
    const KIND: &'static str = "RampartPolicy";
    spec_accessors!();
    fn route_prefix(&self) -> Option<String> {
        None
    }
    fn ours(&self, _: &Settings, _: &[Arc<Gateway>]) -> bool {
        true
    }
}

impl Unit for Gateway {
    const KIND: &'static str = "Gateway";
    spec_accessors!();
    fn route_prefix(&self) -> Option<String> {
        None
    }
    fn ours(&self, settings: &Settings, _: &[Arc<Gateway>]) -> bool {
        self.spec.gateway_class_name == settings.gateway_class
    }
}

impl Unit for HTTPRoute {
    const KIND: &'static str = "HTTPRoute";
    spec_accessors!();
    fn route_prefix(&self) -> Option<String> {
        Some(crate::translate::route_prefix(
            &self.namespace().unwrap_or_default(),
            &self.name_any(),
        ))
    }
    fn services(&self) -> Vec<(String, String)> {
        let ns = self.namespace().unwrap_or_default();
        let mut out: Vec<(String, String)> = self
            .spec
            .rules
            .iter()
            .flat_map(|r| &r.backend_refs)
            .filter(|b| b.weight > 0 && matches!(b.kind.as_deref(), None | Some("Service")))
            .filter(|b| matches!(b.group.as_deref(), None | Some("")))
            .filter(|b| b.namespace.as_deref().is_none_or(|n| n == ns))
            .map(|b| (ns.clone(), b.name.clone()))
            .collect();
        out.sort();
        out.dedup();
        out
    }
    /// An HTTPRoute is ours when a parent of it is a Gateway of ours: routes of other
    /// gateway controllers get no finalizer, record or status from us.
    fn ours(&self, settings: &Settings, gateways: &[Arc<Gateway>]) -> bool {
        let ns = self.namespace().unwrap_or_default();
        self.spec.parent_refs.iter().any(|p| {
            let parent_ns = p.namespace.as_deref().unwrap_or(&ns);
            gateways.iter().any(|g| {
                g.name_any() == p.name
                    && g.namespace().as_deref() == Some(parent_ns)
                    && g.ours(settings, &[])
            })
        })
    }
    fn problems(
        &self,
        gateways: &[Gateway],
        extensions: &Extensions,
        backends: &Backends,
    ) -> Vec<String> {
        let id = format!(
            "{}/{}",
            self.namespace().unwrap_or_default(),
            self.name_any()
        );
        translate_with(gateways, std::slice::from_ref(self), extensions, backends)
            .problems
            .into_iter()
            .filter(|(r, _)| *r == id)
            .map(|(_, p)| p)
            .collect()
    }
}

pub(crate) async fn gateway<P: Platform>(
    o: Arc<Gateway>,
    ctx: Arc<Context<P>>,
) -> Result<Action, Error> {
    reconcile(o, ctx).await
}

pub(crate) async fn plugin<P: Platform>(
    o: Arc<RampartWasmPlugin>,
    ctx: Arc<Context<P>>,
) -> Result<Action, Error> {
    reconcile(o, ctx).await
}

pub(crate) async fn route<P: Platform>(
    o: Arc<HTTPRoute>,
    ctx: Arc<Context<P>>,
) -> Result<Action, Error> {
    reconcile(o, ctx).await
}

/// Retried with a growing delay by the controller; a short one here for the first tries.
pub(crate) fn retry<K, P>(_: Arc<K>, e: &Error, _: Arc<Context<P>>) -> Action {
    tracing::warn!(error = %e, "reconcile failed; retrying");
    Action::requeue(Duration::from_secs(2))
}

pub(crate) fn log_outcome<E: std::fmt::Display, K: Resource>(
    kind: &str,
    r: Result<(ObjectRef<K>, Action), E>,
) {
    match r {
        Ok((o, _)) => tracing::debug!(kind, object = %o, "reconciled"),
        Err(e) => tracing::debug!(kind, error = %e, "reconcile error"),
    }
}

async fn reconcile<K: Unit, P: Platform>(o: Arc<K>, ctx: Arc<Context<P>>) -> Result<Action, Error> {
    // Whether a route is ours depends on the Gateways: wait until they are all known.
    match tokio::time::timeout(CACHE_WAIT, ctx.gateways.wait_until_ready()).await {
        Ok(Ok(())) => {}
        _ => return Err(Error::Incomplete("Gateway cache")),
    }
    let ours = |o: &K| o.ours(&ctx.settings, &ctx.gateways.state());
    if !ours(&o) && !o.finalizers().iter().any(|f| f == FINALIZER) {
        return Ok(Action::await_change());
    }
    finalized(o, &ctx, K::KIND, |event| async {
        match event {
            Finalized::Apply(o) if ours(&o) => apply(&*o, &ctx).await,
            Finalized::Apply(o) | Finalized::Cleanup(o) => cleanup(&*o, &ctx).await,
        }
    })
    .await
}

/// One reconcile behind the operator's finalizer (added before the first apply, removed
/// after a successful cleanup), counted in the metrics as `kind`.
pub(crate) async fn finalized<K, P, F, Fut>(
    o: Arc<K>,
    ctx: &Context<P>,
    kind: &str,
    reconcile: F,
) -> Result<Action, Error>
where
    K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + Debug
        + Serialize
        + DeserializeOwned,
    P: Platform,
    F: FnOnce(Finalized<K>) -> Fut,
    Fut: std::future::Future<Output = Result<Action, Error>>,
{
    let started = Instant::now();
    let ns = o.namespace().ok_or(Error::Incomplete("namespace"))?;
    let api: Api<K> = Api::namespaced(ctx.client.clone(), &ns);
    // A reconcile that hangs (a call that never answers) would hold the records, and every
    // other reconcile, forever: it is cut off, said, and tried again.
    let out = match tokio::time::timeout(
        RECONCILE_LIMIT,
        finalizer::finalizer(&api, FINALIZER, o, reconcile),
    )
    .await
    {
        Ok(r) => r.map_err(|e| match e {
            finalizer::Error::ApplyFailed(e) | finalizer::Error::CleanupFailed(e) => e,
            other => Error::Finalizer(other.to_string()),
        }),
        Err(_) => Err(Error::Observe(format!(
            "a {kind} reconcile took longer than {RECONCILE_LIMIT:?}"
        ))),
    };
    ctx.metrics.reconciled(kind, started.elapsed(), out.is_ok());
    out
}

/// Whether a step failed a generation with no known good one to go back to (the object
/// must then serve nothing).
pub(crate) fn nothing_to_go_back_to(actions: &[Step]) -> bool {
    actions.iter().any(|a| {
        matches!(
            a,
            Step::Event {
                reason: "NoKnownGood",
                ..
            }
        )
    })
}

/// The longest one reconcile may take (normally well under a second).
const RECONCILE_LIMIT: Duration = Duration::from_secs(20);

/// The longest a reconcile waits for the caches it reads to be listed.
const CACHE_WAIT: Duration = Duration::from_secs(10);

/// The share of failures in `now` since `baseline`, once there are enough to say.
pub(crate) fn error_rate(now: (u64, u64), baseline: (u64, u64), s: &Settings) -> Option<f64> {
    let total = now.0.saturating_sub(baseline.0);
    let failed = now.1.saturating_sub(baseline.1);
    #[allow(clippy::cast_precision_loss)] // counts far below 2^52
    (total >= s.min_requests).then(|| failed as f64 / total as f64)
}

pub(crate) fn key_of<K: Unit>(o: &K) -> Key {
    Key {
        kind: K::KIND,
        namespace: o.namespace().unwrap_or_default(),
        name: o.name_any(),
    }
}

pub(crate) fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Apply or re-check one object's rollout.
async fn apply<K: Unit, P: Platform>(o: &K, ctx: &Context<P>) -> Result<Action, Error> {
    let (mut records, key, mut rec) = open_record(o, ctx).await?;
    let now = unix_now();
    let (mut obs, counts) = observe(o, &rec, ctx, now).await?;
    if let Some(c) = counts
        && obs.config == ConfigStatus::Acked
        && !rec.baseline_acked
    {
        // The proxies serve it from now on: count errors, and bake, from here.
        rec.baseline = c;
        rec.baseline_acked = true;
        rec.applied_at = now;
        obs.error_rate = None;
    }
    if let Some(wait) = wait_turn(&mut records, &key, &rec, &obs, ctx) {
        return Ok(wait);
    }
    let (next, mut actions) = rollout::step(&rec.rollout(), &obs, &ctx.settings.rollout);
    let (applied, unprepared) = prepared(o, ctx, &rec, &actions).await;
    let write = take_step(o, &mut rec, (&next, &actions), now, applied);
    if write == Write::Apply {
        records.unanswered = Some((key.clone(), now));
    }
    let refused = match unprepared {
        Some(why) => Some(why),
        None => write_if_needed(o, ctx, &mut records, &mut rec, write)
            .await?
            .map(|e| format!("the store refused it: {e}")),
    };
    if let Some(err) = refused {
        // Refused before any proxy saw it: as good as a NACK.
        let obs = Observation {
            config: ConfigStatus::Nacked(err),
            ..obs
        };
        let (next, more) = rollout::step(&rec.rollout(), &obs, &ctx.settings.rollout);
        let write = take_step(o, &mut rec, (&next, &more), now, None);
        write_if_needed(o, ctx, &mut records, &mut rec, write)
            .await?
            .map_or(Ok(()), |e| Err(Error::Store(e)))?;
        actions.extend(more);
    }
    records.save(&ctx.client, &key, rec.clone()).await?;
    let problems = problems_of(o, ctx, &mut records).await?;
    drop(records);
    status::write(o, ctx, &rec, &problems).await?;
    status::events(o, ctx, &actions).await;
    ctx.metrics.phase(&key, rec.rollout().phase);
    Ok(if rec.rollout().phase == Phase::Provisioning {
        Action::requeue(ctx.settings.poll)
    } else {
        Action::requeue(Duration::from_secs(300))
    })
}

/// How long, at least, another object's unanswered generation holds a new one back.
const MIN_UNANSWERED_WAIT_S: u64 = 10;

/// One generation in flight at a time: a new generation waits (requeued) while another
/// object's applied generation has no answer from the proxies yet, so that a NACK — which
/// names a resource type, not an object — is pinned on the one change that could have
/// caused it. The wait is bounded by the bake time, and at least 10 s (a proxy that never
/// answers does not stop every rollout; one answering slowly under load is waited for).
fn wait_turn<P: Platform>(
    records: &mut Records,
    key: &Key,
    rec: &Record,
    obs: &Observation,
    ctx: &Context<P>,
) -> Option<Action> {
    if let Some((k, since)) = &records.unanswered {
        let answered = k == key && obs.config != ConfigStatus::Pending;
        // A NACK can take seconds under load; blaming the wrong object is worse than waiting.
        let bound = ctx
            .settings
            .rollout
            .bake
            .as_secs()
            .max(MIN_UNANSWERED_WAIT_S);
        let stale = obs.now.saturating_sub(*since) > bound;
        if answered || stale || (k == key && rec.rollout().phase != Phase::Provisioning) {
            records.unanswered = None;
        }
    }
    let applies = obs.generation > rec.generation;
    match &records.unanswered {
        Some((k, _)) if k != key && applies => Some(Action::requeue(ctx.settings.poll)),
        _ => None,
    }
}

/// The records held (every write to the store happens under them), `o`'s key and record.
pub(crate) async fn open_record<'a, K: Unit, P: Platform>(
    o: &K,
    ctx: &'a Context<P>,
) -> Result<(tokio::sync::MutexGuard<'a, Records>, Key, Record), Error> {
    let mut records = ctx.records.lock().await;
    let key = key_of(o);
    let uid = o.uid().ok_or(Error::Incomplete("uid"))?;
    let rec = records.get_or_new(&ctx.client, &key, &uid).await?;
    Ok((records, key, rec))
}

/// What is known of `o` before asking anyone: its generation (nothing said of it yet), and
/// whether that generation is the one applied and baking.
pub(crate) fn first_look<K: Resource>(o: &K, rec: &Record, now: u64) -> (Observation, bool) {
    let generation = o.meta().generation.unwrap_or(1);
    let baking = rec.rollout().phase == Phase::Provisioning && rec.generation == generation;
    let obs = Observation {
        generation,
        config: ConfigStatus::Pending,
        health: None,
        error_rate: None,
        now,
    };
    (obs, baking)
}

/// The end of a reconcile of a Rampart kind with a status of its own: the record saved
/// (then the records let go), the rollout and its `Programmed` condition in the object's
/// status, the step's Events, the phase metric; looked at again soon while it bakes.
pub(crate) async fn settle<K, P>(
    o: &K,
    ctx: &Context<P>,
    (mut records, key): (tokio::sync::MutexGuard<'_, Records>, &Key),
    rec: &Record,
    actions: &[Step],
) -> Result<Action, Error>
where
    K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + DeserializeOwned
        + Debug,
    P: Platform,
{
    records.save(&ctx.client, key, rec.clone()).await?;
    drop(records);
    let mut st = crate::crds::RolloutStatus::default().with_rollout(&rec.rollout());
    st.conditions = status::conditions(false, rec, &[])
        .into_iter()
        .filter_map(|c| serde_json::from_value(c).ok())
        .collect();
    status::apply_status(o, ctx, serde_json::to_value(st).unwrap_or_default()).await?;
    status::events(o, ctx, actions).await;
    ctx.metrics.phase(key, rec.rollout().phase);
    Ok(if rec.rollout().phase == Phase::Provisioning {
        Action::requeue(ctx.settings.poll)
    } else {
        Action::requeue(Duration::from_secs(300))
    })
}

/// The object's generation, what the proxies said of the revision written for it and its
/// routes' error rate since then (only while it bakes), with the routes' counts now.
async fn observe<K: Unit, P: Platform>(
    o: &K,
    rec: &Record,
    ctx: &Context<P>,
    now: u64,
) -> Result<(Observation, Option<(u64, u64)>), Error> {
    let (mut obs, baking) = first_look(o, rec, now);
    if !baking {
        return Ok((obs, None));
    }
    obs.config = ctx
        .platform
        .config_status(rec.revision)
        .await
        .map_err(Error::Observe)?;
    obs.health = super::health::unready(&ctx.client, &o.services()).await?;
    if let Some(prefix) = o.route_prefix() {
        let counts = ctx
            .platform
            .route_counts(&prefix)
            .await
            .map_err(Error::Observe)?;
        obs.error_rate = error_rate(counts, rec.baseline, &ctx.settings);
        return Ok((obs, Some(counts)));
    }
    Ok((obs, None))
}

/// What a step asks of the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Write {
    Nothing,
    /// A generation is applied: write, and take the routes' counts as its baseline.
    Apply,
    /// The object's effective spec changed (reverted, or failed with nothing to go back
    /// to: it must leave the store).
    Effective,
}

/// What a step that applies a generation applies ([`Unit::prepare`]), or why it cannot.
async fn prepared<K: Unit, P: Platform>(
    o: &K,
    ctx: &Context<P>,
    rec: &Record,
    actions: &[Step],
) -> (Option<Value>, Option<String>) {
    if !actions.iter().any(|a| matches!(a, Step::Apply(_))) {
        return (None, None);
    }
    match o.prepare(ctx, rec).await {
        Ok(v) => (Some(v), None),
        Err(why) => (None, Some(format!("cannot apply it: {why}"))),
    }
}

/// The record after a step: its phase, the spec applied (`applied`, else the object's
/// spec), the last good spec; and what the store must be told.
fn take_step<K: Unit>(
    o: &K,
    rec: &mut Record,
    (next, actions): (&rollout::Rollout, &[Step]),
    now: u64,
    applied: Option<Value>,
) -> Write {
    let before = rec.effective().cloned();
    let was_running = rec.rollout().phase == Phase::Running;
    rec.set_rollout(next, now);
    let applies = actions.iter().any(|a| matches!(a, Step::Apply(_)));
    if applies {
        rec.applied = Some(applied.unwrap_or_else(|| o.spec_value()));
    }
    if next.phase == Phase::Running && !was_running {
        rec.good.clone_from(&rec.applied);
    }
    let reverts = actions.iter().any(|a| matches!(a, Step::Revert(_)));
    if applies {
        Write::Apply
    } else if reverts || rec.effective() != before.as_ref() {
        Write::Effective
    } else {
        Write::Nothing
    }
}

/// Writes the whole translation when the step asks for it; `Some(reason)` when the store
/// refused it.
async fn write_if_needed<K: Unit, P: Platform>(
    o: &K,
    ctx: &Context<P>,
    records: &mut Records,
    rec: &mut Record,
    write: Write,
) -> Result<Option<String>, Error> {
    let key = &key_of(o);
    if write == Write::Nothing {
        return Ok(None);
    }
    let applies = write == Write::Apply;
    let translated = desired(ctx, records, Some((key, &*rec)), None).await?;
    match ctx.platform.write(translated.documents()).await {
        Ok(revision) => {
            rec.revision = revision;
            if applies && let Some(prefix) = o.route_prefix() {
                rec.baseline_acked = false;
                rec.baseline = ctx
                    .platform
                    .route_counts(&prefix)
                    .await
                    .map_err(Error::Observe)?;
            }
            Ok(None)
        }
        Err(why) => Ok(Some(why)),
    }
}

/// The object is being deleted: write the translation without it.
async fn cleanup<K: Unit, P: Platform>(o: &K, ctx: &Context<P>) -> Result<Action, Error> {
    let mut records = ctx.records.lock().await;
    let key = key_of(o);
    let translated = desired(ctx, &mut records, None, Some(&key)).await?;
    ctx.platform
        .write(translated.documents())
        .await
        .map_err(Error::Store)?;
    o.release(ctx).await.map_err(Error::Store)?;
    records.remove(&ctx.client, &key).await?;
    ctx.metrics.forget(&key);
    tracing::info!(kind = K::KIND, object = %key.name, "removed from the store");
    Ok(Action::await_change())
}

/// Every object's effective spec, translated. `current` overrides the record kept for its
/// key (not saved yet); `gone` is left out.
async fn desired<P: Platform>(
    ctx: &Context<P>,
    records: &mut Records,
    current: Option<(&Key, &Record)>,
    gone: Option<&Key>,
) -> Result<Translated, Error> {
    // Written whole: an object not known yet would be left out (its routes, or the plugin
    // or policy in front of them) until the next write.
    let listed = async {
        ctx.gateways.wait_until_ready().await?;
        ctx.routes.wait_until_ready().await?;
        ctx.plugins.wait_until_ready().await?;
        ctx.policies.wait_until_ready().await
    };
    match tokio::time::timeout(CACHE_WAIT, listed).await {
        Ok(Ok(())) => {}
        _ => return Err(Error::Incomplete("cache of the objects translated")),
    }
    let gateways = effective_all(ctx, records, current, gone, &ctx.gateways.state()).await?;
    let routes = effective_all(ctx, records, current, gone, &ctx.routes.state()).await?;
    let extensions = extensions(ctx, records, current, gone).await?;
    Ok(translate_with(
        &gateways,
        &routes,
        &extensions,
        &ctx.settings.backends,
    ))
}

/// What RampartWasmPlugins and RampartPolicies add to the routes, from their effective
/// specs (a policy is in force, for the rules naming it, once its bundle was written).
async fn extensions<P: Platform>(
    ctx: &Context<P>,
    records: &mut Records,
    current: Option<(&Key, &Record)>,
    gone: Option<&Key>,
) -> Result<Extensions, Error> {
    let plugins = effective_values(ctx, records, current, gone, &ctx.plugins.state()).await?;
    let filters: Vec<RouteFilter> = plugins
        .iter()
        .filter_map(|(p, v)| route_filter(&p.namespace().unwrap_or_default(), v))
        .collect();
    let policies = effective_values(ctx, records, current, gone, &ctx.policies.state())
        .await?
        .into_iter()
        .filter_map(|(p, v)| {
            let tenant = v["tenant"].as_str()?.to_owned();
            Some(((p.namespace().unwrap_or_default(), p.name_any()), tenant))
        })
        .collect();
    Ok(Extensions { filters, policies })
}

/// Writes every object's effective translation (nothing when the store holds it already):
/// after something the routes depend on besides their own spec changed (a policy came into
/// force or went).
pub(crate) async fn write_translation<P: Platform>(
    ctx: &Context<P>,
    records: &mut Records,
    current: Option<(&Key, &Record)>,
    gone: Option<&Key>,
) -> Result<(), Error> {
    let translated = desired(ctx, records, current, gone).await?;
    ctx.platform
        .write(translated.documents())
        .await
        .map(drop)
        .map_err(Error::Store)
}

async fn effective_all<K: Unit, P: Platform>(
    ctx: &Context<P>,
    records: &mut Records,
    current: Option<(&Key, &Record)>,
    gone: Option<&Key>,
    objects: &[Arc<K>],
) -> Result<Vec<K>, Error> {
    let values = effective_values(ctx, records, current, gone, objects).await?;
    Ok(values
        .into_iter()
        .filter_map(|(o, v)| o.with_spec(&v))
        .collect())
}

/// Each object's effective spec as its record keeps it.
async fn effective_values<K: Unit, P: Platform>(
    ctx: &Context<P>,
    records: &mut Records,
    current: Option<(&Key, &Record)>,
    gone: Option<&Key>,
    objects: &[Arc<K>],
) -> Result<Vec<(Arc<K>, Value)>, Error> {
    let mut out = Vec::new();
    let gateways = ctx.gateways.state();
    for o in objects {
        let key = key_of(&**o);
        if Some(&key) == gone
            || o.meta().deletion_timestamp.is_some()
            || !o.ours(&ctx.settings, &gateways)
        {
            continue;
        }
        let record = match current {
            Some((k, r)) if *k == key => Some(r.clone()),
            _ => match o.uid() {
                Some(uid) => records.get(&ctx.client, &key, &uid).await?,
                None => None,
            },
        };
        if let Some(spec) = record.as_ref().and_then(Record::effective) {
            out.push((o.clone(), spec.clone()));
        }
    }
    Ok(out)
}

/// What translating this object (with every Gateway of ours) reports against it.
async fn problems_of<K: Unit, P: Platform>(
    o: &K,
    ctx: &Context<P>,
    records: &mut Records,
) -> Result<Vec<String>, Error> {
    let extensions = extensions(ctx, records, None, None).await?;
    let gateways: Vec<Gateway> = ctx
        .gateways
        .state()
        .iter()
        .filter(|g| g.ours(&ctx.settings, &[]))
        .map(|g| (**g).clone())
        .collect();
    Ok(o.problems(&gateways, &extensions, &ctx.settings.backends))
}

/// The HTTPRoutes naming Gateway `gw` as a parent.
pub(crate) fn routes_of(
    routes: &kube::runtime::reflector::Store<HTTPRoute>,
    gw: &Gateway,
) -> Vec<ObjectRef<HTTPRoute>> {
    let (name, ns) = (gw.name_any(), gw.namespace().unwrap_or_default());
    routes
        .state()
        .iter()
        .filter(|r| {
            let own = r.namespace().unwrap_or_default();
            r.spec
                .parent_refs
                .iter()
                .any(|p| p.name == name && p.namespace.as_deref().unwrap_or(&own) == ns)
        })
        .map(|r| ObjectRef::from_obj(&**r))
        .collect()
}

/// The HTTPRoutes of `policy`'s namespace whose rules name it in an `ExtensionRef` filter.
pub(crate) fn routes_naming(
    routes: &kube::runtime::reflector::Store<HTTPRoute>,
    policy: &RampartPolicy,
) -> Vec<ObjectRef<HTTPRoute>> {
    let (name, ns) = (policy.name_any(), policy.namespace());
    routes
        .state()
        .iter()
        .filter(|r| r.namespace() == ns)
        .filter(|r| {
            r.spec.rules.iter().flat_map(|rule| &rule.filters).any(|f| {
                f.extension_ref
                    .as_ref()
                    .is_some_and(|x| x.kind == "RampartPolicy" && x.name == name)
            })
        })
        .map(|r| ObjectRef::from_obj(&**r))
        .collect()
}

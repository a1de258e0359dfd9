//! RampartPolicies: each generation's bundle (a tenant's Rego modules and data) checked by
//! the platform (compiled, its `test_*` rules run: a failing test is refused before anything
//! is written), written to the store for every proxy following it, and judged like a route's
//! generation — a proxy refusing the bundle, or its decisions failing past the threshold
//! within the bake time (counted from the moment every proxy decides with it) — and put
//! back to the last good bundle when it fails. An HTTPRoute rule puts the tenant's policy in
//! front of its backends with an `ExtensionRef` filter (`group: rampart.dev`,
//! `kind: RampartPolicy`).
//!
//! A tenant is one key in the store: the oldest RampartPolicy naming it owns it, a later one
//! is refused; and a policy's tenant cannot change (make a new RampartPolicy).

use kube::runtime::controller::Action;
use kube::runtime::finalizer::Event as Finalized;
use kube::{Resource, ResourceExt};
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::Duration;

use super::reconcile::{self, key_of, unix_now};
use super::record::Record;
use super::{Context, Error, Platform};
use crate::crds::RampartPolicy;
use crate::rollout::{self, Action as Step, ConfigStatus, Observation, Phase};

const KIND: &str = "RampartPolicy";

pub(crate) async fn policy<P: Platform>(
    o: Arc<RampartPolicy>,
    ctx: Arc<Context<P>>,
) -> Result<Action, Error> {
    reconcile::finalized(o, &ctx, KIND, |event| async {
        match event {
            Finalized::Apply(o) => apply(&o, &ctx).await,
            Finalized::Cleanup(o) => cleanup(&o, &ctx).await,
        }
    })
    .await
}

/// The tenant an effective or applied spec is for.
fn tenant_of(spec: Option<&Value>) -> Option<&str> {
    spec.and_then(|v| v["tenant"].as_str())
}

async fn apply<P: Platform>(o: &RampartPolicy, ctx: &Context<P>) -> Result<Action, Error> {
    // Who owns a tenant is decided among every RampartPolicy: all of them listed first.
    match tokio::time::timeout(Duration::from_secs(10), ctx.policies.wait_until_ready()).await {
        Ok(Ok(())) => {}
        _ => return Err(Error::Incomplete("RampartPolicy cache")),
    }
    let (mut records, key, mut rec) = reconcile::open_record(o, ctx).await?;
    let in_force = tenant_of(rec.effective()).map(str::to_owned);
    let now = unix_now();
    let obs = observe(o, &mut rec, ctx, now).await?;
    let (next, mut actions) = rollout::step(&rec.rollout(), &obs, &ctx.settings.rollout);
    if let Some(err) = carry_out(o, ctx, &mut rec, (&next, &actions), now).await? {
        // Refused before any proxy saw it: as good as a proxy refusing it.
        let obs = Observation {
            config: ConfigStatus::Nacked(err),
            ..obs
        };
        let (next, more) = rollout::step(&rec.rollout(), &obs, &ctx.settings.rollout);
        if let Some(err) = carry_out(o, ctx, &mut rec, (&next, &more), now).await? {
            return Err(Error::Store(err));
        }
        actions.extend(more);
    }
    if tenant_of(rec.effective()).map(str::to_owned) != in_force {
        // Rules naming it resolve now (or no longer).
        reconcile::write_translation(ctx, &mut records, Some((&key, &rec)), None).await?;
    }
    reconcile::settle(o, ctx, (records, &key), &rec, &actions).await
}

/// The generation, and while it bakes what the proxies say of its bundle: in place on every
/// one (the error count starts there), refused by one, or not yet everywhere.
async fn observe<P: Platform>(
    o: &RampartPolicy,
    rec: &mut Record,
    ctx: &Context<P>,
    now: u64,
) -> Result<Observation, Error> {
    let (mut obs, baking) = reconcile::first_look(o, rec, now);
    let applied = rec.applied.as_ref();
    let (Some(tenant), Some(revision), true) = (
        tenant_of(applied),
        applied.and_then(|a| a["revision"].as_str()),
        baking,
    ) else {
        return Ok(obs);
    };
    let (config, counts) = ctx
        .platform
        .policy_status(tenant, revision)
        .await
        .map_err(Error::Observe)?;
    if config == ConfigStatus::Acked && !rec.baseline_acked {
        // Every proxy decides with it from now on: count errors, and bake, from here.
        rec.baseline = counts;
        rec.baseline_acked = true;
        rec.applied_at = now;
    } else if rec.baseline_acked {
        obs.error_rate = reconcile::error_rate(counts, rec.baseline, &ctx.settings);
    }
    obs.config = config;
    Ok(obs)
}

/// Why `o` may not have its tenant: an older RampartPolicy names it, or the tenant changed.
fn refusal<P: Platform>(o: &RampartPolicy, ctx: &Context<P>, rec: &Record) -> Option<String> {
    let tenant = &o.spec.tenant;
    if let Some(was) = tenant_of(rec.applied.as_ref()).filter(|t| t != tenant) {
        return Some(format!(
            "its tenant was {was:?}: a tenant cannot change (make a new RampartPolicy)"
        ));
    }
    let age = |p: &RampartPolicy| {
        (
            p.meta().creation_timestamp.as_ref().map(|t| t.0),
            p.namespace(),
            p.name_any(),
        )
    };
    let mine = age(o);
    ctx.policies
        .state()
        .iter()
        .filter(|p| p.spec.tenant == *tenant && p.uid() != o.uid())
        .filter(|p| p.meta().deletion_timestamp.is_none() && age(p) < mine)
        .map(|p| {
            format!(
                "tenant {tenant:?} belongs to RampartPolicy {}/{}",
                p.namespace().unwrap_or_default(),
                p.name_any()
            )
        })
        .next()
}

/// Takes the step into the record and the store: write the bundle, put the last good one
/// back, or remove it. `Some(reason)` when the generation could not be written.
async fn carry_out<P: Platform>(
    o: &RampartPolicy,
    ctx: &Context<P>,
    rec: &mut Record,
    (next, actions): (&rollout::Rollout, &[Step]),
    now: u64,
) -> Result<Option<String>, Error> {
    let was_running = rec.rollout().phase == Phase::Running;
    let p = &ctx.platform;
    if actions.iter().any(|a| matches!(a, Step::Apply(_))) {
        if let Some(why) = refusal(o, ctx, rec) {
            rec.set_rollout(next, now);
            return Ok(Some(format!("cannot apply it: {why}")));
        }
        let spec = serde_json::to_value(&o.spec).unwrap_or_default();
        match p.put_policy(&o.spec.tenant, &spec).await {
            Ok(revision) => {
                let mut applied = spec;
                applied["revision"] = json!(revision);
                rec.applied = Some(applied);
                rec.baseline = (0, 0);
                rec.baseline_acked = false;
            }
            Err(why) => {
                rec.set_rollout(next, now);
                return Ok(Some(format!("the bundle was refused: {why}")));
            }
        }
    }
    rec.set_rollout(next, now);
    let ours = |t: &str| t == o.spec.tenant && refusal(o, ctx, rec).is_none();
    for a in actions {
        if let Step::Revert(_) = a {
            match (&rec.good, tenant_of(rec.applied.as_ref())) {
                (Some(good), _) => {
                    let tenant = tenant_of(Some(good)).unwrap_or_default();
                    p.put_policy(tenant, good).await.map_err(Error::Store)?;
                }
                (None, Some(t)) if ours(t) => p.delete_policy(t).await.map_err(Error::Store)?,
                (None, _) => {}
            }
        }
    }
    if reconcile::nothing_to_go_back_to(actions)
        && let Some(t) = tenant_of(rec.applied.as_ref()).filter(|t| ours(t))
    {
        // Failed with nothing to go back to: its tenant decides nothing (requests fail closed).
        p.delete_policy(t).await.map_err(Error::Store)?;
    }
    if next.phase == Phase::Running && !was_running {
        rec.good.clone_from(&rec.applied);
    }
    Ok(None)
}

/// The policy is being deleted: its tenant leaves the store (when it wrote it), and the
/// rules naming it answer 500 from then on.
async fn cleanup<P: Platform>(o: &RampartPolicy, ctx: &Context<P>) -> Result<Action, Error> {
    let mut records = ctx.records.lock().await;
    let key = key_of(o);
    let uid = o.uid().unwrap_or_default();
    let rec = records.get(&ctx.client, &key, &uid).await?;
    reconcile::write_translation(ctx, &mut records, None, Some(&key)).await?;
    let wrote = rec
        .as_ref()
        .and_then(|r| tenant_of(r.applied.as_ref()).map(str::to_owned));
    if let Some(t) =
        wrote.filter(|t| *t == o.spec.tenant && refusal(o, ctx, &Record::default()).is_none())
    {
        ctx.platform.delete_policy(&t).await.map_err(Error::Store)?;
    }
    records.remove(&ctx.client, &key).await?;
    ctx.metrics.forget(&key);
    tracing::info!(policy = %key.name, "removed from the store");
    Ok(Action::await_change())
}

//! RampartFunctions: each generation deployed to the store as `rampart fn deploy` would
//! (the component read from the ConfigMap key its source names), then judged like a route's
//! generation — the store refusing it, or its invocations failing past the threshold within
//! the bake time — and put back to the last good deployment (whose component the store
//! keeps) when it fails. An HTTPRoute sends traffic to it with a backend of group
//! `rampart.dev`, kind `RampartFunction`.

use std::sync::Arc;

use kube::ResourceExt;
use kube::runtime::controller::Action;
use kube::runtime::finalizer::Event as Finalized;
use serde_json::Value;

use super::reconcile::{self, key_of, unix_now};
use super::record::Record;
use super::{Context, Error, Platform};
use crate::crds::RampartFunction;
use crate::rollout::{self, Action as Step, ConfigStatus, Observation, Phase};
use crate::translate::function_name;

const KIND: &str = "RampartFunction";

pub(crate) async fn function<P: Platform>(
    o: Arc<RampartFunction>,
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

async fn apply<P: Platform>(o: &RampartFunction, ctx: &Context<P>) -> Result<Action, Error> {
    let (records, key, mut rec) = reconcile::open_record(o, ctx).await?;
    let now = unix_now();
    let obs = observe(o, &rec, ctx, now).await?;
    let (next, mut actions) = rollout::step(&rec.rollout(), &obs, &ctx.settings.rollout);
    if let Some(err) = carry_out(o, ctx, &mut rec, (&next, &actions), now).await? {
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
    reconcile::settle(o, ctx, (records, &key), &rec, &actions).await
}

/// The generation, and while it bakes its invocations' failure share since it was deployed
/// (the store is the only hop: gateways follow it, nothing to acknowledge).
async fn observe<P: Platform>(
    o: &RampartFunction,
    rec: &Record,
    ctx: &Context<P>,
    now: u64,
) -> Result<Observation, Error> {
    let (mut obs, baking) = reconcile::first_look(o, rec, now);
    if baking {
        obs.config = ConfigStatus::Acked;
        let name = function_name(&key_of(o).namespace, &o.name_any());
        let (total, failed) = ctx
            .platform
            .function_counts(&name)
            .await
            .map_err(Error::Observe)?;
        obs.error_rate = reconcile::error_rate((total, failed), rec.baseline, &ctx.settings);
    }
    Ok(obs)
}

/// Takes the step into the record and the store: deploy, put the last good back, or remove.
/// `Some(reason)` when the generation could not be deployed.
async fn carry_out<P: Platform>(
    o: &RampartFunction,
    ctx: &Context<P>,
    rec: &mut Record,
    (next, actions): (&rollout::Rollout, &[Step]),
    now: u64,
) -> Result<Option<String>, Error> {
    let was_running = rec.rollout().phase == Phase::Running;
    rec.set_rollout(next, now);
    let name = function_name(&key_of(o).namespace, &o.name_any());
    let p = &ctx.platform;
    for a in actions {
        match a {
            Step::Apply(_) => {
                let ns = key_of(o).namespace;
                let deployed = match super::source::wasm(ctx, &ns, &o.spec.source).await {
                    Ok(bytes) => {
                        let keep: Vec<Value> = rec.good.iter().cloned().collect();
                        p.deploy_function(&name, bytes, &o.spec, &keep).await
                    }
                    Err(why) => Err(why),
                };
                match deployed {
                    Ok(spec) => rec.applied = Some(spec),
                    Err(why) => return Ok(Some(format!("cannot deploy it: {why}"))),
                }
                rec.baseline = p.function_counts(&name).await.map_err(Error::Observe)?;
            }
            Step::Revert(_) => match &rec.good {
                Some(good) => p.restore_function(good).await.map_err(Error::Store)?,
                None => p.delete_function(&name).await.map_err(Error::Store)?,
            },
            _ => {}
        }
    }
    if reconcile::nothing_to_go_back_to(actions) {
        // Failed with nothing to go back to: it serves nothing.
        p.delete_function(&name).await.map_err(Error::Store)?;
    }
    if next.phase == Phase::Running && !was_running {
        rec.good.clone_from(&rec.applied);
    }
    Ok(None)
}

async fn cleanup<P: Platform>(o: &RampartFunction, ctx: &Context<P>) -> Result<Action, Error> {
    let mut records = ctx.records.lock().await;
    let key = key_of(o);
    let name = function_name(&key.namespace, &key.name);
    ctx.platform
        .delete_function(&name)
        .await
        .map_err(Error::Store)?;
    records.remove(&ctx.client, &key).await?;
    ctx.metrics.forget(&key);
    tracing::info!(function = %name, "removed from the store");
    Ok(Action::await_change())
}

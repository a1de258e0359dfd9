//! RampartClusters: the workloads of [`crate::workloads`] kept applied (server-side apply, so
//! fields others own are left alone), the peer PKI made once and kept in a Secret, and the
//! cluster Running once every store node is ready. The objects are owned by the
//! RampartCluster: Kubernetes' garbage collector removes them with it.
//!
//! Not handled yet: changing `replicas` or `storage` of a running cluster (a Raft membership
//! change, `rampart kv member`, not a StatefulSet scale; a claim template cannot change).
//! Such a change is refused: the workloads stay as they are and the status says why.

use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::{Resource, ResourceExt};
use serde_json::{Value, json};

use super::reconcile::unix_now;
use super::record::{Key, Record};
use super::{Context, Error, FIELD_MANAGER, Platform, status};
use crate::crds::{RampartCluster, RolloutStatus};
use crate::rollout::{Phase, Rollout};
use crate::workloads;

const KIND: &str = "RampartCluster";

pub(crate) async fn cluster<P: Platform>(
    o: Arc<RampartCluster>,
    ctx: Arc<Context<P>>,
) -> Result<Action, Error> {
    let started = Instant::now();
    let out = reconcile(&o, &ctx).await;
    ctx.metrics.reconciled(KIND, started.elapsed(), out.is_ok());
    out
}

async fn reconcile<P: Platform>(o: &RampartCluster, ctx: &Context<P>) -> Result<Action, Error> {
    if o.meta().deletion_timestamp.is_some() {
        // Its objects go with it (owner references).
        return Ok(Action::await_change());
    }
    let ns = o.namespace().ok_or(Error::Incomplete("namespace"))?;
    let name = o.name_any();
    let sets: Api<StatefulSet> = Api::namespaced(ctx.client.clone(), &ns);
    let existing = sets.get_opt(&name).await?;
    if let Some(why) = existing.as_ref().and_then(|s| refused_change(o, s)) {
        let mut st = serde_json::to_value(RolloutStatus {
            phase: Some(Phase::Failed.as_str().to_owned()),
            observed_generation: o.meta().generation,
            reason: Some(why),
            ..RolloutStatus::default()
        })
        .unwrap_or_default();
        st["conditions"] = json!([]);
        status::apply_status(o, ctx, st).await?;
        return Ok(Action::requeue(Duration::from_secs(300)));
    }
    ensure_pki(o, ctx, &ns, &name).await?;
    for obj in workloads::objects(o) {
        apply(ctx, &ns, &obj).await?;
    }
    let ready = existing
        .and_then(|s| s.status)
        .and_then(|s| s.ready_replicas)
        .unwrap_or(0);
    let generation = o.meta().generation.unwrap_or(1);
    let running = u32::try_from(ready).unwrap_or(0) >= o.spec.replicas;
    let phase = if running {
        Phase::Running
    } else {
        Phase::Provisioning
    };
    // Unchanged while the phase is: a status write that changes nothing is no event, so
    // this reconcile does not wake itself.
    let since = o
        .status
        .as_ref()
        .filter(|s| s.phase.as_deref() == Some(phase.as_str()))
        .and_then(|s| s.applied_at)
        .unwrap_or_else(unix_now);
    let rollout = Rollout {
        phase,
        generation,
        applied_at: since,
        last_good: running.then_some(generation),
        reason: None,
    };
    write_status(o, ctx, &rollout).await?;
    let key = Key {
        kind: KIND,
        namespace: ns,
        name,
    };
    ctx.metrics.phase(&key, rollout.phase);
    Ok(Action::requeue(if running {
        Duration::from_secs(300)
    } else {
        Duration::from_secs(5)
    }))
}

/// Why the spec cannot be applied over the running StatefulSet `s`, if it cannot.
fn refused_change(o: &RampartCluster, s: &StatefulSet) -> Option<String> {
    let spec = s.spec.as_ref()?;
    let running = u32::try_from(spec.replicas.unwrap_or(0)).unwrap_or(0);
    if running != o.spec.replicas {
        return Some(format!(
            "changing a running store from {running} to {} nodes is a membership change \
             (rampart kv member), which the operator does not do yet",
            o.spec.replicas
        ));
    }
    let claimed = spec
        .volume_claim_templates
        .as_ref()?
        .first()?
        .spec
        .as_ref()?
        .resources
        .as_ref()?
        .requests
        .as_ref()?
        .get("storage")?
        .0
        .clone();
    let wanted = o.spec.storage.clone().unwrap_or_else(|| "1Gi".into());
    (claimed != wanted).then(|| {
        format!("a StatefulSet's volume claims cannot change ({claimed} → {wanted}) in place")
    })
}

/// The peer PKI: made once (a Secret holding a certificate for every node), made again only
/// when the cluster has more nodes than it covers.
async fn ensure_pki<P: Platform>(
    o: &RampartCluster,
    ctx: &Context<P>,
    ns: &str,
    name: &str,
) -> Result<(), Error> {
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), ns);
    let last = format!("{name}-{}.crt", o.spec.replicas.saturating_sub(1));
    let covered = secrets
        .get_opt(&format!("{name}-peer-tls"))
        .await?
        .is_some_and(|s| {
            s.data.as_ref().is_some_and(|d| d.contains_key(&last))
                || s.string_data
                    .as_ref()
                    .is_some_and(|d| d.contains_key(&last))
        });
    if !covered {
        let pki = workloads::pki(o).map_err(|e| Error::Pki(e.to_string()))?;
        apply(ctx, ns, &workloads::peer_secret(o, &pki)).await?;
        tracing::info!(cluster = %name, "peer certificates issued");
    }
    Ok(())
}

/// Server-side applies one object (any kind) with the operator's field manager.
async fn apply<P: Platform>(ctx: &Context<P>, ns: &str, obj: &Value) -> Result<(), Error> {
    let api_version = obj["apiVersion"].as_str().unwrap_or_default();
    let (group, version) = api_version.rsplit_once('/').unwrap_or(("", api_version));
    let kind = obj["kind"].as_str().unwrap_or_default();
    let plural = format!("{}s", kind.to_ascii_lowercase());
    let gvk = GroupVersionKind::gvk(group, version, kind);
    let resource = ApiResource::from_gvk_with_plural(&gvk, &plural);
    let api: Api<DynamicObject> = Api::namespaced_with(ctx.client.clone(), ns, &resource);
    let name = obj["metadata"]["name"].as_str().unwrap_or_default();
    api.patch(
        name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(obj),
    )
    .await?;
    Ok(())
}

async fn write_status<P: Platform>(
    o: &RampartCluster,
    ctx: &Context<P>,
    rollout: &Rollout,
) -> Result<(), Error> {
    let since = o
        .status
        .as_ref()
        .filter(|s| s.phase.as_deref() == Some(rollout.phase.as_str()))
        .and_then(|s| s.conditions.first())
        .and_then(|c| {
            c.last_transition_time
                .parse::<k8s_openapi::jiff::Timestamp>()
                .ok()
        })
        .map_or(unix_now(), |t| u64::try_from(t.as_second()).unwrap_or(0));
    let record = Record {
        phase: rollout.phase.as_str().to_owned(),
        generation: rollout.generation,
        since,
        ..Record::default()
    };
    let mut st = RolloutStatus::default().with_rollout(rollout);
    st.conditions = status::conditions(false, &record, &[])
        .into_iter()
        .filter_map(|c| serde_json::from_value(c).ok())
        .collect();
    let mut st = serde_json::to_value(st).unwrap_or_default();
    if rollout.phase == Phase::Provisioning {
        st["reason"] = json!(format!(
            "waiting for {} store node(s) to be ready",
            o.spec.replicas
        ));
    }
    status::apply_status(o, ctx, st).await
}

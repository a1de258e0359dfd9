//! What a reconcile tells the people watching: Gateway API conditions in the object's status
//! (Accepted, ResolvedRefs, Programmed; written by server-side apply, so other controllers'
//! parents are left alone) and Kubernetes Events for each step of the rollout.

use kube::api::{Api, Patch, PatchParams};
use kube::runtime::events::{Event, EventType};
use kube::{Resource, ResourceExt};
use serde_json::{Value, json};

use super::reconcile::Unit;
use super::record::Record;
use super::{CONTROLLER_NAME, Context, Error, FIELD_MANAGER, Platform};
use crate::rollout::{self, Action};

/// One condition as the Gateway API writes it.
fn condition(kind: &str, status: &str, reason: &str, message: &str, rec: &Record) -> Value {
    let since = i64::try_from(rec.since).unwrap_or(0);
    let time = k8s_openapi::jiff::Timestamp::from_second(since)
        .unwrap_or(k8s_openapi::jiff::Timestamp::UNIX_EPOCH);
    json!({
        "type": kind,
        "status": status,
        "reason": reason,
        "message": message,
        "observedGeneration": rec.generation,
        "lastTransitionTime": time.to_string(),
    })
}

/// The conditions of an object in its rollout: Accepted (it is ours and read), ResolvedRefs
/// (routes: every backend found), Programmed (the rollout's phase).
pub(crate) fn conditions(route: bool, rec: &Record, problems: &[String]) -> Vec<Value> {
    let mut out = vec![condition(
        "Accepted",
        "True",
        "Accepted",
        "read by the Rampart operator",
        rec,
    )];
    if route {
        let unresolved: Vec<&str> = problems
            .iter()
            .filter(|p| p.contains("backend") || p.contains("RampartPolicy"))
            .map(String::as_str)
            .collect();
        let reason = if unresolved.iter().any(|p| p.contains("ReferenceGrant")) {
            "RefNotPermitted"
        } else {
            "BackendNotFound"
        };
        out.push(if unresolved.is_empty() {
            condition("ResolvedRefs", "True", "ResolvedRefs", "", rec)
        } else {
            condition("ResolvedRefs", "False", reason, &unresolved.join("; "), rec)
        });
        if !problems.is_empty() {
            out.push(condition(
                "PartiallyInvalid",
                "True",
                "UnsupportedValue",
                &problems.join("; "),
                rec,
            ));
        }
    }
    let (status, reason, message) = rollout::programmed(&rec.rollout());
    out.push(condition("Programmed", status, reason, &message, rec));
    out
}

/// A route's status entries for the parents this controller answers for (its parentRefs that
/// are Gateways of ours).
fn our_parents<K: Unit, P: Platform>(o: &K, ctx: &Context<P>, conditions: &[Value]) -> Vec<Value> {
    let spec = o.spec_value();
    let ns = o.namespace().unwrap_or_default();
    let gateways = ctx.gateways.state();
    let is_ours = |gw_ns: &str, name: &str| {
        gateways.iter().any(|g| {
            g.name_any() == name
                && g.namespace().as_deref() == Some(gw_ns)
                && g.spec.gateway_class_name == ctx.settings.gateway_class
        })
    };
    spec["parentRefs"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| {
            let gw_ns = p["namespace"].as_str().unwrap_or(&ns);
            let name = p["name"].as_str()?;
            if !is_ours(gw_ns, name) {
                return None;
            }
            let mut parent = json!({
                "group": "gateway.networking.k8s.io",
                "kind": "Gateway",
                "namespace": gw_ns,
                "name": name,
            });
            if let Some(section) = p["sectionName"].as_str() {
                parent["sectionName"] = json!(section);
            }
            Some(json!({
                "parentRef": parent,
                "controllerName": CONTROLLER_NAME,
                "conditions": conditions,
            }))
        })
        .collect()
}

/// Writes the object's status for its record: a Gateway's conditions (server-side apply:
/// a map keyed by type), a route's entries for our parents next to the ones other
/// controllers wrote (`status.parents` is an atomic list: it is read and written whole).
pub(crate) async fn write<K: Unit, P: Platform>(
    o: &K,
    ctx: &Context<P>,
    rec: &Record,
    problems: &[String],
) -> Result<(), Error> {
    let route = o.route_prefix().is_some();
    let conditions = conditions(route, rec, problems);
    if !route {
        return apply_status(o, ctx, json!({ "conditions": conditions })).await;
    }
    let ns = o.namespace().ok_or(Error::Incomplete("namespace"))?;
    let resource = kube::api::ApiResource::erase::<K>(&());
    let api: Api<kube::api::DynamicObject> =
        Api::namespaced_with(ctx.client.clone(), &ns, &resource);
    let current = api.get_status(&o.name_any()).await?;
    let mut parents: Vec<Value> = current.data["status"]["parents"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|p| p["controllerName"] != CONTROLLER_NAME)
        .cloned()
        .collect();
    parents.extend(our_parents(o, ctx, &conditions));
    api.patch_status(
        &o.name_any(),
        &PatchParams::default(),
        &Patch::Merge(json!({ "status": { "parents": parents } })),
    )
    .await?;
    Ok(())
}

/// Server-side applies `status` as the object's status, with the operator's field manager.
pub(crate) async fn apply_status<K, P>(o: &K, ctx: &Context<P>, status: Value) -> Result<(), Error>
where
    K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
    P: Platform,
{
    let ns = o.namespace().ok_or(Error::Incomplete("namespace"))?;
    let api: Api<K> = Api::namespaced(ctx.client.clone(), &ns);
    let patch = json!({
        "apiVersion": K::api_version(&()),
        "kind": K::kind(&()),
        "status": status,
    });
    api.patch_status(
        &o.name_any(),
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&patch),
    )
    .await?;
    Ok(())
}

/// Publishes the step's events on the object (failures to publish are logged: an event is
/// not worth a retry of the whole reconcile).
pub(crate) async fn events<K: Resource<DynamicType = ()>, P: Platform>(
    o: &K,
    ctx: &Context<P>,
    actions: &[Action],
) {
    let reference = o.object_ref(&());
    for a in actions {
        let Action::Event {
            warning,
            reason,
            message,
        } = a
        else {
            continue;
        };
        let event = Event {
            type_: if *warning {
                EventType::Warning
            } else {
                EventType::Normal
            },
            reason: (*reason).to_owned(),
            note: Some(message.clone()),
            action: "Rollout".into(),
            secondary: None,
        };
        if let Err(e) = ctx.recorder.publish(&event, &reference).await {
            tracing::warn!(error = %e, reason, "cannot publish an event");
        }
    }
}

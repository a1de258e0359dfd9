//! The operator's [`Platform`]: the store written through `rampart apply`'s checked
//! transaction, the control plane's `/status` for ACK/NACK, the proxies' `/metrics` for
//! each route's answers and their `/policy/tenants` for each policy bundle.

use std::net::SocketAddr;
use std::time::Duration;

use rampart_fn::blob::{BlobRef, CHUNK_BYTES};
use rampart_fn::spec::{FunctionSpec, parse_size};
use rampart_kv::client::Client;
use rampart_operator::controller::Platform;
use rampart_operator::crds::RampartFunctionSpec;
use rampart_operator::rollout::ConfigStatus;
use rampart_operator::translate::OWNED_PREFIX;
use rampart_xds::desired::Resource;
use serde_json::Value;

use crate::desired;
use crate::functions::store;

/// How long one look at the control plane or a proxy may take.
const LOOK: Duration = Duration::from_secs(5);

pub(crate) struct StorePlatform {
    store: tokio::sync::Mutex<Client>,
    /// `host:port`, looked up on every use (a Service name in a cluster).
    control_plane: String,
    proxies: Vec<String>,
}

impl StorePlatform {
    pub(crate) fn new(
        endpoints: &[String],
        control_plane: &str,
        proxies: &[String],
    ) -> anyhow::Result<Self> {
        let store = desired::client(&desired::StoreArgs {
            endpoints: endpoints.to_vec(),
        })?;
        Ok(Self {
            store: tokio::sync::Mutex::new(store),
            control_plane: control_plane.to_owned(),
            proxies: proxies.to_vec(),
        })
    }

    /// One attempt: read, check the whole config, write what changed if nothing else did.
    async fn write_once(&self, docs: &[Resource]) -> Result<i64, String> {
        let mut c = self.store.lock().await;
        let state = desired::load(&mut c).await.map_err(|e| format!("{e:#}"))?;
        let owned = |r: &Resource| r.name.starts_with(OWNED_PREFIX);
        let mut merged: Vec<Resource> = state
            .resources
            .iter()
            .filter(|r| !owned(r))
            .cloned()
            .collect();
        merged.extend(docs.iter().cloned());
        desired::check(&merged).map_err(|errors| errors.join("; "))?;
        let puts: Vec<&Resource> = docs
            .iter()
            .filter(|d| !state.resources.contains(d))
            .collect();
        let deletes: Vec<String> = state
            .resources
            .iter()
            .filter(|r| owned(r) && !docs.iter().any(|d| d.kind == r.kind && d.name == r.name))
            .map(Resource::key)
            .collect();
        if puts.is_empty() && deletes.is_empty() {
            // Nothing new: the newest change under the prefix is what the control plane must
            // serve (later revisions may be other keys it never reloads for).
            return Ok(state.revisions.values().copied().max().unwrap_or(0));
        }
        desired::commit(&mut c, &state, &puts, &deletes)
            .await
            .map_err(|e| format!("{e:#}"))
    }
}

impl Platform for StorePlatform {
    async fn write(&self, documents: Vec<Value>) -> Result<i64, String> {
        let docs = documents
            .into_iter()
            .map(Resource::from_document)
            .collect::<Result<Vec<_>, _>>()?;
        let mut last = String::new();
        // Another writer between the read and the write fails the transaction: read again.
        for _ in 0..3 {
            match self.write_once(&docs).await {
                Ok(rev) => return Ok(rev),
                Err(e) if e.contains("changed while") => last = e,
                Err(e) => return Err(e),
            }
        }
        Err(last)
    }

    async fn config_status(&self, revision: i64) -> Result<ConfigStatus, String> {
        let mut statuses = Vec::new();
        for body in get_all(&self.control_plane, "/status").await? {
            statuses.push(serde_json::from_str::<Value>(&body).map_err(|e| e.to_string())?);
        }
        Ok(judge_all(&statuses, revision))
    }

    async fn route_counts(&self, prefix: &str) -> Result<(u64, u64), String> {
        self.sum_metrics(|text| route_counts(text, prefix)).await
    }

    async fn deploy_function(
        &self,
        name: &str,
        bytes: Vec<u8>,
        settings: &RampartFunctionSpec,
        keep: &[Value],
    ) -> Result<Value, String> {
        let spec = function_spec(name, &bytes, settings)?;
        let keep: Vec<String> = keep
            .iter()
            .filter_map(|s| s["blob"]["sha256"].as_str().map(str::to_owned))
            .collect();
        let mut c = self.store.lock().await;
        let e = |e: anyhow::Error| format!("{e:#}");
        store::put_blob(&mut c, &bytes).await.map_err(e)?;
        store::retain(&mut c, name, &keep).await.map_err(e)?;
        store::put_spec(&mut c, &spec).await.map_err(e)?;
        store::collect_garbage(&mut c).await.map_err(e)?;
        serde_json::to_value(&spec).map_err(|e| e.to_string())
    }

    async fn restore_function(&self, spec: &Value) -> Result<(), String> {
        let spec: FunctionSpec = serde_json::from_value(spec.clone()).map_err(|e| e.to_string())?;
        spec.check().map_err(|errors| errors.join("; "))?;
        let mut c = self.store.lock().await;
        // Its component is still there (retained), or putting it back would break it.
        store::get_blob(&mut c, &spec.blob)
            .await
            .map_err(|e| format!("the last good component is gone: {e:#}"))?;
        store::put_spec(&mut c, &spec)
            .await
            .map_err(|e| format!("{e:#}"))
    }

    async fn delete_function(&self, name: &str) -> Result<(), String> {
        let mut c = self.store.lock().await;
        let e = |e: anyhow::Error| format!("{e:#}");
        store::delete_spec(&mut c, name).await.map_err(e)?;
        store::retain(&mut c, name, &[]).await.map_err(e)?;
        store::collect_garbage(&mut c).await.map_err(e)?;
        Ok(())
    }

    async fn put_module(
        &self,
        owner: &str,
        bytes: Vec<u8>,
        keep: &[String],
    ) -> Result<String, String> {
        let mut c = self.store.lock().await;
        let e = |e: anyhow::Error| format!("{e:#}");
        let blob = store::put_blob(&mut c, &bytes).await.map_err(e)?;
        let mut kept = vec![blob.sha256.clone()];
        kept.extend(keep.iter().filter(|k| **k != blob.sha256).cloned());
        store::retain(&mut c, owner, &kept).await.map_err(e)?;
        store::collect_garbage(&mut c).await.map_err(e)?;
        Ok(blob.sha256)
    }

    async fn forget_modules(&self, owner: &str) -> Result<(), String> {
        let mut c = self.store.lock().await;
        let e = |e: anyhow::Error| format!("{e:#}");
        store::retain(&mut c, owner, &[]).await.map_err(e)?;
        store::collect_garbage(&mut c).await.map_err(e)?;
        Ok(())
    }

    async fn function_counts(&self, name: &str) -> Result<(u64, u64), String> {
        self.sum_metrics(|text| function_counts(text, name)).await
    }

    async fn put_policy(&self, tenant: &str, spec: &Value) -> Result<String, String> {
        let spec = spec.clone();
        // Compiling and running the bundle's tests is CPU work.
        let (stored, revision) =
            tokio::task::spawn_blocking(move || super::policies::checked_bundle(&spec))
                .await
                .map_err(|e| e.to_string())??;
        let mut c = self.store.lock().await;
        crate::policy::store::put(&mut c, tenant, &stored)
            .await
            .map_err(|e| format!("{e:#}"))?;
        Ok(revision)
    }

    async fn delete_policy(&self, tenant: &str) -> Result<(), String> {
        let mut c = self.store.lock().await;
        crate::policy::store::delete(&mut c, tenant)
            .await
            .map_err(|e| format!("{e:#}"))
    }

    async fn policy_status(
        &self,
        tenant: &str,
        revision: &str,
    ) -> Result<(ConfigStatus, (u64, u64)), String> {
        let mut bodies = Vec::new();
        for proxy in &self.proxies {
            for body in get_all(proxy, "/policy/tenants").await? {
                bodies.push(serde_json::from_str(&body).map_err(|e| e.to_string())?);
            }
        }
        Ok(super::policies::judge(tenant, revision, &bodies))
    }
}

impl StorePlatform {
    /// `count` of every proxy's `/metrics`, summed.
    async fn sum_metrics(&self, count: impl Fn(&str) -> (u64, u64)) -> Result<(u64, u64), String> {
        let mut sum = (0, 0);
        for proxy in &self.proxies {
            for body in get_all(proxy, "/metrics").await? {
                let (total, errors) = count(&body);
                sum = (sum.0 + total, sum.1 + errors);
            }
        }
        Ok(sum)
    }
}

/// What `rampart fn deploy` would store for a RampartFunction.
fn function_spec(
    name: &str,
    bytes: &[u8],
    s: &RampartFunctionSpec,
) -> Result<FunctionSpec, String> {
    if bytes.len() < 8 || &bytes[..4] != b"\0asm" || bytes[6..8] != [1, 0] {
        return Err(
            "the source is not a WebAssembly component (build it for wasm32-wasip2)".into(),
        );
    }
    let blob = BlobRef::of(bytes, CHUNK_BYTES).map_err(|e| e.to_string())?;
    let mut spec = FunctionSpec::new(name, blob);
    spec.signature.clone_from(&s.source.signature);
    spec.allow_unsigned = s.allow_unsigned;
    spec.env = s.env.clone();
    if let Some(n) = s.max_concurrency {
        spec.max_concurrency = n;
    }
    if let Some(m) = &s.memory {
        spec.memory_bytes = parse_size(m).map_err(|e| format!("memory: {e}"))?;
    }
    if let Some(t) = &s.timeout {
        let t = rampart_config::duration::parse_duration(t).map_err(|e| format!("timeout: {e}"))?;
        spec.timeout_ms = u64::try_from(t.as_millis()).unwrap_or(u64::MAX);
    }
    spec.clusters = s.clusters.iter().map(|c| c.to_ascii_lowercase()).collect();
    spec.check().map_err(|errors| errors.join("; "))?;
    Ok(spec)
}

/// `path` from every address `host_port` resolves to: a headless Service names every pod
/// (each control plane knows only its own proxies; each proxy only its own counts).
async fn get_all(host_port: &str, path: &str) -> Result<Vec<String>, String> {
    let addrs: Vec<SocketAddr> = tokio::time::timeout(LOOK, tokio::net::lookup_host(host_port))
        .await
        .map_err(|_| format!("{host_port}: no answer from DNS within {LOOK:?}"))?
        .map_err(|e| format!("{host_port}: {e}"))?
        .collect();
    if addrs.is_empty() {
        return Err(format!("{host_port}: no address"));
    }
    let mut out = Vec::new();
    for addr in addrs {
        let (code, body) =
            crate::admin_client::request(addr, http::Method::GET, path, None, Vec::new(), LOOK)
                .await
                .map_err(|e| format!("{e:#}"))?;
        if !code.is_success() {
            return Err(format!("{addr}{path}: {code}"));
        }
        out.push(body);
    }
    Ok(out)
}

/// Every control plane's `/status` judged together: a NACK anywhere is a NACK; Pending
/// while any control plane with proxies has one that has not answered; control planes
/// with no proxy say nothing (Pending when none has any).
fn judge_all(statuses: &[Value], revision: i64) -> ConfigStatus {
    let mut acked = false;
    for s in statuses {
        if s["nodes"].as_object().is_none_or(serde_json::Map::is_empty) {
            continue;
        }
        match judge(s, revision) {
            ConfigStatus::Nacked(why) => return ConfigStatus::Nacked(why),
            ConfigStatus::Pending => return ConfigStatus::Pending,
            ConfigStatus::Acked => acked = true,
        }
    }
    if acked {
        ConfigStatus::Acked
    } else {
        ConfigStatus::Pending
    }
}

/// The control plane's `/status` judged for `revision`: a proxy's refusal of what it was
/// last sent is a NACK; anything sent and not yet acknowledged, or a snapshot older than
/// `revision`, or no proxy at all, is Pending.
fn judge(status: &Value, revision: i64) -> ConfigStatus {
    if status["snapshot"].as_i64().unwrap_or(0) < revision {
        return ConfigStatus::Pending;
    }
    let Some(nodes) = status["nodes"].as_object().filter(|n| !n.is_empty()) else {
        return ConfigStatus::Pending;
    };
    let mut pending = false;
    for (node, types) in nodes {
        for (t, s) in types.as_object().into_iter().flatten() {
            let sent = &s["sent"];
            if s["nacked"]["version"] == *sent {
                let why = s["nacked"]["error"].as_str().unwrap_or("");
                return ConfigStatus::Nacked(format!("{node} refused {t}: {why}"));
            }
            pending |= s["acked"] != *sent;
        }
    }
    if pending {
        ConfigStatus::Pending
    } else {
        ConfigStatus::Acked
    }
}

/// `(invocations, failures)` of function `name` in a proxy's metrics
/// (`rampart_fn_invocations_total{function,outcome}`; every outcome but `ok` failed).
fn function_counts(metrics: &str, name: &str) -> (u64, u64) {
    let mut out = (0, 0);
    for (labels, n) in series(metrics, "rampart_fn_invocations_total") {
        if label(labels, "function") == Some(name) {
            out.0 += n;
            if label(labels, "outcome") != Some("ok") {
                out.1 += n;
            }
        }
    }
    out
}

/// Each `name{labels} value` line: its labels and value.
fn series<'a>(metrics: &'a str, name: &'a str) -> impl Iterator<Item = (&'a str, u64)> + 'a {
    metrics.lines().filter_map(move |line| {
        let rest = line.strip_prefix(name)?.strip_prefix('{')?;
        let (labels, value) = rest.rsplit_once("} ")?;
        let n = value.trim().parse::<f64>().ok()?;
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)] // counters
        Some((labels, n as u64))
    })
}

fn label<'a>(labels: &'a str, name: &str) -> Option<&'a str> {
    labels.split(',').find_map(|kv| {
        kv.strip_prefix(name)?
            .strip_prefix("=\"")?
            .strip_suffix('"')
    })
}

/// Whether route `name` is one of those named `PREFIXrI.mJ.pK` (what one HTTPRoute makes).
fn made_from(name: &str, prefix: &str) -> bool {
    let Some(rest) = name.strip_prefix(prefix) else {
        return false;
    };
    let parts: Vec<&str> = rest.split('.').collect();
    parts.len() == 3
        && parts.iter().zip(['r', 'm', 'p']).all(|(p, c)| {
            p.strip_prefix(c)
                .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
        })
}

/// `(requests, 5xx)` on routes named `prefix*` in a proxy's metrics
/// (`rampart_requests_total{listener,route,cluster,class}`).
fn route_counts(metrics: &str, prefix: &str) -> (u64, u64) {
    let mut out = (0, 0);
    for (labels, n) in series(metrics, "rampart_requests_total") {
        if label(labels, "route").is_some_and(|r| made_from(r, prefix)) {
            out.0 += n;
            if label(labels, "class") == Some("5xx") {
                out.1 += n;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_only_the_prefixed_routes() {
        let text = "# TYPE rampart_requests counter\n\
            rampart_requests_total{listener=\"l\",route=\"shop_site_r0.m0.p0\",cluster=\"c\",class=\"2xx\"} 7\n\
            rampart_requests_total{listener=\"l\",route=\"shop_site_r1.m0.p0\",cluster=\"c\",class=\"5xx\"} 3\n\
            rampart_requests_total{listener=\"l\",route=\"shop_site_x.r0.m0.p0\",cluster=\"c\",class=\"5xx\"} 100\n\
            rampart_requests_created{listener=\"l\",route=\"shop_site_r0.m0.p0\",cluster=\"c\",class=\"2xx\"} 1.7e9\n";
        assert_eq!(route_counts(text, "shop_site_"), (10, 3));
        assert_eq!(route_counts(text, "other."), (0, 0));
        let fns = "rampart_fn_invocations_total{function=\"k8s-a-b\",outcome=\"ok\"} 9\n\
            rampart_fn_invocations_total{function=\"k8s-a-b\",outcome=\"trap\"} 2\n\
            rampart_fn_invocations_total{function=\"k8s-a-bc\",outcome=\"trap\"} 5\n";
        assert_eq!(function_counts(fns, "k8s-a-b"), (11, 2));
    }

    #[test]
    fn judges_acks_and_nacks_of_the_revision() {
        let at = |snapshot: i64, nacked: Value| {
            serde_json::json!({ "snapshot": snapshot, "nodes": { "p1": {
                "Listener": { "sent": "a", "acked": "a", "nacked": null },
                "RouteConfiguration": { "sent": "b", "acked": "x", "nacked": nacked },
            }}})
        };
        assert_eq!(judge(&at(4, Value::Null), 5), ConfigStatus::Pending);
        assert_eq!(judge(&at(5, Value::Null), 5), ConfigStatus::Pending);
        let refused = serde_json::json!({ "version": "b", "error": "bad" });
        assert_eq!(
            judge(&at(5, refused), 5),
            ConfigStatus::Nacked("p1 refused RouteConfiguration: bad".into())
        );
        let old = serde_json::json!({ "version": "z", "error": "old" });
        assert_eq!(judge(&at(6, old), 5), ConfigStatus::Pending);
        let acked = serde_json::json!({ "snapshot": 9, "nodes": { "p1": {
            "Listener": { "sent": "a", "acked": "a", "nacked": null } } } });
        assert_eq!(judge(&acked, 5), ConfigStatus::Acked);
        assert_eq!(
            judge(&serde_json::json!({ "snapshot": 9, "nodes": {} }), 5),
            ConfigStatus::Pending
        );
        // Two control planes: one without proxies says nothing; a NACK on either counts.
        let empty = serde_json::json!({ "snapshot": 9, "nodes": {} });
        assert_eq!(
            judge_all(&[empty.clone(), acked.clone()], 5),
            ConfigStatus::Acked
        );
        assert_eq!(
            judge_all(std::slice::from_ref(&empty), 5),
            ConfigStatus::Pending
        );
        let nacked = at(6, serde_json::json!({ "version": "b", "error": "bad" }));
        assert!(matches!(
            judge_all(&[acked, nacked], 5),
            ConfigStatus::Nacked(_)
        ));
    }
}

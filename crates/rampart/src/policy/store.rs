//! Policy bundles in the replicated store, one key per tenant (`/rampart/policies/TENANT`,
//! a JSON [`StoredBundle`]), and a gateway following them into its policy engine.
//!
//! A bundle's revision is its content hash ([`Bundle::new`] without a manifest revision),
//! so whoever writes one knows the revision every gateway will report for it
//! (`GET /policy/tenants`): in place, or refused with the reason.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Weak};

use anyhow::{Context, Result};
use rampart_kv::client::Client;
use rampart_kv::proto::etcdserverpb as pb;
use rampart_policy::{Bundle, PolicyEngine};
use rampart_proxy::Gateway;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio_util::sync::CancellationToken;

pub(crate) const PREFIX: &str = "/rampart/policies/";

/// One tenant's bundle as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct StoredBundle {
    /// Rego modules by file name.
    pub(crate) modules: BTreeMap<String, String>,
    /// The data document (an object); none: `{}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) data: Option<Value>,
}

impl StoredBundle {
    pub(crate) fn bundle(&self) -> Result<Bundle, rampart_policy::BundleError> {
        Bundle::new(
            self.modules
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            self.data.clone().unwrap_or_else(|| serde_json::json!({})),
            None,
            None,
        )
    }
}

/// Whether `tenant` can name a key of its own: 1–253 of `[A-Za-z0-9._-]`, not `.`/`..`.
pub(crate) fn check_tenant(tenant: &str) -> Result<(), String> {
    let ok = (1..=253).contains(&tenant.len())
        && tenant
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
        && tenant != "."
        && tenant != "..";
    if ok {
        Ok(())
    } else {
        Err(format!(
            "tenant {tenant:?} must be 1 to 253 characters of letters, digits, '.', '_' and '-'"
        ))
    }
}

/// Writes `tenant`'s bundle; returns the store revision.
pub(crate) async fn put(c: &mut Client, tenant: &str, b: &StoredBundle) -> Result<i64> {
    check_tenant(tenant).map_err(anyhow::Error::msg)?;
    let value = serde_json::to_vec(b)?;
    let resp = c
        .put(pb::PutRequest {
            key: format!("{PREFIX}{tenant}").into(),
            value,
            ..Default::default()
        })
        .await
        .context("cannot write to the store")?;
    Ok(resp.header.map_or(0, |h| h.revision))
}

/// Removes `tenant`'s bundle (gateways then fail its requests closed).
pub(crate) async fn delete(c: &mut Client, tenant: &str) -> Result<()> {
    check_tenant(tenant).map_err(anyhow::Error::msg)?;
    c.delete(pb::DeleteRangeRequest {
        key: format!("{PREFIX}{tenant}").into(),
        ..Default::default()
    })
    .await
    .context("cannot delete from the store")?;
    Ok(())
}

/// Every stored bundle (or why it cannot be read), and the revision read at.
async fn stored(c: &mut Client) -> Result<(Vec<(String, Result<Bundle, String>)>, i64)> {
    let resp = c
        .range(crate::follow::range_prefix(PREFIX))
        .await
        .context("cannot read the store")?;
    let revision = resp.header.map_or(0, |h| h.revision);
    let mut out = Vec::new();
    for kv in resp.kvs {
        let key = String::from_utf8_lossy(&kv.key);
        let Some(tenant) = key.strip_prefix(PREFIX) else {
            continue;
        };
        if check_tenant(tenant).is_err() {
            tracing::warn!(key = %key, "policies: not a tenant's key; ignored");
            continue;
        }
        let bundle = serde_json::from_slice::<StoredBundle>(&kv.value)
            .map_err(|e| format!("not a stored bundle: {e}"))
            .and_then(|b| b.bundle().map_err(|e| e.to_string()));
        out.push((tenant.to_owned(), bundle));
    }
    Ok((out, revision))
}

/// Keeps the gateway's policy engine holding the store's bundles: new and changed ones
/// compiled, tested and swapped in (a refused one leaves the previous revision deciding,
/// and the engine reports the refusal), removed ones dropped. Tenants the engine got
/// elsewhere (its bundle directory, the admin API) are left alone unless the store names
/// them. Reads everything again after each change under the prefix.
pub(crate) async fn follow(
    gateway: Weak<Gateway>,
    endpoints: Vec<String>,
    stop: CancellationToken,
) {
    let follower = Follower {
        gateway,
        put: HashMap::new(),
        engine: None,
    };
    crate::follow::follow("policies", PREFIX, endpoints, stop, follower).await;
}

/// What the follower put into which engine.
struct Follower {
    gateway: Weak<Gateway>,
    /// Tenant → revision put (accepted or refused), for the engine below.
    put: HashMap<String, String>,
    engine: Option<Weak<PolicyEngine>>,
}

impl crate::follow::Sync for Follower {
    async fn sync(&mut self, c: &mut Client) -> Result<i64> {
        let engine = &self
            .gateway
            .upgrade()
            .and_then(|g| g.policy_engine())
            .context("the gateway has no policy engine")?;
        let same_engine = self
            .engine
            .as_ref()
            .is_some_and(|w| std::ptr::eq(w.as_ptr(), Arc::as_ptr(engine)));
        if !same_engine {
            // A new engine (the gateway's policy settings changed) holds none of them.
            self.put.clear();
            self.engine = Some(Arc::downgrade(engine));
        }
        let (bundles, revision) = stored(c).await?;
        let mut seen = Vec::with_capacity(bundles.len());
        for (tenant, bundle) in bundles {
            seen.push(tenant.clone());
            let bundle = match bundle {
                Ok(b) => b,
                Err(e) => {
                    tracing::error!(tenant, error = %e, "policies: bundle not loaded");
                    continue;
                }
            };
            if self.put.get(&tenant) == Some(&bundle.revision) {
                continue;
            }
            self.put.insert(tenant.clone(), bundle.revision.clone());
            let e = engine.clone();
            // Compiling and running the bundle's tests is CPU work: off the control thread.
            let put = tokio::task::spawn_blocking(move || e.put_bundle(&tenant, bundle)).await?;
            if let Err(e) = put {
                tracing::error!(error = %e, "policies: bundle refused");
            }
        }
        let gone: Vec<String> = self
            .put
            .keys()
            .filter(|t| !seen.contains(t))
            .cloned()
            .collect();
        for tenant in gone {
            self.put.remove(&tenant);
            engine.remove_tenant(&tenant);
            tracing::info!(tenant, "policy tenant removed (gone from the store)");
        }
        Ok(revision)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tenant_names_are_one_key_segment() {
        for ok in ["acme", "a.b-c_d", "A9"] {
            assert!(check_tenant(ok).is_ok(), "{ok}");
        }
        for bad in ["", ".", "..", "a/b", "a b", "ü", &"x".repeat(254)] {
            assert!(check_tenant(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn a_stored_bundle_has_the_revision_every_gateway_computes() {
        let b = StoredBundle {
            modules: BTreeMap::from([(
                "authz.rego".into(),
                "package authz\ndefault decision := false\n".into(),
            )]),
            data: None,
        };
        let text = serde_json::to_vec(&b).unwrap();
        let back: StoredBundle = serde_json::from_slice(&text).unwrap();
        assert_eq!(
            back.bundle().unwrap().revision,
            b.bundle().unwrap().revision
        );
        let other = StoredBundle {
            data: Some(serde_json::json!({"x": 1})),
            ..b.clone()
        };
        assert_ne!(
            other.bundle().unwrap().revision,
            b.bundle().unwrap().revision
        );
        assert!(serde_json::from_str::<StoredBundle>(r#"{"modules":{},"extra":1}"#).is_err());
    }
}

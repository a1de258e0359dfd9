//! The platform's side of RampartPolicies: a spec made the bundle the store keeps
//! (`policy::store`), checked as a gateway would check it before anything is written, and
//! the proxies' `GET /policy/tenants` judged for one revision.

use std::time::Duration;

use rampart_operator::crds::RampartPolicySpec;
use rampart_operator::rollout::ConfigStatus;
use rampart_policy::Compiled;
use serde_json::Value;

use crate::policy::store::{StoredBundle, check_tenant};

/// Longest evaluation of one of the bundle's tests while checking it.
const TEST_LIMIT: Duration = Duration::from_secs(1);

/// The bundle a RampartPolicy's spec (as JSON) stores, checked: its tenant a key of its own,
/// its data an object, its modules compiling and its `test_*` rules passing. Returns it with
/// the revision every gateway will report for it.
pub(crate) fn checked_bundle(spec: &Value) -> Result<(StoredBundle, String), String> {
    let spec: RampartPolicySpec =
        serde_json::from_value(spec.clone()).map_err(|e| format!("spec: {e}"))?;
    check_tenant(&spec.tenant)?;
    let data = match &spec.data {
        Some(text) => Some(serde_json::from_str::<Value>(text).map_err(|e| format!("data: {e}"))?),
        None => None,
    };
    let stored = StoredBundle {
        modules: spec.modules,
        data,
    };
    let bundle = stored.bundle().map_err(|e| e.to_string())?;
    Compiled::compile_tested(&bundle, TEST_LIMIT, false).map_err(|e| e.to_string())?;
    Ok((stored, bundle.revision))
}

/// Every proxy's `/policy/tenants` judged for `tenant` at `revision`: a refusal of that
/// revision anywhere is a NACK; Acked once every proxy decides with it; with the sum of
/// its `(decisions, errors)`.
pub(crate) fn judge(tenant: &str, revision: &str, bodies: &[Value]) -> (ConfigStatus, (u64, u64)) {
    let mut pending = bodies.is_empty();
    let mut counts = (0, 0);
    for (i, body) in bodies.iter().enumerate() {
        let entry = body
            .as_array()
            .into_iter()
            .flatten()
            .find(|t| t["tenant"] == tenant);
        let Some(t) = entry else {
            pending = true;
            continue;
        };
        if t["rejected"]["revision"] == revision {
            let why = t["rejected"]["error"].as_str().unwrap_or("");
            return (
                ConfigStatus::Nacked(format!("proxy {i} refused the bundle: {why}")),
                counts,
            );
        }
        if t["revision"] != revision {
            pending = true;
            continue;
        }
        let d = &t["decisions"];
        let n = |k: &str| d[k].as_u64().unwrap_or(0);
        counts.0 += n("allowed") + n("denied") + n("errors");
        counts.1 += n("errors");
    }
    let status = if pending {
        ConfigStatus::Pending
    } else {
        ConfigStatus::Acked
    };
    (status, counts)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn spec(rego: &str) -> Value {
        json!({ "tenant": "acme", "modules": { "authz.rego": rego }, "data": "{\"a\": 1}" })
    }

    #[test]
    fn a_bundle_is_checked_before_it_is_stored() {
        let (stored, rev) =
            checked_bundle(&spec("package authz\ndefault decision := false\n")).unwrap();
        assert_eq!(stored.data, Some(json!({"a": 1})));
        assert_eq!(stored.bundle().unwrap().revision, rev);
        let failing = spec("package authz\ndefault decision := false\ntest_no if false\n");
        assert!(checked_bundle(&failing).unwrap_err().contains("test_no"));
        assert!(checked_bundle(&spec("package authz\ndecision := \n")).is_err());
        let mut bad_tenant = spec("package authz\n");
        bad_tenant["tenant"] = json!("a/b");
        assert!(checked_bundle(&bad_tenant).unwrap_err().contains("tenant"));
        let mut bad_data = spec("package authz\n");
        bad_data["data"] = json!("[1]");
        assert!(checked_bundle(&bad_data).is_err());
    }

    #[test]
    fn judges_every_proxy_for_the_revision() {
        let at = |rev: &str, rejected: Value, errors: u64| {
            json!([{ "tenant": "acme", "revision": rev, "rejected": rejected,
                     "decisions": { "allowed": 5, "denied": 1, "errors": errors } }])
        };
        let ok = at("r2", Value::Null, 1);
        assert_eq!(
            judge("acme", "r2", &[ok.clone(), ok.clone()]),
            (ConfigStatus::Acked, (14, 2))
        );
        assert_eq!(
            judge("acme", "r2", &[ok.clone(), at("r1", Value::Null, 0)]).0,
            ConfigStatus::Pending
        );
        assert_eq!(
            judge("acme", "r2", &[ok.clone(), json!([])]).0,
            ConfigStatus::Pending
        );
        assert_eq!(judge("acme", "r2", &[]).0, ConfigStatus::Pending);
        let refused = at("r1", json!({ "revision": "r2", "error": "bad" }), 0);
        assert!(
            matches!(judge("acme", "r2", &[ok.clone(), refused.clone()]).0, ConfigStatus::Nacked(e) if e.contains("bad"))
        );
        // An older refusal says nothing of this revision.
        assert_eq!(judge("acme", "r3", &[refused]).0, ConfigStatus::Pending);
    }
}

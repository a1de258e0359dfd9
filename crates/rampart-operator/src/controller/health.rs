//! A generation's health as Kubernetes keeps it: each backend Service's EndpointSlices say
//! which of its pods pass their readiness probes. A Service whose slices list endpoints and
//! none of them ready fails the generation sending traffic to it; a Service with no slices
//! at all (not selecting pods, or outside a cluster) says nothing.

use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::Client;
use kube::api::{Api, ListParams};

/// The first of `services` (`namespace`, `name`) with endpoints and none ready, said.
pub(crate) async fn unready(
    client: &Client,
    services: &[(String, String)],
) -> Result<Option<String>, kube::Error> {
    for (ns, name) in services {
        let api: Api<EndpointSlice> = Api::namespaced(client.clone(), ns);
        let slices = api
            .list(&ListParams::default().labels(&format!("kubernetes.io/service-name={name}")))
            .await?;
        if let Some(why) = none_ready(ns, name, &slices.items) {
            return Ok(Some(why));
        }
    }
    Ok(None)
}

/// Whether a Service's slices list endpoints and none is ready (`ready` unset counts as
/// ready, as the EndpointSlice API says to read it).
fn none_ready(ns: &str, name: &str, slices: &[EndpointSlice]) -> Option<String> {
    let endpoints: Vec<_> = slices.iter().flat_map(|s| &s.endpoints).collect();
    let ready = |e: &&k8s_openapi::api::discovery::v1::Endpoint| {
        e.conditions.as_ref().and_then(|c| c.ready) != Some(false)
    };
    (!endpoints.is_empty() && !endpoints.iter().any(ready)).then(|| {
        format!(
            "Service {ns}/{name}: none of its {} endpoints passes its readiness probe",
            endpoints.len()
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slice(ready: &[Option<bool>]) -> EndpointSlice {
        serde_json::from_value(serde_json::json!({
            "metadata": { "name": "s" },
            "addressType": "IPv4",
            "endpoints": ready.iter().map(|r| {
                let mut e = serde_json::json!({ "addresses": ["10.0.0.1"] });
                if let Some(r) = r { e["conditions"] = serde_json::json!({ "ready": r }); }
                e
            }).collect::<Vec<_>>(),
        }))
        .unwrap()
    }

    #[test]
    fn a_service_fails_only_when_it_has_endpoints_and_none_ready() {
        assert_eq!(none_ready("a", "b", &[]), None);
        assert_eq!(none_ready("a", "b", &[slice(&[])]), None);
        assert_eq!(none_ready("a", "b", &[slice(&[None])]), None);
        assert_eq!(
            none_ready("a", "b", &[slice(&[Some(false)]), slice(&[Some(true)])]),
            None
        );
        let why = none_ready("a", "b", &[slice(&[Some(false), Some(false)])]).unwrap();
        assert!(why.contains("a/b") && why.contains("2 endpoints"), "{why}");
    }
}

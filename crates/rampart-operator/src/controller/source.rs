//! Where RampartFunctions' components and RampartWasmPlugins' modules come from.

use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::Api;

use super::{Context, Platform};
use crate::crds::WasmSource;

/// A component's or module's bytes: a ConfigMap key (`binaryData`, or `data` as text) in
/// namespace `ns` (the resource's own), checked against `sha256` when given.
pub(crate) async fn wasm<P: Platform>(
    ctx: &Context<P>,
    ns: &str,
    source: &WasmSource,
) -> Result<Vec<u8>, String> {
    let WasmSource {
        config_map, sha256, ..
    } = source;
    let Some(r) = config_map else {
        return Err("only configMap sources are supported".into());
    };
    let api: Api<ConfigMap> = Api::namespaced(ctx.client.clone(), ns);
    let cm = api
        .get_opt(&r.name)
        .await
        .map_err(|e| e.to_string())?
        .ok_or_else(|| format!("no ConfigMap {ns}/{}", r.name))?;
    let bytes = cm
        .binary_data
        .as_ref()
        .and_then(|d| d.get(&r.key))
        .map(|b| b.0.clone())
        .or_else(|| {
            cm.data
                .as_ref()
                .and_then(|d| d.get(&r.key))
                .map(|t| t.clone().into_bytes())
        })
        .ok_or_else(|| format!("ConfigMap {ns}/{} has no key {:?}", r.name, r.key))?;
    if let Some(want) = sha256 {
        let got = sha256_hex(&bytes);
        if !got.eq_ignore_ascii_case(want) {
            return Err(format!(
                "its SHA-256 is {got}, not the {want} the source names"
            ));
        }
    }
    Ok(bytes)
}

fn sha256_hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    let d = ring::digest::digest(&ring::digest::SHA256, bytes);
    d.as_ref().iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

//! A plugin's HTTP calls (`proxy_http_call`), sent to the gateway's clusters and answered
//! back into the VM that made them.

use std::time::Duration;

use rampart_wasm::proxy_wasm::{CallResponse, HttpCall};

use crate::{Shared, convert};

/// The largest answer a plugin is handed (bigger ones fail the call).
const MAX_ANSWER: usize = 1 << 20;

/// A call without a timeout of its own gets this one.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);

/// Sends `call`; `None` when it got no answer (the plugin sees an empty response, as
/// Envoy's plugins do on a failed call).
pub(crate) async fn send(s: &Shared, call: &HttpCall) -> Option<CallResponse> {
    let upstreams = s.upstreams.as_ref()?;
    let Some(req) = convert::call_request(call) else {
        tracing::warn!(plugin = %s.plugin, upstream = %call.upstream, "a wasm plugin's HTTP call has an invalid method, path or authority");
        return None;
    };
    let timeout = if call.timeout.is_zero() {
        DEFAULT_TIMEOUT
    } else {
        call.timeout
    };
    match upstreams
        .call(&call.upstream, req, timeout, MAX_ANSWER)
        .await
    {
        Ok(resp) => Some(convert::call_response(resp)),
        Err(e) => {
            tracing::info!(plugin = %s.plugin, upstream = %call.upstream, error = %e, "a wasm plugin's HTTP call failed");
            None
        }
    }
}

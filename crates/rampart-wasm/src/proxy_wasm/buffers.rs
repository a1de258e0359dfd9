//! Buffers: the body buffered so far, an HTTP call's response body, the configurations.

use wasmtime::Caller;

use super::abi::{
    self, BAD_ARGUMENT, CALL_RESPONSE_BODY, INVALID_MEMORY_ACCESS, NOT_FOUND, OK,
    PLUGIN_CONFIGURATION, REQUEST_BODY, RESPONSE_BODY, VM_CONFIGURATION,
};
use super::host::Host;

/// Most bytes a plugin may make a body buffer hold.
pub const MAX_BODY_BYTES: usize = 16 << 20;

fn buffer(host: &mut Host, kind: i32) -> Option<&mut Vec<u8>> {
    match kind {
        REQUEST_BODY | RESPONSE_BODY => match &mut host.stream.body {
            Some((k, b)) if *k == kind => Some(b),
            _ => None,
        },
        CALL_RESPONSE_BODY => host.stream.call.as_mut().map(|c| &mut c.body),
        _ => None,
    }
}

pub(super) fn get_buffer_bytes(
    mut caller: Caller<'_, Host>,
    kind: i32,
    range: (i32, i32),
    out: (i32, i32),
) -> i32 {
    let host = caller.data_mut();
    let bytes = match kind {
        PLUGIN_CONFIGURATION => Some(host.plugin.config.as_slice()),
        VM_CONFIGURATION => Some(&[][..]),
        _ => buffer(host, kind).map(|b| b.as_slice()),
    };
    let Some(bytes) = bytes else {
        return NOT_FOUND;
    };
    let start = abi::u(range.0).min(bytes.len());
    let end = start.saturating_add(abi::u(range.1)).min(bytes.len());
    let part = bytes[start..end].to_vec();
    abi::give(&mut caller, &part, out.0, out.1)
}

/// Replaces `size` bytes at `start` with the data: at 0 with size 0 it prepends, at or past
/// the end it appends, with the whole size it replaces (Envoy's cases, and any range).
pub(super) fn set_buffer_bytes(
    mut caller: Caller<'_, Host>,
    kind: i32,
    range: (i32, i32),
    data: (i32, i32),
) -> i32 {
    let Some(data) = abi::read(&mut caller, data.0, data.1) else {
        return INVALID_MEMORY_ACCESS;
    };
    let Some(b) = buffer(caller.data_mut(), kind) else {
        return NOT_FOUND;
    };
    let start = abi::u(range.0).min(b.len());
    let end = start.saturating_add(abi::u(range.1)).min(b.len());
    if b.len() - (end - start) + data.len() > MAX_BODY_BYTES {
        return BAD_ARGUMENT;
    }
    b.splice(start..end, data);
    OK
}

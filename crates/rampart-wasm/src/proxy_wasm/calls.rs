//! What a plugin asks of the stream: answer it, resume it, call out, tick.

use std::time::Duration;

use wasmtime::Caller;

use super::abi::{self, BAD_ARGUMENT, INVALID_MEMORY_ACCESS, OK, STREAM_REQUEST, STREAM_RESPONSE};
use super::headers::{decode_pairs, headers_from_pairs};
use super::host::{Host, HttpCall, LocalResponse};

/// HTTP calls one VM may have outstanding.
pub const MAX_PENDING_CALLS: usize = 64;

pub(super) fn send_local_response(
    mut caller: Caller<'_, Host>,
    status: i32,
    body: (i32, i32),
    headers: (i32, i32),
) -> i32 {
    let (Some(body), Some(raw)) = (
        abi::read(&mut caller, body.0, body.1),
        abi::read(&mut caller, headers.0, headers.1),
    ) else {
        return INVALID_MEMORY_ACCESS;
    };
    let Some(headers) = decode_pairs(&raw) else {
        return BAD_ARGUMENT;
    };
    let Ok(status) = u16::try_from(status) else {
        return BAD_ARGUMENT;
    };
    if !(200..=599).contains(&status) {
        return BAD_ARGUMENT;
    }
    caller.data_mut().effects.local = Some(LocalResponse {
        status,
        headers,
        body,
    });
    OK
}

pub(super) fn continue_stream(mut caller: Caller<'_, Host>, stream: i32) -> i32 {
    if stream == STREAM_REQUEST || stream == STREAM_RESPONSE {
        caller.data_mut().effects.resumed = true;
    }
    OK
}

pub(super) fn set_effective_context(mut caller: Caller<'_, Host>, context: i32) -> i32 {
    caller.data_mut().stream.context = context;
    OK
}

pub(super) fn set_tick_period(mut caller: Caller<'_, Host>, ms: i32) -> i32 {
    let ms = abi::u(ms);
    caller.data_mut().tick = (ms > 0).then(|| Duration::from_millis(ms as u64));
    OK
}

/// `proxy_http_call`: recorded for the caller to send; the token comes back at once.
pub(super) fn http_call(
    mut caller: Caller<'_, Host>,
    upstream: (i32, i32),
    headers: (i32, i32),
    body: (i32, i32),
    (timeout_ms, token_out): (i32, i32),
) -> i32 {
    let (Some(upstream), Some(raw), Some(body)) = (
        abi::read(&mut caller, upstream.0, upstream.1),
        abi::read(&mut caller, headers.0, headers.1),
        abi::read(&mut caller, body.0, body.1),
    ) else {
        return INVALID_MEMORY_ACCESS;
    };
    let Some(pairs) = decode_pairs(&raw) else {
        return BAD_ARGUMENT;
    };
    let headers = headers_from_pairs(pairs);
    // As Envoy: a call needs a method, a path and an authority.
    if [":method", ":path", ":authority"]
        .iter()
        .any(|p| headers.pseudo(p).is_none())
    {
        return BAD_ARGUMENT;
    }
    let host = caller.data_mut();
    if host.effects.calls.len() >= MAX_PENDING_CALLS {
        return BAD_ARGUMENT;
    }
    let token = host.next_token;
    host.next_token = host.next_token.wrapping_add(1).max(1);
    host.effects.calls.push(HttpCall {
        token,
        context: host.stream.context,
        upstream: String::from_utf8_lossy(&upstream).into_owned(),
        headers,
        body,
        timeout: Duration::from_millis(abi::u(timeout_ms) as u64),
    });
    if abi::write(&mut caller, token_out, &token.to_le_bytes()) {
        OK
    } else {
        INVALID_MEMORY_ACCESS
    }
}

pub(super) fn current_time(mut caller: Caller<'_, Host>, out: i32) -> i32 {
    let ns = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
    if abi::write(&mut caller, out, &ns.to_le_bytes()) {
        OK
    } else {
        INVALID_MEMORY_ACCESS
    }
}

pub(super) fn proxy_log(mut caller: Caller<'_, Host>, level: i32, ptr: i32, len: i32) -> i32 {
    let Some(message) = abi::read(&mut caller, ptr, len) else {
        return INVALID_MEMORY_ACCESS;
    };
    let message = String::from_utf8_lossy(&message).into_owned();
    caller.data_mut().log(level, message);
    OK
}

pub(super) fn get_log_level(mut caller: Caller<'_, Host>, out: i32) -> i32 {
    // Info: the level the gateway logs plugins at.
    if abi::write(&mut caller, out, &2i32.to_le_bytes()) {
        OK
    } else {
        INVALID_MEMORY_ACCESS
    }
}

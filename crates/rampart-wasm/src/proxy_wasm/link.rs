//! The `env` functions of the ABI, linked for a plugin; `Unimplemented` for the rest.

use wasmtime::{Caller, Linker, Module, Val};

use super::abi::UNIMPLEMENTED;
use super::host::Host;
use super::{buffers, calls, headers, properties, shared};
use crate::WasmError;

type C<'a> = Caller<'a, Host>;

#[allow(clippy::needless_pass_by_value)] // the shape `map_err` hands it
fn engine(e: wasmtime::Error) -> WasmError {
    WasmError::Engine(format!("{e:#}"))
}

/// Links the ABI functions this host implements (their signatures are the ABI's), and
/// `Unimplemented` for the other `env` imports of `module`, whatever their signature.
pub(super) fn link_abi(linker: &mut Linker<Host>, module: &Module) -> Result<(), WasmError> {
    link_headers(linker)?;
    link_buffers_and_properties(linker)?;
    link_shared(linker)?;
    link_stream(linker)?;
    link_unimplemented(linker, module)
}

fn link_headers(l: &mut Linker<Host>) -> Result<(), WasmError> {
    l.func_wrap("env", "proxy_get_header_map_pairs", headers::get_pairs)
        .map_err(engine)?;
    l.func_wrap("env", "proxy_set_header_map_pairs", headers::set_pairs)
        .map_err(engine)?;
    l.func_wrap(
        "env",
        "proxy_get_header_map_value",
        |c: C<'_>, kind: i32, kp: i32, kl: i32, out_p: i32, out_l: i32| {
            headers::get_value(c, kind, (kp, kl), (out_p, out_l))
        },
    )
    .map_err(engine)?;
    l.func_wrap(
        "env",
        "proxy_add_header_map_value",
        |c: C<'_>, kind: i32, kp: i32, kl: i32, vp: i32, vl: i32| {
            headers::set_value(c, kind, (kp, kl), (vp, vl), false)
        },
    )
    .map_err(engine)?;
    l.func_wrap(
        "env",
        "proxy_replace_header_map_value",
        |c: C<'_>, kind: i32, kp: i32, kl: i32, vp: i32, vl: i32| {
            headers::set_value(c, kind, (kp, kl), (vp, vl), true)
        },
    )
    .map_err(engine)?;
    l.func_wrap(
        "env",
        "proxy_remove_header_map_value",
        headers::remove_value,
    )
    .map_err(engine)?;
    Ok(())
}

fn link_buffers_and_properties(l: &mut Linker<Host>) -> Result<(), WasmError> {
    l.func_wrap(
        "env",
        "proxy_get_buffer_bytes",
        |c: C<'_>, kind: i32, start: i32, max: i32, out_p: i32, out_l: i32| {
            buffers::get_buffer_bytes(c, kind, (start, max), (out_p, out_l))
        },
    )
    .map_err(engine)?;
    l.func_wrap(
        "env",
        "proxy_set_buffer_bytes",
        |c: C<'_>, kind: i32, start: i32, size: i32, dp: i32, dl: i32| {
            buffers::set_buffer_bytes(c, kind, (start, size), (dp, dl))
        },
    )
    .map_err(engine)?;
    l.func_wrap(
        "env",
        "proxy_get_property",
        |c: C<'_>, pp: i32, pl: i32, out_p: i32, out_l: i32| {
            properties::get_property(c, (pp, pl), (out_p, out_l))
        },
    )
    .map_err(engine)?;
    l.func_wrap(
        "env",
        "proxy_set_property",
        |c: C<'_>, pp: i32, pl: i32, vp: i32, vl: i32| {
            properties::set_property(c, (pp, pl), (vp, vl))
        },
    )
    .map_err(engine)?;
    Ok(())
}

fn link_shared(l: &mut Linker<Host>) -> Result<(), WasmError> {
    l.func_wrap(
        "env",
        "proxy_get_shared_data",
        |c: C<'_>, kp: i32, kl: i32, out_p: i32, out_l: i32, cas: i32| {
            shared::get_shared_data(c, (kp, kl), (out_p, out_l), cas)
        },
    )
    .map_err(engine)?;
    l.func_wrap(
        "env",
        "proxy_set_shared_data",
        |c: C<'_>, kp: i32, kl: i32, vp: i32, vl: i32, cas: i32| {
            shared::set_shared_data(c, (kp, kl), (vp, vl), cas)
        },
    )
    .map_err(engine)?;
    l.func_wrap(
        "env",
        "proxy_register_shared_queue",
        |c: C<'_>, np: i32, nl: i32, out: i32| shared::register_queue(c, (np, nl), out),
    )
    .map_err(engine)?;
    l.func_wrap(
        "env",
        "proxy_resolve_shared_queue",
        |c: C<'_>, vp: i32, vl: i32, np: i32, nl: i32, out: i32| {
            shared::resolve_queue(c, (vp, vl), (np, nl), out)
        },
    )
    .map_err(engine)?;
    l.func_wrap(
        "env",
        "proxy_enqueue_shared_queue",
        |c: C<'_>, id: i32, vp: i32, vl: i32| shared::enqueue(c, id, (vp, vl)),
    )
    .map_err(engine)?;
    l.func_wrap(
        "env",
        "proxy_dequeue_shared_queue",
        |c: C<'_>, id: i32, out_p: i32, out_l: i32| shared::dequeue(c, id, (out_p, out_l)),
    )
    .map_err(engine)?;
    Ok(())
}

fn link_stream(l: &mut Linker<Host>) -> Result<(), WasmError> {
    l.func_wrap(
        "env",
        "proxy_send_local_response",
        |c: C<'_>,
         status: i32,
         _dp: i32,
         _dl: i32,
         bp: i32,
         bl: i32,
         hp: i32,
         hl: i32,
         _grpc: i32| { calls::send_local_response(c, status, (bp, bl), (hp, hl)) },
    )
    .map_err(engine)?;
    l.func_wrap(
        "env",
        "proxy_http_call",
        |c: C<'_>,
         up: i32,
         ul: i32,
         hp: i32,
         hl: i32,
         bp: i32,
         bl: i32,
         _tp: i32,
         _tl: i32,
         timeout: i32,
         token: i32| {
            calls::http_call(c, (up, ul), (hp, hl), (bp, bl), (timeout, token))
        },
    )
    .map_err(engine)?;
    l.func_wrap("env", "proxy_continue_stream", calls::continue_stream)
        .map_err(engine)?;
    l.func_wrap("env", "proxy_close_stream", |_: i32| 0i32)
        .map_err(engine)?;
    l.func_wrap(
        "env",
        "proxy_set_effective_context",
        calls::set_effective_context,
    )
    .map_err(engine)?;
    l.func_wrap(
        "env",
        "proxy_set_tick_period_milliseconds",
        calls::set_tick_period,
    )
    .map_err(engine)?;
    l.func_wrap(
        "env",
        "proxy_get_current_time_nanoseconds",
        calls::current_time,
    )
    .map_err(engine)?;
    l.func_wrap("env", "proxy_log", calls::proxy_log)
        .map_err(engine)?;
    l.func_wrap("env", "proxy_get_log_level", calls::get_log_level)
        .map_err(engine)?;
    l.func_wrap("env", "proxy_done", || 0i32).map_err(engine)?;
    Ok(())
}

/// The `env` functions linked above.
const IMPLEMENTED: &[&str] = &[
    "proxy_get_header_map_pairs",
    "proxy_set_header_map_pairs",
    "proxy_get_header_map_value",
    "proxy_add_header_map_value",
    "proxy_replace_header_map_value",
    "proxy_remove_header_map_value",
    "proxy_get_buffer_bytes",
    "proxy_set_buffer_bytes",
    "proxy_get_property",
    "proxy_set_property",
    "proxy_get_shared_data",
    "proxy_set_shared_data",
    "proxy_register_shared_queue",
    "proxy_resolve_shared_queue",
    "proxy_enqueue_shared_queue",
    "proxy_dequeue_shared_queue",
    "proxy_send_local_response",
    "proxy_http_call",
    "proxy_continue_stream",
    "proxy_close_stream",
    "proxy_set_effective_context",
    "proxy_set_tick_period_milliseconds",
    "proxy_get_current_time_nanoseconds",
    "proxy_log",
    "proxy_get_log_level",
    "proxy_done",
];

/// `Unimplemented` for the `env` imports of `module` not linked yet (gRPC calls, metrics,
/// foreign functions).
fn link_unimplemented(linker: &mut Linker<Host>, module: &Module) -> Result<(), WasmError> {
    for import in module.imports() {
        if import.module() != "env" {
            continue;
        }
        if IMPLEMENTED.contains(&import.name()) {
            continue;
        }
        if let wasmtime::ExternType::Func(ty) = import.ty() {
            linker
                .func_new("env", import.name(), ty, |_, _, results| {
                    for r in results.iter_mut() {
                        *r = Val::I32(UNIMPLEMENTED);
                    }
                    Ok(())
                })
                .map_err(engine)?;
        }
    }
    Ok(())
}

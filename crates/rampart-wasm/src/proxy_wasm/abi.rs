//! The ABI's numbers and the guest-memory plumbing every host function shares.

use wasmtime::{Caller, Val};

use super::host::Host;

/// Header map types.
pub(super) const REQUEST_HEADERS: i32 = 0;
pub(super) const REQUEST_TRAILERS: i32 = 1;
pub(super) const RESPONSE_HEADERS: i32 = 2;
pub(super) const RESPONSE_TRAILERS: i32 = 3;
pub(super) const CALL_RESPONSE_HEADERS: i32 = 6;
pub(super) const CALL_RESPONSE_TRAILERS: i32 = 7;

/// Buffer types.
pub(super) const REQUEST_BODY: i32 = 0;
pub(super) const RESPONSE_BODY: i32 = 1;
pub(super) const CALL_RESPONSE_BODY: i32 = 4;
pub(super) const VM_CONFIGURATION: i32 = 6;
pub(super) const PLUGIN_CONFIGURATION: i32 = 7;

/// Stream types of `proxy_continue_stream` / `proxy_close_stream`.
pub(super) const STREAM_REQUEST: i32 = 0;
pub(super) const STREAM_RESPONSE: i32 = 1;

/// Status codes.
pub(super) const OK: i32 = 0;
pub(super) const NOT_FOUND: i32 = 1;
pub(super) const BAD_ARGUMENT: i32 = 2;
pub(super) const INVALID_MEMORY_ACCESS: i32 = 6;
pub(super) const EMPTY: i32 = 7;
pub(super) const CAS_MISMATCH: i32 = 8;
pub(super) const UNIMPLEMENTED: i32 = 12;

/// An ABI pointer or size: a wasm32 `u32` that travels as `i32`.
pub(super) fn u(x: i32) -> usize {
    usize::try_from(u32::from_le_bytes(x.to_le_bytes())).unwrap_or(usize::MAX)
}

/// `len` bytes at `ptr` of `data`, if they are all inside it.
pub(super) fn slice(data: &[u8], ptr: i32, len: i32) -> Option<&[u8]> {
    let start = u(ptr);
    data.get(start..start.checked_add(u(len))?)
}

/// Runs `f` on the guest's memory and the host state together (a key read in place while
/// the host's maps are searched); `None` when the guest exports no memory.
pub(super) fn with_memory<R>(
    caller: &mut Caller<'_, Host>,
    f: impl FnOnce(&mut [u8], &mut Host) -> R,
) -> Option<R> {
    let mem = caller.data().guest.memory?;
    let (data, host) = mem.data_and_store_mut(caller);
    Some(f(data, host))
}

/// A copy of `len` bytes at `ptr`; `None` if they are not all in the guest's memory.
pub(super) fn read(caller: &mut Caller<'_, Host>, ptr: i32, len: i32) -> Option<Vec<u8>> {
    with_memory(caller, |data, _| slice(data, ptr, len).map(<[u8]>::to_vec)).flatten()
}

/// Writes `bytes` at `ptr`; false if they do not fit in the guest's memory.
pub(super) fn write(caller: &mut Caller<'_, Host>, ptr: i32, bytes: &[u8]) -> bool {
    with_memory(caller, |data, _| {
        let start = u(ptr);
        match start
            .checked_add(bytes.len())
            .and_then(|end| data.get_mut(start..end))
        {
            Some(dst) => {
                dst.copy_from_slice(bytes);
                true
            }
            None => false,
        }
    })
    .unwrap_or(false)
}

/// Copies `bytes` into memory the guest allocates (its `proxy_on_memory_allocate`), and
/// writes where and how long at `out_ptr` and `out_len`: how the ABI returns data.
pub(super) fn give(caller: &mut Caller<'_, Host>, bytes: &[u8], out_ptr: i32, out_len: i32) -> i32 {
    let Some(alloc) = caller.data().guest.alloc else {
        return INVALID_MEMORY_ACCESS;
    };
    let Ok(len) = i32::try_from(bytes.len()) else {
        return BAD_ARGUMENT;
    };
    let mut res = [Val::I32(0)];
    if alloc
        .call(&mut *caller, &[Val::I32(len)], &mut res)
        .is_err()
    {
        return INVALID_MEMORY_ACCESS;
    }
    let ptr = res[0].i32().unwrap_or(0);
    let ok = write(caller, ptr, bytes)
        && write(caller, out_ptr, &ptr.to_le_bytes())
        && write(caller, out_len, &len.to_le_bytes());
    if ok { OK } else { INVALID_MEMORY_ACCESS }
}

/// `give`, or `NOT_FOUND` when there is nothing.
pub(super) fn give_some(
    caller: &mut Caller<'_, Host>,
    bytes: Option<&[u8]>,
    out: (i32, i32),
) -> i32 {
    match bytes {
        Some(b) => give(caller, b, out.0, out.1),
        None => NOT_FOUND,
    }
}

//! Capability profiles: what a guest may import, deny by default.

use std::path::PathBuf;

use wasmtime::{Caller, Extern, Linker, Module};
use wasmtime_wasi::{FsPerms, WasiCtxBuilder};

use crate::WasmError;

const P1: &str = "wasi_snapshot_preview1";

/// The imports a `clock-only` guest may have.
pub const CLOCK_ONLY: &[(&str, &str)] = &[(P1, "clock_time_get"), (P1, "clock_res_get")];

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Profile {
    /// The clocks and nothing else: any other import fails at link time, named.
    ClockOnly,
    /// WASI preview 1 (core modules) or preview 2 (components), with exactly these grants.
    Wasi(WasiGrants),
}

/// What a `wasi` guest is given. Sockets never are.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WasiGrants {
    pub preopens: Vec<Preopen>,
    pub env: Vec<(String, String)>,
    pub args: Vec<String>,
    /// The host's stdin, stdout and stderr (a command run from a terminal); otherwise none.
    pub inherit_stdio: bool,
}

/// A host directory the guest sees at `guest`; read-only unless `writable`. Paths resolve
/// inside it: `..` and symlinks cannot leave it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Preopen {
    pub host: PathBuf,
    pub guest: String,
    pub writable: bool,
}

impl Profile {
    pub fn name(&self) -> &'static str {
        match self {
            Profile::ClockOnly => "clock-only",
            Profile::Wasi(_) => "wasi",
        }
    }

    /// Every import of `module` is one the profile grants, or the first that is not.
    pub fn check_imports(&self, module: &Module) -> Result<(), WasmError> {
        for import in module.imports() {
            let granted = match self {
                Profile::ClockOnly => CLOCK_ONLY.contains(&(import.module(), import.name())),
                Profile::Wasi(_) => import.module() == P1,
            };
            if !granted {
                return Err(WasmError::ForbiddenImport {
                    module: import.module().to_owned(),
                    name: import.name().to_owned(),
                    profile: self.name(),
                });
            }
        }
        Ok(())
    }
}

impl WasiGrants {
    /// A WASI context with these grants and no network.
    pub(crate) fn builder(&self) -> Result<WasiCtxBuilder, WasmError> {
        let mut b = WasiCtxBuilder::new();
        b.args(&self.args)
            .envs(&self.env)
            .allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false);
        if self.inherit_stdio {
            b.inherit_stdio();
        }
        for p in &self.preopens {
            let perms = if p.writable {
                FsPerms::ReadWrite
            } else {
                FsPerms::ReadOnly
            };
            b.preopened_dir(&p.host, &p.guest, perms)
                .map_err(|e| WasmError::Io {
                    path: p.host.clone(),
                    source: std::io::Error::other(format!("{e:#}")),
                })?;
        }
        Ok(b)
    }
}

/// The clock functions of WASI preview 1, for `clock-only` guests.
pub(crate) fn link_clocks<T: 'static>(linker: &mut Linker<T>) -> Result<(), WasmError> {
    let engine = |e: wasmtime::Error| WasmError::Engine(format!("{e:#}"));
    linker
        .func_wrap(
            P1,
            "clock_time_get",
            |mut caller: Caller<'_, T>, id: i32, _precision: i64, out: i32| -> i32 {
                match now(id) {
                    Some(ns) => write_u64(&mut caller, out, ns),
                    None => ERRNO_INVAL,
                }
            },
        )
        .map_err(engine)?;
    linker
        .func_wrap(
            P1,
            "clock_res_get",
            |mut caller: Caller<'_, T>, id: i32, out: i32| -> i32 {
                match now(id) {
                    Some(_) => write_u64(&mut caller, out, 1),
                    None => ERRNO_INVAL,
                }
            },
        )
        .map_err(engine)?;
    Ok(())
}

const ERRNO_SUCCESS: i32 = 0;
const ERRNO_FAULT: i32 = 21;
const ERRNO_INVAL: i32 = 28;

/// Nanoseconds on WASI clock `id` (0 realtime, 1 monotonic).
fn now(id: i32) -> Option<u64> {
    static START: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    let ns = match id {
        0 => std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .ok()?
            .as_nanos(),
        1 => START
            .get_or_init(std::time::Instant::now)
            .elapsed()
            .as_nanos(),
        _ => return None,
    };
    u64::try_from(ns).ok()
}

/// Writes `value` little-endian at `at` in the guest's exported memory (EFAULT outside it).
fn write_u64<T>(caller: &mut Caller<'_, T>, at: i32, value: u64) -> i32 {
    let Some(Extern::Memory(mem)) = caller.get_export("memory") else {
        return ERRNO_FAULT;
    };
    let Ok(at) = usize::try_from(at as u32) else {
        return ERRNO_FAULT;
    };
    match mem.write(caller, at, &value.to_le_bytes()) {
        Ok(()) => ERRNO_SUCCESS,
        Err(_) => ERRNO_FAULT,
    }
}

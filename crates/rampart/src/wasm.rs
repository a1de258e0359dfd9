//! `rampart wasm run|keygen|sign|verify|inspect`: the WASM sandbox from the command line.
//! `run` executes a WASI command module or component like `wasmtime run`, under the same
//! limits and capability profiles the gateway uses, and only when the module is signed by
//! a trusted key (or `--allow-unsigned` is given, which is logged loudly).

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use rampart_wasm::signing::{self, TrustedKeys};
use rampart_wasm::{Limits, ModuleCache, Preopen, Profile, Sandbox, WasiGrants};

#[derive(clap::Subcommand)]
pub(crate) enum WasmCommand {
    /// Run a WASI command (a core module's `_start`, or a component's `wasi:cli/run`).
    Run(RunArgs),
    /// Make an Ed25519 key pair: the private key goes to --out (0600), the public key is
    /// printed (give it to `--trusted-key` or the config's `wasm.trusted_keys`).
    Keygen {
        #[arg(long)]
        out: PathBuf,
    },
    /// Sign a module: writes MODULE.sig.
    Sign {
        module: PathBuf,
        /// The private key `keygen` wrote.
        #[arg(long)]
        key: PathBuf,
    },
    /// Check MODULE.sig against trusted keys.
    Verify {
        module: PathBuf,
        #[arg(long = "trusted-key", required = true)]
        trusted_keys: Vec<String>,
    },
    /// A module's imports, exports and memory limits.
    Inspect { module: PathBuf },
}

#[derive(clap::Args)]
pub(crate) struct RunArgs {
    module: PathBuf,
    /// `clock-only` (the clocks, nothing else) or `wasi` (WASI p1/p2 with the grants below).
    #[arg(long, default_value = "wasi", value_parser = ["clock-only", "wasi"])]
    profile: String,
    /// Preopen a host directory: HOST::GUEST, read-only; HOST::GUEST::rw to allow writes.
    #[arg(long = "dir")]
    dirs: Vec<String>,
    /// An environment variable for the guest, K=V (nothing of the host's is passed).
    #[arg(long = "env")]
    envs: Vec<String>,
    /// Public keys (base64) a signature in MODULE.sig must verify under.
    #[arg(long = "trusted-key")]
    trusted_keys: Vec<String>,
    /// Run a module without checking its signature (development only).
    #[arg(long)]
    allow_unsigned: bool,
    /// How long the guest may run.
    #[arg(long, default_value = "10s", value_parser = crate::cli_args::duration)]
    deadline: Duration,
    /// Linear memory the guest may grow to, in MiB.
    #[arg(long, default_value_t = 64)]
    memory_mib: usize,
    /// Keep compiled modules here (reused while the engine's configuration is the same).
    #[arg(long)]
    cache: Option<PathBuf>,
    /// Arguments for the guest (after `--`).
    #[arg(last = true)]
    args: Vec<String>,
}

pub(crate) fn run(cmd: WasmCommand) -> Result<ExitCode> {
    match cmd {
        WasmCommand::Run(a) => run_module(&a),
        WasmCommand::Keygen { out } => keygen(&out),
        WasmCommand::Sign { module, key } => sign(&module, &key),
        WasmCommand::Verify {
            module,
            trusted_keys,
        } => {
            let bytes = read(&module)?;
            let i = check_signature(&module, &bytes, &trusted_keys)?;
            println!("{}: signed by trusted key {i}", module.display());
            Ok(ExitCode::SUCCESS)
        }
        WasmCommand::Inspect { module } => {
            let sandbox = Sandbox::new(Limits::default())?;
            for line in rampart_wasm::inspect::describe(sandbox.engine(), &read(&module)?)? {
                println!("{line}");
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn read(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))
}

/// `MODULE.sig` beside the module.
pub(crate) fn signature_path(module: &Path) -> PathBuf {
    let mut p = module.as_os_str().to_owned();
    p.push(".sig");
    PathBuf::from(p)
}

/// The index of the trusted key that signed `bytes`, or why none did.
fn check_signature(module: &Path, bytes: &[u8], trusted: &[String]) -> Result<usize> {
    let keys = TrustedKeys::parse(trusted)?;
    let sig_path = signature_path(module);
    let sig = std::fs::read_to_string(&sig_path)
        .map_err(|_| signing::SignatureError::Missing(sig_path.display().to_string()))?;
    Ok(keys.verify(bytes, &sig)?)
}

fn run_module(a: &RunArgs) -> Result<ExitCode> {
    let bytes = read(&a.module)?;
    if a.allow_unsigned {
        tracing::warn!(module = %a.module.display(), "running a module WITHOUT checking its signature (--allow-unsigned): development only");
    } else if a.trusted_keys.is_empty() {
        bail!(
            "{}: no --trusted-key given; sign the module and pass the key, or use --allow-unsigned for development",
            a.module.display()
        );
    } else {
        check_signature(&a.module, &bytes, &a.trusted_keys)?;
    }
    let profile = match a.profile.as_str() {
        "clock-only" => Profile::ClockOnly,
        _ => Profile::Wasi(grants(a)?),
    };
    let sandbox = Sandbox::new(Limits {
        deadline: a.deadline,
        memory_bytes: a.memory_mib << 20,
        ..Limits::default()
    })?;
    let cache = a.cache.as_ref().map(ModuleCache::new).transpose()?;
    let code = rampart_wasm::command::run(&sandbox, &bytes, &profile, cache.as_ref())?;
    Ok(ExitCode::from(u8::try_from(code).unwrap_or(1)))
}

fn grants(a: &RunArgs) -> Result<WasiGrants> {
    let preopens = a
        .dirs
        .iter()
        .map(|d| {
            let mut parts = d.split("::");
            let (Some(host), Some(guest)) = (parts.next(), parts.next()) else {
                bail!("--dir {d:?}: expected HOST::GUEST or HOST::GUEST::rw");
            };
            let writable = match parts.next() {
                None => false,
                Some("rw") => true,
                Some(other) => bail!("--dir {d:?}: {other:?} is not `rw`"),
            };
            Ok(Preopen {
                host: host.into(),
                guest: guest.into(),
                writable,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let env = a
        .envs
        .iter()
        .map(|e| {
            e.split_once('=')
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .with_context(|| format!("--env {e:?}: expected K=V"))
        })
        .collect::<Result<Vec<_>>>()?;
    let name = a.module.display().to_string();
    Ok(WasiGrants {
        preopens,
        env,
        args: std::iter::once(name)
            .chain(a.args.iter().cloned())
            .collect(),
        inherit_stdio: true,
    })
}

fn keygen(out: &Path) -> Result<ExitCode> {
    let (private, public) = signing::generate()?;
    crate::admin_token::write_private(out, &private)?;
    println!("{public}");
    Ok(ExitCode::SUCCESS)
}

fn sign(module: &Path, key: &Path) -> Result<ExitCode> {
    let private =
        std::fs::read_to_string(key).with_context(|| format!("cannot read {}", key.display()))?;
    let sig = signing::sign(&private, &read(module)?)?;
    let path = signature_path(module);
    std::fs::write(&path, format!("{sig}\n"))
        .with_context(|| format!("cannot write {}", path.display()))?;
    println!("{}", path.display());
    Ok(ExitCode::SUCCESS)
}

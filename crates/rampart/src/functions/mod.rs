//! `rampart fn deploy|list|logs|delete`: functions (wasi:http components) kept in the
//! config store, so every gateway following it serves them; and the gateway side that
//! follows the store (`store::follow`).

mod route;
pub(crate) mod store;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use rampart_fn::spec::{FunctionSpec, parse_size};

use crate::desired::StoreArgs;

#[derive(clap::Subcommand)]
pub(crate) enum FnCommand {
    /// Deploy (or redeploy) a wasi:http component (built for wasm32-wasip2, or for
    /// `wasmtime serve` / Spin): stored in the config store, served by every gateway.
    Deploy(DeployArgs),
    /// The functions in the store, with the gateway's view of each.
    List(AdminArgs),
    /// What a function wrote to stdout and stderr, by request id (from the gateway).
    Logs {
        name: String,
        /// Only this request's lines.
        #[arg(long)]
        request_id: Option<String>,
        /// The last N lines.
        #[arg(long, default_value_t = 100)]
        tail: usize,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Remove a function and its route.
    Delete {
        name: String,
        #[command(flatten)]
        store: StoreArgs,
    },
}

#[derive(clap::Args)]
pub(crate) struct DeployArgs {
    name: String,
    file: PathBuf,
    /// Route HOST/PATH (a path prefix; `/PATH` for any host) to the function.
    #[arg(long)]
    route: Option<String>,
    /// An environment variable for the function, K=V (repeatable).
    #[arg(long = "env")]
    envs: Vec<String>,
    /// Invocations running at once on each gateway.
    #[arg(long, default_value_t = 64)]
    max_concurrency: u32,
    /// Requests that may wait for a slot; past that, 503 at once.
    #[arg(long, default_value_t = 256)]
    max_queue: u32,
    /// Linear memory of one invocation.
    #[arg(long, default_value = "64MiB")]
    memory: String,
    /// One invocation, until its last response byte.
    #[arg(long, default_value = "5s", value_parser = crate::cli_args::duration)]
    timeout: Duration,
    /// The most a response body may carry.
    #[arg(long, default_value = "16MiB")]
    max_response: String,
    /// A cluster the function may send HTTP requests to, as http://CLUSTER/... (repeatable).
    #[arg(long = "cluster", value_delimiter = ',')]
    clusters: Vec<String>,
    /// The component's signature (default: FILE.sig, as `rampart wasm sign` writes).
    #[arg(long)]
    signature: Option<PathBuf>,
    /// Deploy without a signature (development only; gateways log it).
    #[arg(long)]
    allow_unsigned: bool,
    #[command(flatten)]
    store: StoreArgs,
}

#[derive(clap::Args)]
pub(crate) struct AdminArgs {
    /// The gateway's admin address.
    #[arg(long, default_value = "127.0.0.1:9901")]
    admin: SocketAddr,
    /// Where the admin token is (RAMPART_ADMIN_TOKEN overrides).
    #[arg(long, default_value = crate::admin_token::DEFAULT_TOKEN_FILE)]
    token_file: PathBuf,
    #[command(flatten)]
    store: StoreArgs,
}

pub(crate) fn run(cmd: FnCommand) -> ExitCode {
    let result = match cmd {
        FnCommand::Deploy(a) => deploy(&a),
        FnCommand::List(a) => list(&a),
        FnCommand::Logs {
            name,
            request_id,
            tail,
            admin,
        } => logs(&name, request_id.as_deref(), tail, &admin),
        FnCommand::Delete { name, store } => delete(&name, &store),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?)
}

/// The spec `a` describes for a component of `bytes`.
fn spec_of(a: &DeployArgs, bytes: &[u8]) -> Result<FunctionSpec> {
    // A component's preamble: `\0asm`, version 0x0d, layer 1 (a core module has layer 0).
    if bytes.len() < 8 || &bytes[..4] != b"\0asm" {
        bail!("{} is not WebAssembly", a.file.display());
    }
    if bytes[6..8] != [1, 0] {
        bail!(
            "{} is a core module, not a component: build it for wasm32-wasip2 (the wasi:http/proxy world)",
            a.file.display()
        );
    }
    let blob = rampart_fn::blob::BlobRef::of(bytes, rampart_fn::blob::CHUNK_BYTES)?;
    let mut spec = FunctionSpec::new(&a.name, blob);
    spec.signature = signature(a)?;
    spec.allow_unsigned = a.allow_unsigned;
    spec.env = a
        .envs
        .iter()
        .map(|kv| {
            kv.split_once('=')
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .with_context(|| format!("--env {kv:?}: expected K=V"))
        })
        .collect::<Result<BTreeMap<_, _>>>()?;
    spec.max_concurrency = a.max_concurrency;
    spec.max_queue = a.max_queue;
    spec.memory_bytes = parse_size(&a.memory).map_err(|e| anyhow::anyhow!("--memory: {e}"))?;
    spec.timeout_ms = u64::try_from(a.timeout.as_millis()).unwrap_or(u64::MAX);
    spec.max_response_bytes =
        parse_size(&a.max_response).map_err(|e| anyhow::anyhow!("--max-response: {e}"))?;
    spec.clusters = a.clusters.iter().map(|c| c.to_ascii_lowercase()).collect();
    spec.route = a.route.clone();
    if let Err(errors) = spec.check() {
        bail!("{}", errors.join("; "));
    }
    Ok(spec)
}

fn signature(a: &DeployArgs) -> Result<Option<String>> {
    let path = a
        .signature
        .clone()
        .unwrap_or_else(|| crate::wasm::signature_path(&a.file));
    match std::fs::read_to_string(&path) {
        Ok(s) => Ok(Some(s.trim().to_owned())),
        Err(_) if a.signature.is_none() && a.allow_unsigned => Ok(None),
        Err(e) => bail!(
            "no signature at {} ({e}): sign the component with `rampart wasm sign`, or deploy with --allow-unsigned for development",
            path.display()
        ),
    }
}

fn deploy(a: &DeployArgs) -> Result<ExitCode> {
    let bytes =
        std::fs::read(&a.file).with_context(|| format!("cannot read {}", a.file.display()))?;
    let spec = spec_of(a, &bytes)?;
    let routed = a.route.as_deref().map(route::parse).transpose()?;
    runtime()?.block_on(async {
        let mut c = crate::desired::client(&a.store)?;
        // The route is checked before anything is written.
        let route_change = match &routed {
            Some((host, path)) => {
                let state = crate::desired::load(&mut c).await?;
                let changed = route::with(&state.resources, &a.name, host, path)?;
                check_with(&state, &changed)?;
                Some((state, changed))
            }
            None => None,
        };
        store::put_blob(&mut c, &bytes).await?;
        store::put_spec(&mut c, &spec).await?;
        if let Some((state, changed)) = route_change {
            let puts: Vec<&_> = changed.iter().collect();
            crate::desired::commit(&mut c, &state, &puts, &[]).await?;
        }
        let freed = store::collect_garbage(&mut c).await?;
        println!(
            "function {} version {} deployed: {} bytes in {} chunk(s), sha256 {}{}{}",
            spec.name,
            spec.version(),
            spec.blob.size,
            spec.blob.chunks,
            spec.blob.sha256,
            if spec.signature.is_some() {
                ", signed"
            } else {
                ", UNSIGNED"
            },
            routed
                .as_ref()
                .map(|(h, p)| format!(", routed from {h}{p}"))
                .unwrap_or_default(),
        );
        if freed > 0 {
            println!("{freed} unused component(s) removed from the store");
        }
        Ok(ExitCode::SUCCESS)
    })
}

/// Fails with every error if the desired state with `changed` would not validate.
fn check_with(
    state: &crate::desired::State,
    changed: &[rampart_xds::desired::Resource],
) -> Result<()> {
    let mut merged: Vec<_> = state
        .resources
        .iter()
        .filter(|r| !changed.iter().any(|c| c.kind == r.kind && c.name == r.name))
        .cloned()
        .collect();
    merged.extend(changed.iter().cloned());
    crate::desired::check(&merged)
        .map(|_| ())
        .map_err(|errors| {
            anyhow::anyhow!("the route would break the config: {}", errors.join("; "))
        })
}

fn delete(name: &str, store_args: &StoreArgs) -> Result<ExitCode> {
    runtime()?.block_on(async {
        let mut c = crate::desired::client(store_args)?;
        let state = crate::desired::load(&mut c).await?;
        let unrouted = route::without(&state.resources, name);
        if !unrouted.is_empty() {
            check_with(&state, &unrouted)?;
            let puts: Vec<&_> = unrouted.iter().collect();
            crate::desired::commit(&mut c, &state, &puts, &[]).await?;
        }
        let existed = store::delete_spec(&mut c, name).await?;
        store::collect_garbage(&mut c).await?;
        if existed {
            println!("function {name} deleted");
            Ok(ExitCode::SUCCESS)
        } else {
            eprintln!("no function {name} in the store");
            Ok(ExitCode::FAILURE)
        }
    })
}

/// The gateway's JSON at `path`, or `None` (with a note) when it cannot be asked.
fn gateway(a: &AdminArgs, path: &str) -> Option<serde_json::Value> {
    let token = crate::admin_token::for_client(&a.token_file).ok();
    match crate::admin_client::send(
        a.admin,
        http::Method::GET,
        path,
        token.as_deref(),
        Vec::new(),
    ) {
        Ok((s, body)) if s.is_success() => serde_json::from_str(&body).ok(),
        Ok((s, body)) => {
            eprintln!(
                "note: the gateway at {} answered {s}: {}",
                a.admin,
                body.trim()
            );
            None
        }
        Err(e) => {
            eprintln!("note: {e:#}");
            None
        }
    }
}

fn list(a: &AdminArgs) -> Result<ExitCode> {
    let (specs, _) = runtime()?.block_on(async {
        let mut c = crate::desired::client(&a.store)?;
        store::specs(&mut c).await
    })?;
    let live = gateway(a, "/functions");
    let live_of = |name: &str| {
        live.as_ref()
            .and_then(|v| v["functions"].as_array())
            .and_then(|fs| fs.iter().find(|f| f["name"] == name).cloned())
            .unwrap_or_default()
    };
    println!(
        "{:<20} {:<12} {:>9} {:<24} {:<9} {:>8} {:>7} {:>6} {:>6}",
        "NAME", "SHA256", "SIZE", "ROUTE", "STATE", "CALLS", "ERRORS", "COLD", "WARM"
    );
    for (name, spec) in &specs {
        let Ok(spec) = spec else {
            println!("{name:<20} (unreadable spec)");
            continue;
        };
        let g = live_of(name);
        let num = |k: &str| g[k].as_u64().map_or("-".to_owned(), |n| n.to_string());
        let mut state = g["state"].as_str().unwrap_or("-").to_owned();
        if g["sha256"].as_str().is_some_and(|s| s != spec.blob.sha256) {
            state = "deploying".into();
        }
        println!(
            "{:<20} {:<12} {:>9} {:<24} {:<9} {:>8} {:>7} {:>6} {:>6}",
            name,
            &spec.blob.sha256[..12.min(spec.blob.sha256.len())],
            spec.blob.size,
            spec.route.as_deref().unwrap_or("-"),
            state,
            num("invocations"),
            num("errors"),
            num("cold_starts"),
            num("warm_starts"),
        );
        if let Some(why) = g["rejected"].as_str() {
            println!("  rejected: {why}");
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn logs(name: &str, request_id: Option<&str>, tail: usize, a: &AdminArgs) -> Result<ExitCode> {
    let Some(v) = gateway(a, &format!("/functions/{name}/logs")) else {
        bail!("no logs for {name} from the gateway at {}", a.admin);
    };
    let lines: Vec<&serde_json::Value> = v["lines"]
        .as_array()
        .map(|l| {
            l.iter()
                .filter(|l| request_id.is_none_or(|id| l["request_id"] == id))
                .collect()
        })
        .unwrap_or_default();
    for l in &lines[lines.len().saturating_sub(tail)..] {
        println!(
            "{} {} {:<6} {}",
            l["at_ms"],
            l["request_id"].as_str().unwrap_or(""),
            l["stream"].as_str().unwrap_or(""),
            l["line"].as_str().unwrap_or("")
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// Where `rampart up` keeps compiled functions: beside its store's data.
pub(crate) fn cache_dir(data_dir: &Path) -> PathBuf {
    data_dir
        .parent()
        .unwrap_or_else(|| Path::new("."))
        .join("functions")
}

/// A gateway's functions: the runtime and the store it follows.
pub(crate) struct Options {
    pub(crate) settings: rampart_fn::Settings,
    pub(crate) store: Vec<String>,
}

impl Options {
    /// The runtime, for `Plugins::functions`, and the task that keeps it equal to the
    /// store's functions (spawn it once the gateway runs).
    pub(crate) fn start(
        self,
        stop: tokio_util::sync::CancellationToken,
    ) -> Result<(
        std::sync::Arc<dyn rampart_proxy::function::FunctionHost>,
        impl Future<Output = ()>,
    )> {
        let functions =
            rampart_fn::Functions::new(self.settings).context("the function runtime")?;
        let follow = store::follow(functions.clone(), self.store, stop);
        Ok((std::sync::Arc::new(functions), follow))
    }
}

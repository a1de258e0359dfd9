//! `rampart`: one binary for the whole edge platform.
// Panics on outside input are forbidden here; unit tests may unwrap (clippy.toml).
#![warn(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand, ValueEnum};
use rampart_config::Config;
use rampart_proxy::{Gateway, Runtimes};
use tokio_util::sync::CancellationToken;

#[cfg(feature = "full")]
mod admin_client;
mod admin_token;
mod banner;
#[cfg(any(feature = "full", feature = "flows"))]
mod cli_args;
mod config_file;
#[cfg(feature = "full")]
mod control_plane;
#[cfg(feature = "full")]
mod dashboard;
mod demo;
#[cfg(feature = "full")]
mod desired;
#[cfg(feature = "flows")]
mod flow_labels;
#[cfg(feature = "flows")]
mod flows;
#[cfg(feature = "full")]
mod follow;
#[cfg(feature = "full")]
mod functions;
#[cfg(feature = "full")]
mod kv;
#[cfg(feature = "full")]
mod kv_bench;
#[cfg(feature = "full")]
mod openapi;
#[cfg(feature = "full")]
mod operator;
mod plugins;
#[cfg(feature = "full")]
mod policy;
mod sidecar;
#[cfg(feature = "full")]
mod up_stack;
#[cfg(feature = "full")]
mod wasm;
#[cfg(feature = "full")]
mod xds_client;

/// mimalloc: measurably less CPU than glibc malloc on the proxy's many small, short-lived
/// allocations (at 1000 connections, 4.3 vs 5.9 CPU-seconds per 100k requests). Built with
/// `no_thp`: transparent huge pages would fault in 2 MiB per thread and add ~6 MiB idle.
#[cfg(feature = "mimalloc")]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Where `rampart up` starts its built-in upstream (the demo config's `demo` cluster).
const DEMO_UPSTREAM: &str = "127.0.0.1:8081";

#[derive(Parser)]
#[command(
    name = "rampart",
    version,
    about = "Rampart: a cloud-native edge platform in one binary"
)]
struct Cli {
    /// Log format for operational logs (stderr).
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    /// What to log, as RUST_LOG directives (e.g. `debug`, `info,openraft=debug`); overrides
    /// RUST_LOG. Default: Rampart's own logs at info, its dependencies' at warn.
    #[arg(long, global = true)]
    log_level: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Run the whole stack on embedded defaults: the gateway on 127.0.0.1:8080, admin on
    /// 127.0.0.1:9901, and a built-in demo upstream on 127.0.0.1:8081.
    Up(UpArgs),
    /// Run the gateway from a config file; reloads it on change and on SIGHUP.
    Serve {
        #[arg(long, short)]
        config: PathBuf,
        /// How often to check the config file for changes (0s disables watching).
        #[arg(long, default_value = "1s")]
        watch_interval: String,
    },
    /// Check a config file; prints every error with its field path, exits non-zero if any.
    Validate {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Run as a sidecar in front of a local application: an inbound listener forwarding to
    /// 127.0.0.1:APP_PORT, and an outbound listener for the application's egress.
    #[command(args_conflicts_with_subcommands = true)]
    Sidecar {
        #[command(subcommand)]
        command: Option<SidecarCommand>,
        #[command(flatten)]
        run: Option<SidecarArgs>,
    },
    /// The replicated config store (etcd v3 API): run a node, or use one as a client.
    #[cfg(feature = "full")]
    Kv(kv::KvArgs),
    /// Rego policies: evaluate a query (like `opa eval`) or run a bundle's tests (`opa test`).
    #[cfg(feature = "full")]
    Policy(policy::PolicyArgs),
    /// TCP flow tracing with eBPF: `watch` (JSON lines), `top`, `serve` (Prometheus).
    #[cfg(feature = "flows")]
    Flows(flows::FlowsArgs),
    /// Serve a config file's listeners, routes and clusters over Envoy's xDS (ADS, State of
    /// the World and Delta) on 127.0.0.1:18000.
    #[cfg(feature = "full")]
    ControlPlane(control_plane::ControlPlaneArgs),
    /// Run a gateway that takes its listeners, routes and clusters from a control plane
    /// over xDS (Delta ADS), keeping the last good config when the control plane is gone.
    #[cfg(feature = "full")]
    Proxy(xds_client::ProxyArgs),
    /// Create or update resources in the config store from multi-document YAML.
    #[cfg(feature = "full")]
    Apply(desired::ApplyArgs),
    /// Show resources kept in the config store.
    #[cfg(feature = "full")]
    Get(desired::GetArgs),
    /// Remove a resource from the config store.
    #[cfg(feature = "full")]
    Delete(desired::DeleteArgs),
    /// Ask a control plane what each node was sent and answered.
    #[cfg(feature = "full")]
    #[command(subcommand)]
    Xds(control_plane::XdsCommand),
    /// The WASM sandbox: run a WASI command under a capability profile, sign and verify
    /// modules, inspect one.
    #[cfg(feature = "full")]
    #[command(subcommand)]
    Wasm(wasm::WasmCommand),
    /// Functions (wasi:http components) in the config store, served by every gateway.
    #[cfg(feature = "full")]
    #[command(subcommand, name = "fn")]
    Fn(functions::FnCommand),
    /// OpenAPI 3.1 specs: lint one, import its operations as validated routes.
    #[cfg(feature = "full")]
    #[command(subcommand)]
    Openapi(openapi::OpenApiCommand),
    /// The Kubernetes operator: its CRDs.
    #[cfg(feature = "full")]
    #[command(subcommand)]
    Operator(operator::OperatorCommand),
    /// Run the built-in demo upstream alone (for tests and benchmarks).
    DemoUpstream {
        #[arg(long, default_value = DEMO_UPSTREAM)]
        listen: SocketAddr,
        #[arg(long, default_value = "demo")]
        name: String,
    },
}

#[derive(clap::Args)]
struct UpArgs {
    /// Use this gateway config instead of the embedded demo. With the store, its listeners,
    /// routes and clusters are imported into an empty store and changed with `rampart
    /// apply`; with --no-store, the file is reloaded on change and SIGHUP.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Do not start the built-in demo upstream.
    #[arg(long)]
    no_demo_upstream: bool,
    /// Where the embedded config store (etcd API on 127.0.0.1:2379) keeps its data.
    #[arg(long, default_value = "rampart-data/kv")]
    data_dir: PathBuf,
    /// Do not start the embedded config store (nor the control plane: the gateway then
    /// runs on the config itself, reloading the file on change).
    #[arg(long)]
    no_store: bool,
    /// Where the embedded control plane serves ADS (the gateway is its first client).
    #[arg(long, default_value = "127.0.0.1:18000")]
    xds_listen: SocketAddr,
    /// The control plane's `/status` and `/metrics` (`rampart xds status`).
    #[arg(long, default_value = "127.0.0.1:18001")]
    xds_admin: SocketAddr,
    /// Where the demo's policy bundles (one directory per tenant) are written and watched.
    #[arg(long, default_value = "rampart-data/policy/tenants")]
    policy_dir: PathBuf,
    /// The admin API's bearer token (created, mode 0600, when missing), unless the config
    /// names its own `admin.token_file`. Default: `admin.token` beside --data-dir
    /// (rampart-data/admin.token).
    #[arg(long)]
    admin_token_file: Option<PathBuf>,
    /// Where eBPF flow metrics are served when tracing can run (root, BTF, tracefs; builds
    /// with the `flows` feature). "off" disables tracing.
    #[arg(long, default_value = "127.0.0.1:9435")]
    flows_listen: String,
    /// The bpffs directory where the gateway shares its connections' route, cluster and
    /// tenant with other processes (`rampart flows top --by route`). "off" keeps them
    /// in-process.
    #[cfg(feature = "flows")]
    #[arg(long, default_value = rampart_flows::DEFAULT_LABELS_PIN_DIR)]
    flow_labels_dir: String,
    #[cfg(feature = "full")]
    /// A function (`rampart fn deploy`) unused this long is dropped from memory; its next
    /// request loads it from the compiled cache (0s: after every request).
    #[arg(long, default_value = "5m", value_parser = cli_args::duration)]
    fn_idle_timeout: Duration,
}

#[derive(clap::Args)]
struct SidecarArgs {
    /// The local application's port (on 127.0.0.1).
    #[arg(long)]
    app_port: u16,
    /// Most connections to the application; further requests wait for a free one.
    #[arg(long, default_value_t = 64)]
    app_max_connections: usize,
    #[arg(long, default_value = "0.0.0.0:15006")]
    inbound: SocketAddr,
    /// The transparent outbound listener (used when --config defines no listeners).
    #[arg(long, default_value = "127.0.0.1:15001")]
    outbound: SocketAddr,
    #[arg(long, default_value = "127.0.0.1:15000")]
    admin: SocketAddr,
    /// Gateway config for the outbound side (its listeners, routes and clusters).
    #[arg(long)]
    config: Option<PathBuf>,
    #[arg(long, default_value_t = 1)]
    workers: usize,
    /// Access log format: text, json or off (unless --config sets one).
    #[arg(long, default_value = "off")]
    access_log: String,
}

#[derive(Subcommand)]
enum SidecarCommand {
    /// Print (or apply, or remove) the iptables rules that send the application's traffic
    /// through the sidecar.
    Iptables(IptablesArgs),
}

#[derive(clap::Args)]
struct IptablesArgs {
    #[arg(long, default_value_t = 15006)]
    inbound_port: u16,
    #[arg(long, default_value_t = 15001)]
    outbound_port: u16,
    /// Inbound ports to capture (comma-separated); all TCP ports when absent.
    #[arg(long, value_delimiter = ',')]
    app_ports: Vec<u16>,
    /// The user the sidecar runs as: its own connections are not redirected.
    #[arg(long)]
    proxy_uid: u32,
    /// Install the rules instead of printing them.
    #[arg(long, conflicts_with = "remove")]
    apply: bool,
    /// Remove previously installed rules.
    #[arg(long)]
    remove: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format, cli.log_level.as_deref());
    match run(cli.command) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("rampart: {e:#}");
            if let Some(advice) = advice(&e) {
                eprintln!("rampart: {advice}");
            }
            ExitCode::FAILURE
        }
    }
}

/// What to do about an error a user can fix, when it is one.
fn advice(e: &anyhow::Error) -> Option<&'static str> {
    let io = e.chain().find_map(|c| c.downcast_ref::<std::io::Error>())?;
    match io.kind() {
        std::io::ErrorKind::AddrInUse => Some(
            "another process listens on that port: stop it (`ss -ltnp` names it), or move this one (`rampart up --help` lists the address flags; --config moves the gateway and admin ports)",
        ),
        std::io::ErrorKind::PermissionDenied => Some(
            "not allowed: ports below 1024 need root or CAP_NET_BIND_SERVICE, and data directories must be writable",
        ),
        _ => None,
    }
}

/// Rampart's crates (every target starting with `rampart`) at info, dependencies at warn:
/// openraft, h2 and kube are chatty at info.
const DEFAULT_LOG: &str = "warn,rampart=info";

fn init_logging(format: LogFormat, level: Option<&str>) {
    let filter = match level {
        Some(l) => tracing_subscriber::EnvFilter::try_new(l).unwrap_or_else(|e| {
            eprintln!("rampart: --log-level {l:?}: {e}; using {DEFAULT_LOG:?}");
            tracing_subscriber::EnvFilter::new(DEFAULT_LOG)
        }),
        None => tracing_subscriber::EnvFilter::try_from_default_env()
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(DEFAULT_LOG)),
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

fn run(cmd: Command) -> Result<ExitCode> {
    match cmd {
        Command::Validate { config } => Ok(validate(&config)),
        #[cfg(feature = "full")]
        Command::Kv(args) => kv::run(args),
        #[cfg(feature = "full")]
        Command::Policy(args) => Ok(policy::run(args)),
        #[cfg(feature = "flows")]
        Command::Flows(args) => Ok(flows::run(args)),
        Command::Serve {
            config,
            watch_interval,
        } => {
            let every = rampart_config::duration::parse_duration(&watch_interval)
                .context("--watch-interval")?;
            let (cfg, bytes) = load(&config)?;
            let around = Around {
                file: Some((&config, bytes)),
                watch_every: every,
                ..Around::default()
            };
            serve(cfg, around)
        }
        Command::Up(args) => up(args),
        Command::Sidecar {
            command: Some(SidecarCommand::Iptables(args)),
            ..
        } => sidecar_iptables(args),
        Command::Sidecar {
            command: None,
            run: Some(args),
        } => sidecar(args),
        Command::Sidecar { .. } => {
            anyhow::bail!("rampart sidecar needs --app-port (or the iptables subcommand)")
        }
        #[cfg(feature = "full")]
        Command::ControlPlane(args) => control_plane::run(&args),
        #[cfg(feature = "full")]
        Command::Xds(control_plane::XdsCommand::Status(args)) => control_plane::status(&args),
        #[cfg(feature = "full")]
        Command::Wasm(cmd) => wasm::run(cmd),
        #[cfg(feature = "full")]
        Command::Fn(cmd) => Ok(functions::run(cmd)),
        #[cfg(feature = "full")]
        Command::Openapi(cmd) => Ok(openapi::run(cmd)),
        #[cfg(feature = "full")]
        Command::Operator(cmd) => operator::run(&cmd),
        #[cfg(feature = "full")]
        Command::Proxy(args) => xds_client::proxy(args),
        #[cfg(feature = "full")]
        Command::Apply(args) => desired::apply(&args),
        #[cfg(feature = "full")]
        Command::Get(args) => desired::get(&args),
        #[cfg(feature = "full")]
        Command::Delete(args) => desired::delete(&args),
        Command::DemoUpstream { listen, name } => demo_upstream(listen, name),
    }
}

/// `rampart up`: the gateway on the given config or the embedded demo, with the embedded
/// store, the demo upstream and in-process flow tracing unless turned off.
fn up(a: UpArgs) -> Result<ExitCode> {
    let started = std::time::Instant::now();
    #[cfg(feature = "flows")]
    let flows = in_process_flows(&a.flows_listen, &a.flow_labels_dir);
    #[cfg(not(feature = "flows"))]
    let flows = in_process_flows(&a.flows_listen);
    let admin_token_file = a.admin_token_file.unwrap_or_else(|| {
        a.data_dir
            .parent()
            .unwrap_or_else(|| std::path::Path::new("."))
            .join("admin.token")
    });
    let demo = (!a.no_demo_upstream).then(|| DEMO_UPSTREAM.parse().expect("constant address"));
    // The store and its control plane need four ports; when one is taken, the gateway
    // still starts, on the config itself (as with --no-store), and says why.
    let mut store_off = None;
    let store = if a.no_store {
        None
    } else {
        embedded_store(a.data_dir.clone()).and_then(|s| {
            let ports = store_ports(&s, a.xds_listen, a.xds_admin);
            match ports.iter().find_map(|&addr| {
                std::net::TcpListener::bind(addr).err().map(|e| (addr, e))
            }) {
                None => Some(s),
                Some((addr, e)) => {
                    let why = format!(
                        "{addr} is not free ({e}): is etcd or another `rampart up` running? Stop it, or move this one with --data-dir and the address flags; the gateway runs on its config meanwhile"
                    );
                    tracing::warn!("the config store, control plane and xDS are off: {why}");
                    store_off = Some(why);
                    None
                }
            }
        })
    };
    let (mut cfg, file) = match &a.config {
        Some(path) => {
            let (cfg, bytes) = load(path)?;
            (cfg, Some((path.as_path(), bytes)))
        }
        None => {
            let mut cfg =
                rampart_config::from_yaml(demo::DEMO_CONFIG).context("embedded demo config")?;
            demo::demo_policy(&mut cfg, &a.policy_dir)?;
            (cfg, None)
        }
    };
    demo::admin_token(&mut cfg, &admin_token_file)?;
    let mut banner = banner::Banner {
        listeners: cfg
            .listeners
            .iter()
            .map(|l| (l.name.clone(), l.address))
            .collect(),
        admin: cfg.admin.as_ref().map(|a| a.address),
        token_file: cfg.admin.as_ref().and_then(|a| a.token_file.clone()),
        dashboard: cfg!(feature = "full"),
        policy_dir: a.config.is_none().then(|| a.policy_dir.clone()),
        store_off: store_off.clone(),
        demo_upstream: demo,
        ..banner::Banner::default()
    };
    let mut around = Around {
        watch_every: Duration::from_secs(1),
        demo_upstream: demo,
        ..Around::default()
    };
    #[cfg(feature = "flows")]
    {
        if let Ok(f) = &flows {
            around.connection_labels = f.labels.clone();
        }
        banner.flows = Some(flows.as_ref().map(|f| f.metrics).map_err(Clone::clone));
    }
    #[cfg(not(feature = "flows"))]
    {
        banner.flows = flows.err().map(Err);
    }
    #[cfg(feature = "full")]
    if let Some(store) = store {
        // The real path: store → control plane → ADS → this gateway.
        let (bootstrap, import) = up_stack::split(cfg)?;
        around.xds = Some(xds_client::XdsSource::new(
            vec![format!("http://{}", a.xds_listen)],
            "rampart-up".into(),
            bootstrap.raw.clone(),
        ));
        around.control_plane = Some(up_stack::ControlPlane {
            listen: a.xds_listen,
            admin: a.xds_admin,
            store: store.listen_client,
            import,
        });
        let mut settings = rampart_fn::Settings::new(functions::cache_dir(&a.data_dir));
        settings.idle_timeout = a.fn_idle_timeout;
        settings.trusted_keys = bootstrap.wasm.trusted_keys.clone();
        around.functions = Some(functions::Options {
            settings,
            store: vec![store.listen_client.to_string()],
        });
        banner.store = Some((store.listen_client, a.data_dir.clone()));
        banner.xds = Some((a.xds_listen, a.xds_admin));
        banner.functions_cache = Some(functions::cache_dir(&a.data_dir));
        around
            .admin_pages
            .push(Arc::new(rampart_dashboard::Dashboard::new(
                dashboard::panels(
                    Some(vec![store.listen_client.to_string()]),
                    Some(a.xds_admin),
                    banner.flows.clone().and_then(Result::ok),
                ),
            )));
        around.store = Some(store);
        around.banner = Some((banner, started));
        return serve(bootstrap, around);
    }
    #[cfg(not(feature = "full"))]
    let _ = store;
    #[cfg(feature = "full")]
    {
        let mut panels = dashboard::panels(None, None, banner.flows.clone().and_then(Result::ok));
        let why = store_off.unwrap_or_else(|| "off (--no-store)".into());
        panels.extend(dashboard::off(&["store", "xds"], &why));
        around
            .admin_pages
            .push(Arc::new(rampart_dashboard::Dashboard::new(panels)));
    }
    #[cfg(not(feature = "full"))]
    let _ = store_off;
    around.file = file;
    around.banner = Some((banner, started));
    serve(cfg, around)
}

/// `rampart sidecar iptables`: prints, installs or removes the interception rules.
fn sidecar_iptables(a: IptablesArgs) -> Result<ExitCode> {
    let rules = if a.remove {
        sidecar::remove_rules()
    } else {
        sidecar::install_rules(&sidecar::Interception {
            inbound_port: a.inbound_port,
            outbound_port: a.outbound_port,
            app_ports: a.app_ports,
            proxy_uid: a.proxy_uid,
        })
    };
    if a.apply || a.remove {
        sidecar::run_rules(&rules, a.remove)?;
    } else {
        sidecar::print_rules(&rules);
    }
    Ok(ExitCode::SUCCESS)
}

/// `rampart sidecar`: the gateway with the sidecar's listeners on top of `--config`, if any.
fn sidecar(a: SidecarArgs) -> Result<ExitCode> {
    let base = match &a.config {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read {}", path.display()))?;
            rampart_config::parse_yaml(&text)
                .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?
        }
        None => rampart_config::RawConfig::default(),
    };
    let ports = sidecar::SidecarPorts {
        app_port: a.app_port,
        app_max_connections: a.app_max_connections,
        inbound: a.inbound,
        outbound: a.outbound,
        admin: a.admin,
        workers: a.workers,
        access_log: a.access_log,
    };
    let cfg = rampart_config::validate(sidecar::config(base, &ports))
        .map_err(|e| anyhow::anyhow!("sidecar config: {e}"))?;
    serve(cfg, Around::default())
}

/// `rampart demo-upstream`: the built-in upstream alone, until SIGTERM/SIGINT.
fn demo_upstream(listen: SocketAddr, name: String) -> Result<ExitCode> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(async {
        let stop = CancellationToken::new();
        let addr = rampart_proxy::demo::bind_and_serve(listen, name, stop.clone())
            .await
            .with_context(|| format!("cannot listen on {listen}"))?;
        tracing::info!(%addr, "demo upstream listening");
        wait_for_termination().await?;
        stop.cancel();
        Ok(ExitCode::SUCCESS)
    })
}

/// Reads and validates a config file; returns the config and the bytes it came from.
fn load(path: &std::path::Path) -> Result<(Config, Vec<u8>)> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let text =
        std::str::from_utf8(&bytes).with_context(|| format!("{} is not UTF-8", path.display()))?;
    let cfg = rampart_config::from_yaml_with(text, &plugins::filters())
        .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    Ok((cfg, bytes))
}

fn validate(path: &std::path::Path) -> ExitCode {
    match rampart_config::load_with(path, &plugins::filters()) {
        Ok(cfg) => {
            println!(
                "{}: ok ({} listener(s), {} route table(s), {} cluster(s))",
                path.display(),
                cfg.listeners.len(),
                cfg.route_tables.len(),
                cfg.clusters.len()
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            let errors = e.field_errors();
            eprintln!("{}: {} error(s)", path.display(), errors.len());
            for fe in errors {
                eprintln!("  {fe}");
            }
            ExitCode::FAILURE
        }
    }
}

/// Data-plane workers: one thread, one single-threaded runtime each.
struct Workers {
    handles: Vec<tokio::runtime::Handle>,
    threads: Vec<std::thread::JoinHandle<()>>,
    stop: CancellationToken,
}

impl Workers {
    fn start(n: usize) -> Result<Self> {
        let stop = CancellationToken::new();
        let mut handles = Vec::with_capacity(n);
        let mut threads = Vec::with_capacity(n);
        for i in 0..n {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            handles.push(rt.handle().clone());
            let stop = stop.clone();
            threads.push(
                std::thread::Builder::new()
                    .name(format!("rampart-worker-{i}"))
                    .spawn(move || {
                        rt.block_on(stop.cancelled());
                        // Connections still open past the drain deadline are dropped here.
                        rt.shutdown_timeout(Duration::from_millis(100));
                    })?,
            );
        }
        Ok(Self {
            handles,
            threads,
            stop,
        })
    }

    fn stop(self) {
        self.stop.cancel();
        for t in self.threads {
            let _ = t.join();
        }
    }
}

/// The config store `rampart up` embeds: one node, etcd's default ports on loopback.
#[cfg(feature = "full")]
type StoreConfig = rampart_kv::NodeConfig;
#[cfg(not(feature = "full"))]
type StoreConfig = std::convert::Infallible;

#[cfg(feature = "full")]
fn embedded_store(data_dir: PathBuf) -> Option<StoreConfig> {
    Some(rampart_kv::NodeConfig::single(
        "default",
        data_dir,
        SocketAddr::from(([127, 0, 0, 1], 2379)),
        SocketAddr::from(([127, 0, 0, 1], 2380)),
    ))
}

#[cfg(not(feature = "full"))]
fn embedded_store(_data_dir: PathBuf) -> Option<StoreConfig> {
    None
}

/// The addresses the embedded store and control plane listen on.
#[cfg(feature = "full")]
fn store_ports(s: &StoreConfig, xds: SocketAddr, xds_admin: SocketAddr) -> [SocketAddr; 4] {
    [s.listen_client, s.listen_peer, xds, xds_admin]
}

#[cfg(not(feature = "full"))]
fn store_ports(s: &StoreConfig, _: SocketAddr, _: SocketAddr) -> [SocketAddr; 0] {
    match *s {}
}

/// Runs flow tracing and its metrics endpoint on a thread while the returned guard lives,
/// when this build and this process can (root, kernel BTF, tracefs); otherwise logs why not.
#[cfg(feature = "flows")]
fn in_process_flows(listen: &str, labels_dir: &str) -> Result<InProcessFlows, String> {
    if listen == "off" {
        return Err("turned off (--flows-listen off)".into());
    }
    let addr: SocketAddr = match listen.parse() {
        Ok(a) => a,
        Err(e) => {
            tracing::warn!(listen, error = %e, "flows: bad --flows-listen; tracing off");
            return Err(format!("bad --flows-listen {listen:?}: {e}"));
        }
    };
    // The rest of the stack runs either way; the reason says what to do.
    let tracer = match rampart_flows::check_environment(false).and_then(|()| {
        rampart_flows::FlowTracer::start(rampart_flows::FlowTracerOptions::default())
    }) {
        Ok(t) => t,
        Err(e) => {
            tracing::warn!("flows: eBPF flow tracing is off: {e}");
            return Err(e.to_string());
        }
    };
    // Shared with other processes through maps pinned in bpffs, unless turned off. (This
    // tracer reads its own gateway's labels from its registry, without system calls.)
    let labels_dir = (labels_dir != "off").then(|| std::path::PathBuf::from(labels_dir));
    let created_labels_dir = labels_dir.as_ref().filter(|d| !d.exists()).cloned();
    let pinned = labels_dir.as_ref().and_then(|dir| {
        rampart_flows::PinnedLabels::open_or_create(dir)
            .inspect_err(|e| tracing::warn!("flows: connection labels stay in this process: {e}"))
            .ok()
    });
    // The gateway names its connections' flows (route, cluster, tenant) in the tracer.
    let labels = match flow_labels::LabelSink::new(
        Some(tracer.labels().clone()),
        pinned,
        created_labels_dir,
    ) {
        Ok(sink) => Some(Arc::new(sink) as Arc<dyn rampart_proxy::conn_labels::ConnectionLabels>),
        Err(e) => {
            tracing::warn!(error = %e, "flows: cannot read this process's network namespace; flows unlabelled");
            None
        }
    };
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = stop.clone();
    let thread = std::thread::Builder::new()
        .name("flows".into())
        .spawn(move || {
            if let Err(e) = flows::serve(tracer, addr, &flag) {
                tracing::warn!(error = %e, "flows: stopped");
            }
        })
        .map_err(|e| format!("cannot start the flows thread: {e}"))?;
    tracing::info!(%addr, "flows: eBPF tracing on; metrics at /metrics");
    Ok(InProcessFlows {
        stop,
        thread: Some(thread),
        labels,
        metrics: addr,
    })
}

#[cfg(not(feature = "flows"))]
fn in_process_flows(_listen: &str) -> Result<std::convert::Infallible, String> {
    Err("this binary was built without the `flows` feature".into())
}

/// Stops in-process tracing (detaching the programs) when dropped.
#[cfg(feature = "flows")]
struct InProcessFlows {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
    /// Where the gateway reports its connections' names.
    labels: Option<Arc<dyn rampart_proxy::conn_labels::ConnectionLabels>>,
    /// Where its metrics are served.
    metrics: SocketAddr,
}

#[cfg(feature = "flows")]
impl Drop for InProcessFlows {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Runs the gateway until SIGTERM/SIGINT; SIGHUP reloads `file`. The main thread runs the
/// control runtime (admin, DNS, reloads, signals); data-plane workers run on their own threads.
/// What `serve` runs besides the gateway.
#[derive(Default)]
struct Around<'a> {
    /// The config file to follow (polled every `watch_every` unless zero, and on SIGHUP),
    /// with the bytes the running config came from.
    file: Option<(&'a std::path::Path, Vec<u8>)>,
    watch_every: Duration,
    demo_upstream: Option<SocketAddr>,
    store: Option<StoreConfig>,
    /// Take listeners, routes and clusters from control planes.
    #[cfg(feature = "full")]
    xds: Option<xds_client::XdsSource>,
    /// Run a control plane on the store (started with it) before the gateway.
    #[cfg(feature = "full")]
    control_plane: Option<up_stack::ControlPlane>,
    /// Serve the store's functions and follow its policy bundles.
    #[cfg(feature = "full")]
    functions: Option<functions::Options>,
    /// Told each connection's route, cluster and tenant (in-process flow tracing).
    connection_labels: Option<Arc<dyn rampart_proxy::conn_labels::ConnectionLabels>>,
    /// Pages on the admin port (the dashboard).
    admin_pages: Vec<Arc<dyn rampart_proxy::admin_page::AdminPage>>,
    /// Printed once the gateway is ready, with when the command started.
    banner: Option<(banner::Banner, std::time::Instant)>,
}

fn serve(cfg: Config, around: Around<'_>) -> Result<ExitCode> {
    let Around {
        file,
        watch_every,
        demo_upstream,
        store,
        #[cfg(feature = "full")]
        xds,
        #[cfg(feature = "full")]
        control_plane,
        #[cfg(feature = "full")]
        functions,
        connection_labels,
        admin_pages,
        mut banner,
    } = around;
    let workers = Workers::start(cfg.workers)?;
    let control = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let drain = cfg.drain_timeout;
    let data = workers.handles.clone();
    let result = control.block_on(async {
        let stop_demo = CancellationToken::new();
        if let Some(addr) = demo_upstream {
            // The demo upstream is a convenience: without it the rest still starts.
            match rampart_proxy::demo::bind_and_serve(addr, "demo".into(), stop_demo.clone()).await
            {
                Ok(local) => tracing::info!(%local, "demo upstream listening"),
                Err(e) => {
                    tracing::warn!(
                        "the demo upstream cannot listen on {addr} ({e}); the demo routes answer 503 until something serves {addr} (stop what uses the port, or run with --no-demo-upstream)"
                    );
                    if let Some((b, _)) = banner.as_mut() {
                        b.demo_upstream = None;
                    }
                }
            }
        }
        #[cfg(feature = "full")]
        let store = match store {
            Some(cfg) => Some(rampart_kv::KvNode::start(cfg).await.context("cannot start the config store")?),
            None => None,
        };
        #[cfg(not(feature = "full"))]
        let _ = store;
        let stop_cp = CancellationToken::new();
        #[cfg(feature = "full")]
        if let Some(cp) = control_plane {
            up_stack::start(cp, stop_cp.clone()).await?;
        }
        let runtimes = Runtimes {
            data,
            control: tokio::runtime::Handle::current(),
        };
        let mut plugins = plugins::plugins();
        plugins.connection_labels = connection_labels;
        plugins.admin_pages = admin_pages;
        #[cfg(feature = "full")]
        let policy_store = functions.as_ref().map(|f| f.store.clone());
        #[cfg(feature = "full")]
        let follow = match functions {
            Some(f) => {
                let store = f.store.clone();
                plugins.services.push(Arc::new(move |env| {
                    env.provide(functions::store::module_store(store.clone()));
                }));
                let (host, follow) = f.start(stop_cp.clone())?;
                plugins.functions = Some(host);
                Some(follow)
            }
            None => None,
        };
        let gw = Gateway::start_with(cfg, runtimes, plugins).await?;
        if let Some((banner, started)) = banner {
            tokio::spawn(banner::print_when_ready(Arc::downgrade(&gw), banner, started));
        }
        #[cfg(feature = "full")]
        if let Some(follow) = follow {
            tokio::spawn(follow);
        }
        #[cfg(feature = "full")]
        if let Some(endpoints) = policy_store {
            tokio::spawn(policy::store::follow(
                Arc::downgrade(&gw),
                endpoints,
                stop_cp.clone(),
            ));
        }
        let hup = file.map(|(path, seen)| {
            let hup = Arc::new(tokio::sync::Notify::new());
            gw.add_source(Box::new(config_file::FileSource {
                path: path.to_path_buf(),
                every: watch_every,
                seen,
                hup: hup.clone(),
            }));
            hup
        });
        #[cfg(feature = "full")]
        if let Some(xds) = xds {
            gw.add_source(Box::new(xds));
        }
        let mut signals = Signals::new()?;
        signals.serve(hup.as_deref()).await;
        tracing::info!(deadline = ?drain, "shutting down: draining in-flight requests (signal again to stop now)");
        let clean = tokio::select! {
            clean = gw.shutdown(drain) => clean,
            () = signals.terminate() => {
                tracing::warn!("second signal: stopping without waiting for in-flight requests");
                false
            }
        };
        stop_demo.cancel();
        stop_cp.cancel();
        #[cfg(feature = "full")]
        if let Some(node) = store {
            node.shutdown().await;
        }
        tracing::info!(clean, "stopped");
        anyhow::Ok(ExitCode::SUCCESS)
    });
    workers.stop();
    result
}

/// The signals `serve` reacts to.
struct Signals {
    hup: tokio::signal::unix::Signal,
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl Signals {
    fn new() -> Result<Self> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Self {
            hup: signal(SignalKind::hangup())?,
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
        })
    }

    /// Has the config file read again on SIGHUP; returns on SIGTERM or SIGINT.
    async fn serve(&mut self, reload: Option<&tokio::sync::Notify>) {
        loop {
            tokio::select! {
                _ = self.hup.recv() => match reload {
                    Some(file) => {
                        tracing::info!("SIGHUP: reading the config file again");
                        file.notify_one();
                    }
                    None => tracing::warn!("SIGHUP ignored: running the embedded config, no file to reload"),
                },
                _ = self.term.recv() => return,
                _ = self.int.recv() => return,
            }
        }
    }

    async fn terminate(&mut self) {
        tokio::select! {
            _ = self.term.recv() => {}
            _ = self.int.recv() => {}
        }
    }
}

async fn wait_for_termination() -> Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    Ok(())
}

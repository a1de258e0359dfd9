//! `rampart operator run`: the controller in a process — a Kubernetes client (a kubeconfig,
//! or the pod's service account), the Lease, the metrics endpoint, and the store, control
//! plane and proxies it programs and watches.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result};
use rampart_operator::controller::{self, Lease, LeaseSettings, Metrics, Settings};
use rampart_operator::kube;
use tokio_util::sync::CancellationToken;

use super::platform::StorePlatform;

#[derive(clap::Args)]
pub(crate) struct RunArgs {
    /// A kubeconfig file (default: $KUBECONFIG, ~/.kube/config, or the pod's service account).
    #[arg(long)]
    kubeconfig: Option<std::path::PathBuf>,
    /// The config store the Gateway API routes are written to (client endpoints,
    /// comma-separated).
    #[arg(long, default_value = "127.0.0.1:2379", value_delimiter = ',')]
    store: Vec<String>,
    /// The control plane's admin address (`/status`: what each proxy acknowledged).
    #[arg(long, default_value = "127.0.0.1:18001")]
    control_plane_admin: String,
    /// The proxies' admin addresses, whose `/metrics` give each route's error rate while a
    /// generation bakes (comma-separated; none: error rates are not judged).
    #[arg(long, value_delimiter = ',')]
    proxy_admin: Vec<String>,
    /// The GatewayClass whose Gateways this operator programs.
    #[arg(long, default_value = "rampart")]
    gateway_class: String,
    /// How long a generation must stay accepted and healthy before it is known good.
    #[arg(long, default_value = "60s")]
    bake: String,
    /// The share of 5xx answers on a route past which its generation is reverted.
    #[arg(long, default_value_t = 0.05)]
    max_error_rate: f64,
    /// Fewer requests than this since a generation was applied say nothing of its errors.
    #[arg(long, default_value_t = 20)]
    min_requests: u64,
    #[command(flatten)]
    backends: super::BackendArgs,
    /// Where the leader-election Lease and the rollout records live (default:
    /// $POD_NAMESPACE, else rampart-system).
    #[arg(long)]
    lease_namespace: Option<String>,
    #[arg(long, default_value = "rampart-operator")]
    lease_name: String,
    /// How long a leader's lease lasts unrenewed.
    #[arg(long, default_value = "15s")]
    lease_duration: String,
    /// This replica's name in the Lease and in Events (default: $POD_NAME, else the host name
    /// and process id).
    #[arg(long)]
    identity: Option<String>,
    /// Where `/metrics` and `/healthz` are served.
    #[arg(long, default_value = "127.0.0.1:9090")]
    metrics: SocketAddr,
}

pub(crate) fn run(args: &RunArgs) -> Result<ExitCode> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(run_async(args))
}

async fn run_async(args: &RunArgs) -> Result<ExitCode> {
    let client = client(args.kubeconfig.as_deref()).await?;
    let settings = settings(args)?;
    let lease = Lease::new(client.clone(), lease_settings(args, &settings.instance)?);
    let metrics = Metrics::default();
    let stop = CancellationToken::new();
    let served = serve_metrics(args.metrics, metrics.clone(), stop.clone())
        .await
        .with_context(|| format!("cannot listen on {}", args.metrics))?;
    tracing::info!(addr = %served, "operator metrics listening");
    let platform = StorePlatform::new(&args.store, &args.control_plane_admin, &args.proxy_admin)?;
    tokio::select! {
        r = crate::wait_for_termination() => { r?; stop.cancel(); return Ok(ExitCode::SUCCESS) }
        () = lease.acquire() => {}
    }
    metrics.set_leader(true);
    let controllers = controller::run(client, platform, settings, metrics.clone(), {
        let stop = stop.clone();
        async move { stop.cancelled().await }
    });
    tokio::pin!(controllers);
    let code = tokio::select! {
        r = crate::wait_for_termination() => { r?; ExitCode::SUCCESS }
        () = lease.hold() => {
            // No grace: another replica may lead already; nothing more may be written.
            tracing::error!("lost the lease; exiting so that the new leader runs alone");
            return Ok(ExitCode::FAILURE);
        }
        () = &mut controllers => ExitCode::FAILURE,
    };
    stop.cancel();
    // Let in-flight reconciles finish before giving the lease up.
    let _ = tokio::time::timeout(Duration::from_secs(5), controllers).await;
    metrics.set_leader(false);
    lease.release().await;
    Ok(code)
}

async fn client(kubeconfig: Option<&std::path::Path>) -> Result<kube::Client> {
    let config = match kubeconfig {
        Some(path) => {
            let kc = kube::config::Kubeconfig::read_from(path)
                .with_context(|| format!("cannot read {}", path.display()))?;
            kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
                .await
                .with_context(|| format!("{}: not a usable kubeconfig", path.display()))?
        }
        None => kube::Config::infer()
            .await
            .context("no Kubernetes API: set --kubeconfig or $KUBECONFIG, or run in a pod")?,
    };
    kube::Client::try_from(config).context("a Kubernetes client")
}

fn settings(args: &RunArgs) -> Result<Settings> {
    let bake = rampart_config::duration::parse_duration(&args.bake).context("--bake")?;
    anyhow::ensure!(
        (0.0..=1.0).contains(&args.max_error_rate),
        "--max-error-rate: a share between 0 and 1, not {}",
        args.max_error_rate
    );
    let instance = args.identity.clone().unwrap_or_else(|| {
        std::env::var("POD_NAME").unwrap_or_else(|_| {
            let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
            format!("{}-{}", host.trim(), std::process::id())
        })
    });
    Ok(Settings {
        gateway_class: args.gateway_class.clone(),
        backends: args.backends.resolve()?,
        rollout: rampart_operator::rollout::Policy {
            bake,
            max_error_rate: args.max_error_rate,
        },
        min_requests: args.min_requests,
        poll: Duration::from_secs(1).min(bake.max(Duration::from_millis(200))),
        instance,
        records_namespace: own_namespace(args),
    })
}

/// The operator's namespace: its Lease and rollout records live there.
fn own_namespace(args: &RunArgs) -> String {
    args.lease_namespace.clone().unwrap_or_else(|| {
        std::env::var("POD_NAMESPACE").unwrap_or_else(|_| "rampart-system".into())
    })
}

fn lease_settings(args: &RunArgs, identity: &str) -> Result<LeaseSettings> {
    let duration = rampart_config::duration::parse_duration(&args.lease_duration)
        .context("--lease-duration")?;
    anyhow::ensure!(
        duration >= Duration::from_secs(1),
        "--lease-duration: at least 1s"
    );
    Ok(LeaseSettings {
        namespace: own_namespace(args),
        name: args.lease_name.clone(),
        identity: identity.to_owned(),
        duration,
    })
}

/// `/metrics` and `/healthz` until `stop`.
async fn serve_metrics(
    addr: SocketAddr,
    metrics: Metrics,
    stop: CancellationToken,
) -> Result<SocketAddr> {
    use http_body_util::Full;
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    tokio::spawn(async move {
        loop {
            let tcp = tokio::select! {
                () = stop.cancelled() => return,
                a = listener.accept() => match a { Ok((tcp, _)) => tcp, Err(_) => continue },
            };
            let metrics = metrics.clone();
            let svc =
                hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                    let (code, body) = match req.uri().path() {
                        "/metrics" => (200, metrics.encode()),
                        "/healthz" => (200, "ok\n".to_owned()),
                        _ => (404, "GET /metrics or /healthz\n".to_owned()),
                    };
                    let mut resp = http::Response::new(Full::new(bytes::Bytes::from(body)));
                    *resp.status_mut() = http::StatusCode::from_u16(code).unwrap_or_default();
                    std::future::ready(Ok::<_, std::convert::Infallible>(resp))
                });
            tokio::spawn(
                hyper::server::conn::http1::Builder::new()
                    .timer(hyper_util::rt::TokioTimer::new())
                    .header_read_timeout(Duration::from_secs(10))
                    .serve_connection(hyper_util::rt::TokioIo::new(tcp), svc),
            );
        }
    });
    Ok(local)
}

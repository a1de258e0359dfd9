//! `rampart control-plane`: serves the desired state — from the config store, or a config
//! file — to Envoy and Rampart proxies over ADS, re-translating it when it changes. A state
//! that does not validate is logged and the last good snapshot keeps being served.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result};
use tokio_util::sync::CancellationToken;

#[derive(clap::Args)]
pub(crate) struct ControlPlaneArgs {
    /// A config file whose listeners, routes and clusters are served.
    #[arg(
        long,
        short,
        required_unless_present = "store",
        conflicts_with = "store"
    )]
    config: Option<PathBuf>,
    /// Serve the desired state kept in the config store (`rampart apply`) at these
    /// endpoints, comma-separated, following its changes.
    #[arg(long, value_delimiter = ',')]
    store: Option<Vec<String>>,
    /// Where ADS listens.
    #[arg(long, default_value = "127.0.0.1:18000")]
    listen: SocketAddr,
    /// Where `/status` (what each node was sent and answered) and `/metrics` are served.
    #[arg(long, default_value = "127.0.0.1:18001")]
    admin: SocketAddr,
    /// How often the file is compared with what was last served; 0s: never.
    #[arg(long, default_value = "1s")]
    watch_interval: String,
}

pub(crate) fn run(args: &ControlPlaneArgs) -> Result<ExitCode> {
    let every = rampart_config::duration::parse_duration(&args.watch_interval)
        .context("--watch-interval")?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(async {
        let cache = rampart_xds::Cache::new();
        let stop = CancellationToken::new();
        let addr = cache
            .spawn(args.listen, stop.clone())
            .await
            .with_context(|| format!("cannot listen on {}", args.listen))?;
        tracing::info!(%addr, "xds listening");
        let admin = serve_admin(args.admin, cache.clone(), stop.clone())
            .await
            .with_context(|| format!("cannot listen on {}", args.admin))?;
        tracing::info!(addr = %admin, "xds admin listening");
        let follow = async {
            match (&args.config, &args.store) {
                (Some(path), _) => follow_file(&cache, path, every).await,
                (None, Some(endpoints)) => follow_store(&cache, endpoints).await,
                (None, None) => Ok(()),
            }
        };
        tokio::select! {
            r = crate::wait_for_termination() => r?,
            r = follow => r?,
        }
        stop.cancel();
        tokio::time::sleep(Duration::from_millis(50)).await;
        Ok(ExitCode::SUCCESS)
    })
}

/// The control plane inside `rampart up`: ADS on `listen`, status on `admin`, serving the
/// store at `endpoints` until `stop`.
pub(crate) async fn embedded(
    listen: SocketAddr,
    admin: SocketAddr,
    endpoints: Vec<String>,
    stop: CancellationToken,
) -> Result<()> {
    let cache = rampart_xds::Cache::new();
    let addr = cache
        .spawn(listen, stop.clone())
        .await
        .with_context(|| format!("cannot listen on {listen}"))?;
    tracing::info!(%addr, "xds listening");
    let admin = serve_admin(admin, cache.clone(), stop.clone())
        .await
        .with_context(|| format!("cannot listen on {admin}"))?;
    tracing::info!(addr = %admin, "xds admin listening");
    tokio::spawn(async move {
        tokio::select! {
            () = stop.cancelled() => {}
            r = follow_store(&cache, &endpoints) => {
                if let Err(e) = r {
                    tracing::error!(error = %e, "the control plane stopped following the store");
                }
            }
        }
    });
    Ok(())
}

/// Publishes `config` as the next snapshot.
fn publish(cache: &rampart_xds::Cache, config: &rampart_config::Config) {
    publish_at(cache, config, cache.current().version + 1);
}

/// Publishes `config` as snapshot `version`. Served from the store, the version is the
/// store revision read, so control planes side by side number the same state alike.
fn publish_at(cache: &rampart_xds::Cache, config: &rampart_config::Config, version: u64) {
    cache.publish(rampart_xds::translate::snapshot(config, version));
    tracing::info!(version, "new snapshot published");
}

/// Serves the file, polling it every `every` (never when zero).
async fn follow_file(cache: &rampart_xds::Cache, path: &Path, every: Duration) -> Result<()> {
    let (config, mut seen) = read(path)?;
    publish(cache, &config);
    if every.is_zero() {
        std::future::pending::<()>().await;
    }
    loop {
        tokio::time::sleep(every).await;
        let Ok(bytes) = std::fs::read(path) else {
            continue;
        };
        if bytes == seen {
            continue;
        }
        seen = bytes;
        match read(path) {
            Ok((config, _)) => publish(cache, &config),
            Err(e) => {
                tracing::error!(error = %e, "config rejected; still serving the last good snapshot");
            }
        }
    }
}

/// Serves the store's desired state: all of it now, then again after every change under
/// the prefix (changes arriving together are read once). A lost watch is opened again.
async fn follow_store(cache: &rampart_xds::Cache, endpoints: &[String]) -> Result<()> {
    use rampart_xds::desired::PREFIX;
    let store = crate::desired::StoreArgs {
        endpoints: endpoints.to_vec(),
    };
    let mut c = crate::desired::client(&store)?;
    loop {
        let state = match crate::desired::load(&mut c).await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the store; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        match crate::desired::check(&state.resources) {
            Ok(config) => publish_at(cache, &config, u64::try_from(state.revision).unwrap_or(0)),
            Err(errors) => {
                tracing::error!(errors = ?errors, "config rejected; still serving the last good snapshot");
            }
        }
        crate::follow::changed(&mut c, PREFIX, state.revision).await;
        // Let a burst of writes settle into one snapshot.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn read(path: &Path) -> Result<(rampart_config::Config, Vec<u8>)> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let text =
        std::str::from_utf8(&bytes).with_context(|| format!("{} is not UTF-8", path.display()))?;
    let config = rampart_config::from_yaml_with(text, &crate::plugins::filters())
        .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    Ok((config, bytes))
}

/// `GET /status` (JSON: node → type → sent, acked, nacked) and `GET /metrics` (Prometheus),
/// read-only, on `addr` until `stop`.
async fn serve_admin(
    addr: SocketAddr,
    cache: rampart_xds::Cache,
    stop: CancellationToken,
) -> std::io::Result<SocketAddr> {
    use hyper_util::rt::TokioIo;
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    tokio::spawn(async move {
        loop {
            let (stream, _) = tokio::select! {
                () = stop.cancelled() => return,
                a = listener.accept() => match a {
                    Ok(a) => a,
                    Err(_) => continue,
                },
            };
            let cache = cache.clone();
            tokio::spawn(async move {
                let svc =
                    hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                        let resp = admin_response(&cache, req.method(), req.uri().path());
                        async move { Ok::<_, std::convert::Infallible>(resp) }
                    });
                let conn = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc);
                let _ = tokio::time::timeout(Duration::from_secs(30), conn).await;
            });
        }
    });
    Ok(local)
}

fn admin_response(
    cache: &rampart_xds::Cache,
    method: &http::Method,
    path: &str,
) -> http::Response<http_body_util::Full<bytes::Bytes>> {
    let (status, ctype, body) = match (method, path) {
        (&http::Method::GET, "/metrics") => {
            (200, "text/plain; version=0.0.4", cache.nodes().encode())
        }
        (&http::Method::GET, "/status") => {
            (200, "application/json", status_json(cache).to_string())
        }
        _ => (404, "text/plain", "GET /status or /metrics\n".to_owned()),
    };
    let mut resp = http::Response::new(http_body_util::Full::new(bytes::Bytes::from(body)));
    *resp.status_mut() = http::StatusCode::from_u16(status).unwrap_or(http::StatusCode::OK);
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static(ctype),
    );
    resp
}

fn status_json(cache: &rampart_xds::Cache) -> serde_json::Value {
    let nodes: serde_json::Map<String, serde_json::Value> = cache
        .nodes()
        .snapshot()
        .into_iter()
        .map(|(node, types)| {
            let types: serde_json::Map<String, serde_json::Value> = types
                .into_iter()
                .map(|(t, s)| {
                    let v = serde_json::json!({
                        "sent": s.sent,
                        "acked": s.acked,
                        "nacked": s.nacked.map(|(version, error)| serde_json::json!({"version": version, "error": error})),
                    });
                    (rampart_xds::status::short_type(&t).to_owned(), v)
                })
                .collect();
            (node, serde_json::Value::Object(types))
        })
        .collect();
    serde_json::json!({ "snapshot": cache.current().version, "nodes": nodes })
}

/// `rampart xds ...`
#[derive(clap::Subcommand)]
pub(crate) enum XdsCommand {
    /// Per node and resource type: the version sent, the version acknowledged, and any
    /// rejection with the client's error.
    Status(StatusArgs),
}

#[derive(clap::Args)]
pub(crate) struct StatusArgs {
    /// The control plane's admin address (`rampart control-plane --admin`).
    #[arg(long, default_value = "127.0.0.1:18001")]
    admin: SocketAddr,
}

/// `rampart xds status`: one line per node and type, as `istioctl proxy-status` prints.
pub(crate) fn status(args: &StatusArgs) -> Result<ExitCode> {
    let (code, body) =
        crate::admin_client::send(args.admin, http::Method::GET, "/status", None, Vec::new())?;
    anyhow::ensure!(code.is_success(), "{}: {body}", code);
    let v: serde_json::Value = serde_json::from_str(&body).context("the status is not JSON")?;
    println!(
        "{:<24} {:<24} {:<18} {:<18} NACKED",
        "NODE", "TYPE", "SENT", "ACKED"
    );
    for (node, types) in v["nodes"].as_object().into_iter().flatten() {
        for (t, s) in types.as_object().into_iter().flatten() {
            let nacked = match &s["nacked"] {
                serde_json::Value::Null => "-".to_owned(),
                n => format!(
                    "{} ({})",
                    n["version"].as_str().unwrap_or(""),
                    n["error"].as_str().unwrap_or("")
                ),
            };
            println!(
                "{:<24} {:<24} {:<18} {:<18} {}",
                node,
                t,
                s["sent"].as_str().unwrap_or(""),
                s["acked"].as_str().unwrap_or(""),
                nacked
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

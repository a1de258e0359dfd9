//! `rampart control-plane`: serves a config file to Envoy (and, later, Rampart proxies) over
//! ADS, re-translating it when the file changes. A file that does not validate is logged and
//! the last good snapshot keeps being served.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result};
use tokio_util::sync::CancellationToken;

#[derive(clap::Args)]
pub(crate) struct ControlPlaneArgs {
    /// The config whose listeners, routes and clusters are served.
    #[arg(long, short)]
    config: PathBuf,
    /// Where ADS listens.
    #[arg(long, default_value = "127.0.0.1:18000")]
    listen: SocketAddr,
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
        let (config, mut seen) = read(&args.config)?;
        let cache = rampart_xds::Cache::new();
        let mut version = 1;
        cache.publish(rampart_xds::translate::snapshot(&config, version));
        let stop = CancellationToken::new();
        let addr = cache
            .spawn(args.listen, stop.clone())
            .await
            .with_context(|| format!("cannot listen on {}", args.listen))?;
        tracing::info!(%addr, "xds listening");
        let watch = async {
            if every.is_zero() {
                std::future::pending::<()>().await;
            }
            loop {
                tokio::time::sleep(every).await;
                let Ok(bytes) = std::fs::read(&args.config) else {
                    continue;
                };
                if bytes == seen {
                    continue;
                }
                seen = bytes;
                match read(&args.config) {
                    Ok((config, _)) => {
                        version += 1;
                        cache.publish(rampart_xds::translate::snapshot(&config, version));
                        tracing::info!(version, "config changed; new snapshot published");
                    }
                    Err(e) => tracing::error!(error = %e, "config rejected; still serving the last good snapshot"),
                }
            }
        };
        tokio::select! {
            r = crate::wait_for_termination() => r?,
            () = watch => {}
        }
        stop.cancel();
        tokio::time::sleep(Duration::from_millis(50)).await;
        Ok(ExitCode::SUCCESS)
    })
}

fn read(path: &Path) -> Result<(rampart_config::Config, Vec<u8>)> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let text =
        std::str::from_utf8(&bytes).with_context(|| format!("{} is not UTF-8", path.display()))?;
    let config = rampart_config::from_yaml_with(text, &crate::plugins::filters())
        .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    Ok((config, bytes))
}

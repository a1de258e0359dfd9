//! `rampart up` wired as a real deployment is: the config store holds the desired state
//! (the embedded or given config's listeners, routes and clusters, imported into an empty
//! store on first start), the control plane serves it over ADS, and the gateway takes it
//! from there like any Rampart proxy. The gateway-wide settings (admin, workers, policy
//! engine, access log) stay its local bootstrap, as Envoy's do.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use rampart_config::{Config, RawConfig};
use rampart_xds::desired::{Kind, Resource};
use tokio_util::sync::CancellationToken;

/// The control plane `up` runs, and what it imports.
pub(crate) struct ControlPlane {
    pub(crate) listen: SocketAddr,
    pub(crate) admin: SocketAddr,
    /// The store's client address.
    pub(crate) store: SocketAddr,
    /// Listeners, route tables and clusters for an empty store.
    pub(crate) import: RawConfig,
}

/// `cfg` without its listeners, route tables and clusters (the bootstrap), and those alone.
pub(crate) fn split(cfg: Config) -> Result<(Config, RawConfig)> {
    let mut raw = cfg.raw;
    let dynamic = RawConfig {
        listeners: std::mem::take(&mut raw.listeners),
        route_tables: std::mem::take(&mut raw.route_tables),
        clusters: std::mem::take(&mut raw.clusters),
        ..RawConfig::default()
    };
    let bootstrap = rampart_config::validate_with(raw, &crate::plugins::filters())
        .map_err(|e| anyhow::anyhow!("the bootstrap config: {e}"))?;
    Ok((bootstrap, dynamic))
}

/// Imports into an empty store, then starts the control plane on it.
pub(crate) async fn start(cp: ControlPlane, stop: CancellationToken) -> Result<()> {
    let endpoints = vec![cp.store.to_string()];
    import_if_empty(&endpoints, &cp.import).await?;
    crate::control_plane::embedded(cp.listen, cp.admin, endpoints, stop).await
}

/// Each listener, route table and cluster of `raw` as a store resource.
fn resources(raw: &RawConfig) -> Result<Vec<Resource>> {
    let mut out = Vec::new();
    let mut add = |kind: Kind, name: &str, spec: serde_json::Result<serde_json::Value>| {
        out.push(Resource {
            kind,
            name: name.to_owned(),
            spec: spec?,
        });
        anyhow::Ok(())
    };
    for l in &raw.listeners {
        add(Kind::Listener, &l.name, serde_json::to_value(l))?;
    }
    for t in &raw.route_tables {
        add(Kind::RouteTable, &t.name, serde_json::to_value(t))?;
    }
    for c in &raw.clusters {
        add(Kind::Cluster, &c.name, serde_json::to_value(c))?;
    }
    Ok(out)
}

/// Writes `raw`'s resources when the store holds none (first start); a store that already
/// has a desired state keeps it. Waits for the store to elect a leader.
async fn import_if_empty(endpoints: &[String], raw: &RawConfig) -> Result<()> {
    let store = crate::desired::StoreArgs {
        endpoints: endpoints.to_vec(),
    };
    let mut c = crate::desired::client(&store)?;
    let deadline = Instant::now() + Duration::from_secs(30);
    let state = loop {
        match crate::desired::load(&mut c).await {
            Ok(s) => break s,
            Err(e) if Instant::now() < deadline => {
                tracing::debug!(error = %e, "waiting for the store");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => return Err(e).context("the embedded store did not answer"),
        }
    };
    if !state.resources.is_empty() {
        tracing::info!(
            resources = state.resources.len(),
            "the store has a desired state; the config's listeners, routes and clusters are not imported (change them with `rampart apply`)"
        );
        return Ok(());
    }
    let docs = resources(raw)?;
    let puts: Vec<&Resource> = docs.iter().collect();
    crate::desired::commit(&mut c, &state, &puts, &[]).await?;
    tracing::info!(
        resources = docs.len(),
        "config imported into the empty store"
    );
    Ok(())
}

//! A compiled config version: what one request needs, looked up by index, shared by `Arc`.
//!
//! Requests load the current snapshot once when they start and finish on it, so a reload
//! never changes a request in flight.

use std::collections::HashMap;
use std::sync::Arc;

use prometheus_client::metrics::histogram::Histogram;
use rampart_config::Config;
use rampart_config::model::{Action, FilterConfig, Limits, UpstreamProtocol};
use rampart_router::RouteTable;

use crate::filter::{BuildEnv, FilterBuildError, FilterRef, FilterRegistry};
use crate::metrics::RouteStats;
use crate::upstream::ClusterRuntime;
use crate::upstream::stream::UpstreamTls;

/// Filters added in code rather than config, e.g. by an embedding program or a test.
/// They are attached to every listener whose name matches (`*` for all), after the configured
/// listener filters, and survive reloads.
#[derive(Clone)]
pub struct ExtraFilter {
    pub listener: String,
    pub filter: FilterRef,
}

pub struct Snapshot {
    pub version: u64,
    /// The config running, its `raw` part moved out into `source`.
    pub config: Arc<Config>,
    /// The config as written (JSON), for `/config_dump`: kept as bytes, since the raw
    /// structs of ten thousand routes and clusters take tens of megabytes.
    pub source: bytes::Bytes,
    pub listeners: HashMap<String, Arc<ListenerSnap>>,
    pub clusters: HashMap<String, Arc<ClusterRuntime>>,
}

/// TLS configurations built from a config's certificate files: loaded before a snapshot is
/// built, so a bad certificate rejects the config instead of breaking the listener.
#[derive(Default)]
pub struct TlsMaterial {
    pub listeners: HashMap<String, tokio_rustls::TlsAcceptor>,
    pub clusters: HashMap<String, UpstreamTls>,
}

impl TlsMaterial {
    pub fn load(config: &Config) -> Result<Self, (String, crate::tls::TlsError)> {
        let mut m = Self::default();
        for l in &config.listeners {
            if let Some(t) = &l.tls {
                let sc = crate::tls::server_config(t)
                    .map_err(|e| (format!("listeners.{}.tls", l.name), e))?;
                m.listeners
                    .insert(l.name.clone(), tokio_rustls::TlsAcceptor::from(sc));
            }
        }
        for c in &config.clusters {
            if let Some(t) = &c.tls {
                let alpn: &[u8] = match c.protocol {
                    UpstreamProtocol::Http1 => b"http/1.1",
                    UpstreamProtocol::Http2 => b"h2",
                };
                let tls = UpstreamTls::new(t, &[alpn.to_vec()])
                    .map_err(|e| (format!("clusters.{}.tls", c.name), e))?;
                m.clusters.insert(c.name.clone(), tls);
            }
        }
        Ok(m)
    }
}

pub struct ListenerSnap {
    pub name: Arc<str>,
    /// Terminates TLS for new connections when set.
    pub tls: Option<tokio_rustls::TlsAcceptor>,
    pub limits: Limits,
    /// Path normalisation, trusted headers and proxies (`ingress::prepare`).
    pub http: rampart_config::model::HttpOptions,
    /// Matching returns the route's [`RouteData`].
    pub table: RouteTable<RouteData>,
    pub filters: Vec<FilterRef>,
    pub no_route_stats: RouteStats,
}

pub struct RouteData {
    pub name: Arc<str>,
    pub filters: Vec<FilterRef>,
    /// One per weighted cluster of a forward action; empty otherwise.
    pub targets: Vec<Target>,
    /// Stats for responses that did not go to a cluster (direct, redirect, local replies),
    /// made on first use: most routes forward, and ten thousand routes' worth of unused
    /// series is megabytes.
    pub local_stats: std::sync::OnceLock<RouteStats>,
}

pub struct Target {
    pub cluster: Arc<ClusterRuntime>,
    pub name: Arc<str>,
    /// Made on first use (most of ten thousand routes may never see a request).
    pub stats: std::sync::OnceLock<RouteStats>,
    pub upstream_latency: Histogram,
}

/// What every config version of one gateway is built with.
pub struct Builder {
    /// State filters share across versions, metrics, the control runtime.
    pub env: BuildEnv,
    /// The filters config can name.
    pub filters: FilterRegistry,
    pub extra: Vec<ExtraFilter>,
    /// Data-plane workers (each has its own upstream pools).
    pub workers: usize,
    /// See [`crate::Plugins::after_install`].
    pub after_install: Option<fn()>,
}

impl Builder {
    /// Compiles `config` into a [`Snapshot`]. Clusters whose definition did not change are
    /// carried over from `prev` with their connection pools, endpoint state and DNS results.
    /// Fails when a filter's material does not load (e.g. a JWKS file that does not parse);
    /// the error names the filter's field.
    pub fn build(
        &self,
        mut config: Config,
        version: u64,
        prev: Option<&Snapshot>,
        mut tls: TlsMaterial,
    ) -> Result<Snapshot, FilterBuildError> {
        let (env, extra) = (&self.env, &self.extra);
        let metrics = &env.metrics;
        // Clusters and route tables move into their runtimes and routers: nothing reads
        // them from the config afterwards, and with ten thousand of each a second copy is
        // megabytes.
        let clusters = self.clusters(std::mem::take(&mut config.clusters), prev, &mut tls);
        let mut tables = std::mem::take(&mut config.route_tables);
        let mut listeners = HashMap::new();
        for (li, l) in config.listeners.iter().enumerate() {
            let Some(ti) = tables.iter().position(|t| t.name == l.route_table) else {
                continue;
            };
            // The last listener on a table takes it; any before get a copy.
            let shared = config.listeners[li + 1..]
                .iter()
                .any(|o| o.route_table == l.route_table);
            let table_cfg = take_or_copy(&mut tables[ti], shared);
            let mut filters = self.chain(&l.filters, &format!("listeners[{li}]"))?;
            filters.extend(
                extra
                    .iter()
                    .filter(|e| e.listener == "*" || e.listener == l.name)
                    .map(|e| e.filter.clone()),
            );
            let table = RouteTable::with_data(table_cfg, |vi, ri, r| {
                let path = format!("route_tables[{ti}].virtual_hosts[{vi}].routes[{ri}]");
                Ok::<_, FilterBuildError>(RouteData {
                    name: r.name.as_str().into(),
                    filters: self.chain(&r.filters, &path)?,
                    targets: targets(r, &clusters, metrics),
                    local_stats: std::sync::OnceLock::new(),
                })
            })?;
            let snap = ListenerSnap {
                name: l.name.as_str().into(),
                tls: tls.listeners.remove(&l.name),
                limits: l.limits.clone(),
                http: l.http.clone(),
                table,
                filters,
                no_route_stats: metrics.route_stats(&l.name, "", ""),
            };
            listeners.insert(l.name.clone(), Arc::new(snap));
        }

        let source = serde_json::to_vec(&std::mem::take(&mut config.raw)).unwrap_or_default();
        Ok(Snapshot {
            version,
            source: source.into(),
            config: Arc::new(config),
            listeners,
            clusters,
        })
    }

    /// A runtime per cluster; one whose definition did not change is carried over from
    /// `prev`. Every version re-reads certificates, so a reload picks up renewed files.
    fn clusters(
        &self,
        clusters: Vec<rampart_config::model::Cluster>,
        prev: Option<&Snapshot>,
        tls: &mut TlsMaterial,
    ) -> HashMap<String, Arc<ClusterRuntime>> {
        clusters
            .into_iter()
            .map(|c| {
                let reused = prev
                    .and_then(|p| p.clusters.get(&c.name))
                    .filter(|old| old.config == c)
                    .cloned();
                let name = c.name.clone();
                let rt = reused
                    .unwrap_or_else(|| ClusterRuntime::new(c, &self.env.metrics, self.workers));
                rt.set_tls(tls.clusters.remove(&name));
                (name, rt)
            })
            .collect()
    }

    /// Builds a filter chain; `owner` is where the chain's owner sits in the config.
    fn chain(
        &self,
        cfgs: &[FilterConfig],
        owner: &str,
    ) -> Result<Vec<FilterRef>, FilterBuildError> {
        cfgs.iter()
            .enumerate()
            .map(|(i, f)| {
                self.filters
                    .build(f, &format!("{owner}.filters[{i}]"), &self.env)
            })
            .collect()
    }
}

/// The route table itself when nothing else needs it, else a copy.
fn take_or_copy(
    table: &mut rampart_config::model::RouteTable,
    shared: bool,
) -> rampart_config::model::RouteTable {
    if shared {
        return table.clone();
    }
    let empty = rampart_config::model::RouteTable {
        name: table.name.clone(),
        virtual_hosts: Vec::new(),
    };
    std::mem::replace(table, empty)
}

/// One per weighted cluster of a forward action (those that exist); none for local answers.
fn targets(
    r: &rampart_config::model::Route,
    clusters: &HashMap<String, Arc<ClusterRuntime>>,
    metrics: &crate::metrics::Metrics,
) -> Vec<Target> {
    let Action::Forward(f) = &r.action else {
        return Vec::new();
    };
    f.clusters
        .iter()
        .filter_map(|w| {
            Some(Target {
                cluster: clusters.get(&w.cluster)?.clone(),
                name: w.cluster.as_str().into(),
                stats: std::sync::OnceLock::new(),
                upstream_latency: metrics.upstream_latency(&w.cluster),
            })
        })
        .collect()
}

//! The dashboard's panels for what `rampart up` runs beside the gateway: the config store
//! (members, leader, term, applied index, each member's lag, alarms), the control plane
//! (what each proxy was sent, acknowledged or rejected: its `/status`) and the flow tracer
//! (its `/metrics`). Each reads the component through the API its CLI uses.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use rampart_dashboard::Panel;
use rampart_dashboard::openmetrics;
use rampart_kv::client::Client;
use serde_json::{Value, json};

type Read = Pin<Box<dyn Future<Output = Value> + Send + 'static>>;

/// How long one component may take to answer the dashboard.
const TIMEOUT: Duration = Duration::from_millis(1500);

/// The panels for `up`'s store, control plane and (when tracing runs) flow metrics.
pub(crate) fn panels(
    store: Option<Vec<String>>,
    xds_admin: Option<SocketAddr>,
    flows: Option<SocketAddr>,
) -> Vec<Arc<dyn Panel>> {
    let mut out: Vec<Arc<dyn Panel>> = Vec::new();
    if let Some(endpoints) = store {
        out.push(Arc::new(StorePanel { endpoints }));
    }
    if let Some(admin) = xds_admin {
        out.push(Arc::new(XdsPanel { admin }));
    }
    out.push(Arc::new(FlowsPanel { metrics: flows }));
    out
}

/// Panels for components that are not running, each saying why.
pub(crate) fn off(topics: &[&'static str], why: &str) -> Vec<Arc<dyn Panel>> {
    topics
        .iter()
        .map(|&topic| {
            Arc::new(Off {
                topic,
                why: why.to_owned(),
            }) as Arc<dyn Panel>
        })
        .collect()
}

struct Off {
    topic: &'static str,
    why: String,
}

impl Panel for Off {
    fn topic(&self) -> &'static str {
        self.topic
    }

    fn read(&self) -> Read {
        let v = error(&self.why);
        Box::pin(std::future::ready(v))
    }
}

fn error(e: impl std::fmt::Display) -> Value {
    json!({ "error": e.to_string() })
}

/// The store, as `rampart kv member list` and `rampart kv endpoint status` see it.
struct StorePanel {
    endpoints: Vec<String>,
}

impl Panel for StorePanel {
    fn topic(&self) -> &'static str {
        "store"
    }

    fn read(&self) -> Read {
        let endpoints = self.endpoints.clone();
        Box::pin(async move { store_status(&endpoints).await.unwrap_or_else(error) })
    }
}

async fn store_status(endpoints: &[String]) -> anyhow::Result<Value> {
    let mut c = Client::new(endpoints, TIMEOUT)?;
    let members = c.member_list().await?.members;
    // Every member's status from its own client URL, so followers' lag shows.
    let urls: Vec<String> = members
        .iter()
        .map(|m| m.client_ur_ls.first().cloned().unwrap_or_default())
        .collect();
    let statuses = Client::new(&urls, TIMEOUT)?.status_all().await;
    let leader = statuses
        .iter()
        .find_map(|(_, s)| s.as_ref().ok().map(|s| s.leader))
        .filter(|&l| l != 0);
    let leader_index = statuses
        .iter()
        .filter_map(|(_, s)| s.as_ref().ok())
        .find(|s| {
            s.header
                .as_ref()
                .is_some_and(|h| Some(h.member_id) == leader)
        })
        .map(|s| s.raft_index);
    let mut alarms: Vec<String> = Vec::new();
    let mut term = None;
    let rows: Vec<Value> = members
        .iter()
        .zip(&statuses)
        .map(|(m, (_, s))| match s {
            Ok(s) => {
                term = term.max(Some(s.raft_term));
                alarms.extend(s.errors.iter().cloned());
                json!({
                    "id": format!("{:x}", m.id),
                    "name": m.name,
                    "endpoint": m.client_ur_ls.first(),
                    "role": if s.is_learner { "learner" } else if Some(m.id) == leader { "leader" } else { "follower" },
                    "term": s.raft_term,
                    "index": s.raft_index,
                    "applied": s.raft_applied_index,
                    "lag": leader_index.map(|l| l.saturating_sub(s.raft_applied_index)),
                    "revision": s.header.as_ref().map(|h| h.revision),
                    "db_size": s.db_size,
                })
            }
            Err(e) => json!({
                "id": format!("{:x}", m.id),
                "name": m.name,
                "endpoint": m.client_ur_ls.first(),
                "role": "unreachable",
                "error": e.message(),
            }),
        })
        .collect();
    alarms.sort();
    alarms.dedup();
    Ok(json!({
        "leader": leader.map(|l| format!("{l:x}")),
        "term": term,
        "members": rows,
        "alarms": alarms,
    }))
}

/// The control plane's `/status` (`rampart xds status`).
struct XdsPanel {
    admin: SocketAddr,
}

impl Panel for XdsPanel {
    fn topic(&self) -> &'static str {
        "xds"
    }

    fn read(&self) -> Read {
        let admin = self.admin;
        Box::pin(async move {
            match get(admin, "/status").await {
                Ok(body) => serde_json::from_str(&body).unwrap_or_else(error),
                Err(e) => error(e),
            }
        })
    }
}

/// The flow tracer's counters, grouped as `rampart flows top` groups them.
struct FlowsPanel {
    /// Its metrics address; None when tracing is off in this process.
    metrics: Option<SocketAddr>,
}

impl Panel for FlowsPanel {
    fn topic(&self) -> &'static str {
        "flows"
    }

    fn read(&self) -> Read {
        let metrics = self.metrics;
        Box::pin(async move {
            let Some(addr) = metrics else {
                return error(
                    "eBPF flow tracing is off in this process (it needs root, kernel BTF and tracefs; see the log)",
                );
            };
            match get(addr, "/metrics").await {
                Ok(text) => flows_view(&openmetrics::parse(&text)),
                Err(e) => error(e),
            }
        })
    }
}

/// Live and lost counts, per-port opens and closes, and labelled flows by route, cluster
/// and tenant with their bytes.
fn flows_view(samples: &[openmetrics::Sample]) -> Value {
    use std::collections::BTreeMap;
    let mut live = 0.0;
    let mut lost = 0.0;
    let mut ports: BTreeMap<String, (f64, f64)> = BTreeMap::new();
    let mut named: BTreeMap<(String, String, String), (f64, f64, f64)> = BTreeMap::new();
    for s in samples {
        let name_key = || {
            (
                s.label("route").unwrap_or("").to_owned(),
                s.label("cluster").unwrap_or("").to_owned(),
                s.label("tenant").unwrap_or("").to_owned(),
            )
        };
        match s.name.as_str() {
            "rampart_flows_live" => live = s.value,
            "rampart_flows_events_lost" => lost = s.value,
            "rampart_flows_opened_total" | "rampart_flows_closed_total" => {
                let port = s.label("local_port").unwrap_or("").to_owned();
                let e = ports.entry(port).or_default();
                if s.name.ends_with("opened_total") {
                    e.0 += s.value;
                } else {
                    e.1 += s.value;
                }
            }
            "rampart_flows_named_closed_total" => named.entry(name_key()).or_default().0 += s.value,
            "rampart_flows_named_bytes_total" => {
                let e = named.entry(name_key()).or_default();
                match s.label("direction") {
                    Some("sent") => e.1 += s.value,
                    Some("received") => e.2 += s.value,
                    _ => {}
                }
            }
            _ => {}
        }
    }
    json!({
        "live": live,
        "events_lost": lost,
        "ports": ports.iter().map(|(p, (o, c))| json!({"port": p, "opened": o, "closed": c})).collect::<Vec<_>>(),
        "named": named.iter().map(|((r, c, t), (n, sent, recv))| json!({
            "route": r, "cluster": c, "tenant": t, "closed": n, "sent": sent, "received": recv,
        })).collect::<Vec<_>>(),
    })
}

async fn get(addr: SocketAddr, path: &str) -> anyhow::Result<String> {
    let (status, body) =
        crate::admin_client::request(addr, http::Method::GET, path, None, Vec::new(), TIMEOUT)
            .await?;
    anyhow::ensure!(status.is_success(), "{path}: {status}");
    Ok(body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flows_are_grouped_by_name_and_port() {
        let text = "rampart_flows_live 3\n\
            rampart_flows_events_lost 0\n\
            rampart_flows_opened_total{local_port=\"8080\"} 5\n\
            rampart_flows_closed_total{local_port=\"8080\"} 4\n\
            rampart_flows_named_closed_total{route=\"orders\",cluster=\"demo\",tenant=\"acme\"} 2\n\
            rampart_flows_named_bytes_total{direction=\"sent\",route=\"orders\",cluster=\"demo\",tenant=\"acme\"} 100\n\
            rampart_flows_named_bytes_total{direction=\"received\",route=\"orders\",cluster=\"demo\",tenant=\"acme\"} 40\n";
        let v = flows_view(&openmetrics::parse(text));
        assert_eq!(v["live"], 3.0);
        assert_eq!(v["ports"][0]["opened"], 5.0);
        assert_eq!(v["ports"][0]["closed"], 4.0);
        let n = &v["named"][0];
        assert_eq!(
            (&n["tenant"], &n["closed"], &n["sent"], &n["received"]),
            (&json!("acme"), &json!(2.0), &json!(100.0), &json!(40.0))
        );
    }
}

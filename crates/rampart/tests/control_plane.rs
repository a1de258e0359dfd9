//! `rampart control-plane` as a process: a gRPC client built from Envoy's published protos
//! walks State of the World on its ADS port, and sees a config file change arrive as a new
//! version (a broken edit in between is not served).

mod support;

use std::time::Duration;

use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::service::discovery::v3::DiscoveryRequest;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use prost::Message;
use support::*;
use tokio_stream::StreamExt;

const CDS: &str = "type.googleapis.com/envoy.config.cluster.v3.Cluster";

fn config(clusters: &[&str]) -> String {
    let list: String = clusters
        .iter()
        .enumerate()
        .map(|(i, c)| {
            format!(
                "  - {{ name: {c}, endpoints: [\"127.0.0.1:{}\"] }}\n",
                9000 + i
            )
        })
        .collect();
    format!(
        "listeners: [{{ name: main, address: \"127.0.0.1:10000\", route_table: main }}]\n\
         route_tables: [{{ name: main, virtual_hosts: [{{ name: all, domains: [\"*\"], routes: [{{ forward: {{ cluster: {} }} }}] }}] }}]\n\
         clusters:\n{list}",
        clusters[0]
    )
}

fn names(resp: &envoy_types::pb::envoy::service::discovery::v3::DiscoveryResponse) -> Vec<String> {
    let mut n: Vec<String> = resp
        .resources
        .iter()
        .map(|a| Cluster::decode(a.value.as_slice()).unwrap().name)
        .collect();
    n.sort();
    n
}

#[tokio::test]
async fn control_plane_serves_a_config_file_over_ads_and_follows_its_changes() {
    let dir = TempDir::new("control-plane");
    let path = dir.path("rampart.yaml");
    write_atomically(&path, &config(&["a", "b"]));
    let file = path.to_str().unwrap();
    let args = [
        "control-plane",
        "--config",
        file,
        "--listen",
        "127.0.0.1:0",
        "--watch-interval",
        "50ms",
    ];
    let mut proc = Proc::spawn("control-plane", &args);
    let addr = bound(&mut proc, "xds listening addr=").await;

    let mut client = AggregatedDiscoveryServiceClient::connect(format!("http://{addr}"))
        .await
        .unwrap();
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let mut responses = client
        .stream_aggregated_resources(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    let ask = |answering: Option<
        &envoy_types::pb::envoy::service::discovery::v3::DiscoveryResponse,
    >| DiscoveryRequest {
        type_url: CDS.into(),
        version_info: answering
            .map(|r| r.version_info.clone())
            .unwrap_or_default(),
        response_nonce: answering.map(|r| r.nonce.clone()).unwrap_or_default(),
        ..Default::default()
    };
    let mut next = async || {
        tokio::time::timeout(Duration::from_secs(10), responses.next())
            .await
            .expect("a response in time")
            .unwrap()
            .unwrap()
    };
    tx.send(ask(None)).await.unwrap();
    let first = next().await;
    assert_eq!(names(&first), ["a", "b"]);
    tx.send(ask(Some(&first))).await.unwrap();

    // A broken edit is not served; the fixed one after it is.
    write_atomically(&path, "clusters: 7\n");
    let checks = "config rejected; still serving the last good snapshot";
    let rejected = eventually(Duration::from_secs(10), || {
        let seen = proc.stderr().contains(checks);
        async move { seen }
    })
    .await;
    assert!(rejected, "{}", proc.stderr());
    write_atomically(&path, &config(&["a", "c"]));
    let second = next().await;
    assert_eq!(names(&second), ["a", "c"]);
    assert_ne!(second.version_info, first.version_info);
}

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
        "--admin",
        "127.0.0.1:0",
        "--watch-interval",
        "50ms",
    ];
    let mut proc = Proc::spawn("control-plane", &args);
    let addr = bound(&mut proc, "xds listening addr=").await;
    let admin = bound(&mut proc, "xds admin listening addr=").await;

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
        node: Some(envoy_types::pb::envoy::config::core::v3::Node {
            id: "proxy-1".into(),
            ..Default::default()
        }),
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

    // Rejected: `rampart xds status` shows the node's last good version and the error.
    let mut nack = ask(Some(&second));
    nack.version_info = first.version_info.clone();
    nack.error_detail = Some(envoy_types::pb::google::rpc::Status {
        code: 3,
        message: "cluster c refused".into(),
        ..Default::default()
    });
    tx.send(nack).await.unwrap();
    let status_line = || {
        let out = std::process::Command::new(bin())
            .args(["xds", "status", "--admin", &admin.to_string()])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .find(|l| l.starts_with("proxy-1 ") && l.contains("Cluster"))
            .map(str::to_owned)
            .unwrap_or_default()
    };
    let shown = eventually(Duration::from_secs(10), || {
        let line = status_line();
        async move { line.contains("cluster c refused") }
    })
    .await;
    let line = status_line();
    assert!(shown, "{line}");
    assert!(
        line.contains(&first.version_info),
        "acked stays the first version: {line}"
    );
    assert!(
        line.contains(&second.version_info),
        "sent and rejected: {line}"
    );
    let metrics = get(admin, "/metrics").await.text();
    assert!(
        metrics.contains("rampart_xds_nacks_total{type=\"Cluster\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("rampart_xds_streams_active{flavour=\"sotw\"} 1"),
        "{metrics}"
    );
}

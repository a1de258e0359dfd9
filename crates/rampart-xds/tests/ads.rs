//! The ADS protocol against a real server on a loopback port, driven by a gRPC client built
//! from Envoy's published protos: State of the World and Delta, initial responses, quiet
//! ACKs, NACKs that do not loop, subscriptions by name, EDS-only deltas, and a Delta client
//! resuming with the versions it holds. Negative checks ("nothing was resent") are bounded by
//! a later change: the next message on the ordered stream must be that change.

use std::collections::HashMap;
use std::time::Duration;

use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use envoy_types::pb::envoy::config::listener::v3::Listener;
use envoy_types::pb::envoy::config::route::v3::RouteConfiguration;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use envoy_types::pb::google::rpc::Status as RpcStatus;
use prost::Message;
use rampart_xds::Cache;
use rampart_xds::snapshot::{CLUSTER, ENDPOINT, LISTENER, ROUTE};
use tokio::sync::mpsc;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;

const WAIT: Duration = Duration::from_secs(5);

/// A config with one listener, one route table and clusters `c1` (endpoint port `p1`) and
/// `c2`; `body` is what the direct-response route answers.
fn config(p1: u16, body: &str) -> rampart_config::Config {
    rampart_config::from_yaml(&format!(
        r#"
listeners: [{{ name: main, address: "127.0.0.1:10000", route_table: main }}]
route_tables:
  - name: main
    virtual_hosts:
      - name: all
        domains: ["*", "*.example.com"]
        routes:
          - {{ match: {{ path: {{ prefix: /a }} }}, forward: {{ cluster: c1, prefix_rewrite: /b }} }}
          - {{ match: {{ path: {{ exact: /hello }} }}, direct_response: {{ status: 200, body: "{body}" }} }}
  - name: other
    virtual_hosts: [{{ name: o, domains: ["o"], routes: [{{ forward: {{ cluster: c2 }} }}] }}]
clusters:
  - {{ name: c1, endpoints: ["127.0.0.1:{p1}"] }}
  - {{ name: c2, endpoints: ["127.0.0.1:9002"], lb_policy: least_request }}
"#
    ))
    .unwrap()
}

struct Server {
    cache: Cache,
    client: AggregatedDiscoveryServiceClient<tonic::transport::Channel>,
    _stop: tokio_util::sync::DropGuard,
    version: u64,
}

impl Server {
    async fn start() -> Self {
        Self::start_with(Cache::new()).await
    }

    async fn start_with(cache: Cache) -> Self {
        cache.publish(rampart_xds::translate::snapshot(&config(9001, "v1"), 1));
        Self::serving(cache).await
    }

    /// A server on `cache` as it is (nothing published, maybe).
    async fn serving(cache: Cache) -> Self {
        let stop = CancellationToken::new();
        let addr = cache
            .spawn("127.0.0.1:0".parse().unwrap(), stop.clone())
            .await
            .unwrap();
        let client = AggregatedDiscoveryServiceClient::connect(format!("http://{addr}"))
            .await
            .unwrap();
        Self {
            cache,
            client,
            _stop: stop.drop_guard(),
            version: 1,
        }
    }

    fn publish(&mut self, cfg: &rampart_config::Config) {
        self.version += 1;
        self.cache
            .publish(rampart_xds::translate::snapshot(cfg, self.version));
    }

    async fn sotw(&mut self) -> Sotw {
        let (tx, rx) = mpsc::channel(16);
        let responses = self
            .client
            .stream_aggregated_resources(ReceiverStream::new(rx))
            .await
            .unwrap()
            .into_inner();
        Sotw { tx, responses }
    }

    async fn delta(&mut self) -> Delta {
        let (tx, rx) = mpsc::channel(16);
        let responses = self
            .client
            .delta_aggregated_resources(ReceiverStream::new(rx))
            .await
            .unwrap()
            .into_inner();
        Delta { tx, responses }
    }
}

fn node() -> Option<Node> {
    Some(Node {
        id: "test-node".into(),
        ..Default::default()
    })
}

fn nack(why: &str) -> Option<RpcStatus> {
    Some(RpcStatus {
        code: 3,
        message: why.into(),
        ..Default::default()
    })
}

struct Sotw {
    tx: mpsc::Sender<DiscoveryRequest>,
    responses: tonic::Streaming<DiscoveryResponse>,
}

impl Sotw {
    async fn ask(&self, type_url: &str, names: &[&str], answering: Option<&DiscoveryResponse>) {
        self.send(type_url, names, answering, None).await;
    }

    async fn send(
        &self,
        type_url: &str,
        names: &[&str],
        answering: Option<&DiscoveryResponse>,
        error: Option<RpcStatus>,
    ) {
        let req = DiscoveryRequest {
            node: node(),
            type_url: type_url.into(),
            resource_names: names.iter().map(|n| (*n).to_owned()).collect(),
            version_info: answering
                .map(|r| r.version_info.clone())
                .unwrap_or_default(),
            response_nonce: answering.map(|r| r.nonce.clone()).unwrap_or_default(),
            error_detail: error,
            ..Default::default()
        };
        self.tx.send(req).await.unwrap();
    }

    async fn next(&mut self) -> DiscoveryResponse {
        tokio::time::timeout(WAIT, self.responses.next())
            .await
            .expect("a response in time")
            .expect("the stream is open")
            .expect("not an error")
    }
}

struct Delta {
    tx: mpsc::Sender<DeltaDiscoveryRequest>,
    responses: tonic::Streaming<DeltaDiscoveryResponse>,
}

impl Delta {
    async fn send(&self, req: DeltaDiscoveryRequest) {
        self.tx
            .send(DeltaDiscoveryRequest {
                node: node(),
                ..req
            })
            .await
            .unwrap();
    }

    async fn subscribe(&self, type_url: &str, names: &[&str]) {
        self.send(DeltaDiscoveryRequest {
            type_url: type_url.into(),
            resource_names_subscribe: names.iter().map(|n| (*n).to_owned()).collect(),
            ..Default::default()
        })
        .await;
    }

    async fn ack(&self, r: &DeltaDiscoveryResponse) {
        self.send(DeltaDiscoveryRequest {
            type_url: r.type_url.clone(),
            response_nonce: r.nonce.clone(),
            ..Default::default()
        })
        .await;
    }

    async fn next(&mut self) -> DeltaDiscoveryResponse {
        tokio::time::timeout(WAIT, self.responses.next())
            .await
            .expect("a response in time")
            .expect("the stream is open")
            .expect("not an error")
    }
}

fn names_of<M: Message + Default>(
    resources: &[envoy_types::pb::google::protobuf::Any],
    name: impl Fn(&M) -> String,
) -> Vec<String> {
    let mut out: Vec<String> = resources
        .iter()
        .map(|a| name(&M::decode(a.value.as_slice()).unwrap()))
        .collect();
    out.sort();
    out
}

#[tokio::test]
async fn sotw_initial_ack_is_quiet_and_a_nack_does_not_loop() {
    let mut s = Server::start().await;
    let mut c = s.sotw().await;
    c.ask(CLUSTER, &[], None).await;
    let v1 = c.next().await;
    assert_eq!(v1.type_url, CLUSTER);
    assert_eq!(
        names_of::<Cluster>(&v1.resources, |c| c.name.clone()),
        ["c1", "c2"]
    );
    assert!(!v1.nonce.is_empty() && !v1.version_info.is_empty());

    // ACK; then a route-only change; then a cluster change. The next message must be the
    // cluster change: nothing was resent for the ACK or the route change.
    c.ask(CLUSTER, &[], Some(&v1)).await;
    s.publish(&config(9001, "v2"));
    s.publish(&config(9101, "v2"));
    let mut cfg3 = config(9101, "v2");
    cfg3.clusters.pop();
    s.publish(&cfg3);
    let v2 = c.next().await;
    assert_eq!(v2.type_url, CLUSTER);
    assert_ne!(v2.version_info, v1.version_info);
    assert_eq!(
        names_of::<Cluster>(&v2.resources, |c| c.name.clone()),
        ["c1"]
    );

    // NACK it: the client keeps v1; the same version is not sent again. A listener request
    // afterwards is answered next, and nothing of type CLUSTER comes before it.
    c.send(CLUSTER, &[], Some(&v2), nack("bad cluster")).await;
    c.ask(LISTENER, &[], None).await;
    let l = c.next().await;
    assert_eq!(l.type_url, LISTENER, "a NACKed version was resent");
    assert_eq!(
        names_of::<Listener>(&l.resources, |l| l.name.clone()),
        ["main"]
    );
    let status = s.cache.nodes().snapshot();
    let cds = &status["test-node"][CLUSTER];
    assert_eq!(cds.acked, v1.version_info);
    assert_eq!(
        cds.nacked.as_ref().map(|n| n.1.as_str()),
        Some("bad cluster")
    );

    // The next change of clusters is sent.
    s.publish(&config(9201, "v2"));
    let v3 = c.next().await;
    assert_eq!(v3.type_url, CLUSTER);
    assert_eq!(
        names_of::<Cluster>(&v3.resources, |c| c.name.clone()),
        ["c1", "c2"]
    );
}

#[tokio::test]
async fn sotw_routes_and_endpoints_are_asked_for_by_name() {
    let mut s = Server::start().await;
    let mut c = s.sotw().await;
    c.ask(ROUTE, &["main"], None).await;
    let r = c.next().await;
    assert_eq!(
        names_of::<RouteConfiguration>(&r.resources, |r| r.name.clone()),
        ["main"]
    );
    c.ask(ENDPOINT, &["c1"], None).await;
    let e = c.next().await;
    assert_eq!(
        names_of::<ClusterLoadAssignment>(&e.resources, |c| c.cluster_name.clone()),
        ["c1"]
    );
    // A changed subscription is answered at once (after the ACK that carries it).
    c.ask(ROUTE, &["main", "other"], Some(&r)).await;
    let both = c.next().await;
    assert_eq!(both.type_url, ROUTE);
    assert_eq!(
        names_of::<RouteConfiguration>(&both.resources, |r| r.name.clone()),
        ["main", "other"]
    );
}

#[tokio::test]
async fn delta_sends_only_what_changed_and_an_endpoint_change_is_eds_only() {
    let mut s = Server::start().await;
    let mut d = s.delta().await;
    d.subscribe(CLUSTER, &[]).await;
    let cds = d.next().await;
    assert_eq!(cds.type_url, CLUSTER);
    let mut got: Vec<&str> = cds.resources.iter().map(|r| r.name.as_str()).collect();
    got.sort_unstable();
    assert_eq!(got, ["c1", "c2"]);
    d.ack(&cds).await;
    d.subscribe(ENDPOINT, &["c1", "c2"]).await;
    let eds = d.next().await;
    assert_eq!(eds.type_url, ENDPOINT);
    assert_eq!(eds.resources.len(), 2);
    d.ack(&eds).await;

    // c1's endpoint moves: one EDS resource, no CDS message.
    s.publish(&config(9101, "v1"));
    let moved = d.next().await;
    assert_eq!(moved.type_url, ENDPOINT, "an endpoint change reached CDS");
    assert_eq!(moved.resources.len(), 1);
    assert_eq!(moved.resources[0].name, "c1");
    let cla = ClusterLoadAssignment::decode(
        moved.resources[0]
            .resource
            .as_ref()
            .unwrap()
            .value
            .as_slice(),
    )
    .unwrap();
    assert!(format!("{cla:?}").contains("9101"), "{cla:?}");
    d.ack(&moved).await;

    // c2 goes: CDS and EDS say it is removed.
    let mut cfg = config(9101, "v1");
    cfg.clusters.retain(|c| c.name != "c2");
    cfg.route_tables.retain(|t| t.name != "other");
    s.publish(&cfg);
    let mut removed = HashMap::new();
    for _ in 0..2 {
        let r = d.next().await;
        removed.insert(r.type_url.clone(), r.removed_resources.clone());
        d.ack(&r).await;
    }
    assert_eq!(removed[CLUSTER], ["c2"]);
    assert_eq!(removed[ENDPOINT], ["c2"]);
}

/// A control plane that has published nothing yet (still reading its store) says nothing:
/// an empty answer would make a reconnecting client drop everything it holds.
#[tokio::test]
async fn nothing_is_sent_before_the_first_snapshot() {
    let mut s = Server::serving(Cache::new()).await;
    let mut d = s.delta().await;
    d.subscribe(CLUSTER, &[]).await;
    let early = tokio::time::timeout(Duration::from_millis(300), d.responses.next()).await;
    assert!(early.is_err(), "answered before any snapshot: {early:?}");
    s.publish(&config(9001, "v1"));
    let cds = d.next().await;
    assert_eq!(cds.type_url, CLUSTER);
    assert_eq!(cds.resources.len(), 2);
}

/// Make before break: a cluster that a route named is removed only after the client holds
/// (has answered) the routes that no longer name it, so a client checking its config whole
/// never holds a route pointing at nothing (it NACKed the removal and kept the cluster).
#[tokio::test]
async fn delta_removes_a_cluster_only_after_the_routes_that_named_it() {
    let mut s = Server::start().await;
    let mut d = s.delta().await;
    d.subscribe(CLUSTER, &[]).await;
    let cds = d.next().await;
    d.ack(&cds).await;
    d.subscribe(LISTENER, &[]).await;
    let lds = d.next().await;
    assert_eq!(lds.type_url, LISTENER);
    d.ack(&lds).await;
    d.subscribe(ROUTE, &["main", "other"]).await;
    let rds = d.next().await;
    assert_eq!(rds.type_url, ROUTE);
    d.ack(&rds).await;

    // Route table `other` moves from c2 to c1, and c2 goes.
    let mut cfg = config(9001, "v1");
    cfg.clusters.retain(|c| c.name != "c2");
    let text = r#"
listeners: []
route_tables:
  - name: other
    virtual_hosts: [{ name: o, domains: ["o"], routes: [{ forward: { cluster: c1 } }] }]
clusters: [{ name: c1, endpoints: ["127.0.0.1:9001"] }]
"#;
    let other = rampart_config::from_yaml(text).unwrap().route_tables;
    for t in &mut cfg.route_tables {
        if t.name == "other" {
            *t = other[0].clone();
        }
    }
    s.publish(&cfg);
    let first = d.next().await;
    assert_eq!(first.type_url, ROUTE, "the routes must go first: {first:?}");
    assert!(first.removed_resources.is_empty());
    // Nothing else until the routes are answered.
    let early = tokio::time::timeout(Duration::from_millis(300), d.responses.next()).await;
    assert!(
        early.is_err(),
        "sent before the routes were answered: {early:?}"
    );
    d.ack(&first).await;
    let then = d.next().await;
    assert_eq!(then.type_url, CLUSTER);
    assert_eq!(then.removed_resources, ["c2"]);
    assert!(then.resources.is_empty());
}

#[tokio::test]
async fn delta_resumes_from_the_versions_the_client_holds() {
    let mut s = Server::start().await;
    let mut first = s.delta().await;
    first.subscribe(CLUSTER, &[]).await;
    let cds = first.next().await;
    let held: HashMap<String, String> = cds
        .resources
        .iter()
        .map(|r| (r.name.clone(), r.version.clone()))
        .collect();
    drop(first);

    // While the client is away, c1 changes and c2 goes.
    let mut cfg = config(9001, "v1");
    cfg.clusters[0].connect_timeout = Duration::from_secs(7);
    cfg.clusters.retain(|c| c.name != "c2");
    cfg.route_tables.retain(|t| t.name != "other");
    s.publish(&cfg);

    let mut back = s.delta().await;
    back.send(DeltaDiscoveryRequest {
        type_url: CLUSTER.into(),
        initial_resource_versions: held,
        ..Default::default()
    })
    .await;
    let r = back.next().await;
    assert_eq!(r.resources.len(), 1, "only the changed cluster: {r:?}");
    assert_eq!(r.resources[0].name, "c1");
    // Its routes (not asked for yet) may still name c2: the removal waits for the answer.
    assert!(r.removed_resources.is_empty(), "{r:?}");
    back.ack(&r).await;
    let then = back.next().await;
    assert_eq!(then.type_url, CLUSTER);
    assert_eq!(then.removed_resources, ["c2"]);
    assert!(then.resources.is_empty());
}

#[tokio::test]
async fn delta_nack_does_not_loop() {
    let mut s = Server::start().await;
    let mut d = s.delta().await;
    d.subscribe(CLUSTER, &[]).await;
    let cds = d.next().await;
    d.send(DeltaDiscoveryRequest {
        type_url: CLUSTER.into(),
        response_nonce: cds.nonce.clone(),
        error_detail: nack("no thanks"),
        ..Default::default()
    })
    .await;
    // Answered next: a listener subscription, not the rejected clusters again.
    d.subscribe(LISTENER, &[]).await;
    let l = d.next().await;
    assert_eq!(l.type_url, LISTENER, "the NACKed clusters were resent");
    let st = &s.cache.nodes().snapshot()["test-node"][CLUSTER];
    assert_eq!(st.nacked.as_ref().map(|n| n.1.as_str()), Some("no thanks"));
}

type Opened = Result<
    (
        mpsc::Sender<DeltaDiscoveryRequest>,
        tonic::Streaming<DeltaDiscoveryResponse>,
    ),
    tonic::Status,
>;

/// One Delta stream for `node`, asking for all clusters: its first response, or the status
/// the server refused the stream with.
async fn open_as(
    client: &AggregatedDiscoveryServiceClient<tonic::transport::Channel>,
    node: &str,
) -> Opened {
    let (tx, rx) = mpsc::channel(4);
    tx.send(DeltaDiscoveryRequest {
        node: Some(Node {
            id: node.into(),
            ..Default::default()
        }),
        type_url: CLUSTER.into(),
        ..Default::default()
    })
    .await
    .unwrap();
    let mut responses = client
        .clone()
        .delta_aggregated_resources(ReceiverStream::new(rx))
        .await?
        .into_inner();
    let first = tokio::time::timeout(WAIT, responses.next())
        .await
        .expect("a response in time")
        .expect("the stream is open")?;
    assert_eq!(first.type_url, CLUSTER);
    Ok((tx, responses))
}

#[tokio::test]
async fn a_reconnect_storm_is_admitted_at_the_set_rate_and_everyone_gets_in() {
    // 10 at once, then 20 a second: 40 proxies arriving together.
    let s = Server::start_with(Cache::with_admission(20.0, 10.0)).await;
    let first = open_all(&s.client, (0..40).map(|i| format!("proxy-{i}"))).await;
    let admitted: Vec<_> = first.iter().filter(|r| r.is_ok()).collect();
    let refused: Vec<_> = first.iter().filter_map(|r| r.as_ref().err()).collect();
    assert!(
        (10..=13).contains(&admitted.len()),
        "{} admitted of 40",
        admitted.len()
    );
    assert!(
        refused
            .iter()
            .all(|e| e.code() == tonic::Code::ResourceExhausted),
        "{refused:?}"
    );
    let m = s.cache.nodes().encode();
    assert!(
        m.contains(&format!(
            "rampart_xds_streams_refused_total {}",
            refused.len()
        )),
        "{m}"
    );
    assert!(
        m.contains("rampart_xds_push_latency_seconds_count{type=\"Cluster\"}"),
        "{m}"
    );
    // The refused ones come back (as a proxy's backoff would) and get in.
    let mut open: Vec<_> = first.into_iter().flatten().collect();
    let mut waiting: Vec<String> = (0..40)
        .map(|i| format!("proxy-{i}"))
        .filter(|n| !s.cache.nodes().snapshot().contains_key(n))
        .collect();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !waiting.is_empty() && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let mut still = Vec::new();
        for n in waiting {
            match open_as(&s.client, &n).await {
                Ok(o) => open.push(o),
                Err(_) => still.push(n),
            }
        }
        waiting = still;
    }
    assert!(waiting.is_empty(), "never admitted: {waiting:?}");
    assert_eq!(s.cache.nodes().snapshot().len(), 40);
    // Nodes leave the status table with their streams.
    drop(open);
    let gone = rampart_test_support::eventually(Duration::from_secs(5), || async {
        s.cache.nodes().snapshot().is_empty()
    })
    .await;
    assert!(gone, "{:?}", s.cache.nodes().snapshot().keys());
}

/// Opens a stream per node, all at once.
async fn open_all(
    client: &AggregatedDiscoveryServiceClient<tonic::transport::Channel>,
    nodes: impl Iterator<Item = String>,
) -> Vec<Opened> {
    let mut set = tokio::task::JoinSet::new();
    for n in nodes {
        let c = client.clone();
        set.spawn(async move { open_as(&c, &n).await });
    }
    let mut out = Vec::new();
    while let Some(r) = set.join_next().await {
        out.push(r.unwrap());
    }
    out
}

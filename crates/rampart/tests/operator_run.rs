//! `rampart operator run` end to end, without Kubernetes: two operator processes talk to an
//! in-memory Kubernetes API over HTTP (rampart-kube-fake: list, watch, server-side apply,
//! finalizers, owner-reference garbage collection) and program a real 3-node store, a real
//! control plane and a real xDS-fed proxy carrying traffic the whole time.
//!
//! The story, in one run (each step waits on what the operator writes back to the API):
//! 1. a Gateway and an HTTPRoute roll out: Provisioning → Running, conditions Programmed;
//! 2. a broken HTTPRoute (a regular expression that does not compile) is refused by the
//!    store's check and reverted at once: traffic never breaks;
//! 3. a Gateway change the proxy refuses (a listener on a port already taken on its host) is
//!    NACKed and reverted: traffic never breaks;
//! 4. an HTTPRoute sending its traffic to a dead backend fails on its error rate within the
//!    bake time and is reverted to the last good generation: traffic comes back;
//! 5. a good generation rolls out with no failed request; one whose Service's pods fail
//!    their readiness probes (its EndpointSlice) is reverted on health;
//! 6. the leader is killed; the other replica takes the Lease over and carries on;
//! 7. a deleted HTTPRoute is held by the finalizer until its routes are out of the store;
//! 8. a RampartFunction (its component in a ConfigMap) is deployed to the store and served
//!    through an HTTPRoute backend; a generation whose component does not match its SHA-256
//!    is reverted before anything is deployed, one whose invocations trap is reverted on its
//!    failure rate; deleting it takes it out of the store;
//! 9. a RampartWasmPlugin (the public proxy-wasm SDK's test plugin, from a ConfigMap) is
//!    stored in the store by digest and put on its target route's requests; a generation
//!    whose module cannot be read is reverted before anything is written; deleting it takes
//!    it off;
//! 10. a RampartPolicy (a tenant's Rego bundle) is checked, written to the store and
//!     decides on the rules naming it (an ExtensionRef filter); a generation whose own
//!     tests fail is refused before anything is written, one whose decisions fail is
//!     reverted on its error rate; deleting it leaves the rule answering 500, never open;
//! 11. a RampartCluster gets its workloads (peer TLS Secret, StatefulSet, Services, budgets,
//!     control plane, proxies) owned by it, is Running once its store nodes are ready, and
//!     takes them along when deleted.

mod support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use rampart_kube_fake::FakeApi;
use rampart_test_support::{eventually, free_port};
use serde_json::{Value, json};
use support::*;

const GATEWAY_API: &str = "gateway.networking.k8s.io/v1";
/// Long enough for a few looks at the proxies, short enough for a test.
const BAKE: &str = "2s";
const WAIT: Duration = Duration::from_secs(30);

fn gateway(port: u16, extra_port: Option<u16>) -> Value {
    let mut listeners = vec![json!({ "name": "http", "port": port, "protocol": "HTTP" })];
    if let Some(p) = extra_port {
        listeners.push(json!({ "name": "admin", "port": p, "protocol": "HTTP" }));
    }
    json!({
        "apiVersion": GATEWAY_API,
        "kind": "Gateway",
        "metadata": { "name": "edge", "namespace": "shop" },
        "spec": { "gatewayClassName": "rampart", "listeners": listeners },
    })
}

fn route(name: &str, path: &Value, service_port: u16) -> Value {
    json!({
        "apiVersion": GATEWAY_API,
        "kind": "HTTPRoute",
        "metadata": { "name": name, "namespace": "shop" },
        "spec": {
            "parentRefs": [{ "name": "edge" }],
            "rules": [{
                "matches": [{ "path": path }],
                "backendRefs": [{ "name": "web", "port": service_port }],
            }],
        },
    })
}

fn prefix(p: &str) -> Value {
    json!({ "type": "PathPrefix", "value": p })
}

/// The rollout record the operator keeps for an object (in its own namespace, annotated
/// with the object it is about).
fn record(api: &FakeApi, kind: &str, name: &str) -> Value {
    api.list("v1", "configmaps")
        .into_iter()
        .filter(|cm| cm["metadata"]["namespace"] == "rampart-system")
        .find(|cm| {
            cm["metadata"]["annotations"]["rampart.dev/object"]
                .as_str()
                .is_some_and(|o| o.eq_ignore_ascii_case(&format!("{kind}/shop/{name}")))
        })
        .and_then(|cm| serde_json::from_str(cm["data"]["record"].as_str()?).ok())
        .unwrap_or(Value::Null)
}

async fn await_phase(api: &FakeApi, kind: &str, name: &str, phase: &str, generation: i64) {
    let ok = eventually(WAIT, || async {
        let r = record(api, kind, name);
        r["phase"] == phase && r["generation"] == generation
    })
    .await;
    assert!(
        ok,
        "{kind} {name}: never {phase} at generation {generation}; record {}",
        record(api, kind, name)
    );
}

/// The object's condition `kind` (routes: under their first parent).
fn condition(api: &FakeApi, plural: &str, name: &str, kind: &str) -> Value {
    let o = api
        .get(GATEWAY_API, plural, Some("shop"), name)
        .unwrap_or(Value::Null);
    let conditions = if plural == "httproutes" {
        &o["status"]["parents"][0]["conditions"]
    } else {
        &o["status"]["conditions"]
    };
    conditions
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| c["type"] == kind)
        .cloned()
        .unwrap_or(Value::Null)
}

/// Waits for condition `kind` of the object to have `status`: the record is saved before
/// the status and the Events are written, so they follow it.
async fn await_condition(api: &FakeApi, plural: &str, name: &str, kind: &str, status: &str) {
    let ok = eventually(WAIT, || async {
        condition(api, plural, name, kind)["status"] == status
    })
    .await;
    assert!(
        ok,
        "{plural} {name}: {kind} never {status}: {}",
        condition(api, plural, name, kind)
    );
}

/// Reasons of the Events about object `name`.
fn events(api: &FakeApi, name: &str) -> Vec<String> {
    api.list("events.k8s.io/v1", "events")
        .into_iter()
        .filter(|e| e["regarding"]["name"] == name)
        .filter_map(|e| e["reason"].as_str().map(str::to_owned))
        .collect()
}

/// Waits for an Event with `reason` about `name`: the controller records Events after it
/// writes the status, so the condition can be seen first (CI once caught that gap).
async fn await_event(api: &FakeApi, name: &str, reason: &str) {
    let seen = eventually(WAIT, || async {
        events(api, name).iter().any(|r| r == reason)
    })
    .await;
    assert!(
        seen,
        "no {reason} event for {name}: {:?}",
        events(api, name)
    );
}

/// Requests to the gateway every 20 ms until stopped: answers by upstream, failures.
struct Traffic {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
    last: Arc<std::sync::Mutex<String>>,
}

impl Traffic {
    fn start(addr: SocketAddr, path: &'static str) -> Self {
        let t = Self {
            stop: Arc::default(),
            ok: Arc::default(),
            failed: Arc::default(),
            last: Arc::default(),
        };
        let (stop, ok, failed, last) = (
            t.stop.clone(),
            t.ok.clone(),
            t.failed.clone(),
            t.last.clone(),
        );
        tokio::spawn(async move {
            // Bounded: at most 10 000 requests (over 3 minutes at this pace).
            for _ in 0..10_000 {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let r = try_send(&h1(), request(http::Method::GET, addr, path, &[])).await;
                match r {
                    Ok(r) if r.status.is_success() => {
                        ok.fetch_add(1, Ordering::Relaxed);
                        *last.lock().unwrap() = r.text();
                    }
                    _ => {
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        });
        t
    }

    fn failed(&self) -> u64 {
        self.failed.load(Ordering::Relaxed)
    }

    /// Waits for `n` more successful answers; the last one came from `upstream`.
    async fn answers_from(&self, upstream: &str, n: u64) -> bool {
        let from = self.ok.load(Ordering::Relaxed);
        eventually(WAIT, || async {
            self.ok.load(Ordering::Relaxed) >= from + n
                && self.last.lock().unwrap().contains(upstream)
        })
        .await
    }
}

impl Drop for Traffic {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// The platform under the operator: 3 store nodes, a control plane, a proxy.
struct Platform {
    store: StoreCluster,
    _cp: Proc,
    cp_admin: SocketAddr,
    _proxy: Proc,
    proxy_admin: SocketAddr,
}

async fn platform(dir: &TempDir) -> Platform {
    let store = StoreCluster::start(dir);
    let eps = store.endpoints();
    let ready = eventually(WAIT, || async {
        std::process::Command::new(bin())
            .args(["get", "cluster", "--endpoints", &eps])
            .output()
            .is_ok_and(|o| o.status.success())
    })
    .await;
    assert!(ready, "the store did not come up");
    let (mut cp, ads) = spawn_control_plane(&eps).await;
    let cp_admin = bound(&mut cp, "xds admin listening addr=").await;
    let mut proxy = Proc::spawn(
        "proxy",
        &[
            "proxy",
            "--xds",
            &ads,
            "--node-id",
            "edge-proxy",
            "--workers",
            "1",
            "--admin",
            "127.0.0.1:0",
            "--store",
            &eps,
        ],
    );
    let proxy_admin = bound(&mut proxy, "admin endpoint listening local=").await;
    Platform {
        store,
        _cp: cp,
        cp_admin,
        _proxy: proxy,
        proxy_admin,
    }
}

struct Backends {
    v1: Upstream,
    v2: Upstream,
    dead: u16,
}

async fn operator(
    identity: &str,
    kubeconfig: &std::path::Path,
    p: &Platform,
    b: &Backends,
) -> (Proc, SocketAddr) {
    let v1 = format!("shop/web:80={}", b.v1.addr);
    let v2 = format!("shop/web:8080={}", b.v2.addr);
    let dead = format!("shop/web:81=127.0.0.1:{}", b.dead);
    let (eps, cp, proxy) = (
        p.store.endpoints(),
        p.cp_admin.to_string(),
        p.proxy_admin.to_string(),
    );
    let mut op = Proc::spawn(
        &format!("operator {identity}"),
        &[
            "operator",
            "run",
            "--kubeconfig",
            kubeconfig.to_str().unwrap(),
            "--store",
            &eps,
            "--control-plane-admin",
            &cp,
            "--proxy-admin",
            &proxy,
            "--bake",
            BAKE,
            "--min-requests",
            "10",
            "--max-error-rate",
            "0.2",
            "--backend",
            &v1,
            "--backend",
            &v2,
            "--backend",
            &dead,
            "--listen-host",
            "127.0.0.1",
            "--lease-namespace",
            "rampart-system",
            "--lease-duration",
            "3s",
            "--identity",
            identity,
            "--metrics",
            "127.0.0.1:0",
        ],
    );
    let metrics = bound(&mut op, "operator metrics listening addr=").await;
    (op, metrics)
}

fn lease_holder(api: &FakeApi) -> Value {
    api.get(
        "coordination.k8s.io/v1",
        "leases",
        Some("rampart-system"),
        "rampart-operator",
    )
    .map_or(Value::Null, |l| l["spec"]["holderIdentity"].clone())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_rolls_out_reverts_fails_over_and_cleans_up() {
    let dir = TempDir::new("operator-run");
    let api = FakeApi::start().await;
    let kubeconfig = dir.path("kubeconfig");
    api.write_kubeconfig(&kubeconfig).unwrap();
    let p = platform(&dir).await;
    let b = Backends {
        v1: demo_upstream("v1").await,
        v2: demo_upstream("v2").await,
        dead: free_port(),
    };
    let (mut a, _) = operator("op-a", &kubeconfig, &p, &b).await;
    assert!(
        eventually(WAIT, || async { lease_holder(&api) == "op-a" }).await,
        "op-a never took the lease: {}",
        a.stderr()
    );
    let (mut op_b, b_metrics) = operator("op-b", &kubeconfig, &p, &b).await;

    // 1. A Gateway and an HTTPRoute roll out.
    let port = free_port();
    let gen1 = route("site", &prefix("/"), 80);
    api.upsert(GATEWAY_API, "gateways", gateway(port, None));
    api.upsert(GATEWAY_API, "httproutes", gen1.clone());
    await_phase(&api, "gateway", "edge", "Running", 1).await;
    await_phase(&api, "httproute", "site", "Running", 1).await;
    await_condition(&api, "httproutes", "site", "Programmed", "True").await;
    await_condition(&api, "httproutes", "site", "ResolvedRefs", "True").await;
    await_condition(&api, "gateways", "edge", "Programmed", "True").await;
    let site = api
        .get(GATEWAY_API, "httproutes", Some("shop"), "site")
        .unwrap();
    assert_eq!(
        site["metadata"]["finalizers"][0],
        "rampart.dev/store-cleanup"
    );
    // Another controller's Gateway and route: no finalizer, record or status from us.
    let mut theirs_gw = gateway(free_port(), None);
    theirs_gw["metadata"]["name"] = json!("theirs");
    theirs_gw["spec"]["gatewayClassName"] = json!("someone-else");
    api.upsert(GATEWAY_API, "gateways", theirs_gw);
    let mut theirs = route("theirs", &prefix("/theirs"), 80);
    theirs["spec"]["parentRefs"] = json!([{ "name": "theirs" }]);
    theirs["status"] = json!({});
    api.upsert(GATEWAY_API, "httproutes", theirs);
    api.set_status(
        GATEWAY_API,
        "httproutes",
        Some("shop"),
        "theirs",
        json!({ "parents": [{ "controllerName": "example.com/other", "parentRef": { "name": "theirs" }, "conditions": [] }] }),
    );
    let gw = SocketAddr::from(([127, 0, 0, 1], port));
    let traffic = Traffic::start(gw, "/");
    assert!(
        traffic.answers_from("v1", 20).await,
        "no traffic through the gateway"
    );
    assert_eq!(traffic.failed(), 0);

    let theirs = api
        .get(GATEWAY_API, "httproutes", Some("shop"), "theirs")
        .unwrap();
    assert!(theirs["metadata"]["finalizers"].is_null(), "{theirs}");
    assert_eq!(record(&api, "httproute", "theirs"), Value::Null);
    assert_eq!(
        theirs["status"]["parents"].as_array().map(Vec::len),
        Some(1),
        "{theirs}"
    );

    // 2. Refused by the store's check: reverted before any proxy saw it.
    let mut broken = gen1.clone();
    broken["spec"]["rules"][0]["matches"][0]["path"] =
        json!({ "type": "RegularExpression", "value": "/(unclosed" });
    api.upsert(GATEWAY_API, "httproutes", broken);
    await_phase(&api, "httproute", "site", "RolledBack", 2).await;
    let r = record(&api, "httproute", "site");
    assert!(
        r["reason"].as_str().unwrap().contains("store refused"),
        "{r}"
    );
    await_condition(&api, "httproutes", "site", "Programmed", "False").await;
    await_event(&api, "site", "RolledBack").await;
    assert!(traffic.answers_from("v1", 20).await);
    assert_eq!(traffic.failed(), 0, "a refused generation broke traffic");

    // 3. NACKed by the proxy: a listener on a port taken on its host.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken_port = taken.local_addr().unwrap().port();
    // A good route changed at the same moment is not blamed for the Gateway's NACK: one
    // unanswered generation at a time.
    api.upsert(GATEWAY_API, "gateways", gateway(port, Some(taken_port)));
    api.upsert(
        GATEWAY_API,
        "httproutes",
        route("bystander", &prefix("/bystander"), 80),
    );
    await_phase(&api, "gateway", "edge", "RolledBack", 2).await;
    await_phase(&api, "httproute", "bystander", "Running", 1).await;
    let r = record(&api, "gateway", "edge");
    assert!(r["reason"].as_str().unwrap().contains("refused"), "{r}");
    await_event(&api, "edge", "RolledBack").await;
    assert!(traffic.answers_from("v1", 20).await);
    assert_eq!(traffic.failed(), 0, "a NACKed generation broke traffic");
    drop(taken);

    // 4. A dead backend: errors past the threshold within the bake time, reverted.
    api.upsert(GATEWAY_API, "httproutes", route("site", &prefix("/"), 81));
    await_phase(&api, "httproute", "site", "RolledBack", 3).await;
    let r = record(&api, "httproute", "site");
    assert!(r["reason"].as_str().unwrap().contains("error rate"), "{r}");
    assert!(
        traffic.answers_from("v1", 20).await,
        "traffic never came back"
    );
    let failed_during_bad_generation = traffic.failed();
    assert!(failed_during_bad_generation > 0);

    // 5. A good generation: no failed request.
    api.upsert(GATEWAY_API, "httproutes", route("site", &prefix("/"), 8080));
    await_phase(&api, "httproute", "site", "Running", 4).await;
    assert!(traffic.answers_from("v2", 20).await);
    assert_eq!(traffic.failed(), failed_during_bad_generation);

    // 5b. The pods behind a generation's Service fail their readiness probes (its
    // EndpointSlice says so): reverted on health, whatever its traffic does.
    let slice = |ready: bool| {
        json!({
            "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": { "name": "web-x1", "namespace": "shop",
                          "labels": { "kubernetes.io/service-name": "web" } },
            "addressType": "IPv4",
            "endpoints": [{ "addresses": ["10.1.0.7"], "conditions": { "ready": ready } }],
        })
    };
    api.upsert("discovery.k8s.io/v1", "endpointslices", slice(false));
    api.upsert(GATEWAY_API, "httproutes", route("site", &prefix("/"), 80));
    await_phase(&api, "httproute", "site", "RolledBack", 5).await;
    let r = record(&api, "httproute", "site");
    assert!(r["reason"].as_str().unwrap().contains("readiness"), "{r}");
    assert!(traffic.answers_from("v2", 20).await);
    assert_eq!(traffic.failed(), failed_during_bad_generation);
    api.upsert("discovery.k8s.io/v1", "endpointslices", slice(true));

    // 6. The leader dies; the other replica takes over and carries on.
    assert_eq!(lease_holder(&api), "op-a");
    assert!(
        metrics(b_metrics)
            .await
            .contains("rampart_operator_leader 0")
    );
    a.signal("KILL");
    assert!(
        eventually(WAIT, || async { lease_holder(&api) == "op-b" }).await,
        "op-b never took over: {}",
        op_b.stderr()
    );
    api.upsert(GATEWAY_API, "httproutes", route("api", &prefix("/api"), 80));
    await_phase(&api, "httproute", "api", "Running", 1).await;
    assert!(
        metrics(b_metrics)
            .await
            .contains("rampart_operator_leader 1")
    );

    // 7. Deleting: held by the finalizer until the store no longer routes to it.
    api.delete(GATEWAY_API, "httproutes", Some("shop"), "site");
    let gone = eventually(WAIT, || async {
        api.get(GATEWAY_API, "httproutes", Some("shop"), "site")
            .is_none()
    })
    .await;
    assert!(
        gone,
        "the finalizer was never removed: {}\nobject: {}\nrecord: {}\noperator metrics: {}",
        op_b.stderr(),
        api.get(GATEWAY_API, "httproutes", Some("shop"), "site")
            .unwrap_or_default(),
        record(&api, "httproute", "site"),
        metrics(b_metrics).await
    );
    assert_eq!(
        record(&api, "httproute", "site"),
        Value::Null,
        "record left behind"
    );
    assert!(
        eventually(WAIT, || async {
            try_send(&h1(), request(http::Method::GET, gw, "/", &[]))
                .await
                .is_ok_and(|r| r.status == 404)
        })
        .await,
        "the deleted route is still served; store: {}\nxds: {}\noperator: {}",
        rampart_ok(&["get", "routetable", "--endpoints", &p.store.endpoints()]),
        rampart_ok(&["xds", "status", "--admin", &p.cp_admin.to_string()]),
        op_b.stderr()
    );
    let clusters = rampart_ok(&["get", "cluster", "--endpoints", &p.store.endpoints()]);
    assert!(!clusters.contains("k8s-svc_shop_web_8080"), "{clusters}");
    assert!(clusters.contains("k8s-svc_shop_web_80\""), "{clusters}");
    drop(traffic);

    functions(&api, gw).await;
    plugins(&api, gw).await;
    policies(&api, &p, gw).await;
    cluster(&api).await;

    // At rest nothing reconciles itself: no status write wakes its own object again.
    let reconciles = |text: String| -> f64 {
        text.lines()
            .filter(|l| l.starts_with("rampart_operator_reconciles_total{"))
            .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
            .sum()
    };
    let before = reconciles(metrics(b_metrics).await);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let after = reconciles(metrics(b_metrics).await);
    assert!(
        after - before <= 2.0,
        "{before} → {after} reconciles at rest"
    );
    assert!(op_b.exited().is_none(), "{}", op_b.stderr());
}

/// The value of header `x-tenant` the demo upstream saw for a request to `path`.
async fn tenant(gw: SocketAddr, path: &str) -> Value {
    match try_send(&h1(), request(http::Method::GET, gw, path, &[])).await {
        Ok(r) if r.status.is_success() => r.json()["headers"]["x-tenant"].clone(),
        _ => Value::Null,
    }
}

fn plugin(key: &str) -> Value {
    json!({
        "apiVersion": FUNCTIONS, "kind": "RampartWasmPlugin",
        "metadata": { "name": "tenant", "namespace": "shop" },
        "spec": {
            "source": { "configMap": { "name": "tenant-wasm", "key": key } },
            "targetRoutes": ["api"],
            "config": "x-tenant=k8s",
            "allowUnsigned": true,
        },
    })
}

/// Step 9: a proxy-wasm plugin on a route, rolled out, reverted, removed.
async fn plugins(api: &FakeApi, gw: SocketAddr) {
    use base64::Engine as _;
    let module = rampart_test_support::wasm_guest("wasm32-wasip1", "rampart_test_plugins")
        .unwrap_or_else(|e| panic!("the proxy-wasm SDK test plugin (wasm32-wasip1): {e}"));
    let bytes = std::fs::read(module).unwrap();
    api.upsert(
        "v1",
        "configmaps",
        json!({
            "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": { "name": "tenant-wasm", "namespace": "shop" },
            "binaryData": { "plugin.wasm": base64::engine::general_purpose::STANDARD.encode(bytes) },
        }),
    );
    assert_eq!(tenant(gw, "/api").await, Value::Null);
    api.upsert(FUNCTIONS, "rampartwasmplugins", plugin("plugin.wasm"));
    await_phase(api, "rampartwasmplugin", "tenant", "Running", 1).await;
    let on = eventually(WAIT, || async { tenant(gw, "/api").await == "k8s" }).await;
    assert!(on, "the plugin never ran on the route's requests");
    assert_eq!(
        tenant(gw, "/bystander").await,
        Value::Null,
        "only its target route"
    );

    // A module that cannot be read: reverted before anything is written.
    api.upsert(FUNCTIONS, "rampartwasmplugins", plugin("missing.wasm"));
    await_phase(api, "rampartwasmplugin", "tenant", "RolledBack", 2).await;
    let r = record(api, "rampartwasmplugin", "tenant");
    assert!(
        r["reason"].as_str().unwrap().contains("cannot apply it"),
        "{r}"
    );
    assert_eq!(tenant(gw, "/api").await, "k8s");

    api.delete(FUNCTIONS, "rampartwasmplugins", Some("shop"), "tenant");
    let off = eventually(WAIT, || async { tenant(gw, "/api").await.is_null() }).await;
    assert!(off, "the deleted plugin still runs");
}

fn policy(rego: &str) -> Value {
    json!({
        "apiVersion": FUNCTIONS, "kind": "RampartPolicy",
        "metadata": { "name": "rbac", "namespace": "shop" },
        "spec": {
            "tenant": "shop-rbac",
            "modules": { "authz.rego": rego },
            "data": "{\"users\": [\"alice\"]}",
        },
    })
}

const RBAC: &str = "package authz\n\
    default decision := false\n\
    decision if input.headers[\"x-user\"] in data.users\n\
    test_alice if decision with input as {\"headers\": {\"x-user\": \"alice\"}}\n";

/// The status a request to `path` as `user` gets.
async fn status_as(gw: SocketAddr, path: &str, user: &str) -> u16 {
    match try_send(
        &h1(),
        request(http::Method::GET, gw, path, &[("x-user", user)]),
    )
    .await
    {
        Ok(r) => r.status.as_u16(),
        Err(_) => 0,
    }
}

/// Step 10: a RampartPolicy in front of a rule, rolled out, refused, reverted, removed.
async fn policies(api: &FakeApi, p: &Platform, gw: SocketAddr) {
    let mut guarded = route("guarded", &prefix("/guarded"), 80);
    guarded["spec"]["rules"][0]["filters"] = json!([{ "type": "ExtensionRef",
        "extensionRef": { "group": "rampart.dev", "kind": "RampartPolicy", "name": "rbac" } }]);
    api.upsert(GATEWAY_API, "httproutes", guarded);
    api.upsert(FUNCTIONS, "rampartpolicies", policy(RBAC));
    await_phase(api, "rampartpolicy", "rbac", "Running", 1).await;
    let decides = eventually(WAIT, || async {
        status_as(gw, "/guarded", "alice").await == 200
            && status_as(gw, "/guarded", "mallory").await == 403
    })
    .await;
    assert!(
        decides,
        "the policy never decided: alice {}, mallory {}; route {}",
        status_as(gw, "/guarded", "alice").await,
        status_as(gw, "/guarded", "mallory").await,
        record(api, "httproute", "guarded")
    );
    let resolved = eventually(WAIT, || async {
        condition(api, "httproutes", "guarded", "ResolvedRefs")["status"] == "True"
    })
    .await;
    assert!(
        resolved,
        "{}",
        condition(api, "httproutes", "guarded", "ResolvedRefs")
    );
    let status = || {
        api.get(FUNCTIONS, "rampartpolicies", Some("shop"), "rbac")
            .unwrap()["status"]
            .clone()
    };
    // The status is written after the record.
    let running = eventually(WAIT, || async { status()["phase"] == "Running" }).await;
    assert!(running, "{}", status());

    // Another RampartPolicy claiming the same tenant is refused (the oldest owns it), and
    // deleting it leaves the owner's bundle alone.
    let mut intruder = policy("package authz\ndefault decision := true\n");
    intruder["metadata"]["name"] = json!("rbac-intruder");
    api.upsert(FUNCTIONS, "rampartpolicies", intruder);
    await_phase(api, "rampartpolicy", "rbac-intruder", "Failed", 1).await;
    let r = record(api, "rampartpolicy", "rbac-intruder");
    assert!(r["reason"].as_str().unwrap().contains("belongs to"), "{r}");
    assert_eq!(status_as(gw, "/guarded", "mallory").await, 403);
    api.delete(FUNCTIONS, "rampartpolicies", Some("shop"), "rbac-intruder");
    let gone = eventually(WAIT, || async {
        api.get(FUNCTIONS, "rampartpolicies", Some("shop"), "rbac-intruder")
            .is_none()
    })
    .await;
    assert!(gone);
    assert_eq!(status_as(gw, "/guarded", "alice").await, 200);

    // Its own test fails: refused before anything is written; the last good one decides.
    let broken = RBAC.replace("\"alice\"}}", "\"bob\"}}");
    api.upsert(FUNCTIONS, "rampartpolicies", policy(&broken));
    await_phase(api, "rampartpolicy", "rbac", "RolledBack", 2).await;
    let r = record(api, "rampartpolicy", "rbac");
    assert!(r["reason"].as_str().unwrap().contains("test_alice"), "{r}");
    assert_eq!(status_as(gw, "/guarded", "alice").await, 200);

    // Every decision fails (a decision that is not one): reverted on the error rate.
    let erring = "package authz\ndecision := \"maybe\"\n";
    api.upsert(FUNCTIONS, "rampartpolicies", policy(erring));
    let reverted = eventually(WAIT, || async {
        for _ in 0..5 {
            status_as(gw, "/guarded", "alice").await;
        }
        let r = record(api, "rampartpolicy", "rbac");
        r["phase"] == "RolledBack" && r["generation"] == 3
    })
    .await;
    assert!(reverted, "{}", record(api, "rampartpolicy", "rbac"));
    let r = record(api, "rampartpolicy", "rbac");
    assert!(r["reason"].as_str().unwrap().contains("error rate"), "{r}");
    let back = eventually(WAIT, || async {
        status_as(gw, "/guarded", "alice").await == 200
    })
    .await;
    assert!(back, "the last good bundle was not put back");

    let stored = |p: &Platform| {
        rampart_ok(&[
            "kv",
            "--endpoints",
            &p.store.endpoints(),
            "range",
            "--prefix",
            "/rampart/policies/",
        ])
    };
    assert!(stored(p).contains("shop-rbac"));
    let proxy_tenants = || async {
        let url = format!("http://{}/policy/tenants", p.proxy_admin);
        match try_send(
            &h1(),
            request(http::Method::GET, p.proxy_admin, "/policy/tenants", &[]),
        )
        .await
        {
            Ok(r) => r.text(),
            Err(e) => panic!("{url}: {e}"),
        }
    };
    assert!(proxy_tenants().await.contains("shop-rbac"));

    // Deleted: its tenant leaves the store, and the rule fails closed (500), never open.
    api.delete(FUNCTIONS, "rampartpolicies", Some("shop"), "rbac");
    let closed = eventually(WAIT, || async {
        status_as(gw, "/guarded", "alice").await == 500
    })
    .await;
    assert!(
        closed,
        "alice got {}",
        status_as(gw, "/guarded", "alice").await
    );
    assert!(!stored(p).contains("shop-rbac"), "{}", stored(p));
    let dropped = eventually(WAIT, || async {
        !proxy_tenants().await.contains("shop-rbac")
    })
    .await;
    assert!(
        dropped,
        "the proxy still holds the tenant: {}",
        proxy_tenants().await
    );
    api.delete(GATEWAY_API, "httproutes", Some("shop"), "guarded");
}

/// Step 11: a RampartCluster's workloads, its readiness, its deletion.
async fn cluster(api: &FakeApi) {
    api.upsert(
        FUNCTIONS,
        "rampartclusters",
        json!({
            "apiVersion": FUNCTIONS, "kind": "RampartCluster",
            "metadata": { "name": "config", "namespace": "shop" },
            "spec": { "replicas": 3, "proxies": 2, "image": "rampart:dev" },
        }),
    );
    // The last object applied.
    let applied = api
        .wait_for(WAIT, |a| {
            a.get(
                "policy/v1",
                "poddisruptionbudgets",
                Some("shop"),
                "config-proxy",
            )
            .is_some()
        })
        .await;
    assert!(applied, "the RampartCluster's workloads were never applied");
    let set = api
        .get("apps/v1", "statefulsets", Some("shop"), "config")
        .unwrap();
    assert_eq!(set["spec"]["replicas"], 3);
    assert_eq!(
        set["metadata"]["ownerReferences"][0]["kind"],
        "RampartCluster"
    );
    for (api_version, plural, name) in [
        ("v1", "secrets", "config-peer-tls"),
        ("v1", "services", "config-peers"),
        ("v1", "services", "config"),
        ("policy/v1", "poddisruptionbudgets", "config"),
        ("apps/v1", "deployments", "config-control-plane"),
        ("apps/v1", "deployments", "config-proxy"),
    ] {
        let o = api.get(api_version, plural, Some("shop"), name);
        assert!(o.is_some(), "no {plural}/{name}");
    }
    let secret = api
        .get("v1", "secrets", Some("shop"), "config-peer-tls")
        .unwrap();
    let first_ca = secret["stringData"]["ca.crt"].clone();
    assert!(first_ca.as_str().unwrap().contains("BEGIN CERTIFICATE"));
    let phase = |a: &FakeApi| {
        a.get(FUNCTIONS, "rampartclusters", Some("shop"), "config")
            .map(|c| c["status"]["phase"].clone())
            .unwrap_or(Value::Null)
    };
    assert!(api.wait_for(WAIT, |a| phase(a) == "Provisioning").await);
    api.set_status(
        "apps/v1",
        "statefulsets",
        Some("shop"),
        "config",
        json!({ "replicas": 3, "readyReplicas": 3 }),
    );
    assert!(
        api.wait_for(WAIT, |a| phase(a) == "Running").await,
        "never Running: {}",
        phase(api)
    );
    // Reconciled again later, the PKI stays (it is not issued twice).
    let again = api
        .get("v1", "secrets", Some("shop"), "config-peer-tls")
        .unwrap();
    assert_eq!(again["stringData"]["ca.crt"], first_ca);

    // Resizing a running store is a membership change the operator refuses (and says so).
    let resized = json!({
        "apiVersion": FUNCTIONS, "kind": "RampartCluster",
        "metadata": { "name": "config", "namespace": "shop" },
        "spec": { "replicas": 5, "proxies": 2, "image": "rampart:dev" },
    });
    api.upsert(FUNCTIONS, "rampartclusters", resized);
    assert!(api.wait_for(WAIT, |a| phase(a) == "Failed").await);
    let c = api
        .get(FUNCTIONS, "rampartclusters", Some("shop"), "config")
        .unwrap();
    assert!(
        c["status"]["reason"]
            .as_str()
            .unwrap()
            .contains("membership"),
        "{c}"
    );
    let set = api
        .get("apps/v1", "statefulsets", Some("shop"), "config")
        .unwrap();
    assert_eq!(set["spec"]["replicas"], 3, "the running store was resized");

    api.delete(FUNCTIONS, "rampartclusters", Some("shop"), "config");
    let gone = api
        .wait_for(WAIT, |a| {
            a.get("apps/v1", "statefulsets", Some("shop"), "config")
                .is_none()
                && a.get("v1", "secrets", Some("shop"), "config-peer-tls")
                    .is_none()
        })
        .await;
    assert!(gone, "the cluster's workloads outlived it");
}

const FUNCTIONS: &str = "rampart.dev/v1alpha1";

fn component_config_map(name: &str, example: &str) -> Value {
    use base64::Engine as _;
    let path = rampart_test_support::function_example(example)
        .unwrap_or_else(|e| panic!("the example functions (wasm32-wasip2): {e}"));
    let bytes = std::fs::read(path).unwrap();
    json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": { "name": name, "namespace": "shop" },
        "binaryData": { "fn.wasm": base64::engine::general_purpose::STANDARD.encode(bytes) },
    })
}

fn function(config_map: &str, sha256: Option<&str>) -> Value {
    let mut source = json!({ "configMap": { "name": config_map, "key": "fn.wasm" } });
    if let Some(s) = sha256 {
        source["sha256"] = json!(s);
    }
    json!({
        "apiVersion": FUNCTIONS, "kind": "RampartFunction",
        "metadata": { "name": "greet", "namespace": "shop" },
        "spec": { "source": source, "env": { "GREETING_NAME": "k8s" }, "allowUnsigned": true },
    })
}

/// Step 8: a RampartFunction behind an HTTPRoute, rolled out and reverted.
async fn functions(api: &FakeApi, gw: SocketAddr) {
    api.upsert(
        "v1",
        "configmaps",
        component_config_map("hello-wasm", "hello"),
    );
    api.upsert(
        "v1",
        "configmaps",
        component_config_map("misbehave-wasm", "misbehave"),
    );
    api.upsert(FUNCTIONS, "rampartfunctions", function("hello-wasm", None));
    let mut to_fn = route("fn", &prefix("/trap"), 80);
    to_fn["spec"]["rules"][0]["backendRefs"] =
        json!([{ "group": "rampart.dev", "kind": "RampartFunction", "name": "greet" }]);
    api.upsert(GATEWAY_API, "httproutes", to_fn);
    await_phase(api, "rampartfunction", "greet", "Running", 1).await;
    await_phase(api, "httproute", "fn", "Running", 1).await;
    let status = || {
        api.get(FUNCTIONS, "rampartfunctions", Some("shop"), "greet")
            .unwrap()["status"]
            .clone()
    };
    // The status is written after the record.
    let running = eventually(WAIT, || async { status()["phase"] == "Running" }).await;
    assert!(running, "{}", status());
    let status = status();
    assert_eq!(status["lastGoodGeneration"], 1, "{status}");
    let traffic = Traffic::start(gw, "/trap");
    assert!(traffic.answers_from("hello, k8s", 10).await);

    // A component that is not the one its source names: never deployed.
    let wrong = "0".repeat(64);
    api.upsert(
        FUNCTIONS,
        "rampartfunctions",
        function("hello-wasm", Some(&wrong)),
    );
    await_phase(api, "rampartfunction", "greet", "RolledBack", 2).await;
    let r = record(api, "rampartfunction", "greet");
    assert!(r["reason"].as_str().unwrap().contains("SHA-256"), "{r}");
    assert!(traffic.answers_from("hello, k8s", 10).await);
    assert_eq!(traffic.failed(), 0);

    // A component whose every invocation traps: reverted on its failure rate.
    api.upsert(
        FUNCTIONS,
        "rampartfunctions",
        function("misbehave-wasm", None),
    );
    await_phase(api, "rampartfunction", "greet", "RolledBack", 3).await;
    let r = record(api, "rampartfunction", "greet");
    assert!(r["reason"].as_str().unwrap().contains("error rate"), "{r}");
    assert!(
        traffic.answers_from("hello, k8s", 10).await,
        "the function never came back"
    );
    assert!(events(api, "greet").contains(&"RolledBack".to_owned()));

    // Deleted: out of the store once the finalizer let go.
    api.delete(FUNCTIONS, "rampartfunctions", Some("shop"), "greet");
    let gone = eventually(WAIT, || async {
        api.get(FUNCTIONS, "rampartfunctions", Some("shop"), "greet")
            .is_none()
    })
    .await;
    assert!(gone, "the function's finalizer was never removed");
    assert!(
        eventually(WAIT, || async {
            try_send(&h1(), request(http::Method::GET, gw, "/trap", &[]))
                .await
                .is_ok_and(|r| !r.status.is_success())
        })
        .await,
        "the deleted function still answers"
    );
}

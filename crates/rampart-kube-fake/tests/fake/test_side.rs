//! The test-side API: upsert, set_status, delete, wait_for, requests, fail_next, kubeconfig.

use std::time::Duration;

use crate::support::{Client, MERGE, widget};
use rampart_kube_fake::FakeApi;
use serde_json::json;

const WIDGET: (&str, &str) = ("example.com/v1", "widgets");

#[tokio::test]
async fn upsert_acts_as_kubectl_apply() {
    let api = FakeApi::start().await;
    let c = Client::new(&api);
    let created = api.upsert(WIDGET.0, WIDGET.1, widget("a", "w", 1));
    assert_eq!(created["metadata"]["generation"], 1);
    let (code, got) = c.get("/apis/example.com/v1/namespaces/a/widgets/w").await;
    assert_eq!((code, &got), (200, &created));

    // The operator adds a finalizer and writes status; a user's re-apply keeps both.
    c.patch(
        "/apis/example.com/v1/namespaces/a/widgets/w",
        MERGE,
        &json!({"metadata": {"finalizers": ["op/x"]}}),
    )
    .await;
    api.set_status(WIDGET.0, WIDGET.1, Some("a"), "w", json!({"ready": true}))
        .unwrap();
    let same = api.upsert(WIDGET.0, WIDGET.1, widget("a", "w", 1));
    assert_eq!(same["metadata"]["generation"], 1);
    assert_eq!(same["metadata"]["finalizers"], json!(["op/x"]));
    assert_eq!(same["status"]["ready"], true);
    let changed = api.upsert(WIDGET.0, WIDGET.1, widget("a", "w", 2));
    assert_eq!(changed["metadata"]["generation"], 2);
    assert_eq!(changed["spec"]["size"], 2);

    assert!(
        api.try_upsert(WIDGET.0, WIDGET.1, json!({"metadata": {}}))
            .is_err()
    );
    assert!(
        api.set_status(WIDGET.0, WIDGET.1, Some("a"), "none", json!({}))
            .is_none()
    );

    // Test-side delete: the finalizer holds it; clearing it removes it.
    let deleting = api.delete(WIDGET.0, WIDGET.1, Some("a"), "w").unwrap();
    assert!(deleting["metadata"]["deletionTimestamp"].is_string());
    c.patch(
        "/apis/example.com/v1/namespaces/a/widgets/w",
        MERGE,
        &json!({"metadata": {"finalizers": []}}),
    )
    .await;
    assert!(api.get(WIDGET.0, WIDGET.1, Some("a"), "w").is_none());
    assert!(api.delete(WIDGET.0, WIDGET.1, Some("a"), "w").is_none());
}

#[tokio::test]
async fn cluster_scoped_objects_and_namespaces() {
    let api = FakeApi::start().await;
    let c = Client::new(&api);
    let (code, class) = c.post("/apis/example.com/v1/classes", &json!({"apiVersion": "example.com/v1", "kind": "Class", "metadata": {"name": "c", "namespace": "ignored"}})).await;
    assert_eq!(code, 201);
    assert!(class["metadata"]["namespace"].is_null());
    assert_eq!(c.get("/apis/example.com/v1/classes/c").await.0, 200);
    assert!(api.get("example.com/v1", "classes", None, "c").is_some());

    api.upsert(
        "v1",
        "namespaces",
        json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "shop"}}),
    );
    assert_eq!(c.get("/api/v1/namespaces/shop").await.0, 200);
    api.upsert(WIDGET.0, WIDGET.1, widget("shop", "w", 1));
    api.upsert(WIDGET.0, WIDGET.1, widget("other", "w", 1));
    assert_eq!(c.delete("/api/v1/namespaces/shop").await.0, 200);
    assert!(api.get(WIDGET.0, WIDGET.1, Some("shop"), "w").is_none());
    assert!(api.get(WIDGET.0, WIDGET.1, Some("other"), "w").is_some());
}

#[tokio::test]
async fn wait_for_wakes_on_writes() {
    let api = FakeApi::start().await;
    let c = Client::new(&api);
    assert!(
        !api.wait_for(Duration::from_millis(50), |api| !api
            .list(WIDGET.0, WIDGET.1)
            .is_empty())
            .await
    );
    let writer = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(20)).await;
        c.post(
            "/apis/example.com/v1/namespaces/a/widgets",
            &widget("a", "w", 3),
        )
        .await
    });
    let size = api
        .wait_for_value(Duration::from_secs(2), |api| {
            api.get(WIDGET.0, WIDGET.1, Some("a"), "w")
                .map(|w| w["spec"]["size"].clone())
        })
        .await;
    assert_eq!(size, Some(json!(3)));
    assert_eq!(writer.await.unwrap().0, 201);
}

#[tokio::test]
async fn requests_are_logged_and_failures_injected() {
    let api = FakeApi::start().await;
    let c = Client::new(&api);
    api.fail_next("POST", "/widgets", 500, 1);
    let path = "/apis/example.com/v1/namespaces/a/widgets";
    let (code, body) = c.post(path, &widget("a", "w", 1)).await;
    assert_eq!(
        (code, body["reason"].as_str()),
        (500, Some("InternalError"))
    );
    assert_eq!(c.post(path, &widget("a", "w", 1)).await.0, 201);
    let logged = api.requests();
    assert_eq!(logged.len(), 2);
    assert_eq!(
        logged[0],
        (
            "POST".to_owned(),
            path.to_owned(),
            "application/json".to_owned()
        )
    );
    api.clear_requests();
    c.get(&format!("{path}?labelSelector=a%3Db")).await;
    assert_eq!(api.requests()[0].1, format!("{path}?labelSelector=a%3Db"));
}

#[tokio::test]
async fn kubeconfig_points_at_the_server() {
    let api = FakeApi::start().await;
    let dir = std::env::temp_dir().join(format!("rampart-kube-fake-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("kubeconfig");
    api.write_kubeconfig(&path).unwrap();
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(text.contains(&format!("server: {}", api.url())));
    assert!(text.contains("current-context: rampart-kube-fake"));
    assert!(text.contains("namespace: default"));
    assert!(api.url().starts_with("http://127.0.0.1:"));
    std::fs::remove_dir_all(&dir).unwrap();
}

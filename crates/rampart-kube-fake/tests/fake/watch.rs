//! Watches over real HTTP: replay from a resourceVersion, live events in order, compaction,
//! selector transitions, streaming lists, timeouts.

use std::time::Duration;

use crate::support::{Client, MERGE, config_map, rv, widget};
use rampart_kube_fake::FakeApi;
use serde_json::json;

const CMS: &str = "/api/v1/namespaces/a/configmaps";
const SHORT: Duration = Duration::from_millis(150);

#[tokio::test]
async fn watch_from_resource_version_replays_then_streams_in_order() {
    let api = FakeApi::start().await;
    let c = Client::new(&api);
    let (_, first) = c.post(CMS, &config_map("a", "first", json!({}))).await;
    c.post(CMS, &config_map("a", "second", json!({}))).await;
    c.post(
        "/api/v1/namespaces/b/configmaps",
        &config_map("b", "elsewhere", json!({})),
    )
    .await;

    let mut w = c
        .watch(&format!(
            "{CMS}?&watch=true&timeoutSeconds=10&resourceVersion={}",
            rv(&first)
        ))
        .await;
    assert_eq!(w.next_named().await, ("ADDED".into(), "second".into()));

    c.post(CMS, &config_map("a", "third", json!({}))).await;
    c.patch(
        &format!("{CMS}/first"),
        MERGE,
        &json!({"data": {"k": "changed"}}),
    )
    .await;
    c.delete(&format!("{CMS}/second")).await;
    let mut seen = Vec::new();
    let mut last = 0;
    for _ in 0..3 {
        let event = w.next().await;
        let version = rv(&event["object"]);
        assert!(version > last, "resourceVersions increase");
        last = version;
        seen.push((
            event["type"].as_str().unwrap().to_owned(),
            event["object"]["metadata"]["name"]
                .as_str()
                .unwrap()
                .to_owned(),
        ));
    }
    let want = [
        ("ADDED", "third"),
        ("MODIFIED", "first"),
        ("DELETED", "second"),
    ];
    assert_eq!(seen, want.map(|(t, n)| (t.to_owned(), n.to_owned())));
    assert_eq!(last, api.resource_version());
    assert!(
        w.next_within(SHORT).await.is_none(),
        "nothing from namespace b"
    );

    // Test-side writes are watch events too.
    api.upsert("v1", "configmaps", config_map("a", "fourth", json!({})));
    assert_eq!(w.next_named().await, ("ADDED".into(), "fourth".into()));
}

#[tokio::test]
async fn watch_without_resource_version_starts_with_current_objects() {
    let api = FakeApi::start().await;
    let c = Client::new(&api);
    c.post(CMS, &config_map("a", "one", json!({}))).await;
    c.post(CMS, &config_map("a", "two", json!({}))).await;
    let mut w = c
        .watch("/api/v1/configmaps?watch=1&resourceVersion=0&timeoutSeconds=10")
        .await;
    assert_eq!(w.next_named().await, ("ADDED".into(), "one".into()));
    assert_eq!(w.next_named().await, ("ADDED".into(), "two".into()));
    assert!(w.next_within(SHORT).await.is_none());
    c.delete(&format!("{CMS}/one")).await;
    assert_eq!(w.next_named().await, ("DELETED".into(), "one".into()));
}

#[tokio::test]
async fn watch_from_a_compacted_resource_version_is_expired() {
    let api = FakeApi::start().await;
    let c = Client::new(&api);
    let (_, one) = c.post(CMS, &config_map("a", "one", json!({}))).await;
    c.post(CMS, &config_map("a", "two", json!({}))).await;
    api.compact();
    let mut w = c
        .watch(&format!("{CMS}?watch=true&resourceVersion={}", rv(&one)))
        .await;
    let event = w.next().await;
    assert_eq!(
        event,
        json!({"type": "ERROR", "object": {
            "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "reason": "Expired", "code": 410, "message": event["object"]["message"],
        }})
    );
    assert!(
        event["object"]["message"]
            .as_str()
            .unwrap()
            .starts_with("too old resource version")
    );
    assert!(w.ended_within(Duration::from_secs(1)).await);

    // From the compaction point on, watches work again.
    let current = api.resource_version();
    let mut w = c
        .watch(&format!("{CMS}?watch=true&resourceVersion={current}"))
        .await;
    c.post(CMS, &config_map("a", "three", json!({}))).await;
    assert_eq!(w.next_named().await, ("ADDED".into(), "three".into()));
}

#[tokio::test]
async fn watch_with_selector_sees_objects_enter_and_leave() {
    let api = FakeApi::start().await;
    let c = Client::new(&api);
    c.post(CMS, &config_map("a", "x", json!({"app": "web"})))
        .await;
    c.post(CMS, &config_map("a", "y", json!({"app": "db"})))
        .await;
    let mut w = c
        .watch(&format!("{CMS}?watch=true&labelSelector=app%3Dweb"))
        .await;
    assert_eq!(w.next_named().await, ("ADDED".into(), "x".into()));
    let relabel = |app: &str| json!({"metadata": {"labels": {"app": app}}});
    c.patch(&format!("{CMS}/x"), MERGE, &relabel("other")).await;
    assert_eq!(w.next_named().await, ("DELETED".into(), "x".into()));
    c.patch(&format!("{CMS}/y"), MERGE, &relabel("web")).await;
    assert_eq!(w.next_named().await, ("ADDED".into(), "y".into()));
    c.patch(&format!("{CMS}/y"), MERGE, &json!({"data": {"k": "2"}}))
        .await;
    assert_eq!(w.next_named().await, ("MODIFIED".into(), "y".into()));
    let mut by_name = c
        .watch(&format!("{CMS}?watch=true&fieldSelector=metadata.name%3Dx"))
        .await;
    assert_eq!(by_name.next_named().await, ("ADDED".into(), "x".into()));
    assert!(by_name.next_within(SHORT).await.is_none());
}

#[tokio::test]
async fn streaming_list_ends_initial_events_with_a_bookmark() {
    let api = FakeApi::start().await;
    let c = Client::new(&api);
    c.post(
        "/apis/example.com/v1/namespaces/a/widgets",
        &widget("a", "w", 1),
    )
    .await;
    let path = "/apis/example.com/v1/widgets?&watch=true&timeoutSeconds=290&allowWatchBookmarks=true&sendInitialEvents=true&resourceVersionMatch=NotOlderThan&resourceVersion=0";
    let mut w = c.watch(path).await;
    assert_eq!(w.next_named().await, ("ADDED".into(), "w".into()));
    let bookmark = w.next().await;
    assert_eq!(bookmark["type"], "BOOKMARK");
    assert_eq!(bookmark["object"]["kind"], "Widget");
    assert_eq!(bookmark["object"]["apiVersion"], "example.com/v1");
    assert_eq!(
        bookmark["object"]["metadata"]["annotations"]["k8s.io/initial-events-end"],
        "true"
    );
    assert_eq!(rv(&bookmark["object"]), api.resource_version());
}

#[tokio::test]
async fn watch_ends_after_its_timeout_with_a_bookmark() {
    let api = FakeApi::start().await;
    let c = Client::new(&api);
    c.post(CMS, &config_map("a", "one", json!({}))).await;
    let started = tokio::time::Instant::now();
    let mut w = c
        .watch(&format!(
            "{CMS}?watch=true&timeoutSeconds=1&allowWatchBookmarks=true&resourceVersion=1"
        ))
        .await;
    let bookmark = w.next_within(Duration::from_secs(3)).await.unwrap();
    assert_eq!(bookmark["type"], "BOOKMARK");
    assert_eq!(bookmark["object"]["metadata"]["resourceVersion"], "1");
    assert!(w.ended_within(Duration::from_secs(1)).await);
    assert!(started.elapsed() < Duration::from_secs(2));
}

#[tokio::test]
async fn dropping_the_server_ends_watches() {
    let api = FakeApi::start().await;
    let c = Client::new(&api);
    let mut w = c.watch(&format!("{CMS}?watch=true")).await;
    drop(api);
    assert!(w.ended_within(Duration::from_secs(1)).await);
}

#[tokio::test]
async fn bad_watch_requests_are_refused() {
    let api = FakeApi::start().await;
    let c = Client::new(&api);
    assert_eq!(
        c.get(&format!("{CMS}?watch=true&resourceVersion=abc"))
            .await
            .0,
        400
    );
    assert_eq!(
        c.get(&format!("{CMS}?watch=true&timeoutSeconds=-1"))
            .await
            .0,
        400
    );
    assert_eq!(
        c.get(&format!("{CMS}?watch=true&labelSelector=a%20in%20x"))
            .await
            .0,
        400
    );
}

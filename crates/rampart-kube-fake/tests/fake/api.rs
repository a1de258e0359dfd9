//! The fake's verbs over real HTTP: create, get, list, replace, patches, apply, status,
//! delete with finalizers, garbage collection, selectors.

use crate::support::{APPLY, Client, JSON_PATCH, MERGE, STRATEGIC, config_map, names, rv, widget};
use rampart_kube_fake::FakeApi;
use serde_json::{Value, json};

const CMS: &str = "/api/v1/namespaces/a/configmaps";
const WIDGETS: &str = "/apis/example.com/v1/namespaces/a/widgets";

#[tokio::test]
async fn create_get_list() {
    let api = FakeApi::start().await;
    let c = Client::new(&api);
    let (code, created) = c.post(CMS, &config_map("", "one", json!({}))).await;
    assert_eq!(code, 201, "{created}");
    let meta = &created["metadata"];
    assert_eq!(meta["namespace"], "a");
    assert_eq!(meta["generation"], 1);
    assert_eq!(meta["resourceVersion"], "1");
    assert!(meta["uid"].as_str().is_some_and(|u| !u.is_empty()));
    assert!(meta["creationTimestamp"].as_str().unwrap().ends_with('Z'));
    assert_eq!(
        (created["apiVersion"].clone(), created["kind"].clone()),
        (json!("v1"), json!("ConfigMap"))
    );

    let (code, got) = c.get(&format!("{CMS}/one")).await;
    assert_eq!((code, &got), (200, &created));

    let (code, again) = c.post(CMS, &config_map("a", "one", json!({}))).await;
    assert_eq!(code, 409);
    assert_eq!(again["reason"], "AlreadyExists");
    assert_eq!(
        again["details"],
        json!({"name": "one", "kind": "configmaps"})
    );

    c.post(
        "/api/v1/namespaces/b/configmaps",
        &config_map("b", "one", json!({})),
    )
    .await;
    c.post(CMS, &config_map("a", "two", json!({}))).await;
    let (code, list) = c.get(CMS).await;
    assert_eq!(code, 200);
    assert_eq!(list["kind"], "ConfigMapList");
    assert_eq!(list["apiVersion"], "v1");
    assert_eq!(list["metadata"]["resourceVersion"], "3");
    assert_eq!(names(&list), ["one", "two"]);
    assert!(
        list["items"]
            .as_array()
            .unwrap()
            .iter()
            .all(|i| i["kind"] == "ConfigMap" && i["apiVersion"] == "v1")
    );
    let (_, all) = c.get("/api/v1/configmaps?limit=500").await;
    let keys: Vec<(&str, &str)> = all["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| {
            (
                i["metadata"]["namespace"].as_str().unwrap(),
                i["metadata"]["name"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(keys, [("a", "one"), ("a", "two"), ("b", "one")]);
    assert_eq!(api.list("v1", "configmaps").len(), 3);

    let (code, missing) = c.get(&format!("{CMS}/nope")).await;
    assert_eq!(code, 404);
    assert_eq!(
        missing,
        json!({
            "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": "configmaps \"nope\" not found", "reason": "NotFound",
            "details": {"name": "nope", "kind": "configmaps"}, "code": 404,
        })
    );
}

#[tokio::test]
async fn create_fills_and_refuses() {
    let api = FakeApi::start().await;
    let c = Client::new(&api);
    // No kind, and none known for the resource yet.
    let (code, body) = c
        .post(WIDGETS, &json!({"metadata": {"name": "w"}, "spec": {}}))
        .await;
    assert_eq!((code, body["reason"].as_str()), (400, Some("BadRequest")));
    // Once one exists, the kind is known; apiVersion comes from the path.
    c.post(WIDGETS, &widget("a", "w1", 1)).await;
    let (code, body) = c
        .post(WIDGETS, &json!({"metadata": {"name": "w2"}, "spec": {}}))
        .await;
    assert_eq!(
        (code, &body["kind"], &body["apiVersion"]),
        (201, &json!("Widget"), &json!("example.com/v1"))
    );
    // generateName.
    let (code, body) = c
        .post(
            WIDGETS,
            &json!({"kind": "Widget", "metadata": {"generateName": "w-"}}),
        )
        .await;
    assert_eq!(code, 201);
    let name = body["metadata"]["name"].as_str().unwrap();
    assert!(name.starts_with("w-") && name.len() == 7, "{name}");
    // Neither name nor generateName.
    let (code, body) = c
        .post(WIDGETS, &json!({"kind": "Widget", "metadata": {}}))
        .await;
    assert_eq!((code, body["reason"].as_str()), (422, Some("Invalid")));
    // Wrong namespace, wrong apiVersion, malformed JSON, not an object, a resourceVersion.
    assert_eq!(c.post(WIDGETS, &widget("b", "x", 1)).await.0, 400);
    assert_eq!(
        c.post(
            WIDGETS,
            &json!({"apiVersion": "v1", "kind": "Widget", "metadata": {"name": "x"}})
        )
        .await
        .0,
        400
    );
    let (code, body) = c
        .send_raw("POST", WIDGETS, "application/json", b"{nope".to_vec())
        .await;
    assert_eq!((code, body["kind"].as_str()), (400, Some("Status")));
    assert_eq!(c.post(WIDGETS, &json!([1])).await.0, 400);
    let mut with_rv = widget("a", "x", 1);
    with_rv["metadata"]["resourceVersion"] = json!("3");
    assert_eq!(c.post(WIDGETS, &with_rv).await.0, 500);
    // Methods and paths it does not serve.
    assert_eq!(
        c.post(&format!("{WIDGETS}/w1"), &widget("a", "w1", 1))
            .await
            .0,
        405
    );
    assert_eq!(c.delete(&format!("{WIDGETS}/w1/status")).await.0, 405);
    assert_eq!(c.get("/apis").await.0, 404);
    assert_eq!(c.get(&format!("{WIDGETS}/w1/scale")).await.0, 404);
    assert_eq!(c.get("/version").await.1["major"], "1");
}

#[tokio::test]
async fn replace_checks_resource_version() {
    let api = FakeApi::start().await;
    let c = Client::new(&api);
    let (_, created) = c.post(CMS, &config_map("a", "one", json!({}))).await;
    let mut update = created.clone();
    update["data"] = json!({"k": "w"});
    let (code, updated) = c.put(&format!("{CMS}/one"), &update).await;
    assert_eq!(code, 200);
    assert_eq!(updated["data"]["k"], "w");
    assert!(rv(&updated) > rv(&created));
    assert_eq!(updated["metadata"]["uid"], created["metadata"]["uid"]);

    // The same body again carries the now stale resourceVersion.
    let (code, conflict) = c.put(&format!("{CMS}/one"), &update).await;
    assert_eq!(code, 409);
    assert_eq!(conflict["reason"], "Conflict");
    assert!(
        conflict["message"]
            .as_str()
            .unwrap()
            .contains("the object has been modified")
    );

    // Without a resourceVersion the update is unconditional; an unchanged one is a no-op.
    let mut unconditional = config_map("a", "one", json!({"x": "y"}));
    unconditional["data"] = json!({"k": "z"});
    let (code, body) = c.put(&format!("{CMS}/one"), &unconditional).await;
    assert_eq!((code, &body["data"]["k"]), (200, &json!("z")));
    let (_, same) = c.put(&format!("{CMS}/one"), &unconditional).await;
    assert_eq!(
        rv(&same),
        rv(&body),
        "a no-op write keeps the resourceVersion"
    );

    assert_eq!(
        c.put(&format!("{CMS}/two"), &config_map("a", "two", json!({})))
            .await
            .0,
        404
    );
    assert_eq!(
        c.put(&format!("{CMS}/one"), &config_map("a", "other", json!({})))
            .await
            .0,
        400
    );
    assert_eq!(
        c.send_raw(
            "PUT",
            &format!("{CMS}/one"),
            "application/yaml",
            b"a: b".to_vec()
        )
        .await
        .0,
        415
    );
}

#[tokio::test]
async fn patches() {
    let api = FakeApi::start().await;
    let c = Client::new(&api);
    let one = format!("{CMS}/one");
    c.post(CMS, &config_map("a", "one", json!({"app": "web"})))
        .await;
    let (code, body) = c
        .patch(
            &one,
            MERGE,
            &json!({"data": {"k": null, "n": "1"}, "metadata": {"labels": {"tier": "fe"}}}),
        )
        .await;
    assert_eq!(code, 200);
    assert_eq!(body["data"], json!({"n": "1"}));
    assert_eq!(
        body["metadata"]["labels"],
        json!({"app": "web", "tier": "fe"})
    );

    let (code, body) = c.patch(&one, STRATEGIC, &json!({"data": {"s": "2"}})).await;
    assert_eq!((code, &body["data"]), (200, &json!({"n": "1", "s": "2"})));

    // A resourceVersion in a patch is a precondition.
    let (code, _) = c
        .patch(
            &one,
            MERGE,
            &json!({"metadata": {"resourceVersion": "1"}, "data": {}}),
        )
        .await;
    assert_eq!(code, 409);
    let current = body["metadata"]["resourceVersion"].clone();
    let (code, _) = c
        .patch(
            &one,
            MERGE,
            &json!({"metadata": {"resourceVersion": current}, "data": {"t": "3"}}),
        )
        .await;
    assert_eq!(code, 200);

    // JSON patch, the way kube-runtime's finalizer helper adds and removes a finalizer.
    let add = json!([
        {"op": "test", "path": "/metadata/finalizers", "value": null},
        {"op": "add", "path": "/metadata/finalizers", "value": ["example.com/cleanup"]},
    ]);
    let (code, body) = c.patch(&one, JSON_PATCH, &add).await;
    assert_eq!(
        (code, &body["metadata"]["finalizers"]),
        (200, &json!(["example.com/cleanup"]))
    );
    let (code, body) = c.patch(&one, JSON_PATCH, &add).await;
    assert_eq!((code, body["reason"].as_str()), (422, Some("Invalid")));
    let (code, _) = c
        .patch(
            &one,
            JSON_PATCH,
            &json!([{"op": "remove", "path": "/metadata/finalizers/0"}]),
        )
        .await;
    assert_eq!(code, 200);
    assert_eq!(c.patch(&one, JSON_PATCH, &json!({"op": "x"})).await.0, 400);

    assert_eq!(c.patch(&one, "application/json", &json!({})).await.0, 415);
    assert_eq!(
        c.patch(&format!("{CMS}/none"), MERGE, &json!({})).await.0,
        404
    );
    assert_eq!(c.send_raw("PATCH", &one, MERGE, b"[".to_vec()).await.0, 400);
}

#[tokio::test]
async fn server_side_apply() {
    let api = FakeApi::start().await;
    let c = Client::new(&api);
    let path = format!("{WIDGETS}/w?&fieldManager=rampart-operator&force=true");
    let (code, body) = c
        .patch(&format!("{WIDGETS}/w"), APPLY, &widget("a", "w", 1))
        .await;
    assert_eq!(
        (code, body["reason"].as_str()),
        (400, Some("BadRequest")),
        "apply needs a fieldManager"
    );

    let mut applied = widget("a", "w", 1);
    applied["spec"]["list"] = json!([1, 2]);
    let (code, created) = c.patch(&path, APPLY, &applied).await;
    assert_eq!(code, 201, "apply creates: {created}");
    assert_eq!(created["metadata"]["generation"], 1);
    assert!(
        api.get("example.com/v1", "widgets", Some("a"), "w")
            .is_some()
    );

    // Someone else adds a label; an apply merges over it (objects merge, arrays are replaced).
    c.patch(
        &format!("{WIDGETS}/w"),
        MERGE,
        &json!({"metadata": {"labels": {"other": "x"}}, "spec": {"extra": true}}),
    )
    .await;
    let mut applied = widget("a", "w", 2);
    applied["spec"]["list"] = json!([3]);
    applied["metadata"]["labels"] = json!({"mine": "y"});
    let (code, merged) = c.patch(&path, APPLY, &applied).await;
    assert_eq!(code, 200);
    assert_eq!(
        merged["spec"],
        json!({"size": 2, "list": [3], "extra": true})
    );
    assert_eq!(
        merged["metadata"]["labels"],
        json!({"other": "x", "mine": "y"})
    );
    assert_eq!(merged["metadata"]["generation"], 3);

    // Applying the same again changes nothing: same resourceVersion, no event.
    let (_, again) = c.patch(&path, APPLY, &applied).await;
    assert_eq!(
        again["metadata"]["resourceVersion"],
        merged["metadata"]["resourceVersion"]
    );

    // A stale resourceVersion in the applied object conflicts; a missing kind is refused.
    applied["metadata"]["resourceVersion"] = json!("1");
    assert_eq!(c.patch(&path, APPLY, &applied).await.0, 409);
    assert_eq!(
        c.patch(&path, APPLY, &json!({"metadata": {"name": "w"}}))
            .await
            .0,
        400
    );
    // Apply to the status of a missing object.
    let status = format!("{WIDGETS}/none/status?fieldManager=m");
    assert_eq!(
        c.patch(&status, APPLY, &widget("a", "none", 1)).await.0,
        404
    );

    let logged = api.requests();
    assert!(logged.iter().any(|(m, p, ct)| m == "PATCH"
        && p.contains("fieldManager=rampart-operator")
        && ct == APPLY));
}

#[tokio::test]
async fn status_subresource_and_generation() {
    let api = FakeApi::start().await;
    let c = Client::new(&api);
    let w = format!("{WIDGETS}/w");
    let mut with_status = widget("a", "w", 1);
    with_status["status"] = json!({"ready": true});
    let (_, created) = c.post(WIDGETS, &with_status).await;
    assert_eq!(created["status"], Value::Null, "a create drops status");

    // PUT on /status changes only status: the spec in the body is ignored.
    let mut body = created.clone();
    body["status"] = json!({"ready": false});
    body["spec"]["size"] = json!(9);
    let (code, updated) = c.put(&format!("{w}/status"), &body).await;
    assert_eq!(code, 200);
    assert_eq!(updated["status"], json!({"ready": false}));
    assert_eq!(updated["spec"]["size"], 1);
    assert_eq!(updated["metadata"]["generation"], 1);

    // A merge patch on /status, and an apply on /status.
    let (_, patched) = c
        .patch(
            &format!("{w}/status"),
            MERGE,
            &json!({"status": {"phase": "Running"}, "spec": {"size": 5}}),
        )
        .await;
    assert_eq!(
        patched["status"],
        json!({"ready": false, "phase": "Running"})
    );
    assert_eq!(
        (&patched["spec"]["size"], &patched["metadata"]["generation"]),
        (&json!(1), &json!(1))
    );
    let applied = json!({"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "w"}, "status": {"ready": true}});
    let (code, patched) = c
        .patch(&format!("{w}/status?fieldManager=op"), APPLY, &applied)
        .await;
    assert_eq!((code, &patched["status"]["ready"]), (200, &json!(true)));

    // The main resource keeps status; metadata does not bump generation, the spec does.
    let mut main = patched.clone();
    main["status"] = json!({});
    main["metadata"]["labels"] = json!({"a": "b"});
    let (_, relabelled) = c.put(&w, &main).await;
    assert_eq!(relabelled["status"], patched["status"]);
    assert_eq!(relabelled["metadata"]["generation"], 1);
    let (_, respecced) = c
        .patch(
            &w,
            MERGE,
            &json!({"spec": {"size": 2}, "status": {"ready": false}}),
        )
        .await;
    assert_eq!(respecced["metadata"]["generation"], 2);
    assert_eq!(respecced["status"]["ready"], true);
    // Server-owned fields are the server's.
    let (_, kept) = c.patch(&w, MERGE, &json!({"metadata": {"uid": "x", "generation": 7, "creationTimestamp": "2000-01-01T00:00:00Z"}})).await;
    assert_eq!(kept["metadata"]["uid"], created["metadata"]["uid"]);
    assert_eq!(kept["metadata"]["generation"], 2);
    assert_eq!(
        kept["metadata"]["creationTimestamp"],
        created["metadata"]["creationTimestamp"]
    );
}

#[tokio::test]
async fn delete_with_finalizers() {
    let api = FakeApi::start().await;
    let c = Client::new(&api);
    let w = format!("{WIDGETS}/w");
    let mut obj = widget("a", "w", 1);
    obj["metadata"]["finalizers"] = json!(["example.com/a", "example.com/b"]);
    c.post(WIDGETS, &obj).await;

    let (code, deleting) = c.delete(&w).await;
    assert_eq!(code, 200);
    let stamp = deleting["metadata"]["deletionTimestamp"].clone();
    assert!(stamp.is_string());
    assert_eq!(
        deleting["metadata"]["generation"], 2,
        "marking for deletion bumps generation"
    );
    let (code, still) = c.get(&w).await;
    assert_eq!(
        (code, &still["metadata"]["deletionTimestamp"]),
        (200, &stamp)
    );

    // Deleting again changes nothing; adding a finalizer is refused; removing one is fine.
    let (_, again) = c.delete(&w).await;
    assert_eq!(
        again["metadata"]["resourceVersion"],
        deleting["metadata"]["resourceVersion"]
    );
    let (code, refused) = c.patch(&w, MERGE, &json!({"metadata": {"finalizers": ["example.com/a", "example.com/b", "example.com/c"]}})).await;
    assert_eq!((code, refused["reason"].as_str()), (422, Some("Invalid")));
    let (code, _) = c
        .patch(
            &w,
            JSON_PATCH,
            &json!([{"op": "remove", "path": "/metadata/finalizers/0"}]),
        )
        .await;
    assert_eq!(code, 200);
    assert_eq!(c.get(&w).await.0, 200);
    // The last finalizer gone, the object is.
    let (code, last) = c
        .patch(&w, MERGE, &json!({"metadata": {"finalizers": null}}))
        .await;
    assert_eq!(code, 200);
    assert!(last["metadata"]["deletionTimestamp"].is_string());
    assert_eq!(c.get(&w).await.0, 404);
    assert_eq!(c.delete(&w).await.0, 404);

    // Without finalizers a delete removes at once; preconditions are checked.
    c.post(WIDGETS, &widget("a", "v", 1)).await;
    let (code, _) = c
        .send(
            "DELETE",
            &format!("{WIDGETS}/v"),
            "application/json",
            Some(&json!({"preconditions": {"uid": "nope"}})),
        )
        .await;
    assert_eq!(code, 409);
    let (code, gone) = c
        .send(
            "DELETE",
            &format!("{WIDGETS}/v"),
            "application/json",
            Some(&json!({"kind": "DeleteOptions", "apiVersion": "v1"})),
        )
        .await;
    assert_eq!((code, &gone["metadata"]["name"]), (200, &json!("v")));
    assert!(
        api.get("example.com/v1", "widgets", Some("a"), "v")
            .is_none()
    );
}

fn owned_by(mut obj: Value, owners: &[&Value]) -> Value {
    let refs: Vec<Value> = owners
        .iter()
        .map(|o| json!({"apiVersion": o["apiVersion"], "kind": o["kind"], "name": o["metadata"]["name"], "uid": o["metadata"]["uid"], "controller": true}))
        .collect();
    obj["metadata"]["ownerReferences"] = json!(refs);
    obj
}

#[tokio::test]
async fn owner_reference_garbage_collection() {
    let api = FakeApi::start().await;
    let c = Client::new(&api);
    let (_, owner) = c.post(WIDGETS, &widget("a", "owner", 1)).await;
    let (_, other) = c.post(WIDGETS, &widget("a", "other", 1)).await;
    let (_, child) = c
        .post(
            CMS,
            &owned_by(config_map("a", "child", json!({})), &[&owner]),
        )
        .await;
    c.post(
        CMS,
        &owned_by(config_map("a", "grandchild", json!({})), &[&child]),
    )
    .await;
    c.post(
        CMS,
        &owned_by(config_map("a", "shared", json!({})), &[&owner, &other]),
    )
    .await;
    let mut held = owned_by(config_map("a", "held", json!({})), &[&owner]);
    held["metadata"]["finalizers"] = json!(["example.com/keep"]);
    c.post(CMS, &held).await;

    assert_eq!(c.delete(&format!("{WIDGETS}/owner")).await.0, 200);
    let (_, list) = c.get(CMS).await;
    assert_eq!(
        names(&list),
        ["held", "shared"],
        "child and grandchild are collected"
    );
    let shared = api.get("v1", "configmaps", Some("a"), "shared").unwrap();
    let refs = shared["metadata"]["ownerReferences"].as_array().unwrap();
    assert_eq!(refs.len(), 1);
    assert_eq!(refs[0]["uid"], other["metadata"]["uid"]);
    let held = api.get("v1", "configmaps", Some("a"), "held").unwrap();
    assert!(
        held["metadata"]["deletionTimestamp"].is_string(),
        "a dependent's finalizers hold it"
    );

    // Orphan propagation keeps the dependents, without the reference.
    let orphan = json!({"propagationPolicy": "Orphan"});
    let (code, _) = c
        .send(
            "DELETE",
            &format!("{WIDGETS}/other"),
            "application/json",
            Some(&orphan),
        )
        .await;
    assert_eq!(code, 200);
    let shared = api.get("v1", "configmaps", Some("a"), "shared").unwrap();
    assert!(shared["metadata"]["ownerReferences"].is_null());
}

#[tokio::test]
async fn label_and_field_selectors() {
    let api = FakeApi::start().await;
    let c = Client::new(&api);
    c.post(
        CMS,
        &config_map("a", "web", json!({"app": "web", "tier": "fe"})),
    )
    .await;
    c.post(CMS, &config_map("a", "db", json!({"app": "db"})))
        .await;
    c.post(CMS, &config_map("a", "bare", json!({}))).await;
    c.post(
        "/api/v1/namespaces/b/configmaps",
        &config_map("b", "web", json!({"app": "web"})),
    )
    .await;
    let list = async |query: &str| names(&c.get(&format!("{CMS}?{query}")).await.1);
    assert_eq!(list("labelSelector=app%3Dweb").await, ["web"]);
    assert_eq!(list("labelSelector=app%21%3Dweb").await, ["bare", "db"]);
    assert_eq!(list("labelSelector=app%3Dweb%2Ctier%3Dfe").await, ["web"]);
    assert_eq!(
        list("labelSelector=app%20in%20(web%2Cdb)").await,
        ["db", "web"]
    );
    assert_eq!(list("labelSelector=!app").await, ["bare"]);
    assert_eq!(list("fieldSelector=metadata.name%3Ddb").await, ["db"]);
    let (_, all) = c
        .get("/api/v1/configmaps?labelSelector=app%3Dweb&fieldSelector=metadata.namespace%3Db")
        .await;
    assert_eq!(all["items"][0]["metadata"]["namespace"], "b");
    assert_eq!(all["items"].as_array().unwrap().len(), 1);
    assert_eq!(c.get(&format!("{CMS}?labelSelector=a%20b")).await.0, 400);

    // Delete-collection with a selector.
    let (code, deleted) = c
        .send("DELETE", &format!("{CMS}?labelSelector=app"), "", None)
        .await;
    assert_eq!(
        (code, names(&deleted)),
        (200, vec!["db".to_owned(), "web".to_owned()])
    );
    assert_eq!(list("").await, ["bare"]);
}

#[tokio::test]
async fn metadata_only_answers() {
    let api = FakeApi::start().await;
    let c = Client::new(&api);
    c.post(CMS, &config_map("a", "one", json!({"app": "web"})))
        .await;
    let accept = "application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1";
    let (code, list) = c.get_accept(CMS, accept).await;
    assert_eq!(code, 200);
    assert_eq!(list["kind"], "PartialObjectMetadataList");
    assert_eq!(list["items"][0]["kind"], "PartialObjectMetadata");
    assert_eq!(list["items"][0]["metadata"]["labels"]["app"], "web");
    assert!(list["items"][0]["data"].is_null());
    let (_, one) = c
        .get_accept(
            &format!("{CMS}/one"),
            "application/json;as=PartialObjectMetadata;g=meta.k8s.io;v=v1",
        )
        .await;
    assert_eq!(
        (&one["apiVersion"], &one["metadata"]["name"]),
        (&json!("meta.k8s.io/v1"), &json!("one"))
    );
}

#[tokio::test]
async fn malformed_requests_get_a_status_not_a_panic() {
    let api = FakeApi::start().await;
    let c = Client::new(&api);
    c.post(CMS, &config_map("a", "one", json!({}))).await;
    let one = format!("{CMS}/one");
    let bodies: [&[u8]; 8] = [
        b"",
        b"null",
        b"[]",
        b"\"x\"",
        b"{\"metadata\": 3}",
        b"{\"metadata\": {\"name\": 5}}",
        b"{\"kind\": 1}",
        &[0xff, 0xfe],
    ];
    let types = [
        "",
        "application/json",
        MERGE,
        STRATEGIC,
        JSON_PATCH,
        APPLY,
        "text/plain",
    ];
    for method in ["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"] {
        for path in [
            CMS,
            one.as_str(),
            "/api/v1/namespaces/a/configmaps/one/status?fieldManager=m",
            "/apis/%zz/v1/x",
            "/api/v1/namespaces/%E2%82/x/y",
        ] {
            for body in bodies {
                for ct in types {
                    let (code, status) = c.send_raw(method, path, ct, body.to_vec()).await;
                    assert!(
                        (200..500).contains(&code),
                        "{method} {path} {ct} {body:?}: {code} {status}"
                    );
                    if code >= 400 {
                        assert_eq!(status["kind"], "Status", "{method} {path} {ct} {body:?}");
                    }
                }
            }
        }
    }
    api.upsert("v1", "configmaps", config_map("a", "one", json!({})));
    let patches = [
        json!([{"op": "add", "path": "/metadata/finalizers/9", "value": "x"}]),
        json!([{"op": "move", "from": "/nope", "path": "/x"}]),
        json!([{"op": "test", "path": "", "value": null}]),
        json!([{"op": "add", "path": "", "value": 1}]),
        json!([{"op": "remove", "path": "/metadata"}]),
        json!([1]),
    ];
    for patch in patches {
        let (code, status) = c.patch(&one, JSON_PATCH, &patch).await;
        assert!((200..500).contains(&code), "{patch}: {code} {status}");
    }
    assert_eq!(c.get("/version").await.0, 200, "still serving");
    assert!(api.requests().len() > 1000);
}

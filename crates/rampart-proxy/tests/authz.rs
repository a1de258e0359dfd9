//! The `authz` filter on a real gateway: the example tenants' Rego bundles (RBAC for acme,
//! ABAC for globex) decide requests to a real upstream; bundles are reloaded under load, a
//! broken bundle is rejected while the old one serves, a runaway policy is stopped, and a
//! verified JWT's claims reach the policy.

#[cfg(not(feature = "policy"))]
#[test]
fn authz_tests_need_the_policy_feature() {
    rampart_test_support::skip(
        "authz",
        &"needs `--features policy` (cargo test --workspace enables it)",
    );
}

#[cfg(feature = "policy")]
mod common;

#[cfg(feature = "policy")]
mod with_policy {
    use std::path::{Path, PathBuf};
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

    use http::StatusCode;

    use super::common::*;

    fn copy_dir(from: &Path, to: &Path) {
        std::fs::create_dir_all(to).unwrap();
        for e in std::fs::read_dir(from).unwrap() {
            let e = e.unwrap();
            let dst = to.join(e.file_name());
            if e.file_type().unwrap().is_dir() {
                copy_dir(&e.path(), &dst);
            } else {
                std::fs::copy(e.path(), dst).unwrap();
            }
        }
    }

    /// The example tenants copied into a fresh directory.
    fn example_tenants() -> (tempfile::TempDir, PathBuf) {
        let tmp = tempfile::tempdir().unwrap();
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/policy/tenants");
        let dst = tmp.path().join("tenants");
        copy_dir(&src, &dst);
        (tmp, dst)
    }

    fn policy_config(dir: &Path, filters: &str, upstream: std::net::SocketAddr) -> String {
        format!(
            r#"
workers: 1
access_log: {{ format: "off" }}
admin: {{ address: "127.0.0.1:0" }}
policy:
  bundles_dir: "{dir}"
  eval_timeout: 200ms
listeners:
  - name: main
    address: "127.0.0.1:0"
    route_table: t
    filters:
{filters}
route_tables:
  - name: t
    virtual_hosts:
      - name: all
        domains: ["*"]
        routes:
          - name: lenient
            match: {{ path: {{ prefix: "/lenient/" }} }}
            forward: {{ cluster: app }}
            filters:
              - authz: {{ tenant: slow, on_error: allow }}
          - name: api
            forward: {{ cluster: app }}
clusters:
  - name: app
    endpoints: ["{upstream}"]
"#,
            dir = dir.display()
        )
    }

    const BY_HEADER: &str = "      - authz: { tenant_from: \"header:x-tenant\" }";

    #[tokio::test]
    async fn decisions_allow_deny_and_inject_headers() {
        let up = upstream("app").await;
        let (_tmp, dir) = example_tenants();
        let tg = gateway(&policy_config(&dir, BY_HEADER, up.addr)).await;

        // acme (RBAC): a viewer reads; the policy's headers reach the upstream.
        let r = get(
            tg.addr,
            "/api/orders/1?x=1",
            &[("x-tenant", "acme"), ("x-user", "vera")],
        )
        .await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text());
        assert_eq!(r.upstream_header("x-user").as_deref(), Some("vera"));
        assert_eq!(r.upstream_header("x-roles").as_deref(), Some("viewer"));

        // A viewer cannot write: the policy's status, content type and JSON body.
        let req = http::Request::builder()
            .method("POST")
            .uri(format!("http://{}/api/orders", tg.addr))
            .header("x-tenant", "acme")
            .header("x-user", "vera")
            .body(http_body_util::Full::new(bytes::Bytes::new()))
            .unwrap();
        let r = send(&h1(), req).await;
        assert_eq!(r.status, StatusCode::FORBIDDEN);
        assert_eq!(r.header("content-type"), Some("application/json"));
        assert_eq!(
            r.json(),
            serde_json::json!({"error": "forbidden", "tenant": "acme"})
        );

        // globex (ABAC): clearance decides; an unknown user gets the policy's 401 + header.
        let r = get(
            tg.addr,
            "/code/secrets/k",
            &[("x-tenant", "globex"), ("x-user", "sam")],
        )
        .await;
        assert_eq!(r.status, StatusCode::OK);
        assert_eq!(r.upstream_header("x-clearance").as_deref(), Some("3"));
        let r = get(
            tg.addr,
            "/code/secrets/k",
            &[("x-tenant", "globex"), ("x-user", "eve")],
        )
        .await;
        assert_eq!(r.status, StatusCode::FORBIDDEN);
        assert_eq!(r.text(), "denied by globex policy");
        let r = get(
            tg.addr,
            "/code/x",
            &[("x-tenant", "globex"), ("x-user", "nobody")],
        )
        .await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED);
        assert_eq!(
            r.header("www-authenticate"),
            Some("Bearer realm=\"globex\"")
        );

        // No tenant, or an unknown one: fail closed.
        for headers in [
            vec![("x-user", "vera")],
            vec![("x-tenant", "initech"), ("x-user", "vera")],
        ] {
            let r = get(tg.addr, "/api/orders", &headers).await;
            assert_eq!(r.status, StatusCode::FORBIDDEN);
            assert!(r.text().contains("authorization failed"), "{}", r.text());
        }

        let m = admin(&tg, "/metrics").await.text();
        assert!(
            metric(&m, "rampart_policy_decisions_allowed_total").unwrap() >= 2.0,
            "{m}"
        );
        assert!(
            metric(&m, "rampart_policy_decisions_denied_total").unwrap() >= 3.0,
            "{m}"
        );
        assert!(
            metric(&m, "rampart_policy_decision_errors_total").unwrap() >= 2.0,
            "{m}"
        );
        assert!(
            metric(&m, "rampart_policy_cache_hits_total").unwrap() >= 5.0,
            "{m}"
        );
    }

    #[tokio::test]
    async fn tenants_never_see_each_others_policy_or_data() {
        let up = upstream("app").await;
        let (_tmp, dir) = example_tenants();
        let tg = gateway(&policy_config(&dir, BY_HEADER, up.addr)).await;
        // ada is acme's admin; globex's data does not know her, and acme's roles are not
        // visible to globex's policy (and the other way round for sam).
        let r = get(
            tg.addr,
            "/code/x",
            &[("x-tenant", "globex"), ("x-user", "ada")],
        )
        .await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED);
        let r = get(
            tg.addr,
            "/api/orders",
            &[("x-tenant", "acme"), ("x-user", "sam")],
        )
        .await;
        assert_eq!(r.status, StatusCode::FORBIDDEN);
        // A tenant whose policy reads data.bindings (acme's data) gets undefined, not acme's.
        std::fs::create_dir_all(dir.join("snoop")).unwrap();
        std::fs::write(
            dir.join("snoop/authz.rego"),
            "package authz\ndefault decision := false\ndecision if data.bindings.ada\n",
        )
        .unwrap();
        assert!(
            eventually(Duration::from_secs(10), || async {
                let r = get(tg.addr, "/api/x", &[("x-tenant", "snoop")]).await;
                // 403 from the policy itself (not "authorization failed": it was loaded).
                r.status == StatusCode::FORBIDDEN && !r.text().contains("authorization failed")
            })
            .await
        );
    }

    #[tokio::test]
    async fn hot_reload_under_load_loses_nothing_and_rejects_broken_bundles() {
        let up = upstream("app").await;
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("tenants");
        let write = |rev: &str| {
            std::fs::create_dir_all(dir.join("live")).unwrap();
            std::fs::write(
                dir.join("live/authz.rego"),
                format!(
                    "package authz\ndecision := {{\"allowed\": true, \"headers\": {{\"x-rev\": \"{rev}\"}}}}\n\
                     test_allows if decision.allowed\n"
                ),
            )
            .unwrap();
        };
        write("1");
        let tg = gateway(&policy_config(&dir, BY_HEADER, up.addr)).await;
        let addr = tg.addr;

        // Load: sequential requests on two tasks, bounded in count and time.
        let failures = Arc::new(AtomicUsize::new(0));
        let done = Arc::new(AtomicUsize::new(0));
        let deadline = Instant::now() + Duration::from_secs(20);
        let load: Vec<_> = (0..2)
            .map(|_| {
                let (failures, done) = (failures.clone(), done.clone());
                tokio::spawn(async move {
                    let client = h1();
                    let mut revs = std::collections::BTreeSet::new();
                    for _ in 0..20_000 {
                        if Instant::now() > deadline || done.load(Ordering::Relaxed) == usize::MAX {
                            break;
                        }
                        let r =
                            send(&client, get_req(addr, "/api/x", &[("x-tenant", "live")])).await;
                        if r.status == StatusCode::OK {
                            revs.insert(r.upstream_header("x-rev").unwrap_or_default());
                        } else {
                            failures.fetch_add(1, Ordering::Relaxed);
                        }
                        done.fetch_add(1, Ordering::Relaxed);
                    }
                    revs
                })
            })
            .collect();

        let seen_rev = |rev: &'static str| async move {
            get(addr, "/api/x", &[("x-tenant", "live")])
                .await
                .upstream_header("x-rev")
                .as_deref()
                == Some(rev)
        };
        // Each change lands while the load is running: at least 50 requests since the last.
        let progressed = |since: usize| {
            let done = done.clone();
            move || {
                let n = done.load(Ordering::Relaxed);
                async move { n >= since + 50 }
            }
        };
        for rev in ["2", "3", "4"] {
            let since = done.load(Ordering::Relaxed);
            assert!(
                eventually(Duration::from_secs(10), progressed(since)).await,
                "no load"
            );
            write(rev);
            assert!(
                eventually(Duration::from_secs(10), || seen_rev(rev)).await,
                "rev {rev} never served"
            );
        }
        // A bundle that does not compile, then one whose own test fails: both rejected, and
        // the last good revision keeps serving.
        let rejected = |n: u32| {
            let text = tg.gw.metrics().encode();
            let want = format!("rampart_policy_bundles_rejected_total {n}");
            async move { text.lines().any(|l| l == want) }
        };
        std::fs::write(dir.join("live/authz.rego"), "package authz\ndecision if {").unwrap();
        assert!(
            eventually(Duration::from_secs(10), || rejected(1)).await,
            "not rejected"
        );
        assert!(seen_rev("4").await);
        std::fs::write(
            dir.join("live/authz.rego"),
            "package authz\ndecision := false\ntest_allows if decision\n",
        )
        .unwrap();
        assert!(
            eventually(Duration::from_secs(10), || rejected(2)).await,
            "not rejected"
        );
        assert!(seen_rev("4").await);

        done.store(usize::MAX, Ordering::Relaxed);
        let mut revs = std::collections::BTreeSet::new();
        for l in load {
            revs.extend(l.await.unwrap());
        }
        assert_eq!(
            failures.load(Ordering::Relaxed),
            0,
            "requests failed during reloads"
        );
        assert!(revs.len() >= 3, "load saw revisions {revs:?}");
        let m = admin(&tg, "/metrics").await.text();
        assert_eq!(
            metric(&m, "rampart_policy_bundles_rejected_total"),
            Some(2.0),
            "{m}"
        );
    }

    #[tokio::test]
    async fn a_runaway_policy_is_stopped_and_on_error_decides() {
        let up = upstream("app").await;
        let (_tmp, dir) = example_tenants();
        std::fs::create_dir_all(dir.join("slow")).unwrap();
        std::fs::write(
            dir.join("slow/authz.rego"),
            "package authz\ndefault decision := false\n\
             decision if { some i in numbers.range(1, 100000); some j in numbers.range(1, 100000); i * j < 0 }\n",
        )
        .unwrap();
        let tg = gateway(&policy_config(&dir, "      - header_mutation: {}", up.addr)).await;
        // The listener has no authz; the /lenient/ route asks the slow tenant and fails open.
        let t = Instant::now();
        let r = get(tg.addr, "/lenient/x", &[]).await;
        assert_eq!(r.status, StatusCode::OK, "on_error: allow passes");
        assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());

        let closed = policy_config(&dir, "      - authz: { tenant: slow }", up.addr);
        let tg2 = gateway(&closed).await;
        let t = Instant::now();
        let r = get(tg2.addr, "/api/x", &[]).await;
        assert_eq!(r.status, StatusCode::FORBIDDEN, "fails closed");
        assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
        let m = admin(&tg2, "/metrics").await.text();
        assert!(
            metric(&m, "rampart_policy_decision_errors_total").unwrap() >= 1.0,
            "{m}"
        );
    }

    #[tokio::test]
    async fn verified_jwt_claims_reach_the_policy() {
        let up = upstream("app").await;
        let (tmp, dir) = example_tenants();
        let secret = "an-hs256-test-secret-of-at-least-32-bytes";
        let secret_file = tmp.path().join("hs256");
        std::fs::write(&secret_file, secret).unwrap();
        let filters = format!(
            "      - jwt: {{ issuer: \"https://issuer.test/\", algorithms: [HS256], hs256_secret_file: \"{}\" }}\n\
             \x20     - authz: {{ tenant_from: \"claim:org\" }}",
            secret_file.display()
        );
        let tg = gateway(&policy_config(&dir, &filters, up.addr)).await;
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let token = |sub: &str, org: &str| {
            jsonwebtoken::encode(
                &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
                &serde_json::json!({"sub": sub, "org": org, "iss": "https://issuer.test/", "exp": now + 300}),
                &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
            )
            .unwrap()
        };
        // The tenant comes from the org claim and the user from sub; x-user is ignored
        // because the policy prefers the verified subject.
        let bearer = format!("Bearer {}", token("vera", "acme"));
        let r = get(
            tg.addr,
            "/api/orders",
            &[("authorization", &bearer), ("x-user", "ada")],
        )
        .await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text());
        assert_eq!(r.upstream_header("x-user").as_deref(), Some("vera"));
        let bearer = format!("Bearer {}", token("sam", "globex"));
        let r = get(tg.addr, "/code/secrets/k", &[("authorization", &bearer)]).await;
        assert_eq!(r.status, StatusCode::OK);
        // No token: the jwt filter answers before authz runs.
        let r = get(tg.addr, "/api/orders", &[("x-user", "ada")]).await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    }

    fn bundle_text() -> String {
        serde_json::json!({"modules": {"p.rego": "package api\ndecision := {\"allowed\": true}\n"}})
            .to_string()
    }

    /// PUT/GET/DELETE a bundle through the admin API (with its bearer token, from an allowed
    /// Host); a bad one is refused with the reason.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn bundles_through_the_admin_api_need_the_token() {
        let up = upstream("app").await;
        let (tmp, dir) = example_tenants();
        let token = "0123456789abcdef0123456789abcdef";
        let token_file = tmp.path().join("admin.token");
        std::fs::write(&token_file, format!("{token}\n")).unwrap();
        let cfg = policy_config(&dir, BY_HEADER, up.addr).replace(
            r#"admin: { address: "127.0.0.1:0" }"#,
            &format!(
                r#"admin: {{ address: "127.0.0.1:0", token_file: "{}" }}"#,
                token_file.display()
            ),
        );
        let tg = gateway(&cfg).await;
        let admin_addr = tg.admin.unwrap();
        let request = |method: &'static str, path: &'static str, body: String, auth: &str| {
            let mut b = http::Request::builder()
                .method(method)
                .uri(format!("http://{admin_addr}{path}"));
            if !auth.is_empty() {
                b = b.header("authorization", auth);
            }
            b.body(http_body_util::Full::new(bytes::Bytes::from(body)))
                .unwrap()
        };
        let call = |method: &'static str, path: &'static str, body: String| {
            let req = request(method, path, body, &format!("Bearer {token}"));
            async move { send(&h1(), req).await }
        };

        // Mutations need the token; reads do not.
        for auth in ["", "Bearer wrong-token-wrong-token!!", "Basic abc"] {
            let r = send(
                &h1(),
                request("PUT", "/policy/tenants/pushed", bundle_text(), auth),
            )
            .await;
            assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{auth:?}: {}", r.text());
            assert!(r.header("www-authenticate").is_some());
            let r = send(
                &h1(),
                request("DELETE", "/policy/tenants/acme", String::new(), auth),
            )
            .await;
            assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{auth:?}");
        }
        let r = send(&h1(), request("GET", "/policy/tenants", String::new(), "")).await;
        assert_eq!(r.status, StatusCode::OK);
        // DNS rebinding: a page served from evil.example resolving to 127.0.0.1.
        let mut rebinding = request(
            "PUT",
            "/policy/tenants/pushed",
            bundle_text(),
            &format!("Bearer {token}"),
        );
        rebinding
            .headers_mut()
            .insert("host", http::HeaderValue::from_static("evil.example:9901"));
        let r = send(&h1(), rebinding).await;
        assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.text());
        let bundle = |allowed: bool, test: &str| {
            serde_json::json!({
                "modules": {"p.rego": format!("package api\ndecision := {{\"allowed\": {allowed}, \"http_status\": 451}}\n{test}")},
                "entrypoint": "api/decision",
                "revision": format!("rev-{allowed}"),
            })
            .to_string()
        };
        let r = call("PUT", "/policy/tenants/pushed", bundle(true, "")).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text());
        assert_eq!(r.json()["revision"], "rev-true");
        let r = get(tg.addr, "/x", &[("x-tenant", "pushed")]).await;
        assert_eq!(r.status, StatusCode::OK);

        // A bundle whose own test fails is refused; the old one keeps serving.
        let r = call(
            "PUT",
            "/policy/tenants/pushed",
            bundle(false, "test_open if decision.allowed\n"),
        )
        .await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.text());
        assert!(
            r.json()["error"].as_str().unwrap().contains("test_open"),
            "{}",
            r.text()
        );
        assert_eq!(
            get(tg.addr, "/x", &[("x-tenant", "pushed")]).await.status,
            StatusCode::OK
        );
        let r = call("PUT", "/policy/tenants/pushed", "{not json".into()).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST);

        let r = call("PUT", "/policy/tenants/pushed", bundle(false, "")).await;
        assert_eq!(r.status, StatusCode::OK);
        assert_eq!(
            get(tg.addr, "/x", &[("x-tenant", "pushed")])
                .await
                .status
                .as_u16(),
            451
        );

        let list = call("GET", "/policy/tenants", String::new()).await.json();
        let names: Vec<_> = list
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["tenant"].as_str().unwrap().to_string())
            .collect();
        assert_eq!(names, ["acme", "globex", "pushed"]);
        assert_eq!(
            call("DELETE", "/policy/tenants/pushed", String::new())
                .await
                .status,
            StatusCode::OK
        );
        assert_eq!(
            call("DELETE", "/policy/tenants/pushed", String::new())
                .await
                .status,
            StatusCode::NOT_FOUND
        );
        let r = get(tg.addr, "/x", &[("x-tenant", "pushed")]).await;
        assert!(
            r.text().contains("authorization failed"),
            "unknown again: {}",
            r.text()
        );
    }

    #[tokio::test]
    async fn a_missing_bundles_dir_fails_start_with_the_field() {
        let up = upstream("app").await;
        let cfg = rampart_config::from_yaml(&policy_config(
            Path::new("/nonexistent/tenants"),
            BY_HEADER,
            up.addr,
        ))
        .unwrap();
        let err = rampart_proxy::Gateway::start(cfg, rampart_proxy::Runtimes::current())
            .await
            .err()
            .expect("start fails");
        assert!(err.to_string().contains("policy.bundles_dir"), "{err}");
    }
}

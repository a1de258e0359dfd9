//! One path for everyone: for any request path, the path the policy decided on
//! (`input.path`, echoed by the policy into a header) equals the path the upstream received,
//! modulo the route's prefix rewrite; and no accepted path carries a dot segment or an
//! encoded slash. A property test against a real gateway and upstream.

#[cfg(not(feature = "policy"))]
#[test]
fn normalisation_property_needs_the_policy_feature() {
    rampart_test_support::skip(
        "the_policy_and_the_upstream_see_the_same_path",
        &"needs `--features policy` (cargo test --workspace enables it)",
    );
}

#[cfg(feature = "policy")]
mod common;

#[cfg(feature = "policy")]
mod with_policy {
    use proptest::prelude::*;

    use super::common::*;

    use rampart_test_support::paths::has_dot_segment;

    fn path() -> impl Strategy<Value = String> {
        rampart_test_support::paths::path(&[], 7)
    }

    #[test]
    fn the_policy_and_the_upstream_see_the_same_path() {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let tmp = tempfile::tempdir().unwrap();
        let tenant = tmp.path().join("tenants/echo");
        std::fs::create_dir_all(&tenant).unwrap();
        std::fs::write(
            tenant.join("policy.rego"),
            "package authz\ndecision := {\"allowed\": true, \"headers\": {\"x-policy-path\": input.path}}\n",
        )
        .unwrap();
        let (gw, _up) = rt.block_on(async {
            let up = upstream("app").await;
            let yaml = format!(
                r#"
workers: 1
access_log: {{ format: "off" }}
policy: {{ bundles_dir: "{dir}" }}
listeners:
  - name: main
    address: "127.0.0.1:0"
    route_table: t
    filters:
      - authz: {{ tenant: echo }}
route_tables:
  - name: t
    virtual_hosts:
      - name: all
        domains: ["*"]
        routes:
          - {{ name: v1, match: {{ path: {{ prefix: /v1/ }} }}, forward: {{ cluster: app, prefix_rewrite: /v2/ }} }}
          - {{ name: rest, forward: {{ cluster: app }} }}
clusters:
  - {{ name: app, endpoints: ["{up}"] }}
"#,
                dir = tmp.path().join("tenants").display(),
                up = up.addr,
            );
            (gateway(&yaml).await, up)
        });
        let client = h1();
        let accepted = std::cell::Cell::new(0u32);
        let refused = std::cell::Cell::new(0u32);
        let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig::with_cases(200));
        runner
            .run(&path(), |raw| {
                let Ok(req) = http::Request::get(format!("http://{}{raw}", gw.addr))
                    .body(http_body_util::Full::new(bytes::Bytes::new()))
                else {
                    return Ok(()); // not something a client library can send
                };
                let r = rt.block_on(send(&client, req));
                if r.status == 400 {
                    refused.set(refused.get() + 1);
                    return Ok(());
                }
                prop_assert_eq!(r.status, 200, "{}: {}", raw, r.text());
                accepted.set(accepted.get() + 1);
                let seen = r.upstream_header("x-policy-path").unwrap();
                let upstream_path = r.json()["path"].as_str().unwrap().to_owned();
                let expected = match seen.strip_prefix("/v1/") {
                    Some(rest) => format!("/v2/{rest}"),
                    None => seen.clone(),
                };
                prop_assert_eq!(&upstream_path, &expected, "{}", raw);
                prop_assert!(!has_dot_segment(&seen), "{} -> {}", raw, seen);
                prop_assert!(!seen.contains("//"), "{} -> {}", raw, seen);
                let lower = seen.to_ascii_lowercase();
                prop_assert!(
                    !lower.contains("%2f") && !lower.contains("%5c"),
                    "{} -> {}",
                    raw,
                    seen
                );
                Ok(())
            })
            .unwrap();
        // Both outcomes were exercised.
        let (accepted, refused) = (accepted.get(), refused.get());
        assert!(
            accepted > 20 && refused > 20,
            "{accepted} accepted, {refused} refused"
        );
    }
}

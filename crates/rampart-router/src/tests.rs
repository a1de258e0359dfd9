use super::*;
use proptest::prelude::*;

const YAML: &str = r#"
listeners:
  - { name: l, address: "127.0.0.1:1", route_table: t }
clusters:
  - { name: c, endpoints: ["127.0.0.1:2"] }
route_tables:
  - name: t
    virtual_hosts:
      - name: exact
        domains: ["api.example.com", "api.example.com:8443"]
        routes:
          - { name: exact-path, match: { path: { exact: /a } }, forward: { cluster: c } }
          - { name: post-only, match: { path: { prefix: /m }, methods: [POST, put] }, forward: { cluster: c } }
          - name: header
            match:
              path: { prefix: /h }
              headers: [{ name: X-Env, exact: canary }, { name: x-debug }]
            forward: { cluster: c }
          - name: header-regex
            match:
              path: { prefix: /h }
              headers: [{ name: x-env, regex: "stag(e|ing)" }, { name: x-block, invert: true }]
            forward: { cluster: c }
          - name: query
            match:
              path: { prefix: /q }
              query: [{ name: debug, exact: "on now" }, { name: v, prefix: "2" }]
            forward: { cluster: c }
          - { name: regex, match: { path: { regex: "/users/[0-9]+" } }, forward: { cluster: c } }
          - { name: prefix, match: { path: { prefix: /a } }, forward: { cluster: c } }
      - name: suffix-long
        domains: ["*.eu.example.com"]
        routes: [{ name: eu, forward: { cluster: c } }]
      - name: suffix
        domains: ["*.example.com"]
        routes: [{ name: wild, forward: { cluster: c } }]
      - name: prefix-wild
        domains: ["shop.*"]
        routes: [{ name: shop, forward: { cluster: c } }]
      - name: any
        domains: ["*"]
        routes: [{ name: fallback, match: { path: { prefix: /only } }, forward: { cluster: c } }]
"#;

fn table() -> RouteTable {
    let cfg = rampart_config::from_yaml(YAML).unwrap();
    RouteTable::new(&cfg.route_tables[0])
}

fn route_name(
    t: &RouteTable,
    method: &str,
    host: &str,
    path_and_query: &str,
    headers: &[(&str, &str)],
) -> Result<String, NoRoute> {
    let method = Method::from_bytes(method.as_bytes()).unwrap();
    let (path, query) = match path_and_query.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (path_and_query, None),
    };
    let mut map = HeaderMap::new();
    for (k, v) in headers {
        map.append(
            http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
            v.parse().unwrap(),
        );
    }
    let req = RequestView {
        method: &method,
        authority: host,
        path,
        query,
        headers: &map,
    };
    t.route(&req).map(|m| m.entry.name.clone())
}

#[test]
fn virtual_host_precedence() {
    let t = table();
    let vh = |h: &str| t.virtual_host(h).map(|v| v.name.clone());
    assert_eq!(vh("api.example.com").as_deref(), Some("exact"));
    assert_eq!(
        vh("API.Example.COM:80").as_deref(),
        Some("exact"),
        "case and port ignored"
    );
    assert_eq!(
        vh("x.eu.example.com").as_deref(),
        Some("suffix-long"),
        "longest suffix wins"
    );
    assert_eq!(vh("a.b.example.com").as_deref(), Some("suffix"));
    assert_eq!(
        vh("example.com").as_deref(),
        Some("any"),
        "*.example.com needs a label"
    );
    assert_eq!(vh("shop.io").as_deref(), Some("prefix-wild"));
    assert_eq!(
        vh("shop.example.com").as_deref(),
        Some("suffix"),
        "suffix beats prefix"
    );
    assert_eq!(vh("[::1]:8080").as_deref(), Some("any"));
    assert_eq!(vh("other").as_deref(), Some("any"));
}

#[test]
fn path_kinds_and_first_match_order() {
    let t = table();
    let h = "api.example.com";
    assert_eq!(route_name(&t, "GET", h, "/a", &[]).unwrap(), "exact-path");
    assert_eq!(route_name(&t, "GET", h, "/ab", &[]).unwrap(), "prefix");
    assert_eq!(route_name(&t, "GET", h, "/users/42", &[]).unwrap(), "regex");
    assert_eq!(
        route_name(&t, "GET", h, "/users/42/x", &[]),
        Err(NoRoute::NoRouteMatched),
        "regex is anchored"
    );
    assert_eq!(
        route_name(&t, "GET", h, "/zzz", &[]),
        Err(NoRoute::NoRouteMatched)
    );
}

#[test]
fn methods() {
    let t = table();
    let h = "api.example.com";
    assert_eq!(route_name(&t, "POST", h, "/m", &[]).unwrap(), "post-only");
    assert_eq!(route_name(&t, "PUT", h, "/m", &[]).unwrap(), "post-only");
    assert_eq!(
        route_name(&t, "GET", h, "/m", &[]),
        Err(NoRoute::NoRouteMatched)
    );
}

#[test]
fn headers_exact_present_regex_invert() {
    let t = table();
    let h = "api.example.com";
    let hdr = |hs: &[(&str, &str)]| route_name(&t, "GET", h, "/h", hs);
    assert_eq!(
        hdr(&[("x-env", "canary"), ("x-debug", "")]).unwrap(),
        "header"
    );
    assert_eq!(
        hdr(&[("x-env", "canary")]),
        Err(NoRoute::NoRouteMatched),
        "x-debug must be present"
    );
    assert_eq!(hdr(&[("x-env", "staging")]).unwrap(), "header-regex");
    assert_eq!(hdr(&[("x-env", "stage")]).unwrap(), "header-regex");
    assert_eq!(hdr(&[("x-env", "stagingX")]), Err(NoRoute::NoRouteMatched));
    assert_eq!(
        hdr(&[("x-env", "stage"), ("x-block", "1")]),
        Err(NoRoute::NoRouteMatched),
        "inverted match"
    );
    // Any of several values may match.
    assert_eq!(
        hdr(&[("x-env", "prod"), ("x-env", "stage")]).unwrap(),
        "header-regex"
    );
}

#[test]
fn query_params() {
    let t = table();
    let h = "api.example.com";
    assert_eq!(
        route_name(&t, "GET", h, "/q?debug=on+now&v=2.1", &[]).unwrap(),
        "query"
    );
    assert_eq!(
        route_name(&t, "GET", h, "/q?v=20&debug=on%20now", &[]).unwrap(),
        "query"
    );
    assert_eq!(
        route_name(&t, "GET", h, "/q?debug=on+now&v=3", &[]),
        Err(NoRoute::NoRouteMatched)
    );
    assert_eq!(
        route_name(&t, "GET", h, "/q", &[]),
        Err(NoRoute::NoRouteMatched)
    );
}

#[test]
fn no_virtual_host() {
    let cfg = rampart_config::from_yaml(
        r#"
clusters: [{ name: c, endpoints: ["127.0.0.1:2"] }]
route_tables:
  - name: t
    virtual_hosts: [{ name: v, domains: [a.com], routes: [{ forward: { cluster: c } }] }]
"#,
    )
    .unwrap();
    let t = RouteTable::new(&cfg.route_tables[0]);
    assert_eq!(
        route_name(&t, "GET", "b.com", "/", &[]),
        Err(NoRoute::NoVirtualHost)
    );
    assert_eq!(route_name(&t, "GET", "a.com", "/", &[]).unwrap(), "v/0");
}

#[test]
fn weighted_pick_follows_weights() {
    let cs = vec![
        WeightedCluster {
            cluster: "a".into(),
            weight: 3,
        },
        WeightedCluster {
            cluster: "b".into(),
            weight: 1,
        },
    ];
    let picks: Vec<_> = (0..8).map(|r| pick_weighted(&cs, r).unwrap()).collect();
    assert_eq!(picks, ["a", "a", "a", "b", "a", "a", "a", "b"]);
}

#[test]
fn rewrites() {
    let p = PathMatch::Prefix("/v1/".into());
    assert_eq!(rewrite_path(Some(&p), "/v1/users", "/v2/"), "/v2/users");
    assert_eq!(rewrite_path(Some(&p), "/v1/users", "/"), "/users");
    let p = PathMatch::Prefix("/api".into());
    assert_eq!(rewrite_path(Some(&p), "/api/x", "/"), "/x");
    assert_eq!(rewrite_path(Some(&p), "/api", "/root"), "/root");
    assert_eq!(rewrite_path(None, "/anything", "/fixed"), "/fixed");
}

#[test]
fn percent_decoding() {
    assert_eq!(percent_decode("a%20b+c"), "a b c");
    assert_eq!(percent_decode("100%"), "100%");
    assert_eq!(percent_decode("%zz%4"), "%zz%4");
    assert_eq!(percent_decode("%C3%A9"), "é");
}

proptest! {
    // The matcher must never panic on anything a client can send.
    #[test]
    fn matching_never_panics(
        host in "\\PC{0,40}",
        path in "/\\PC{0,60}",
        query in proptest::option::of("\\PC{0,60}"),
        hv in "[ -~]{0,20}",
        method in "[A-Z]{1,8}",
    ) {
        let t = table();
        let method = Method::from_bytes(method.as_bytes()).unwrap();
        let mut headers = HeaderMap::new();
        if let Ok(v) = http::HeaderValue::from_str(&hv) {
            headers.insert("x-env", v.clone());
            headers.insert("x-debug", v);
        }
        let req = RequestView { method: &method, authority: &host, path: &path, query: query.as_deref(), headers: &headers };
        let _ = t.route(&req);
    }

    // A prefix route matches exactly the paths that start with its prefix.
    #[test]
    fn prefix_semantics(suffix in "[a-z/]{0,20}") {
        let t = table();
        let path = format!("/only{suffix}");
        let got = route_name(&t, "GET", "nowhere", &path, &[]);
        prop_assert_eq!(got.unwrap(), "fallback");
        let other = format!("/x{suffix}");
        prop_assert_eq!(route_name(&t, "GET", "nowhere", &other, &[]), Err(NoRoute::NoRouteMatched));
    }

    #[test]
    fn weighted_pick_always_some(weights in proptest::collection::vec(0u32..100, 1..6), r in any::<u64>()) {
        prop_assume!(weights.iter().any(|w| *w > 0));
        let cs: Vec<_> = weights.iter().enumerate().map(|(i, w)| WeightedCluster { cluster: i.to_string(), weight: *w }).collect();
        let pick = pick_weighted(&cs, r).unwrap();
        let idx: usize = pick.parse().unwrap();
        prop_assert!(weights[idx] > 0 || cs.len() == 1);
    }

    #[test]
    fn percent_decode_never_panics(s in "\\PC{0,40}") {
        let _ = percent_decode(&s);
    }
}

fn template_of(segs: &[(bool, String)]) -> rampart_config::template::PathTemplate {
    let text: String = segs
        .iter()
        .enumerate()
        .map(|(i, (param, lit))| {
            if *param {
                format!("/{{p{i}}}")
            } else {
                format!("/{lit}")
            }
        })
        .collect();
    rampart_config::template::PathTemplate::parse(&text).unwrap()
}

proptest! {
    /// A path made from a template (each parameter any non-empty segment) matches it and
    /// yields exactly those values; one segment more or less, or a changed literal, does not.
    #[test]
    fn templates_match_by_segment(
        segs in proptest::collection::vec((any::<bool>(), "[a-z0-9._-]{1,6}"), 1..6),
        values in proptest::collection::vec("[A-Za-z0-9%._~:@!$&'()*+,;=-]{1,8}", 6),
    ) {
        let t = template_of(&segs);
        let path: String = segs
            .iter()
            .enumerate()
            .map(|(i, (param, lit))| format!("/{}", if *param { &values[i] } else { lit }))
            .collect();
        let caps = crate::template_captures(&t, &path).expect("fits");
        let want: Vec<String> = segs.iter().enumerate().filter(|(_, (p, _))| *p).map(|(i, _)| values[i].clone()).collect();
        prop_assert_eq!(caps.iter().map(|(_, v)| v.to_string()).collect::<Vec<_>>(), want);
        prop_assert!(crate::template_matches(&t, &path));
        let (longer, slashed) = (format!("{path}/extra"), format!("{path}/"));
        prop_assert!(!crate::template_matches(&t, &longer));
        prop_assert!(!crate::template_matches(&t, &slashed));
        if let Some(i) = segs.iter().position(|(p, _)| !*p) {
            let mut other = segs.clone();
            other[i].1.push('x');
            let changed: String = other.iter().enumerate().map(|(j, (param, lit))| format!("/{}", if *param { &values[j] } else { lit })).collect();
            prop_assert!(!crate::template_matches(&t, &changed));
        }
        // The regex Envoy gets agrees.
        let re = regex::Regex::new(&t.to_regex()).unwrap();
        prop_assert!(re.is_match(&path));
    }

    /// Matching never panics, whatever the path.
    #[test]
    fn template_matching_takes_any_path(path in "\\PC{0,40}") {
        let t = rampart_config::template::PathTemplate::parse("/a/{b}/c").unwrap();
        let _ = crate::template_captures(&t, &path);
    }
}

#[test]
fn empty_parameters_do_not_match() {
    let t = rampart_config::template::PathTemplate::parse("/users/{id}").unwrap();
    assert!(crate::template_matches(&t, "/users/7"));
    assert!(!crate::template_matches(&t, "/users/"));
    assert!(!crate::template_matches(&t, "/users"));
    assert!(!crate::template_matches(&t, "users/7"));
    assert_eq!(
        crate::template_captures(&t, "/users/a%2Fb"),
        Some(vec![("id", "a%2Fb")])
    );
}

#[test]
fn parameters_inside_a_segment() {
    let t = rampart_config::template::PathTemplate::parse("/repos/{owner}/compare/{base}...{head}")
        .unwrap();
    assert_eq!(
        crate::template_captures(&t, "/repos/me/compare/main...feature"),
        Some(vec![("owner", "me"), ("base", "main"), ("head", "feature")])
    );
    assert_eq!(
        crate::template_captures(&t, "/repos/me/compare/v1.0...v2...x"),
        Some(vec![("owner", "me"), ("base", "v1.0"), ("head", "v2...x")])
    );
    assert!(!crate::template_matches(&t, "/repos/me/compare/...feature"));
    assert!(!crate::template_matches(&t, "/repos/me/compare/main..."));
    assert!(!crate::template_matches(&t, "/repos/me/compare/main"));
    let file = rampart_config::template::PathTemplate::parse("/files/{name}.tar.{ext}").unwrap();
    assert_eq!(
        crate::template_captures(&file, "/files/a.b.tar.gz"),
        Some(vec![("name", "a.b"), ("ext", "gz")])
    );
    let trailing = rampart_config::template::PathTemplate::parse("/x/{id}-v").unwrap();
    assert_eq!(
        crate::template_captures(&trailing, "/x/a-v-v"),
        Some(vec![("id", "a-v")])
    );
    let re = regex::Regex::new(&t.to_regex()).unwrap();
    assert!(re.is_match("/repos/me/compare/main...feature"));
}

/// A route table of `routes` (kind, segments, method) under one `*` host: 0 exact, 1 prefix,
/// 2 template (`{p}` for segment choice 1, `{m}.v` for 2), 3 no path condition.
/// (kind, segments as (choice, literal), POST only).
type RouteSpec = (u8, Vec<(u8, &'static str)>, bool);

fn mixed_table(routes: &[RouteSpec]) -> RouteTable {
    let mut yaml = String::from(
        "listeners:\n  - { name: l, address: \"127.0.0.1:1\", route_table: t }\nclusters:\n  - { name: c, endpoints: [\"127.0.0.1:2\"] }\nroute_tables:\n  - name: t\n    virtual_hosts:\n      - name: all\n        domains: [\"*\"]\n        routes:\n",
    );
    for (i, (kind, segs, post)) in routes.iter().enumerate() {
        let path: String = segs
            .iter()
            .enumerate()
            .map(|(j, (choice, lit))| match (kind, choice) {
                (2, 1) => format!("/{{p{j}}}"),
                (2, 2) => format!("/{{m{j}}}.v"),
                _ => format!("/{lit}"),
            })
            .collect();
        let path = if path.is_empty() {
            "/".to_owned()
        } else {
            path
        };
        let cond = match kind {
            0 => format!("path: {{ exact: \"{path}\" }}, "),
            1 => format!("path: {{ prefix: \"{path}\" }}, "),
            2 => format!("path: {{ template: \"{path}\" }}, "),
            _ => String::new(),
        };
        let methods = if *post {
            "methods: [POST]"
        } else {
            "methods: []"
        };
        yaml.push_str(&format!(
            "          - {{ name: r{i}, match: {{ {cond}{methods} }}, forward: {{ cluster: c }} }}\n"
        ));
    }
    let cfg = rampart_config::from_yaml(&yaml).unwrap();
    RouteTable::new(&cfg.route_tables[0])
}

proptest! {
    /// The segment tree picks the route a scan of every route picks, whatever the mix of
    /// exact, prefix, template and path-less routes, and whatever the path.
    #[test]
    fn the_index_agrees_with_a_scan(
        routes in proptest::collection::vec(
            (0u8..4, proptest::collection::vec((0u8..3, proptest::sample::select(vec!["a", "b", "c", "a.v"])), 0..4), any::<bool>()),
            1..14,
        ),
        path in proptest::collection::vec(proptest::sample::select(vec!["a", "b", "c", "", "a.v", "x.v", "zz"]), 0..5),
        post in any::<bool>(),
    ) {
        let t = mixed_table(&routes);
        let path = format!("/{}", path.join("/"));
        let method = if post { Method::POST } else { Method::GET };
        let headers = HeaderMap::new();
        let req = RequestView { method: &method, authority: "h", path: &path, query: None, headers: &headers };
        let indexed = t.route(&req).ok().map(|m| m.entry.name.clone());
        prop_assert_eq!(indexed.as_deref(), t.route_by_scan(&req), "{}", path);
    }
}

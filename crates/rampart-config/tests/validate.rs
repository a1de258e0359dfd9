use proptest::prelude::*;
use rampart_config::{ConfigError, FieldError, FilterCatalog, from_yaml, parse_yaml};

/// The config crate's own parsers for the filters this file uses (the data plane's registry
/// maps names to factories that call the same functions).
struct Catalog;

impl FilterCatalog for Catalog {
    fn check(&self, name: &str, path: &str, config: &serde_json::Value) -> Vec<FieldError> {
        use rampart_config::filters::{cors, rate_limit};
        let result = match name {
            "cors" => cors::parse(path, config).map(drop),
            "rate_limit" => rate_limit::parse(path, config).map(drop),
            "jwt" => rampart_config::jwt::parse(path, config).map(drop),
            other => Err(vec![FieldError {
                path: path.into(),
                rule: format!("unknown filter {other:?}"),
            }]),
        };
        result.err().unwrap_or_default()
    }
}

fn errors(yaml: &str) -> Vec<String> {
    match rampart_config::from_yaml_with(yaml, &Catalog) {
        Ok(_) => vec![],
        Err(e) => e.field_errors().iter().map(ToString::to_string).collect(),
    }
}

#[test]
fn example_config_is_valid() {
    let text = include_str!("../../../examples/rampart.yaml");
    let cfg = from_yaml(text).unwrap();
    assert_eq!(cfg.listeners[0].address.port(), 8080);
    assert_eq!(cfg.admin.unwrap().address.port(), 9901);
}

#[test]
fn unknown_field_names_its_path() {
    let e = from_yaml("listeners:\n  - name: a\n    adress: 127.0.0.1:1\n    route_table: t\n")
        .unwrap_err();
    let ConfigError::Parse { path, message } = e else {
        panic!("expected a parse error, got {e}")
    };
    assert_eq!(path, "listeners[0].adress");
    assert!(message.contains("adress"), "{message}");
}

#[test]
fn wrong_type_names_its_path() {
    let e = from_yaml("clusters:\n  - name: c\n    endpoints: 5\n").unwrap_err();
    let ConfigError::Parse { path, .. } = e else {
        panic!("expected a parse error, got {e}")
    };
    assert_eq!(path, "clusters[0].endpoints");
}

#[test]
fn all_semantic_errors_at_once_with_paths() {
    let yaml = r#"
drain_timeout: forever
admin: { address: "localhost" }
listeners:
  - { name: a, address: "127.0.0.1:80", route_table: missing }
  - { name: a, address: "127.0.0.1:80", route_table: t, limits: { max_connections: 0 } }
  - name: b
    address: "127.0.0.1:81"
    route_table: t
    filters:
      - cors: { allow_origins: ["*"] }
      - jwt: { jwks_url: "gopher://keys.example.com/jwks.json", algorithms: [RS256, none] }
route_tables:
  - name: t
    virtual_hosts:
      - name: v
        domains: ["a.com", "bad*host"]
        routes:
          - { match: { path: { prefix: / } }, forward: { cluster: c } }
          - { match: { path: { regex: "(" } }, forward: { cluster: c } }
          - { match: { path: { exact: /x } }, forward: { cluster: api } }
          - { match: { path: { exact: /y, prefix: /y } }, direct_response: { status: 200 } }
          - { forward: { cluster: c }, redirect: { status: 301 } }
          - { redirect: { status: 200 } }
          - forward:
              weighted_clusters: [{ cluster: c, weight: 0 }, { cluster: nope, weight: 0 }]
          - { match: { headers: [{ name: "bad header", exact: x }] }, forward: { cluster: c, timeout: 1x } }
          - { forward: { cluster: c }, filters: [{ rate_limit: { rate: 0, per: 1s, key: cookie } }] }
          - { forward: { cluster: c }, filters: [{ cors: { allow_origins: ["*"], allow_credentials: true } }] }
          - { function: "Hello World" }
          - { function: hello, forward: { cluster: c } }
clusters:
  - { name: c, endpoints: ["127.0.0.1:9000", "not an address", "db.internal:5432"], lb_policy: random }
  - { name: c, endpoints: [] }
"#;
    let errs = errors(yaml);
    let expect = [
        "drain_timeout: invalid duration \"forever\"",
        "admin.address: \"localhost\" is not an ip:port address",
        "clusters[1].name: duplicate cluster name \"c\"",
        "listeners[1].name: duplicate listener name \"a\"",
        "route_tables[0].virtual_hosts[0].domains[1]: invalid domain \"bad*host\"",
        "route_tables[0].virtual_hosts[0].routes[1].match.path.regex: invalid regex \"(\"",
        "route_tables[0].virtual_hosts[0].routes[2].forward.cluster: no cluster named \"api\"",
        "route_tables[0].virtual_hosts[0].routes[3].match.path: set exactly one of exact, prefix, regex",
        "route_tables[0].virtual_hosts[0].routes[4]: set exactly one action",
        "route_tables[0].virtual_hosts[0].routes[5].redirect.status: 200 is not a redirect status",
        "route_tables[0].virtual_hosts[0].routes[6].forward.weighted_clusters[1].cluster: no cluster named \"nope\"",
        "route_tables[0].virtual_hosts[0].routes[6].forward.weighted_clusters: weights must add up to more than 0",
        "route_tables[0].virtual_hosts[0].routes[7].match.headers[0].name: invalid header name",
        "route_tables[0].virtual_hosts[0].routes[7].forward.timeout: invalid duration \"1x\"",
        "route_tables[0].virtual_hosts[0].routes[8].filters[0].rate_limit.rate: must be at least 1",
        "route_tables[0].virtual_hosts[0].routes[8].filters[0].rate_limit.key: unknown key \"cookie\"",
        "route_tables[0].virtual_hosts[0].routes[9].filters[0].cors.allow_credentials: cannot be true",
        "route_tables[0].virtual_hosts[0].routes[10].function: \"Hello World\" is not a function name",
        "route_tables[0].virtual_hosts[0].routes[11]: set exactly one action",
        "clusters[0].endpoints[1]: \"not an address\" is not ip:port or host:port",
        "clusters[0].lb_policy: unknown policy \"random\"",
        "clusters[1].endpoints: must list at least one endpoint",
        "listeners[0].route_table: no route table named \"missing\"",
        "listeners[1].address: 127.0.0.1:80 is already used by another listener",
        "listeners[1].limits.max_connections: must be at least 1",
        "listeners[2].filters[1].jwt.jwks_url: \"gopher://keys.example.com/jwks.json\" must be an https:// or http:// URL",
        "listeners[2].filters[1].jwt.algorithms[1]: unsupported algorithm \"none\"",
    ];
    for want in expect {
        assert!(
            errs.iter().any(|e| e.starts_with(want)),
            "missing error {want:?}\ngot:\n{}",
            errs.join("\n")
        );
    }
    assert_eq!(
        errs.len(),
        expect.len(),
        "unexpected extra errors:\n{}",
        errs.join("\n")
    );
}

#[test]
fn dns_and_ipv6_endpoints() {
    let cfg = from_yaml(
        "clusters:\n  - { name: c, endpoints: [\"[::1]:80\", \"Api.Internal:8080\"], protocol: http2 }\n",
    )
    .unwrap();
    assert_eq!(cfg.clusters[0].endpoints[0].to_string(), "[::1]:80");
    assert_eq!(
        cfg.clusters[0].endpoints[1].to_string(),
        "api.internal:8080"
    );
}

fn yaml_like() -> impl Strategy<Value = String> {
    let tokens = prop::sample::select(vec![
        "listeners:",
        "clusters:",
        "route_tables:",
        "- ",
        "name: a",
        "address: 127.0.0.1:1",
        "route_table: t",
        "virtual_hosts:",
        "domains: [\"*\"]",
        "routes:",
        "match:",
        "path:",
        "prefix: /",
        "regex: \"(a\"",
        "forward:",
        "cluster: c",
        "endpoints: [\"x:1\"]",
        "{",
        "}",
        "[",
        "]",
        ":",
        "\n",
        "  ",
        "&a",
        "*a",
        "!!int",
        "'",
        "\"",
        "weight: 1",
        "timeout: 5s",
    ]);
    prop::collection::vec(tokens, 0..40).prop_map(|v| v.concat())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    // The parser and validator never panic, whatever the bytes.
    #[test]
    fn parse_never_panics_on_text(s in "\\PC{0,200}") {
        let _ = from_yaml(&s);
    }

    #[test]
    fn parse_never_panics_on_yaml_shaped_input(s in yaml_like()) {
        if let Err(e) = from_yaml(&s) {
            // Every error names a path.
            for fe in e.field_errors() {
                prop_assert!(!fe.path.is_empty());
            }
        }
    }

    // A valid config survives a YAML round trip unchanged.
    #[test]
    fn raw_round_trip(port in 1u16..65535, weight in 1u32..1000, prefix in "/[a-z]{0,8}") {
        let yaml = format!(r#"
listeners: [{{ name: l, address: "127.0.0.1:{port}", route_table: t }}]
clusters: [{{ name: c, endpoints: ["127.0.0.1:9"] }}]
route_tables:
  - name: t
    virtual_hosts:
      - name: v
        domains: ["*"]
        routes:
          - match: {{ path: {{ prefix: "{prefix}" }} }}
            forward: {{ weighted_clusters: [{{ cluster: c, weight: {weight} }}] }}
"#);
        let raw = parse_yaml(&yaml).unwrap();
        let again = serde_saphyr_round_trip(&raw);
        prop_assert_eq!(raw, again);
    }
}

fn serde_saphyr_round_trip(raw: &rampart_config::RawConfig) -> rampart_config::RawConfig {
    let json = serde_json::to_string(raw).expect("raw config serializes");
    // JSON is YAML: the parser must accept its own dump.
    parse_yaml(&json).expect("parser accepts its own dump")
}

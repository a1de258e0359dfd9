use serde_json::json;

use super::*;
use crate::gateway::{GatewaySpec, HTTPRouteSpec};

fn gateway() -> Gateway {
    let mut g = Gateway::new(
        "edge",
        serde_json::from_value::<GatewaySpec>(json!({
            "gatewayClassName": "rampart",
            "listeners": [
                { "name": "http", "port": 80, "protocol": "HTTP" },
                { "name": "tls", "port": 443, "protocol": "HTTPS" },
            ],
        }))
        .unwrap(),
    );
    g.metadata.namespace = Some("web".into());
    g
}

fn route(name: &str, spec: serde_json::Value) -> HTTPRoute {
    route_in("web", name, spec)
}

fn route_in(ns: &str, name: &str, spec: serde_json::Value) -> HTTPRoute {
    let mut r = HTTPRoute::new(name, serde_json::from_value::<HTTPRouteSpec>(spec).unwrap());
    r.metadata.namespace = Some(ns.into());
    r
}

fn routes() -> Vec<HTTPRoute> {
    vec![
        route(
            "shop",
            json!({
                "parentRefs": [{ "name": "edge" }],
                "hostnames": ["shop.example.com"],
                "rules": [
                    { "matches": [{ "path": { "type": "PathPrefix", "value": "/api" } }],
                      "backendRefs": [{ "name": "api", "port": 8080, "weight": 90 },
                                      { "name": "api-canary", "port": 8080, "weight": 10 }] },
                    { "matches": [{ "path": { "type": "PathPrefix", "value": "/api/orders" }, "method": "POST",
                                    "headers": [{ "name": "X-Tenant", "value": "acme" }] }],
                      "filters": [{ "type": "RequestHeaderModifier",
                                    "requestHeaderModifier": { "set": [{ "name": "X-From", "value": "gw" }] } }],
                      "backendRefs": [{ "name": "orders", "port": 9000 }] },
                    { "matches": [{ "path": { "type": "Exact", "value": "/health" } }] },
                ],
            }),
        ),
        route(
            "fallback",
            json!({
                "parentRefs": [{ "name": "edge", "sectionName": "http" }],
                "rules": [{ "backendRefs": [{ "name": "web", "port": 80 }] }],
            }),
        ),
        route(
            "peeking",
            json!({
                "parentRefs": [{ "name": "edge" }],
                "rules": [{ "matches": [{ "path": { "type": "PathPrefix", "value": "/peek" } }],
                            "backendRefs": [{ "name": "db", "namespace": "billing", "port": 5432 }] }],
            }),
        ),
        route(
            "mirror",
            json!({
                "parentRefs": [{ "name": "edge" }],
                "rules": [{ "filters": [{ "type": "RequestMirror" }], "backendRefs": [{ "name": "x", "port": 1 }] }],
            }),
        ),
        // Another namespace's route naming our Gateway: its listeners admit only their own
        // namespace's routes (allowedRoutes defaults to Same).
        route_in(
            "intruder",
            "takeover",
            json!({ "parentRefs": [{ "name": "edge", "namespace": "web" }],
                    "rules": [{ "backendRefs": [{ "name": "evil", "port": 1 }] }] }),
        ),
        route(
            "elsewhere",
            json!({ "parentRefs": [{ "name": "other-gateway" }],
                    "rules": [{ "backendRefs": [{ "name": "nope", "port": 1 }] }] }),
        ),
    ]
}

/// The route a request takes through the translated config, by Rampart's own router.
fn picks(
    out: &Translated,
    host: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> Option<String> {
    let cfg = rampart_config::from_yaml(&out.config().to_string()).unwrap();
    let table = rampart_router::RouteTable::new(&cfg.route_tables[0]);
    let method = http::Method::from_bytes(method.as_bytes()).unwrap();
    let mut h = http::HeaderMap::new();
    for (k, v) in headers {
        h.insert(
            http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
            v.parse().unwrap(),
        );
    }
    let req = rampart_router::RequestView {
        method: &method,
        authority: host,
        path,
        query: None,
        headers: &h,
    };
    table.route(&req).ok().map(|m| m.entry.name.clone())
}

#[test]
fn http_listeners_routes_and_backends_become_valid_rampart_config() {
    let out = translate(&[gateway()], &routes(), &Backends::default());
    // Only the HTTP listener is served; the config passes Rampart's own validation.
    assert_eq!(out.listeners.len(), 1);
    assert_eq!(out.listeners[0]["address"], "0.0.0.0:80");
    rampart_config::from_yaml(&out.config().to_string()).expect("valid Rampart config");
    let clusters: Vec<&str> = out
        .clusters
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        clusters,
        [
            "k8s-svc_web_api-canary_8080",
            "k8s-svc_web_api_8080",
            "k8s-svc_web_orders_9000",
            "k8s-svc_web_web_80"
        ]
    );
    assert_eq!(
        out.clusters[3]["endpoints"][0],
        "web.web.svc.cluster.local:80"
    );
    // The unsupported filter and the reference into another namespace (no ReferenceGrant
    // read) are reported, not programmed; other gateways' routes and routes from namespaces
    // the listener does not admit are not here.
    assert_eq!(out.problems.len(), 2, "{:?}", out.problems);
    let problem = |id: &str| {
        out.problems
            .iter()
            .find(|(r, _)| r == id)
            .map(|(_, p)| p.clone())
            .unwrap_or_default()
    };
    assert!(problem("web/mirror").contains("RequestMirror"));
    assert!(problem("web/peeking").contains("ReferenceGrant"));
    let text = out.config().to_string();
    assert!(!text.contains("nope") && !text.contains("evil") && !text.contains("billing"));

    // A listener admitting All namespaces takes the other namespace's route.
    let mut open = gateway();
    open.spec.listeners[0].allowed_routes = Some(crate::gateway::AllowedRoutes {
        namespaces: Some(crate::gateway::RouteNamespaces {
            from: Some("All".into()),
        }),
    });
    let out = translate(&[open], &routes(), &Backends::default());
    assert!(out.config().to_string().contains("k8s-svc_intruder_evil_1"));
}

#[test]
fn requests_take_the_route_the_gateway_api_precedence_gives() {
    let out = translate(&[gateway()], &routes(), &Backends::default());
    let shop = "shop.example.com";
    // The longer prefix, with its method and header, before the shorter one.
    assert_eq!(
        picks(&out, shop, "POST", "/api/orders/7", &[("x-tenant", "acme")]).as_deref(),
        Some("web_shop_r1.m0.p1")
    );
    assert_eq!(
        picks(&out, shop, "GET", "/api/orders/7", &[]).as_deref(),
        Some("web_shop_r0.m0.p1")
    );
    // PathPrefix matches whole segments.
    assert_eq!(
        picks(&out, shop, "GET", "/api", &[]).as_deref(),
        Some("web_shop_r0.m0.p0")
    );
    assert_eq!(
        picks(&out, shop, "GET", "/apix", &[]).as_deref(),
        Some("web_fallback_r0.m0.p0")
    );
    // The exact match, with no backend: a 500 route.
    assert_eq!(
        picks(&out, shop, "GET", "/health", &[]).as_deref(),
        Some("web_shop_r2.m0.p0")
    );
    // Another host: only the routes without hostnames.
    assert_eq!(
        picks(&out, "other.example", "GET", "/api", &[]).as_deref(),
        Some("web_fallback_r0.m0.p0")
    );
    let cfg = out.config().to_string();
    assert!(
        cfg.contains("\"weight\":90") && cfg.contains("\"x-from\":\"gw\""),
        "{cfg}"
    );
}

#[test]
fn a_policy_named_by_a_rule_decides_for_it_and_an_unresolved_one_answers_500() {
    let guarded = route(
        "admin",
        json!({
            "parentRefs": [{ "name": "edge" }],
            "rules": [{ "matches": [{ "path": { "type": "PathPrefix", "value": "/admin" } }],
                        "filters": [{ "type": "ExtensionRef",
                                      "extensionRef": { "group": "rampart.dev", "kind": "RampartPolicy", "name": "acme-rbac" } }],
                        "backendRefs": [{ "name": "admin", "port": 80 }] }],
        }),
    );
    let mut all = routes();
    all.push(guarded.clone());
    let ext = Extensions {
        policies: BTreeMap::from([(("web".into(), "acme-rbac".into()), "acme".into())]),
        filters: vec![RouteFilter {
            namespace: "web".into(),
            routes: vec!["admin".into()],
            filter: json!({ "wasm": { "module": "store:sha256:00" } }),
        }],
    };
    let out = translate_with(&[gateway()], &all, &ext, &Backends::default());
    let table = &out.route_tables[0].to_string();
    let cfg = rampart_config::from_yaml(&out.config().to_string()).expect("valid config");
    let admin = cfg.route_tables[0]
        .virtual_hosts
        .iter()
        .flat_map(|v| &v.routes)
        .find(|r| r.name.starts_with("web_admin_"))
        .unwrap_or_else(|| panic!("no admin route in {table}"));
    // The policy first, then the plugin targeting the route.
    let kinds: Vec<&str> = admin.filters.iter().map(|f| f.name.as_str()).collect();
    assert_eq!(kinds, ["authz", "wasm"], "{table}");
    assert_eq!(admin.filters[0].config["tenant"], "acme");
    assert!(out.problems.iter().all(|(r, _)| r != "web/admin"));

    // The policy not in force: the rule still takes /admin (not the catch-all route
    // without the policy) and answers 500; the problem names the policy.
    let out = translate(&[gateway()], &all, &Backends::default());
    let problem = out
        .problems
        .iter()
        .find(|(r, _)| r == "web/admin")
        .map(|(_, p)| p.clone())
        .unwrap_or_default();
    assert!(problem.contains("RampartPolicy \"acme-rbac\""), "{problem}");
    let took = picks(&out, "any.example.com", "GET", "/admin/users", &[]).unwrap();
    assert!(took.starts_with("web_admin_"), "{took}");
    let admin = &out.route_tables[0]["virtual_hosts"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|v| v["routes"].as_array().unwrap())
        .find(|r| r["name"].as_str().unwrap().starts_with("web_admin_"))
        .unwrap()
        .clone();
    assert_eq!(admin["direct_response"]["status"], 500);
    assert!(admin.get("forward").is_none());

    // Other kinds are refused the same way.
    let mut other = guarded;
    other.spec.rules[0].filters[0]
        .extension_ref
        .as_mut()
        .unwrap()
        .kind = "Secret".into();
    let out = translate_with(&[gateway()], &[other], &ext, &Backends::default());
    assert!(
        out.problems[0].1.contains("not supported"),
        "{:?}",
        out.problems
    );
}

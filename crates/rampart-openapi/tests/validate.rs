//! Requests against tests/specs/shop.yaml (with common.yaml): what conforms passes, each
//! kind of non-conformance is reported at its pointer.

use std::path::Path;

use http::HeaderMap;
use rampart_openapi::spec::Spec;
use rampart_openapi::validate::{Head, Validators, Violation};
use serde_json::json;

fn shop() -> (Spec, Validators) {
    let spec =
        Spec::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/specs/shop.yaml")).unwrap();
    let v = Validators::compile(&spec).unwrap_or_else(|p| panic!("{p:?}"));
    (spec, v)
}

fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for (k, v) in pairs {
        h.append(
            http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
            v.parse().unwrap(),
        );
    }
    h
}

fn head_problems(
    v: &Validators,
    op: &str,
    path: &str,
    query: Option<&str>,
    h: &[(&str, &str)],
) -> Vec<Violation> {
    let c = v.get(op).unwrap();
    c.check_head(
        &Head {
            path,
            query,
            headers: &headers(h),
        },
        &c.op.path,
    )
}

fn pointers(v: &[Violation]) -> Vec<&str> {
    v.iter().map(|v| v.pointer.as_str()).collect()
}

#[test]
fn the_spec_lints_clean_and_lists_its_operations() {
    let (spec, v) = shop();
    assert_eq!(rampart_openapi::lint::lint(&spec), vec![]);
    let mut ids: Vec<&str> = v.operations().map(|o| o.id.as_str()).collect();
    ids.sort();
    assert_eq!(
        ids,
        ["createOrder", "getOrder", "listOrders", "replaceOrder"]
    );
    let create = &v.get("createOrder").unwrap().op;
    assert_eq!(create.tags, ["orders", "admin"]);
    assert_eq!(
        create.security,
        json!([{ "apiKey": [] }, { "bearer": ["admin"] }])
    );
    assert_eq!(
        v.get("getOrder").unwrap().op.security,
        json!([{ "apiKey": [] }])
    );
    assert_eq!(
        v.get("getOrder").unwrap().op.path.as_str(),
        "/orders/{orderId}"
    );
}

#[test]
fn parameters_in_their_styles() {
    let (_, v) = shop();
    let ok = head_problems(
        &v,
        "listOrders",
        "/orders",
        Some("limit=10&status=open,paid&tag=a&tag=b"),
        &[("x-trace", "deadbeef")],
    );
    assert_eq!(ok, vec![]);
    let bad = head_problems(
        &v,
        "listOrders",
        "/orders",
        Some("limit=0&status=open,lost&limit=5"),
        &[("x-trace", "nope")],
    );
    assert_eq!(
        pointers(&bad),
        ["/query/limit", "/query/status/1", "/header/x-trace"],
        "{bad:?}"
    );
    // `status=` is a list of one empty string (RFC 6570: an empty list is left out).
    assert_eq!(
        pointers(&head_problems(
            &v,
            "listOrders",
            "/orders",
            Some("status="),
            &[]
        )),
        ["/query/status/0"]
    );
    // An integer past 64 bits is still an integer (here too large for the maximum).
    let big = head_problems(
        &v,
        "listOrders",
        "/orders",
        Some("limit=277235772300084531220463556231168"),
        &[],
    );
    assert_eq!(pointers(&big), ["/query/limit"]);
    assert!(!big[0].detail.contains("type"), "{big:?}");
    let bad = head_problems(&v, "listOrders", "/orders", Some("limit=ten"), &[]);
    assert_eq!(pointers(&bad), ["/query/limit"]);
    assert!(bad[0].detail.contains("integer"), "{bad:?}");
    // Path (declared on the path item) and cookie parameters.
    assert_eq!(
        head_problems(
            &v,
            "getOrder",
            "/orders/42",
            None,
            &[("cookie", "a=1; session=abcd")]
        ),
        vec![]
    );
    let bad = head_problems(
        &v,
        "getOrder",
        "/orders/0",
        None,
        &[("cookie", "session=ab")],
    );
    assert_eq!(pointers(&bad), ["/path/orderId", "/cookie/session"]);
    // `format: int64` bounds the integer (JSON Schema alone would take any size).
    let bad = head_problems(
        &v,
        "getOrder",
        "/orders/9223372036854775808",
        None,
        &[("cookie", "session=abcd")],
    );
    assert_eq!(pointers(&bad), ["/path/orderId"], "{bad:?}");
    let bad = head_problems(&v, "getOrder", "/orders/x1", None, &[]);
    assert_eq!(pointers(&bad), ["/path/orderId", "/cookie/session"]);
    assert_eq!(bad[1].detail, "required");
}

#[test]
fn security_requirements_ask_for_credentials_of_one_alternative() {
    let (_, v) = shop();
    let create = v.get("createOrder").unwrap();
    let missing = |h: &[(&str, &str)]| {
        create.check_security(&Head {
            path: "/orders",
            query: None,
            headers: &headers(h),
        })
    };
    let none = missing(&[]).expect("no credentials");
    assert_eq!(none.pointer, "/security");
    assert!(
        none.detail.contains("x-api-key") && none.detail.contains("Bearer"),
        "{none:?}"
    );
    assert_eq!(missing(&[("x-api-key", "k1")]), None);
    assert_eq!(missing(&[("authorization", "Bearer t")]), None);
    assert!(missing(&[("authorization", "Basic dTpw")]).is_some());
    assert!(missing(&[("x-api-key", "")]).is_some(), "an empty key");
}

#[test]
fn bodies_under_json_schema_2020_12() {
    let (_, v) = shop();
    let create = v.get("createOrder").unwrap();
    assert!(create.checks_body());
    let good = json!({ "customer": "a@b.example", "placed": "2026-12-07T10:00:00Z", "note": null,
                       "lines": [{ "sku": "ABC-123", "qty": 2 }], "point": [1.5, 2], "source": "web" });
    assert_eq!(
        create.check_body(Some("application/json"), good.to_string().as_bytes()),
        vec![]
    );
    let bad = json!({ "customer": "not-an-email", "placed": "yesterday", "note": "x".repeat(21),
                      "lines": [{ "sku": "abc", "qty": 0, "extra": 1 }], "point": [1, 2, 3],
                      "source": "app", "unknown": true });
    let found = create.check_body(
        Some("application/json; charset=utf-8"),
        bad.to_string().as_bytes(),
    );
    let mut p = pointers(&found);
    p.sort();
    for want in [
        "/body/customer",
        "/body/placed",
        "/body/note",
        "/body/lines/0/sku",
        "/body/lines/0/qty",
        "/body/lines/0",
        "/body",
    ] {
        assert!(p.contains(&want), "{want} in {found:#?}");
    }
    // prefixItems with `items: false`: a third coordinate is refused.
    assert!(p.iter().any(|p| p.starts_with("/body/point")), "{found:#?}");
    // unevaluatedProperties sees through allOf: `source` is evaluated there, `unknown` is not.
    assert!(
        found
            .iter()
            .any(|v| v.pointer == "/body" && v.detail.contains("unknown")),
        "{found:#?}"
    );
    assert!(
        !found
            .iter()
            .any(|v| v.pointer == "/body" && v.detail.contains("'source'")),
        "{found:#?}"
    );
    // ...unless the allOf branch fails: its annotations are dropped, as 2020-12 says.
    let mut enum_fails = good.clone();
    enum_fails["source"] = json!("fax");
    let found = create.check_body(Some("application/json"), enum_fails.to_string().as_bytes());
    assert_eq!(pointers(&found), ["/body/source", "/body"], "{found:#?}");
    let missing = create.check_body(Some("application/json"), b"");
    assert_eq!(pointers(&missing), ["/body"]);
    let broken = create.check_body(Some("application/json"), b"{");
    assert!(broken[0].detail.starts_with("not JSON"));
}

#[test]
fn dynamic_references_and_other_files_resolve() {
    let (_, v) = shop();
    let replace = v.get("replaceOrder").unwrap();
    assert_eq!(
        replace.check_body(Some("application/json"), br##"["#a", "#b"]"##),
        vec![]
    );
    let bad = replace.check_body(Some("application/json"), br##"["#a", "b"]"##);
    assert_eq!(pointers(&bad), ["/body/1"], "{bad:?}");
    // Another listed media type, not JSON: passed as it is.
    assert_eq!(replace.check_body(Some("text/plain"), b"anything"), vec![]);
    let head = head_problems(
        &v,
        "replaceOrder",
        "/orders/3",
        None,
        &[("content-type", "application/xml")],
    );
    assert_eq!(pointers(&head), ["/content-type"]);
}

#[test]
fn lint_names_each_problem_at_its_pointer() {
    let spec = Spec::from_text(
        "openapi: 3.1.0\ninfo: { title: t }\npaths:\n  /a/{id}:\n    get:\n      operationId: a\n      responses: {}\n  /b:\n    get:\n      operationId: a\n      parameters: [{ $ref: '#/components/parameters/Nope' }]\n      responses: {}\n  c: {}\n",
    )
    .unwrap();
    let problems: Vec<String> = rampart_openapi::lint::lint(&spec)
        .iter()
        .map(ToString::to_string)
        .collect();
    for want in [
        "#/info/version: missing",
        "#/paths/c: \"c\" must start with '/'",
        "$ref \"#/components/parameters/Nope\" points at nothing",
    ] {
        assert!(
            problems.iter().any(|p| p.contains(want)),
            "{want} in {problems:#?}"
        );
    }
    let spec = Spec::from_text(
        "openapi: 3.1.0\ninfo: { title: t, version: '1' }\npaths:\n  /a/{id}:\n    get:\n      operationId: a\n      responses: {}\n  /b:\n    get:\n      operationId: a\n      responses: {}\n",
    )
    .unwrap();
    let problems: Vec<String> = rampart_openapi::lint::lint(&spec)
        .iter()
        .map(ToString::to_string)
        .collect();
    assert!(
        problems.iter().any(|p| p.contains("{id} is not declared")),
        "{problems:#?}"
    );
    assert!(
        problems
            .iter()
            .any(|p| p.contains("operationId \"a\" is used twice")),
        "{problems:#?}"
    );
}

#[test]
fn responses_by_code_class_and_default() {
    let spec = Spec::from_text(
        "openapi: 3.1.0\ninfo: { title: t, version: '1' }\npaths:\n  /x:\n    get:\n      operationId: x\n      responses:\n        '200': { description: ok, content: { application/json: { schema: { type: object, required: [id] } } } }\n        '4XX': { description: client, content: { application/problem+json: { schema: { type: object } } } }\n",
    )
    .unwrap();
    let v = Validators::compile(&spec).unwrap();
    let x = v.get("x").unwrap();
    assert_eq!(x.check_response_head(200, Some("application/json")), vec![]);
    assert_eq!(
        pointers(&x.check_response_head(200, Some("text/html"))),
        ["/content-type"]
    );
    assert_eq!(
        x.check_response_head(404, Some("application/problem+json")),
        vec![]
    );
    assert_eq!(pointers(&x.check_response_head(500, None)), ["/status"]);
    assert!(x.checks_response_body(200) && !x.checks_response_body(500));
    assert_eq!(
        x.check_response_body(200, Some("application/json"), br#"{"id":1}"#),
        vec![]
    );
    assert_eq!(
        pointers(&x.check_response_body(200, Some("application/json"), b"{}")),
        ["/body"]
    );
}

mod never_panics {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

        /// Whatever a client sends (query, cookie, header values, path, body), the checks
        /// answer with violations, never a panic.
        #[test]
        fn requests(query in "\\PC{0,60}", cookie in "[ -~]{0,40}", trace in "[ -~]{0,20}", id in "[^/?#]{0,12}", body in proptest::collection::vec(any::<u8>(), 0..300)) {
            let (_, v) = shop();
            let _ = head_problems(&v, "listOrders", "/orders", Some(&query), &[("x-trace", &trace), ("cookie", &cookie)]);
            let path = format!("/orders/{id}");
            let _ = head_problems(&v, "getOrder", &path, Some(&query), &[("cookie", &cookie)]);
            let c = v.get("createOrder").unwrap();
            let _ = c.check_body(Some("application/json"), &body);
            let _ = c.check_body(Some(&trace), &body);
        }

        /// Any text as a spec: an error or a spec, never a panic.
        #[test]
        fn specs(text in "\\PC{0,200}") {
            if let Ok(spec) = Spec::from_text(&format!("openapi: 3.1.0\n{text}")) {
                let _ = rampart_openapi::lint::lint(&spec);
            }
            let _ = Spec::from_text(&text);
        }
    }
}

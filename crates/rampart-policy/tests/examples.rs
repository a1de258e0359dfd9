//! The example bundles (`examples/policy/tenants`) pass their own tests, and regorus'
//! register VM (the hot path) decides exactly as its interpreter does on random requests.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use proptest::prelude::*;
use rampart_policy::{Bundle, Compiled, Value};

fn example(name: &str) -> Bundle {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../examples/policy/tenants")
        .join(name);
    Bundle::load_dir(&dir).unwrap()
}

#[test]
fn example_bundles_pass_their_tests_and_run_on_the_vm_where_it_agrees() {
    for name in ["acme", "globex"] {
        let b = example(name);
        let c = Compiled::compile_tested(&b, Duration::from_secs(5), true).unwrap();
        assert_eq!(c.run_tests(&b).failed(), 0);
        assert!(c.run_tests(&b).passed() >= 5);
        match name {
            // `user := input.jwt.sub if { input.jwt.sub } else := ...`: defined whenever
            // its body holds, so the VM's `else` handling cannot differ.
            "acme" => assert!(c.on_vm(), "{:?}", c.interpreted_because()),
            // `subject := data.users[input.jwt.sub] if { input.jwt.sub } else := ...`: an
            // unknown subject is where the VM differs (the property test below found it).
            _ => {
                assert!(!c.on_vm());
                let why = c.interpreted_because().unwrap();
                assert!(
                    why.contains("data.users[input.jwt.sub]") && why.contains("else"),
                    "{why}"
                );
            }
        }
    }
    // Asked for the interpreter, no reason is given.
    let c = Compiled::compile_for(&example("acme"), Duration::from_secs(5), false).unwrap();
    assert!(!c.on_vm() && c.interpreted_because().is_none());
}

/// The checked VM never decides differently from the interpreter on the ABAC example,
/// whose unchecked VM does (`known_vm_divergence_on_else_with_undefined_value`).
#[test]
fn checked_vm_matches_the_interpreter_on_abac_where_the_unchecked_one_differs() {
    let b = example("globex");
    let input = Value::from(serde_json::json!({
        "method": "GET", "path": "/code/x", "headers": {"x-user": "eve"}, "jwt": {"sub": "nobody"}
    }));
    let unchecked =
        Arc::new(Compiled::compile_unchecked(&b, Duration::from_secs(5), true).unwrap());
    assert!(unchecked.on_vm());
    assert_ne!(
        unchecked.eval(input.clone()),
        unchecked.eval_interpreted(input.clone()),
        "regorus' VM now follows the else: reconsider equivalence.rs"
    );
    let checked = Arc::new(Compiled::compile_for(&b, Duration::from_secs(5), true).unwrap());
    assert_eq!(checked.eval(input.clone()), checked.eval_interpreted(input));
}

fn request() -> impl Strategy<Value = serde_json::Value> {
    let method = prop::sample::select(vec!["GET", "HEAD", "POST", "DELETE", "PUT"]);
    let segment =
        prop::sample::select(vec!["api", "orders", "code", "secrets", "payroll", "x", ""]);
    let user = prop::sample::select(vec!["vera", "ada", "eve", "sam", "hal", "mallory", ""]);
    (
        method,
        prop::collection::vec(segment, 0..4),
        user,
        prop::option::of(prop::sample::select(vec!["vera", "sam", "ada"])),
    )
        .prop_map(|(m, segs, user, sub)| {
            let mut v = serde_json::json!({
                "method": m,
                "path": format!("/{}", segs.join("/")),
                "headers": {"x-user": user},
            });
            if let Some(sub) = sub {
                v["jwt"] = serde_json::json!({"sub": sub});
            }
            v
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]
    /// The RBAC example decides the same on both; this is what `policy.vm: true` relies on.
    #[test]
    fn vm_and_interpreter_agree_on_rbac(req in request()) {
        let c = Arc::new(Compiled::compile_for(&example("acme"), Duration::from_secs(5), true).unwrap());
        let input = Value::from(req.clone());
        let vm = c.eval(input.clone());
        let interp = c.eval_interpreted(input);
        prop_assert_eq!(vm, interp, "acme on {}", req);
    }
}

/// regorus 0.14.1's VM and interpreter disagree on an `else` whose first value is undefined
/// (`x := data.m[k] if { k } else := ...`): the interpreter, like OPA, falls through to the
/// `else`; the VM leaves `x` undefined. Found by the property test above on the ABAC example;
/// it is why `src/equivalence.rs` keeps such bundles on the interpreter. When this test
/// fails, regorus fixed it: drop this test and that check.
#[test]
fn known_vm_divergence_on_else_with_undefined_value() {
    let b = Bundle::new(
        vec![(
            "p.rego".into(),
            "package p\nx := data.m[input.k] if { input.k } else := \"fallback\"\n".into(),
        )],
        serde_json::json!({"m": {}}),
        Some("data.p.x"),
        None,
    )
    .unwrap();
    let c = Arc::new(Compiled::compile_unchecked(&b, Duration::from_secs(5), true).unwrap());
    assert!(
        !Compiled::compile_for(&b, Duration::from_secs(5), true)
            .unwrap()
            .on_vm(),
        "the equivalence check keeps this bundle on the interpreter"
    );
    let input = Value::from(serde_json::json!({"k": "missing"}));
    assert_eq!(
        c.eval_interpreted(input.clone()).unwrap(),
        Value::from("fallback")
    );
    assert_eq!(
        c.eval(input).unwrap(),
        Value::Undefined,
        "regorus' VM now follows the else"
    );
}

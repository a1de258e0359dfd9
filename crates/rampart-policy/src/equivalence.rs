//! Whether a bundle may decide on regorus' register VM: only when nothing known makes the VM
//! decide differently from the interpreter (which follows OPA).
//!
//! Two checks, run when a bundle is compiled:
//! 1. **Static: `else` after a value that may be undefined.** regorus 0.14.1's VM leaves a
//!    rule undefined when a clause's body holds but its value is undefined, where the
//!    interpreter (and OPA) falls through to the `else` (`tests/examples.rs` pins this
//!    down). A clause followed by `else` is accepted when its value is a constant, or an
//!    expression its own body asserts (`x := input.a if { input.a } else := ...`), so it is
//!    defined whenever the body holds; any other such clause sends the bundle to the
//!    interpreter.
//! 2. **Differential: the bundle's own tests.** regorus' VM cannot compile `with`, so the
//!    tests themselves cannot run on it; instead every `with input as <expr>` in the bundle
//!    is evaluated (on the interpreter) to the input it names, and the entry point is
//!    decided with that input on both engines: one difference, and the bundle stays
//!    interpreted. (An input that cannot be evaluated on its own, a test's local variable
//!    say, is skipped.)
//!
//! This uses regorus' AST, which it exposes as `unstable`; the version is pinned.

use regorus::unstable::{Expr, Literal, Rule, RuleAssign, RuleHead};
use regorus::{Engine, Value};

/// Why a bundle stays on the interpreter, or how many test inputs agreed.
pub(crate) enum Verdict {
    /// The VM may decide: `inputs` test inputs decided the same on both engines.
    Equivalent { inputs: usize },
    /// The reason the interpreter decides.
    Differs(String),
}

/// The static check (1): the first clause whose value may be undefined before an `else`.
pub(crate) fn else_after_undefined(engine: &mut Engine) -> Option<String> {
    for module in engine.get_modules() {
        for rule in &module.policy {
            let Rule::Spec { head, bodies, .. } = rule.as_ref() else {
                continue;
            };
            let head_value = match head {
                RuleHead::Compr { assign, .. } | RuleHead::Func { assign, .. } => assign.as_ref(),
                RuleHead::Set { .. } => None,
            };
            for (i, body) in bodies.iter().enumerate() {
                let followed_by_else = bodies.get(i + 1).is_some_and(|b| b.is_else);
                if !followed_by_else {
                    continue;
                }
                // A clause's own `:= value` (else clauses), or the head's for the first.
                let Some(RuleAssign { value, .. }) = body.assign.as_ref().or(head_value) else {
                    continue; // `true` by default: always defined
                };
                if is_constant(value) {
                    continue;
                }
                let text = value.span().text();
                let asserted = body.query.stmts.iter().any(|s| {
                    s.with_mods.is_empty()
                        && matches!(&s.literal, Literal::Expr { expr, .. } if expr.span().text() == text)
                });
                if !asserted {
                    let span = value.span();
                    return Some(format!(
                        "{}:{}: the value `{text}` may be undefined where its body holds, \
                         and regorus' VM then leaves the rule undefined instead of taking \
                         the `else`",
                        span.source.get_path(),
                        span.line
                    ));
                }
            }
        }
    }
    None
}

fn is_constant(e: &Expr) -> bool {
    matches!(
        e,
        Expr::String { .. }
            | Expr::RawString { .. }
            | Expr::Number { .. }
            | Expr::Bool { .. }
            | Expr::Null { .. }
    )
}

/// The inputs named by `with input as <expr>` anywhere in the bundle, evaluated on the
/// interpreter (each at most once; those that cannot be evaluated alone are skipped).
pub(crate) fn test_inputs(engine: &mut Engine) -> Vec<Value> {
    let mut texts: Vec<String> = Vec::new();
    for module in engine.get_modules() {
        for rule in &module.policy {
            let Rule::Spec { bodies, .. } = rule.as_ref() else {
                continue;
            };
            for body in bodies {
                for stmt in &body.query.stmts {
                    for w in &stmt.with_mods {
                        if w.refr.span().text() != "input" {
                            continue;
                        }
                        // The modifier's own span: regorus' span of a multi-key object
                        // literal starts at its last key.
                        let Some(t) = as_text(w.span.text()) else {
                            continue;
                        };
                        if !texts.iter().any(|x| x == t) {
                            texts.push(t.to_owned());
                        }
                    }
                }
            }
        }
    }
    texts
        .into_iter()
        .filter_map(|t| {
            let results = engine.eval_query(t, false).ok()?;
            let first = results.result.into_iter().next()?;
            first.expressions.into_iter().next().map(|e| e.value)
        })
        .filter(|v| *v != Value::Undefined)
        .collect()
}

/// `<expr>` of `with input as <expr>`.
fn as_text(modifier: &str) -> Option<&str> {
    let rest = modifier.trim_start().strip_prefix("with")?.trim_start();
    let rest = rest.strip_prefix("input")?.trim_start();
    Some(rest.strip_prefix("as")?.trim())
}

/// Both checks. `decide(input, on_vm)` decides the entry point on the VM or the interpreter.
pub(crate) fn check(
    engine: &mut Engine,
    mut decide: impl FnMut(Value, bool) -> Result<Value, String>,
) -> Verdict {
    if let Some(why) = else_after_undefined(engine) {
        return Verdict::Differs(why);
    }
    let inputs = test_inputs(engine);
    for input in &inputs {
        let vm = decide(input.clone(), true);
        let interpreted = decide(input.clone(), false);
        if vm != interpreted {
            return Verdict::Differs(format!(
                "with the input {input} of the bundle's tests, the VM decides {} and the \
                 interpreter {}",
                show(&vm),
                show(&interpreted)
            ));
        }
    }
    Verdict::Equivalent {
        inputs: inputs.len(),
    }
}

fn show(r: &Result<Value, String>) -> String {
    match r {
        Ok(v) => v.to_string(),
        Err(e) => format!("an error ({e})"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn engine(module: &str) -> Engine {
        let mut e = Engine::new();
        e.add_policy("p.rego".into(), module.into()).unwrap();
        e
    }

    const MODULE: &str = r#"package p
allow if input.user == "vera"
test_vera if allow with input as {"user": "vera"}
test_other if not allow with input as {"user": "hal", "n": 1}
test_again if allow with input as {"user": "vera"}
"#;

    #[test]
    fn test_inputs_are_found_once_each() {
        let inputs = test_inputs(&mut engine(MODULE));
        assert_eq!(inputs.len(), 2, "{inputs:?}");
        assert!(inputs.contains(&Value::from(serde_json::json!({"user": "hal", "n": 1}))));
    }

    #[test]
    fn a_differing_decision_on_a_test_input_is_reported() {
        let verdict = check(&mut engine(MODULE), |input, on_vm| {
            let hal = input == Value::from(serde_json::json!({"user": "hal", "n": 1}));
            Ok(Value::from(on_vm && hal))
        });
        match verdict {
            Verdict::Differs(why) => assert!(why.contains("hal"), "{why}"),
            Verdict::Equivalent { .. } => panic!("the difference was missed"),
        }
        let same = check(&mut engine(MODULE), |_, _| Ok(Value::from(true)));
        assert!(matches!(same, Verdict::Equivalent { inputs: 2 }));
    }

    #[test]
    fn else_after_a_value_its_body_does_not_assert_is_found() {
        let unsafe_else = "package p\nx := data.m[input.k] if { input.k } else := 1\n";
        let why = else_after_undefined(&mut engine(unsafe_else)).unwrap();
        assert!(
            why.contains("data.m[input.k]") && why.contains("p.rego:2"),
            "{why}"
        );
        for fine in [
            "package p\nx := input.k if { input.k } else := 1\n",
            "package p\nx := \"a\" if { input.k } else := 1\n",
            "package p\nx := data.m[input.k] if { input.k }\n",
            "package p\nf(a) := 1 if { a > 1 } else := 2\n",
        ] {
            assert_eq!(else_after_undefined(&mut engine(fine)), None, "{fine}");
        }
    }
}

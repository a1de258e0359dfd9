//! A bundle compiled once into a regorus engine template, shared by every worker thread.
//!
//! Evaluating needs `&mut Engine`, so the hot path never shares one engine: each thread
//! keeps its own clone of the template (cloning shares the parsed modules and data by `Arc`)
//! and re-clones when the template changes. No lock is taken to decide. `benches/decide.rs`
//! measures this against the alternatives (a `Mutex<Engine>`, and regorus' `CompiledPolicy`,
//! which builds a fresh engine per call).

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use regorus::languages::rego::compiler::Compiler;
use regorus::rvm::program::Program;
use regorus::rvm::vm::RegoVM;
use regorus::utils::limits::ExecutionTimerConfig;
use regorus::{Engine, Value};

use crate::bundle::{Bundle, BundleError};

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// A compiled bundle. Immutable; replaced as a whole on reload.
pub struct Compiled {
    /// Unique per compilation: thread-local engines are keyed by it.
    pub id: u64,
    pub revision: String,
    pub entrypoint: String,
    template: Engine,
    /// The entry point compiled for regorus' register VM, with the data document.
    program: Option<(Arc<Program>, Value)>,
    /// Why decisions run on the interpreter when the VM was asked for.
    interpreted_because: Option<String>,
    limit: Duration,
    /// Estimated bytes held (sources and data, doubled for the parsed forms).
    pub bytes: usize,
}

impl std::fmt::Debug for Compiled {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Compiled")
            .field("id", &self.id)
            .field("revision", &self.revision)
            .field("entrypoint", &self.entrypoint)
            .finish_non_exhaustive()
    }
}

/// The outcome of a bundle's `test_*` rules.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TestReport {
    /// `(data.pkg.test_name, passed, error message if any)`, in discovery order.
    pub results: Vec<(String, bool, Option<String>)>,
}

impl TestReport {
    pub fn passed(&self) -> usize {
        self.results.iter().filter(|r| r.1).count()
    }

    pub fn failed(&self) -> usize {
        self.results.len() - self.passed()
    }
}

impl Compiled {
    /// Parses every module, loads the data and checks that the entry point is a rule.
    /// `limit` bounds each evaluation's wall-clock time. Decisions run on the interpreter.
    pub fn compile(bundle: &Bundle, limit: Duration) -> Result<Self, BundleError> {
        Self::compile_for(bundle, limit, false)
    }

    /// As [`Compiled::compile`]; with `vm`, decisions run on regorus' register VM (about
    /// twice as fast) when the VM compiles the policy and decides as the interpreter does
    /// (the checks of [`crate::equivalence`]: no `else` after a value that may be undefined,
    /// and the same decisions on every input the bundle's tests name); otherwise on the
    /// interpreter, with the reason in [`Compiled::interpreted_because`].
    pub fn compile_for(bundle: &Bundle, limit: Duration, vm: bool) -> Result<Self, BundleError> {
        let mut c = Self::compile_unchecked(bundle, limit, vm)?;
        if c.program.is_some() {
            let mut engine = c.template.clone();
            let verdict = crate::equivalence::check(&mut engine, |input, on_vm| {
                if on_vm {
                    c.eval_on_fresh_vm(input)
                } else {
                    c.eval_fresh(input)
                }
            });
            match verdict {
                crate::equivalence::Verdict::Equivalent { inputs } => {
                    tracing::debug!(
                        entrypoint = bundle.entrypoint,
                        inputs,
                        "policy runs on the VM"
                    );
                }
                crate::equivalence::Verdict::Differs(why) => {
                    tracing::info!(entrypoint = bundle.entrypoint, reason = %why, "policy runs on the interpreter");
                    c.program = None;
                    c.interpreted_because = Some(why);
                }
            }
        }
        Ok(c)
    }

    /// As [`Compiled::compile_for`] without the equivalence checks: with `vm`, the VM decides
    /// whenever it compiles the policy. For tests that pin down where the two differ.
    pub fn compile_unchecked(
        bundle: &Bundle,
        limit: Duration,
        vm: bool,
    ) -> Result<Self, BundleError> {
        let mut engine = load_engine(bundle, limit)?;
        // Compiling for the entry point resolves every rule it reaches: an undefined entry
        // point or a type error surfaces here, not on the first request.
        let policy = engine
            .compile_with_entrypoint(&bundle.entrypoint.as_str().into())
            .map_err(|e| BundleError::Entrypoint {
                entrypoint: bundle.entrypoint.clone(),
                message: e.to_string(),
            })?;
        let mut c = Self::from_engine(bundle, engine);
        c.limit = limit;
        if !vm {
            return Ok(c);
        }
        // A policy the VM cannot compile (a feature it lacks) stays interpreted.
        match Compiler::compile_from_policy(&policy, &[bundle.entrypoint.as_str()]) {
            Ok(program) => c.program = Some((program, Value::from(bundle.data.clone()))),
            Err(e) => {
                tracing::info!(entrypoint = bundle.entrypoint, error = %e, "policy runs on the interpreter");
                c.interpreted_because = Some(format!("regorus' VM cannot compile it: {e}"));
            }
        }
        Ok(c)
    }

    /// Parses and loads without requiring the entry point (for `policy eval` and `test`).
    pub fn load(bundle: &Bundle, limit: Duration) -> Result<Self, BundleError> {
        Ok(Self::from_engine(bundle, load_engine(bundle, limit)?))
    }

    fn from_engine(bundle: &Bundle, engine: Engine) -> Self {
        Self {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            revision: bundle.revision.clone(),
            entrypoint: bundle.entrypoint.clone(),
            template: engine,
            program: None,
            interpreted_because: None,
            limit: Duration::from_secs(1),
            bytes: bundle.source_bytes() * 2,
        }
    }

    /// Whether decisions run on regorus' register VM (else on its interpreter).
    pub fn on_vm(&self) -> bool {
        self.program.is_some()
    }

    /// Why decisions run on the interpreter although the VM was asked for (`None` when
    /// they run on the VM, or the interpreter was asked for).
    pub fn interpreted_because(&self) -> Option<&str> {
        self.interpreted_because.as_deref()
    }

    /// Compiles, then runs the bundle's tests; any failure rejects the bundle.
    pub fn compile_tested(bundle: &Bundle, limit: Duration, vm: bool) -> Result<Self, BundleError> {
        let compiled = Self::compile_for(bundle, limit, vm)?;
        let report = compiled.run_tests(bundle);
        if report.failed() > 0 {
            let names: BTreeMap<String, bool> = report
                .results
                .iter()
                .map(|(n, ok, _)| (n.clone(), *ok))
                .collect();
            return Err(BundleError::TestsFailed {
                failed: report.failed(),
                total: report.results.len(),
                names: crate::bundle::summary(&names),
            });
        }
        Ok(compiled)
    }

    /// Runs every `test_*` rule of `bundle` (as `opa test` does): a test passes when it is
    /// defined and true.
    pub fn run_tests(&self, bundle: &Bundle) -> TestReport {
        let mut report = TestReport::default();
        for (pkg, rule) in bundle.test_rules() {
            let path = format!("{pkg}.{rule}");
            let mut engine = self.template.clone();
            let (ok, err) = match engine.eval_rule(path.clone()) {
                Ok(Value::Bool(true)) => (true, None),
                Ok(Value::Undefined) => (false, Some("undefined".to_string())),
                Ok(other) => (false, Some(format!("evaluated to {other}"))),
                Err(e) => (false, Some(e.to_string())),
            };
            report.results.push((path, ok, err));
        }
        report
    }

    /// A fresh engine with this bundle loaded (for `eval` and tests).
    pub fn engine(&self) -> Engine {
        self.template.clone()
    }

    /// Evaluates the entry point with `input` on this thread's VM (or engine) for this bundle.
    pub fn eval(self: &Arc<Self>, input: Value) -> Result<Value, String> {
        if let Some((program, data)) = &self.program {
            return VMS.with(|cell| {
                let mut vms = cell.borrow_mut();
                let slot = match vms.get_mut(&self.id) {
                    Some(slot) => slot,
                    None => {
                        if vms.len() >= THREAD_CACHE_SWEEP {
                            vms.retain(|_, (owner, _)| owner.strong_count() > 0);
                        }
                        let vm = new_vm(program, data, self.limit)?;
                        vms.entry(self.id).or_insert((Arc::downgrade(self), vm))
                    }
                };
                slot.1.set_input(input);
                slot.1.execute().map_err(|e| e.to_string())
            });
        }
        self.eval_interpreted(input)
    }

    /// Evaluates on this thread's interpreter engine (the VM's fallback).
    pub fn eval_interpreted(self: &Arc<Self>, input: Value) -> Result<Value, String> {
        ENGINES.with(|cell| {
            let mut engines = cell.borrow_mut();
            let slot = match engines.get_mut(&self.id) {
                Some(slot) => slot,
                None => {
                    if engines.len() >= THREAD_CACHE_SWEEP {
                        engines.retain(|_, (owner, _)| owner.strong_count() > 0);
                    }
                    engines
                        .entry(self.id)
                        .or_insert_with(|| (Arc::downgrade(self), self.template.clone()))
                }
            };
            let engine = &mut slot.1;
            engine.set_input(input);
            engine
                .eval_rule(self.entrypoint.clone())
                .map_err(|e| e.to_string())
        })
    }

    /// The entry point on a VM made for this call only (the equivalence checks).
    fn eval_on_fresh_vm(&self, input: Value) -> Result<Value, String> {
        let Some((program, data)) = &self.program else {
            return self.eval_fresh(input);
        };
        let mut vm = new_vm(program, data, self.limit)?;
        vm.set_input(input);
        vm.execute().map_err(|e| e.to_string())
    }

    /// The same evaluation on an engine cloned for this call only (what regorus'
    /// `CompiledPolicy` does); kept for the benchmark's comparison.
    /// Evaluates on a fresh interpreter with coverage on: the value and which lines of
    /// each module were evaluated.
    pub fn eval_traced(&self, input: Value) -> Result<(Value, regorus::coverage::Report), String> {
        let mut engine = self.template.clone();
        engine.set_enable_coverage(true);
        engine.set_input(input);
        let value = engine
            .eval_rule(self.entrypoint.clone())
            .map_err(|e| e.to_string())?;
        let report = engine.get_coverage_report().map_err(|e| e.to_string())?;
        Ok((value, report))
    }

    pub fn eval_fresh(&self, input: Value) -> Result<Value, String> {
        let mut engine = self.template.clone();
        engine.set_input(input);
        engine
            .eval_rule(self.entrypoint.clone())
            .map_err(|e| e.to_string())
    }
}

/// A VM loaded with `program` and `data`, bounded in time and instructions.
fn new_vm(program: &Arc<Program>, data: &Value, limit: Duration) -> Result<RegoVM, String> {
    let mut vm = RegoVM::new();
    vm.load_program(program.clone());
    vm.set_data(data.clone()).map_err(|e| e.to_string())?;
    vm.set_execution_timer_config(Some(ExecutionTimerConfig {
        limit,
        check_interval: NonZeroU32::new(64).unwrap_or(NonZeroU32::MIN),
    }));
    vm.set_max_instructions(MAX_INSTRUCTIONS);
    Ok(vm)
}

fn load_engine(bundle: &Bundle, limit: Duration) -> Result<Engine, BundleError> {
    let mut engine = Engine::new();
    engine.set_execution_timer_config(ExecutionTimerConfig {
        limit,
        check_interval: NonZeroU32::new(32).unwrap_or(NonZeroU32::MIN),
    });
    for (name, text) in &bundle.modules {
        engine
            .add_policy(name.clone(), text.clone())
            .map_err(|e| BundleError::Compile {
                path: name.clone(),
                message: e.to_string(),
            })?;
    }
    engine
        .add_data(Value::from(bundle.data.clone()))
        .map_err(|e| BundleError::Compile {
            path: "data".into(),
            message: e.to_string(),
        })?;
    Ok(engine)
}

/// Thread-local engines, swept of dead bundles when this many accumulate.
const THREAD_CACHE_SWEEP: usize = 64;

/// Instructions one decision may execute on the VM (a deterministic runaway guard on top
/// of the time limit).
const MAX_INSTRUCTIONS: usize = 1_000_000;

type ThreadEngines = HashMap<u64, (Weak<Compiled>, Engine)>;
type ThreadVms = HashMap<u64, (Weak<Compiled>, RegoVM)>;

thread_local! {
    static ENGINES: RefCell<ThreadEngines> = RefCell::new(HashMap::new());
    static VMS: RefCell<ThreadVms> = RefCell::new(HashMap::new());
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bundle(rego: &str) -> Bundle {
        Bundle::new(
            vec![("p.rego".into(), rego.into())],
            serde_json::json!({"admins": ["alice"]}),
            Some("data.authz.allow"),
            None,
        )
        .unwrap()
    }

    #[test]
    fn evaluates_with_data_and_input() {
        let c = Arc::new(
            Compiled::compile_for(
                &bundle(
                    "package authz\ndefault allow := false\nallow if input.user in data.admins\n",
                ),
                Duration::from_secs(1),
                true,
            )
            .unwrap(),
        );
        let alice = Value::from(serde_json::json!({"user": "alice"}));
        let bob = Value::from(serde_json::json!({"user": "bob"}));
        assert_eq!(c.eval(alice.clone()).unwrap(), Value::from(true));
        assert_eq!(c.eval(bob.clone()).unwrap(), Value::from(false));
        assert!(c.on_vm());
        assert_eq!(
            c.eval_interpreted(alice.clone()).unwrap(),
            Value::from(true)
        );
        assert_eq!(c.eval_fresh(alice).unwrap(), Value::from(true));
        assert_eq!(c.eval_fresh(bob).unwrap(), Value::from(false));
    }

    #[test]
    fn syntax_errors_name_the_file_and_missing_entrypoints_fail() {
        let e = Compiled::compile(&bundle("package authz\nallow if {"), Duration::from_secs(1))
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("p.rego:"), "{e}");
        let e = Compiled::compile(&bundle("package other\nx := 1\n"), Duration::from_secs(1))
            .unwrap_err()
            .to_string();
        assert!(e.contains("data.authz.allow"), "{e}");
    }

    #[test]
    fn failing_tests_reject_the_bundle() {
        let rego = "package authz\ndefault allow := false\nallow if input.user in data.admins\n\
                    test_alice if allow with input as {\"user\": \"alice\"}\n\
                    test_bob if allow with input as {\"user\": \"bob\"}\n";
        let e = Compiled::compile_tested(&bundle(rego), Duration::from_secs(1), false)
            .unwrap_err()
            .to_string();
        assert!(e.contains("1 of 2") && e.contains("test_bob"), "{e}");
    }

    #[test]
    fn the_time_limit_stops_a_runaway_policy() {
        let rego = "package authz\ndefault allow := false\n\
                    allow if { some i in numbers.range(1, 100000); some j in numbers.range(1, 100000); i * j < 0 }\n";
        let c = Arc::new(
            Compiled::compile_for(&bundle(rego), Duration::from_millis(50), true).unwrap(),
        );
        for run in [Compiled::eval, Compiled::eval_interpreted] {
            let t = std::time::Instant::now();
            let r = run(&c, Value::new_object());
            assert!(r.is_err(), "{r:?}");
            assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
        }
    }
}

//! Decision latency of the example policies (`examples/policy/tenants`), p50/p99 per call.
//!
//!   cargo bench -p rampart-policy --bench decide
//!
//! RBAC (tenant acme's policy) with 10, 100 and 1000 generated roles, and ABAC (tenant
//! globex), on one thread and on two. Strategies:
//! - `decide`: `PolicyEngine::decide` as the gateway calls it (tenant lookup, each thread's own
//!   clone of the compiled interpreter engine, decision parsing, metrics), with
//!   `policy.vm: false`;
//! - `decide-vm`: the same with `policy.vm: true`, the default: regorus' register VM for a
//!   bundle that passes the equivalence checks (the `#` line before each policy says which
//!   engine it got);
//! - `thread-interp`: the thread-local interpreter alone, without the engine around it;
//! - `fresh`: a new engine clone per call (what regorus' `CompiledPolicy` does);
//! - `mutex`: one engine shared behind a lock.
//!
//! Every loop is bounded by a count and by time.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rampart_policy::{Bundle, Compiled, EngineConfig, PolicyEngine, Value};

const ITERATIONS: usize = 100_000;
const MAX_TIME: Duration = Duration::from_secs(4);

fn example(name: &str) -> Bundle {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../examples/policy/tenants")
        .join(name);
    Bundle::load_dir(&dir).expect("example bundle")
}

/// The acme policy with `roles` roles of three permissions each and 1000 users bound to
/// three roles each.
fn rbac(roles: usize) -> Bundle {
    let base = example("acme");
    let mut role_map = serde_json::Map::new();
    for r in 0..roles {
        role_map.insert(
            format!("role{r}"),
            serde_json::json!({"permissions": [
                {"method": "GET", "path_prefix": format!("/api/res{r}/")},
                {"method": "POST", "path_prefix": format!("/api/res{r}/items")},
                {"method": "DELETE", "path_prefix": format!("/api/res{r}/items/")},
            ]}),
        );
    }
    let mut bindings = serde_json::Map::new();
    for u in 0..1000usize {
        let rs: Vec<String> = (0..3)
            .map(|k| format!("role{}", (u * 7 + k * 13) % roles))
            .collect();
        bindings.insert(format!("user{u}"), serde_json::json!(rs));
    }
    Bundle::new(
        base.modules
            .into_iter()
            .filter(|(n, _)| !n.contains("_test"))
            .collect(),
        serde_json::json!({"roles": role_map, "bindings": bindings}),
        Some(&base.entrypoint),
        None,
    )
    .expect("rbac bundle")
}

fn rbac_input(roles: usize) -> Value {
    // user5 is bound to role (35 % roles); ask for that role's resource.
    let role = 35 % roles;
    Value::from(serde_json::json!({
        "method": "GET",
        "path": format!("/api/res{role}/items/9"),
        "headers": {"x-user": "user5", "host": "api.example.com"},
    }))
}

fn abac_input() -> Value {
    Value::from(serde_json::json!({
        "method": "GET",
        "path": "/code/secrets/key",
        "headers": {"x-user": "sam", "host": "api.example.com"},
    }))
}

/// Runs `f` on `threads` threads; returns (p50, p99) over all calls.
type Call = Arc<dyn Fn() + Send + Sync>;

fn measure(threads: usize, f: &Call) -> (Duration, Duration, usize) {
    let handles: Vec<_> = (0..threads)
        .map(|_| {
            let f = f.clone();
            std::thread::spawn(move || {
                for _ in 0..1000 {
                    f();
                }
                let mut lat = Vec::with_capacity(ITERATIONS);
                let start = Instant::now();
                while lat.len() < ITERATIONS && start.elapsed() < MAX_TIME {
                    let t = Instant::now();
                    f();
                    lat.push(t.elapsed());
                }
                lat
            })
        })
        .collect();
    let mut all: Vec<Duration> = handles
        .into_iter()
        .flat_map(|h| h.join().expect("bench thread"))
        .collect();
    all.sort();
    let n = all.len();
    (all[n / 2], all[n * 99 / 100], n)
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

fn main() {
    // `cargo bench` passes --bench; nothing else is accepted.
    let cases: Vec<(String, Bundle, Value)> = vec![
        ("rbac-10".into(), rbac(10), rbac_input(10)),
        ("rbac-100".into(), rbac(100), rbac_input(100)),
        ("rbac-1000".into(), rbac(1000), rbac_input(1000)),
        (
            "abac".into(),
            {
                let b = example("globex");
                Bundle::new(
                    b.modules
                        .into_iter()
                        .filter(|(n, _)| !n.contains("_test"))
                        .collect(),
                    b.data,
                    Some(&b.entrypoint),
                    None,
                )
                .expect("abac bundle")
            },
            abac_input(),
        ),
    ];
    println!(
        "{:<10} {:<13} {:>7} {:>9} {:>9} {:>9}",
        "policy", "strategy", "threads", "p50_us", "p99_us", "calls"
    );
    for (name, bundle, input) in cases {
        let engine = Arc::new(PolicyEngine::new(EngineConfig {
            eval_limit: Duration::from_secs(10),
            vm: false,
            ..EngineConfig::default()
        }));
        let vm_engine = Arc::new(PolicyEngine::new(EngineConfig {
            eval_limit: Duration::from_secs(10),
            vm: true,
            ..EngineConfig::default()
        }));
        vm_engine
            .put_bundle("t", bundle.clone())
            .expect("bundle accepted");
        engine
            .put_bundle("t", bundle.clone())
            .expect("bundle accepted");
        // The decision must be an allow: the benchmark measures the full path.
        assert!(
            engine
                .decide("t", input.clone())
                .expect("decide")
                .decision
                .allowed,
            "{name}: expected allow"
        );
        let compiled = Arc::new(
            Compiled::compile_for(&bundle, Duration::from_secs(10), true).expect("compile"),
        );
        println!(
            "# {name}: decisions run on the {}",
            if compiled.on_vm() {
                "register VM"
            } else {
                "interpreter"
            }
        );
        let shared = Arc::new(Mutex::new(compiled.engine()));
        for threads in [1, 2] {
            let strategies: Vec<(&str, Call)> = vec![
                ("decide-vm", {
                    let (e, i) = (vm_engine.clone(), input.clone());
                    Arc::new(move || {
                        let d = e.decide("t", i.clone()).expect("decide");
                        std::hint::black_box(d);
                    })
                }),
                ("decide", {
                    let (e, i) = (engine.clone(), input.clone());
                    Arc::new(move || {
                        let d = e.decide("t", i.clone()).expect("decide");
                        std::hint::black_box(d);
                    })
                }),
                ("thread-interp", {
                    let (c, i) = (compiled.clone(), input.clone());
                    Arc::new(move || {
                        std::hint::black_box(c.eval_interpreted(i.clone()).expect("eval"));
                    })
                }),
                ("fresh", {
                    let (c, i) = (compiled.clone(), input.clone());
                    Arc::new(move || {
                        std::hint::black_box(c.eval_fresh(i.clone()).expect("eval"));
                    })
                }),
                ("mutex", {
                    let (m, i, ep) = (shared.clone(), input.clone(), bundle.entrypoint.clone());
                    Arc::new(move || {
                        let mut e = m.lock().expect("lock");
                        e.set_input(i.clone());
                        std::hint::black_box(e.eval_rule(ep.clone()).expect("eval"));
                    })
                }),
            ];
            for (strategy, f) in strategies {
                let (p50, p99, n) = measure(threads, &f);
                println!(
                    "{name:<10} {strategy:<13} {threads:>7} {:>9.2} {:>9.2} {n:>9}",
                    us(p50),
                    us(p99)
                );
            }
        }
    }
}

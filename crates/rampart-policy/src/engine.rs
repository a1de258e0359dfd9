//! Tenants, the compiled-bundle cache, and decisions.
//!
//! ```text
//!  put_bundle / load_dir / watcher ──► compile + run the bundle's tests (caller's thread)
//!                                        │ ok: swap the tenant map (ArcSwap); rejected: keep the old
//!                                        ▼
//!  decide(tenant, input) ──► tenant map (lock-free load) ──► compiled? ──hit──► thread's engine
//!                                                             │ miss (evicted)
//!                                                             └──► compile under the tenant's lock,
//!                                                                  evict least recently used
//! ```
//!
//! The cache holds compiled bundles, bounded by count and by an estimate of their memory;
//! sources are kept for every tenant, so an evicted bundle is recompiled on its next use.
//! Recency is an atomic tick per tenant, so a hit takes no lock.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use arc_swap::{ArcSwap, ArcSwapOption};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::registry::Registry;
use regorus::Value;

use crate::bundle::{Bundle, BundleError};
use crate::compiled::Compiled;
use crate::decision::Decision;
pub use crate::error::DecideError;
use crate::log::{DecisionLog, DecisionLogConfig};
use crate::status::{DecisionCounters, Rejections, TenantStatus};

#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Compiled bundles kept at once.
    pub max_entries: usize,
    /// Estimated bytes of compiled bundles kept at once.
    pub max_bytes: usize,
    /// Longest evaluation; a policy running past it is stopped and counts as an error.
    pub eval_limit: Duration,
    pub decision_log: Option<DecisionLogConfig>,
    /// Decide on regorus' register VM instead of its interpreter (faster; opt-in, see
    /// [`Compiled::compile_for`]).
    pub vm: bool,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            max_entries: 1000,
            max_bytes: 256 * 1024 * 1024,
            eval_limit: Duration::from_millis(100),
            decision_log: None,
            vm: true,
        }
    }
}

/// Where a tenant's bundle came from: directory tenants are removed when their directory
/// goes; API tenants only through the API.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Origin {
    Dir(PathBuf),
    Api,
}

struct Tenant {
    bundle: Arc<Bundle>,
    origin: Origin,
    compiled: ArcSwapOption<Compiled>,
    compile_lock: Mutex<()>,
    last_used: AtomicU64,
    /// Decisions of this revision.
    decisions: DecisionCounters,
    /// When this revision was accepted (seconds since the Unix epoch).
    loaded_at: u64,
    /// Which engine decides: `vm`, or `interpreter: <why not the VM>`.
    engine: String,
}

/// Counters exported as `rampart_policy_*`.
#[derive(Clone, Default)]
pub struct PolicyMetrics {
    pub cache_hits: Counter,
    pub cache_misses: Counter,
    pub cache_evictions: Counter,
    pub allowed: Counter,
    pub denied: Counter,
    pub errors: Counter,
    pub bundles_loaded: Counter,
    pub bundles_rejected: Counter,
    /// Sum of decision latencies, in seconds (with the three decision counters: the mean).
    pub decision_seconds: Counter<f64, std::sync::atomic::AtomicU64>,
}

impl PolicyMetrics {
    pub fn register(&self, r: &mut Registry) {
        let r = r.sub_registry_with_prefix("policy");
        r.register(
            "cache_hits",
            "Decisions whose compiled bundle was cached",
            self.cache_hits.clone(),
        );
        r.register(
            "cache_misses",
            "Decisions that had to compile an evicted bundle",
            self.cache_misses.clone(),
        );
        r.register(
            "cache_evictions",
            "Compiled bundles evicted (count or memory bound)",
            self.cache_evictions.clone(),
        );
        r.register(
            "decisions_allowed",
            "Decisions that allowed the request",
            self.allowed.clone(),
        );
        r.register(
            "decisions_denied",
            "Decisions that denied the request",
            self.denied.clone(),
        );
        r.register(
            "decision_errors",
            "Evaluations that failed (time limit, bad decision, unknown tenant)",
            self.errors.clone(),
        );
        r.register(
            "bundles_loaded",
            "Bundles compiled, tested and swapped in",
            self.bundles_loaded.clone(),
        );
        r.register(
            "bundles_rejected",
            "Bundles rejected (compile error or failing tests); the old one kept serving",
            self.bundles_rejected.clone(),
        );
        r.register(
            "decision_seconds",
            "Total time spent deciding",
            self.decision_seconds.clone(),
        );
    }
}

/// The lines of one policy file a traced decision evaluated: (line number, its text).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct TracedFile {
    pub path: String,
    pub lines: Vec<(u32, String)>,
}

/// A decision and what it cost.
#[derive(Debug, Clone)]
pub struct Decided {
    pub decision: Decision,
    pub revision: String,
    pub latency: Duration,
}

pub struct PolicyEngine {
    config: EngineConfig,
    tenants: ArcSwap<HashMap<String, Arc<Tenant>>>,
    /// Serializes changes to the tenant map and evictions (never taken by a cache hit).
    writer: Mutex<()>,
    tick: AtomicU64,
    metrics: PolicyMetrics,
    log: Option<DecisionLog>,
    rejections: Rejections,
}

impl std::fmt::Debug for PolicyEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PolicyEngine")
            .field("tenants", &self.tenants.load().len())
            .finish_non_exhaustive()
    }
}

/// What a directory scan did.
#[derive(Debug, Default)]
pub struct ReloadReport {
    /// `(tenant, revision)` swapped in.
    pub loaded: Vec<(String, String)>,
    /// `(tenant, error)`; those tenants keep their previous bundle.
    pub rejected: Vec<(String, String)>,
    pub removed: Vec<String>,
}

impl PolicyEngine {
    pub fn new(config: EngineConfig) -> Self {
        Self::with_metrics(config, PolicyMetrics::default())
    }

    /// An engine counting into `metrics` (shared by successive engines of one gateway, so
    /// they are registered once).
    pub fn with_metrics(config: EngineConfig, metrics: PolicyMetrics) -> Self {
        let log = config.decision_log.as_ref().map(DecisionLog::start);
        Self {
            config,
            tenants: ArcSwap::from_pointee(HashMap::new()),
            writer: Mutex::new(()),
            tick: AtomicU64::new(0),
            metrics,
            log,
            rejections: Rejections::default(),
        }
    }

    pub fn metrics(&self) -> &PolicyMetrics {
        &self.metrics
    }

    pub fn config(&self) -> &EngineConfig {
        &self.config
    }

    fn lock_writer(&self) -> MutexGuard<'_, ()> {
        self.writer
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Every tenant with a bundle or a refused one: the revision deciding, its decisions
    /// so far, the last bundle refused since. Sorted by tenant.
    pub fn status(&self) -> Vec<TenantStatus> {
        let mut rejected = self.rejections.all();
        let map = self.tenants.load();
        let mut out: Vec<TenantStatus> = map
            .iter()
            .map(|(n, t)| TenantStatus {
                tenant: n.clone(),
                revision: Some(t.bundle.revision.clone()),
                loaded_at: Some(t.loaded_at),
                engine: Some(t.engine.clone()),
                decisions: t.decisions.snapshot(),
                rejected: rejected.remove(n),
            })
            .collect();
        out.extend(rejected.into_iter().map(|(n, r)| TenantStatus {
            tenant: n,
            revision: None,
            loaded_at: None,
            engine: None,
            decisions: crate::status::Decisions::default(),
            rejected: Some(r),
        }));
        out.sort_by(|a, b| a.tenant.cmp(&b.tenant));
        out
    }

    /// Compiled bundles currently cached.
    pub fn cached(&self) -> usize {
        self.tenants
            .load()
            .values()
            .filter(|t| t.compiled.load().is_some())
            .count()
    }

    /// Compiles `bundle`, runs its tests, then swaps it in for `tenant`. On error nothing
    /// changes and the previous bundle keeps serving. Returns the new revision.
    pub fn put_bundle(&self, tenant: &str, bundle: Bundle) -> Result<String, BundleError> {
        self.put(tenant, bundle, Origin::Api)
    }

    fn put(&self, tenant: &str, bundle: Bundle, origin: Origin) -> Result<String, BundleError> {
        let compiled = match Compiled::compile_tested(
            &bundle,
            self.config.eval_limit,
            self.config.vm,
        ) {
            Ok(c) => c,
            Err(e) => {
                self.metrics.bundles_rejected.inc();
                self.rejections
                    .refused(tenant, &bundle.revision, e.to_string());
                tracing::warn!(tenant, error = %e, "policy bundle rejected; the previous one keeps serving");
                return Err(e);
            }
        };
        self.rejections.clear(tenant);
        let revision = compiled.revision.clone();
        let engine = match compiled.interpreted_because() {
            None if self.config.vm => "vm".to_owned(),
            None => "interpreter".to_owned(),
            Some(why) => format!("interpreter: {why}"),
        };
        let loaded_at = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let entry = Arc::new(Tenant {
            loaded_at,
            engine,
            bundle: Arc::new(bundle),
            origin,
            compiled: ArcSwapOption::from_pointee(compiled),
            compile_lock: Mutex::new(()),
            last_used: AtomicU64::new(self.tick.fetch_add(1, Ordering::Relaxed)),
            decisions: DecisionCounters::default(),
        });
        {
            let _w = self.lock_writer();
            let mut map = HashMap::clone(&self.tenants.load());
            map.insert(tenant.to_string(), entry);
            self.tenants.store(Arc::new(map));
            self.evict_over_budget(Some(tenant));
        }
        self.metrics.bundles_loaded.inc();
        tracing::info!(tenant, revision, "policy bundle loaded");
        Ok(revision)
    }

    /// Removes a tenant; its requests then fail as an unknown tenant.
    pub fn remove_tenant(&self, tenant: &str) -> bool {
        let _w = self.lock_writer();
        let mut map = HashMap::clone(&self.tenants.load());
        let removed = map.remove(tenant).is_some();
        self.tenants.store(Arc::new(map));
        self.rejections.clear(tenant);
        removed
    }

    /// Loads every subdirectory of `dir` as the tenant of the same name. Unchanged bundles
    /// are left alone; a bundle that fails to load, compile or pass its tests is reported
    /// and its tenant keeps the previous version; tenants whose directory is gone are removed.
    pub fn load_dir(&self, dir: &Path) -> ReloadReport {
        let mut report = ReloadReport::default();
        let mut seen = Vec::new();
        let entries = match std::fs::read_dir(dir) {
            Ok(e) => e,
            Err(e) => {
                report
                    .rejected
                    .push((dir.display().to_string(), e.to_string()));
                return report;
            }
        };
        let mut dirs: Vec<PathBuf> = entries
            .filter_map(Result::ok)
            .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
            .map(|e| e.path())
            .filter(|p| {
                !p.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with('.'))
            })
            .collect();
        dirs.sort();
        for path in dirs {
            let Some(name) = path.file_name().map(|n| n.to_string_lossy().into_owned()) else {
                continue;
            };
            seen.push(name.clone());
            let bundle = match Bundle::load_dir(&path) {
                Ok(b) => b,
                Err(e) => {
                    self.metrics.bundles_rejected.inc();
                    tracing::warn!(tenant = name, error = %e, "policy bundle rejected; the previous one keeps serving");
                    report.rejected.push((name, e.to_string()));
                    continue;
                }
            };
            let current = self.tenants.load().get(&name).cloned();
            if current.is_some_and(|t| *t.bundle == bundle) {
                continue;
            }
            match self.put(&name, bundle, Origin::Dir(path)) {
                Ok(rev) => report.loaded.push((name, rev)),
                Err(e) => report.rejected.push((name, e.to_string())),
            }
        }
        let gone: Vec<String> = self
            .tenants
            .load()
            .iter()
            .filter(|(n, t)| {
                matches!(&t.origin, Origin::Dir(p) if p.parent() == Some(dir)) && !seen.contains(n)
            })
            .map(|(n, _)| n.clone())
            .collect();
        for name in gone {
            self.remove_tenant(&name);
            tracing::info!(tenant = name, "policy tenant removed (directory gone)");
            report.removed.push(name);
        }
        report
    }

    /// Evaluates `tenant`'s entry point with `input` and reads the decision.
    pub fn decide(&self, tenant: &str, input: Value) -> Result<Decided, DecideError> {
        let started = Instant::now();
        let result = self.decide_inner(tenant, input);
        let latency = started.elapsed();
        self.metrics.decision_seconds.inc_by(latency.as_secs_f64());
        match &result {
            Ok((d, _)) if d.allowed => self.metrics.allowed.inc(),
            Ok(_) => self.metrics.denied.inc(),
            Err(_) => self.metrics.errors.inc(),
        };
        if let Some(log) = &self.log {
            log.record(tenant, &result, latency);
        }
        result.map(|(decision, revision)| Decided {
            decision,
            revision,
            latency,
        })
    }

    /// As [`Self::decide`] for someone trying inputs (the dashboard's "try a request"),
    /// with a trace: evaluated on a fresh interpreter with coverage on (the VM, where it
    /// decides, provably agrees), so the answer names every policy line that was evaluated.
    /// Counted in no tenant's decisions, metrics or decision log, so trying inputs cannot
    /// make a bundle look bad to whoever judges it by its errors (the operator does).
    pub fn try_decide(
        &self,
        tenant: &str,
        input: Value,
    ) -> Result<(Decided, Vec<TracedFile>), DecideError> {
        let started = Instant::now();
        let map = self.tenants.load();
        let t = map
            .get(tenant)
            .ok_or_else(|| DecideError::UnknownTenant(tenant.to_string()))?;
        let compiled = match t.compiled.load_full() {
            Some(c) => c,
            None => self.compile_evicted(tenant, t)?,
        };
        let eval_error = |message| DecideError::Eval {
            tenant: tenant.to_string(),
            message,
        };
        let (value, report) = compiled.eval_traced(input).map_err(eval_error)?;
        let decision =
            Decision::from_value(&value).map_err(|message| DecideError::BadDecision {
                tenant: tenant.to_string(),
                message,
            })?;
        let trace = report
            .files
            .into_iter()
            .filter(|f| !f.covered.is_empty())
            .map(|f| {
                let lines: Vec<&str> = f.code.lines().collect();
                TracedFile {
                    lines: f
                        .covered
                        .iter()
                        .map(|&n| {
                            let text = (n as usize)
                                .checked_sub(1)
                                .and_then(|i| lines.get(i))
                                .map_or("", |l| l.trim_end());
                            (n, text.to_owned())
                        })
                        .collect(),
                    path: f.path,
                }
            })
            .collect();
        let decided = Decided {
            decision,
            revision: compiled.revision.clone(),
            latency: started.elapsed(),
        };
        Ok((decided, trace))
    }

    fn decide_inner(&self, tenant: &str, input: Value) -> Result<(Decision, String), DecideError> {
        let map = self.tenants.load();
        let t = map
            .get(tenant)
            .ok_or_else(|| DecideError::UnknownTenant(tenant.to_string()))?;
        t.last_used
            .store(self.tick.fetch_add(1, Ordering::Relaxed), Ordering::Relaxed);
        let out = self.decide_with(tenant, t, input);
        t.decisions.count(out.as_ref().ok().map(|(d, _)| d.allowed));
        out
    }

    fn decide_with(
        &self,
        tenant: &str,
        t: &Tenant,
        input: Value,
    ) -> Result<(Decision, String), DecideError> {
        let compiled = match t.compiled.load_full() {
            Some(c) => {
                self.metrics.cache_hits.inc();
                c
            }
            None => self.compile_evicted(tenant, t)?,
        };
        let value = compiled.eval(input).map_err(|message| DecideError::Eval {
            tenant: tenant.to_string(),
            message,
        })?;
        let decision =
            Decision::from_value(&value).map_err(|message| DecideError::BadDecision {
                tenant: tenant.to_string(),
                message,
            })?;
        Ok((decision, compiled.revision.clone()))
    }

    fn compile_evicted(&self, name: &str, t: &Tenant) -> Result<Arc<Compiled>, DecideError> {
        let _g = t
            .compile_lock
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        // Another request may have compiled it while this one waited.
        if let Some(c) = t.compiled.load_full() {
            self.metrics.cache_hits.inc();
            return Ok(c);
        }
        self.metrics.cache_misses.inc();
        // Tests passed when the bundle was accepted; recompiling the same sources skips them.
        let c = Arc::new(
            Compiled::compile_for(&t.bundle, self.config.eval_limit, self.config.vm).map_err(
                |source| DecideError::Compile {
                    tenant: name.to_string(),
                    source,
                },
            )?,
        );
        t.compiled.store(Some(c.clone()));
        let _w = self.lock_writer();
        self.evict_over_budget(Some(name));
        Ok(c)
    }

    /// Drops least recently used compiled bundles until the cache fits both bounds; `keep`
    /// (the one just added) is never the victim.
    fn evict_over_budget(&self, keep: Option<&str>) {
        let map = self.tenants.load();
        let mut cached: Vec<(&String, &Arc<Tenant>, u64, usize)> = map
            .iter()
            .filter_map(|(n, t)| {
                let c = t.compiled.load();
                c.as_ref()
                    .map(|c| (n, t, t.last_used.load(Ordering::Relaxed), c.bytes))
            })
            .collect();
        let mut count = cached.len();
        let mut bytes: usize = cached.iter().map(|c| c.3).sum();
        if count <= self.config.max_entries && bytes <= self.config.max_bytes {
            return;
        }
        cached.sort_by_key(|c| c.2);
        for (name, t, _, size) in cached {
            if count <= self.config.max_entries && bytes <= self.config.max_bytes {
                break;
            }
            if Some(name.as_str()) == keep {
                continue;
            }
            t.compiled.store(None);
            count -= 1;
            bytes -= size;
            self.metrics.cache_evictions.inc();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rbac(admin: &str) -> Bundle {
        Bundle::new(
            vec![(
                "authz.rego".into(),
                "package authz\ndefault decision := false\ndecision if input.user in data.admins\n"
                    .into(),
            )],
            serde_json::json!({"admins": [admin]}),
            None,
            None,
        )
        .unwrap()
    }

    fn input(user: &str) -> Value {
        Value::from(serde_json::json!({"user": user}))
    }

    #[test]
    fn a_tried_decision_is_traced_and_counted_nowhere() {
        let e = PolicyEngine::new(EngineConfig::default());
        e.put_bundle("a", rbac("alice")).unwrap();
        let (d, trace) = e.try_decide("a", input("alice")).unwrap();
        assert!(d.decision.allowed);
        let file = trace
            .iter()
            .find(|f| f.path.ends_with("authz.rego"))
            .unwrap();
        assert!(
            file.lines
                .iter()
                .any(|(n, text)| *n == 3 && text.contains("input.user in data.admins")),
            "the rule that allowed is in the trace: {file:?}"
        );
        let (d, _) = e.try_decide("a", input("bob")).unwrap();
        assert!(!d.decision.allowed);
        let status = e.status();
        assert_eq!(
            (status[0].decisions.allowed, status[0].decisions.denied),
            (0, 0),
            "tries are not decisions"
        );
        assert!(matches!(
            e.try_decide("zz", input("a")),
            Err(DecideError::UnknownTenant(_))
        ));
    }

    #[test]
    fn tenants_are_isolated() {
        let e = PolicyEngine::new(EngineConfig::default());
        e.put_bundle("a", rbac("alice")).unwrap();
        e.put_bundle("b", rbac("bob")).unwrap();
        assert!(e.decide("a", input("alice")).unwrap().decision.allowed);
        assert!(!e.decide("a", input("bob")).unwrap().decision.allowed);
        assert!(e.decide("b", input("bob")).unwrap().decision.allowed);
        assert!(!e.decide("b", input("alice")).unwrap().decision.allowed);
        // A policy that reaches for another tenant's data finds nothing: each tenant's
        // engine holds only its own bundle.
        let snoop = Bundle::new(
            vec![(
                "authz.rego".into(),
                "package authz\ndefault decision := false\ndecision if count(data.admins) > 0\n"
                    .into(),
            )],
            serde_json::json!({}),
            None,
            None,
        )
        .unwrap();
        e.put_bundle("c", snoop).unwrap();
        assert!(!e.decide("c", input("alice")).unwrap().decision.allowed);
        assert!(matches!(
            e.decide("zz", input("a")),
            Err(DecideError::UnknownTenant(_))
        ));
    }

    #[test]
    fn status_counts_each_revision_and_remembers_the_last_refusal() {
        use crate::status::Decisions;
        let e = PolicyEngine::new(EngineConfig::default());
        let first = e.put_bundle("a", rbac("alice")).unwrap();
        e.decide("a", input("alice")).unwrap();
        e.decide("a", input("bob")).unwrap();
        // Decisions that fail count against the revision too.
        let nested = Value::from(serde_json::json!({"user": {"x": 1}}));
        let _ = e.decide("a", nested);
        let st = e.status();
        assert_eq!(st.len(), 1);
        assert_eq!(st[0].revision.as_deref(), Some(first.as_str()));
        assert_eq!(st[0].decisions.allowed, 1);
        assert_eq!(st[0].decisions.denied + st[0].decisions.errors, 2);
        // A bundle whose test fails is refused: the old revision keeps deciding, and the
        // refusal is shown with the refused revision.
        let failing = Bundle::new(
            vec![(
                "authz.rego".into(),
                "package authz\ndefault decision := false\ntest_never if false\n".into(),
            )],
            serde_json::json!({}),
            None,
            None,
        )
        .unwrap();
        let refused_rev = failing.revision.clone();
        assert!(e.put_bundle("a", failing.clone()).is_err());
        assert!(e.put_bundle("b", failing).is_err());
        let st = e.status();
        assert_eq!(st[0].revision.as_deref(), Some(first.as_str()));
        let r = st[0].rejected.as_ref().unwrap();
        assert_eq!(r.revision, refused_rev);
        assert!(r.error.contains("test_never"), "{}", r.error);
        assert_eq!(
            (st[1].tenant.as_str(), st[1].revision.as_ref()),
            ("b", None)
        );
        // A new revision starts counting from zero and clears the refusal.
        let second = e.put_bundle("a", rbac("bob")).unwrap();
        assert_ne!(first, second);
        let st = e.status();
        assert_eq!(st[0].decisions, Decisions::default());
        assert!(st[0].rejected.is_none());
        assert!(e.remove_tenant("a"));
        e.remove_tenant("b");
        assert!(e.status().is_empty());
    }

    #[test]
    fn lru_eviction_by_count_and_recompile_on_miss() {
        let e = PolicyEngine::new(EngineConfig {
            max_entries: 2,
            ..EngineConfig::default()
        });
        e.put_bundle("a", rbac("alice")).unwrap();
        e.put_bundle("b", rbac("bob")).unwrap();
        e.decide("a", input("x")).unwrap(); // a is now more recent than b
        e.put_bundle("c", rbac("carol")).unwrap();
        assert_eq!(e.cached(), 2);
        assert_eq!(e.metrics().cache_evictions.get(), 1);
        // b was evicted: deciding for it compiles again (a miss) and evicts the LRU (a).
        assert!(e.decide("b", input("bob")).unwrap().decision.allowed);
        assert_eq!(e.metrics().cache_misses.get(), 1);
        assert_eq!(e.metrics().cache_evictions.get(), 2);
        assert_eq!(e.cached(), 2);
        assert!(e.decide("c", input("carol")).unwrap().decision.allowed);
        assert_eq!(e.metrics().cache_misses.get(), 1);
    }

    #[test]
    fn memory_bound_evicts_too() {
        let one = rbac("alice");
        let each = one.source_bytes() * 2;
        let e = PolicyEngine::new(EngineConfig {
            max_bytes: each * 2 + each / 2,
            ..EngineConfig::default()
        });
        for t in ["a", "b", "c", "d"] {
            e.put_bundle(t, rbac("alice")).unwrap();
        }
        assert_eq!(e.cached(), 2);
        assert_eq!(e.metrics().cache_evictions.get(), 2);
    }

    #[test]
    fn a_rejected_bundle_leaves_the_old_one_serving() {
        let e = PolicyEngine::new(EngineConfig::default());
        let rev = e.put_bundle("a", rbac("alice")).unwrap();
        let broken = Bundle::new(
            vec![("authz.rego".into(), "package authz\ndecision if {".into())],
            serde_json::json!({}),
            None,
            None,
        )
        .unwrap();
        assert!(e.put_bundle("a", broken).is_err());
        let d = e.decide("a", input("alice")).unwrap();
        assert!(d.decision.allowed);
        assert_eq!(d.revision, rev);
        assert_eq!(e.metrics().bundles_rejected.get(), 1);
    }

    #[test]
    fn swaps_under_concurrent_decisions_never_fail() {
        let e = Arc::new(PolicyEngine::new(EngineConfig::default()));
        e.put_bundle("a", rbac("alice")).unwrap();
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let done = Arc::new(AtomicU64::new(0));
        let workers: Vec<_> = (0..2)
            .map(|_| {
                let (e, stop, done) = (e.clone(), stop.clone(), done.clone());
                std::thread::spawn(move || {
                    let mut revisions = std::collections::HashSet::new();
                    while !stop.load(Ordering::Relaxed) {
                        let d = e.decide("a", input("alice")).expect("decision");
                        assert!(d.decision.allowed);
                        revisions.insert(d.revision);
                        done.fetch_add(1, Ordering::Relaxed);
                    }
                    revisions.len()
                })
            })
            .collect();
        for i in 0..50 {
            // Same policy, new revision each time, while decisions run.
            while done.load(Ordering::Relaxed) < (i + 1) * 200 {
                std::thread::yield_now();
            }
            let mut b = rbac("alice");
            b.revision = format!("r{i}");
            e.put_bundle("a", b).unwrap();
        }
        stop.store(true, Ordering::Relaxed);
        for w in workers {
            // Each worker saw several revisions go by.
            assert!(w.join().unwrap() > 1);
        }
        assert_eq!(e.decide("a", input("alice")).unwrap().revision, "r49");
    }

    #[test]
    fn decision_logs_are_sampled_json_lines_and_errors_always_logged() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("decisions.log");
        let e = PolicyEngine::new(EngineConfig {
            decision_log: Some(DecisionLogConfig {
                path: Some(path.clone()),
                sample_rate: 0.5,
            }),
            ..EngineConfig::default()
        });
        e.put_bundle("a", rbac("alice")).unwrap();
        for _ in 0..10 {
            e.decide("a", input("alice")).unwrap();
        }
        assert!(e.decide("nope", input("alice")).is_err());
        let deadline = Instant::now() + Duration::from_secs(5);
        let lines = loop {
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            let lines: Vec<serde_json::Value> = text
                .lines()
                .map(|l| serde_json::from_str(l).unwrap())
                .collect();
            if lines.len() >= 6 || Instant::now() > deadline {
                break lines;
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        assert_eq!(lines.len(), 6, "{lines:?}");
        assert_eq!(lines[0]["tenant"], "a");
        assert_eq!(lines[0]["decision"], "allow");
        assert!(lines[0]["latency_us"].as_f64().unwrap() > 0.0);
        assert_eq!(lines[5]["decision"], "error");
        assert_eq!(lines[5]["tenant"], "nope");
    }

    #[test]
    fn load_dir_adds_updates_rejects_and_removes() {
        let dir = tempfile::tempdir().unwrap();
        let write = |t: &str, rego: &str| {
            let p = dir.path().join(t);
            std::fs::create_dir_all(&p).unwrap();
            std::fs::write(p.join("authz.rego"), rego).unwrap();
        };
        let good =
            "package authz\ndefault decision := false\ndecision if input.user == \"alice\"\n";
        write("a", good);
        write("b", good);
        let e = PolicyEngine::new(EngineConfig::default());
        let r = e.load_dir(dir.path());
        assert_eq!(r.loaded.len(), 2, "{r:?}");
        // Unchanged bundles are not reloaded.
        assert!(e.load_dir(dir.path()).loaded.is_empty());
        write("b", "package authz\ndecision if {");
        let r = e.load_dir(dir.path());
        assert_eq!(r.rejected.len(), 1, "{r:?}");
        assert!(r.rejected[0].1.contains("authz.rego"), "{r:?}");
        assert!(e.decide("b", input("alice")).unwrap().decision.allowed);
        std::fs::remove_dir_all(dir.path().join("a")).unwrap();
        let r = e.load_dir(dir.path());
        assert_eq!(r.removed, vec!["a".to_string()]);
        assert!(e.decide("a", input("alice")).is_err());
    }
}

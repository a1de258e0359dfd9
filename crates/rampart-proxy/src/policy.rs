//! The gateway's policy engine (`policy:`): started, kept or replaced on each config version,
//! watched for bundle changes. `authz` filters decide with it; the admin API puts bundles
//! into it.

use std::path::Path;
use std::sync::{Arc, Mutex};

use rampart_config::policy::Policy;
use rampart_policy::engine::EngineConfig;
use rampart_policy::watch::DirWatch;
use rampart_policy::{DecisionLogConfig, PolicyEngine, PolicyMetrics};

use crate::metrics::Metrics;

/// The gateway's policy engine, kept across reloads while `policy:` does not change.
pub struct PolicyRuntime {
    metrics: PolicyMetrics,
    current: Mutex<Option<Running>>,
}

struct Running {
    settings: Policy,
    engine: Arc<PolicyEngine>,
    _watch: Option<DirWatch>,
}

impl PolicyRuntime {
    pub fn new(metrics: &Metrics) -> Self {
        let m = PolicyMetrics::default();
        metrics.register_with(|r| m.register(r));
        Self {
            metrics: m,
            current: Mutex::new(None),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Running>> {
        self.current
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Starts (or keeps, or replaces) the engine for `settings`. Bundles are loaded and
    /// their tests run before this returns; a tenant whose bundle is rejected is logged and
    /// left out (its requests fail closed). An unreadable bundle directory is an error
    /// (the message is about `policy.bundles_dir`).
    pub fn configure(&self, settings: Option<&Policy>) -> Result<(), String> {
        let mut cur = self.lock();
        let Some(settings) = settings else {
            *cur = None;
            return Ok(());
        };
        if cur.as_ref().is_some_and(|r| r.settings == *settings) {
            return Ok(());
        }
        let engine = Arc::new(PolicyEngine::with_metrics(
            EngineConfig {
                max_entries: settings.max_cached,
                max_bytes: settings.max_cached_bytes,
                eval_limit: settings.eval_timeout,
                decision_log: settings.decision_log.as_ref().map(|l| DecisionLogConfig {
                    path: l.path.clone(),
                    sample_rate: l.sample_rate,
                }),
                vm: settings.vm,
            },
            self.metrics.clone(),
        ));
        let watch = match &settings.bundles_dir {
            Some(dir) => Some(open_dir(&engine, dir)?),
            None => None,
        };
        *cur = Some(Running {
            settings: settings.clone(),
            engine,
            _watch: watch,
        });
        Ok(())
    }

    /// The running engine (for filters, and for the admin API that puts bundles).
    pub fn engine(&self) -> Option<Arc<PolicyEngine>> {
        self.lock().as_ref().map(|r| r.engine.clone())
    }
}

fn open_dir(engine: &Arc<PolicyEngine>, dir: &Path) -> Result<DirWatch, String> {
    if !dir.is_dir() {
        return Err(format!("{} is not a directory", dir.display()));
    }
    rampart_policy::watch::watch_dir(engine.clone(), dir.to_path_buf())
        .map_err(|e| format!("cannot watch {}: {e}", dir.display()))
}

//! What the engine says of each tenant: the revision it decides with, its decisions since
//! that revision was swapped in, and the last bundle it refused. Whoever rolls bundles out
//! (the operator) reads this to know a revision is in place and whether it misbehaves.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::Serialize;

/// Decisions of one tenant's revision, counted without a lock.
#[derive(Debug, Default)]
pub(crate) struct DecisionCounters {
    allowed: AtomicU64,
    denied: AtomicU64,
    errors: AtomicU64,
}

impl DecisionCounters {
    pub(crate) fn count(&self, allowed: Option<bool>) {
        let c = match allowed {
            Some(true) => &self.allowed,
            Some(false) => &self.denied,
            None => &self.errors,
        };
        c.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn snapshot(&self) -> Decisions {
        Decisions {
            allowed: self.allowed.load(Ordering::Relaxed),
            denied: self.denied.load(Ordering::Relaxed),
            errors: self.errors.load(Ordering::Relaxed),
        }
    }
}

/// Decisions of one revision so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Decisions {
    pub allowed: u64,
    pub denied: u64,
    /// Evaluations that failed (time limit, runtime error, no decision).
    pub errors: u64,
}

/// A bundle the engine refused for a tenant (compile error, failing tests, too large).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Rejection {
    pub revision: String,
    pub error: String,
}

/// One tenant as the engine sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TenantStatus {
    pub tenant: String,
    /// The revision deciding, if any bundle was accepted.
    pub revision: Option<String>,
    /// When that revision was accepted (seconds since the Unix epoch).
    pub loaded_at: Option<u64>,
    /// Which engine decides for it: `vm`, or `interpreter: <why not the VM>`.
    pub engine: Option<String>,
    pub decisions: Decisions,
    /// The last bundle refused since the last one accepted.
    pub rejected: Option<Rejection>,
}

/// Tenants whose last bundle was refused, bounded (refusals past the bound are logged
/// only: a tenant name comes from whoever puts bundles).
#[derive(Debug, Default)]
pub(crate) struct Rejections(Mutex<HashMap<String, Rejection>>);

/// Tenants with a refused bundle remembered at once.
const MAX_REJECTIONS: usize = 10_000;

impl Rejections {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Rejection>> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub(crate) fn refused(&self, tenant: &str, revision: &str, error: String) {
        let mut m = self.lock();
        if m.len() >= MAX_REJECTIONS && !m.contains_key(tenant) {
            return;
        }
        m.insert(
            tenant.to_owned(),
            Rejection {
                revision: revision.to_owned(),
                error,
            },
        );
    }

    pub(crate) fn clear(&self, tenant: &str) {
        self.lock().remove(tenant);
    }

    pub(crate) fn all(&self) -> HashMap<String, Rejection> {
        self.lock().clone()
    }
}

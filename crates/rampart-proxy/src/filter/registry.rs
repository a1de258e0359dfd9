//! Filters by name. A [`FilterFactory`] registers under the name config uses for it
//! (`- <name>: {...}`); the gateway checks and builds every chain entry through the
//! [`FilterRegistry`] it was given. Built-in filters register exactly like filters from other
//! crates (the `filters` module registers them).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use rampart_config::model::FilterConfig;
use rampart_config::{Config, FieldError, FilterCatalog};
use tokio::runtime::Handle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::FilterRef;
use crate::metrics::Metrics;

/// Makes one kind of filter from its config entries.
///
/// `parse` reads and checks an entry's config without side effects (it also serves
/// `rampart validate`); `build` then makes the filter, loading any material (key files) and
/// taking per-gateway state from the [`BuildEnv`]. Both run on every config version that
/// contains the entry, off the request path.
pub trait FilterFactory: Send + Sync + 'static {
    /// The checked config.
    type Config: Send + 'static;

    /// The key in a chain entry. Lower-case snake case by convention.
    fn name(&self) -> &'static str;

    /// `path` is the entry's field path ending in the name (`listeners[0].filters[1].cors`);
    /// every error names its field under it. Read the raw shape with
    /// [`rampart_config::filters::typed`].
    fn parse(
        &self,
        path: &str,
        config: &serde_json::Value,
    ) -> Result<Self::Config, Vec<FieldError>>;

    /// An error's `field` is relative to the entry's config (`jwks_file`), or empty for the
    /// entry as a whole.
    fn build(&self, config: Self::Config, env: &BuildEnv) -> Result<FilterRef, FilterBuildError>;
}

/// A filter whose config is valid but whose material is not (a key file that does not parse).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct FilterBuildError {
    /// Relative to the entry's config from [`FilterFactory::build`]; the full config path
    /// (e.g. `listeners[0].filters[1].jwt.jwks_file`) from [`FilterRegistry::build`].
    pub field: String,
    pub message: String,
}

/// What building filters needs besides their config, owned by one gateway and the same for
/// every version it runs: metrics, where background work runs and when it stops, and state
/// that outlives a version (key caches, the policy engine).
pub struct BuildEnv {
    pub metrics: Metrics,
    /// The control runtime, for background work (key refreshes).
    pub control: Handle,
    /// Cancelled when the gateway shuts down.
    pub stop: CancellationToken,
    /// Background work to wait for at shutdown.
    pub tasks: TaskTracker,
    /// The data-plane workers' runtimes, for per-worker state made ahead of requests.
    pub workers: Vec<Handle>,
    shared: Mutex<http::Extensions>,
}

impl BuildEnv {
    pub fn new(metrics: Metrics, control: Handle, stop: CancellationToken) -> Self {
        Self {
            metrics,
            control,
            stop,
            tasks: TaskTracker::new(),
            workers: Vec::new(),
            shared: Mutex::new(http::Extensions::new()),
        }
    }

    /// The gateway's one `T`, made by `init` on first use: state that filters of every
    /// version share (a key cache). `T` is usually an `Arc`.
    pub fn shared<T: Clone + Send + Sync + 'static>(&self, init: impl FnOnce(&Self) -> T) -> T {
        if let Some(v) = self.get::<T>() {
            return v;
        }
        // Made outside the lock: `init` may use the env.
        let made = init(self);
        self.lock().get_or_insert_with(|| made).clone()
    }

    /// Hands a service to the factories (the gateway provides its policy engine this way).
    pub fn provide<T: Clone + Send + Sync + 'static>(&self, value: T) {
        self.lock().insert(value);
    }

    pub fn get<T: Clone + Send + Sync + 'static>(&self) -> Option<T> {
        self.lock().get::<T>().cloned()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, http::Extensions> {
        self.shared
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// A factory with its config type erased, as the registry keeps it.
trait Erased: Send + Sync {
    fn check(&self, path: &str, config: &serde_json::Value) -> Vec<FieldError>;
    fn build(
        &self,
        path: &str,
        config: &serde_json::Value,
        env: &BuildEnv,
    ) -> Result<FilterRef, FilterBuildError>;
}

impl<F: FilterFactory> Erased for F {
    fn check(&self, path: &str, config: &serde_json::Value) -> Vec<FieldError> {
        self.parse(path, config).err().unwrap_or_default()
    }

    fn build(
        &self,
        path: &str,
        config: &serde_json::Value,
        env: &BuildEnv,
    ) -> Result<FilterRef, FilterBuildError> {
        let parsed = self.parse(path, config).map_err(|errors| {
            // Gateways check configs before building them; this is for direct callers.
            let first = errors.into_iter().next();
            FilterBuildError {
                field: first
                    .as_ref()
                    .map_or_else(|| path.to_owned(), |e| e.path.clone()),
                message: first.map_or_else(|| "invalid".to_owned(), |e| e.rule),
            }
        })?;
        FilterFactory::build(self, parsed, env).map_err(|e| FilterBuildError {
            field: if e.field.is_empty() {
                path.to_owned()
            } else {
                format!("{path}.{}", e.field)
            },
            message: e.message,
        })
    }
}

/// The filters a gateway knows, by name.
#[derive(Clone, Default)]
pub struct FilterRegistry {
    factories: BTreeMap<&'static str, Arc<dyn Erased>>,
}

impl FilterRegistry {
    /// An empty registry (see `filters::builtins` for one with the built-in filters).
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a factory.
    ///
    /// # Panics
    /// When a factory with the same name is registered already: two filters cannot share a
    /// config key, and which one ran would depend on registration order.
    pub fn register<F: FilterFactory>(&mut self, factory: F) -> &mut Self {
        let name = factory.name();
        let previous = self.factories.insert(name, Arc::new(factory));
        assert!(previous.is_none(), "two filter factories named {name:?}");
        self
    }

    pub fn names(&self) -> impl Iterator<Item = &'static str> + '_ {
        self.factories.keys().copied()
    }

    /// Every problem with the filter entries of `config`, with full field paths.
    pub fn check_config(&self, config: &Config) -> Vec<FieldError> {
        config
            .filter_entries()
            .into_iter()
            .flat_map(|(path, f)| self.check(&f.name, &entry_path(&path, f), &f.config))
            .collect()
    }

    /// Builds one chain entry; `at` is its path (`listeners[0].filters[1]`).
    pub fn build(
        &self,
        entry: &FilterConfig,
        at: &str,
        env: &BuildEnv,
    ) -> Result<FilterRef, FilterBuildError> {
        let path = entry_path(at, entry);
        let factory = self.factories.get(entry.name.as_str()).ok_or_else(|| {
            let e = self.unknown(&entry.name, &path);
            FilterBuildError {
                field: e.path,
                message: e.rule,
            }
        })?;
        factory.build(&path, &entry.config, env)
    }

    fn unknown(&self, name: &str, path: &str) -> FieldError {
        let known: Vec<&str> = self.names().collect();
        FieldError {
            path: path.to_owned(),
            rule: format!(
                "unknown filter {name:?}; this build has: {}",
                known.join(", ")
            ),
        }
    }
}

fn entry_path(chain_entry: &str, f: &FilterConfig) -> String {
    format!("{chain_entry}.{}", f.name)
}

impl FilterCatalog for FilterRegistry {
    fn check(&self, name: &str, path: &str, config: &serde_json::Value) -> Vec<FieldError> {
        match self.factories.get(name) {
            Some(f) => f.check(path, config),
            None => vec![self.unknown(name, path)],
        }
    }
}

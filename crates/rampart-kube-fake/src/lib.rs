//! An in-memory fake of the Kubernetes API server, over real HTTP/1.1 on loopback, for the
//! operator's tests (a dev-dependency only; nothing shipped uses it).
//!
//! It serves what kube-rs' `Client` and kube-runtime (watcher, reflector, `Controller`,
//! finalizer helper, events `Recorder`, Lease-based leader election) use, for any resource,
//! built-in or custom, without being told about it first:
//! - get, list (one page, with label and field selectors) and watch (replay from a
//!   `resourceVersion`, 410 after [`FakeApi::compact`], bookmarks, streaming lists);
//! - create (`generateName` too), replace, the `status` subresource, merge / strategic merge /
//!   JSON patches and server-side apply, with `resourceVersion` preconditions and `generation`;
//! - delete with finalizers (`deletionTimestamp`, removal when the last one goes), owner
//!   reference garbage collection, delete-collection, `Orphan` propagation;
//! - `PartialObjectMetadata` answers for metadata-only requests, `/version`, `/healthz`;
//! - errors as `Status` objects with the server's codes and reasons.
//!
//! Each module says what real API server behaviour it models and what it simplifies (`path`:
//! routing, `write`: the verbs, `patch`: patch types and apply, `store`: versions, history,
//! deletion and garbage collection, `watch`: streams, `select`: selectors). In short, not
//! modelled: managed fields (apply is a deep merge and never conflicts), schemas, validation,
//! defaulting, admission, authentication and authorization, conversion between API versions,
//! list pages (one page, no `continue`), YAML or protobuf bodies (JSON only), and garbage
//! collection's delay (it happens within the write).
//!
//! A kube `Client` reaches it through [`FakeApi::write_kubeconfig`] (then `KUBECONFIG`, or
//! `Config::from_custom_kubeconfig(Kubeconfig::read_from(path)?, &KubeConfigOptions::default())`),
//! or directly with `Config::new(api.url().parse()?)`; plain HTTP, no credentials.
//!
//! Not for: anything but tests. Everything is kept in memory, history included, until
//! [`FakeApi::compact`] or the value is dropped.
//!
//! ```no_run
//! # async fn example() {
//! use rampart_kube_fake::FakeApi;
//! let api = FakeApi::start().await;
//! api.write_kubeconfig("/tmp/kubeconfig").unwrap();
//! // point KUBECONFIG at it, run the operator, then:
//! let route = api.get("gateway.networking.k8s.io/v1", "httproutes", Some("shop"), "site");
//! # drop(route);
//! # }
//! ```

#![warn(clippy::unwrap_used)]

mod error;
mod meta;
mod patch;
mod path;
mod res;
mod select;
mod server;
mod store;
mod view;
mod watch;
mod write;

use std::io;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use serde_json::Value;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

pub use error::ApiError;

use path::{ObjRef, Res};
use store::Store;
use write::DeleteOptions;

/// How often [`FakeApi::wait_for`] re-checks without a write.
pub const RECHECK_EVERY: Duration = Duration::from_millis(20);

/// One request as received: method, path with query string, `Content-Type` (empty if none).
pub type RequestRecord = (String, String, String);

/// A failure to answer instead of serving some requests (see [`FakeApi::fail_next`]).
#[derive(Debug, Clone)]
struct Injected {
    method: String,
    path_contains: String,
    code: u16,
    remaining: usize,
}

/// What the server task and the test side share.
pub(crate) struct Shared {
    store: Mutex<Store>,
    /// The store's resource version after each write; watches and `wait_for` wait on it.
    changed: tokio::sync::watch::Sender<u64>,
    /// Set when the [`FakeApi`] is dropped: open watches end.
    shutdown: tokio::sync::watch::Sender<bool>,
    requests: Mutex<Vec<RequestRecord>>,
    failures: Mutex<Vec<Injected>>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Shared {
    pub(crate) fn read<T>(&self, f: impl FnOnce(&Store) -> T) -> T {
        f(&lock(&self.store))
    }

    /// Runs a write and wakes the watches if the resource version moved.
    pub(crate) fn write<T>(&self, f: impl FnOnce(&mut Store) -> T) -> T {
        let (out, rv) = {
            let mut store = lock(&self.store);
            let out = f(&mut store);
            (out, store.resource_version())
        };
        self.changed.send_if_modified(|current| {
            let moved = *current != rv;
            *current = rv;
            moved
        });
        out
    }

    pub(crate) fn log(&self, method: &str, path_and_query: &str, content_type: &str) {
        let record = (
            method.to_owned(),
            path_and_query.to_owned(),
            content_type.to_owned(),
        );
        lock(&self.requests).push(record);
    }

    /// The injected failure this request meets, if any (counting it down).
    pub(crate) fn injected_failure(&self, method: &str, path_and_query: &str) -> Option<ApiError> {
        let mut failures = lock(&self.failures);
        let index = failures.iter().position(|f| {
            f.remaining > 0
                && f.method.eq_ignore_ascii_case(method)
                && path_and_query.contains(&f.path_contains)
        })?;
        let failure = &mut failures[index];
        failure.remaining -= 1;
        let code = failure.code;
        failures.retain(|f| f.remaining > 0);
        Some(ApiError::injected(code))
    }
}

/// The fake API server. Serves until dropped; needs a Tokio runtime.
pub struct FakeApi {
    shared: Arc<Shared>,
    addr: SocketAddr,
    server: JoinHandle<()>,
}

impl std::fmt::Debug for FakeApi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FakeApi")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl Drop for FakeApi {
    fn drop(&mut self) {
        self.shared.shutdown.send_replace(true);
        self.server.abort();
    }
}

/// A resource from an API version as objects spell it (`v1` for the core group).
fn res(api_version: &str, plural: &str) -> Res {
    Res::new(api_version, plural)
}

fn obj_ref(api_version: &str, plural: &str, namespace: Option<&str>, name: &str) -> ObjRef {
    ObjRef {
        res: res(api_version, plural),
        ns: namespace.map(str::to_owned),
        name: name.to_owned(),
    }
}

impl FakeApi {
    /// Binds `127.0.0.1:0` and serves. Panics if loopback cannot be bound (see [`Self::try_start`]).
    pub async fn start() -> FakeApi {
        match Self::try_start().await {
            Ok(api) => api,
            Err(e) => panic!("rampart-kube-fake: cannot listen on 127.0.0.1: {e}"),
        }
    }

    /// Binds `127.0.0.1:0` and serves.
    pub async fn try_start() -> io::Result<FakeApi> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            store: Mutex::new(Store::default()),
            changed: tokio::sync::watch::Sender::new(0),
            shutdown: tokio::sync::watch::Sender::new(false),
            requests: Mutex::new(Vec::new()),
            failures: Mutex::new(Vec::new()),
        });
        let server = tokio::spawn(server::serve(listener, Arc::clone(&shared)));
        Ok(FakeApi {
            shared,
            addr,
            server,
        })
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A kubeconfig for this server: one cluster (plain HTTP), one user without credentials,
    /// one context (namespace `default`), current.
    pub fn kubeconfig(&self) -> String {
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: rampart-kube-fake\n  cluster:\n    server: {url}\ncontexts:\n- name: rampart-kube-fake\n  context:\n    cluster: rampart-kube-fake\n    user: rampart-kube-fake\n    namespace: default\ncurrent-context: rampart-kube-fake\nusers:\n- name: rampart-kube-fake\n  user: {{}}\npreferences: {{}}\n",
            url = self.url()
        )
    }

    /// Writes [`Self::kubeconfig`] to a file (for `KUBECONFIG` or `Config::from_custom_kubeconfig`).
    pub fn write_kubeconfig(&self, path: impl AsRef<Path>) -> io::Result<()> {
        std::fs::write(path, self.kubeconfig())
    }

    /// An object, as stored. `api_version` as objects spell it: `v1` for the core group,
    /// `apps/v1`, `gateway.networking.k8s.io/v1`; `namespace` `None` for cluster-scoped ones.
    pub fn get(
        &self,
        api_version: &str,
        plural: &str,
        namespace: Option<&str>,
        name: &str,
    ) -> Option<Value> {
        let r = obj_ref(api_version, plural, namespace, name);
        self.shared.read(|store| store.get(&r).cloned())
    }

    /// Every object of a resource, in all namespaces, by namespace then name.
    pub fn list(&self, api_version: &str, plural: &str) -> Vec<Value> {
        let res = res(api_version, plural);
        self.shared
            .read(|store| store.list(&res, None, &select::Selector::default()))
    }

    /// Creates or updates an object as a user's `kubectl apply` would; panics on an object the
    /// server would refuse (see [`Self::try_upsert`]).
    pub fn upsert(&self, api_version: &str, plural: &str, object: Value) -> Value {
        match self.try_upsert(api_version, plural, object) {
            Ok(obj) => obj,
            Err(e) => panic!("rampart-kube-fake: upsert of {plural}: {e}"),
        }
    }

    /// Creates or updates an object (namespace and name from its `metadata`; `generateName`
    /// creates). An update replaces everything but `metadata`, which is merged over the stored
    /// one (so finalizers and owner references that others added stay), and `status`, which is
    /// kept; `generation` bumps when the spec changes. A `status` in `object` is ignored, as the
    /// server ignores it outside `/status`: see [`Self::set_status`]. Emits watch events like
    /// any write.
    pub fn try_upsert(
        &self,
        api_version: &str,
        plural: &str,
        object: Value,
    ) -> Result<Value, ApiError> {
        let res = res(api_version, plural);
        self.shared.write(|store| store.upsert(&res, object))
    }

    /// Replaces an object's `status`, as another controller writing `/status` would; `None` if
    /// there is no such object.
    pub fn set_status(
        &self,
        api_version: &str,
        plural: &str,
        namespace: Option<&str>,
        name: &str,
        status: Value,
    ) -> Option<Value> {
        let r = obj_ref(api_version, plural, namespace, name);
        self.shared.write(|store| store.set_status(&r, status)).ok()
    }

    /// Deletes an object as a client's DELETE would (finalizers hold it with a
    /// `deletionTimestamp`; dependents are garbage-collected). `None` if there was none; else
    /// the object as last written (marked, or as removed).
    pub fn delete(
        &self,
        api_version: &str,
        plural: &str,
        namespace: Option<&str>,
        name: &str,
    ) -> Option<Value> {
        let r = obj_ref(api_version, plural, namespace, name);
        let opts = DeleteOptions::default();
        self.shared
            .write(|store| store.delete(&r, &opts, false))
            .ok()
    }

    /// Every request received so far: method, path with query, `Content-Type`.
    pub fn requests(&self) -> Vec<RequestRecord> {
        lock(&self.shared.requests).clone()
    }

    /// Forgets the requests received so far.
    pub fn clear_requests(&self) {
        lock(&self.shared.requests).clear();
    }

    /// Drops the change history, as etcd's compaction does: a watch from an older resource
    /// version gets an ERROR event with a 410 `Expired` Status (and a client re-lists).
    pub fn compact(&self) {
        self.shared.write(Store::compact);
    }

    /// The latest resource version written (0 before any write).
    pub fn resource_version(&self) -> u64 {
        self.shared.read(Store::resource_version)
    }

    /// Makes the next `times` requests with this method whose path and query contain
    /// `path_contains` fail with a `Status` of this code (409 Conflict, 500, 503, 429, ...),
    /// before they reach the store: for tests of a client's retries.
    pub fn fail_next(&self, method: &str, path_contains: &str, code: u16, times: usize) {
        lock(&self.shared.failures).push(Injected {
            method: method.to_owned(),
            path_contains: path_contains.to_owned(),
            code,
            remaining: times,
        });
    }

    /// Waits until `predicate` holds (checked now, after each write and every
    /// [`RECHECK_EVERY`], for predicates that look at more than the fake), at most `timeout`;
    /// whether it held.
    pub async fn wait_for(
        &self,
        timeout: Duration,
        mut predicate: impl FnMut(&FakeApi) -> bool,
    ) -> bool {
        self.wait_for_value(timeout, |api| predicate(api).then_some(()))
            .await
            .is_some()
    }

    /// Waits until `probe` returns something (checked as [`Self::wait_for`] checks), at most
    /// `timeout`; what it returned.
    pub async fn wait_for_value<T>(
        &self,
        timeout: Duration,
        mut probe: impl FnMut(&FakeApi) -> Option<T>,
    ) -> Option<T> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut changed = self.shared.changed.subscribe();
        loop {
            changed.borrow_and_update();
            if let Some(found) = probe(self) {
                return Some(found);
            }
            let recheck = (tokio::time::Instant::now() + RECHECK_EVERY).min(deadline);
            let woken = tokio::time::timeout_at(recheck, changed.changed()).await;
            if woken.is_err() && recheck >= deadline {
                return probe(self);
            }
        }
    }
}

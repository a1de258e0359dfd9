//! Hot reload from a directory: inotify events (through `notify`) trigger a rescan after a
//! short quiet period, so an editor's burst of writes becomes one reload.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::mpsc::RecvTimeoutError;
use std::time::Duration;

use notify::{RecursiveMode, Watcher};

use crate::engine::PolicyEngine;

/// Quiet period after the last change before the directory is rescanned.
pub const DEBOUNCE: Duration = Duration::from_millis(150);

/// Keeps the watch alive; dropping it stops watching.
pub struct DirWatch {
    _watcher: notify::RecommendedWatcher,
    _stop: std::sync::mpsc::SyncSender<()>,
}

impl std::fmt::Debug for DirWatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DirWatch")
    }
}

/// Loads `dir` now, then reloads it on every change until the returned handle is dropped.
pub fn watch_dir(engine: Arc<PolicyEngine>, dir: PathBuf) -> Result<DirWatch, notify::Error> {
    let report = engine.load_dir(&dir);
    for (tenant, error) in &report.rejected {
        tracing::error!(tenant, error, "policy bundle rejected at start");
    }
    let (tx, rx) = std::sync::mpsc::channel::<()>();
    let mut watcher = notify::recommended_watcher(move |ev: notify::Result<notify::Event>| {
        if ev.is_ok_and(|e| !e.kind.is_access()) {
            let _ = tx.send(());
        }
    })?;
    watcher.watch(&dir, RecursiveMode::Recursive)?;
    let (stop_tx, stop_rx) = std::sync::mpsc::sync_channel::<()>(1);
    std::thread::Builder::new()
        .name("policy-watch".into())
        .spawn(move || {
            loop {
                // Wait for a change (or the handle being dropped).
                match rx.recv_timeout(Duration::from_millis(500)) {
                    Ok(()) => {}
                    Err(RecvTimeoutError::Timeout) => {
                        if let Err(std::sync::mpsc::TryRecvError::Disconnected) = stop_rx.try_recv()
                        {
                            return;
                        }
                        continue;
                    }
                    Err(RecvTimeoutError::Disconnected) => return,
                }
                // Then for quiet.
                loop {
                    match rx.recv_timeout(DEBOUNCE) {
                        Ok(()) => continue,
                        Err(RecvTimeoutError::Timeout) => break,
                        Err(RecvTimeoutError::Disconnected) => return,
                    }
                }
                let report = engine.load_dir(&dir);
                for (tenant, revision) in &report.loaded {
                    tracing::info!(tenant, revision, "policy bundle reloaded");
                }
                for (tenant, error) in &report.rejected {
                    tracing::error!(
                        tenant,
                        error,
                        "policy bundle rejected; the previous one keeps serving"
                    );
                }
            }
        })
        .map_err(notify::Error::io)?;
    Ok(DirWatch {
        _watcher: watcher,
        _stop: stop_tx,
    })
}

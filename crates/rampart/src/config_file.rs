//! The config file as a config source: polled for changes (which survives editors that
//! replace files and Kubernetes' symlink swaps) and read again on SIGHUP. What it reads goes
//! to the gateway's one `apply`, like every other source's.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use rampart_proxy::source::{Applier, ConfigSource, SourceFuture};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

pub(crate) struct FileSource {
    pub(crate) path: PathBuf,
    /// How often the file is compared with what was last read; zero: only on SIGHUP.
    pub(crate) every: Duration,
    /// The bytes the running config came from: an unchanged file is not applied again.
    pub(crate) seen: Vec<u8>,
    /// Notified on SIGHUP: the file is read and applied even when unchanged.
    pub(crate) hup: Arc<Notify>,
}

impl FileSource {
    /// One look at the file. An unreadable file is a rejection only when asked for (SIGHUP):
    /// while polling, a file briefly missing during a rename is not an error.
    async fn check(&mut self, applier: &Applier, forced: bool) {
        applier.checked();
        let bytes = match std::fs::read(&self.path) {
            Ok(b) => b,
            Err(source) if forced => {
                let e = rampart_config::ConfigError::Read {
                    path: self.path.display().to_string(),
                    source,
                };
                let _ = applier.apply(Err(e)).await;
                return;
            }
            Err(_) => return,
        };
        if !forced && bytes == self.seen {
            return;
        }
        tracing::info!(path = %self.path.display(), forced, "reading the config file");
        let parsed = applier.parse_bytes(&bytes);
        self.seen = bytes;
        // The gateway records the outcome.
        let _ = applier.apply(parsed).await;
    }
}

impl ConfigSource for FileSource {
    fn name(&self) -> &'static str {
        "file"
    }

    fn run(mut self: Box<Self>, applier: Applier, stop: CancellationToken) -> SourceFuture {
        Box::pin(async move {
            let hup = self.hup.clone();
            loop {
                let poll = async {
                    if self.every.is_zero() {
                        std::future::pending::<()>().await;
                    }
                    tokio::time::sleep(self.every).await;
                };
                let forced = tokio::select! {
                    () = stop.cancelled() => return,
                    () = hup.notified() => true,
                    () = poll => false,
                };
                self.check(&applier, forced).await;
            }
        })
    }
}

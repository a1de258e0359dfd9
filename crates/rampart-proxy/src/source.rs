//! Config sources: where new configs come from. The binary watches a file, the admin API
//! takes `PUT /config`; the control plane and the operator come next. A source only reads:
//! it hands each config (or the error reading it) to its [`Applier`], the one way into the
//! gateway, which validates, versions, swaps and records the outcome (metrics,
//! `/config_dump`'s `last_reload_error`) the same way whatever the source.

use std::future::Future;
use std::pin::Pin;
use std::sync::Weak;

use bytes::Bytes;
use rampart_config::{Config, ConfigError};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::{Gateway, GatewayError};

pub type SourceFuture = Pin<Box<dyn Future<Output = ()> + Send>>;

/// A place new configs come from. `run` is spawned on the control runtime and returns when
/// `stop` is cancelled (at shutdown).
pub trait ConfigSource: Send + 'static {
    /// Names the source in logs and rejections (`file`, `admin`, `xds`).
    fn name(&self) -> &'static str;

    /// Whether the gateway waits for this source's first config before it reports ready
    /// (`/ready`), as Envoy's init manager waits for the first xDS response.
    fn warms(&self) -> bool {
        false
    }

    fn run(self: Box<Self>, applier: Applier, stop: CancellationToken) -> SourceFuture;
}

/// The gateway's one way in, as sources hold it (weakly: a source never keeps a stopped
/// gateway alive).
#[derive(Clone)]
pub struct Applier {
    pub(crate) gateway: Weak<Gateway>,
    pub(crate) origin: &'static str,
}

impl Applier {
    /// Applies `config`, or records why there is none (a file that does not parse): either
    /// way the outcome is counted and kept as the last error. Returns the new version.
    pub async fn apply(&self, config: Result<Config, ConfigError>) -> Result<u64, GatewayError> {
        match self.gateway.upgrade() {
            Some(gw) => {
                let result = gw.apply(self.origin, config).await;
                if result.is_ok() {
                    gw.warmed();
                }
                result
            }
            None => Err(GatewayError::Stopped),
        }
    }

    /// Counts one look for a new config (`rampart_config_source_checks_total{source}`), so
    /// that tests and operators can tell a source is alive.
    pub fn checked(&self) {
        if let Some(gw) = self.gateway.upgrade() {
            gw.metrics().source_checked(self.origin);
        }
    }

    /// Parses and validates YAML with the gateway's filters, so a filter's config errors
    /// come with the rest.
    pub fn parse_yaml(&self, text: &str) -> Result<Config, ConfigError> {
        match self.gateway.upgrade() {
            Some(gw) => rampart_config::from_yaml_with(text, gw.filters()),
            None => rampart_config::from_yaml(text),
        }
    }

    /// Bytes as read from a file or a request body: UTF-8 YAML.
    pub fn parse_bytes(&self, bytes: &[u8]) -> Result<Config, ConfigError> {
        let text = std::str::from_utf8(bytes).map_err(|e| ConfigError::Parse {
            path: "(root)".into(),
            message: format!("not UTF-8: {e}"),
        })?;
        self.parse_yaml(text)
    }
}

/// A config sent to the admin API, and where its outcome goes.
pub(crate) struct AdminPush {
    pub(crate) yaml: Bytes,
    pub(crate) reply: oneshot::Sender<Result<u64, GatewayError>>,
}

/// The admin API's `PUT /config` as a source: the admin handler sends what it received here.
pub(crate) struct AdminSource {
    pub(crate) inbox: mpsc::Receiver<AdminPush>,
}

impl ConfigSource for AdminSource {
    fn name(&self) -> &'static str {
        "admin"
    }

    fn run(mut self: Box<Self>, applier: Applier, stop: CancellationToken) -> SourceFuture {
        Box::pin(async move {
            loop {
                let push = tokio::select! {
                    () = stop.cancelled() => return,
                    p = self.inbox.recv() => match p {
                        Some(p) => p,
                        None => return,
                    },
                };
                let result = applier.apply(applier.parse_bytes(&push.yaml)).await;
                // The client may have gone; the outcome is recorded either way.
                let _ = push.reply.send(result);
            }
        })
    }
}

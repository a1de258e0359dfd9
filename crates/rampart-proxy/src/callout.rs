//! Requests filters send on their own to the gateway's clusters (a plugin's HTTP callouts):
//! through the cluster's load balancer, connection pool and circuit breaker, like proxied
//! requests, with a deadline and a cap on the answer's size.

use std::sync::{Arc, OnceLock, Weak};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, LengthLimitError, Limited};

use crate::Shared;
use crate::body::ProxyBody;
use crate::upstream::ResponseTail;

/// A filter's way to the gateway's clusters; get it with `env.get::<Upstreams>()` at build.
/// Each call uses the config version serving at that moment.
#[derive(Clone, Default)]
pub struct Upstreams(Arc<OnceLock<Weak<Shared>>>);

/// Why a callout got no answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CalloutError {
    #[error("no cluster named {0:?}")]
    NoCluster(String),
    #[error("the gateway is shutting down")]
    Stopped,
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("the answer is larger than {0} bytes")]
    TooLarge(usize),
    #[error("{0}")]
    Upstream(String),
}

impl Upstreams {
    pub(crate) fn attach(&self, shared: &Arc<Shared>) {
        let _ = self.0.set(Arc::downgrade(shared));
    }

    /// Sends `req` (its URI in origin form, its `host` header set) to a usable endpoint of
    /// `cluster`, and reads the answer whole.
    pub async fn call(
        &self,
        cluster: &str,
        req: Request<Bytes>,
        timeout: Duration,
        max_body: usize,
    ) -> Result<Response<Bytes>, CalloutError> {
        let shared = self
            .0
            .get()
            .and_then(Weak::upgrade)
            .ok_or(CalloutError::Stopped)?;
        let c = shared
            .snapshot
            .load()
            .clusters
            .get(cluster)
            .cloned()
            .ok_or_else(|| CalloutError::NoCluster(cluster.to_owned()))?;
        drop(shared);
        let work = async move {
            let failed = |e: crate::error::ProxyError| CalloutError::Upstream(e.to_string());
            let guard = c.pick(None).map_err(failed)?;
            let ep = guard.endpoint().clone();
            let (parts, body) = req.into_parts();
            let up = Request::from_parts(parts, ProxyBody::full(body));
            let (resp, lease) = c.send(0, &ep, up).await.map_err(failed)?;
            let (parts, body) = resp.into_parts();
            let body = ProxyBody::upstream(body, ResponseTail::new(guard, lease));
            let bytes = Limited::new(body, max_body)
                .collect()
                .await
                .map_err(|e| {
                    if e.downcast_ref::<LengthLimitError>().is_some() {
                        CalloutError::TooLarge(max_body)
                    } else {
                        CalloutError::Upstream(e.to_string())
                    }
                })?
                .to_bytes();
            Ok(Response::from_parts(parts, bytes))
        };
        tokio::time::timeout(timeout, work)
            .await
            .map_err(|_| CalloutError::Timeout(timeout))?
    }
}

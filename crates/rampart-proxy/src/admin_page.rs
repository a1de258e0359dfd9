//! The seam for pages on the admin port (the binary's dashboard): a page is registered under
//! a path prefix in [`crate::Plugins::admin_pages`] and answers every request below it that
//! carries the admin token or a browser session (`/ui/login`). It reads the gateway through
//! [`AdminApi`], the admin API's own GET handlers, so a page shows exactly what `curl`
//! and the CLI see; changes go from the browser to the admin API itself.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use bytes::Bytes;
use http::{Response, StatusCode};
use http_body_util::combinators::BoxBody;

/// A response body on the admin port: whole, or streamed (server-sent events).
pub type AdminBody = BoxBody<Bytes, Infallible>;

/// What a page's handler returns.
pub type PageFuture = Pin<Box<dyn Future<Output = Response<AdminBody>> + Send>>;

/// Pages served under a prefix of the admin port.
pub trait AdminPage: Send + Sync {
    /// The path prefix, e.g. `/ui`: the page gets that path and every path below it.
    fn prefix(&self) -> &'static str;

    /// Answers an authenticated request (its head; pages take no bodies).
    fn serve(&self, req: http::request::Parts, api: AdminApi) -> PageFuture;
}

/// In a page request's extensions: when the admin port will close the connection (every
/// admin connection has a lifetime). A page that streams ends its body a little before, so
/// the browser reconnects cleanly (an `EventSource` does so by itself).
#[derive(Debug, Clone, Copy)]
pub struct StreamUntil(pub tokio::time::Instant);

/// One admin API answer: its status and body.
#[derive(Debug, Clone)]
pub struct ApiResponse {
    pub status: StatusCode,
    pub body: Bytes,
}

type Getter = dyn Fn(&str) -> ApiResponse + Send + Sync;

/// The admin API's read side, in process: `get("/clusters")` answers what
/// `GET /clusters` would.
#[derive(Clone)]
pub struct AdminApi {
    get: Arc<Getter>,
}

impl AdminApi {
    pub(crate) fn new(get: Arc<Getter>) -> Self {
        Self { get }
    }

    /// `GET path` on the admin API (`/metrics`, `/clusters`, `/config_dump`, `/functions`,
    /// `/policy/tenants`, `/ready`).
    pub fn get(&self, path: &str) -> ApiResponse {
        (self.get)(path)
    }

    /// `GET path` parsed as JSON; None when it does not answer 200 with JSON.
    pub fn get_json(&self, path: &str) -> Option<serde_json::Value> {
        let r = self.get(path);
        (r.status == StatusCode::OK)
            .then(|| serde_json::from_slice(&r.body).ok())
            .flatten()
    }
}

impl std::fmt::Debug for AdminApi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AdminApi")
    }
}

//! The seam for routes answered by a function (`function: NAME`) instead of a cluster: a
//! runtime the binary links (`rampart-fn`, WASI-HTTP components) registers itself in
//! [`crate::Plugins::functions`]; this crate only hands it requests. Functions are deployed
//! and removed at run time without a config change, so a route may name one that is not
//! (or no longer) there: the runtime answers that request itself (404).

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;

use http::{HeaderValue, Request, Response};
use hyper::body::Incoming;

use crate::body::ProxyBody;
use crate::filter::BuildEnv;

/// What the gateway knows of a request a function answers.
#[derive(Debug, Clone)]
pub struct Invocation {
    /// The request's `x-request-id` (kept or generated): the function's log lines carry it.
    pub request_id: HeaderValue,
    pub client: SocketAddr,
    /// `http` or `https`, as the client connected.
    pub scheme: &'static str,
    /// The route's (or listener's) request body limit, if any.
    pub body_limit: Option<u64>,
}

/// A function's answer, produced on the worker serving the request.
pub type FunctionFuture = Pin<Box<dyn Future<Output = Response<ProxyBody>> + Send>>;

/// A runtime serving deployed functions.
pub trait FunctionHost: Send + Sync + 'static {
    /// Called once when the gateway starts, with what outlives config versions (metrics,
    /// the way to the gateway's clusters for the functions' outgoing requests).
    fn attach(&self, env: &BuildEnv);

    /// Answers `req` (normalised by the gateway: origin-form URI, Host set) with function
    /// `name`. Every failure becomes a response; nothing here may panic on a guest's account.
    fn invoke(&self, name: &str, req: Request<Incoming>, call: Invocation) -> FunctionFuture;

    /// `GET /functions…` on the admin port (behind its token): `path` is what follows
    /// `/functions`; `None` is a 404.
    fn admin(&self, path: &str) -> Option<serde_json::Value>;
}

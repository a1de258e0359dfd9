//! The filter seam: what policy, validation, authentication and plugins plug into.
//!
//! ```text
//!  downstream ──► request headers ──► request body chunks ──► upstream
//!                 listener filters,    (observers, same order)
//!                 then route filters
//!  downstream ◄── response body chunks ◄── response headers ◄── upstream
//!                 (observers, reverse)     route filters, then listener filters
//! ```
//!
//! A header phase returns [`Flow`]: continue, answer locally (ending the request early; later
//! filters and the upstream are skipped), or an async future for filters that must wait (a
//! JWKS fetch, a remote policy). Synchronous filters return without allocating; a route with
//! no filters allocates nothing at all for this seam. Filters that want body chunks hand out
//! a per-request [`BodyObserver`] after the header phase; observers see each chunk in order
//! and may rewrite or reject it. Per-request state shared between filters lives in
//! [`RequestContext::extensions`].

mod registry;

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http::{HeaderValue, Response, request, response};

pub use self::registry::{BuildEnv, FilterBuildError, FilterFactory, FilterRegistry};
pub use crate::body::BodyReject;
use crate::body::ProxyBody;

/// Per-request facts visible to every filter.
#[derive(Debug)]
pub struct RequestContext {
    pub request_id: HeaderValue,
    pub client_addr: SocketAddr,
    pub listener: Arc<str>,
    pub route: Arc<str>,
    /// The cluster the request will be forwarded to, when the route forwards.
    pub cluster: Option<Arc<str>>,
    pub started: Instant,
    /// Who produced the response the response phases see (set by the proxy before they
    /// run; `None` during the request phases).
    pub response_source: Option<ResponseSource>,
    /// Typed data filters pass to each other (e.g. verified JWT claims for the policy filter).
    pub extensions: http::Extensions,
    /// The tenant a policy decided for (set by the `authz` filter), so that what is told
    /// about the request afterwards (flow labels) can name it.
    pub tenant: Option<Arc<str>>,
}

/// The claims of a verified JWT, put into [`RequestContext::extensions`] by the `jwt` filter
/// for the filters after it (e.g. an authorization policy). Absent when the request carried
/// no token and the filter is `optional`. The value is the token's payload as sent, usually a
/// JSON object (`sub`, `iss`, `aud`, `exp`, custom claims).
#[derive(Debug, Clone)]
pub struct JwtClaims(pub Arc<serde_json::Value>);

/// The API operation a request was matched to (put in [`RequestContext::extensions`] by the
/// `openapi` filter): `{"id", "method", "path", "tags", "security"}`, so that a policy after
/// it can decide by operation ("tag admin needs role admin").
#[derive(Debug, Clone)]
pub struct ApiOperation(pub Arc<serde_json::Value>);

/// Who produced the response the response phases see ([`RequestContext::response_source`]),
/// so that a filter checks only what it should: the `openapi` filter validates the
/// upstream's answers, not a 401 from `jwt` or its own 400.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResponseSource {
    /// The upstream, or the route's function.
    Upstream,
    /// The gateway itself: a filter's answer, a direct response or redirect, an error.
    Local,
}

pub type FilterFuture<'a> = Pin<Box<dyn Future<Output = Verdict> + Send + 'a>>;

/// What a header phase decided.
#[allow(clippy::large_enum_variant)] // boxing would allocate on every local reply
pub enum Flow<'a> {
    Continue,
    /// End the request here with this response.
    Respond(Response<ProxyBody>),
    /// Decide later.
    Async(FilterFuture<'a>),
}

/// The outcome of an async header phase.
#[allow(clippy::large_enum_variant)] // as for `Flow`
pub enum Verdict {
    Continue,
    Respond(Response<ProxyBody>),
}

impl<'a> Flow<'a> {
    pub async fn resolve(self) -> Verdict {
        match self {
            Self::Continue => Verdict::Continue,
            Self::Respond(r) => Verdict::Respond(r),
            Self::Async(f) => f.await,
        }
    }
}

/// Sees body chunks of one request or response, in order, then its trailers if any.
///
/// An observer may rewrite a chunk, or hold it back by leaving it empty (to buffer) and
/// release what it held in a later chunk; the chunk with `end_of_stream` comes exactly
/// once, before any trailers, and is where whatever is held must go out.
pub trait BodyObserver: Send {
    fn on_data(&mut self, chunk: &mut Bytes, end_of_stream: bool) -> Result<(), BodyReject>;

    /// Whether what it lets through is, byte for byte, what came in (it may hold chunks
    /// back or refuse the body, never change it): then the request keeps its
    /// `content-length` (and its framing upstream) instead of going out chunked.
    fn keeps_length(&self) -> bool {
        false
    }

    fn on_trailers(&mut self, _trailers: &mut http::HeaderMap) -> Result<(), BodyReject> {
        Ok(())
    }
}

/// A filter. Implementations are shared by all requests and must be cheap to call.
pub trait HttpFilter: Send + Sync {
    fn name(&self) -> &'static str;

    fn on_request_headers<'a>(
        &'a self,
        _ctx: &'a mut RequestContext,
        _req: &'a mut request::Parts,
    ) -> Flow<'a> {
        Flow::Continue
    }

    /// Called after all request-header phases passed.
    fn request_body_observer(&self, _ctx: &RequestContext) -> Option<Box<dyn BodyObserver>> {
        None
    }

    fn on_response_headers<'a>(
        &'a self,
        _ctx: &'a mut RequestContext,
        _resp: &'a mut response::Parts,
    ) -> Flow<'a> {
        Flow::Continue
    }

    fn response_body_observer(
        &self,
        _ctx: &RequestContext,
        _resp: &response::Parts,
    ) -> Option<Box<dyn BodyObserver>> {
        None
    }
}

pub type FilterRef = Arc<dyn HttpFilter>;

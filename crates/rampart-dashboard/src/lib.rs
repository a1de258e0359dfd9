//! Rampart's dashboard, served on the admin port under `/ui` to callers with the admin token
//! or a browser session (the admin port's `/ui/login`):
//!
//! ```text
//! GET /ui                  the page (one document; pages are #overview, #routes, ...)
//! GET /ui/assets/<name>    its script, styles and icon, by content hash
//! GET /ui/events           server-sent events: every topic's latest value, then changes
//! ```
//!
//! The page reads nothing else on its own: the feed (`live.rs`) carries what the admin API's
//! GET handlers answer (`/metrics` turned into rates and quantiles by `traffic.rs`,
//! `/clusters`, `/config_dump`, `/policy/tenants`, `/functions`) and what the binary's
//! [`Panel`]s read (store, control plane, flows). What the page changes, it changes through
//! the admin API (`POST /policy/tenants/<name>/decide`, `PUT /policy/tenants/<name>`), the
//! same calls the CLI makes.

mod assets;
mod live;
pub mod openmetrics;
mod traffic;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderName, HeaderValue, Response, StatusCode, header};
use http_body_util::{BodyExt, Full};
use rampart_proxy::admin_page::{AdminApi, AdminBody, AdminPage, PageFuture, StreamUntil};

pub use live::Panel;

/// The dashboard, to register in [`rampart_proxy::Plugins::admin_pages`].
pub struct Dashboard {
    hub: Arc<live::Hub>,
}

impl Dashboard {
    /// With the binary's panels, refreshed every second.
    pub fn new(panels: Vec<Arc<dyn Panel>>) -> Self {
        Self::every(panels, Duration::from_secs(1))
    }

    /// With the feed refreshed every `every`.
    pub fn every(panels: Vec<Arc<dyn Panel>>, every: Duration) -> Self {
        Self {
            hub: live::Hub::new(panels, every),
        }
    }
}

impl AdminPage for Dashboard {
    fn prefix(&self) -> &'static str {
        "/ui"
    }

    fn serve(&self, req: http::request::Parts, api: AdminApi) -> PageFuture {
        let path = req.uri.path();
        let response = match path {
            "/ui" | "/ui/" => page(),
            "/ui/events" => events(
                &self.hub,
                api,
                req.extensions.get::<StreamUntil>().map(|u| u.0),
            ),
            p => match p.strip_prefix("/ui/assets/").and_then(assets::find) {
                Some(a) => asset(a, &req.headers),
                None => text(StatusCode::NOT_FOUND, "not found\n"),
            },
        };
        Box::pin(std::future::ready(response))
    }
}

/// Headers every dashboard response carries.
fn secure(mut r: Response<AdminBody>) -> Response<AdminBody> {
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(assets::CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        HeaderName::from_static("referrer-policy"),
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(
        HeaderName::from_static("cross-origin-opener-policy"),
        HeaderValue::from_static("same-origin"),
    );
    r
}

fn response(
    status: StatusCode,
    content_type: &'static str,
    body: AdminBody,
    cache: &'static str,
) -> Response<AdminBody> {
    let mut r = Response::new(body);
    *r.status_mut() = status;
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static(cache));
    secure(r)
}

fn text(status: StatusCode, body: &'static str) -> Response<AdminBody> {
    response(
        status,
        "text/plain; charset=utf-8",
        Full::new(Bytes::from_static(body.as_bytes())).boxed(),
        "no-store",
    )
}

fn page() -> Response<AdminBody> {
    response(
        StatusCode::OK,
        "text/html; charset=utf-8",
        Full::new(Bytes::from(assets::PAGE.as_str())).boxed(),
        "no-store",
    )
}

fn asset(a: &'static assets::Asset, headers: &http::HeaderMap) -> Response<AdminBody> {
    let fresh = headers
        .get(header::IF_NONE_MATCH)
        .is_some_and(|v| v == a.etag);
    let (status, body) = if fresh {
        (StatusCode::NOT_MODIFIED, Bytes::new())
    } else {
        (StatusCode::OK, Bytes::from_static(a.body))
    };
    let mut r = response(
        status,
        a.content_type,
        Full::new(body).boxed(),
        "public, max-age=31536000, immutable",
    );
    r.headers_mut().insert(header::ETAG, a.etag.clone());
    r
}

fn events(
    hub: &Arc<live::Hub>,
    api: AdminApi,
    until: Option<tokio::time::Instant>,
) -> Response<AdminBody> {
    response(
        StatusCode::OK,
        "text/event-stream",
        hub.subscribe(api, until).boxed(),
        "no-store",
    )
}

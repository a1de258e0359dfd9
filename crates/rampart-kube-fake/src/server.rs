//! The HTTP/1.1 server: accepts connections, logs each request, routes it to the store and
//! answers JSON (objects, lists, `Status` errors) or a watch stream.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::header::{ACCEPT, CONTENT_TYPE, HeaderValue};
use http::request::Parts;
use http::{Method, Request, Response, StatusCode};
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio::task::JoinSet;

use crate::Shared;
use crate::error::ApiError;
use crate::path::{ObjRef, Query, Res, Route, parse_path, parse_query};
use crate::select::Selector;
use crate::view::View;
use crate::watch::{self, WatchSpec};
use crate::write::{DeleteOptions, PatchKind};

/// The default (and maximum useful) watch length, as the server's.
const DEFAULT_WATCH_TIMEOUT: Duration = Duration::from_secs(300);

/// A response body: a whole JSON document, or a watch's lines as they come.
pub(crate) enum RespBody {
    Full(Option<Bytes>),
    Stream(mpsc::Receiver<Bytes>),
}

impl Body for RespBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        match self.get_mut() {
            RespBody::Full(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
            RespBody::Stream(rx) => rx
                .poll_recv(cx)
                .map(|line| line.map(|b| Ok(Frame::data(b)))),
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self, RespBody::Full(None))
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            RespBody::Full(bytes) => {
                SizeHint::with_exact(bytes.as_ref().map_or(0, |b| b.len() as u64))
            }
            RespBody::Stream(_) => SizeHint::default(),
        }
    }
}

/// Serves connections until the task is aborted (which drops, so aborts, every connection).
pub(crate) async fn serve(listener: TcpListener, shared: Arc<Shared>) {
    let mut connections = JoinSet::new();
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        while connections.try_join_next().is_some() {}
        let shared = Arc::clone(&shared);
        connections.spawn(async move {
            let service = service_fn(move |req| handle(Arc::clone(&shared), req));
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

fn header(parts: &Parts, name: http::header::HeaderName) -> String {
    parts
        .headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned()
}

async fn handle(
    shared: Arc<Shared>,
    req: Request<Incoming>,
) -> Result<Response<RespBody>, Infallible> {
    let (parts, body) = req.into_parts();
    let path_and_query = parts
        .uri
        .path_and_query()
        .map_or_else(|| parts.uri.path().to_owned(), |pq| pq.as_str().to_owned());
    let content_type = header(&parts, CONTENT_TYPE);
    shared.log(parts.method.as_str(), &path_and_query, &content_type);
    if let Some(error) = shared.injected_failure(parts.method.as_str(), &path_and_query) {
        return Ok(error_response(&error));
    }
    let body = match body.collect().await {
        Ok(body) => body.to_bytes(),
        Err(e) => {
            return Ok(error_response(&ApiError::bad_request(format!(
                "reading the body: {e}"
            ))));
        }
    };
    let ctx = Ctx {
        shared: &shared,
        method: &parts.method,
        view: View::from_accept(&header(&parts, ACCEPT)),
        content_type: media_type(&content_type),
        body: &body,
        query: match parse_query(parts.uri.query().unwrap_or_default()) {
            Ok(query) => query,
            Err(error) => return Ok(error_response(&error)),
        },
    };
    Ok(route(&ctx, parts.uri.path()).unwrap_or_else(|error| error_response(&error)))
}

/// One request, as the handlers read it.
struct Ctx<'a> {
    shared: &'a Arc<Shared>,
    method: &'a Method,
    query: Query,
    view: View,
    /// The media type, lowercased, without parameters.
    content_type: String,
    body: &'a Bytes,
}

fn media_type(content_type: &str) -> String {
    content_type
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase()
}

impl Ctx<'_> {
    fn json_body(&self) -> Result<Value, ApiError> {
        if self.body.is_empty() {
            return Err(ApiError::bad_request("the request needs a body"));
        }
        serde_json::from_slice(self.body).map_err(|e| {
            ApiError::bad_request(format!(
                "the body is not valid JSON (the fake reads only JSON): {e}"
            ))
        })
    }

    /// A JSON body for a create or a replace (415 for other media types).
    fn object_body(&self) -> Result<Value, ApiError> {
        if !matches!(self.content_type.as_str(), "" | "application/json") {
            return Err(ApiError::unsupported_media_type(&self.content_type));
        }
        self.json_body()
    }

    fn selector(&self) -> Result<Selector, ApiError> {
        let q = &self.query;
        Selector::parse(q.label_selector.as_deref(), q.field_selector.as_deref())
    }

    fn reply(&self, code: u16, obj: &Value) -> Response<RespBody> {
        json_response(code, &self.view.object(obj))
    }
}

fn route(ctx: &Ctx<'_>, path: &str) -> Result<Response<RespBody>, ApiError> {
    match parse_path(path)? {
        Route::Version => Ok(json_response(200, &version())),
        Route::Health => Ok(Response::new(RespBody::Full(Some(Bytes::from_static(
            b"ok",
        ))))),
        Route::Collection { res, ns } => collection(ctx, &res, ns.as_deref()),
        Route::Object { obj, status } => object(ctx, &obj, status),
    }
}

fn collection(ctx: &Ctx<'_>, res: &Res, ns: Option<&str>) -> Result<Response<RespBody>, ApiError> {
    let dry_run = ctx.query.dry_run;
    match *ctx.method {
        Method::GET if ctx.query.watch => start_watch(ctx, res, ns),
        Method::GET => {
            let selector = ctx.selector()?;
            let list = ctx.shared.read(|store| {
                let items = store.list(res, ns, &selector);
                let items = items.iter().map(|obj| ctx.view.object(obj)).collect();
                ctx.view.list(
                    &res.api_version,
                    store.kind(res),
                    store.resource_version(),
                    items,
                )
            });
            Ok(json_response(200, &list))
        }
        Method::POST => {
            let body = ctx.object_body()?;
            let created = ctx
                .shared
                .write(|store| store.create(res, ns, body, dry_run))?;
            Ok(ctx.reply(201, &created))
        }
        Method::DELETE => {
            let (selector, opts) = (ctx.selector()?, delete_options(ctx)?);
            let dry_run = dry_run || opts.1;
            let (deleted, kind, rv) = ctx.shared.write(|store| {
                let deleted = store.delete_collection(res, ns, &selector, &opts.0, dry_run);
                (
                    deleted,
                    store.kind(res).map(str::to_owned),
                    store.resource_version(),
                )
            });
            let items = deleted?.iter().map(|obj| ctx.view.object(obj)).collect();
            Ok(json_response(
                200,
                &ctx.view.list(&res.api_version, kind.as_deref(), rv, items),
            ))
        }
        _ => Err(ApiError::method_not_allowed(ctx.method.as_str())),
    }
}

fn object(ctx: &Ctx<'_>, r: &ObjRef, status: bool) -> Result<Response<RespBody>, ApiError> {
    let dry_run = ctx.query.dry_run;
    match *ctx.method {
        Method::GET => {
            let obj = ctx.shared.read(|store| store.get(r).cloned());
            let obj = obj.ok_or_else(|| ApiError::not_found(&r.res, &r.name))?;
            Ok(ctx.reply(200, &obj))
        }
        Method::PUT => {
            let body = ctx.object_body()?;
            let obj = ctx
                .shared
                .write(|store| store.replace(r, body, status, dry_run))?;
            Ok(ctx.reply(200, &obj))
        }
        Method::PATCH => {
            let kind = match ctx.content_type.as_str() {
                "application/merge-patch+json" | "application/strategic-merge-patch+json" => {
                    PatchKind::Merge
                }
                "application/json-patch+json" => PatchKind::Json,
                "application/apply-patch+yaml" => PatchKind::Apply,
                other => return Err(ApiError::unsupported_media_type(other)),
            };
            if kind == PatchKind::Apply && ctx.query.field_manager.is_none() {
                return Err(ApiError::bad_request(
                    "fieldManager: Required value: is required for apply patch",
                ));
            }
            let body = ctx.json_body()?;
            let (obj, created) = ctx
                .shared
                .write(|store| store.patch(r, kind, &body, status, dry_run))?;
            Ok(ctx.reply(if created { 201 } else { 200 }, &obj))
        }
        Method::DELETE if !status => {
            let (opts, body_dry_run) = delete_options(ctx)?;
            let obj = ctx
                .shared
                .write(|store| store.delete(r, &opts, dry_run || body_dry_run))?;
            Ok(ctx.reply(200, &obj))
        }
        _ => Err(ApiError::method_not_allowed(ctx.method.as_str())),
    }
}

/// `DeleteOptions` from the body (if any) and the query, and whether it asks for a dry run.
fn delete_options(ctx: &Ctx<'_>) -> Result<(DeleteOptions, bool), ApiError> {
    let body = if ctx.body.iter().all(u8::is_ascii_whitespace) {
        json!({})
    } else {
        ctx.json_body()?
    };
    let text = |ptr: &str| body.pointer(ptr).and_then(Value::as_str).map(str::to_owned);
    let policy = text("/propagationPolicy").or_else(|| ctx.query.propagation_policy.clone());
    let dry_run = body
        .get("dryRun")
        .and_then(Value::as_array)
        .is_some_and(|d| d.iter().any(|v| v == "All"));
    let opts = DeleteOptions {
        orphan: policy.as_deref() == Some("Orphan")
            || body.get("orphanDependents") == Some(&json!(true)),
        uid: text("/preconditions/uid"),
        resource_version: text("/preconditions/resourceVersion"),
    };
    Ok((opts, dry_run))
}

fn start_watch(ctx: &Ctx<'_>, res: &Res, ns: Option<&str>) -> Result<Response<RespBody>, ApiError> {
    let from = match ctx.query.resource_version.as_deref() {
        None | Some("0") => None,
        Some(rv) => Some(
            rv.parse::<u64>()
                .map_err(|_| ApiError::bad_request(format!("invalid resourceVersion {rv:?}")))?,
        ),
    };
    let spec = WatchSpec {
        res: res.clone(),
        ns: ns.map(str::to_owned),
        selector: ctx.selector()?,
        from,
        send_initial_events: ctx.query.send_initial_events,
        bookmarks: ctx.query.allow_bookmarks,
        timeout: ctx.query.timeout.unwrap_or(DEFAULT_WATCH_TIMEOUT),
        view: ctx.view,
    };
    let rx = watch::start(Arc::clone(ctx.shared), spec);
    let mut response = Response::new(RespBody::Stream(rx));
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    Ok(response)
}

fn json_response(code: u16, value: &Value) -> Response<RespBody> {
    let bytes = serde_json::to_vec(value).unwrap_or_default();
    let mut response = Response::new(RespBody::Full(Some(Bytes::from(bytes))));
    *response.status_mut() =
        StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

fn error_response(error: &ApiError) -> Response<RespBody> {
    json_response(error.code(), &error.to_status())
}

fn version() -> Value {
    json!({
        "major": "1",
        "minor": "33",
        "gitVersion": "v1.33.0-rampart-kube-fake",
        "gitCommit": "0000000000000000000000000000000000000000",
        "gitTreeState": "clean",
        "buildDate": "1970-01-01T00:00:00Z",
        "goVersion": "go1.24.0",
        "compiler": "gc",
        "platform": "linux/amd64",
    })
}

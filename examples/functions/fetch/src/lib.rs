//! `fetch`: calls an upstream with `wasi:http/outgoing-handler`: `GET http://<UPSTREAM>` (by
//! default `backend`) with the path `UPSTREAM_PATH` or else the request's own path and query,
//! and answers `200 upstream <status>: <its body>` (the first MiB of it), or
//! `502 upstream error: <the error code>` when the call fails.

#[allow(dead_code)]
#[path = "../../common.rs"]
mod common;

use wasip2::exports::http::incoming_handler::Guest;
use wasip2::http::outgoing_handler;
use wasip2::http::types::{
    ErrorCode, Fields, IncomingRequest, Method, OutgoingRequest, ResponseOutparam, Scheme,
};

/// The most of the upstream's body that is read and relayed.
const BODY_LIMIT: usize = 1024 * 1024;

struct Fetch;

impl Guest for Fetch {
    fn handle(request: IncomingRequest, out: ResponseOutparam) {
        let (_, path) = common::log_request("fetch", &request);
        drop(request);
        let authority = std::env::var("UPSTREAM").unwrap_or_else(|_| "backend".to_owned());
        let path = std::env::var("UPSTREAM_PATH").unwrap_or(path);
        match call(&authority, &path) {
            Ok((status, body)) => {
                let mut answer = format!("upstream {status}: ").into_bytes();
                answer.extend_from_slice(&body);
                common::respond(out, 200, "text/plain", &answer);
            }
            Err(code) => common::respond(
                out,
                502,
                "text/plain",
                format!("upstream error: {code:?}").as_bytes(),
            ),
        }
    }
}

/// `GET http://<authority><path>`: the status and the first `BODY_LIMIT` bytes of the body.
fn call(authority: &str, path: &str) -> Result<(u16, Vec<u8>), ErrorCode> {
    let request = OutgoingRequest::new(Fields::new());
    let invalid = |_| ErrorCode::HttpRequestUriInvalid;
    request.set_method(&Method::Get).map_err(invalid)?;
    request.set_scheme(Some(&Scheme::Http)).map_err(invalid)?;
    request.set_authority(Some(authority)).map_err(invalid)?;
    request.set_path_with_query(Some(path)).map_err(invalid)?;

    let future = outgoing_handler::handle(request, None)?;
    let ready = future.subscribe();
    ready.block();
    drop(ready);
    let response = match future.get() {
        Some(Ok(response)) => response?,
        Some(Err(())) => {
            return Err(ErrorCode::InternalError(Some(
                "the response was already taken".to_owned(),
            )));
        }
        None => {
            return Err(ErrorCode::InternalError(Some(
                "no response once ready".to_owned(),
            )));
        }
    };
    drop(future);

    let status = response.status();
    let body = response
        .consume()
        .map_err(|()| ErrorCode::InternalError(Some("the body was already taken".to_owned())))?;
    let bytes = common::read_body(body, BODY_LIMIT).map_err(|e| {
        wasip2::http::types::http_error_code(&e)
            .unwrap_or_else(|| ErrorCode::InternalError(Some(e.to_debug_string())))
    })?;
    Ok((status, bytes))
}

wasip2::http::proxy::export!(Fetch);

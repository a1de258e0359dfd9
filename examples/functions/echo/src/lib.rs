//! `echo`: streams the request body back as it arrives, with the request's content-type
//! (or `application/octet-stream`), each request header `NAME` as `x-echo-NAME` (except the
//! framing ones: content-type, content-length, transfer-encoding, connection, host), and
//! `x-echo-method` and `x-echo-path`.

#[allow(dead_code)]
#[path = "../../common.rs"]
mod common;

use wasip2::exports::http::incoming_handler::Guest;
use wasip2::http::types::{Fields, IncomingRequest, ResponseOutparam};
use wasip2::io::streams::StreamError;

/// Request headers not echoed: they describe this message's framing, not its content.
const SKIPPED: [&str; 5] = [
    "content-type",
    "content-length",
    "transfer-encoding",
    "connection",
    "host",
];

struct Echo;

impl Guest for Echo {
    fn handle(request: IncomingRequest, out: ResponseOutparam) {
        let (method, path) = common::log_request("echo", &request);

        let request_headers = request.headers();
        let entries = request_headers.entries();
        drop(request_headers);
        let headers = Fields::new();
        let mut content_type = None;
        for (name, value) in entries {
            let name = name.to_ascii_lowercase();
            if name == "content-type" && content_type.is_none() {
                content_type = Some(value.clone());
            }
            if SKIPPED.contains(&name.as_str()) {
                continue;
            }
            // Every name here is one the client could send, so its `x-echo-` form is valid too;
            // one the host still refuses is left out rather than failing the request.
            let _ = headers.append(&format!("x-echo-{name}"), &value);
        }
        let content_type = content_type.unwrap_or_else(|| b"application/octet-stream".to_vec());
        let _ = headers.append("content-type", &content_type);
        let _ = headers.append("x-echo-method", method.as_bytes());
        let _ = headers.append("x-echo-path", path.as_bytes());

        let body = request.consume().expect("the request body is taken once");
        let input = body.stream().expect("the body's stream is taken once");
        let writer = common::Writer::start(out, 200, headers);
        loop {
            match input.blocking_read(64 * 1024) {
                Ok(chunk) => {
                    if let Err(e) = writer.write(&chunk) {
                        eprintln!("echo: cannot write the response body: {e:?}");
                        return;
                    }
                }
                Err(StreamError::Closed) => break,
                Err(StreamError::LastOperationFailed(e)) => {
                    // Not finishing the body tells the host the response is incomplete.
                    eprintln!(
                        "echo: cannot read the request body: {}",
                        e.to_debug_string()
                    );
                    return;
                }
            }
        }
        drop(input);
        drop(body);
        writer.finish();
    }
}

wasip2::http::proxy::export!(Echo);

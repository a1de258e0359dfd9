//! Helpers shared by the example functions. Each crate includes this file with
//! `#[path = "../../common.rs"] mod common;` so that every function stays one component
//! with no dependency beyond `wasip2` (and `serde_json` for `json`).

use wasip2::http::types::{
    Fields, IncomingBody, IncomingRequest, IoError, Method, OutgoingBody, OutgoingResponse,
    OutputStream, ResponseOutparam,
};
use wasip2::io::streams::StreamError;

/// The most a wasi stream accepts in one `blocking-write-and-flush`.
const WRITE_LIMIT: usize = 4096;
/// How much to ask for in one `blocking-read`.
const READ_CHUNK: usize = 64 * 1024;

/// The method as it goes on the wire (`GET`, or the extension method itself).
pub fn method_name(method: &Method) -> &str {
    match method {
        Method::Get => "GET",
        Method::Head => "HEAD",
        Method::Post => "POST",
        Method::Put => "PUT",
        Method::Delete => "DELETE",
        Method::Connect => "CONNECT",
        Method::Options => "OPTIONS",
        Method::Trace => "TRACE",
        Method::Patch => "PATCH",
        Method::Other(other) => other,
    }
}

/// Prints `<function>: <METHOD> <path_with_query>` to stdout (the host keeps stdout as the
/// function's log) and returns the method and the path with its query.
pub fn log_request(function: &str, request: &IncomingRequest) -> (String, String) {
    let method = method_name(&request.method()).to_owned();
    let path = request.path_with_query().unwrap_or_default();
    println!("{function}: {method} {path}");
    (method, path)
}

/// Headers with just a `content-type`.
pub fn content_type(value: &str) -> Fields {
    let fields = Fields::new();
    fields
        .append("content-type", value.as_bytes())
        .expect("content-type is a valid header");
    fields
}

/// A response whose headers are sent, being written.
pub struct Writer {
    // Dropped before `body`, as a child resource must be.
    stream: OutputStream,
    body: OutgoingBody,
}

impl Writer {
    /// Sends the status and headers; the body follows with `write` and `finish`.
    pub fn start(out: ResponseOutparam, status: u16, headers: Fields) -> Self {
        let response = OutgoingResponse::new(headers);
        response
            .set_status_code(status)
            .expect("a valid status code");
        let body = response.body().expect("the body is taken once");
        ResponseOutparam::set(out, Ok(response));
        let stream = body.write().expect("the body's stream is taken once");
        Writer { stream, body }
    }

    /// Writes all of `bytes`, blocking while the host is not ready for more.
    pub fn write(&self, bytes: &[u8]) -> Result<(), StreamError> {
        for chunk in bytes.chunks(WRITE_LIMIT) {
            self.stream.blocking_write_and_flush(chunk)?;
        }
        Ok(())
    }

    /// Ends the body, so the host knows it is complete. Without this the response is cut off.
    pub fn finish(self) {
        let Writer { stream, body } = self;
        drop(stream);
        if let Err(e) = OutgoingBody::finish(body, None) {
            eprintln!("cannot finish the response body: {e:?}");
        }
    }
}

/// A whole response: `status`, a `content-type` and `body`.
pub fn respond(out: ResponseOutparam, status: u16, content_type_value: &str, body: &[u8]) {
    let writer = Writer::start(out, status, content_type(content_type_value));
    if let Err(e) = writer.write(body) {
        eprintln!("cannot write the response body: {e:?}");
    }
    writer.finish();
}

/// Reads `body` to its end (the stream's `Closed`), or its first `limit` bytes.
pub fn read_body(body: IncomingBody, limit: usize) -> Result<Vec<u8>, IoError> {
    let stream = body.stream().expect("the body's stream is taken once");
    let mut bytes = Vec::new();
    while bytes.len() < limit {
        let want = (limit - bytes.len()).min(READ_CHUNK) as u64;
        match stream.blocking_read(want) {
            Ok(chunk) => bytes.extend_from_slice(&chunk),
            Err(StreamError::Closed) => break,
            Err(StreamError::LastOperationFailed(e)) => return Err(e),
        }
    }
    drop(stream);
    drop(body);
    Ok(bytes)
}

//! Kubernetes `Status` errors, as the API server sends them: HTTP code, `reason`, a message in
//! the server's wording and `details` naming the object and its resource (the plural, which is
//! what the real server puts in `details.kind`).

use std::fmt;

use serde_json::{Map, Value, json};

use crate::res::Res;

/// A failed request, answered as a `Status` object with [`code`](ApiError::code).
///
/// The test-side API of [`FakeApi`](crate::FakeApi) returns it too, so that a test can assert
/// on what a client would have been told.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    code: u16,
    reason: &'static str,
    message: String,
    name: Option<String>,
    group: Option<String>,
    kind: Option<String>,
}

impl ApiError {
    fn new(code: u16, reason: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            code,
            reason,
            message: message.into(),
            name: None,
            group: None,
            kind: None,
        }
    }

    /// Names the object and its resource in `details`.
    fn about(mut self, res: &Res, name: &str) -> Self {
        self.name = Some(name.to_owned());
        self.group = Some(res.group().to_owned()).filter(|g| !g.is_empty());
        self.kind = Some(res.plural.clone());
        self
    }

    /// 400: malformed input (JSON, selector, query parameter, mismatched name or namespace).
    pub(crate) fn bad_request(message: impl Into<String>) -> Self {
        Self::new(400, "BadRequest", message)
    }

    /// 404 for an object that is not stored.
    pub(crate) fn not_found(res: &Res, name: &str) -> Self {
        Self::new(
            404,
            "NotFound",
            format!("{} \"{name}\" not found", res.qualified()),
        )
        .about(res, name)
    }

    /// 404 for a path the fake does not serve.
    pub(crate) fn no_route(path: &str) -> Self {
        Self::new(
            404,
            "NotFound",
            format!("the server could not find the requested resource ({path})"),
        )
    }

    /// 409 when creating an object that exists.
    pub(crate) fn already_exists(res: &Res, name: &str) -> Self {
        let message = format!("{} \"{name}\" already exists", res.qualified());
        Self::new(409, "AlreadyExists", message).about(res, name)
    }

    /// 409 for a stale `resourceVersion` (optimistic concurrency) or a failed precondition.
    pub(crate) fn conflict(res: &Res, name: &str, why: &str) -> Self {
        let message = format!(
            "Operation cannot be fulfilled on {} \"{name}\": {why}",
            res.qualified()
        );
        Self::new(409, "Conflict", message).about(res, name)
    }

    /// 409 with the server's stale-`resourceVersion` wording.
    pub(crate) fn stale(res: &Res, name: &str) -> Self {
        Self::conflict(
            res,
            name,
            "the object has been modified; please apply your changes to the latest version and try again",
        )
    }

    /// 422: the request is well-formed but the server refuses the result.
    pub(crate) fn invalid(res: &Res, name: &str, why: &str) -> Self {
        let message = format!("{} \"{name}\" is invalid: {why}", res.qualified());
        Self::new(422, "Invalid", message).about(res, name)
    }

    /// 422 for a JSON patch that does not apply (a failed `test`, a missing path).
    pub(crate) fn patch_failed(message: impl Into<String>) -> Self {
        Self::new(422, "Invalid", message)
    }

    /// 405 for a method the path does not take.
    pub(crate) fn method_not_allowed(method: &str) -> Self {
        Self::new(
            405,
            "MethodNotAllowed",
            format!("the server does not allow this method on the requested resource ({method})"),
        )
    }

    /// 415 for a body type the fake does not read.
    pub(crate) fn unsupported_media_type(content_type: &str) -> Self {
        Self::new(
            415,
            "UnsupportedMediaType",
            format!(
                "the body of the request was in an unknown format - accepted media types include: application/json, application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml, application/strategic-merge-patch+json (got {content_type:?})"
            ),
        )
    }

    /// 500, as the server answers a create that carries a `resourceVersion`.
    pub(crate) fn internal(message: impl Into<String>) -> Self {
        Self::new(500, "InternalError", message)
    }

    /// 410 for a watch from a `resourceVersion` older than the last compaction.
    pub(crate) fn expired(rv: u64) -> Self {
        let message = format!("too old resource version: {rv}");
        Self::new(410, "Expired", message)
    }

    /// A failure a test asked for ([`FakeApi::fail_next`](crate::FakeApi::fail_next)).
    pub(crate) fn injected(code: u16) -> Self {
        let reason = match code {
            400 => "BadRequest",
            401 => "Unauthorized",
            403 => "Forbidden",
            404 => "NotFound",
            409 => "Conflict",
            410 => "Expired",
            422 => "Invalid",
            429 => "TooManyRequests",
            503 => "ServiceUnavailable",
            504 => "Timeout",
            _ => "InternalError",
        };
        Self::new(code, reason, format!("injected failure ({code} {reason})"))
    }

    /// The HTTP status code.
    pub fn code(&self) -> u16 {
        self.code
    }

    /// The `reason` field (`NotFound`, `Conflict`, ...).
    pub fn reason(&self) -> &str {
        self.reason
    }

    /// The human-readable message.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// The `Status` object the server sends for this error.
    pub fn to_status(&self) -> Value {
        let mut details = Map::new();
        if let Some(name) = &self.name {
            details.insert("name".into(), json!(name));
        }
        if let Some(group) = &self.group {
            details.insert("group".into(), json!(group));
        }
        if let Some(kind) = &self.kind {
            details.insert("kind".into(), json!(kind));
        }
        let mut status = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        });
        if !details.is_empty() {
            status["details"] = Value::Object(details);
        }
        status
    }
}

impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}: {}", self.code, self.reason, self.message)
    }
}

impl std::error::Error for ApiError {}

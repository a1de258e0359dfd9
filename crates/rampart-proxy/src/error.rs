//! Data-plane errors: who is to blame, whether a retry is safe, and the one place that maps an
//! error to an HTTP status.

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode};

use crate::body::ProxyBody;

/// Who caused a failed request. Only `Upstream` failures feed outlier detection, health
/// and retries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Blame {
    Downstream,
    Upstream,
    Internal,
}

impl Blame {
    pub fn label(self) -> &'static str {
        match self {
            Self::Downstream => "downstream",
            Self::Upstream => "upstream",
            Self::Internal => "internal",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("request has no Host header or :authority")]
    MissingHost,
    #[error("{0}")]
    NoRoute(&'static str),
    #[error("request body exceeds the route's limit of {limit} bytes")]
    BodyTooLarge { limit: u64 },
    /// The proxy itself cut the request body short (a size limit or a body filter).
    #[error("{reason}")]
    BodyRejected {
        status: StatusCode,
        reason: String,
        /// The answer a body filter prepared (content type, body), if any.
        answer: Option<Box<(HeaderValue, Bytes)>>,
    },
    /// A circuit breaker of the cluster is open.
    #[error("cluster {cluster:?} is overloaded: {limit} reached")]
    Overflow {
        cluster: String,
        limit: &'static str,
    },
    #[error("cluster {cluster:?} has no endpoint to send to")]
    NoEndpoint { cluster: String },
    #[error("cluster {cluster:?} is not configured")]
    UnknownCluster { cluster: String },
    #[error("could not connect to upstream {endpoint}: {reason}")]
    UpstreamConnect { endpoint: String, reason: String },
    #[error("connecting to upstream {endpoint} timed out")]
    ConnectTimeout { endpoint: String },
    #[error("upstream {endpoint} did not answer within {timeout_ms} ms")]
    UpstreamTimeout { endpoint: String, timeout_ms: u128 },
    #[error("upstream {endpoint} reset or closed the connection: {reason}")]
    UpstreamReset { endpoint: String, reason: String },
    #[error("downstream request body failed: {0}")]
    DownstreamBody(String),
    /// A route's prefix rewrite would leave its prefix (a client's `..` trick).
    #[error("the rewritten path is refused: {reason}")]
    BadRewrite { reason: &'static str },
    #[error("internal error: {0}")]
    Internal(String),
}

impl ProxyError {
    pub fn blame(&self) -> Blame {
        match self {
            Self::MissingHost
            | Self::NoRoute(_)
            | Self::BodyTooLarge { .. }
            | Self::BodyRejected { .. }
            | Self::BadRewrite { .. }
            | Self::DownstreamBody(_) => Blame::Downstream,
            Self::NoEndpoint { .. }
            | Self::Overflow { .. }
            | Self::UpstreamConnect { .. }
            | Self::ConnectTimeout { .. }
            | Self::UpstreamTimeout { .. }
            | Self::UpstreamReset { .. } => Blame::Upstream,
            Self::UnknownCluster { .. } | Self::Internal(_) => Blame::Internal,
        }
    }

    /// Whether sending the same request again could not have been seen by the upstream twice.
    pub fn retry_safe(&self) -> bool {
        matches!(
            self,
            Self::NoEndpoint { .. } | Self::UpstreamConnect { .. } | Self::ConnectTimeout { .. }
        )
    }

    /// The single mapping from error to status.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::MissingHost | Self::DownstreamBody(_) | Self::BadRewrite { .. } => {
                StatusCode::BAD_REQUEST
            }
            Self::NoRoute(_) => StatusCode::NOT_FOUND,
            Self::BodyTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Self::BodyRejected { status, .. } => *status,
            Self::NoEndpoint { .. } | Self::Overflow { .. } => StatusCode::SERVICE_UNAVAILABLE,
            Self::UpstreamConnect { .. } | Self::UpstreamReset { .. } => StatusCode::BAD_GATEWAY,
            Self::ConnectTimeout { .. } | Self::UpstreamTimeout { .. } => {
                StatusCode::GATEWAY_TIMEOUT
            }
            Self::UnknownCluster { .. } | Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// What the client is told: the kind of failure, never an upstream's address or the
    /// underlying error (those go to the log).
    pub fn public_reason(&self) -> std::borrow::Cow<'static, str> {
        use std::borrow::Cow;
        match self {
            Self::MissingHost
            | Self::NoRoute(_)
            | Self::BodyTooLarge { .. }
            | Self::BodyRejected { .. }
            | Self::BadRewrite { .. }
            // These name a cluster (configuration), never an address.
            | Self::NoEndpoint { .. }
            | Self::Overflow { .. } => Cow::Owned(self.to_string()),
            Self::DownstreamBody(_) => Cow::Borrowed("the request body could not be read"),
            Self::UnknownCluster { .. } | Self::Internal(_) => Cow::Borrowed("internal error"),
            Self::UpstreamConnect { .. } => Cow::Borrowed("upstream connect error"),
            Self::ConnectTimeout { .. } => Cow::Borrowed("upstream connect timeout"),
            Self::UpstreamTimeout { .. } => Cow::Borrowed("upstream request timeout"),
            Self::UpstreamReset { .. } => {
                Cow::Borrowed("upstream reset the connection before responding")
            }
        }
    }

    /// A short local response with the public reason; the details are logged.
    pub fn to_response(&self) -> Response<ProxyBody> {
        if let Self::BodyRejected {
            status,
            answer: Some(a),
            ..
        } = self
        {
            let mut resp = Response::new(ProxyBody::full(a.1.clone()));
            *resp.status_mut() = *status;
            resp.headers_mut()
                .insert(http::header::CONTENT_TYPE, a.0.clone());
            resp.headers_mut()
                .insert("x-rampart-local", HeaderValue::from_static("1"));
            return resp;
        }
        let reason = self.public_reason();
        let mut resp = local_response(self.status(), &format!("{reason}\n"));
        // The reason, for gRPC's grpc-message (clients show it).
        if let Ok(v) = HeaderValue::from_str(&reason) {
            resp.headers_mut().insert("x-rampart-error", v);
        }
        if matches!(self, Self::Overflow { .. }) {
            resp.headers_mut()
                .insert("x-rampart-overloaded", HeaderValue::from_static("true"));
        }
        resp
    }
}

/// A plain-text response generated by the proxy itself.
pub fn local_response(status: StatusCode, body: &str) -> Response<ProxyBody> {
    let mut resp = Response::new(ProxyBody::full(Bytes::copy_from_slice(body.as_bytes())));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp.headers_mut()
        .insert("x-rampart-local", HeaderValue::from_static("1"));
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses() {
        let e = |x: ProxyError| x.status().as_u16();
        assert_eq!(e(ProxyError::NoRoute("x")), 404);
        assert_eq!(e(ProxyError::BodyTooLarge { limit: 1 }), 413);
        assert_eq!(
            e(ProxyError::NoEndpoint {
                cluster: "c".into()
            }),
            503
        );
        let ep = || "e".to_owned();
        assert_eq!(
            e(ProxyError::UpstreamConnect {
                endpoint: ep(),
                reason: ep()
            }),
            502
        );
        assert_eq!(
            e(ProxyError::UpstreamReset {
                endpoint: ep(),
                reason: ep()
            }),
            502
        );
        assert_eq!(
            e(ProxyError::UpstreamTimeout {
                endpoint: ep(),
                timeout_ms: 1
            }),
            504
        );
        assert!(ProxyError::ConnectTimeout { endpoint: ep() }.retry_safe());
        assert!(
            !ProxyError::UpstreamTimeout {
                endpoint: ep(),
                timeout_ms: 1
            }
            .retry_safe()
        );
        assert_eq!(ProxyError::MissingHost.blame(), Blame::Downstream);
    }
}

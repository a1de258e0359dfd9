//! `cors`: answers preflights itself and decorates actual responses for allowed origins.

use std::sync::Arc;

use http::{HeaderValue, Method, Response, StatusCode, request, response};
use rampart_config::FieldError;
use rampart_config::filters::cors::{self, Cors};

use crate::body::ProxyBody;
use crate::error::local_response;
use crate::filter::{
    BuildEnv, FilterBuildError, FilterFactory, FilterRef, Flow, HttpFilter, RequestContext,
};

pub struct CorsFactory;

impl FilterFactory for CorsFactory {
    type Config = Cors;

    fn name(&self) -> &'static str {
        "cors"
    }

    fn parse(&self, path: &str, config: &serde_json::Value) -> Result<Cors, Vec<FieldError>> {
        cors::parse(path, config)
    }

    fn build(&self, config: Cors, _env: &BuildEnv) -> Result<FilterRef, FilterBuildError> {
        Ok(Arc::new(CorsFilter(config)))
    }
}

/// CORS: answers preflights itself and decorates actual responses for allowed origins.
pub struct CorsFilter(pub Cors);

/// The allowed origin of the current request, kept between the request and response phases.
#[derive(Clone)]
struct CorsOrigin(HeaderValue);

impl CorsFilter {
    fn allowed(&self, origin: &HeaderValue) -> bool {
        self.0.allow_any_origin
            || origin
                .to_str()
                .is_ok_and(|o| self.0.allow_origins.iter().any(|a| a == o))
    }

    fn allow_origin_value(&self, origin: &HeaderValue) -> HeaderValue {
        if self.0.allow_any_origin && !self.0.allow_credentials {
            HeaderValue::from_static("*")
        } else {
            origin.clone()
        }
    }
}

impl HttpFilter for CorsFilter {
    fn name(&self) -> &'static str {
        "cors"
    }

    fn on_request_headers<'a>(
        &'a self,
        ctx: &'a mut RequestContext,
        req: &'a mut request::Parts,
    ) -> Flow<'a> {
        use http::header::{
            ACCESS_CONTROL_ALLOW_CREDENTIALS, ACCESS_CONTROL_ALLOW_HEADERS,
            ACCESS_CONTROL_ALLOW_METHODS, ACCESS_CONTROL_ALLOW_ORIGIN, ACCESS_CONTROL_MAX_AGE,
            ACCESS_CONTROL_REQUEST_METHOD, ORIGIN, VARY,
        };
        let Some(origin) = req.headers.get(ORIGIN).cloned() else {
            return Flow::Continue;
        };
        let preflight = req.method == Method::OPTIONS
            && req.headers.contains_key(ACCESS_CONTROL_REQUEST_METHOD);
        if !self.allowed(&origin) {
            return if preflight {
                Flow::Respond(local_response(
                    StatusCode::FORBIDDEN,
                    "CORS preflight rejected: origin not allowed\n",
                ))
            } else {
                // Not ours to block: the browser enforces by the missing allow-origin header.
                Flow::Continue
            };
        }
        if !preflight {
            ctx.extensions.insert(CorsOrigin(origin));
            return Flow::Continue;
        }
        let mut resp = Response::new(ProxyBody::empty());
        *resp.status_mut() = StatusCode::NO_CONTENT;
        let h = resp.headers_mut();
        h.insert(
            ACCESS_CONTROL_ALLOW_ORIGIN,
            self.allow_origin_value(&origin),
        );
        if let Ok(v) = HeaderValue::from_str(&self.0.allow_methods) {
            h.insert(ACCESS_CONTROL_ALLOW_METHODS, v);
        }
        if !self.0.allow_headers.is_empty()
            && let Ok(v) = HeaderValue::from_str(&self.0.allow_headers)
        {
            h.insert(ACCESS_CONTROL_ALLOW_HEADERS, v);
        }
        if let Some(age) = self.0.max_age {
            h.insert(ACCESS_CONTROL_MAX_AGE, HeaderValue::from(age.as_secs()));
        }
        if self.0.allow_credentials {
            h.insert(
                ACCESS_CONTROL_ALLOW_CREDENTIALS,
                HeaderValue::from_static("true"),
            );
        }
        h.insert(VARY, HeaderValue::from_static("origin"));
        Flow::Respond(resp)
    }

    fn on_response_headers<'a>(
        &'a self,
        ctx: &'a mut RequestContext,
        resp: &'a mut response::Parts,
    ) -> Flow<'a> {
        use http::header::{
            ACCESS_CONTROL_ALLOW_CREDENTIALS, ACCESS_CONTROL_ALLOW_ORIGIN,
            ACCESS_CONTROL_EXPOSE_HEADERS, VARY,
        };
        if let Some(CorsOrigin(origin)) = ctx.extensions.get::<CorsOrigin>() {
            let h = &mut resp.headers;
            h.insert(ACCESS_CONTROL_ALLOW_ORIGIN, self.allow_origin_value(origin));
            if self.0.allow_credentials {
                h.insert(
                    ACCESS_CONTROL_ALLOW_CREDENTIALS,
                    HeaderValue::from_static("true"),
                );
            }
            if !self.0.expose_headers.is_empty()
                && let Ok(v) = HeaderValue::from_str(&self.0.expose_headers)
            {
                h.insert(ACCESS_CONTROL_EXPOSE_HEADERS, v);
            }
            h.append(VARY, HeaderValue::from_static("origin"));
        }
        Flow::Continue
    }
}

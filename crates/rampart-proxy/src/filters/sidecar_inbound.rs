//! `sidecar_inbound`: marks requests that entered through a sidecar's inbound listener.

use std::sync::Arc;

use http::{HeaderValue, request};
use rampart_config::FieldError;
use rampart_config::filters::{NoConfig, typed};

use crate::filter::{
    BuildEnv, FilterBuildError, FilterFactory, FilterRef, Flow, HttpFilter, RequestContext,
};

pub struct SidecarInboundFactory;

impl FilterFactory for SidecarInboundFactory {
    type Config = NoConfig;

    fn name(&self) -> &'static str {
        "sidecar_inbound"
    }

    fn parse(&self, path: &str, config: &serde_json::Value) -> Result<NoConfig, Vec<FieldError>> {
        typed(path, config).map_err(|e| vec![e])
    }

    fn build(&self, _config: NoConfig, _env: &BuildEnv) -> Result<FilterRef, FilterBuildError> {
        Ok(Arc::new(SidecarInboundFilter))
    }
}

/// Marks requests that entered through a sidecar's inbound listener: the application sees
/// `x-sidecar-injected: true` and `x-original-host` (the Host the client sent). Host itself
/// is left as it was.
pub struct SidecarInboundFilter;

impl HttpFilter for SidecarInboundFilter {
    fn name(&self) -> &'static str {
        "sidecar_inbound"
    }

    fn on_request_headers<'a>(
        &'a self,
        _ctx: &'a mut RequestContext,
        req: &'a mut request::Parts,
    ) -> Flow<'a> {
        let host = req.headers.get(http::header::HOST).cloned().or_else(|| {
            req.uri
                .authority()
                .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
        });
        req.headers
            .insert("x-sidecar-injected", HeaderValue::from_static("true"));
        if let Some(h) = host {
            req.headers.insert("x-original-host", h);
        }
        Flow::Continue
    }
}

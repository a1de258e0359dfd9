//! `header_mutation`: adds, sets and removes request and response headers.

use std::sync::Arc;

use http::{HeaderMap, request, response};
use rampart_config::FieldError;
use rampart_config::filters::header_mutation::{self, HeaderMutationFilter as Config};
use rampart_config::model::HeaderMutation;

use crate::filter::{
    BuildEnv, FilterBuildError, FilterFactory, FilterRef, Flow, HttpFilter, RequestContext,
};

/// Applies edits in the order remove, set, add (routes' `request_headers` use it too).
pub fn apply(m: &HeaderMutation, headers: &mut HeaderMap) {
    for name in &m.remove {
        headers.remove(name);
    }
    for (name, value) in &m.set {
        headers.insert(name.clone(), value.clone());
    }
    for (name, value) in &m.add {
        headers.append(name.clone(), value.clone());
    }
}

pub struct HeaderMutationFactory;

impl FilterFactory for HeaderMutationFactory {
    type Config = Config;

    fn name(&self) -> &'static str {
        "header_mutation"
    }

    fn parse(&self, path: &str, config: &serde_json::Value) -> Result<Config, Vec<FieldError>> {
        header_mutation::parse(path, config)
    }

    fn build(&self, config: Config, _env: &BuildEnv) -> Result<FilterRef, FilterBuildError> {
        Ok(Arc::new(HeaderMutationFilter {
            request: config.request,
            response: config.response,
        }))
    }
}

/// Adds, sets and removes headers on the request and the response.
pub struct HeaderMutationFilter {
    pub request: HeaderMutation,
    pub response: HeaderMutation,
}

impl HttpFilter for HeaderMutationFilter {
    fn name(&self) -> &'static str {
        "header_mutation"
    }

    fn on_request_headers<'a>(
        &'a self,
        _ctx: &'a mut RequestContext,
        req: &'a mut request::Parts,
    ) -> Flow<'a> {
        apply(&self.request, &mut req.headers);
        Flow::Continue
    }

    fn on_response_headers<'a>(
        &'a self,
        _ctx: &'a mut RequestContext,
        resp: &'a mut response::Parts,
    ) -> Flow<'a> {
        apply(&self.response, &mut resp.headers);
        Flow::Continue
    }
}

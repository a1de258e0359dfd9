//! `header_mutation`: adds, sets and removes request and response headers.

use serde::{Deserialize, Serialize};

use crate::check::Ctx;
use crate::error::FieldError;
use crate::headers::{HeaderMutation, mutation};
use crate::raw::RawHeaderMutation;

#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RawHeaderMutationFilter {
    #[serde(default)]
    pub request: Option<RawHeaderMutation>,
    #[serde(default)]
    pub response: Option<RawHeaderMutation>,
}

/// Both directions' edits.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HeaderMutationFilter {
    pub request: HeaderMutation,
    pub response: HeaderMutation,
}

/// Checks a `header_mutation` entry; `path` ends in `.header_mutation`.
pub fn parse(
    path: &str,
    config: &serde_json::Value,
) -> Result<HeaderMutationFilter, Vec<FieldError>> {
    let h: RawHeaderMutationFilter = crate::check::typed(path, config).map_err(|e| vec![e])?;
    let mut cx = Ctx::default();
    let request = mutation(&mut cx, &format!("{path}.request"), h.request.as_ref());
    let response = mutation(&mut cx, &format!("{path}.response"), h.response.as_ref());
    cx.finish(Some(HeaderMutationFilter { request, response }))
}

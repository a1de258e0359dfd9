//! `cors`: answers preflights and decorates responses for allowed origins.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::check::Ctx;
use crate::error::FieldError;
use crate::headers::header_name;

#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RawCors {
    /// Exact origins, or `*`.
    pub allow_origins: Vec<String>,
    #[serde(default)]
    pub allow_methods: Vec<String>,
    #[serde(default)]
    pub allow_headers: Vec<String>,
    #[serde(default)]
    pub expose_headers: Vec<String>,
    #[serde(default)]
    pub max_age: Option<String>,
    #[serde(default)]
    pub allow_credentials: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cors {
    pub allow_any_origin: bool,
    pub allow_origins: Vec<String>,
    pub allow_methods: String,
    pub allow_headers: String,
    pub expose_headers: String,
    pub max_age: Option<Duration>,
    pub allow_credentials: bool,
}

/// Checks a `cors` entry; `path` ends in `.cors`.
pub fn parse(path: &str, config: &serde_json::Value) -> Result<Cors, Vec<FieldError>> {
    let c: RawCors = crate::check::typed(path, config).map_err(|e| vec![e])?;
    let mut cx = Ctx::default();
    if c.allow_origins.is_empty() {
        cx.err(
            format!("{path}.allow_origins"),
            "must list at least one origin (or \"*\")",
        );
    }
    let allow_any_origin = c.allow_origins.iter().any(|o| o == "*");
    if allow_any_origin && c.allow_credentials {
        cx.err(
            format!("{path}.allow_credentials"),
            "cannot be true when allow_origins contains \"*\" (browsers reject it)",
        );
    }
    for (j, m) in c.allow_methods.iter().enumerate() {
        if http::Method::from_bytes(m.as_bytes()).is_err() {
            cx.err(
                format!("{path}.allow_methods[{j}]"),
                format!("invalid method {m:?}"),
            );
        }
    }
    for (field, list) in [
        ("allow_headers", &c.allow_headers),
        ("expose_headers", &c.expose_headers),
    ] {
        for (j, h) in list.iter().enumerate() {
            header_name(&mut cx, &format!("{path}.{field}[{j}]"), h);
        }
    }
    let max_age = c
        .max_age
        .as_deref()
        .map(|m| cx.duration(&format!("{path}.max_age"), Some(m), Duration::ZERO));
    let cors = Cors {
        allow_any_origin,
        allow_origins: c
            .allow_origins
            .iter()
            .filter(|o| *o != "*")
            .cloned()
            .collect(),
        allow_methods: if c.allow_methods.is_empty() {
            "GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS".to_owned()
        } else {
            c.allow_methods.join(", ")
        },
        allow_headers: c.allow_headers.join(", "),
        expose_headers: c.expose_headers.join(", "),
        max_age,
        allow_credentials: c.allow_credentials,
    };
    cx.finish(Some(cors))
}

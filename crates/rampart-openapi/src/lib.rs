//! OpenAPI 3.1 for Rampart (3.0 specs are upgraded on load):
//!
//! - [`spec::Spec`]: a spec with every file its relative `$ref`s name, each under its own
//!   `file://` URI so that JSON Schema references (`$ref`, `$id`, `$dynamicRef`) resolve as
//!   written; remote references are not fetched.
//! - [`lint`]: structure and reference problems, each at a JSON pointer;
//!   [`locate`] finds the pointer's line.
//! - [`operation`]: each operation's method, path template, id, tags, security,
//!   parameters and request body.
//! - [`security`]: the credentials an operation's security requirements ask a request for.
//! - [`validate`]: requests checked against their operation, compiled once per spec
//!   (JSON Schema 2020-12 with formats, via the jsonschema crate), problems as RFC 9457
//!   documents.
//!
//! - [`tape`]: request bodies read for validation with one allocation, not one per node.
//! - [`codegen`]: a Rust crate (serde types, an axum server trait, a reqwest client).
//!
//! Routes from a spec (`rampart openapi import`) and the gateway filter that runs the
//! validators live with their users (the binary, `rampart-filter-openapi`).

pub mod codegen;
pub mod lint;
pub mod locate;
pub mod operation;
pub mod security;
pub mod spec;
pub mod tape;
pub mod validate;

use std::fmt;

/// Something wrong with a spec, where it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// A JSON pointer into the root document (empty: the document as a whole), or
    /// `file.yaml#/pointer` into another file of the spec.
    pub pointer: String,
    pub message: String,
}

impl Problem {
    pub fn new(pointer: &str, message: impl Into<String>) -> Self {
        Self {
            pointer: pointer.to_owned(),
            message: message.into(),
        }
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.pointer.is_empty() {
            write!(f, "{}", self.message)
        } else if self.pointer.starts_with('/') {
            write!(f, "#{}: {}", self.pointer, self.message)
        } else {
            // In another file: `common.yaml#/components/...`.
            write!(f, "{}: {}", self.pointer, self.message)
        }
    }
}

//! Config errors: every one names the field path, the bad value and the rule it broke.

use std::fmt;

/// One problem at one place in the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    /// Dotted path with indices, e.g. `route_tables[0].virtual_hosts[1].routes[2].forward.cluster`.
    pub path: String,
    pub rule: String,
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.rule)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    /// The YAML does not have the expected shape (syntax, unknown field, wrong type).
    /// Serde stops at the first such problem.
    #[error("{path}: {message}")]
    Parse { path: String, message: String },
    /// Semantic problems, all of them.
    #[error("{} error(s):\n{}", .0.len(), .0.iter().map(|e| format!("  {e}")).collect::<Vec<_>>().join("\n"))]
    Invalid(Vec<FieldError>),
}

impl ConfigError {
    /// Every problem as a field error (a parse error is one).
    pub fn field_errors(&self) -> Vec<FieldError> {
        match self {
            Self::Read { path, source } => vec![FieldError {
                path: path.clone(),
                rule: source.to_string(),
            }],
            Self::Parse { path, message } => vec![FieldError {
                path: path.clone(),
                rule: message.clone(),
            }],
            Self::Invalid(v) => v.clone(),
        }
    }
}

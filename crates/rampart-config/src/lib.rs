//! Rampart's configuration model.
//!
//! YAML is read into [`raw`] structs (unknown fields rejected), then [`validate()`] checks
//! references, names, addresses, regexes and durations, reporting every error with its field
//! path, and produces the [`model`] types the data plane runs on. The shape follows Envoy
//! (listener → route table → virtual host → route → cluster → endpoints) so xDS resources
//! can map onto it. This crate does no IO beyond reading a file and never reads the
//! environment.
// Panics on outside input are forbidden here; unit tests may unwrap (clippy.toml).
#![warn(clippy::unwrap_used)]

mod check;
pub mod duration;
mod error;
pub mod filters;
pub mod headers;
pub mod http;
pub mod jwt;
pub mod model;
pub mod policy;
pub mod raw;
pub mod resilience;
pub mod template;
pub mod tls;
mod validate;

pub use error::{ConfigError, FieldError};
pub use filters::FilterCatalog;
pub use model::Config;
pub use raw::RawConfig;
pub use validate::{endpoint, validate, validate_with};

/// Parses YAML into the raw model. An error names the field path where parsing stopped.
pub fn parse_yaml(text: &str) -> Result<RawConfig, ConfigError> {
    let mut path = String::new();
    let result =
        serde_saphyr::with_deserializer_from_str_with_options(text, check::yaml_options(), |de| {
            serde_path_to_error::deserialize(de).map_err(|e| {
                path = e.path().to_string();
                e.into_inner()
            })
        });
    result.map_err(|e| ConfigError::Parse {
        path: if path.is_empty() || path == "." {
            "(root)".to_owned()
        } else {
            path
        },
        // saphyr's message may quote a source snippet over several lines; the first says why.
        message: e
            .to_string()
            .lines()
            .next()
            .unwrap_or("invalid YAML")
            .to_owned(),
    })
}

/// Reads one YAML document as a JSON value, the way config files are read (YAML 1.2
/// booleans); an error names the place where reading stopped.
pub fn yaml_value(text: &str) -> Result<serde_json::Value, ConfigError> {
    serde_saphyr::with_deserializer_from_str_with_options(text, check::yaml_options(), |de| {
        serde::Deserialize::deserialize(de)
    })
    .map_err(|e| ConfigError::Parse {
        path: "(root)".into(),
        message: e
            .to_string()
            .lines()
            .next()
            .unwrap_or("invalid YAML")
            .to_owned(),
    })
}

/// Parses and validates YAML text.
pub fn from_yaml(text: &str) -> Result<Config, ConfigError> {
    validate(parse_yaml(text)?)
}

/// Parses and validates YAML text, filter configs included (see [`validate_with`]).
pub fn from_yaml_with(text: &str, catalog: &dyn FilterCatalog) -> Result<Config, ConfigError> {
    validate_with(parse_yaml(text)?, catalog)
}

/// Reads, parses and validates a YAML file.
pub fn load(path: &std::path::Path) -> Result<Config, ConfigError> {
    from_yaml(&read(path)?)
}

/// Reads, parses and validates a YAML file, filter configs included.
pub fn load_with(
    path: &std::path::Path,
    catalog: &dyn FilterCatalog,
) -> Result<Config, ConfigError> {
    from_yaml_with(&read(path)?, catalog)
}

fn read(path: &std::path::Path) -> Result<String, ConfigError> {
    std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.display().to_string(),
        source,
    })
}

/// Whether `name` can name a function: a DNS label (1–63 of `a-z`, `0-9` and `-`, not
/// starting or ending with `-`), so it fits store keys, metric labels and host names alike.
pub fn is_function_name(name: &str) -> bool {
    (1..=63).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-')
}

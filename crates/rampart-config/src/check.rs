//! One validation pass: where its errors collect ([`Ctx`]), and how an opaque filter config
//! is read into a filter's own type with its field paths kept ([`typed`], [`parse_with`]).

use serde::de::DeserializeOwned;

use crate::error::FieldError;

/// What knows the filters by name: checks one entry's config.
pub trait FilterCatalog {
    /// Every problem with `config` for the filter `name`, each naming its field under
    /// `path` (the entry's path plus the name, e.g. `listeners[0].filters[1].cors`). An
    /// unknown name is an error at `path`.
    fn check(&self, name: &str, path: &str, config: &serde_json::Value) -> Vec<FieldError>;
}

/// Deserializes a filter's config into its raw type; a shape error (unknown field, wrong
/// type) names the field under `path`. A missing or `null` config reads as an empty map, so
/// `- sidecar_inbound: {}` and `- sidecar_inbound:` mean the same.
///
/// The value is read the way the config file is, so YAML's plain scalars keep their meaning
/// (`x-flag: true` is the string "true" where a string is expected): it is written as JSON,
/// which is YAML, and read back with the file's YAML reader.
pub fn typed<T: DeserializeOwned>(path: &str, config: &serde_json::Value) -> Result<T, FieldError> {
    let text = if config.is_null() {
        "{}".to_owned()
    } else {
        config.to_string()
    };
    let mut inner = String::new();
    let result =
        serde_saphyr::with_deserializer_from_str_with_options(&text, yaml_options(), |de| {
            serde_path_to_error::deserialize(de).map_err(|e| {
                inner = e.path().to_string();
                e.into_inner()
            })
        });
    result.map_err(|e| FieldError {
        path: if inner.is_empty() || inner == "." {
            path.to_owned()
        } else {
            format!("{path}.{inner}")
        },
        rule: without_location(e.to_string().lines().next().unwrap_or("invalid")).to_owned(),
    })
}

/// The reader's message without its `error: line L column C:` prefix, which would point
/// into the re-written value, not the user's file.
fn without_location(msg: &str) -> &str {
    let Some(rest) = msg.strip_prefix("error: line ") else {
        return msg;
    };
    rest.split_once(": ").map_or(msg, |(_, why)| why)
}

/// How config YAML is read: booleans are YAML 1.2's `true` and `false` only, so `yes`, `on`
/// or `n` stay strings (a header value `yes` is not silently `true`), and a boolean field
/// given `yes` is an error instead of a guess.
pub(crate) fn yaml_options() -> serde_saphyr::Options {
    let mut o = serde_saphyr::Options::default();
    o.strict_booleans = true;
    o
}

/// [`typed`], then a validation that reports every error it finds.
pub fn parse_with<R: DeserializeOwned, T>(
    path: &str,
    config: &serde_json::Value,
    validate: impl FnOnce(&str, &R) -> (Option<T>, Vec<FieldError>),
) -> Result<T, Vec<FieldError>> {
    let raw = typed::<R>(path, config).map_err(|e| vec![e])?;
    match validate(path, &raw) {
        (Some(v), errors) if errors.is_empty() => Ok(v),
        (_, errors) if errors.is_empty() => Err(vec![FieldError {
            path: path.to_owned(),
            rule: "invalid".into(),
        }]),
        (_, errors) => Err(errors),
    }
}

/// The empty config of filters that take none (`sidecar_inbound`).
#[derive(Debug, Clone, Default, serde::Deserialize, serde::Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct NoConfig {}

/// Collects every problem of one validation pass.
#[derive(Default)]
pub(crate) struct Ctx<'a> {
    pub(crate) errors: Vec<FieldError>,
    /// Checks filter entries' configs, when given.
    pub(crate) catalog: Option<&'a dyn FilterCatalog>,
}

impl Ctx<'_> {
    pub(crate) fn err(&mut self, path: impl Into<String>, rule: impl Into<String>) {
        self.errors.push(FieldError {
            path: path.into(),
            rule: rule.into(),
        });
    }

    pub(crate) fn duration(
        &mut self,
        path: &str,
        value: Option<&str>,
        default: std::time::Duration,
    ) -> std::time::Duration {
        match value.map(crate::duration::parse_duration) {
            None => default,
            Some(Ok(d)) => d,
            Some(Err(e)) => {
                self.err(path, e.to_string());
                default
            }
        }
    }

    /// The value when no error was recorded, else every error.
    pub(crate) fn finish<T>(self, value: Option<T>) -> Result<T, Vec<FieldError>> {
        match value {
            Some(v) if self.errors.is_empty() => Ok(v),
            _ if self.errors.is_empty() => Err(vec![FieldError {
                path: "(root)".into(),
                rule: "invalid".into(),
            }]),
            _ => Err(self.errors),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Raw {
        rate: u32,
        keys: Vec<String>,
    }

    #[test]
    fn shape_errors_name_the_field() {
        let ok: Raw = typed("p.x", &serde_json::json!({"rate": 3, "keys": ["a"]})).unwrap();
        assert_eq!(
            (ok.rate, ok.keys.as_slice()),
            (3, ["a".to_owned()].as_slice())
        );
        let v = serde_json::json!({"rate": "ten", "keys": []});
        let e = typed::<Raw>("listeners[0].filters[2].x", &v).unwrap_err();
        assert_eq!(e.path, "listeners[0].filters[2].x.rate");
        let v = serde_json::json!({"rate": 1, "keys": [{"a": 1}]});
        let e = typed::<Raw>("p.x", &v).unwrap_err();
        assert_eq!(e.path, "p.x.keys[0]");
        let v = serde_json::json!({"rate": 1, "keys": [], "extra": true});
        let e = typed::<Raw>("p.x", &v).unwrap_err();
        assert_eq!(e.path, "p.x.extra");
        assert!(e.rule.starts_with("unknown field `extra`"), "{}", e.rule);
    }

    #[test]
    fn plain_scalars_read_as_strings_where_strings_are_wanted() {
        #[derive(Debug, serde::Deserialize)]
        struct S {
            a: String,
            b: String,
            n: u32,
        }
        let s: S = typed("p", &serde_json::json!({"a": true, "b": 10, "n": 7})).unwrap();
        assert_eq!((s.a.as_str(), s.b.as_str(), s.n), ("true", "10", 7));
    }

    #[test]
    fn null_reads_as_empty() {
        assert!(typed::<NoConfig>("p", &serde_json::Value::Null).is_ok());
        assert!(typed::<NoConfig>("p", &serde_json::json!({"a": 1})).is_err());
    }
}

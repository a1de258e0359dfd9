//! Label and field selectors.
//!
//! Labels: the full selector grammar (`a=b`, `a==b`, `a!=b`, `a`, `!a`, `a in (x,y)`,
//! `a notin (x,y)`), with the server's meaning: `!=` and `notin` match objects without the label.
//! Fields: `path=value`, `path==value` and `path!=value` on any dotted path (`metadata.name`,
//! `metadata.namespace`, `spec.nodeName`, ...), compared as strings; simplified, since the real
//! server accepts only the few fields each resource indexes and refuses the others.

use serde_json::Value;

use crate::error::ApiError;

#[derive(Debug, Clone, PartialEq, Eq)]
enum Op {
    Eq(String),
    NotEq(String),
    In(Vec<String>),
    NotIn(Vec<String>),
    Exists,
    NotExists,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Requirement {
    key: String,
    op: Op,
}

impl Requirement {
    fn matches(&self, value: Option<&str>) -> bool {
        match (&self.op, value) {
            (Op::Eq(want), Some(v)) => v == want,
            (Op::NotEq(want), v) => v != Some(want.as_str()),
            (Op::In(set), Some(v)) => set.iter().any(|s| s == v),
            (Op::NotIn(set), v) => v.is_none_or(|v| !set.iter().any(|s| s == v)),
            (Op::Exists, v) => v.is_some(),
            (Op::NotExists, v) => v.is_none(),
            (Op::Eq(_) | Op::In(_), None) => false,
        }
    }
}

/// A parsed `labelSelector` and `fieldSelector`; the default matches everything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Selector {
    labels: Vec<Requirement>,
    fields: Vec<Requirement>,
}

impl Selector {
    /// Parses both selectors; a malformed one is a 400.
    pub(crate) fn parse(labels: Option<&str>, fields: Option<&str>) -> Result<Self, ApiError> {
        let labels = match labels {
            Some(s) => split_top_level(s)
                .into_iter()
                .map(parse_label_term)
                .collect::<Result<_, _>>()?,
            None => Vec::new(),
        };
        let fields = match fields {
            Some(s) => s
                .split(',')
                .map(str::trim)
                .filter(|t| !t.is_empty())
                .map(parse_field_term)
                .collect::<Result<_, _>>()?,
            None => Vec::new(),
        };
        Ok(Selector { labels, fields })
    }

    /// Whether an object matches every requirement.
    pub(crate) fn matches(&self, obj: &Value) -> bool {
        let labels = obj.pointer("/metadata/labels");
        let label_ok = self.labels.iter().all(|r| {
            let value = labels.and_then(|l| l.get(&r.key)).and_then(Value::as_str);
            r.matches(value)
        });
        label_ok
            && self.fields.iter().all(|r| {
                let value = field_value(obj, &r.key);
                r.matches(Some(value.as_str()))
            })
    }
}

/// Splits on commas outside parentheses (`a in (x,y),b` is two terms).
fn split_top_level(s: &str) -> Vec<&str> {
    let mut terms = Vec::new();
    let (mut depth, mut start) = (0usize, 0usize);
    for (i, c) in s.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth = depth.saturating_sub(1),
            ',' if depth == 0 => {
                terms.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    terms.push(&s[start..]);
    terms
        .into_iter()
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .collect()
}

fn bad(term: &str) -> ApiError {
    ApiError::bad_request(format!("unable to parse requirement: {term:?}"))
}

fn check_key<'a>(key: &'a str, term: &str) -> Result<&'a str, ApiError> {
    let key = key.trim();
    let ok = !key.is_empty() && !key.contains(|c: char| c.is_whitespace() || "=!(),".contains(c));
    if ok { Ok(key) } else { Err(bad(term)) }
}

fn parse_label_term(term: &str) -> Result<Requirement, ApiError> {
    let req = |key: &str, op| -> Result<Requirement, ApiError> {
        Ok(Requirement {
            key: check_key(key, term)?.to_owned(),
            op,
        })
    };
    if let Some(open) = term.find('(') {
        let inner = term[open + 1..]
            .strip_suffix(')')
            .ok_or_else(|| bad(term))?;
        let values: Vec<String> = inner.split(',').map(|v| v.trim().to_owned()).collect();
        let head = term[..open].trim_end();
        return match head.rsplit_once(char::is_whitespace) {
            Some((key, "in")) => req(key, Op::In(values)),
            Some((key, "notin")) => req(key, Op::NotIn(values)),
            _ => Err(bad(term)),
        };
    }
    if let Some(key) = term.strip_prefix('!') {
        return req(key, Op::NotExists);
    }
    if let Some((key, value)) = term.split_once("!=") {
        return req(key, Op::NotEq(value.trim().to_owned()));
    }
    if let Some((key, value)) = term.split_once("==").or_else(|| term.split_once('=')) {
        return req(key, Op::Eq(value.trim().to_owned()));
    }
    req(term, Op::Exists)
}

fn parse_field_term(term: &str) -> Result<Requirement, ApiError> {
    let (key, op) = if let Some((key, value)) = term.split_once("!=") {
        (key, Op::NotEq(value.trim().to_owned()))
    } else if let Some((key, value)) = term.split_once("==").or_else(|| term.split_once('=')) {
        (key, Op::Eq(value.trim().to_owned()))
    } else {
        return Err(bad(term));
    };
    Ok(Requirement {
        key: check_key(key, term)?.to_owned(),
        op,
    })
}

/// A dotted path's value as a string ("" when absent, as the server indexes missing fields).
fn field_value(obj: &Value, path: &str) -> String {
    let found = path.split('.').try_fold(obj, |v, key| v.get(key));
    match found {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Null) | None => String::new(),
        Some(other) => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn sel(labels: &str) -> Selector {
        Selector::parse(Some(labels), None).unwrap()
    }

    #[test]
    fn labels() {
        let obj = json!({"metadata": {"name": "n", "labels": {"app": "web", "tier": "fe"}}});
        let bare = json!({"metadata": {"name": "m"}});
        assert!(sel("app=web").matches(&obj));
        assert!(sel("app==web,tier=fe").matches(&obj));
        assert!(!sel("app=web,tier=be").matches(&obj));
        assert!(sel("app!=db").matches(&obj) && sel("app!=db").matches(&bare));
        assert!(!sel("app!=web").matches(&obj));
        assert!(sel("app").matches(&obj) && !sel("app").matches(&bare));
        assert!(sel("!app").matches(&bare) && !sel("!app").matches(&obj));
        assert!(sel("app in (db, web),tier").matches(&obj));
        assert!(!sel("app notin (web)").matches(&obj) && sel("app notin (web)").matches(&bare));
        assert!(sel("").matches(&bare));
        for bad in ["a b", "app in x", "=x", "a in (x", "(x)"] {
            assert!(Selector::parse(Some(bad), None).is_err(), "{bad}");
        }
    }

    #[test]
    fn fields() {
        let obj = json!({"metadata": {"name": "n", "namespace": "ns"}, "spec": {"replicas": 2}});
        let f = |s: &str| Selector::parse(None, Some(s)).unwrap().matches(&obj);
        assert!(f("metadata.name=n"));
        assert!(f("metadata.name=n,metadata.namespace==ns"));
        assert!(!f("metadata.namespace=other"));
        assert!(f("metadata.name!=x"));
        assert!(f("spec.replicas=2"));
        assert!(Selector::parse(None, Some("metadata.name")).is_err());
    }
}

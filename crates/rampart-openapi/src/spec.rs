//! A spec and the documents it references: the root file and every file a relative `$ref`
//! names (`common.yaml#/components/schemas/Error`), each kept under its `file://` URI so
//! that JSON Schema references resolve exactly as the spec wrote them. Remote references
//! are not fetched. A 3.0 spec is upgraded to 3.1's schema dialect on load.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::Problem;

/// The URI a spec loaded from text (not a file) gets.
pub const TEXT_URI: &str = "file:///spec.yaml";

#[derive(Debug, Clone)]
pub struct Spec {
    /// The root document's URI.
    pub uri: String,
    /// Every document by URI, the root's included.
    pub documents: BTreeMap<String, Value>,
    /// `3.1.x` or `3.0.x` as written.
    pub version: String,
}

/// `%`-free `file://` URI of an absolute path.
fn file_uri(path: &Path) -> String {
    format!("file://{}", path.display())
}

fn parse(text: &str, what: &str) -> Result<Value, Problem> {
    let trimmed = text.trim_start();
    let parsed = if trimmed.starts_with('{') {
        serde_json::from_str(text).map_err(|e| e.to_string())
    } else {
        rampart_config::yaml_value(text).map_err(|e| e.to_string())
    };
    parsed.map_err(|e| Problem::new("", format!("{what}: {e}")))
}

impl Spec {
    /// Loads `path` and, recursively, every file its `$ref`s name.
    pub fn load(path: &Path) -> Result<Self, Vec<Problem>> {
        let root = std::fs::canonicalize(path)
            .map_err(|e| vec![Problem::new("", format!("{}: {e}", path.display()))])?;
        let mut documents = BTreeMap::new();
        let mut problems = Vec::new();
        let mut todo: Vec<PathBuf> = vec![root.clone()];
        while let Some(p) = todo.pop() {
            let uri = file_uri(&p);
            if documents.contains_key(&uri) {
                continue;
            }
            let text = match std::fs::read_to_string(&p) {
                Ok(t) => t,
                Err(e) => {
                    problems.push(Problem::new("", format!("{}: {e}", p.display())));
                    continue;
                }
            };
            match parse(&text, &p.display().to_string()) {
                Ok(doc) => {
                    let dir = p.parent().unwrap_or(Path::new("/")).to_path_buf();
                    for target in file_refs(&doc) {
                        todo.push(dir.join(target));
                    }
                    documents.insert(uri, doc);
                }
                Err(e) => problems.push(e),
            }
        }
        if !problems.is_empty() {
            return Err(problems);
        }
        Self::new(file_uri(&root), documents).map_err(|p| vec![p])
    }

    /// A spec from one document's text (no file references).
    pub fn from_text(text: &str) -> Result<Self, Problem> {
        let doc = parse(text, "the spec")?;
        Self::new(
            TEXT_URI.to_owned(),
            BTreeMap::from([(TEXT_URI.to_owned(), doc)]),
        )
    }

    fn new(uri: String, mut documents: BTreeMap<String, Value>) -> Result<Self, Problem> {
        let version = documents[&uri]["openapi"]
            .as_str()
            .ok_or_else(|| Problem::new("/openapi", "missing: the spec must say `openapi: 3.1.0`"))?
            .to_owned();
        if version.starts_with("3.0.") {
            for doc in documents.values_mut() {
                upgrade_schemas(doc);
            }
        } else if !version.starts_with("3.1.") {
            return Err(Problem::new(
                "/openapi",
                format!("version {version:?}: only 3.1 (and 3.0, upgraded) are read"),
            ));
        }
        for doc in documents.values_mut() {
            integer_formats(doc);
        }
        Ok(Self {
            uri,
            documents,
            version,
        })
    }

    pub fn root(&self) -> &Value {
        &self.documents[&self.uri]
    }

    /// SHA-256 (hex) of the documents as read, each named relative to the root's directory:
    /// the same spec has the same digest wherever its files are.
    pub fn digest(&self) -> String {
        let dir = self.uri.rsplit_once('/').map_or("", |(d, _)| d);
        let mut h = ring::digest::Context::new(&ring::digest::SHA256);
        for (uri, doc) in &self.documents {
            let name = uri.strip_prefix(dir).unwrap_or(uri);
            for part in [name.as_bytes(), b"\0", doc.to_string().as_bytes(), b"\0"] {
                h.update(part);
            }
        }
        h.finish()
            .as_ref()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }

    /// What `reference` (a `$ref` written in the document at `base`) points to, with its
    /// document's URI and the pointer within it.
    pub fn resolve<'s>(
        &'s self,
        base: &str,
        reference: &str,
    ) -> Option<(&'s str, String, &'s Value)> {
        let (file, pointer) = reference.split_once('#').unwrap_or((reference, ""));
        let uri = if file.is_empty() {
            base.to_owned()
        } else {
            join(base, file)?
        };
        let (uri, doc) = self.documents.get_key_value(&uri)?;
        let pointer = percent_encoding::percent_decode_str(pointer)
            .decode_utf8()
            .ok()?
            .into_owned();
        Some((uri.as_str(), pointer.clone(), doc.pointer(&pointer)?))
    }

    /// `value` itself, or what its `$ref` (followed up to 16 times) points to, with the URI
    /// and pointer it was found at.
    pub fn deref<'s>(
        &'s self,
        base: &'s str,
        pointer: String,
        value: &'s Value,
    ) -> Result<(&'s str, String, &'s Value), String> {
        let (mut base, mut pointer, mut value) = (base, pointer, value);
        for _ in 0..16 {
            let Some(r) = value.get("$ref").and_then(Value::as_str) else {
                return Ok((base, pointer, value));
            };
            let (b, p, v) = self
                .resolve(base, r)
                .ok_or_else(|| format!("$ref {r:?} does not resolve"))?;
            (base, pointer, value) = (b, p, v);
        }
        Err("a $ref chain longer than 16".into())
    }
}

/// `file` (relative, as written in a `$ref`) against the document URI `base`.
fn join(base: &str, file: &str) -> Option<String> {
    if file.contains("://") {
        return None;
    }
    let dir = base.rsplit_once('/')?.0;
    let mut parts: Vec<&str> = dir.split('/').collect();
    for seg in file.split('/') {
        match seg {
            "." | "" => {}
            ".." => {
                if parts.len() > 3 {
                    parts.pop();
                }
            }
            s => parts.push(s),
        }
    }
    Some(parts.join("/"))
}

/// The relative files `doc`'s `$ref`s name.
fn file_refs(doc: &Value) -> Vec<String> {
    let mut out = Vec::new();
    walk(doc, &mut |v| {
        if let Some(r) = v.get("$ref").and_then(Value::as_str) {
            let file = r.split('#').next().unwrap_or("");
            if !file.is_empty() && !file.contains("://") {
                out.push(file.to_owned());
            }
        }
    });
    out
}

fn walk(v: &Value, f: &mut impl FnMut(&Value)) {
    f(v);
    match v {
        Value::Object(m) => m.values().for_each(|x| walk(x, f)),
        Value::Array(a) => a.iter().for_each(|x| walk(x, f)),
        _ => {}
    }
}

/// 3.0's schema dialect in 3.1's terms, wherever a schema can be: `nullable: true` becomes
/// a `"null"` type, boolean `exclusiveMinimum`/`exclusiveMaximum` become numbers.
fn upgrade_schemas(v: &mut Value) {
    if let Value::Object(m) = v {
        if m.remove("nullable") == Some(Value::Bool(true))
            && let Some(t) = m.get("type").cloned()
        {
            m.insert("type".into(), Value::Array(vec![t, Value::from("null")]));
        }
        for (flag, bound) in [
            ("exclusiveMinimum", "minimum"),
            ("exclusiveMaximum", "maximum"),
        ] {
            if let Some(Value::Bool(b)) = m.get(flag).cloned() {
                m.remove(flag);
                if b && let Some(n) = m.remove(bound) {
                    m.insert(flag.into(), n);
                }
            }
        }
    }
    match v {
        Value::Object(m) => m.values_mut().for_each(upgrade_schemas),
        Value::Array(a) => a.iter_mut().for_each(upgrade_schemas),
        _ => {}
    }
}

/// OpenAPI's `int32`/`int64` (and unsigned) formats as the bounds they mean: JSON Schema
/// checks formats of strings only, and an integer past 64 bits is still an integer to it, so
/// without them a gateway would pass `9223372036854775808` to a server that reads an `i64`.
/// Bounds a schema gives itself are kept.
fn integer_formats(v: &mut Value) {
    match v {
        Value::Object(m) => {
            let integer = match m.get("type") {
                Some(Value::String(t)) => t == "integer",
                Some(Value::Array(ts)) => ts.iter().any(|t| t == "integer"),
                _ => false,
            };
            let bounds: Option<(Value, Value)> = match m.get("format").and_then(Value::as_str) {
                Some("int32") if integer => Some((i32::MIN.into(), i32::MAX.into())),
                Some("int64") if integer => Some((i64::MIN.into(), i64::MAX.into())),
                Some("uint32") if integer => Some((0.into(), u32::MAX.into())),
                Some("uint64") if integer => Some((0.into(), u64::MAX.into())),
                _ => None,
            };
            if let Some((lo, hi)) = bounds {
                if !m.contains_key("minimum") && !m.contains_key("exclusiveMinimum") {
                    m.insert("minimum".into(), lo);
                }
                if !m.contains_key("maximum") && !m.contains_key("exclusiveMaximum") {
                    m.insert("maximum".into(), hi);
                }
            }
            m.values_mut().for_each(integer_formats);
        }
        Value::Array(a) => a.iter_mut().for_each(integer_formats),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_files_join_and_never_climb_out_of_the_root() {
        assert_eq!(
            join("file:///a/b/spec.yaml", "common.yaml").as_deref(),
            Some("file:///a/b/common.yaml")
        );
        assert_eq!(
            join("file:///a/b/spec.yaml", "../c/x.yaml").as_deref(),
            Some("file:///a/c/x.yaml")
        );
        assert_eq!(
            join("file:///a/spec.yaml", "../../../x.yaml").as_deref(),
            Some("file:///x.yaml")
        );
        assert_eq!(join("file:///a/spec.yaml", "https://x/y.yaml"), None);
    }

    #[test]
    fn a_30_spec_is_upgraded() {
        let s = Spec::from_text(
            "openapi: 3.0.3\ncomponents:\n  schemas:\n    A: { type: integer, nullable: true, minimum: 1, exclusiveMinimum: true }\n",
        )
        .unwrap();
        let a = &s.root()["components"]["schemas"]["A"];
        assert_eq!(a["type"], serde_json::json!(["integer", "null"]));
        assert_eq!(a["exclusiveMinimum"], 1);
        assert!(a.get("minimum").is_none() && a.get("nullable").is_none());
        assert!(Spec::from_text("openapi: 2.0\n").is_err());
        assert!(Spec::from_text("swagger: '2.0'\n").is_err());
    }
}

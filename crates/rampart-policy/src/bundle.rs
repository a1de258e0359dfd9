//! A tenant's bundle in source form: Rego modules, a data document and an entry point.
//!
//! On disk a bundle is a directory, laid out as OPA lays out its bundles:
//!
//! ```text
//! tenant-a/
//!   .manifest          optional JSON: {"revision": "...", "metadata": {"entrypoint": "data.authz.decision"}}
//!   authz.rego         every *.rego file, in any subdirectory (tests included: *_test.rego)
//!   data.json          merged at data.<dir path>; the top-level one at data
//!   roles/data.json    → data.roles
//! ```
//!
//! Sources stay in memory for the life of the tenant, so a compiled form that was evicted
//! from the cache can be rebuilt without touching the disk.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// The entry point used when a bundle does not name one.
pub const DEFAULT_ENTRYPOINT: &str = "data.authz.decision";

/// Largest bundle accepted (sources plus data), so one tenant cannot exhaust memory.
pub const MAX_BUNDLE_BYTES: usize = 64 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    #[error("{path}: {message}")]
    Read { path: String, message: String },
    #[error("{path}: {message}")]
    Compile { path: String, message: String },
    #[error("entry point {entrypoint}: {message}")]
    Entrypoint { entrypoint: String, message: String },
    #[error("bundle tests failed: {failed} of {total} ({names})")]
    TestsFailed {
        failed: usize,
        total: usize,
        names: String,
    },
    #[error("bundle is {bytes} bytes; at most {MAX_BUNDLE_BYTES} are accepted")]
    TooLarge { bytes: usize },
}

/// A bundle's sources.
#[derive(Debug, Clone, PartialEq)]
pub struct Bundle {
    /// `(file name relative to the bundle root, Rego text)`, sorted by name.
    pub modules: Vec<(String, String)>,
    /// The data document (`data`), merged from every `data.json`.
    pub data: serde_json::Value,
    pub entrypoint: String,
    /// The manifest's revision, or a content hash.
    pub revision: String,
}

#[derive(Deserialize, Default)]
struct Manifest {
    #[serde(default)]
    revision: Option<String>,
    #[serde(default)]
    metadata: ManifestMetadata,
}

#[derive(Deserialize, Default)]
struct ManifestMetadata {
    #[serde(default)]
    entrypoint: Option<String>,
}

impl Bundle {
    /// A bundle from in-memory parts (the API path).
    pub fn new(
        modules: Vec<(String, String)>,
        data: serde_json::Value,
        entrypoint: Option<&str>,
        revision: Option<String>,
    ) -> Result<Self, BundleError> {
        let mut modules = modules;
        modules.sort();
        if !data.is_object() {
            return Err(BundleError::Read {
                path: "data".into(),
                message: "the data document must be a JSON object".into(),
            });
        }
        let mut b = Self {
            modules,
            data,
            entrypoint: normalize_entrypoint(entrypoint.unwrap_or(DEFAULT_ENTRYPOINT)),
            revision: String::new(),
        };
        let bytes = b.source_bytes();
        if bytes > MAX_BUNDLE_BYTES {
            return Err(BundleError::TooLarge { bytes });
        }
        b.revision = revision.unwrap_or_else(|| format!("{:016x}", b.content_hash()));
        Ok(b)
    }

    /// Reads a bundle directory. Errors name the file.
    pub fn load_dir(dir: &Path) -> Result<Self, BundleError> {
        let mut files = Vec::new();
        walk(dir, dir, &mut files)?;
        let mut modules = Vec::new();
        let mut data = serde_json::Value::Object(serde_json::Map::new());
        let mut manifest = Manifest::default();
        let mut total = 0usize;
        for (rel, path) in files {
            let name = rel.to_string_lossy().replace('\\', "/");
            let file_name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
            let is_rego = file_name.ends_with(".rego");
            let is_data = file_name == "data.json";
            let is_manifest = name == ".manifest";
            if !(is_rego || is_data || is_manifest) {
                continue;
            }
            let text = std::fs::read_to_string(&path).map_err(|e| BundleError::Read {
                path: path.display().to_string(),
                message: e.to_string(),
            })?;
            total += text.len();
            if total > MAX_BUNDLE_BYTES {
                return Err(BundleError::TooLarge { bytes: total });
            }
            if is_rego {
                modules.push((name, text));
            } else if is_manifest {
                manifest = serde_json::from_str(&text).map_err(|e| BundleError::Read {
                    path: path.display().to_string(),
                    message: format!("bad manifest: {e}"),
                })?;
            } else {
                let doc: serde_json::Value =
                    serde_json::from_str(&text).map_err(|e| BundleError::Read {
                        path: path.display().to_string(),
                        message: format!("bad JSON: {e}"),
                    })?;
                let prefix: Vec<String> = rel
                    .parent()
                    .map(|p| {
                        p.components()
                            .map(|c| c.as_os_str().to_string_lossy().into_owned())
                            .collect()
                    })
                    .unwrap_or_default();
                merge_at(&mut data, &prefix, doc).map_err(|message| BundleError::Read {
                    path: path.display().to_string(),
                    message,
                })?;
            }
        }
        if modules.is_empty() {
            return Err(BundleError::Read {
                path: dir.display().to_string(),
                message: "no .rego files".into(),
            });
        }
        Self::new(
            modules,
            data,
            manifest.metadata.entrypoint.as_deref(),
            manifest.revision,
        )
    }

    /// A bundle from files and directories, as `opa eval -d` takes them: `.rego` files are
    /// modules, `.json` files are merged into `data` at the root, directories are read as
    /// bundle directories.
    pub fn load_paths(paths: &[PathBuf]) -> Result<Self, BundleError> {
        let mut modules = Vec::new();
        let mut data = serde_json::Value::Object(serde_json::Map::new());
        let mut entrypoint = None;
        for path in paths {
            let read = |e: std::io::Error| BundleError::Read {
                path: path.display().to_string(),
                message: e.to_string(),
            };
            if path.is_dir() {
                let b = Self::load_dir(path)?;
                modules.extend(b.modules);
                merge_at(&mut data, &[], b.data).map_err(|message| BundleError::Read {
                    path: path.display().to_string(),
                    message,
                })?;
                entrypoint = Some(b.entrypoint);
            } else if path.extension().is_some_and(|e| e == "rego") {
                modules.push((
                    path.display().to_string(),
                    std::fs::read_to_string(path).map_err(read)?,
                ));
            } else {
                let text = std::fs::read_to_string(path).map_err(read)?;
                let doc = serde_json::from_str(&text).map_err(|e| BundleError::Read {
                    path: path.display().to_string(),
                    message: format!("bad JSON: {e}"),
                })?;
                merge_at(&mut data, &[], doc).map_err(|message| BundleError::Read {
                    path: path.display().to_string(),
                    message,
                })?;
            }
        }
        Self::new(modules, data, entrypoint.as_deref(), None)
    }

    /// Bytes of source and data, the basis of the cache's memory estimate.
    pub fn source_bytes(&self) -> usize {
        let data = serde_json::to_string(&self.data).map_or(0, |s| s.len());
        self.modules
            .iter()
            .map(|(n, t)| n.len() + t.len())
            .sum::<usize>()
            + data
    }

    fn content_hash(&self) -> u64 {
        // FNV-1a over names, texts and data: a stable revision when no manifest gives one.
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        let mut eat = |b: &[u8]| {
            for x in b {
                h ^= u64::from(*x);
                h = h.wrapping_mul(0x0100_0000_01b3);
            }
        };
        for (n, t) in &self.modules {
            eat(n.as_bytes());
            eat(t.as_bytes());
        }
        eat(self.data.to_string().as_bytes());
        eat(self.entrypoint.as_bytes());
        h
    }

    /// `(package, rule)` of every `test_*` rule, found by scanning each module's top-level
    /// lines as `opa test` discovers them.
    pub fn test_rules(&self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        for (_, text) in &self.modules {
            let mut package = None;
            for line in text.lines() {
                if let Some(rest) = line.strip_prefix("package ") {
                    package = Some(format!("data.{}", rest.trim()));
                    continue;
                }
                let Some(pkg) = &package else { continue };
                if !line.starts_with("test_") {
                    continue;
                }
                let name: String = line
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                if !out.iter().any(|(p, n)| p == pkg && *n == name) {
                    out.push((pkg.clone(), name));
                }
            }
        }
        out
    }
}

/// `authz.decision` and `data.authz.decision` name the same rule.
pub fn normalize_entrypoint(e: &str) -> String {
    let e = e.trim().trim_start_matches('/').replace('/', ".");
    if e == "data" || e.starts_with("data.") {
        e
    } else {
        format!("data.{e}")
    }
}

fn walk(root: &Path, dir: &Path, out: &mut Vec<(PathBuf, PathBuf)>) -> Result<(), BundleError> {
    let read = |e: std::io::Error| BundleError::Read {
        path: dir.display().to_string(),
        message: e.to_string(),
    };
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .map_err(read)?
        .collect::<Result<_, _>>()
        .map_err(read)?;
    entries.sort_by_key(std::fs::DirEntry::file_name);
    for entry in entries {
        let path = entry.path();
        let ty = entry.file_type().map_err(read)?;
        if ty.is_dir() {
            walk(root, &path, out)?;
        } else if ty.is_file() || ty.is_symlink() {
            let rel = path.strip_prefix(root).unwrap_or(&path).to_path_buf();
            out.push((rel, path));
        }
    }
    Ok(())
}

/// Merges `doc` into `data` at `prefix`; objects merge key by key, anything else conflicts.
fn merge_at(
    data: &mut serde_json::Value,
    prefix: &[String],
    doc: serde_json::Value,
) -> Result<(), String> {
    let mut node = data;
    for p in prefix {
        let obj = node
            .as_object_mut()
            .ok_or_else(|| format!("data.{} is not an object", prefix.join(".")))?;
        node = obj
            .entry(p.clone())
            .or_insert_with(|| serde_json::Value::Object(serde_json::Map::new()));
    }
    merge(node, doc, &mut prefix.to_vec())
}

fn merge(
    into: &mut serde_json::Value,
    doc: serde_json::Value,
    path: &mut Vec<String>,
) -> Result<(), String> {
    match (into, doc) {
        (serde_json::Value::Object(a), serde_json::Value::Object(b)) => {
            for (k, v) in b {
                path.push(k.clone());
                match a.get_mut(&k) {
                    Some(existing) => merge(existing, v, path)?,
                    None => {
                        a.insert(k, v);
                    }
                }
                path.pop();
            }
            Ok(())
        }
        _ => Err(format!(
            "data.{} is defined twice with different values",
            path.join(".")
        )),
    }
}

/// Decision-relevant facts for error messages in [`BTreeMap`] order.
pub(crate) fn summary(names: &BTreeMap<String, bool>) -> String {
    names
        .iter()
        .filter(|(_, ok)| !**ok)
        .map(|(n, _)| n.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entrypoints_normalize() {
        assert_eq!(
            normalize_entrypoint("authz/decision"),
            "data.authz.decision"
        );
        assert_eq!(normalize_entrypoint("data.a.b"), "data.a.b");
        assert_eq!(normalize_entrypoint("a.b"), "data.a.b");
    }

    #[test]
    fn nested_data_merges_and_conflicts_are_named() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("p.rego"), "package authz\nx := 1\n").unwrap();
        std::fs::write(dir.path().join("data.json"), r#"{"a": {"b": 1}}"#).unwrap();
        std::fs::create_dir_all(dir.path().join("a")).unwrap();
        std::fs::write(dir.path().join("a/data.json"), r#"{"c": 2}"#).unwrap();
        let b = Bundle::load_dir(dir.path()).unwrap();
        assert_eq!(b.data, serde_json::json!({"a": {"b": 1, "c": 2}}));
        std::fs::write(dir.path().join("a/data.json"), r#"{"b": 3}"#).unwrap();
        let e = Bundle::load_dir(dir.path()).unwrap_err().to_string();
        assert!(e.contains("data.a.b is defined twice"), "{e}");
    }

    #[test]
    fn manifest_sets_entrypoint_and_revision() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("p.rego"), "package x\nallow := true\n").unwrap();
        std::fs::write(
            dir.path().join(".manifest"),
            r#"{"revision": "r7", "metadata": {"entrypoint": "x/allow"}}"#,
        )
        .unwrap();
        let b = Bundle::load_dir(dir.path()).unwrap();
        assert_eq!(b.entrypoint, "data.x.allow");
        assert_eq!(b.revision, "r7");
        std::fs::write(dir.path().join(".manifest"), "{").unwrap();
        let e = Bundle::load_dir(dir.path()).unwrap_err().to_string();
        assert!(e.contains(".manifest") && e.contains("bad manifest"), "{e}");
    }

    #[test]
    fn test_rules_are_found_per_package() {
        let b = Bundle::new(
            vec![(
                "a_test.rego".into(),
                "package a\n\ntest_one if { true }\ntest_two := true\nnot_a_test := 1\n".into(),
            )],
            serde_json::json!({}),
            None,
            None,
        )
        .unwrap();
        assert_eq!(
            b.test_rules(),
            vec![
                ("data.a".to_string(), "test_one".to_string()),
                ("data.a".to_string(), "test_two".to_string())
            ]
        );
    }
}

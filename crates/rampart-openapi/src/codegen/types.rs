//! Rust types for a spec's schemas: serde structs for objects, enums for string enums,
//! `oneOf`/`anyOf` as enums (dispatched on the discriminator when there is one, else tried
//! in order), `allOf` as a struct flattening its parts, type arrays with `"null"` as
//! `Option`, `additionalProperties` as a map, `prefixItems` closed by `items: false` and
//! required by `minItems` as a tuple, recursion through `Box`. Inline object and enum schemas get named types of their
//! own (`OrderLinesItem`).

use std::collections::BTreeSet;
use std::fmt::Write;

use heck::{ToPascalCase, ToSnakeCase};
use serde_json::Value;

/// What generation accumulates: named types, in order, and the names taken.
#[derive(Default)]
pub(crate) struct Types {
    pub(crate) out: String,
    taken: BTreeSet<String>,
    /// Component names, for `$ref`s.
    components: BTreeSet<String>,
    /// The integer readers fields use (`one`, `opt`): only those are generated.
    whole: BTreeSet<&'static str>,
}

const KEYWORDS: &[&str] = &[
    "as", "break", "const", "continue", "crate", "else", "enum", "extern", "false", "fn", "for",
    "if", "impl", "in", "let", "loop", "match", "mod", "move", "mut", "pub", "ref", "return",
    "self", "Self", "static", "struct", "super", "trait", "true", "type", "unsafe", "use", "where",
    "while", "async", "await", "dyn", "abstract", "become", "box", "do", "final", "macro",
    "override", "priv", "typeof", "unsized", "virtual", "yield", "try", "gen",
];

/// A Rust type name for `name` (`Pascal`, never a keyword, never starting with a digit).
pub(crate) fn type_name(name: &str) -> String {
    let mut n = name.to_pascal_case();
    if n.is_empty() || n.starts_with(|c: char| c.is_ascii_digit()) {
        n = format!("T{n}");
    }
    if KEYWORDS.contains(&n.as_str()) {
        n.push('_');
    }
    n
}

/// A field or function name for `name`.
pub(crate) fn field_name(name: &str) -> String {
    let mut n = name.to_snake_case();
    if n.is_empty() || n.starts_with(|c: char| c.is_ascii_digit()) {
        n = format!("f_{n}");
    }
    if KEYWORDS.contains(&n.as_str()) {
        n.push('_');
    }
    n
}

pub(crate) fn doc(out: &mut String, indent: &str, schema: &Value) {
    for key in ["title", "description"] {
        if let Some(text) = schema.get(key).and_then(Value::as_str) {
            for line in doc_lines(text) {
                let _ = writeln!(out, "{indent}/// {line}");
            }
        }
    }
}

/// A description's lines for a doc comment: code blocks in it become `text` blocks (they
/// are JavaScript or shell more often than Rust, and rustdoc would compile them).
pub(crate) fn doc_lines(text: &str) -> Vec<String> {
    let mut open = false;
    let mut out = Vec::new();
    for l in text.lines() {
        let l = l.trim_end();
        let fence = l.trim_start();
        if fence.starts_with("```") {
            open = !open;
            if open {
                out.push(format!("{}```text", &l[..l.len() - fence.len()]));
                continue;
            }
        }
        out.push(l.to_owned());
    }
    if open {
        out.push("```".to_owned());
    }
    out
}

impl Types {
    pub(crate) fn new(components: impl IntoIterator<Item = String>) -> Self {
        let components: BTreeSet<String> = components.into_iter().collect();
        Self {
            taken: components.iter().map(|c| type_name(c)).collect(),
            components,
            ..Self::default()
        }
    }

    fn fresh(&mut self, wanted: &str) -> String {
        let base = type_name(wanted);
        let mut name = base.clone();
        let mut n = 2;
        while self.taken.contains(&name) {
            name = format!("{base}{n}");
            n += 1;
        }
        self.taken.insert(name.clone());
        name
    }

    /// Emits the named type `name` for `schema` (a component).
    pub(crate) fn named(&mut self, name: &str, schema: &Value) {
        let rust = type_name(name);
        self.define(&rust, schema, name);
    }

    /// Defines `rust` as `schema` if it needs a definition of its own, else an alias.
    fn define(&mut self, rust: &str, schema: &Value, origin: &str) {
        if let Some(variants) = schema
            .get("oneOf")
            .or_else(|| schema.get("anyOf"))
            .and_then(Value::as_array)
        {
            return self.union(rust, schema, variants);
        }
        if is_string_enum(schema) {
            return self.string_enum(rust, schema);
        }
        if is_object(schema) {
            return self.object(rust, schema);
        }
        let ty = self.type_of(schema, rust, origin);
        let mut out = String::new();
        doc(&mut out, "", schema);
        let _ = writeln!(out, "pub type {rust} = {ty};\n");
        self.out.push_str(&out);
    }

    /// The Rust type of `schema` where it is used, inside type `owner` (naming inline types
    /// after `hint`).
    pub(crate) fn type_of(&mut self, schema: &Value, owner: &str, hint: &str) -> String {
        if let Some(r) = schema.get("$ref").and_then(Value::as_str) {
            return match r.strip_prefix("#/components/schemas/") {
                Some(c) if self.components.contains(c) => {
                    let t = type_name(c);
                    if t == owner { format!("Box<{t}>") } else { t }
                }
                _ => "serde_json::Value".into(),
            };
        }
        let (ty, nullable) = single_type(schema);
        let inner = if schema.get("oneOf").is_some()
            || schema.get("anyOf").is_some()
            || is_string_enum(schema)
            || is_object(schema)
        {
            let name = self.fresh(&format!("{owner}_{hint}"));
            self.define(&name, schema, hint);
            name
        } else {
            match ty.as_deref() {
                Some("string") => "String".into(),
                Some("integer") => match schema["format"].as_str() {
                    Some("int32") => "i32".into(),
                    Some("uint32") => "u32".into(),
                    Some("uint64") => "u64".into(),
                    _ => "i64".into(),
                },
                Some("number") => match schema["format"].as_str() {
                    Some("float") => "f32".into(),
                    _ => "f64".into(),
                },
                Some("boolean") => "bool".into(),
                Some("array") => self.array(schema, owner, hint),
                Some("object") => self.map(schema, owner, hint),
                _ => "serde_json::Value".into(),
            }
        };
        if nullable && inner != "serde_json::Value" {
            format!("Option<{inner}>")
        } else {
            inner
        }
    }

    fn array(&mut self, schema: &Value, owner: &str, hint: &str) -> String {
        // A tuple only when every position must be there: `prefixItems` alone lets an array
        // stop short (`[]` conforms), which a Rust tuple cannot read.
        if let (Some(prefix), Some(false)) = (
            schema.get("prefixItems").and_then(Value::as_array),
            schema.get("items").and_then(Value::as_bool),
        ) && schema
            .get("minItems")
            .and_then(Value::as_u64)
            .is_some_and(|n| n >= prefix.len() as u64)
        {
            let parts: Vec<String> = prefix
                .iter()
                .enumerate()
                .map(|(i, p)| self.type_of(p, owner, &format!("{hint}_{i}")))
                .collect();
            return format!("({},)", parts.join(", "));
        }
        match schema.get("items") {
            Some(items) if items.is_object() => {
                let t = self.type_of(items, owner, &format!("{hint}_item"));
                format!(
                    "Vec<{}>",
                    t.strip_prefix("Box<")
                        .and_then(|t| t.strip_suffix('>'))
                        .unwrap_or(&t)
                )
            }
            _ => "Vec<serde_json::Value>".into(),
        }
    }

    fn map(&mut self, schema: &Value, owner: &str, hint: &str) -> String {
        match schema.get("additionalProperties") {
            Some(v) if v.is_object() => {
                let t = self.type_of(v, owner, &format!("{hint}_value"));
                format!("std::collections::BTreeMap<String, {t}>")
            }
            _ => "serde_json::Map<String, serde_json::Value>".into(),
        }
    }

    fn string_enum(&mut self, rust: &str, schema: &Value) {
        let mut out = String::new();
        doc(&mut out, "", schema);
        let _ = writeln!(
            out,
            "#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]"
        );
        let _ = writeln!(out, "pub enum {rust} {{");
        let mut used = BTreeSet::new();
        for v in schema["enum"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
        {
            let mut variant = type_name(v);
            while !used.insert(variant.clone()) {
                variant.push('_');
            }
            let _ = writeln!(out, "    #[serde(rename = {v:?})]\n    {variant},");
        }
        let _ = writeln!(out, "}}\n");
        self.out.push_str(&out);
    }

    fn object(&mut self, rust: &str, schema: &Value) {
        let required: BTreeSet<&str> = schema["required"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect();
        let mut fields = String::new();
        for (i, part) in schema["allOf"].as_array().into_iter().flatten().enumerate() {
            let t = self.type_of(part, rust, &format!("part{i}"));
            let _ = writeln!(fields, "    #[serde(flatten)]\n    pub part{i}: {t},");
        }
        let mut used = BTreeSet::new();
        for (name, prop) in schema["properties"].as_object().into_iter().flatten() {
            let mut f = field_name(name);
            while !used.insert(f.clone()) {
                f.push('_');
            }
            let t = self.type_of(prop, rust, name);
            doc(&mut fields, "    ", prop);
            let required = required.contains(name.as_str());
            // Optional fields are `Option`s (a type array with "null" may make one already).
            let t = if required || t.starts_with("Option<") {
                t
            } else {
                format!("Option<{t}>")
            };
            let mut attrs = Vec::new();
            if f != *name {
                attrs.push(format!("rename = {name:?}"));
            }
            // JSON Schema's integers include `2.0`; serde's do not.
            if let Some(with) = whole(&t) {
                self.whole.insert(with);
                attrs.push(format!(
                    "deserialize_with = \"crate::types::whole::{with}\""
                ));
            }
            if !required {
                attrs.push("default, skip_serializing_if = \"Option::is_none\"".into());
            }
            if !attrs.is_empty() {
                let _ = writeln!(fields, "    #[serde({})]", attrs.join(", "));
            }
            let _ = writeln!(fields, "    pub {f}: {t},");
        }
        if let Some(extra) = schema.get("additionalProperties").filter(|v| v.is_object()) {
            let t = self.type_of(extra, rust, "extra");
            let _ = writeln!(
                fields,
                "    #[serde(flatten)]\n    pub extra: std::collections::BTreeMap<String, {t}>,"
            );
        }
        let mut out = String::new();
        doc(&mut out, "", schema);
        let _ = writeln!(
            out,
            "#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]"
        );
        let _ = writeln!(out, "pub struct {rust} {{\n{fields}}}\n");
        self.out.push_str(&out);
    }

    /// `oneOf` / `anyOf`: an enum. With a discriminator, deserialized by its value (the
    /// variant keeps the property); without, each variant is tried in order.
    fn union(&mut self, rust: &str, schema: &Value, variants: &[Value]) {
        let tag = schema["discriminator"]["propertyName"].as_str();
        let mapping: Vec<(String, String)> = schema["discriminator"]["mapping"]
            .as_object()
            .into_iter()
            .flatten()
            .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_owned())))
            .collect();
        let mut arms = Vec::new();
        for (i, v) in variants.iter().enumerate() {
            let r = v.get("$ref").and_then(Value::as_str);
            let name = r
                .and_then(|r| r.rsplit('/').next())
                .map_or_else(|| format!("Variant{i}"), type_name);
            let t = self.type_of(v, rust, &format!("variant{i}"));
            let values: Vec<String> = match r {
                Some(r) => {
                    let mapped: Vec<String> = mapping
                        .iter()
                        .filter(|(_, to)| to == r)
                        .map(|(k, _)| k.clone())
                        .collect();
                    if mapped.is_empty() {
                        vec![r.rsplit('/').next().unwrap_or(r).to_owned()]
                    } else {
                        mapped
                    }
                }
                None => Vec::new(),
            };
            arms.push((name, t, values));
        }
        let mut out = String::new();
        doc(&mut out, "", schema);
        let derive = if tag.is_some() {
            "Debug, Clone, PartialEq, serde::Serialize"
        } else {
            "Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize"
        };
        let _ = writeln!(
            out,
            "#[derive({derive})]\n#[serde(untagged)]\npub enum {rust} {{"
        );
        for (name, t, _) in &arms {
            let _ = writeln!(out, "    {name}({t}),");
        }
        let _ = writeln!(out, "}}\n");
        if let Some(tag) = tag {
            let _ = writeln!(out, "impl<'de> serde::Deserialize<'de> for {rust} {{");
            let _ = writeln!(
                out,
                "    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {{"
            );
            let _ = writeln!(
                out,
                "        use serde::de::Error;\n        let v = serde_json::Value::deserialize(d)?;"
            );
            let _ = writeln!(
                out,
                "        match v.get({tag:?}).and_then(serde_json::Value::as_str) {{"
            );
            for (name, _, values) in &arms {
                for value in values {
                    let _ = writeln!(
                        out,
                        "            Some({value:?}) => serde_json::from_value(v).map(Self::{name}).map_err(D::Error::custom),"
                    );
                }
            }
            let _ = writeln!(
                out,
                "            other => Err(D::Error::custom(format!(\"unknown {tag} {{other:?}}\"))),\n        }}\n    }}\n}}\n"
            );
        }
        self.out.push_str(&out);
    }
}

/// The schema's type (the first that is not `"null"`) and whether `null` is allowed.
fn single_type(schema: &Value) -> (Option<String>, bool) {
    match &schema["type"] {
        Value::String(t) => (Some(t.clone()), false),
        Value::Array(ts) => {
            let names: Vec<&str> = ts.iter().filter_map(Value::as_str).collect();
            (
                names
                    .iter()
                    .find(|t| **t != "null")
                    .map(|t| (*t).to_owned()),
                names.contains(&"null"),
            )
        }
        _ => (None, false),
    }
}

fn is_string_enum(schema: &Value) -> bool {
    schema["enum"]
        .as_array()
        .is_some_and(|e| !e.is_empty() && e.iter().all(Value::is_string))
}

fn is_object(schema: &Value) -> bool {
    let (ty, _) = single_type(schema);
    (ty.as_deref() == Some("object") || ty.is_none())
        && (schema.get("properties").is_some() || schema.get("allOf").is_some())
}

/// The reader of an integer field (`one`, or `opt` for an optional one), if `t` is one.
fn whole(t: &str) -> Option<&'static str> {
    const INTS: [&str; 4] = ["i64", "i32", "u32", "u64"];
    if INTS.contains(&t) {
        return Some("one");
    }
    t.strip_prefix("Option<")
        .and_then(|t| t.strip_suffix('>'))
        .filter(|t| INTS.contains(t))
        .map(|_| "opt")
}

impl Types {
    /// The module integer fields read through, with the readers they use (nothing when no
    /// field is an integer): JSON Schema counts `2.0` as the integer 2, so a client may send
    /// it, and serde's integers would refuse it.
    pub(crate) fn whole_module(&self) -> String {
        if self.whole.is_empty() {
            return String::new();
        }
        let mut m = String::from(WHOLE_OF);
        if self.whole.contains("one") {
            m.push_str(WHOLE_ONE);
        }
        if self.whole.contains("opt") {
            m.push_str(WHOLE_OPT);
        }
        m.push_str("}\n");
        m
    }
}

const WHOLE_OF: &str = r#"
/// Integer fields read as JSON Schema reads integers: `2.0` is 2.
pub(crate) mod whole {
    use serde::Deserialize;

    fn of<T: TryFrom<i64> + TryFrom<u64>, E: serde::de::Error>(n: serde_json::Number) -> Result<T, E> {
        let bad = || E::custom(format!("{n} is not an integer in range"));
        if let Some(i) = n.as_i64() {
            return T::try_from(i).map_err(|_| bad());
        }
        if let Some(u) = n.as_u64() {
            return T::try_from(u).map_err(|_| bad());
        }
        match n.as_f64() {
            Some(f) if f.fract() == 0.0 && (f as i64) as f64 == f => T::try_from(f as i64).map_err(|_| bad()),
            _ => Err(bad()),
        }
    }
"#;

const WHOLE_ONE: &str = r#"
    pub fn one<'de, D: serde::Deserializer<'de>, T: TryFrom<i64> + TryFrom<u64>>(d: D) -> Result<T, D::Error> {
        of(serde_json::Number::deserialize(d)?)
    }
"#;

const WHOLE_OPT: &str = r#"
    pub fn opt<'de, D: serde::Deserializer<'de>, T: TryFrom<i64> + TryFrom<u64>>(d: D) -> Result<Option<T>, D::Error> {
        Option::<serde_json::Number>::deserialize(d)?.map(of).transpose()
    }
"#;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_rust_names() {
        assert_eq!(type_name("new-order"), "NewOrder");
        assert_eq!(type_name("2fa"), "T2fa");
        assert_eq!(type_name("Self"), "Self_");
        assert_eq!(field_name("type"), "type_");
        assert_eq!(field_name("orderId"), "order_id");
        assert_eq!(field_name("2fa"), "f_2fa");
        assert_eq!(
            doc_lines("Use:\n```javascript\nconst x = 1;\n```\nand\n  ```\nsh\n"),
            [
                "Use:",
                "```text",
                "const x = 1;",
                "```",
                "and",
                "  ```text",
                "sh",
                "```"
            ]
        );
        let mut t = Types::new(["Order".to_owned()]);
        assert_eq!(t.fresh("order"), "Order2");
        assert_eq!(t.fresh("order"), "Order3");
    }
}

//! The operations as code: parameter structs (`params.rs`), an axum server trait and its
//! router (`server.rs`), a reqwest client (`client.rs`).

use std::fmt::Write;

use super::types::{Types, field_name, type_name};
use crate::operation::{In, Operation};

struct Op {
    fn_name: String,
    method: String,
    /// The path with `{name}` parameters, as the spec writes it (axum 0.8 reads the same).
    path: String,
    summary: Vec<String>,
    path_params: Option<(String, Vec<(String, String)>)>,
    query: Option<String>,
    /// The JSON body's Rust type, if the operation takes one.
    body: Option<String>,
}

pub(crate) struct Api {
    ops: Vec<Op>,
    params: String,
}

impl Api {
    pub(crate) fn new(spec: &crate::spec::Spec, ops: &[Operation], types: &mut Types) -> Self {
        let mut params = String::from("//! Each operation's path and query parameters.\n\n");
        let mut out = Vec::new();
        for o in ops {
            let stem = type_name(&o.id);
            let path_params: Vec<(String, String, String)> = o
                .params
                .iter()
                .filter(|p| p.location == In::Path)
                .map(|p| {
                    (
                        p.name.clone(),
                        field_name(&p.name),
                        scalar(p.kind.as_deref()),
                    )
                })
                .collect();
            let query: Vec<(String, String)> = o
                .params
                .iter()
                .filter(|p| p.location == In::Query)
                .map(|p| (p.name.clone(), field_name(&p.name)))
                .collect();
            let path_struct = (!path_params.is_empty()).then(|| {
                let name = format!("{stem}Path");
                param_struct(
                    &mut params,
                    &name,
                    &path_params
                        .iter()
                        .map(|(n, f, t)| (n.clone(), f.clone(), t.clone(), true))
                        .collect::<Vec<_>>(),
                );
                (
                    name,
                    path_params
                        .iter()
                        .map(|(n, f, _)| (n.clone(), f.clone()))
                        .collect(),
                )
            });
            // Query values stay text: arrays and objects come in the spec's own styles.
            let query_struct = (!query.is_empty()).then(|| {
                let name = format!("{stem}Query");
                param_struct(
                    &mut params,
                    &name,
                    &query
                        .iter()
                        .map(|(n, f)| (n.clone(), f.clone(), "String".to_owned(), false))
                        .collect::<Vec<_>>(),
                );
                name
            });
            let body = o.body.as_ref().and_then(|b| {
                let (_, place) = b.content.iter().find(|(m, s)| {
                    s.is_some() && (m == "application/json" || m.ends_with("+json"))
                })?;
                let (uri, pointer) = place.as_ref()?;
                let schema = spec.documents.get(uri)?.pointer(pointer)?;
                Some(types.type_of(schema, &format!("{stem}Body"), "body"))
            });
            let mut summary = Vec::new();
            for text in [&o.summary, &o.description].into_iter().flatten() {
                summary.extend(text.lines().map(|l| l.trim_end().to_owned()));
            }
            out.push(Op {
                fn_name: field_name(&o.id),
                method: o.method.as_str().to_ascii_lowercase(),
                path: o.path.as_str().to_owned(),
                summary,
                path_params: path_struct,
                query: query_struct,
                body,
            });
        }
        Self { ops: out, params }
    }

    pub(crate) fn params(&self) -> String {
        self.params.clone()
    }

    pub(crate) fn server(&self) -> String {
        let mut s = String::from(
            "//! The API as an axum service: implement [`Api`], serve [`router`].\n\nuse std::future::Future;\nuse std::sync::Arc;\n\nuse axum::extract::State;\nuse axum::http::HeaderMap;\nuse axum::response::Response;\n\n/// One method per operation; each answers with a whole response.\npub trait Api: Send + Sync + 'static {\n",
        );
        for o in &self.ops {
            for line in &o.summary {
                let _ = writeln!(s, "    /// {line}");
            }
            let _ = writeln!(
                s,
                "    fn {}(&self, {}) -> impl Future<Output = Response> + Send;",
                o.fn_name,
                args(o, true)
            );
        }
        s.push_str("}\n\n/// Routes every operation to `api`.\npub fn router<A: Api>(api: Arc<A>) -> axum::Router {\n    axum::Router::new()\n");
        let mut by_path: Vec<(&str, Vec<&Op>)> = Vec::new();
        for o in &self.ops {
            match by_path.iter_mut().find(|(p, _)| *p == o.path) {
                Some((_, v)) => v.push(o),
                None => by_path.push((&o.path, vec![o])),
            }
        }
        for (path, ops) in by_path {
            let mut chain = String::new();
            for (i, o) in ops.iter().enumerate() {
                let mut extract = vec!["State(api): State<Arc<A>>".to_owned()];
                let mut call = Vec::new();
                if let Some((t, _)) = &o.path_params {
                    extract.push(format!(
                        "axum::extract::Path(path): axum::extract::Path<crate::params::{t}>"
                    ));
                    call.push("path");
                }
                if let Some(t) = &o.query {
                    extract.push(format!(
                        "axum::extract::Query(query): axum::extract::Query<crate::params::{t}>"
                    ));
                    call.push("query");
                }
                extract.push("headers: HeaderMap".into());
                call.push("headers");
                if let Some(t) = &o.body {
                    extract.push(format!(
                        "axum::extract::Json(body): axum::extract::Json<{}>",
                        qualify(t)
                    ));
                    call.push("body");
                }
                let handler = format!(
                    "|{}| async move {{ api.{}({}).await }}",
                    extract.join(", "),
                    o.fn_name,
                    call.join(", ")
                );
                if i == 0 {
                    let _ = write!(chain, "axum::routing::{}({handler})", o.method);
                } else {
                    let _ = write!(chain, ".{}({handler})", o.method);
                }
            }
            let _ = writeln!(s, "        .route({path:?}, {chain})");
        }
        s.push_str("        .with_state(api)\n}\n");
        s
    }

    pub(crate) fn client(&self) -> String {
        let mut s = String::from(
            "//! The API from the calling side, on reqwest.\n\n/// A client for one base URL (`http://host:port`, with any base path).\n#[derive(Debug, Clone)]\npub struct Client {\n    base: String,\n    http: reqwest::Client,\n}\n\n/// A path parameter as one URL segment (RFC 3986 unreserved characters kept).\n#[allow(dead_code)]\nfn segment(v: &impl std::fmt::Display) -> String {\n    let mut out = String::new();\n    for b in v.to_string().bytes() {\n        if b.is_ascii_alphanumeric() || b\"-._~\".contains(&b) {\n            out.push(b as char);\n        } else {\n            out.push_str(&format!(\"%{b:02X}\"));\n        }\n    }\n    out\n}\n\nimpl Client {\n    pub fn new(base: impl Into<String>) -> Self {\n        Self { base: base.into().trim_end_matches('/').to_owned(), http: reqwest::Client::new() }\n    }\n",
        );
        for o in &self.ops {
            for line in &o.summary {
                let _ = writeln!(s, "    /// {line}");
            }
            let mut url = o.path.clone();
            let mut fmt_args = Vec::new();
            if let Some((_, fields)) = &o.path_params {
                for (name, field) in fields {
                    url = url.replace(&format!("{{{name}}}"), "{}");
                    fmt_args.push(format!("segment(&path.{field})"));
                }
            }
            let url_expr = if fmt_args.is_empty() {
                format!("format!(\"{{}}{url}\", self.base)")
            } else {
                format!("format!(\"{{}}{url}\", self.base, {})", fmt_args.join(", "))
            };
            let _ = writeln!(
                s,
                "    pub async fn {}(&self, {}) -> reqwest::Result<reqwest::Response> {{",
                o.fn_name,
                args(o, false)
            );
            let _ = writeln!(s, "        let req = self.http.{}({url_expr});", o.method);
            if o.query.is_some() {
                s.push_str("        let req = req.query(query);\n");
            }
            if o.body.is_some() {
                s.push_str("        let req = req.json(body);\n");
            }
            s.push_str("        req.send().await\n    }\n");
        }
        s.push_str("}\n");
        s
    }
}

/// The method's parameters: by value for the server, by reference for the client.
fn args(o: &Op, server: bool) -> String {
    let amp = if server { "" } else { "&" };
    let mut a = Vec::new();
    if let Some((t, _)) = &o.path_params {
        a.push(format!("path: {amp}crate::params::{t}"));
    }
    if let Some(t) = &o.query {
        a.push(format!("query: {amp}crate::params::{t}"));
    }
    if server {
        a.push("headers: HeaderMap".into());
    }
    if let Some(t) = &o.body {
        a.push(format!("body: {amp}{}", qualify(t)));
    }
    a.join(", ")
}

/// A type from `types.rs` named from another module.
fn qualify(t: &str) -> String {
    let primitive = ["String", "bool", "i32", "i64", "u32", "u64", "f32", "f64"];
    if t.starts_with("serde_json")
        || t.starts_with("std::")
        || t.starts_with('(')
        || primitive.contains(&t)
    {
        return t.to_owned();
    }
    match t.split_once('<') {
        Some((outer, inner)) => format!("{outer}<{}", qualify_inner(inner)),
        None => format!("crate::types::{t}"),
    }
}

fn qualify_inner(inner: &str) -> String {
    let t = inner.trim_end_matches('>');
    let closing = &inner[t.len()..];
    format!("{}{closing}", qualify(t))
}

fn scalar(kind: Option<&str>) -> String {
    match kind {
        Some("integer") => "i64",
        Some("number") => "f64",
        Some("boolean") => "bool",
        _ => "String",
    }
    .to_owned()
}

fn param_struct(out: &mut String, name: &str, fields: &[(String, String, String, bool)]) {
    let _ = writeln!(
        out,
        "#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]\npub struct {name} {{"
    );
    for (wire, field, ty, required) in fields {
        let rename = if wire == field {
            String::new()
        } else {
            format!("rename = {wire:?}, ")
        };
        if *required {
            if rename.is_empty() {
                let _ = writeln!(out, "    pub {field}: {ty},");
            } else {
                let _ = writeln!(
                    out,
                    "    #[serde({})]\n    pub {field}: {ty},",
                    rename.trim_end_matches(", ")
                );
            }
        } else {
            let _ = writeln!(
                out,
                "    #[serde({rename}default, skip_serializing_if = \"Option::is_none\")]\n    pub {field}: Option<{ty}>,"
            );
        }
    }
    let _ = writeln!(out, "}}\n");
}

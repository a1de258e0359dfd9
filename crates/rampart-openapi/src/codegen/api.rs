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
    body: Option<BodyArg>,
    /// Whether axum can route it: its router takes parameters only as whole segments.
    routable: bool,
}

/// How a handler takes the request body.
enum BodyArg {
    /// The only media type is JSON: read into its Rust type (`Option` when not required).
    Json { ty: String, required: bool },
    /// Other media types too: the bytes, with the `content-type` header to tell them apart.
    Raw { media: Vec<String> },
}

/// One query parameter as a field of the operation's query struct.
struct QueryField {
    wire: String,
    field: String,
    /// The value's (or each item's) Rust type.
    ty: String,
    required: bool,
    /// For arrays: `None` when each item comes as its own `name=value` pair (form,
    /// exploded), else the separator of the one value.
    array: Option<Option<char>>,
}

pub(crate) struct Api {
    ops: Vec<Op>,
    params: String,
}

impl Api {
    pub(crate) fn new(spec: &crate::spec::Spec, ops: &[Operation], types: &mut Types) -> Self {
        let mut params = String::new();
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
            let query: Vec<QueryField> = o
                .params
                .iter()
                .filter(|p| p.location == In::Query)
                .map(query_field)
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
            let query_struct = (!query.is_empty()).then(|| {
                let name = format!("{stem}Query");
                query_struct(&mut params, &name, &query);
                name
            });
            let body = body_type(spec, o, &stem, types);
            let mut summary: Vec<String> = [&o.summary, &o.description]
                .into_iter()
                .flatten()
                .flat_map(|t| super::types::doc_lines(t))
                .collect();
            if let Some(BodyArg::Raw { media }) = &body {
                if !summary.is_empty() {
                    summary.push(String::new());
                }
                summary.push(format!(
                    "The body as bytes, in one of: `{}` (its `content-type` tells which).",
                    media.join("`, `")
                ));
            }
            out.push(Op {
                fn_name: field_name(&o.id),
                method: o.method.as_str().to_ascii_lowercase(),
                path: o.path.as_str().to_owned(),
                summary,
                path_params: path_struct,
                query: query_struct,
                body,
                routable: !o
                    .path
                    .segments()
                    .iter()
                    .any(|s| matches!(s, rampart_config::template::Segment::Mixed(_))),
            });
        }
        // The value reader only where query structs use it.
        let helper = if out.iter().any(|o| o.query.is_some()) {
            "/// One parameter value read as its type.\nfn parse<T: std::str::FromStr>(name: &str, v: &str) -> Result<T, String> {\n    v.parse().map_err(|_| format!(\"query parameter {name}: {v:?} does not parse\"))\n}\n\n"
        } else {
            ""
        };
        let params = format!("//! Each operation's path and query parameters.\n\n{helper}{params}");
        Self { ops: out, params }
    }

    pub(crate) fn params(&self) -> String {
        self.params.clone()
    }

    pub(crate) fn server(&self) -> String {
        let mut s = String::from(
            "//! The API as an axum service: implement [`Api`] (or start from [`NotImplemented`]),\n//! serve [`router`].\n\nuse std::future::Future;\nuse std::sync::Arc;\n\nuse axum::extract::State;\nuse axum::http::{HeaderMap, StatusCode};\nuse axum::response::{IntoResponse, Response};\n\n/// One method per operation; each answers with a whole response.\npub trait Api: Send + Sync + 'static {\n",
        );
        let mut stubs = String::new();
        for o in &self.ops {
            for line in &o.summary {
                let _ = writeln!(s, "    /// {line}");
            }
            if !o.routable {
                let _ = writeln!(
                    s,
                    "    ///\n    /// Not in [`router`]: axum takes path parameters only as whole segments\n    /// (`{}`); route it yourself.",
                    o.path
                );
            }
            let sig = format!(
                "fn {}(&self, {}) -> impl Future<Output = Response> + Send",
                o.fn_name,
                args(o, true)
            );
            let _ = writeln!(s, "    {sig};");
            let stub_sig = args_with(o, true, "_");
            let _ = writeln!(
                stubs,
                "    fn {}(&self, {stub_sig}) -> impl Future<Output = Response> + Send {{\n        async {{ StatusCode::NOT_IMPLEMENTED.into_response() }}\n    }}",
                o.fn_name
            );
        }
        s.push_str("}\n\n/// Every operation answers 501 Not Implemented: a start to fill in.\n#[derive(Debug, Clone, Copy, Default)]\npub struct NotImplemented;\n\nimpl Api for NotImplemented {\n");
        s.push_str(&stubs);
        s.push_str("}\n\n/// A path parameter that does not parse as its type.\n#[allow(dead_code)]\nfn bad_path() -> Response {\n    (StatusCode::BAD_REQUEST, \"a path parameter does not parse\").into_response()\n}\n\n/// Routes every operation to `api`.\npub fn router<A: Api>(api: Arc<A>) -> axum::Router {\n    axum::Router::new()\n");
        // axum refuses two parameter names at one place of two paths (`/repos/{owner}` and
        // `/repos/{template_owner}/generate`): routes use the first name seen there, and
        // each handler reads its own parameters from that map.
        let mut canonical: Vec<(String, String)> = Vec::new();
        let mut by_path: Vec<(String, Vec<Routed<'_>>)> = Vec::new();
        for o in self.ops.iter().filter(|o| o.routable) {
            let (route, names) = canonical_path(&o.path, &mut canonical);
            match by_path.iter_mut().find(|(p, _)| *p == route) {
                Some((_, v)) => v.push((o, names)),
                None => by_path.push((route, vec![(o, names)])),
            }
        }
        for (path, ops) in by_path {
            let mut chain = String::new();
            for (i, (o, names)) in ops.iter().enumerate() {
                let handler = handler(o, names);
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
                s.push_str("        let req = req.query(&query.to_pairs());\n");
            }
            match &o.body {
                Some(BodyArg::Json { required: true, .. }) => {
                    s.push_str("        let req = req.json(body);\n");
                }
                Some(BodyArg::Json {
                    required: false, ..
                }) => s.push_str(
                    "        let req = match body { Some(b) => req.json(b), None => req };\n",
                ),
                Some(BodyArg::Raw { .. }) => s.push_str(
                    "        let req = req.header(\"content-type\", content_type).body(body);\n",
                ),
                None => {}
            }
            s.push_str("        req.send().await\n    }\n");
        }
        s.push_str("}\n");
        s
    }
}

/// How `o`'s handler takes its request body, if it has one.
fn body_type(
    spec: &crate::spec::Spec,
    o: &Operation,
    stem: &str,
    types: &mut Types,
) -> Option<BodyArg> {
    let b = o.body.as_ref()?;
    let json = |m: &str| m == "application/json" || m.ends_with("+json");
    match b.content.as_slice() {
        [(m, Some((uri, pointer)))] if json(m) => {
            let schema = spec.documents.get(uri)?.pointer(pointer)?;
            Some(BodyArg::Json {
                ty: types.type_of(schema, stem, "body"),
                required: b.required,
            })
        }
        content => Some(BodyArg::Raw {
            media: content.iter().map(|(m, _)| m.clone()).collect(),
        }),
    }
}

/// A query parameter's field: its type from the schema, arrays in the parameter's style.
fn query_field(p: &crate::operation::Param) -> QueryField {
    let array = (p.kind.as_deref() == Some("array")).then_some(match p.style.as_str() {
        "spaceDelimited" => Some(' '),
        "pipeDelimited" => Some('|'),
        _ if p.explode => None,
        _ => Some(','),
    });
    let ty = match array {
        Some(_) => scalar(p.items.as_deref()),
        None => scalar(p.kind.as_deref()),
    };
    QueryField {
        wire: p.name.clone(),
        field: field_name(&p.name),
        ty,
        required: p.required,
        array,
    }
}

/// The struct of an operation's query parameters, with `from_query` (a raw query string
/// read in each parameter's style) and `to_pairs` (the same written back).
fn query_struct(out: &mut String, name: &str, fields: &[QueryField]) {
    param_struct(
        out,
        name,
        &fields
            .iter()
            .map(|f| {
                let ty = match f.array {
                    Some(_) => format!("Vec<{}>", f.ty),
                    None => f.ty.clone(),
                };
                (f.wire.clone(), f.field.clone(), ty, f.required)
            })
            .collect::<Vec<_>>(),
    );
    let mut read = String::new();
    let mut write = String::new();
    for f in fields {
        let (wire, field) = (&f.wire, &f.field);
        let value = match f.array {
            None => format!("first({wire:?}).map(|v| parse({wire:?}, v)).transpose()?"),
            Some(None) => format!(
                "many({wire:?}).map(|v| v.map(|x| parse({wire:?}, x)).collect()).transpose()?"
            ),
            Some(Some(sep)) => format!(
                "first({wire:?}).map(|v| v.split({sep:?}).map(|x| parse({wire:?}, x)).collect()).transpose()?"
            ),
        };
        let value = if f.required {
            format!("{value}.ok_or_else(|| format!(\"query parameter {wire} is missing\"))?")
        } else {
            value
        };
        let _ = writeln!(read, "            {field}: {value},");
        let push = match f.array {
            None => format!("out.push(({wire:?}.to_owned(), v.to_string()));"),
            Some(None) => {
                format!("for x in v {{ out.push(({wire:?}.to_owned(), x.to_string())); }}")
            }
            Some(Some(sep)) => format!(
                "out.push(({wire:?}.to_owned(), v.iter().map(|x| x.to_string()).collect::<Vec<_>>().join({:?})));",
                sep.to_string()
            ),
        };
        if f.required {
            let _ = writeln!(write, "        let v = &self.{field};\n        {push}");
        } else {
            let _ = writeln!(write, "        if let Some(v) = &self.{field} {{ {push} }}");
        }
    }
    // Only the lookups the fields use: one value, or every repetition (exploded arrays).
    let mut lookups = String::new();
    if fields.iter().any(|f| f.array != Some(None)) {
        lookups.push_str("        let first = |name: &str| pairs.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str());\n");
    }
    if fields.iter().any(|f| f.array == Some(None)) {
        lookups.push_str("        let many = |name: &'static str| { let mut it = pairs.iter().filter(move |(k, _)| k == name).map(|(_, v)| v.as_str()).peekable(); it.peek().is_some().then_some(it) };\n");
    }
    let _ = writeln!(
        out,
        "impl {name} {{\n    /// Reads a raw query string, each parameter in its style.\n    pub fn from_query(raw: &str) -> Result<Self, String> {{\n        let pairs: Vec<(String, String)> = serde_urlencoded::from_str(raw).map_err(|e| e.to_string())?;\n{lookups}        Ok(Self {{\n{read}        }})\n    }}\n\n    /// The parameters as `(name, value)` pairs, in their styles.\n    pub fn to_pairs(&self) -> Vec<(String, String)> {{\n        let mut out = Vec::new();\n{write}        out\n    }}\n}}\n"
    );
}

/// An operation with its parameters' `(own name, route name)`.
type Routed<'o> = (&'o Op, Vec<(String, String)>);

/// `path` with each parameter renamed to the first name seen at its place (same prefix),
/// and the renaming `(own name, route name)`.
fn canonical_path(path: &str, seen: &mut Vec<(String, String)>) -> (String, Vec<(String, String)>) {
    let mut prefix = String::new();
    let mut out = String::new();
    let mut names = Vec::new();
    for seg in path.trim_start_matches('/').split('/') {
        out.push('/');
        if let Some(name) = seg.strip_prefix('{').and_then(|x| x.strip_suffix('}')) {
            let key = format!("{prefix}/{{}}");
            let route = match seen.iter().find(|(k, _)| *k == key) {
                Some((_, n)) => n.clone(),
                None => {
                    seen.push((key.clone(), name.to_owned()));
                    name.to_owned()
                }
            };
            let _ = write!(out, "{{{route}}}");
            names.push((name.to_owned(), route));
            prefix = key;
        } else {
            out.push_str(seg);
            prefix = format!("{prefix}/{seg}");
        }
    }
    (out, names)
}

/// One operation's axum handler: extractors, the typed path, the call.
fn handler(o: &Op, names: &[(String, String)]) -> String {
    let mut extract = vec!["State(api): State<Arc<A>>".to_owned()];
    let mut call = Vec::new();
    let mut prelude = String::new();
    if let Some((t, fields)) = &o.path_params {
        extract
            .push("axum::extract::Path(raw): axum::extract::Path<std::collections::HashMap<String, String>>".into());
        let inits: Vec<String> = fields
            .iter()
            .map(|(wire, field)| {
                let route = names
                    .iter()
                    .find(|(own, _)| own == wire)
                    .map_or(wire.as_str(), |(_, r)| r.as_str());
                format!("{field}: raw.get({route:?})?.parse().ok()?")
            })
            .collect();
        let _ = write!(
            prelude,
            "let Some(path) = (|| Some(crate::params::{t} {{ {} }}))() else {{ return bad_path(); }}; ",
            inits.join(", ")
        );
        call.push("path");
    }
    if let Some(t) = &o.query {
        extract.push("axum::extract::RawQuery(raw_query): axum::extract::RawQuery".into());
        let _ = write!(
            prelude,
            "let query = match crate::params::{t}::from_query(raw_query.as_deref().unwrap_or(\"\")) {{ Ok(q) => q, Err(e) => return (StatusCode::BAD_REQUEST, e).into_response() }}; "
        );
        call.push("query");
    }
    extract.push("headers: HeaderMap".into());
    call.push("headers");
    match &o.body {
        Some(BodyArg::Json { ty, required: true }) => {
            extract.push(format!(
                "axum::extract::Json(body): axum::extract::Json<{}>",
                qualify(ty)
            ));
            call.push("body");
        }
        Some(BodyArg::Json {
            ty,
            required: false,
        }) => {
            extract.push(format!(
                "body: Option<axum::extract::Json<{}>>",
                qualify(ty)
            ));
            call.push("body.map(|b| b.0)");
        }
        Some(BodyArg::Raw { .. }) => {
            extract.push("body: axum::body::Bytes".into());
            call.push("body");
        }
        None => {}
    }
    format!(
        "|{}| async move {{ {prelude}api.{}({}).await }}",
        extract.join(", "),
        o.fn_name,
        call.join(", ")
    )
}

/// The method's parameters as `(name, type)`: by value for the server, by reference for
/// the client.
fn arg_pairs(o: &Op, server: bool) -> Vec<(&'static str, String)> {
    let amp = if server { "" } else { "&" };
    let mut a = Vec::new();
    if let Some((t, _)) = &o.path_params {
        a.push(("path", format!("{amp}crate::params::{t}")));
    }
    if let Some(t) = &o.query {
        a.push(("query", format!("{amp}crate::params::{t}")));
    }
    if server {
        a.push(("headers", "HeaderMap".to_owned()));
    }
    match &o.body {
        Some(BodyArg::Json { ty, required: true }) => {
            a.push(("body", format!("{amp}{}", qualify(ty))));
        }
        Some(BodyArg::Json {
            ty,
            required: false,
        }) => {
            a.push(("body", format!("Option<{amp}{}>", qualify(ty))));
        }
        Some(BodyArg::Raw { .. }) if server => a.push(("body", "axum::body::Bytes".into())),
        Some(BodyArg::Raw { .. }) => {
            a.push(("content_type", "&str".into()));
            a.push(("body", "Vec<u8>".into()));
        }
        None => {}
    }
    a
}

/// `name: Type, ...`, each name prefixed with `prefix`.
fn args_with(o: &Op, server: bool, prefix: &str) -> String {
    arg_pairs(o, server)
        .iter()
        .map(|(n, t)| format!("{prefix}{n}: {t}"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn args(o: &Op, server: bool) -> String {
    args_with(o, server, "")
}

/// A type written for `types.rs`, as another module names it: each generated type name
/// in it (capitalised, not a path segment, not from the prelude or std) gets `crate::types::`.
fn qualify(t: &str) -> String {
    const KNOWN: &[&str] = &["String", "Vec", "Option", "Box", "BTreeMap", "Map", "Value"];
    let mut out = String::new();
    let mut ident = String::new();
    let flush = |ident: &mut String, out: &mut String| {
        if !ident.is_empty() {
            let generated = ident.starts_with(|c: char| c.is_ascii_uppercase())
                && !KNOWN.contains(&ident.as_str())
                && !out.ends_with("::");
            if generated {
                out.push_str("crate::types::");
            }
            out.push_str(ident);
            ident.clear();
        }
    };
    for c in t.chars() {
        if c.is_alphanumeric() || c == '_' {
            ident.push(c);
        } else {
            flush(&mut ident, &mut out);
            out.push(c);
        }
    }
    flush(&mut ident, &mut out);
    out
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

#[cfg(test)]
mod tests {
    use super::qualify;

    #[test]
    fn generated_names_are_qualified_wherever_they_appear() {
        assert_eq!(qualify("NewOrder"), "crate::types::NewOrder");
        assert_eq!(
            qualify("std::collections::BTreeMap<String, Vec<Item>>"),
            "std::collections::BTreeMap<String, Vec<crate::types::Item>>"
        );
        assert_eq!(
            qualify("Option<(f64, Point,)>"),
            "Option<(f64, crate::types::Point,)>"
        );
        assert_eq!(qualify("serde_json::Value"), "serde_json::Value");
        assert_eq!(qualify("i64"), "i64");
    }
}

//! A spec's operations: method, path template, id, tags, security, parameters (path-level
//! and operation-level merged, references followed) and request body.

use rampart_config::template::PathTemplate;
use serde_json::Value;

use crate::Problem;
use crate::spec::Spec;

pub const METHODS: [&str; 8] = [
    "get", "put", "post", "delete", "options", "head", "patch", "trace",
];

/// Where a parameter is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum In {
    Path,
    Query,
    Header,
    Cookie,
}

#[derive(Debug, Clone)]
pub struct Param {
    pub name: String,
    pub location: In,
    pub required: bool,
    /// `simple`, `form`, `label`, `matrix`, `spaceDelimited`, `pipeDelimited`, `deepObject`.
    pub style: String,
    pub explode: bool,
    /// Where its schema is: (document URI, JSON pointer), for the validator.
    pub schema: Option<(String, String)>,
    /// The schema's `type` (the first that is not `"null"`), for reading the string form.
    pub kind: Option<String>,
    /// The item type of an array parameter.
    pub items: Option<String>,
}

#[derive(Debug, Clone)]
pub struct Body {
    pub required: bool,
    /// Media ranges as the spec lists them, each with its schema's place, if any.
    pub content: Vec<(String, Option<(String, String)>)>,
}

#[derive(Debug, Clone)]
pub struct Operation {
    /// `operationId`, or `METHOD path` when the spec gives none.
    pub id: String,
    pub method: http::Method,
    pub path: PathTemplate,
    pub tags: Vec<String>,
    pub summary: Option<String>,
    pub description: Option<String>,
    /// The security requirements in force (the operation's, else the spec's).
    pub security: Value,
    pub params: Vec<Param>,
    pub body: Option<Body>,
    /// Documented responses by status key (`200`, `2XX`, `default`), each with its media
    /// ranges and their schemas' places.
    pub responses: Vec<(String, Body)>,
}

fn esc(s: &str) -> String {
    s.replace('~', "~0").replace('/', "~1")
}

/// Every operation, or every problem found reading them.
pub fn operations(spec: &Spec) -> Result<Vec<Operation>, Vec<Problem>> {
    let root = spec.root();
    let mut out = Vec::new();
    let mut problems = Vec::new();
    let Some(paths) = root["paths"].as_object() else {
        return Ok(out);
    };
    for (path, item) in paths {
        let ip = format!("/paths/{}", esc(path));
        let (ibase, ipointer, item) = match spec.deref(&spec.uri, ip.clone(), item) {
            Ok(x) => x,
            Err(e) => {
                problems.push(Problem::new(&ip, e));
                continue;
            }
        };
        let template = match PathTemplate::parse(path) {
            Ok(t) => t,
            Err(e) => {
                problems.push(Problem::new(&ip, e));
                continue;
            }
        };
        for m in METHODS {
            let Some(op) = item.get(m) else { continue };
            let op_pointer = format!("{ipointer}/{m}");
            match operation(
                spec,
                (ibase, &ipointer, item),
                (m, &op_pointer, op),
                &template,
            ) {
                Ok(o) => out.push(o),
                Err(mut p) => problems.append(&mut p),
            }
        }
    }
    // Duplicates among every operationId written, valid operations or not.
    let mut seen = std::collections::HashSet::new();
    for item in paths.values() {
        for m in METHODS {
            if let Some(id) = item.get(m).and_then(|op| op["operationId"].as_str())
                && !seen.insert(id)
            {
                problems.push(Problem::new(
                    "/paths",
                    format!("operationId {id:?} is used twice"),
                ));
            }
        }
    }
    if problems.is_empty() {
        Ok(out)
    } else {
        Err(problems)
    }
}

/// The path item's parameters overlaid with the operation's (an operation's parameter
/// replaces the path item's of the same name and place).
fn merged_params(
    spec: &Spec,
    base: &str,
    (item_pointer, item): (&str, &Value),
    (pointer, op): (&str, &Value),
) -> (Vec<Param>, Vec<Problem>) {
    let mut problems = Vec::new();
    let mut params: Vec<Param> = Vec::new();
    for (list, lp) in [
        (&item["parameters"], format!("{item_pointer}/parameters")),
        (&op["parameters"], format!("{pointer}/parameters")),
    ] {
        for (i, p) in list.as_array().into_iter().flatten().enumerate() {
            match param(spec, base, &format!("{lp}/{i}"), p) {
                Ok(p) => {
                    params.retain(|q| !(q.name == p.name && q.location == p.location));
                    params.push(p);
                }
                Err(e) => problems.push(e),
            }
        }
    }
    (params, problems)
}

fn operation(
    spec: &Spec,
    (base, item_pointer, item): (&str, &str, &Value),
    (method, pointer, op): (&str, &str, &Value),
    template: &PathTemplate,
) -> Result<Operation, Vec<Problem>> {
    let (params, mut problems) = merged_params(spec, base, (item_pointer, item), (pointer, op));
    for name in template.params() {
        if !params
            .iter()
            .any(|p| p.location == In::Path && p.name == name)
        {
            problems.push(Problem::new(
                pointer,
                format!("path parameter {{{name}}} is not declared"),
            ));
        }
    }
    for p in params.iter().filter(|p| p.location == In::Path) {
        if !template.params().any(|n| n == p.name) {
            problems.push(Problem::new(
                pointer,
                format!("path parameter {:?} is not in the path", p.name),
            ));
        }
    }
    let request_body = match op.get("requestBody") {
        Some(b) => match body(spec, base, &format!("{pointer}/requestBody"), b) {
            Ok(b) => Some(b),
            Err(e) => {
                problems.push(e);
                None
            }
        },
        None => None,
    };
    let mut responses = Vec::new();
    for (code, r) in op["responses"].as_object().into_iter().flatten() {
        match body(spec, base, &format!("{pointer}/responses/{}", esc(code)), r) {
            Ok(b) => responses.push((code.to_ascii_uppercase(), b)),
            Err(e) => problems.push(e),
        }
    }
    if !problems.is_empty() {
        return Err(problems);
    }
    let upper = method.to_ascii_uppercase();
    Ok(Operation {
        id: op["operationId"]
            .as_str()
            .map_or_else(|| format!("{upper} {}", template.as_str()), str::to_owned),
        method: http::Method::from_bytes(upper.as_bytes()).unwrap_or(http::Method::GET),
        path: template.clone(),
        summary: op["summary"].as_str().map(str::to_owned),
        description: op["description"].as_str().map(str::to_owned),
        tags: op["tags"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|t| t.as_str().map(str::to_owned))
            .collect(),
        security: op
            .get("security")
            .or_else(|| spec.root().get("security"))
            .cloned()
            .unwrap_or(Value::Array(Vec::new())),
        params,
        body: request_body,
        responses,
    })
}

fn param(spec: &Spec, base: &str, pointer: &str, p: &Value) -> Result<Param, Problem> {
    let (base, pointer, p) = spec
        .deref(base, pointer.to_owned(), p)
        .map_err(|e| Problem::new(pointer, e))?;
    let name = p["name"]
        .as_str()
        .ok_or_else(|| Problem::new(&pointer, "a parameter needs a name"))?
        .to_owned();
    let location = match p["in"].as_str() {
        Some("path") => In::Path,
        Some("query") => In::Query,
        Some("header") => In::Header,
        Some("cookie") => In::Cookie,
        other => {
            return Err(Problem::new(
                &format!("{pointer}/in"),
                format!("{other:?} is not path, query, header or cookie"),
            ));
        }
    };
    let default_style = match location {
        In::Query | In::Cookie => "form",
        In::Path | In::Header => "simple",
    };
    let style = p["style"].as_str().unwrap_or(default_style).to_owned();
    let explode = p["explode"].as_bool().unwrap_or(style == "form");
    let (schema, kind, items) = match p.get("schema") {
        Some(s) => {
            let sp = format!("{pointer}/schema");
            let (sb, spp, sv) = spec
                .deref(base, sp.clone(), s)
                .map_err(|e| Problem::new(&sp, e))?;
            let items = sv
                .get("items")
                .and_then(|i| spec.deref(sb, format!("{spp}/items"), i).ok())
                .and_then(|(_, _, i)| first_type(i));
            (Some((base.to_owned(), sp)), first_type(sv), items)
        }
        None => (None, None, None),
    };
    Ok(Param {
        name: if location == In::Header {
            name.to_ascii_lowercase()
        } else {
            name
        },
        location,
        required: location == In::Path || p["required"].as_bool().unwrap_or(false),
        style,
        explode,
        schema,
        kind,
        items,
    })
}

/// A schema's type, the first that is not `"null"` when it lists several.
fn first_type(s: &Value) -> Option<String> {
    match &s["type"] {
        Value::String(t) => Some(t.clone()),
        Value::Array(ts) => ts
            .iter()
            .filter_map(Value::as_str)
            .find(|t| *t != "null")
            .map(str::to_owned),
        _ => None,
    }
}

fn body(spec: &Spec, base: &str, pointer: &str, b: &Value) -> Result<Body, Problem> {
    let (base, pointer, b) = spec
        .deref(base, pointer.to_owned(), b)
        .map_err(|e| Problem::new(pointer, e))?;
    let content = b["content"]
        .as_object()
        .into_iter()
        .flatten()
        .map(|(media, m)| {
            let schema = m.get("schema").map(|_| {
                (
                    base.to_owned(),
                    format!("{pointer}/content/{}/schema", esc(media)),
                )
            });
            (media.to_ascii_lowercase(), schema)
        })
        .collect();
    Ok(Body {
        required: b["required"].as_bool().unwrap_or(false),
        content,
    })
}

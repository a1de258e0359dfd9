//! Requests checked against their operation: parameters read in their style (`form`,
//! `simple`, `spaceDelimited`, `pipeDelimited`; exploded or not) and typed by their schema,
//! the content type against the operation's media ranges, JSON bodies against their schema
//! under JSON Schema 2020-12 with formats. Everything is compiled once per spec version;
//! a request only runs validators.

use std::collections::HashMap;

use jsonschema::Validator;
use percent_encoding::percent_decode_str;
use rampart_config::template::PathTemplate;
use referencing::{Draft, Registry};
use serde_json::{Value, json};

use crate::Problem;
use crate::operation::{In, Operation, Param, operations};
use crate::security::{Carried, Requirements};
use crate::spec::Spec;
use crate::tape::{Doc, TapeJson};

/// One way a request differs from its operation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    /// `/path/id`, `/query/limit`, `/header/x-api-key`, `/cookie/session`, `/body/items/0`,
    /// or `/content-type`.
    pub pointer: String,
    pub detail: String,
}

impl Violation {
    fn new(pointer: String, detail: impl Into<String>) -> Self {
        Self {
            pointer,
            detail: detail.into(),
        }
    }
}

/// A spec's operations, each with its validators.
pub struct Validators {
    ops: HashMap<String, Compiled>,
}

type Media = (String, Option<BodyValidator>);

pub struct Compiled {
    pub op: Operation,
    params: Vec<(Param, Option<Validator>)>,
    /// Whether a body is required, and each media range with its validator (JSON ones).
    body: Option<(bool, Vec<Media>)>,
    /// Each documented response's status key and media ranges.
    responses: Vec<(String, Vec<Media>)>,
    security: Requirements,
}

/// The request's head as the gateway decided it.
pub struct Head<'a> {
    pub path: &'a str,
    pub query: Option<&'a str>,
    pub headers: &'a http::HeaderMap,
}

impl Validators {
    pub fn compile(spec: &Spec) -> Result<Self, Vec<Problem>> {
        let ops = operations(spec)?;
        // Each document under its URI, and each schema with an absolute `$id` under that
        // (an OpenAPI document is not a schema, so nothing would find them inside it).
        let mut resources: Vec<(String, Value)> = spec
            .documents
            .iter()
            .map(|(u, d)| (u.clone(), d.clone()))
            .collect();
        for doc in spec.documents.values() {
            with_ids(doc, &mut resources);
        }
        let registry = Registry::new()
            .extend(
                resources
                    .into_iter()
                    .map(|(uri, doc)| (uri, Draft::Draft202012.create_resource(doc))),
            )
            .and_then(referencing::RegistryBuilder::prepare)
            .map_err(|e| vec![Problem::new("", format!("references: {e}"))])?;
        let mut out = HashMap::new();
        let mut problems = Vec::new();
        let schemes = &spec.root()["components"]["securitySchemes"];
        for op in ops {
            match Compiled::new(&registry, op, schemes) {
                Ok(c) => {
                    out.insert(c.op.id.clone(), c);
                }
                Err(p) => problems.push(p),
            }
        }
        if problems.is_empty() {
            Ok(Self { ops: out })
        } else {
            Err(problems)
        }
    }

    pub fn get(&self, operation: &str) -> Option<&Compiled> {
        self.ops.get(operation)
    }

    pub fn operations(&self) -> impl Iterator<Item = &Operation> {
        self.ops.values().map(|c| &c.op)
    }
}

fn with_ids(v: &Value, out: &mut Vec<(String, Value)>) {
    match v {
        Value::Object(m) => {
            if let Some(Value::String(id)) = m.get("$id")
                && id.contains("://")
                && !out.iter().any(|(u, _)| u == id)
            {
                out.push((id.trim_end_matches('#').to_owned(), v.clone()));
            }
            m.values().for_each(|x| with_ids(x, out));
        }
        Value::Array(a) => a.iter().for_each(|x| with_ids(x, out)),
        _ => {}
    }
}

fn validator(registry: &Registry<'_>, place: &(String, String)) -> Result<Validator, Problem> {
    validator_for::<jsonschema::json::SerdeJson>(registry, place)
}

/// A body schema's validators: over the tape (the common case, a valid body, read with one
/// allocation) and over a `Value` (what the tape leaves to serde_json, and every error's words).
pub struct BodyValidator {
    value: Validator,
    tape: jsonschema::Validator<TapeJson>,
}

fn body_validator(
    registry: &Registry<'_>,
    place: &(String, String),
) -> Result<BodyValidator, Problem> {
    Ok(BodyValidator {
        value: validator(registry, place)?,
        tape: validator_for::<TapeJson>(registry, place)?,
    })
}

fn validator_for<F: jsonschema::json::Json>(
    registry: &Registry<'_>,
    (uri, pointer): &(String, String),
) -> Result<jsonschema::Validator<F>, Problem> {
    let escaped: String = pointer
        .split('/')
        .map(|s| {
            percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string()
        })
        .collect::<Vec<_>>()
        .join("/");
    jsonschema::options_for::<F>()
        .with_draft(jsonschema::Draft::Draft202012)
        .with_registry(registry)
        .should_validate_formats(true)
        .build(&json!({ "$ref": format!("{uri}#{escaped}") }))
        .map_err(|e| Problem::new(pointer, format!("schema: {e}")))
}

impl Compiled {
    fn new(registry: &Registry<'_>, op: Operation, schemes: &Value) -> Result<Self, Problem> {
        let security = Requirements::new(&op.security, schemes).map_err(|p| {
            Problem::new(
                &format!(
                    "/paths/{}/{}",
                    op.path.as_str().replace('~', "~0").replace('/', "~1"),
                    op.method.as_str().to_ascii_lowercase()
                ),
                format!("{}{}", p.pointer, p.message),
            )
        })?;
        let params = op
            .params
            .iter()
            .map(|p| {
                Ok((
                    p.clone(),
                    p.schema
                        .as_ref()
                        .map(|s| validator(registry, s))
                        .transpose()?,
                ))
            })
            .collect::<Result<Vec<_>, Problem>>()?;
        let body = op
            .body
            .as_ref()
            .map(|b| Ok::<_, Problem>((b.required, media_validators(registry, &b.content)?)))
            .transpose()?;
        let responses = op
            .responses
            .iter()
            .map(|(code, b)| Ok((code.clone(), media_validators(registry, &b.content)?)))
            .collect::<Result<Vec<_>, Problem>>()?;
        Ok(Self {
            op,
            params,
            body,
            responses,
            security,
        })
    }

    /// The documented response for `status`: its code, else its class (`2XX`), else
    /// `default`.
    fn response(&self, status: u16) -> Option<&[Media]> {
        let code = status.to_string();
        let class = format!("{}XX", status / 100);
        [code.as_str(), class.as_str(), "DEFAULT"]
            .iter()
            .find_map(|k| self.responses.iter().find(|(c, _)| c == k))
            .map(|(_, m)| m.as_slice())
    }

    /// Whether a response with `status` has a JSON schema to check its body against.
    pub fn checks_response_body(&self, status: u16) -> bool {
        self.response(status)
            .is_some_and(|m| m.iter().any(|(_, v)| v.is_some()))
    }

    /// A response's status and content type against the documented responses.
    pub fn check_response_head(&self, status: u16, content_type: Option<&str>) -> Vec<Violation> {
        let Some(media) = self.response(status) else {
            return vec![Violation::new(
                "/status".into(),
                format!("{status} is not a documented response"),
            )];
        };
        match content_type {
            Some(ct) if !media.is_empty() && media_index(media, ct).is_none() => {
                let allowed: Vec<&str> = media.iter().map(|(m, _)| m.as_str()).collect();
                vec![Violation::new(
                    "/content-type".into(),
                    format!("{ct:?} is not one of {allowed:?}"),
                )]
            }
            _ => Vec::new(),
        }
    }

    /// A whole response body against the schema of its status and media type.
    pub fn check_response_body(
        &self,
        status: u16,
        content_type: Option<&str>,
        body: &[u8],
    ) -> Vec<Violation> {
        let (Some(media), Some(ct)) = (self.response(status), content_type) else {
            return Vec::new();
        };
        match media_index(media, ct).and_then(|i| media[i].1.as_ref()) {
            Some(v) => json_violations(v, body),
            None => Vec::new(),
        }
    }

    /// Whether the body must be read to check it (a JSON schema applies).
    pub fn checks_body(&self) -> bool {
        self.body
            .as_ref()
            .is_some_and(|(required, m)| *required || m.iter().any(|(_, v)| v.is_some()))
    }

    /// The parameters, and the content type when the operation takes a body.
    /// The credentials the operation's security asks for: `None` when the request carries
    /// those of some alternative (checking them is for the filters that verify them).
    pub fn check_security(&self, head: &Head<'_>) -> Option<Violation> {
        self.security_of(head, &Read::new(head))
    }

    pub fn check_head(&self, head: &Head<'_>, template: &PathTemplate) -> Vec<Violation> {
        self.head_of(head, &Read::new(head), template)
    }

    /// Both, the query and cookies read once: credentials first (`Err`: 401, as an
    /// authenticating gateway answers before anything else), then the head.
    pub fn check_request_head(
        &self,
        head: &Head<'_>,
        template: &PathTemplate,
    ) -> Result<Vec<Violation>, Violation> {
        let read = Read::new(head);
        match self.security_of(head, &read) {
            Some(missing) => Err(missing),
            None => Ok(self.head_of(head, &read, template)),
        }
    }

    fn security_of(&self, head: &Head<'_>, read: &Read) -> Option<Violation> {
        let carried = Carried {
            headers: head.headers,
            query: &read.query,
            cookies: &read.cookies,
        };
        (!self.security.met(&carried)).then(|| {
            Violation::new(
                "/security".into(),
                format!("credentials required: {}", self.security.describe()),
            )
        })
    }

    fn head_of(&self, head: &Head<'_>, read: &Read, template: &PathTemplate) -> Vec<Violation> {
        let (query, cookies) = (&read.query, &read.cookies);
        let mut out = Vec::new();
        let captured = rampart_router::template_captures(template, head.path).unwrap_or_default();
        for (p, v) in &self.params {
            let raw: Vec<String> = match p.location {
                In::Path => captured
                    .iter()
                    .filter(|(n, _)| *n == p.name)
                    .map(|(_, v)| decode(v, false))
                    .collect(),
                In::Query => query
                    .iter()
                    .filter(|(n, _)| *n == p.name)
                    .map(|(_, v)| v.clone())
                    .collect(),
                In::Header => head
                    .headers
                    .get_all(p.name.as_str())
                    .iter()
                    .filter_map(|v| v.to_str().ok())
                    .map(str::to_owned)
                    .collect(),
                In::Cookie => cookies
                    .iter()
                    .filter(|(n, _)| *n == p.name)
                    .map(|(_, v)| v.clone())
                    .collect(),
            };
            let at = format!("/{}/{}", location(p.location), p.name);
            if raw.is_empty() {
                if p.required {
                    out.push(Violation::new(at, "required"));
                }
                continue;
            }
            let value = match typed(p, &raw) {
                Ok(v) => v,
                Err(e) => {
                    out.push(Violation::new(at, e));
                    continue;
                }
            };
            if let Some(v) = v {
                out.extend(
                    v.iter_errors(&value).map(|e| {
                        Violation::new(format!("{at}{}", e.instance_path()), e.to_string())
                    }),
                );
            }
        }
        if let Some((_, media)) = &self.body
            && let Some(ct) = head
                .headers
                .get(http::header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
            && media_index(media, ct).is_none()
        {
            let allowed: Vec<&str> = media.iter().map(|(m, _)| m.as_str()).collect();
            out.push(Violation::new(
                "/content-type".into(),
                format!("{ct:?} is not one of {allowed:?}"),
            ));
        }
        out
    }

    /// The body (whole) against the schema of its media type.
    pub fn check_body(&self, content_type: Option<&str>, body: &[u8]) -> Vec<Violation> {
        let Some((required, media)) = &self.body else {
            return Vec::new();
        };
        if body.is_empty() {
            return if *required {
                vec![Violation::new("/body".into(), "a body is required")]
            } else {
                Vec::new()
            };
        }
        let Some(ct) = content_type else {
            return vec![Violation::new(
                "/content-type".into(),
                "a body needs a content type",
            )];
        };
        let Some(i) = media_index(media, ct) else {
            return Vec::new(); // told by check_head
        };
        let Some(v) = &media[i].1 else {
            return Vec::new();
        };
        json_violations(v, body)
    }
}

/// Each media range with a validator when it is JSON and has a schema.
fn media_validators(
    registry: &Registry<'_>,
    content: &[(String, Option<(String, String)>)],
) -> Result<Vec<Media>, Problem> {
    content
        .iter()
        .map(|(m, s)| {
            let v = if is_json(m) {
                s.as_ref()
                    .map(|s| body_validator(registry, s))
                    .transpose()?
            } else {
                None
            };
            Ok((m.clone(), v))
        })
        .collect()
}

fn json_violations(v: &BodyValidator, body: &[u8]) -> Vec<Violation> {
    // The common case, a valid body: read onto the tape, checked without collecting errors.
    if let Some(doc) = Doc::parse(body)
        && v.tape.is_valid(doc.root())
    {
        return Vec::new();
    }
    match serde_json::from_slice::<Value>(body) {
        Ok(value) if v.value.is_valid(&value) => Vec::new(),
        Ok(value) => v
            .value
            .iter_errors(&value)
            .map(|e| Violation::new(format!("/body{}", e.instance_path()), e.to_string()))
            .collect(),
        Err(e) => vec![Violation::new("/body".into(), format!("not JSON: {e}"))],
    }
}

fn location(l: In) -> &'static str {
    match l {
        In::Path => "path",
        In::Query => "query",
        In::Header => "header",
        In::Cookie => "cookie",
    }
}

fn is_json(media: &str) -> bool {
    let essence = media.split(';').next().unwrap_or("").trim();
    essence == "application/json"
        || essence.ends_with("+json")
        || essence == "*/*"
        || essence == "application/*"
}

/// Which of the spec's media ranges `content_type` falls in (most specific first).
fn media_index(media: &[Media], content_type: &str) -> Option<usize> {
    let essence = content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    let (ty, _) = essence.split_once('/')?;
    let range = |m: &str| m.split(';').next().unwrap_or("").trim().to_owned();
    media
        .iter()
        .position(|(m, _)| range(m) == essence)
        .or_else(|| {
            media
                .iter()
                .position(|(m, _)| range(m) == format!("{ty}/*"))
        })
        .or_else(|| media.iter().position(|(m, _)| range(m) == "*/*"))
}

/// A request's query parameters and cookies, read once for every check.
struct Read {
    query: Vec<(String, String)>,
    cookies: Vec<(String, String)>,
}

impl Read {
    fn new(head: &Head<'_>) -> Self {
        Self {
            query: parse_pairs(head.query.unwrap_or(""), '&', true),
            cookies: cookies(head.headers),
        }
    }
}

fn cookies(h: &http::HeaderMap) -> Vec<(String, String)> {
    h.get_all(http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| parse_pairs(v, ';', false))
        .collect()
}

fn decode(s: &str, plus_is_space: bool) -> String {
    let s = if plus_is_space {
        s.replace('+', " ")
    } else {
        s.to_owned()
    };
    percent_decode_str(&s).decode_utf8_lossy().into_owned()
}

/// `name=value` pairs: a query string (`form`: percent-decoded, `+` a space) or a cookie
/// header (taken as sent: RFC 6265 defines no decoding for cookie values).
fn parse_pairs(s: &str, sep: char, form: bool) -> Vec<(String, String)> {
    s.split(sep)
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            if form {
                (decode(k, true), decode(v, true))
            } else {
                (k.to_owned(), v.to_owned())
            }
        })
        .collect()
}

/// A string as the JSON value its schema type asks for (left a string when it does not
/// parse, so that the schema reports it).
fn scalar(kind: Option<&str>, s: &str) -> Value {
    match kind {
        // JSON's number grammar, read as a JSON body's would be: an integer of any size is
        // an integer (past 64 bits, as a float), `1.0` too; the schema's `type` decides.
        Some("integer" | "number") => s
            .parse::<serde_json::Number>()
            .map_or_else(|_| Value::from(s), Value::Number),
        Some("boolean") => match s {
            "true" => Value::Bool(true),
            "false" => Value::Bool(false),
            _ => Value::from(s),
        },
        Some("null") if s.is_empty() => Value::Null,
        _ => Value::from(s),
    }
}

/// A parameter's raw values read in its style.
fn typed(p: &Param, raw: &[String]) -> Result<Value, String> {
    let delimiter = match p.style.as_str() {
        "spaceDelimited" => ' ',
        "pipeDelimited" => '|',
        _ => ',',
    };
    match p.kind.as_deref() {
        Some("array") => {
            let parts: Vec<&str> =
                if p.explode && p.location != In::Header && p.location != In::Path {
                    raw.iter().map(String::as_str).collect()
                } else {
                    // `status=` is the list of one empty string: an empty list is not sent
                    // at all (RFC 6570's expansion, which OpenAPI's styles follow).
                    raw.iter().flat_map(|r| r.split(delimiter)).collect()
                };
            Ok(Value::Array(
                parts
                    .into_iter()
                    .map(|s| scalar(p.items.as_deref(), s))
                    .collect(),
            ))
        }
        Some("object") if !p.explode || p.location == In::Path || p.location == In::Header => {
            let parts: Vec<&str> = raw[0].split(delimiter).collect();
            if !parts.len().is_multiple_of(2) {
                return Err("expected name,value pairs".into());
            }
            Ok(Value::Object(
                parts
                    .chunks(2)
                    .map(|kv| (kv[0].to_owned(), Value::from(kv[1])))
                    .collect(),
            ))
        }
        _ if raw.len() > 1 => Err(format!("given {} times; expected once", raw.len())),
        kind => Ok(scalar(kind, &raw[0])),
    }
}

/// An RFC 9457 problem document for `violations` of `operation`.
pub fn problem(operation: &str, status: u16, violations: &[Violation]) -> Value {
    // 5xx: the gateway refused the upstream's answer, not the client's request.
    let (kind, title, what) = if status >= 500 {
        (
            "response-validation",
            "The response does not match the API",
            "response",
        )
    } else {
        (
            "request-validation",
            "The request does not match the API",
            "request",
        )
    };
    json!({
        "type": format!("https://rampart.dev/problems/{kind}"),
        "title": title,
        "status": status,
        "detail": format!("{} problem(s) with the {what} for operation {operation}", violations.len()),
        "operation": operation,
        "errors": violations.iter().map(|v| json!({ "pointer": v.pointer, "detail": v.detail })).collect::<Vec<_>>(),
    })
}

//! Rampart-only settings riding on Envoy resources.
//!
//! `translate` expresses what it can in Envoy's own fields; whatever a resource's
//! Rampart config holds beyond that (listener limits, filters, header mutations, retries,
//! health checks...) travels as a typed struct in the resource's metadata
//! (`typed_filter_metadata["rampart.dev"]`, an `xds.type.v3.TypedStruct` naming the Rampart
//! config type). Envoy ignores metadata it has no filter for; `reverse` merges it
//! back over what it read from Envoy's fields.
//!
//! The remainder is computed, not listed: the config minus what reading the translated
//! resource back already yields. A setting `translate` learns to express natively leaves
//! the metadata by itself, and one it drops still reaches Rampart proxies.

use std::collections::{BTreeMap, HashMap};

use envoy_types::pb::envoy::config::core::v3::Metadata;
use envoy_types::pb::google::protobuf::Any;
use prost::Message;
use serde_json::{Map, Value};

/// The metadata key (a reverse-DNS filter namespace, as Envoy asks).
pub const KEY: &str = "rampart.dev";
pub(crate) const TYPED_STRUCT: &str = "type.googleapis.com/xds.type.v3.TypedStruct";
const RAMPART_TYPES: &str = "type.rampart.dev/rampart.config.v1.";

/// `xds.type.v3.TypedStruct`: a type URL and a JSON-like value (Envoy's API ships it; the
/// generated types here do not).
#[derive(Clone, PartialEq, Message)]
pub struct TypedStruct {
    #[prost(string, tag = "1")]
    pub type_url: String,
    #[prost(message, optional, tag = "2")]
    pub value: Option<Struct>,
}

/// `google.protobuf.Struct` with its fields in key order, so that equal settings encode to
/// equal bytes (resource versions are hashes of the bytes; a hash map's order would make
/// every publish look like a change).
#[derive(Clone, PartialEq, Message)]
pub struct Struct {
    #[prost(btree_map = "string, message", tag = "1")]
    pub fields: BTreeMap<String, PbValue>,
}

/// `google.protobuf.Value`, over [`Struct`].
#[derive(Clone, PartialEq, Message)]
pub struct PbValue {
    #[prost(oneof = "Kind", tags = "1, 2, 3, 4, 5, 6")]
    pub kind: Option<Kind>,
}

/// `google.protobuf.ListValue`, over [`PbValue`].
#[derive(Clone, PartialEq, Message)]
pub struct ListValue {
    #[prost(message, repeated, tag = "1")]
    pub values: Vec<PbValue>,
}

#[derive(Clone, PartialEq, prost::Oneof)]
pub enum Kind {
    #[prost(int32, tag = "1")]
    Null(i32),
    #[prost(double, tag = "2")]
    Number(f64),
    #[prost(string, tag = "3")]
    String(String),
    #[prost(bool, tag = "4")]
    Bool(bool),
    #[prost(message, tag = "5")]
    Struct(Struct),
    #[prost(message, tag = "6")]
    List(ListValue),
}

/// What `config` has that `native` (the resource as read back from Envoy's fields) lacks
/// or says otherwise, key by key; `None` when nothing. A `null` in `config` (the default),
/// and an empty `[]` or `{}` where `native` has nothing, are left out.
pub fn remainder(config: &Value, native: &Value) -> Option<Value> {
    match (config, native) {
        (Value::Object(c), Value::Object(n)) => {
            let mut out = Map::new();
            for (k, v) in c {
                match n.get(k) {
                    // No value is the default, whatever the native side spells it as.
                    _ if v.is_null() => {}
                    None if is_empty(v) => {}
                    None => {
                        out.insert(k.clone(), v.clone());
                    }
                    Some(nv) => {
                        if let Some(d) = remainder(v, nv) {
                            out.insert(k.clone(), d);
                        }
                    }
                }
            }
            (!out.is_empty()).then_some(Value::Object(out))
        }
        (c, n) if same(c, n) => None,
        (c, _) => Some(c.clone()),
    }
}

fn is_empty(v: &Value) -> bool {
    match v {
        Value::Null => true,
        Value::Array(a) => a.is_empty(),
        Value::Object(o) => o.is_empty(),
        _ => false,
    }
}

/// Equal, counting `5` and `5.0` as the same number (a struct's numbers are doubles).
fn same(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => x.as_f64() == y.as_f64(),
        _ => a == b,
    }
}

/// Lays `extra` over `native`: objects key by key, anything else replaced.
pub fn merge(native: &mut Value, extra: Value) {
    match (native, extra) {
        (Value::Object(n), Value::Object(e)) => {
            for (k, v) in e {
                match n.get_mut(&k) {
                    Some(slot) => merge(slot, v),
                    None => {
                        n.insert(k, v);
                    }
                }
            }
        }
        (slot, e) => *slot = e,
    }
}

/// Metadata carrying `extra` as the Rampart config type `kind` (`Listener`, `Route`...).
pub fn metadata(kind: &str, extra: Option<Value>) -> Option<Metadata> {
    let Value::Object(fields) = extra? else {
        return None;
    };
    let typed = TypedStruct {
        type_url: format!("{RAMPART_TYPES}{kind}"),
        value: Some(to_struct(fields)),
    };
    let any = Any {
        type_url: TYPED_STRUCT.into(),
        value: typed.encode_to_vec(),
    };
    Some(Metadata {
        typed_filter_metadata: HashMap::from([(KEY.to_owned(), any)]),
        ..Default::default()
    })
}

/// The Rampart settings in `md`, if any; an error when they are there but malformed.
pub fn read(md: Option<&Metadata>) -> Result<Option<Value>, String> {
    let Some(any) = md.and_then(|m| m.typed_filter_metadata.get(KEY)) else {
        return Ok(None);
    };
    if any.type_url != TYPED_STRUCT {
        return Err(format!(
            "metadata {KEY}: expected a TypedStruct, got {}",
            any.type_url
        ));
    }
    let typed = TypedStruct::decode(any.value.as_slice())
        .map_err(|e| format!("metadata {KEY}: does not decode: {e}"))?;
    if !typed.type_url.starts_with(RAMPART_TYPES) {
        return Err(format!("metadata {KEY}: unknown type {}", typed.type_url));
    }
    Ok(typed.value.map(|s| from_struct(&s)))
}

pub(crate) fn to_struct(fields: Map<String, Value>) -> Struct {
    Struct {
        fields: fields.into_iter().map(|(k, v)| (k, to_value(v))).collect(),
    }
}

fn to_value(v: Value) -> PbValue {
    let kind = match v {
        Value::Null => Kind::Null(0),
        Value::Bool(b) => Kind::Bool(b),
        Value::Number(n) => Kind::Number(n.as_f64().unwrap_or(f64::NAN)),
        Value::String(s) => Kind::String(s),
        Value::Array(a) => Kind::List(ListValue {
            values: a.into_iter().map(to_value).collect(),
        }),
        Value::Object(o) => Kind::Struct(to_struct(o)),
    };
    PbValue { kind: Some(kind) }
}

fn from_struct(s: &Struct) -> Value {
    Value::Object(
        s.fields
            .iter()
            .map(|(k, v)| (k.clone(), from_value(v)))
            .collect(),
    )
}

fn from_value(v: &PbValue) -> Value {
    match &v.kind {
        None | Some(Kind::Null(_)) => Value::Null,
        Some(Kind::Bool(b)) => Value::Bool(*b),
        Some(Kind::Number(n)) => number(*n),
        Some(Kind::String(s)) => Value::String(s.clone()),
        Some(Kind::List(l)) => Value::Array(l.values.iter().map(from_value).collect()),
        Some(Kind::Struct(s)) => from_struct(s),
    }
}

/// A double back as the integer it was, when it is one (counts and sizes are integers in
/// Rampart's config).
fn number(n: f64) -> Value {
    // 2^53: beyond it a double no longer holds every integer.
    const EXACT: f64 = 9_007_199_254_740_992.0;
    if n.fract() == 0.0 && n.abs() <= EXACT {
        // In range and whole: the cast is exact.
        #[allow(clippy::cast_possible_truncation)]
        let i = n as i64;
        return Value::from(i);
    }
    serde_json::Number::from_f64(n).map_or(Value::Null, Value::Number)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_remainder_is_what_native_fields_lack_and_merges_back() {
        let config = json!({
            "name": "r", "match": { "path": { "prefix": "/" }, "methods": [], "headers": [{ "name": "x", "exact": "1" }] },
            "forward": { "cluster": "c", "timeout": "15s", "retries": null },
            "filters": [{ "cors": {} }], "max_request_body_bytes": 1048576,
        });
        let native = json!({
            "name": "r", "match": { "path": { "prefix": "/" } },
            "forward": { "cluster": "c", "timeout": "15000ms" },
        });
        let extra = remainder(&config, &native).unwrap();
        assert_eq!(
            extra,
            json!({
                "match": { "headers": [{ "name": "x", "exact": "1" }] },
                "forward": { "timeout": "15s" },
                "filters": [{ "cors": {} }], "max_request_body_bytes": 1048576,
            })
        );
        let md = metadata("Route", Some(extra)).unwrap();
        let back = read(Some(&md)).unwrap().unwrap();
        let mut merged = native;
        merge(&mut merged, back);
        assert_eq!(merged["forward"]["timeout"], "15s");
        assert_eq!(merged["max_request_body_bytes"], json!(1048576));
        assert_eq!(merged["filters"], json!([{ "cors": {} }]));
        assert_eq!(merged["match"]["path"], json!({ "prefix": "/" }));
        assert_eq!(merged["match"]["headers"][0]["exact"], "1");
        assert_eq!(remainder(&merged, &merged), None);
    }

    #[test]
    fn foreign_or_malformed_metadata_is_an_error_not_a_guess() {
        let md = Metadata {
            typed_filter_metadata: HashMap::from([(
                KEY.to_owned(),
                Any {
                    type_url: "type.googleapis.com/google.protobuf.Duration".into(),
                    value: vec![],
                },
            )]),
            ..Default::default()
        };
        assert!(read(Some(&md)).unwrap_err().contains("TypedStruct"));
        assert_eq!(read(None), Ok(None));
    }
}

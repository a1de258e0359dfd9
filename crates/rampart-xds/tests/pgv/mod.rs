//! protoc-gen-validate's rules, checked over prost-reflect dynamic messages the way Envoy's
//! generated `Validate()` checks them when it takes a config:
//!
//! - `(validate.rules)` on each field, by kind (see [`rules`]), with PGV's scoping: a member
//!   of a oneof only when it is the one set, a message-typed field (and its duration, any or
//!   wrapper rules) only when set, except for `required`; a proto3 scalar always;
//! - `(validate.required)` on oneofs; `(validate.disabled)` and `(validate.ignored)` on
//!   messages;
//! - every set message recursively, list items and map values included (`message.skip`
//!   stops it), and what a `google.protobuf.Any` holds when its type is in the pool
//!   (Envoy unpacks and checks `typed_config` before it builds the extension); an `Any` of
//!   a type not in the pool is a violation, since it cannot be checked;
//! - beyond PGV, Envoy's own range check of every `Duration`, and unknown fields (a type
//!   newer than the protos).
//!
//! Each violation comes with its path from the message checked:
//! `filter_chains[0].filters[0].typed_config(HttpConnectionManager).stat_prefix: min_len 1`.

mod pool;
mod rules;

use std::collections::HashMap;
use std::fmt::{Display, Write as _};

use prost_reflect::{
    DescriptorPool, DynamicMessage, ExtensionDescriptor, FieldDescriptor, Kind, MapKey,
    ReflectMessage, Value,
};

pub(crate) use rules::{header_lax, header_name, header_value};

/// Violations found so far, and the path of the value being checked.
#[derive(Debug, Default)]
pub(crate) struct Report {
    pub(crate) found: Vec<String>,
    path: String,
}

impl Report {
    /// A violation at the current path.
    pub(crate) fn add(&mut self, what: impl Display) {
        if self.path.is_empty() {
            self.found.push(what.to_string());
        } else {
            self.found.push(format!("{}: {what}", self.path));
        }
    }

    /// Runs `f` at the current path with `suffix` appended (`[3]`, `(Router)`).
    fn within<R>(&mut self, suffix: impl Display, f: impl FnOnce(&mut Self) -> R) -> R {
        let mark = self.path.len();
        let _ = write!(self.path, "{suffix}");
        let out = f(self);
        self.path.truncate(mark);
        out
    }

    /// Runs `f` at the current path's field `name`.
    fn field<R>(&mut self, name: &str, f: impl FnOnce(&mut Self) -> R) -> R {
        let dot = if self.path.is_empty() { "" } else { "." };
        self.within(format_args!("{dot}{name}"), f)
    }
}

/// `TypedStruct`s are JSON-like values named by a type URL: nothing to unpack.
const TYPED_STRUCTS: [&str; 2] = ["xds.type.v3.TypedStruct", "udpa.type.v1.TypedStruct"];

const WRAPPERS: [&str; 9] = [
    "google.protobuf.DoubleValue",
    "google.protobuf.FloatValue",
    "google.protobuf.Int64Value",
    "google.protobuf.UInt64Value",
    "google.protobuf.Int32Value",
    "google.protobuf.UInt32Value",
    "google.protobuf.BoolValue",
    "google.protobuf.StringValue",
    "google.protobuf.BytesValue",
];

/// The checker, over a pool of message types and PGV's extensions in it.
pub(crate) struct Validator {
    pool: DescriptorPool,
    rules: ExtensionDescriptor,
    oneof_required: ExtensionDescriptor,
    disabled: ExtensionDescriptor,
    ignored: ExtensionDescriptor,
}

impl Validator {
    /// Over Envoy's API as envoy-types ships it (see [`pool`]).
    pub(crate) fn envoy() -> Self {
        Self::new(pool::envoy_pool())
    }

    pub(crate) fn new(pool: DescriptorPool) -> Self {
        let ext = |name: &str| {
            pool.get_extension_by_name(name)
                .unwrap_or_else(|| panic!("{name} is not in the pool: PGV's validate.proto is"))
        };
        Self {
            rules: ext("validate.rules"),
            oneof_required: ext("validate.required"),
            disabled: ext("validate.disabled"),
            ignored: ext("validate.ignored"),
            pool,
        }
    }

    /// Every violation in `bytes`, an encoded message of type `type_url` (a full name, or a
    /// type URL ending with one), with paths from that message.
    pub(crate) fn check(&self, type_url: &str, bytes: &[u8]) -> Vec<String> {
        let mut report = Report::default();
        let name = type_url.rsplit_once('/').map_or(type_url, |(_, n)| n);
        match self.pool.get_message_by_name(name) {
            None => report.add(format!("{type_url}: not in the pool, cannot check")),
            Some(desc) => match DynamicMessage::decode(desc, bytes) {
                Ok(m) => self.message(&m, &mut report),
                Err(e) => report.add(format!("{type_url}: does not decode: {e}")),
            },
        }
        report.found
    }

    fn message(&self, m: &DynamicMessage, report: &mut Report) {
        let d = m.descriptor();
        match d.full_name() {
            "google.protobuf.Any" => return self.any_contents(m, report),
            "google.protobuf.Duration" => rules::envoy_duration(m, report),
            _ => {}
        }
        let options = d.options();
        if ext_flag(&options, &self.disabled) || ext_flag(&options, &self.ignored) {
            return;
        }
        for u in m.unknown_fields() {
            report.add(format!("unknown field {} in {}", u.number(), d.full_name()));
        }
        for o in d.oneofs().filter(|o| !o.is_synthetic()) {
            if ext_flag(&o.options(), &self.oneof_required) && !o.fields().any(|f| m.has_field(&f))
            {
                report.field(o.name(), |r| r.add("oneof required (none set)"));
            }
        }
        for f in d.fields() {
            report.field(f.name(), |r| self.field(m, &f, r));
        }
    }

    fn field(&self, m: &DynamicMessage, f: &FieldDescriptor, report: &mut Report) {
        let rules = self.rules_of(f);
        let value = m.get_field(f);
        match &*value {
            Value::List(items) => self.list(items, f, rules.as_ref(), report),
            Value::Map(entries) => self.map(entries, f, rules.as_ref(), report),
            v if m.has_field(f) || !f.supports_presence() => {
                self.element(v, &f.kind(), rules.as_ref(), report);
            }
            // Absent: only `required` applies, and not to a member of a oneof.
            _ => {
                let in_oneof = f.containing_oneof().is_some_and(|o| !o.is_synthetic());
                if !in_oneof && required(rules.as_ref()) {
                    report.add("required");
                }
            }
        }
    }

    /// One value: a singular field's, a list item, a map value.
    fn element(&self, v: &Value, kind: &Kind, rules: Option<&DynamicMessage>, report: &mut Report) {
        match (v, rules) {
            (Value::Message(m), _) => self.message_value(m, rules, report),
            (v, Some(r)) => rules::scalar(v, kind, r, report),
            (_, None) => {}
        }
    }

    fn message_value(
        &self,
        m: &DynamicMessage,
        rules: Option<&DynamicMessage>,
        report: &mut Report,
    ) {
        if let Some(r) = rules {
            if let Some((name, typed)) = rules::typed(r) {
                let full_name = m.descriptor().full_name().to_owned();
                match name.as_str() {
                    "duration" => rules::duration(m, &typed, report),
                    "any" => rules::any(m, &typed, report),
                    "timestamp" => rules::timestamp(&typed, report),
                    _ if WRAPPERS.contains(&full_name.as_str()) => {
                        let inner = m.descriptor().get_field_by_name("value");
                        if let Some(inner) = inner {
                            rules::scalar(&m.get_field(&inner), &inner.kind(), r, report);
                        }
                    }
                    other => report.add(format!(
                        "{other} rules on a {full_name}: not checked by this validator"
                    )),
                }
            }
            if rules::sub(r, "message").is_some_and(|mr| rules::flag(&mr, "skip")) {
                return;
            }
        }
        self.message(m, report);
    }

    fn list(
        &self,
        items: &[Value],
        f: &FieldDescriptor,
        rules: Option<&DynamicMessage>,
        report: &mut Report,
    ) {
        let repeated = rules.and_then(|r| rules::typed_as(r, "repeated"));
        if let Some(rep) = &repeated {
            rules::repeated(items, rep, report);
        }
        let each = repeated.as_ref().and_then(|r| rules::sub(r, "items"));
        let kind = f.kind();
        for (i, v) in items.iter().enumerate() {
            report.within(format_args!("[{i}]"), |r| {
                self.element(v, &kind, each.as_ref(), r);
            });
        }
    }

    fn map(
        &self,
        entries: &HashMap<MapKey, Value>,
        f: &FieldDescriptor,
        rules: Option<&DynamicMessage>,
        report: &mut Report,
    ) {
        let map = rules.and_then(|r| rules::typed_as(r, "map"));
        if let Some(m) = &map {
            rules::pairs(entries.len(), m, report);
        }
        let Kind::Message(entry) = f.kind() else {
            return report.add("a map whose entry is not a message");
        };
        let (key_kind, value_kind) = (
            entry.map_entry_key_field().kind(),
            entry.map_entry_value_field().kind(),
        );
        let keys = map.as_ref().and_then(|m| rules::sub(m, "keys"));
        let values = map.as_ref().and_then(|m| rules::sub(m, "values"));
        let mut sorted: Vec<(&MapKey, &Value)> = entries.iter().collect();
        sorted.sort_by(|a, b| a.0.cmp(b.0));
        for (k, v) in sorted {
            report.within(format_args!("[{}]", rules::key_text(k)), |r| {
                if let Some(kr) = &keys {
                    let key = Value::from(k.clone());
                    r.within(" (key)", |r| rules::scalar(&key, &key_kind, kr, r));
                }
                self.element(v, &value_kind, values.as_ref(), r);
            });
        }
    }

    /// What an `Any` holds, checked as its own type when the pool has it.
    fn any_contents(&self, any: &DynamicMessage, report: &mut Report) {
        let url = any
            .get_field_by_name("type_url")
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default();
        let bytes = any
            .get_field_by_name("value")
            .and_then(|v| v.as_bytes().cloned())
            .unwrap_or_default();
        let name = url.rsplit_once('/').map_or(url.as_str(), |(_, n)| n);
        let Some(desc) = self.pool.get_message_by_name(name) else {
            if !TYPED_STRUCTS.contains(&name) {
                report.add(format!(
                    "Any of type {url:?}: not in the pool, cannot check"
                ));
            }
            return;
        };
        match DynamicMessage::decode(desc.clone(), bytes) {
            Ok(inner) => report.within(format_args!("({})", desc.name()), |r| {
                self.message(&inner, r);
            }),
            Err(e) => report.add(format!("Any of type {url}: does not decode: {e}")),
        }
    }

    /// A field's `(validate.rules)`, if it has any.
    fn rules_of(&self, f: &FieldDescriptor) -> Option<DynamicMessage> {
        let options = f.options();
        if !options.has_extension(&self.rules) {
            return None;
        }
        options.get_extension(&self.rules).as_message().cloned()
    }
}

/// A bool option set to true.
fn ext_flag(options: &DynamicMessage, ext: &ExtensionDescriptor) -> bool {
    options.has_extension(ext) && options.get_extension(ext).as_bool() == Some(true)
}

/// Whether the rules ask for the field to be set: `message.required`, or `required` in
/// duration, any or timestamp rules.
fn required(rules: Option<&DynamicMessage>) -> bool {
    let Some(r) = rules else {
        return false;
    };
    let message = rules::sub(r, "message").is_some_and(|m| rules::flag(&m, "required"));
    let typed = rules::typed(r).is_some_and(|(name, t)| {
        matches!(name.as_str(), "duration" | "any" | "timestamp") && rules::flag(&t, "required")
    });
    message || typed
}

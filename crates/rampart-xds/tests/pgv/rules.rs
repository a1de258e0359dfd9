//! The rules on one value (protoc-gen-validate's `validate.proto`): strings, bytes, numbers,
//! bools, enums, durations, `Any` type URLs, and the sizes of repeated and map fields. Each
//! takes the rule message of its kind (`StringRules`, `UInt32Rules`, ...).

use std::borrow::Cow;
use std::cmp::Ordering;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use prost_reflect::{DynamicMessage, Kind, ReflectMessage, Value};

use super::Report;

/// A rule's value, when it is set (a repeated rule: when it has items).
pub(super) fn rule<'a>(r: &'a DynamicMessage, name: &str) -> Option<Cow<'a, Value>> {
    if r.has_field_by_name(name) {
        r.get_field_by_name(name)
    } else {
        None
    }
}

/// A bool rule, its declared default when unset (`strict` defaults to true).
pub(super) fn flag(r: &DynamicMessage, name: &str) -> bool {
    r.get_field_by_name(name)
        .and_then(|v| v.as_bool())
        .unwrap_or(false)
}

/// A message-valued rule (`message`, `items`, `keys`, `values`).
pub(super) fn sub(r: &DynamicMessage, name: &str) -> Option<DynamicMessage> {
    rule(r, name).and_then(|v| v.as_message().cloned())
}

/// The one member of a oneof (`type` in `FieldRules`, `well_known` in `StringRules`) that
/// is set: its name and value.
fn member(r: &DynamicMessage, oneof: &str) -> Option<(String, Value)> {
    let o = r.descriptor().oneofs().find(|o| o.name() == oneof)?;
    let f = o.fields().find(|f| r.has_field(f))?;
    Some((f.name().to_owned(), r.get_field(&f).into_owned()))
}

/// The kind of rules a `FieldRules` holds (`string`, `uint32`, `repeated`, ...) and them.
pub(super) fn typed(rules: &DynamicMessage) -> Option<(String, DynamicMessage)> {
    let (name, v) = member(rules, "type")?;
    Some((name, v.as_message()?.clone()))
}

/// The `kind` rules of a `FieldRules`, if that is the kind it holds.
pub(super) fn typed_as(rules: &DynamicMessage, kind: &str) -> Option<DynamicMessage> {
    typed(rules).and_then(|(name, r)| (name == kind).then_some(r))
}

fn u64_rule(r: &DynamicMessage, name: &str) -> Option<u64> {
    rule(r, name).and_then(|v| v.as_u64())
}

fn list_rule(r: &DynamicMessage, name: &str) -> Vec<Value> {
    rule(r, name)
        .and_then(|v| v.as_list().map(<[Value]>::to_vec))
        .unwrap_or_default()
}

fn size(n: usize) -> u64 {
    u64::try_from(n).unwrap_or(u64::MAX)
}

/// A single-valued rule on a value: everything but repeated, map, message, duration, any.
pub(super) fn scalar(v: &Value, kind: &Kind, rules: &DynamicMessage, report: &mut Report) {
    let Some((name, r)) = typed(rules) else {
        return;
    };
    match (name.as_str(), v) {
        ("string", Value::String(s)) => string(s, &r, report),
        ("bytes", Value::Bytes(b)) => bytes(b, &r, report),
        ("bool", Value::Bool(b)) => {
            if let Some(c) = rule(&r, "const").and_then(|c| c.as_bool())
                && *b != c
            {
                report.add(format!("const {c}"));
            }
        }
        ("enum", Value::EnumNumber(n)) => enumeration(*n, kind, &r, report),
        (
            "float" | "double" | "int32" | "int64" | "uint32" | "uint64" | "sint32" | "sint64"
            | "fixed32" | "fixed64" | "sfixed32" | "sfixed64",
            _,
        ) => number(v, &r, report),
        (other, v) => report.add(format!(
            "{other} rules on {v:?}: not checked by this validator"
        )),
    }
}

// ---- strings and bytes ----

fn string(s: &str, r: &DynamicMessage, report: &mut Report) {
    if s.is_empty() && flag(r, "ignore_empty") {
        return;
    }
    lengths(
        size(s.chars().count()),
        r,
        ["len", "min_len", "max_len"],
        report,
    );
    lengths(
        size(s.len()),
        r,
        ["len_bytes", "min_bytes", "max_bytes"],
        report,
    );
    let text = |name: &str| rule(r, name).and_then(|v| v.as_str().map(str::to_owned));
    let texts = |name: &str| -> Vec<String> {
        let all = list_rule(r, name);
        all.iter()
            .filter_map(|v| v.as_str().map(str::to_owned))
            .collect()
    };
    if let Some(c) = text("const")
        && s != c
    {
        report.add(format!("const {c:?}"));
    }
    for (name, holds) in [
        (
            "prefix",
            (|s, p| s.starts_with(p)) as fn(&str, &str) -> bool,
        ),
        ("suffix", |s, p| s.ends_with(p)),
        ("contains", |s, p| s.contains(p)),
    ] {
        if let Some(p) = text(name)
            && !holds(s, &p)
        {
            report.add(format!("{name} {p:?}"));
        }
    }
    if let Some(p) = text("not_contains")
        && s.contains(&p)
    {
        report.add(format!("not_contains {p:?}"));
    }
    if let Some(p) = text("pattern") {
        match regex::Regex::new(&p) {
            Ok(re) if re.is_match(s) => {}
            Ok(_) => report.add(format!("pattern {p:?}")),
            Err(e) => report.add(format!("pattern {p:?} does not compile: {e}")),
        }
    }
    membership(&s.to_owned(), &texts("in"), &texts("not_in"), report);
    well_known_string(s, r, report);
}

/// `len`, `min_len`, `max_len` (or their byte, item or pair counterparts; `""` for a rule the
/// kind has not) on a size.
fn lengths(n: u64, r: &DynamicMessage, [exact, min, max]: [&str; 3], report: &mut Report) {
    if let Some(l) = u64_rule(r, exact)
        && n != l
    {
        report.add(format!("{exact} {l}"));
    }
    if let Some(l) = u64_rule(r, min)
        && n < l
    {
        report.add(format!("{min} {l}"));
    }
    if let Some(l) = u64_rule(r, max)
        && n > l
    {
        report.add(format!("{max} {l}"));
    }
}

fn membership<T: PartialEq + std::fmt::Debug>(v: &T, ins: &[T], outs: &[T], report: &mut Report) {
    if !ins.is_empty() && !ins.contains(v) {
        report.add(format!("in {ins:?}"));
    }
    if outs.contains(v) {
        report.add(format!("not_in {outs:?}"));
    }
}

/// `well_known`: PGV's header regexes (strict: RFC 7230; not strict, `strict: false`: only
/// NUL, CR and LF refused), addresses and host names. The others are reported as unchecked.
fn well_known_string(s: &str, r: &DynamicMessage, report: &mut Report) {
    let Some((name, v)) = member(r, "well_known") else {
        return;
    };
    if v.as_bool() == Some(false) {
        return;
    }
    let strict = flag(r, "strict");
    let (ok, what) = match (name.as_str(), v.as_enum_number()) {
        ("well_known_regex", Some(1)) => (
            if strict {
                header_name(s)
            } else {
                header_lax(s)
            },
            "HTTP_HEADER_NAME",
        ),
        ("well_known_regex", Some(2)) => (
            if strict {
                header_value(s)
            } else {
                header_lax(s)
            },
            "HTTP_HEADER_VALUE",
        ),
        ("well_known_regex", _) => (true, ""),
        ("ip", _) => (s.parse::<IpAddr>().is_ok(), ""),
        ("ipv4", _) => (s.parse::<Ipv4Addr>().is_ok(), ""),
        ("ipv6", _) => (s.parse::<Ipv6Addr>().is_ok(), ""),
        ("hostname", _) => (hostname(s), ""),
        ("address", _) => (hostname(s) || s.parse::<IpAddr>().is_ok(), ""),
        (other, _) => return report.add(format!("{other}: not checked by this validator")),
    };
    if !ok && what.is_empty() {
        report.add(name);
    } else if !ok {
        let mode = if strict { "strict" } else { "not strict" };
        report.add(format!("well_known_regex {what} ({mode})"));
    }
}

/// PGV's strict `HTTP_HEADER_NAME`, `^:?[0-9a-zA-Z!#$%&'*+-.^_|~\x60]+$` (where `+-.` is a
/// range, so `,` passes too).
pub(crate) fn header_name(s: &str) -> bool {
    let name = s.strip_prefix(':').unwrap_or(s);
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+,-.^_|~`".contains(&b))
}

/// PGV's strict `HTTP_HEADER_VALUE`, `^[^\u0000-\u0008\u000A-\u001F\u007F]*$`.
pub(crate) fn header_value(s: &str) -> bool {
    !s.chars()
        .any(|c| matches!(c, '\u{0}'..='\u{8}' | '\u{a}'..='\u{1f}' | '\u{7f}'))
}

/// PGV's non-strict header regex (both kinds), `^[^\u0000\u000A\u000D]*$`.
pub(crate) fn header_lax(s: &str) -> bool {
    !s.contains(['\0', '\n', '\r'])
}

/// PGV's host name: at most 253 bytes, dot-separated labels of 1 to 63 letters, digits and
/// inner hyphens; one trailing dot allowed.
fn hostname(s: &str) -> bool {
    let host = s.strip_suffix('.').unwrap_or(s).to_ascii_lowercase();
    s.len() <= 253
        && host.split('.').all(|label| {
            (1..=63).contains(&label.len())
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        })
}

fn bytes(b: &[u8], r: &DynamicMessage, report: &mut Report) {
    if b.is_empty() && flag(r, "ignore_empty") {
        return;
    }
    lengths(size(b.len()), r, ["len", "min_len", "max_len"], report);
    let blob = |name: &str| rule(r, name).and_then(|v| v.as_bytes().map(|b| b.to_vec()));
    let blobs = |name: &str| -> Vec<Vec<u8>> {
        let all = list_rule(r, name);
        all.iter()
            .filter_map(|v| v.as_bytes().map(|b| b.to_vec()))
            .collect()
    };
    if let Some(c) = blob("const")
        && b != c.as_slice()
    {
        report.add(format!("const {c:?}"));
    }
    for (name, holds) in [
        ("prefix", <[u8]>::starts_with as fn(&[u8], &[u8]) -> bool),
        ("suffix", <[u8]>::ends_with),
        ("contains", |b: &[u8], p: &[u8]| {
            p.is_empty() || b.windows(p.len()).any(|w| w == p)
        }),
    ] {
        if let Some(p) = blob(name)
            && !holds(b, &p)
        {
            report.add(format!("{name} {p:?}"));
        }
    }
    if let Some(p) = rule(r, "pattern").and_then(|v| v.as_str().map(str::to_owned)) {
        match regex::bytes::Regex::new(&p) {
            Ok(re) if re.is_match(b) => {}
            Ok(_) => report.add(format!("pattern {p:?}")),
            Err(e) => report.add(format!("pattern {p:?} does not compile: {e}")),
        }
    }
    membership(&b.to_vec(), &blobs("in"), &blobs("not_in"), report);
    if let Some((name, v)) = member(r, "well_known")
        && v.as_bool() == Some(true)
    {
        let ok = match name.as_str() {
            "ip" => b.len() == 4 || b.len() == 16,
            "ipv4" => b.len() == 4,
            _ => b.len() == 16,
        };
        if !ok {
            report.add(name);
        }
    }
}

// ---- enums, numbers, durations ----

fn enumeration(n: i32, kind: &Kind, r: &DynamicMessage, report: &mut Report) {
    if let Some(c) = rule(r, "const").and_then(|c| c.as_i32())
        && n != c
    {
        report.add(format!("const {c} (got {n})"));
    }
    if flag(r, "defined_only")
        && let Kind::Enum(e) = kind
        && e.get_value(n).is_none()
    {
        report.add(format!("defined_only (got {n}, not a {})", e.full_name()));
    }
    let ints = |name: &str| -> Vec<i32> {
        let all = list_rule(r, name);
        all.iter().filter_map(Value::as_i32).collect()
    };
    membership(&n, &ints("in"), &ints("not_in"), report);
}

/// A number or a duration (in nanoseconds), as compared by a rule.
#[derive(Debug, Clone, Copy)]
pub(super) enum Num {
    I(i128),
    F(f64),
}

impl Num {
    fn compare(self, other: Num) -> Option<Ordering> {
        match (self, other) {
            (Num::I(a), Num::I(b)) => Some(a.cmp(&b)),
            _ => self.float().partial_cmp(&other.float()),
        }
    }

    #[allow(clippy::cast_precision_loss)] // only when an integer meets a float rule
    fn float(self) -> f64 {
        match self {
            Num::I(i) => i as f64,
            Num::F(f) => f,
        }
    }

    fn is(self, other: Num) -> bool {
        self.compare(other) == Some(Ordering::Equal)
    }
}

/// How the values of one kind of ordered rule are read and shown.
struct Scale {
    read: fn(&Value) -> Option<Num>,
    show: fn(Num) -> String,
}

const NUMBERS: Scale = Scale {
    read: number_of,
    show: |n| match n {
        Num::I(i) => i.to_string(),
        Num::F(f) => f.to_string(),
    },
};

const DURATIONS: Scale = Scale {
    read: |v| v.as_message().and_then(nanos_of),
    show: show_duration,
};

fn number_of(v: &Value) -> Option<Num> {
    Some(match v {
        Value::I32(x) => Num::I(i128::from(*x)),
        Value::I64(x) => Num::I(i128::from(*x)),
        Value::U32(x) => Num::I(i128::from(*x)),
        Value::U64(x) => Num::I(i128::from(*x)),
        Value::F32(x) => Num::F(f64::from(*x)),
        Value::F64(x) => Num::F(*x),
        _ => return None,
    })
}

fn nanos_of(d: &DynamicMessage) -> Option<Num> {
    let seconds = d.get_field_by_name("seconds")?.as_i64()?;
    let nanos = d.get_field_by_name("nanos")?.as_i32()?;
    Some(Num::I(
        i128::from(seconds) * 1_000_000_000 + i128::from(nanos),
    ))
}

fn show_duration(n: Num) -> String {
    let Num::I(ns) = n else {
        return format!("{n:?}");
    };
    let sign = if ns < 0 { "-" } else { "" };
    let (s, frac) = (
        ns.unsigned_abs() / 1_000_000_000,
        ns.unsigned_abs() % 1_000_000_000,
    );
    if frac == 0 {
        format!("{sign}{s}s")
    } else {
        let frac = format!("{frac:09}");
        format!("{sign}{s}.{}s", frac.trim_end_matches('0'))
    }
}

fn number(v: &Value, r: &DynamicMessage, report: &mut Report) {
    let Some(n) = number_of(v) else {
        return report.add(format!("numeric rules on {v:?}"));
    };
    if flag(r, "ignore_empty") && n.is(Num::I(0)) {
        return;
    }
    ordered(n, r, &NUMBERS, report);
}

/// `DurationRules` on a set duration (`required` is checked where the field is absent).
pub(super) fn duration(d: &DynamicMessage, r: &DynamicMessage, report: &mut Report) {
    match nanos_of(d) {
        Some(n) => ordered(n, r, &DURATIONS, report),
        None => report.add("not a duration"),
    }
}

/// `const`, `lt`, `lte`, `gt`, `gte`, `in`, `not_in`, as PGV reads them: a lower bound above
/// the upper one asks for a value outside the range between them.
fn ordered(v: Num, r: &DynamicMessage, scale: &Scale, report: &mut Report) {
    let get = |name: &str| rule(r, name).and_then(|x| (scale.read)(&x));
    let got = (scale.show)(v);
    if let Some(c) = get("const")
        && !v.is(c)
    {
        report.add(format!("const {} (got {got})", (scale.show)(c)));
    }
    let lo = get("gt")
        .map(|b| ("gt", b))
        .or_else(|| get("gte").map(|b| ("gte", b)));
    let hi = get("lt")
        .map(|b| ("lt", b))
        .or_else(|| get("lte").map(|b| ("lte", b)));
    let holds = |(name, b): (&str, Num)| match v.compare(b) {
        Some(Ordering::Greater) => name.starts_with('g'),
        Some(Ordering::Less) => name.starts_with('l'),
        Some(Ordering::Equal) => name.ends_with('e'),
        None => false,
    };
    let ok = match (lo, hi) {
        (Some(l), Some(h)) if h.1.compare(l.1) != Some(Ordering::Greater) => holds(l) || holds(h),
        _ => lo.is_none_or(holds) && hi.is_none_or(holds),
    };
    if !ok {
        let bounds: Vec<String> = [lo, hi]
            .into_iter()
            .flatten()
            .map(|(name, b)| format!("{name} {}", (scale.show)(b)))
            .collect();
        report.add(format!("{} (got {got})", bounds.join(", ")));
    }
    let list = |name: &str| -> Vec<Num> {
        let all = list_rule(r, name);
        all.iter().filter_map(scale.read).collect()
    };
    let (ins, outs) = (list("in"), list("not_in"));
    if !ins.is_empty() && !ins.iter().any(|x| v.is(*x)) {
        let shown: Vec<String> = ins.iter().map(|x| (scale.show)(*x)).collect();
        report.add(format!("in [{}] (got {got})", shown.join(", ")));
    }
    if outs.iter().any(|x| v.is(*x)) {
        report.add(format!("not_in (got {got})"));
    }
}

/// Envoy's own check of every duration, beyond PGV (`MessageUtil::validateDurationFields`):
/// no negative part, nanos below a second, seconds within protobuf's range.
pub(super) fn envoy_duration(d: &DynamicMessage, report: &mut Report) {
    let seconds = d
        .get_field_by_name("seconds")
        .and_then(|v| v.as_i64())
        .unwrap_or(0);
    let nanos = d
        .get_field_by_name("nanos")
        .and_then(|v| v.as_i32())
        .unwrap_or(0);
    if seconds < 0 || nanos < 0 {
        report.add("envoy: Invalid duration: Expected positive duration");
    } else if nanos > 999_999_999 || seconds > 315_576_000_000 {
        report.add("envoy: Invalid duration: Duration out-of-range");
    }
}

// ---- Any, timestamps, repeated and map sizes ----

/// `AnyRules` `in` and `not_in` on a set `Any` (`required`: where the field is absent).
pub(super) fn any(a: &DynamicMessage, r: &DynamicMessage, report: &mut Report) {
    let url = a
        .get_field_by_name("type_url")
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default();
    let texts = |name: &str| -> Vec<String> {
        let all = list_rule(r, name);
        all.iter()
            .filter_map(|v| v.as_str().map(str::to_owned))
            .collect()
    };
    membership(&url, &texts("in"), &texts("not_in"), report);
}

/// `TimestampRules` beyond `required`: Envoy's API has none, so none is checked here.
pub(super) fn timestamp(r: &DynamicMessage, report: &mut Report) {
    for (f, _) in r.fields() {
        if f.name() != "required" {
            report.add(format!(
                "timestamp.{}: not checked by this validator",
                f.name()
            ));
        }
    }
}

/// `RepeatedRules` on the list itself (its `items` rules apply to each item).
pub(super) fn repeated(items: &[Value], r: &DynamicMessage, report: &mut Report) {
    if items.is_empty() && flag(r, "ignore_empty") {
        return;
    }
    lengths(size(items.len()), r, ["", "min_items", "max_items"], report);
    if flag(r, "unique") {
        let twice = items
            .iter()
            .enumerate()
            .any(|(i, v)| items[..i].contains(v));
        if twice {
            report.add("unique");
        }
    }
}

/// `MapRules` on the map itself (`keys` and `values` apply to each entry).
pub(super) fn pairs(n: usize, r: &DynamicMessage, report: &mut Report) {
    if n == 0 && flag(r, "ignore_empty") {
        return;
    }
    lengths(size(n), r, ["", "min_pairs", "max_pairs"], report);
}

/// A map key as the path shows it: `["name"]`, `[3]`.
pub(super) fn key_text(k: &prost_reflect::MapKey) -> String {
    use prost_reflect::MapKey;
    match k {
        MapKey::String(s) => format!("{s:?}"),
        MapKey::Bool(b) => b.to_string(),
        MapKey::I32(i) => i.to_string(),
        MapKey::I64(i) => i.to_string(),
        MapKey::U32(u) => u.to_string(),
        MapKey::U64(u) => u.to_string(),
    }
}

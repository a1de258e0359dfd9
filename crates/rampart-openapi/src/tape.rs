//! Request bodies as a flat tape for the validators: one `Vec` of entries, strings borrowed
//! from the body unless they hold escapes, containers skipped by index. A `serde_json::Value`
//! costs an allocation per string, key and object (most of a 1 KiB body's check); the tape
//! costs one. jsonschema validates any representation through its `json::Json` traits.
//!
//! The tape takes exactly what `serde_json` takes, and nothing it could read differently:
//! anything else (invalid JSON, duplicate keys, objects over [`MAX_MEMBERS`], nesting past
//! serde's 128 levels) is left to the `Value` path, which also words every error.

use std::borrow::Cow;

use jsonschema::JsonType;
use jsonschema::json::{Array, Json, Node, NodeIdentity, Object};
use serde_json::{Number, Value};

/// Objects with more members are left to `serde_json` (duplicate keys are looked for
/// pairwise).
pub const MAX_MEMBERS: u32 = 32;
const MAX_DEPTH: usize = 128;

/// A parsed body.
#[derive(Debug, Default)]
pub struct Doc<'a> {
    nodes: Vec<Entry<'a>>,
}

#[derive(Debug)]
enum Entry<'a> {
    Null,
    Bool(bool),
    Num(Number),
    Str(Cow<'a, str>),
    /// Members or elements, and the index just past the container's last entry.
    Arr {
        len: u32,
        end: u32,
    },
    Obj {
        len: u32,
        end: u32,
    },
    Key(Cow<'a, str>),
}

impl<'a> Doc<'a> {
    /// `None` when `serde_json` should read it instead (see the module's notes).
    pub fn parse(bytes: &'a [u8]) -> Option<Self> {
        let text = std::str::from_utf8(bytes).ok()?;
        let mut p = Parser {
            s: text,
            b: bytes,
            i: 0,
            nodes: Vec::with_capacity(bytes.len() / 4 + 1),
            depth: 0,
        };
        p.value()?;
        p.ws();
        (p.i == bytes.len()).then_some(Doc { nodes: p.nodes })
    }

    pub fn root(&self) -> Tape<'_> {
        Tape { doc: self, at: 0 }
    }

    /// The index after the entry at `at` and everything inside it.
    fn skip(&self, at: usize) -> usize {
        match self.nodes[at] {
            Entry::Arr { end, .. } | Entry::Obj { end, .. } => end as usize,
            _ => at + 1,
        }
    }
}

struct Parser<'a> {
    s: &'a str,
    b: &'a [u8],
    i: usize,
    nodes: Vec<Entry<'a>>,
    depth: usize,
}

impl<'a> Parser<'a> {
    fn ws(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.b.get(self.i) {
            self.i += 1;
        }
    }

    fn value(&mut self) -> Option<()> {
        self.ws();
        match *self.b.get(self.i)? {
            b'{' => self.object(),
            b'[' => self.array(),
            b'"' => {
                let s = self.string()?;
                self.nodes.push(Entry::Str(s));
                Some(())
            }
            b't' => self.literal("true", Entry::Bool(true)),
            b'f' => self.literal("false", Entry::Bool(false)),
            b'n' => self.literal("null", Entry::Null),
            b'-' | b'0'..=b'9' => self.number(),
            _ => None,
        }
    }

    fn literal(&mut self, word: &str, e: Entry<'a>) -> Option<()> {
        self.b[self.i..]
            .starts_with(word.as_bytes())
            .then_some(())?;
        self.i += word.len();
        self.nodes.push(e);
        Some(())
    }

    fn enter(&mut self) -> Option<usize> {
        self.depth += 1;
        (self.depth <= MAX_DEPTH).then_some(())?;
        self.i += 1;
        let at = self.nodes.len();
        self.nodes.push(Entry::Null);
        Some(at)
    }

    fn array(&mut self) -> Option<()> {
        let at = self.enter()?;
        let mut len = 0u32;
        self.ws();
        if self.b.get(self.i) == Some(&b']') {
            self.i += 1;
        } else {
            loop {
                self.value()?;
                len += 1;
                self.ws();
                match self.b.get(self.i)? {
                    b',' => self.i += 1,
                    b']' => {
                        self.i += 1;
                        break;
                    }
                    _ => return None,
                }
            }
        }
        let end = u32::try_from(self.nodes.len()).ok()?;
        self.nodes[at] = Entry::Arr { len, end };
        self.depth -= 1;
        Some(())
    }

    fn object(&mut self) -> Option<()> {
        let at = self.enter()?;
        let mut len = 0u32;
        // Where each key is, to refuse duplicates (serde_json keeps the last; the tape does
        // not try).
        let mut keys = [0usize; MAX_MEMBERS as usize];
        self.ws();
        if self.b.get(self.i) == Some(&b'}') {
            self.i += 1;
        } else {
            loop {
                self.ws();
                if self.b.get(self.i) != Some(&b'"') {
                    return None;
                }
                let key = self.string()?;
                let seen = keys[..len as usize].iter().any(|&k| match &self.nodes[k] {
                    Entry::Key(other) => *other == key,
                    _ => false,
                });
                if seen || len == MAX_MEMBERS {
                    return None;
                }
                keys[len as usize] = self.nodes.len();
                self.nodes.push(Entry::Key(key));
                self.ws();
                if self.b.get(self.i) != Some(&b':') {
                    return None;
                }
                self.i += 1;
                self.value()?;
                len += 1;
                self.ws();
                match self.b.get(self.i)? {
                    b',' => self.i += 1,
                    b'}' => {
                        self.i += 1;
                        break;
                    }
                    _ => return None,
                }
            }
        }
        let end = u32::try_from(self.nodes.len()).ok()?;
        self.nodes[at] = Entry::Obj { len, end };
        self.depth -= 1;
        Some(())
    }

    /// A string at `self.i` (its opening quote); borrowed unless it holds escapes.
    fn string(&mut self) -> Option<Cow<'a, str>> {
        let start = self.i + 1;
        let mut j = start;
        loop {
            match *self.b.get(j)? {
                b'"' => {
                    self.i = j + 1;
                    return Some(Cow::Borrowed(&self.s[start..j]));
                }
                b'\\' => break,
                c if c < 0x20 => return None,
                _ => j += 1,
            }
        }
        let mut out = String::with_capacity(j - start + 16);
        out.push_str(&self.s[start..j]);
        loop {
            match *self.b.get(j)? {
                b'"' => {
                    self.i = j + 1;
                    return Some(Cow::Owned(out));
                }
                b'\\' => {
                    let (c, used) = self.escape(j + 1)?;
                    out.push(c);
                    j += 1 + used;
                }
                c if c < 0x20 => return None,
                _ => {
                    // One UTF-8 character (the text is valid UTF-8).
                    let ch = self.s[j..].chars().next()?;
                    out.push(ch);
                    j += ch.len_utf8();
                }
            }
        }
    }

    /// The escape after a backslash at `at - 1`: its character and the bytes it used.
    fn escape(&self, at: usize) -> Option<(char, usize)> {
        Some(match *self.b.get(at)? {
            b'"' => ('"', 1),
            b'\\' => ('\\', 1),
            b'/' => ('/', 1),
            b'b' => ('\u{8}', 1),
            b'f' => ('\u{c}', 1),
            b'n' => ('\n', 1),
            b'r' => ('\r', 1),
            b't' => ('\t', 1),
            b'u' => {
                let hi = self.hex4(at + 1)?;
                match hi {
                    0xD800..=0xDBFF => {
                        // A surrogate pair, or nothing (serde_json refuses lone ones).
                        if self.b.get(at + 5..at + 7)? != b"\\u" {
                            return None;
                        }
                        let lo = self.hex4(at + 7)?;
                        if !(0xDC00..=0xDFFF).contains(&lo) {
                            return None;
                        }
                        let c = 0x10000 + ((hi - 0xD800) << 10) + (lo - 0xDC00);
                        (char::from_u32(c)?, 11)
                    }
                    0xDC00..=0xDFFF => return None,
                    _ => (char::from_u32(hi)?, 5),
                }
            }
            _ => return None,
        })
    }

    fn hex4(&self, at: usize) -> Option<u32> {
        let digits = self.s.get(at..at + 4)?;
        if !digits.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        u32::from_str_radix(digits, 16).ok()
    }

    /// JSON's number grammar, read into a `Number` as serde_json reads it.
    fn number(&mut self) -> Option<()> {
        let start = self.i;
        let digits = |p: &mut Self| {
            let from = p.i;
            while p.b.get(p.i).is_some_and(u8::is_ascii_digit) {
                p.i += 1;
            }
            p.i > from
        };
        if self.b.get(self.i) == Some(&b'-') {
            self.i += 1;
        }
        match self.b.get(self.i)? {
            b'0' => self.i += 1,
            b'1'..=b'9' => {
                digits(self);
            }
            _ => return None,
        }
        if self.b.get(self.i) == Some(&b'.') {
            self.i += 1;
            digits(self).then_some(())?;
        }
        if let Some(b'e' | b'E') = self.b.get(self.i) {
            self.i += 1;
            if let Some(b'+' | b'-') = self.b.get(self.i) {
                self.i += 1;
            }
            digits(self).then_some(())?;
        }
        let literal = &self.s[start..self.i];
        // Short integers, the common case, without serde's number reader.
        let n: Number = if literal.len() <= 18 && !literal.contains(['.', 'e', 'E']) {
            match literal.strip_prefix('-') {
                // (`-0` is serde's to read: it may be a float.)
                Some(d) if d != "0" => Number::from(-d.parse::<i64>().ok()?),
                Some(_) => literal.parse().ok()?,
                None => Number::from(literal.parse::<u64>().ok()?),
            }
        } else {
            literal.parse().ok()?
        };
        self.nodes.push(Entry::Num(n));
        Some(())
    }
}

/// An object's members: (member index, key).
fn keys<'d>(doc: &'d Doc<'_>, at: usize) -> impl Iterator<Item = (usize, &'d str)> {
    let (len, mut i) = match doc.nodes[at] {
        Entry::Obj { len, .. } => (len as usize, at + 1),
        _ => (0, at + 1),
    };
    (0..len).filter_map(move |n| {
        let key = match &doc.nodes.get(i)? {
            Entry::Key(k) => k.as_ref(),
            _ => return None,
        };
        i = doc.skip(i + 1);
        Some((n, key))
    })
}

/// The representation jsonschema validates: [`Tape`] nodes.
pub struct TapeJson;

impl Json for TapeJson {
    type Node<'a> = Tape<'a>;
    type PreparedKey = String;
    type StringBuffer = Doc<'static>;

    // Lookups scan the members: a pass over them costs no more than a few lookups.
    const KEYS_PER_LOOKUP: usize = 8;

    fn prepare_key(key: &str) -> String {
        key.to_owned()
    }

    fn with_string_node<T>(
        buffer: &mut Doc<'static>,
        string: &str,
        f: impl FnOnce(Tape<'_>) -> T,
    ) -> T {
        buffer.nodes.clear();
        buffer.nodes.push(Entry::Str(Cow::Owned(string.to_owned())));
        f(buffer.root())
    }
}

/// One node of a [`Doc`].
#[derive(Debug, Clone, Copy)]
pub struct Tape<'a> {
    doc: &'a Doc<'a>,
    at: usize,
}

impl<'a> Tape<'a> {
    fn entry(&self) -> &'a Entry<'a> {
        &self.doc.nodes[self.at]
    }
}

impl<'a> Node<'a, TapeJson> for Tape<'a> {
    type Object = Self;
    type Array = Self;
    type Number = &'a Number;

    fn as_object(&self) -> Option<Self> {
        matches!(self.entry(), Entry::Obj { .. }).then_some(*self)
    }

    fn as_array(&self) -> Option<Self> {
        matches!(self.entry(), Entry::Arr { .. }).then_some(*self)
    }

    fn as_string(&self) -> Option<Cow<'a, str>> {
        match self.entry() {
            Entry::Str(s) => Some(Cow::Borrowed(s.as_ref())),
            _ => None,
        }
    }

    fn as_number(&self) -> Option<&'a Number> {
        match self.entry() {
            Entry::Num(n) => Some(n),
            _ => None,
        }
    }

    fn as_boolean(&self) -> Option<bool> {
        match self.entry() {
            Entry::Bool(b) => Some(*b),
            _ => None,
        }
    }

    fn is_null(&self) -> bool {
        matches!(self.entry(), Entry::Null)
    }

    fn json_type(&self) -> JsonType {
        match self.entry() {
            Entry::Null => JsonType::Null,
            Entry::Bool(_) => JsonType::Boolean,
            Entry::Num(_) => JsonType::Number,
            Entry::Str(_) | Entry::Key(_) => JsonType::String,
            Entry::Arr { .. } => JsonType::Array,
            Entry::Obj { .. } => JsonType::Object,
        }
    }

    fn equals_value(&self, expected: &Value) -> bool {
        // Scalars without building a `Value` (enums and consts of strings are common).
        match (self.entry(), expected) {
            (Entry::Str(s), Value::String(e)) => s == e,
            (Entry::Str(_), _) => false,
            (Entry::Bool(b), Value::Bool(e)) => b == e,
            (Entry::Null, e) => e.is_null(),
            _ => jsonschema::json::cmp::equal(&self.to_value(), expected),
        }
    }

    fn to_value(&self) -> Cow<'a, Value> {
        Cow::Owned(value(self.doc, self.at))
    }

    fn identity(&self) -> Option<NodeIdentity> {
        let addr = std::ptr::from_ref(self.doc) as usize;
        Some(NodeIdentity::tagged(addr, u32::try_from(self.at).ok()?))
    }
}

fn value(doc: &Doc<'_>, at: usize) -> Value {
    match &doc.nodes[at] {
        Entry::Null => Value::Null,
        Entry::Bool(b) => Value::Bool(*b),
        Entry::Num(n) => Value::Number(n.clone()),
        Entry::Str(s) | Entry::Key(s) => Value::String(s.to_string()),
        Entry::Arr { len, .. } => {
            let mut out = Vec::with_capacity(*len as usize);
            let mut i = at + 1;
            for _ in 0..*len {
                out.push(value(doc, i));
                i = doc.skip(i);
            }
            Value::Array(out)
        }
        Entry::Obj { .. } => {
            let mut out = serde_json::Map::new();
            let mut i = at + 1;
            for (_, k) in keys(doc, at) {
                out.insert(k.to_owned(), value(doc, i + 1));
                i = doc.skip(i + 1);
            }
            Value::Object(out)
        }
    }
}

/// Members of an object, in order.
pub struct Members<'a> {
    doc: &'a Doc<'a>,
    next: usize,
    left: u32,
}

impl<'a> Iterator for Members<'a> {
    type Item = (&'a str, Tape<'a>);

    fn next(&mut self) -> Option<Self::Item> {
        if self.left == 0 {
            return None;
        }
        self.left -= 1;
        let Entry::Key(k) = self.doc.nodes.get(self.next)? else {
            return None;
        };
        let v = Tape {
            doc: self.doc,
            at: self.next + 1,
        };
        self.next = self.doc.skip(self.next + 1);
        Some((k.as_ref(), v))
    }
}

impl<'a> Object<'a, TapeJson> for Tape<'a> {
    type Node = Self;
    type MemberName = &'a str;
    type MembersIter = Members<'a>;

    fn len(&self) -> usize {
        match self.entry() {
            Entry::Obj { len, .. } => *len as usize,
            _ => 0,
        }
    }

    fn get(&self, key: &String) -> Option<Self> {
        Object::members(self)
            .find(|(k, _)| k == key)
            .map(|(_, v)| v)
    }

    fn members(&self) -> Members<'a> {
        Members {
            doc: self.doc,
            next: self.at + 1,
            left: u32::try_from(Object::len(self)).unwrap_or(0),
        }
    }
}

/// Elements of an array, in order.
pub struct Elements<'a> {
    doc: &'a Doc<'a>,
    next: usize,
    left: u32,
}

impl<'a> Iterator for Elements<'a> {
    type Item = Tape<'a>;

    fn next(&mut self) -> Option<Tape<'a>> {
        if self.left == 0 {
            return None;
        }
        self.left -= 1;
        let t = Tape {
            doc: self.doc,
            at: self.next,
        };
        self.next = self.doc.skip(self.next);
        Some(t)
    }
}

impl<'a> Array<'a, TapeJson> for Tape<'a> {
    type Node = Self;
    type ElementsIter = Elements<'a>;

    fn len(&self) -> usize {
        match self.entry() {
            Entry::Arr { len, .. } => *len as usize,
            _ => 0,
        }
    }

    fn elements(&self) -> Elements<'a> {
        Elements {
            doc: self.doc,
            next: self.at + 1,
            left: u32::try_from(Array::len(self)).unwrap_or(0),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn same(text: &str) {
        let tape = Doc::parse(text.as_bytes());
        let serde: Result<Value, _> = serde_json::from_str(text);
        match (tape, serde) {
            (Some(doc), Ok(v)) => assert_eq!(value(&doc, 0), v, "{text}"),
            (Some(doc), Err(e)) => panic!("{text:?}: tape read {:?}, serde: {e}", value(&doc, 0)),
            (None, _) => {}
        }
    }

    #[test]
    fn reads_what_serde_reads() {
        for t in [
            r#"{"a":1,"b":[true,false,null,"x\"y\u00e9\ud83d\ude00"],"c":{"d":-0.5e3}}"#,
            "  [ ]  ",
            "{}",
            "18446744073709551615",
            "-9223372036854775808",
            "1.0",
            "\"\\/\\b\\f\\n\\r\\t\"",
        ] {
            assert!(Doc::parse(t.as_bytes()).is_some(), "{t}");
            same(t);
        }
        for bad in [
            "01",
            "1.",
            "-",
            "1e",
            "[1,]",
            "{\"a\":1,}",
            "\"\\ud800\"",
            "\"\\udc00x\"",
            "tru",
            "\"a\nb\"",
            "[1] x",
            "{\"a\":1,\"a\":2}",
            "1e400",
        ] {
            assert!(Doc::parse(bad.as_bytes()).is_none(), "{bad:?}");
        }
        let deep = format!("{}{}", "[".repeat(200), "]".repeat(200));
        assert!(Doc::parse(deep.as_bytes()).is_none());
        let doc = Doc::parse(b"[[1,2],{\"k\":[3]},4]").unwrap();
        let third = Array::elements(&doc.root()).nth(2).unwrap();
        assert_eq!(third.as_number().unwrap().as_u64(), Some(4));
    }

    fn json() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            any::<f64>()
                .prop_filter("finite", |f| f.is_finite())
                .prop_map(Value::from),
            "\\PC{0,8}".prop_map(Value::String),
        ];
        leaf.prop_recursive(4, 32, 6, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
                proptest::collection::btree_map("[a-z\"\\\\é]{0,4}", inner, 0..6)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest! {
        /// Any JSON written by serde reads back the same through the tape.
        #[test]
        fn round_trips(v in json(), pretty in any::<bool>()) {
            let text = if pretty { serde_json::to_string_pretty(&v).unwrap() } else { v.to_string() };
            let doc = Doc::parse(text.as_bytes()).expect("serde's own output");
            prop_assert_eq!(value(&doc, 0), v);
        }

        /// Any bytes: the tape reads nothing serde would not, and reads it the same.
        #[test]
        fn never_reads_more_than_serde(bytes in proptest::collection::vec(
            proptest::sample::select(b"{}[]\":,0123456789-+.eEtrufalsn \\u\n".to_vec()), 0..40)) {
            if let Ok(text) = std::str::from_utf8(&bytes) {
                same(text);
            }
        }
    }
}

//! Where a JSON pointer is in a spec's text: the line of the deepest node the pointer
//! reaches (the key's line for a mapping entry), so that a problem can be read with the file
//! open. YAML and JSON alike (JSON is read as YAML, as the spec itself is).

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_saphyr::Spanned;

/// A document's nodes with their lines.
pub struct Lines(Node);

enum Node {
    Map(Vec<(Spanned<Key>, Spanned<Node>)>),
    Seq(Vec<Spanned<Node>>),
    Leaf,
}

impl Lines {
    /// `None` when the text does not parse (the loader reports that, with its own position).
    pub fn parse(text: &str) -> Option<Self> {
        // As the loader reads it: `y`, `on`, `no` are strings, not YAML 1.1 booleans.
        let mut options = serde_saphyr::Options::default();
        options.strict_booleans = true;
        serde_saphyr::from_str_with_options::<Node>(text, options)
            .ok()
            .map(Self)
    }

    /// The line `pointer` (`/paths/~1orders/get`) reaches: its node's, else its deepest
    /// existing ancestor's (a missing field is reported where its parent is). 1 for the
    /// whole document.
    pub fn line(&self, pointer: &str) -> u32 {
        let mut node = &self.0;
        let mut line = 1;
        for raw in pointer.split('/').skip(1) {
            let seg = raw.replace("~1", "/").replace("~0", "~");
            let next = match node {
                Node::Map(entries) => entries
                    .iter()
                    .find(|(k, _)| k.value.0 == seg)
                    .map(|(k, v)| (k.referenced.line(), &v.value)),
                Node::Seq(items) => seg
                    .parse::<usize>()
                    .ok()
                    .and_then(|i| items.get(i))
                    .map(|v| (v.referenced.line(), &v.value)),
                Node::Leaf => None,
            };
            match next {
                Some((l, n)) => {
                    line = u32::try_from(l).unwrap_or(line);
                    node = n;
                }
                None => break,
            }
        }
        line
    }
}

/// Lines of the files a spec's problems name, each file read once.
#[derive(Default)]
pub struct Locator {
    files: HashMap<PathBuf, Option<Lines>>,
}

impl Locator {
    /// The file and line of a problem's pointer: `/a/b` is in the root spec, `other.yaml#/a`
    /// in a file beside it.
    pub fn find(&mut self, root: &Path, pointer: &str) -> Option<(PathBuf, u32)> {
        let (file, pointer) = match pointer.split_once('#') {
            Some((f, p)) if !f.is_empty() => (root.parent()?.join(f), p),
            Some((_, p)) => (root.to_path_buf(), p),
            None => (root.to_path_buf(), pointer),
        };
        let lines = self.files.entry(file.clone()).or_insert_with(|| {
            std::fs::read_to_string(&file)
                .ok()
                .and_then(|t| Lines::parse(&t))
        });
        lines.as_ref().map(|l| (file, l.line(pointer)))
    }
}

/// A mapping key as text (YAML keys like `200:` or `true:` are not strings).
struct Key(String);

impl<'de> Deserialize<'de> for Key {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Key;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a scalar key")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Key, E> {
                Ok(Key(v.to_owned()))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Key, E> {
                Ok(Key(v.to_string()))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Key, E> {
                Ok(Key(v.to_string()))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Key, E> {
                Ok(Key(v.to_string()))
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<Key, E> {
                Ok(Key(v.to_string()))
            }
            fn visit_unit<E: de::Error>(self) -> Result<Key, E> {
                Ok(Key("null".into()))
            }
        }
        d.deserialize_any(V)
    }
}

impl<'de> Deserialize<'de> for Node {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Node;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("any YAML node")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> Result<Node, A::Error> {
                let mut entries = Vec::new();
                while let Some(k) = m.next_key::<Spanned<Key>>()? {
                    entries.push((k, m.next_value::<Spanned<Node>>()?));
                }
                Ok(Node::Map(entries))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut s: A) -> Result<Node, A::Error> {
                let mut items = Vec::new();
                while let Some(v) = s.next_element::<Spanned<Node>>()? {
                    items.push(v);
                }
                Ok(Node::Seq(items))
            }
            fn visit_str<E: de::Error>(self, _: &str) -> Result<Node, E> {
                Ok(Node::Leaf)
            }
            fn visit_i64<E: de::Error>(self, _: i64) -> Result<Node, E> {
                Ok(Node::Leaf)
            }
            fn visit_u64<E: de::Error>(self, _: u64) -> Result<Node, E> {
                Ok(Node::Leaf)
            }
            fn visit_f64<E: de::Error>(self, _: f64) -> Result<Node, E> {
                Ok(Node::Leaf)
            }
            fn visit_bool<E: de::Error>(self, _: bool) -> Result<Node, E> {
                Ok(Node::Leaf)
            }
            fn visit_unit<E: de::Error>(self) -> Result<Node, E> {
                Ok(Node::Leaf)
            }
            fn visit_none<E: de::Error>(self) -> Result<Node, E> {
                Ok(Node::Leaf)
            }
        }
        d.deserialize_any(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pointers_land_on_their_lines_in_yaml_and_json() {
        let yaml = "openapi: 3.1.0\ninfo:\n  title: t\n  y: { on: 1 }\npaths:\n  /orders/{id}:\n    get:\n      responses:\n        200:\n          description: ok\n      parameters:\n        - name: a\n        - name: b\n";
        let l = Lines::parse(yaml).unwrap();
        assert_eq!(l.line(""), 1);
        assert_eq!(l.line("/info/title"), 3);
        assert_eq!(l.line("/info/y/on"), 4, "YAML 1.1 booleans are strings");
        assert_eq!(l.line("/paths/~1orders~1{id}/get"), 7);
        assert_eq!(l.line("/paths/~1orders~1{id}/get/responses/200"), 9);
        assert_eq!(l.line("/paths/~1orders~1{id}/get/parameters/1"), 13);
        // A field that is not there: its parent's line.
        assert_eq!(l.line("/paths/~1orders~1{id}/get/requestBody/content"), 7);
        assert_eq!(l.line("/info/version"), 2);
        let json = "{\n  \"openapi\": \"3.1.0\",\n  \"paths\": {\n    \"/a\": {\n      \"get\": {}\n    }\n  }\n}\n";
        let l = Lines::parse(json).unwrap();
        assert_eq!(l.line("/paths/~1a/get"), 5);
    }

    proptest::proptest! {
        /// Any text, any pointer: an answer or `None`, never a panic.
        #[test]
        fn never_panics(text in "[a-z0-9{}\\[\\]:,\"' \\n#&*!|>-]{0,200}", pointer in "(/[a-z0-9~{}]{0,6}){0,5}") {
            if let Some(l) = Lines::parse(&text) {
                let line = l.line(&pointer);
                proptest::prop_assert!(line >= 1 && line as usize <= text.lines().count().max(1) + 1);
            }
        }
    }
}

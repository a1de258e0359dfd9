//! Path templates: `/users/{id}/posts/{post}`, OpenAPI's path form (and Envoy's
//! `uri_template`). A parameter stands for one whole segment, never a `/`; the router matches
//! templates segment by segment (`rampart_router::template_captures`), without regexes.

use std::fmt;

/// One `/`-separated piece of a template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Segment {
    Literal(String),
    /// `{name}`: any non-empty segment.
    Param(String),
    /// Parameters inside a segment (`{base}...{head}`, `{name}.{ext}`): literals and
    /// parameters alternating, never two parameters side by side.
    Mixed(Vec<Part>),
}

/// A piece of a [`Segment::Mixed`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Part {
    Literal(String),
    Param(String),
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
}

/// A segment with parameters inside it, as parts.
fn mixed(i: usize, seg: &str) -> Result<Vec<Part>, String> {
    let mut parts = Vec::new();
    let mut rest = seg;
    while !rest.is_empty() {
        if let Some(after) = rest.strip_prefix('{') {
            let end = after
                .find('}')
                .ok_or_else(|| format!("segment {i} ({seg:?}): an unclosed '{{'"))?;
            let name = &after[..end];
            if !valid_name(name) {
                return Err(format!(
                    "segment {i} ({seg:?}): a parameter name is letters, digits, '_', '-' or '.'"
                ));
            }
            if matches!(parts.last(), Some(Part::Param(_))) {
                return Err(format!(
                    "segment {i} ({seg:?}): two parameters side by side cannot be told apart"
                ));
            }
            parts.push(Part::Param(name.to_owned()));
            rest = &after[end + 1..];
        } else {
            let end = rest.find('{').unwrap_or(rest.len());
            let lit = &rest[..end];
            if lit.contains('}') {
                return Err(format!("segment {i} ({seg:?}): a '}}' without its '{{'"));
            }
            parts.push(Part::Literal(lit.to_owned()));
            rest = &rest[end..];
        }
    }
    Ok(parts)
}

#[derive(Clone, PartialEq, Eq)]
pub struct PathTemplate {
    text: String,
    segments: Vec<Segment>,
}

impl fmt::Debug for PathTemplate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PathTemplate({:?})", self.text)
    }
}

impl PathTemplate {
    /// Parses a template; errors say what is wrong with which segment.
    pub fn parse(text: &str) -> Result<Self, String> {
        let Some(rest) = text.strip_prefix('/') else {
            return Err(format!("{text:?} must start with '/'"));
        };
        let mut segments = Vec::new();
        let mut names: Vec<String> = Vec::new();
        for (i, seg) in rest.split('/').enumerate() {
            let whole = seg
                .strip_prefix('{')
                .and_then(|s| s.strip_suffix('}'))
                .filter(|n| !n.contains(['{', '}']));
            let names_here: Vec<String> = if let Some(name) = whole {
                if !valid_name(name) {
                    return Err(format!(
                        "segment {i} ({seg:?}): a parameter name is letters, digits, '_', '-' or '.'"
                    ));
                }
                segments.push(Segment::Param(name.to_owned()));
                vec![name.to_owned()]
            } else if seg.contains(['{', '}']) {
                let parts = mixed(i, seg)?;
                let names = parts
                    .iter()
                    .filter_map(|p| match p {
                        Part::Param(n) => Some(n.clone()),
                        Part::Literal(_) => None,
                    })
                    .collect();
                segments.push(Segment::Mixed(parts));
                names
            } else if seg.contains(['?', '#']) {
                return Err(format!(
                    "segment {i} ({seg:?}): no query or fragment in a path"
                ));
            } else {
                segments.push(Segment::Literal(seg.to_owned()));
                Vec::new()
            };
            for name in names_here {
                if names.contains(&name) {
                    return Err(format!("parameter {name:?} appears twice"));
                }
                names.push(name);
            }
        }
        Ok(Self {
            text: text.to_owned(),
            segments,
        })
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }

    pub fn segments(&self) -> &[Segment] {
        &self.segments
    }

    /// The parameters' names, in order.
    pub fn params(&self) -> impl Iterator<Item = &str> {
        self.segments.iter().flat_map(|s| {
            let names: Vec<&str> = match s {
                Segment::Param(n) => vec![n.as_str()],
                Segment::Literal(_) => Vec::new(),
                Segment::Mixed(parts) => parts
                    .iter()
                    .filter_map(|p| match p {
                        Part::Param(n) => Some(n.as_str()),
                        Part::Literal(_) => None,
                    })
                    .collect(),
            };
            names
        })
    }

    /// The same match as an anchored regular expression (for Envoy, which gets a regex).
    pub fn to_regex(&self) -> String {
        let mut out = String::from("^");
        for s in &self.segments {
            out.push('/');
            match s {
                Segment::Literal(l) => out.push_str(&regex::escape(l)),
                Segment::Param(_) => out.push_str("[^/]+"),
                Segment::Mixed(parts) => {
                    for p in parts {
                        match p {
                            Part::Literal(l) => out.push_str(&regex::escape(l)),
                            Part::Param(_) => out.push_str("[^/]+?"),
                        }
                    }
                }
            }
        }
        out.push('$');
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_refuses_with_reasons() {
        let t = PathTemplate::parse("/users/{id}/posts/{post_id}").unwrap();
        assert_eq!(t.params().collect::<Vec<_>>(), ["id", "post_id"]);
        assert_eq!(t.to_regex(), "^/users/[^/]+/posts/[^/]+$");
        assert_eq!(PathTemplate::parse("/").unwrap().segments().len(), 1);
        for (bad, why) in [
            ("users/{id}", "start with '/'"),
            ("/files/{name}{ext}", "side by side"),
            ("/files/{name.x", "unclosed"),
            ("/files/x}", "without its"),
            ("/a/{id}/b/{id}", "twice"),
            ("/a/{}", "parameter name"),
            ("/a/{x y}", "parameter name"),
            ("/a?b", "query"),
        ] {
            let e = PathTemplate::parse(bad).unwrap_err();
            assert!(e.contains(why), "{bad}: {e}");
        }
        assert_eq!(
            PathTemplate::parse("/a.b/c").unwrap().to_regex(),
            "^/a\\.b/c$"
        );
    }
}

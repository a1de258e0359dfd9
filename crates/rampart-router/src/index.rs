//! A segment tree (radix by path segment) over a virtual host's exact and template paths, so
//! that a lookup looks only at the routes whose path can match: literal segments are a hash
//! step, a `{param}` segment takes any non-empty segment, a segment with parameters inside
//! is tried piecewise. Routes the tree cannot place (prefix, regex, no path condition) are
//! kept in a list. Precedence does not change: among the routes that match, the first
//! written wins, as in a scan of them all.

use std::collections::HashMap;

use rampart_config::model::{PathMatch, Route};
use rampart_config::template::{Part, Segment};

/// One virtual host's routes, by path.
#[derive(Debug, Clone, Default)]
pub(crate) struct PathIndex {
    root: Node,
    /// Routes the tree does not hold, in the order written.
    others: Vec<usize>,
}

#[derive(Debug, Clone, Default)]
struct Node {
    literal: HashMap<Box<str>, Node>,
    /// `{param}`: any non-empty segment.
    param: Option<Box<Node>>,
    /// Segments with parameters inside (`{base}...{head}`), each tried in turn.
    mixed: Vec<(Vec<Part>, Node)>,
    /// Routes whose path ends here, in the order written.
    routes: Vec<usize>,
}

impl PathIndex {
    pub(crate) fn new(routes: &[Route]) -> Self {
        let mut index = Self::default();
        for (i, r) in routes.iter().enumerate() {
            match &r.matcher.path {
                Some(PathMatch::Template(t)) => index.root.insert(t.segments(), i),
                Some(PathMatch::Exact(e)) if e.starts_with('/') => {
                    let segments: Vec<Segment> = e[1..]
                        .split('/')
                        .map(|s| Segment::Literal(s.to_owned()))
                        .collect();
                    index.root.insert(&segments, i);
                }
                _ => index.others.push(i),
            }
        }
        index
    }

    /// The first route (in the order written) whose path can match `path` and for which
    /// `matches` (the route's every condition) holds.
    pub(crate) fn first(
        &self,
        path: &str,
        mut matches: impl FnMut(usize) -> bool,
    ) -> Option<usize> {
        let mut best = None;
        if let Some(rest) = path.strip_prefix('/') {
            self.root.walk(rest, &mut best, &mut matches);
        }
        for &i in &self.others {
            if best.is_some_and(|b| i > b) {
                break;
            }
            if matches(i) {
                best = Some(i);
                break;
            }
        }
        best
    }
}

impl Node {
    fn insert(&mut self, segments: &[Segment], route: usize) {
        let Some((first, rest)) = segments.split_first() else {
            self.routes.push(route);
            return;
        };
        let child = match first {
            Segment::Literal(l) => self.literal.entry(l.as_str().into()).or_default(),
            Segment::Param(_) => self.param.get_or_insert_with(Box::default),
            Segment::Mixed(parts) => {
                match self.mixed.iter().position(|(p, _)| same_shape(p, parts)) {
                    Some(at) => &mut self.mixed[at].1,
                    None => {
                        self.mixed.push((parts.clone(), Node::default()));
                        let last = self.mixed.len() - 1;
                        &mut self.mixed[last].1
                    }
                }
            }
        };
        child.insert(rest, route);
    }

    /// `rest`: the path after the `/` that led here.
    fn walk(&self, rest: &str, best: &mut Option<usize>, matches: &mut impl FnMut(usize) -> bool) {
        let (piece, tail) = match rest.split_once('/') {
            Some((p, t)) => (p, Some(t)),
            None => (rest, None),
        };
        let mut visit = |child: &Node| match tail {
            Some(t) => child.walk(t, best, matches),
            None => child.end(best, matches),
        };
        if let Some(c) = self.literal.get(piece) {
            visit(c);
        }
        if !piece.is_empty()
            && let Some(c) = &self.param
        {
            visit(c);
        }
        for (parts, c) in &self.mixed {
            if crate::mixed_walk(parts, piece, &mut |_, _| {}) {
                visit(c);
            }
        }
    }

    /// The path ends here: the first of this node's routes that matches, if before `best`.
    fn end(&self, best: &mut Option<usize>, matches: &mut impl FnMut(usize) -> bool) {
        for &i in &self.routes {
            if best.is_some_and(|b| i >= b) {
                return;
            }
            if matches(i) {
                *best = Some(i);
                return;
            }
        }
    }
}

/// Two parameter-in-segment shapes that match the same segments (names aside).
fn same_shape(a: &[Part], b: &[Part]) -> bool {
    a.len() == b.len()
        && a.iter().zip(b).all(|(x, y)| match (x, y) {
            (Part::Literal(l), Part::Literal(m)) => l == m,
            (Part::Param(_), Part::Param(_)) => true,
            _ => false,
        })
}

//! Key-range permissions and the matcher deciding whether a request's range is covered.
//!
//! Ranges follow etcd: an empty `range_end` means the single key; `"\0"` means every key
//! from `key` on; anything else is `[key, range_end)` (a prefix is `[p, prefix_end(p))`). A
//! request is allowed when the union of the granted ranges of the needed kind covers the
//! whole requested range, as etcd's range-permission cache merges intervals.

use serde::{Deserialize, Serialize};

/// What a permission allows (etcd's `authpb.Permission.Type` numbering).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum PermKind {
    Read,
    Write,
    ReadWrite,
}

impl PermKind {
    pub fn from_wire(t: i32) -> Option<PermKind> {
        match t {
            0 => Some(PermKind::Read),
            1 => Some(PermKind::Write),
            2 => Some(PermKind::ReadWrite),
            _ => None,
        }
    }

    pub fn to_wire(self) -> i32 {
        match self {
            PermKind::Read => 0,
            PermKind::Write => 1,
            PermKind::ReadWrite => 2,
        }
    }

    /// Whether a grant of `self` allows an access of `need` (Read or Write).
    pub fn allows(self, need: PermKind) -> bool {
        self == PermKind::ReadWrite || self == need
    }
}

/// One granted key range.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Perm {
    pub kind: PermKind,
    pub key: Vec<u8>,
    pub range_end: Vec<u8>,
}

/// A half-open interval of keys; `end` `None` is unbounded.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Interval {
    start: Vec<u8>,
    end: Option<Vec<u8>>,
}

fn interval(key: &[u8], range_end: &[u8]) -> Interval {
    if range_end.is_empty() {
        // The single key `key` is the interval [key, key + "\0").
        let mut end = key.to_vec();
        end.push(0);
        Interval {
            start: key.to_vec(),
            end: Some(end),
        }
    } else if range_end == [0] {
        Interval {
            start: key.to_vec(),
            end: None,
        }
    } else {
        Interval {
            start: key.to_vec(),
            end: Some(range_end.to_vec()),
        }
    }
}

/// Whether the union of `granted` covers the request range `[key, range_end)` (etcd's range
/// conventions). An empty request range (end ≤ key) is covered trivially only if it is
/// well-formed; etcd refuses such reads before checking, so it is treated as covered.
pub fn covered<'a>(
    granted: impl IntoIterator<Item = (&'a [u8], &'a [u8])>,
    key: &[u8],
    range_end: &[u8],
) -> bool {
    let want = interval(key, range_end);
    if let Some(end) = &want.end
        && *end <= want.start
    {
        return true;
    }
    let mut ivs: Vec<Interval> = granted
        .into_iter()
        .map(|(k, e)| interval(k, e))
        .filter(|iv| iv.end.as_ref().is_none_or(|e| *e > iv.start))
        .collect();
    ivs.sort_by(|a, b| a.start.cmp(&b.start));
    // Sweep: `reached` is the end of the covered prefix of the request.
    let mut reached = want.start;
    for iv in ivs {
        if iv.start > reached {
            break; // a gap before this interval
        }
        match iv.end {
            None => return true,
            Some(e) if e > reached => reached = e,
            Some(_) => {}
        }
        if want.end.as_ref().is_some_and(|end| reached >= *end) {
            return true;
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn cov(perms: &[(&str, &str)], key: &str, end: &str) -> bool {
        covered(
            perms.iter().map(|(k, e)| (k.as_bytes(), e.as_bytes())),
            key.as_bytes(),
            end.as_bytes(),
        )
    }

    #[test]
    fn single_keys_prefixes_and_from_key() {
        assert!(cov(&[("a", "")], "a", ""));
        assert!(!cov(&[("a", "")], "ab", ""));
        assert!(
            !cov(&[("a", "")], "a", "b"),
            "a single key does not cover a range"
        );
        assert!(cov(&[("app/", "app0")], "app/x", ""));
        assert!(cov(&[("app/", "app0")], "app/", "app0"));
        assert!(!cov(&[("app/", "app0")], "app/", "\0"));
        assert!(cov(&[("m", "\0")], "z", "\0"));
        assert!(!cov(&[("m", "\0")], "a", "\0"));
        // Adjacent grants merge.
        assert!(cov(&[("a", "c"), ("c", "e")], "b", "d"));
        assert!(!cov(&[("a", "c"), ("d", "e")], "b", "d"));
        assert!(!cov(&[], "a", ""));
    }

    /// The naive model: a range is covered when every key of a sample that lies in it is in
    /// some grant. The sample holds every string of up to 3 bytes over {0, a, b}, which
    /// includes every endpoint the generators produce (and each single key plus "\0"); the
    /// first uncovered key of a gap is always an endpoint, so the model is exact.
    fn naive(perms: &[(Vec<u8>, Vec<u8>)], key: &[u8], end: &[u8]) -> bool {
        let alphabet = [0u8, b'a', b'b'];
        let mut sample: Vec<Vec<u8>> = vec![Vec::new()];
        for len in 1..=3 {
            let mut level = vec![Vec::new()];
            for _ in 0..len {
                level = level
                    .into_iter()
                    .flat_map(|p: Vec<u8>| {
                        alphabet.iter().map(move |c| {
                            let mut q = p.clone();
                            q.push(*c);
                            q
                        })
                    })
                    .collect();
            }
            sample.extend(level);
        }
        let within = |k: &[u8], key: &[u8], end: &[u8]| {
            if end.is_empty() {
                k == key
            } else if end == [0] {
                k >= key
            } else {
                k >= key && k < end
            }
        };
        sample
            .iter()
            .filter(|k| within(k, key, end))
            .all(|k| perms.iter().any(|(pk, pe)| within(k, pk, pe)))
    }

    fn bytes() -> impl Strategy<Value = Vec<u8>> {
        proptest::collection::vec(prop_oneof![Just(0u8), Just(b'a'), Just(b'b')], 0..=2)
    }

    proptest! {
        #[test]
        fn matches_the_naive_model(
            perms in proptest::collection::vec((bytes(), bytes()), 0..5),
            key in bytes(),
            end in bytes(),
        ) {
            let got = covered(perms.iter().map(|(k, e)| (k.as_slice(), e.as_slice())), &key, &end);
            prop_assert_eq!(got, naive(&perms, &key, &end));
        }
    }
}

//! Request paths as attackers write them, for property tests of path normalisation: the
//! router's own tests and the gateway's end-to-end ones draw from the same segments.

use proptest::prelude::*;

/// One segment: dot segments in every escape, empty segments, `;` parameters, encoded
/// slashes and backslashes, NUL, a bad escape, plus ordinary names and escapes. `extra` adds
/// segments only some layers can carry (a raw `\` does not fit in an HTTP request line).
pub fn segment(extra: &'static [&'static str]) -> BoxedStrategy<String> {
    let fixed: Vec<&'static str> = [
        ".", "..", "%2e", "%2E%2e", ".%2e", "", "..;x", ";", "a%2fb", "a%5Cb", "%5C", "%00", "%zz",
        "%", "v1", "%76%31",
    ]
    .into_iter()
    .chain(extra.iter().copied())
    .collect();
    prop_oneof![
        proptest::sample::select(fixed).prop_map(str::to_owned),
        "[a-zA-Z0-9._~;=@:+!$&'()*,-]{1,6}",
        "(%[0-9a-fA-F]{2}){1,3}",
    ]
    .boxed()
}

/// An absolute path of up to `max_segments` such segments.
pub fn path(extra: &'static [&'static str], max_segments: usize) -> BoxedStrategy<String> {
    proptest::collection::vec(segment(extra), 0..max_segments)
        .prop_map(|s| format!("/{}", s.join("/")))
        .boxed()
}

/// Whether a path still has a `.` or `..` segment.
pub fn has_dot_segment(p: &str) -> bool {
    p.split('/').any(|s| s == "." || s == "..")
}

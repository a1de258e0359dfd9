use proptest::prelude::*;
use rampart_config::model::{EscapedSlashes, PathOptions};

use super::*;

fn norm(raw: &str) -> Result<String, PathError> {
    normalize_path(raw, &PathOptions::default()).map(|n| n.path.into_owned())
}

fn with(escaped_slashes: EscapedSlashes) -> PathOptions {
    PathOptions {
        escaped_slashes,
        ..PathOptions::default()
    }
}

#[test]
fn the_advisory_corpus() {
    let corpus = include_str!("../../tests/traversal-corpus.txt");
    let mut checked = 0;
    for line in corpus
        .lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
    {
        let (raw, want) = line.split_once('\t').expect("two tab-separated columns");
        let got = norm(raw);
        match want {
            "reject" => assert!(got.is_err(), "{raw:?} should be refused, got {got:?}"),
            want => assert_eq!(got.as_deref(), Ok(want), "{raw:?}"),
        }
        checked += 1;
    }
    assert!(checked > 40, "the corpus was read ({checked} lines)");
}

#[test]
fn plain_paths_are_borrowed() {
    let o = PathOptions::default();
    for p in ["/", "/a/b", "/api/orders?x", "/a.b/c.d", "/~u/x-y_z"] {
        assert!(matches!(
            normalize_path(p, &o).map(|n| n.path),
            Ok(Cow::Borrowed(_))
        ));
    }
}

#[test]
fn errors_say_why() {
    assert_eq!(norm("/.."), Err(PathError::AboveRoot));
    assert_eq!(norm("/a%2fb"), Err(PathError::EscapedSlash));
    assert_eq!(norm("/a%"), Err(PathError::InvalidEscape));
    assert_eq!(norm("/a%00"), Err(PathError::ControlCharacter));
    assert_eq!(norm("/a\\b"), Err(PathError::Backslash));
    assert_eq!(norm("/..;/a"), Err(PathError::DotSegmentWithParameters));
    assert_eq!(norm("a/b"), Err(PathError::NotOriginForm));
    assert_eq!(norm("*"), Ok("*".to_owned()));
    assert!(PathError::AboveRoot.reason().contains("above the root"));
}

#[test]
fn escaped_slash_actions() {
    let keep = with(EscapedSlashes::Keep);
    let n = normalize_path("/a%2f..%2fb/../c", &keep).unwrap();
    assert_eq!(n.path, "/c");
    let n = normalize_path("/a/..%2fb", &keep).unwrap();
    assert_eq!(n.path, "/a/..%2Fb");
    assert!(!n.unescaped_slashes);
    for action in [
        EscapedSlashes::UnescapeAndRedirect,
        EscapedSlashes::UnescapeAndForward,
    ] {
        let n = normalize_path("/api%2F..%5Cadmin", &with(action)).unwrap();
        assert_eq!(n.path, "/admin");
        assert!(n.unescaped_slashes);
    }
}

#[test]
fn merge_and_normalize_can_be_turned_off() {
    let raw = PathOptions {
        normalize: false,
        merge_slashes: false,
        escaped_slashes: EscapedSlashes::Reject,
    };
    let n = normalize_path("//a/../%62", &raw).unwrap();
    assert_eq!(n.path, "//a/../%62");
    // Still refused whatever the options: bytes that no server reads the same way.
    assert!(normalize_path("/a%00", &raw).is_err());
    assert!(normalize_path("/a%2f", &raw).is_err());
    let merge_only = PathOptions {
        normalize: false,
        ..PathOptions::default()
    };
    assert_eq!(
        normalize_path("//a//../b", &merge_only).unwrap().path,
        "/a/../b"
    );
}

#[test]
fn rewrites_cannot_leave_their_prefix() {
    let o = PathOptions::default();
    assert_eq!(
        normalize_rewritten("/echo/v2/x", "/echo/v2/", &o),
        Ok("/echo/v2/x".into())
    );
    assert_eq!(
        normalize_rewritten("/echo/v2/", "/echo/v2/", &o),
        Ok("/echo/v2/".into())
    );
    // A prefix route `/v1` (no slash) matched `/v1..`: the rest `..` must not climb.
    assert_eq!(
        normalize_rewritten("/echo/v2/..", "/echo/v2/", &o),
        Err(PathError::AboveRoot)
    );
    assert_eq!(
        normalize_rewritten("/echo/v2/../../admin", "/echo/v2/", &o),
        Err(PathError::AboveRoot)
    );
    assert_eq!(normalize_rewritten("/x/../y", "/", &o), Ok("/y".into()));
}

#[test]
fn authorities() {
    let a = |s: &str, port: u16| normalize_authority(s, port).map(Cow::into_owned);
    assert_eq!(a("Acme.LocalHost.", 80), Ok("acme.localhost".into()));
    assert_eq!(a("acme.localhost:80", 80), Ok("acme.localhost".into()));
    assert_eq!(a("acme.localhost:443", 443), Ok("acme.localhost".into()));
    assert_eq!(
        a("acme.localhost:8080", 80),
        Ok("acme.localhost:8080".into())
    );
    assert_eq!(
        a("acme.localhost:08080", 80),
        Ok("acme.localhost:8080".into())
    );
    assert_eq!(a("acme.localhost:", 80), Ok("acme.localhost".into()));
    assert_eq!(a("[::1]:8080", 80), Ok("[::1]:8080".into()));
    assert_eq!(a("[::1]", 80), Ok("[::1]".into()));
    assert_eq!(a("127.0.0.1:8080", 80), Ok("127.0.0.1:8080".into()));
    assert_eq!(a("", 80), Err(AuthorityError::Empty));
    assert_eq!(a("user@acme.localhost", 80), Err(AuthorityError::UserInfo));
    assert_eq!(a("acme.localhost:99999", 80), Err(AuthorityError::BadPort));
    assert_eq!(a("acme.localhost:0", 80), Err(AuthorityError::BadPort));
    assert_eq!(a("acme.localhost:8x", 80), Err(AuthorityError::BadPort));
    assert_eq!(a("acme.localhost..", 80), Err(AuthorityError::BadHost));
    assert_eq!(a(".acme", 80), Err(AuthorityError::BadHost));
    assert_eq!(a("acme localhost", 80), Err(AuthorityError::BadHost));
    assert_eq!(a("acme/x", 80), Err(AuthorityError::BadHost));
    assert_eq!(a("[::1", 80), Err(AuthorityError::BadHost));
    assert_eq!(a("[zz]", 80), Err(AuthorityError::BadHost));
    assert_eq!(a("a:b:c", 80), Err(AuthorityError::BadPort));
    assert_eq!(authority_host("a.b:80"), "a.b");
    assert_eq!(authority_host("[::1]:80"), "[::1]");
}

/// Attackers' paths; the router also takes a raw backslash, which no HTTP request carries.
fn path() -> impl Strategy<Value = String> {
    rampart_test_support::paths::path(&["\\"], 8)
}

use rampart_test_support::paths::has_dot_segment;

proptest! {
    #[test]
    fn accepted_paths_are_canonical(raw in path(), action in prop_oneof![
        Just(EscapedSlashes::Reject),
        Just(EscapedSlashes::Keep),
        Just(EscapedSlashes::UnescapeAndForward),
    ]) {
        let o = with(action);
        if let Ok(n) = normalize_path(&raw, &o) {
            let p = n.path.as_ref();
            prop_assert!(p.starts_with('/'));
            prop_assert!(!has_dot_segment(p), "{raw:?} -> {p:?}");
            prop_assert!(!p.contains("//"), "{raw:?} -> {p:?}");
            prop_assert!(!p.bytes().any(|b| b < 0x20 || b == 0x7f || b == b'\\'));
            let lower = p.to_ascii_lowercase();
            if action != EscapedSlashes::Keep {
                prop_assert!(!lower.contains("%2f") && !lower.contains("%5c"), "{raw:?} -> {p:?}");
            }
            // Idempotent: normalising again changes nothing, so every later stage that
            // normalises (a rewrite) agrees with ingress.
            let again = normalize_path(p, &o).map(|n| n.path.into_owned());
            prop_assert_eq!(again.as_deref(), Ok(p));
            // Percent-decoding the result never reveals a dot segment: no unreserved byte is
            // left encoded.
            let decoded = crate::percent_decode(p);
            prop_assert!(!has_dot_segment(&decoded) || action == EscapedSlashes::Keep, "{raw:?} -> {p:?}");
        }
    }

    #[test]
    fn normalising_never_panics(raw in "\\PC{0,40}", normalize in any::<bool>(), merge in any::<bool>()) {
        let o = PathOptions { normalize, merge_slashes: merge, escaped_slashes: EscapedSlashes::Keep };
        let _ = normalize_path(&raw, &o);
        let _ = normalize_authority(&raw, 80);
    }

    #[test]
    fn authorities_are_idempotent(host in "[a-zA-Z0-9-]{1,8}(\\.[a-zA-Z0-9-]{1,8}){0,3}\\.?", port in proptest::option::of(1u16..)) {
        let raw = match port { Some(p) => format!("{host}:{p}"), None => host.clone() };
        let n = normalize_authority(&raw, 80).unwrap().into_owned();
        prop_assert_eq!(n.clone(), n.to_ascii_lowercase());
        prop_assert!(!authority_host(&n).ends_with('.'));
        let again = normalize_authority(&n, 80).unwrap().into_owned();
        prop_assert_eq!(again, n);
    }
}

//! Fuzz targets for what parses client input before anything else sees it: the path
//! normaliser and the authority parser. Under `cargo test` each runs a bounded number of
//! random inputs; under `cargo bolero test -p rampart-router --test fuzz <name>` (nightly,
//! cargo-bolero) the same target runs under libFuzzer for as long as asked.

use rampart_config::model::{EscapedSlashes, PathOptions};
use rampart_router::normalize::{authority_host, normalize_authority, normalize_path};

fn options(bits: u8) -> PathOptions {
    PathOptions {
        normalize: bits & 1 != 0,
        merge_slashes: bits & 2 != 0,
        escaped_slashes: match (bits >> 2) & 3 {
            0 => EscapedSlashes::Reject,
            1 => EscapedSlashes::Keep,
            2 => EscapedSlashes::UnescapeAndRedirect,
            _ => EscapedSlashes::UnescapeAndForward,
        },
    }
}

#[test]
fn path_normaliser() {
    bolero::check!()
        .with_type::<(u8, String)>()
        .for_each(|(bits, raw)| {
            let o = options(*bits);
            let Ok(n) = normalize_path(raw, &o) else {
                return;
            };
            let p = n.path.as_ref();
            assert!(p == "*" || p.starts_with('/'), "{raw:?} -> {p:?}");
            assert!(!p.bytes().any(|b| b < 0x20 || b == 0x7f || b == b'\\'));
            if o.normalize {
                assert!(
                    !p.split('/').any(|s| s == "." || s == ".."),
                    "{raw:?} -> {p:?}"
                );
            }
            if o.merge_slashes {
                assert!(!p.contains("//"), "{raw:?} -> {p:?}");
            }
            if o.escaped_slashes != EscapedSlashes::Keep {
                let lower = p.to_ascii_lowercase();
                assert!(!lower.contains("%2f") && !lower.contains("%5c"));
            }
            // What ingress produced passes ingress again unchanged.
            let again = normalize_path(p, &o).expect("a normalised path is accepted");
            assert_eq!(again.path, p);
        });
}

#[test]
fn authority_parser() {
    bolero::check!()
        .with_type::<(u16, String)>()
        .for_each(|(port, raw)| {
            let Ok(a) = normalize_authority(raw, *port) else {
                return;
            };
            assert_eq!(a.as_ref(), a.to_ascii_lowercase(), "{raw:?}");
            assert!(!a.contains('@') && !a.contains('/') && !a.contains(' '));
            let host = authority_host(&a);
            assert!(!host.is_empty() && !host.ends_with('.'), "{raw:?} -> {a:?}");
            let again = normalize_authority(&a, *port).expect("a normal authority is accepted");
            assert_eq!(again, a);
        });
}

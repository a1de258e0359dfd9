//! The page's files, embedded in the binary. Each asset is served under a name holding its
//! content hash (`app.3f2a….js`), cached for a year (a new build has new names); the page
//! itself is never cached. Every answer carries a strict Content-Security-Policy: scripts,
//! styles, images and connections from this origin only, no inline code, no framing.

use std::sync::LazyLock;

use http::HeaderValue;

/// The policy every dashboard response carries.
pub(crate) const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
                       connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

/// One embedded file.
pub(crate) struct Asset {
    /// The name it is served under: `<stem>.<hash>.<ext>`.
    pub(crate) name: String,
    pub(crate) body: &'static [u8],
    pub(crate) content_type: &'static str,
    /// `"<hash>"`, for `ETag`.
    pub(crate) etag: HeaderValue,
}

/// (source name, bytes, content type)
const FILES: [(&str, &[u8], &str); 3] = [
    (
        "app.js",
        include_bytes!("../assets/app.js"),
        "text/javascript; charset=utf-8",
    ),
    (
        "app.css",
        include_bytes!("../assets/app.css"),
        "text/css; charset=utf-8",
    ),
    (
        "icon.svg",
        include_bytes!("../assets/icon.svg"),
        "image/svg+xml",
    ),
];

const INDEX: &str = include_str!("../assets/index.html");

/// The assets, hashed once.
pub(crate) static ASSETS: LazyLock<Vec<Asset>> = LazyLock::new(|| {
    FILES
        .iter()
        .map(|&(source, body, content_type)| {
            let digest = ring::digest::digest(&ring::digest::SHA256, body);
            let hash: String = digest.as_ref()[..8]
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect();
            let (stem, ext) = source.rsplit_once('.').unwrap_or((source, ""));
            Asset {
                name: format!("{stem}.{hash}.{ext}"),
                body,
                content_type,
                etag: HeaderValue::try_from(format!("\"{hash}\"")).expect("hex is a valid header"),
            }
        })
        .collect()
});

/// The page, its `{{name}}` placeholders replaced by the hashed asset paths.
pub(crate) static PAGE: LazyLock<String> = LazyLock::new(|| {
    let mut page = INDEX.to_owned();
    for (&(source, _, _), asset) in FILES.iter().zip(ASSETS.iter()) {
        page = page.replace(
            &format!("{{{{{source}}}}}"),
            &format!("/ui/assets/{}", asset.name),
        );
    }
    page
});

/// The asset served as `name`.
pub(crate) fn find(name: &str) -> Option<&'static Asset> {
    ASSETS.iter().find(|a| a.name == name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_names_every_asset_by_its_hash() {
        for a in ASSETS.iter() {
            assert!(
                PAGE.contains(&format!("/ui/assets/{}", a.name)),
                "{}",
                a.name
            );
            assert_eq!(find(&a.name).map(|f| f.body.len()), Some(a.body.len()));
        }
        assert!(!PAGE.contains("{{"), "every placeholder replaced");
        assert!(find("app.js").is_none(), "only hashed names are served");
    }

    #[test]
    fn no_inline_script_or_style_the_policy_would_block() {
        assert!(!PAGE.contains("<script>"), "scripts come from files");
        assert!(!PAGE.contains("style="), "no inline styles");
        assert!(!PAGE.contains("<style"), "no style blocks");
        for handler in [
            " onclick=",
            " onload=",
            " onsubmit=",
            " oninput=",
            " onchange=",
        ] {
            assert!(
                !PAGE.contains(handler),
                "no inline event handlers ({handler})"
            );
        }
    }
}

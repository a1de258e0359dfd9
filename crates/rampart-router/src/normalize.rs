//! One canonical form of a request's path and authority, computed once at ingress so that
//! routing, rewriting, policy input and the upstream request all see the same string.
//!
//! Paths follow RFC 3986 §6.2.2: percent-encoded unreserved characters are decoded, other
//! escapes get upper-case hex, dot segments are removed (§5.2.4), and optionally runs of
//! slashes are merged. What a proxy cannot decide safely is refused instead of guessed:
//! invalid escapes, control characters (raw or encoded, NUL included), a raw backslash, a dot
//! segment carrying parameters (`..;x`, which servlet containers read as `..`), a path that
//! climbs above the root, and by default an encoded `/` or `\` (Envoy's
//! `path_with_escaped_slashes_action`).
//!
//! Authorities are lower-cased, lose one trailing dot and the scheme's default port, and must
//! be a registered name, an IPv4 address or a bracketed IPv6 literal with an optional port.

use std::borrow::Cow;

use rampart_config::model::{EscapedSlashes, PathOptions};

use crate::hex;

/// Why a path was refused (all answered with 400).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathError {
    NotOriginForm,
    InvalidEscape,
    ControlCharacter,
    Backslash,
    EscapedSlash,
    DotSegmentWithParameters,
    AboveRoot,
}

impl PathError {
    pub fn reason(self) -> &'static str {
        match self {
            Self::NotOriginForm => "the request path must start with '/'",
            Self::InvalidEscape => "the request path has an invalid percent-encoding",
            Self::ControlCharacter => "the request path contains a control character",
            Self::Backslash => "the request path contains a backslash",
            Self::EscapedSlash => "the request path contains an encoded '/' or '\\'",
            Self::DotSegmentWithParameters => {
                "the request path has a segment with parameters but no name ('..;', ';')"
            }
            Self::AboveRoot => "the request path climbs above the root",
        }
    }
}

/// A normalised path, and whether encoded slashes were turned into real ones (the caller
/// redirects for [`EscapedSlashes::UnescapeAndRedirect`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NormalPath<'a> {
    pub path: Cow<'a, str>,
    pub unescaped_slashes: bool,
}

/// Normalises an origin-form path (without its query). `*` (for `OPTIONS *`) is kept.
pub fn normalize_path<'a>(raw: &'a str, opts: &PathOptions) -> Result<NormalPath<'a>, PathError> {
    if raw == "*" {
        return Ok(NormalPath {
            path: Cow::Borrowed(raw),
            unescaped_slashes: false,
        });
    }
    if !raw.starts_with('/') {
        return Err(PathError::NotOriginForm);
    }
    if is_plain(raw, opts) {
        return Ok(NormalPath {
            path: Cow::Borrowed(raw),
            unescaped_slashes: false,
        });
    }
    let (decoded, unescaped_slashes) = decode(raw, opts)?;
    let path = remove_dot_segments(&decoded, opts)?;
    Ok(NormalPath {
        path: Cow::Owned(path),
        unescaped_slashes,
    })
}

/// The common case needs no work: no escapes, no backslash or control bytes, no empty or dot
/// segments.
fn is_plain(raw: &str, opts: &PathOptions) -> bool {
    let b = raw.as_bytes();
    let clean_bytes = !b
        .iter()
        .any(|&c| c == b'%' || c == b'\\' || c < 0x20 || c == 0x7f);
    let no_empty = !opts.merge_slashes || !raw.contains("//");
    let no_dots = !opts.normalize || !raw.contains("/.");
    let no_bare_params = !raw.contains("/;") && !raw.contains(".;");
    clean_bytes && no_empty && no_dots && no_bare_params
}

fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

/// Checks every byte and escape; decodes unreserved characters (when normalising) and
/// encoded slashes (when configured to).
fn decode(raw: &str, opts: &PathOptions) -> Result<(String, bool), PathError> {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    let b = raw.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut unescaped = false;
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        if c == b'%' {
            let v = b
                .get(i + 1..i + 3)
                .and_then(|p| Some(hex(p[0])? << 4 | hex(p[1])?))
                .ok_or(PathError::InvalidEscape)?;
            i += 3;
            if v < 0x20 || v == 0x7f {
                return Err(PathError::ControlCharacter);
            }
            if v == b'/' || v == b'\\' {
                match opts.escaped_slashes {
                    EscapedSlashes::Reject => return Err(PathError::EscapedSlash),
                    EscapedSlashes::Keep => {}
                    EscapedSlashes::UnescapeAndRedirect | EscapedSlashes::UnescapeAndForward => {
                        // Both become a path separator: some servers treat `\` as one.
                        out.push(b'/');
                        unescaped = true;
                        continue;
                    }
                }
            } else if opts.normalize && is_unreserved(v) {
                out.push(v);
                continue;
            }
            out.extend_from_slice(&[b'%', HEX[usize::from(v >> 4)], HEX[usize::from(v & 15)]]);
            continue;
        }
        if c < 0x20 || c == 0x7f {
            return Err(PathError::ControlCharacter);
        }
        if c == b'\\' {
            return Err(PathError::Backslash);
        }
        out.push(c);
        i += 1;
    }
    // Only ASCII bytes were replaced, so a valid UTF-8 input stays valid; a non-UTF-8 path
    // (bytes above 0x7f that hyper let through) cannot be a &str in the first place.
    String::from_utf8(out)
        .map(|s| (s, unescaped))
        .map_err(|_| PathError::InvalidEscape)
}

/// RFC 3986 §5.2.4 on a path starting with `/`, refusing to climb above the root; with
/// `merge_slashes`, empty segments are dropped (a trailing slash is kept).
fn remove_dot_segments(path: &str, opts: &PathOptions) -> Result<String, PathError> {
    let segments: Vec<&str> = path[1..].split('/').collect();
    let last = segments.len() - 1;
    let mut out: Vec<&str> = Vec::with_capacity(segments.len());
    let mut trailing = false;
    for (i, s) in segments.iter().copied().enumerate() {
        let is_last = i == last;
        match s {
            "." if opts.normalize => trailing |= is_last,
            ".." if opts.normalize => {
                out.pop().ok_or(PathError::AboveRoot)?;
                trailing |= is_last;
            }
            "" if is_last => trailing = true,
            "" if opts.merge_slashes => {}
            s => {
                // `/..;/`, `/.;/` and `/;/` name no segment here but are `..`, `.` and an
                // empty segment to servlet containers: ambiguous, so refused.
                if let Some((head, _)) = s.split_once(';')
                    && matches!(head, "" | "." | "..")
                {
                    return Err(PathError::DotSegmentWithParameters);
                }
                out.push(s);
            }
        }
    }
    let mut result = String::with_capacity(path.len());
    for s in &out {
        result.push('/');
        result.push_str(s);
    }
    if trailing || out.is_empty() {
        result.push('/');
    }
    Ok(result)
}

/// Normalises a rewritten path and checks it stays under the rewrite's prefix: the rewrite
/// `/echo/v2/` can produce `/echo/v2/x` but never `/admin`.
pub fn normalize_rewritten(
    rewritten: &str,
    rewrite_prefix: &str,
    opts: &PathOptions,
) -> Result<String, PathError> {
    let strict = PathOptions {
        normalize: true,
        ..*opts
    };
    let p = normalize_path(rewritten, &strict)?.path.into_owned();
    let base = normalize_path(rewrite_prefix, &strict)
        .map(|n| n.path.into_owned())
        .unwrap_or_else(|_| rewrite_prefix.to_owned());
    // A prefix match on the string, as the rewrite itself is one; `/echo/v2` for the base
    // `/echo/v2/` is inside too (the rewrite of the bare prefix).
    let inside = p.starts_with(base.as_str()) || p == base.trim_end_matches('/');
    if inside {
        Ok(p)
    } else {
        Err(PathError::AboveRoot)
    }
}

/// Why an authority was refused (400).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthorityError {
    Empty,
    UserInfo,
    BadPort,
    BadHost,
}

impl AuthorityError {
    pub fn reason(self) -> &'static str {
        match self {
            Self::Empty => "the request has no Host header or :authority",
            Self::UserInfo => "the request authority must not contain user information",
            Self::BadPort => "the request authority has an invalid port",
            Self::BadHost => "the request authority is not a valid host name or address",
        }
    }
}

/// Lower-cases, drops one trailing dot and the scheme's default port.
pub fn normalize_authority(raw: &str, default_port: u16) -> Result<Cow<'_, str>, AuthorityError> {
    if raw.is_empty() {
        return Err(AuthorityError::Empty);
    }
    if raw.contains('@') {
        return Err(AuthorityError::UserInfo);
    }
    let (host, port) = if let Some(rest) = raw.strip_prefix('[') {
        let (inner, after) = rest.split_once(']').ok_or(AuthorityError::BadHost)?;
        if inner.parse::<std::net::Ipv6Addr>().is_err() {
            return Err(AuthorityError::BadHost);
        }
        let port = match after {
            "" => None,
            p => Some(p.strip_prefix(':').ok_or(AuthorityError::BadHost)?),
        };
        (&raw[..inner.len() + 2], port)
    } else {
        match raw.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (raw, None),
        }
    };
    let port = match port {
        None | Some("") => None,
        Some(p) => {
            if p.len() > 5 || !p.bytes().all(|b| b.is_ascii_digit()) {
                return Err(AuthorityError::BadPort);
            }
            let n: u32 = p.parse().map_err(|_| AuthorityError::BadPort)?;
            if n == 0 || n > 65535 {
                return Err(AuthorityError::BadPort);
            }
            (n != u32::from(default_port)).then_some(n)
        }
    };
    let host = if host.starts_with('[') {
        host
    } else {
        let h = host.strip_suffix('.').unwrap_or(host);
        let valid = !h.is_empty()
            && h.split('.').all(|label| {
                !label.is_empty()
                    && label.len() <= 63
                    && label
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            })
            && h.len() <= 253;
        if !valid {
            return Err(AuthorityError::BadHost);
        }
        h
    };
    let lower = host.bytes().any(|b| b.is_ascii_uppercase());
    let unchanged = !lower && port.is_none() && host.len() == raw.len();
    if unchanged {
        return Ok(Cow::Borrowed(raw));
    }
    let mut out = host.to_ascii_lowercase();
    if let Some(p) = port {
        out.push(':');
        out.push_str(&p.to_string());
    }
    Ok(Cow::Owned(out))
}

/// The host part of a normalised authority (`[v6]` kept whole).
pub fn authority_host(authority: &str) -> &str {
    if authority.starts_with('[') {
        return authority
            .find(']')
            .map_or(authority, |end| &authority[..=end]);
    }
    authority.split_once(':').map_or(authority, |(h, _)| h)
}

#[cfg(test)]
mod tests;

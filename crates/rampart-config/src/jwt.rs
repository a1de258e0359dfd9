//! The `jwt` filter's settings: verify a bearer token's signature and claims before a request
//! goes on.
//!
//! ```yaml
//! filters:
//!   - jwt:
//!       issuer: https://auth.example.com/          # optional; recommended
//!       audiences: [api.example.com]               # optional; the token's aud must name one
//!       jwks_url: http://127.0.0.1:8081/jwks.json  # or jwks_file: /etc/rampart/jwks.json
//!       algorithms: [RS256, ES256, EdDSA]          # default; HS256 also needs hs256_secret_file
//!       clock_skew: 60s                            # default; at most 1h
//!       refresh_interval: 5m                       # default; how often the JWKS is re-read
//!       from_header: authorization                 # default; "Bearer <token>"
//!       forward_claims_header: x-jwt-claims        # optional; the verified claims, base64url
//!       optional: false                            # default; true lets token-less requests by
//! ```
//!
//! Files are checked for readability here; their contents (JSON Web Key Sets, the HS256
//! secret) are parsed by the proxy when it builds the filter, so a bad file rejects the config
//! with the field's path. This crate does no crypto.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::duration::parse_duration;
use crate::error::FieldError;

/// Longest `clock_skew` accepted: more would make `exp` close to meaningless.
const MAX_CLOCK_SKEW: Duration = Duration::from_secs(3600);

/// A `jwt:` filter as written.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RawJwt {
    /// The `iss` a token must carry; unset: any issuer.
    #[serde(default)]
    pub issuer: Option<String>,
    /// A token's `aud` must contain one of these; unset: `aud` is not checked.
    #[serde(default)]
    pub audiences: Option<Vec<String>>,
    /// A JSON Web Key Set (RFC 7517) file.
    #[serde(default)]
    pub jwks_file: Option<String>,
    /// Where to fetch the JSON Web Key Set (`https://`, or `http://` for a local source).
    #[serde(default)]
    pub jwks_url: Option<String>,
    /// PEM CA certificates trusted for an `https` `jwks_url` (default: the system's roots).
    #[serde(default)]
    pub jwks_ca_file: Option<String>,
    /// Allowed `alg` values: `HS256`, `RS256`, `ES256`, `EdDSA`. Default: RS256, ES256, EdDSA.
    #[serde(default)]
    pub algorithms: Option<Vec<String>>,
    /// A file holding the HS256 shared secret (at least 32 bytes; trailing newlines are
    /// ignored). Required for, and only used with, HS256.
    #[serde(default)]
    pub hs256_secret_file: Option<String>,
    /// Tolerance for `exp` and `nbf` ("60s").
    #[serde(default)]
    pub clock_skew: Option<String>,
    /// How often the key set is re-read ("5m").
    #[serde(default)]
    pub refresh_interval: Option<String>,
    /// The header carrying the token. `authorization` (default) expects `Bearer <token>`;
    /// any other header holds the bare token.
    #[serde(default)]
    pub from_header: Option<String>,
    /// When set, the upstream request gets this header with the verified claims (the token's
    /// base64url payload). A value sent by the client is always removed.
    #[serde(default)]
    pub forward_claims_header: Option<String>,
    /// Let requests without a token through (without claims). A token that is present must
    /// still be valid.
    #[serde(default)]
    pub optional: bool,
}

/// Validated `jwt` filter settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Jwt {
    pub issuer: Option<String>,
    /// Empty: `aud` is not checked.
    pub audiences: Vec<String>,
    /// `None` only when the sole algorithm is HS256.
    pub jwks: Option<JwksSource>,
    /// Never empty, no duplicates.
    pub algorithms: Vec<JwtAlgorithm>,
    /// Set exactly when `algorithms` contains HS256.
    pub hs256_secret_file: Option<PathBuf>,
    pub clock_skew: Duration,
    pub refresh_interval: Duration,
    /// Lower-case.
    pub from_header: http::HeaderName,
    pub forward_claims_header: Option<http::HeaderName>,
    pub optional: bool,
}

impl Jwt {
    /// Whether the token is read as `Bearer <token>` (the `authorization` header) rather than
    /// as the whole header value.
    pub fn bearer_scheme(&self) -> bool {
        self.from_header == http::header::AUTHORIZATION
    }
}

/// Where the verification keys come from.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum JwksSource {
    File(PathBuf),
    /// An `http://` or `https://` URL with a host; for https, the CA file to trust instead of
    /// the system's roots.
    Url {
        uri: http::Uri,
        ca_file: Option<PathBuf>,
    },
}

impl std::fmt::Display for JwksSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::File(p) => write!(f, "{}", p.display()),
            Self::Url { uri, .. } => write!(f, "{uri}"),
        }
    }
}

/// The signature algorithms the filter accepts (RFC 7518 names).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum JwtAlgorithm {
    /// HMAC SHA-256 with a shared secret.
    HS256,
    /// RSASSA-PKCS1-v1_5 SHA-256.
    RS256,
    /// ECDSA P-256 SHA-256.
    ES256,
    /// Ed25519.
    EdDSA,
}

impl JwtAlgorithm {
    pub const ALL: [Self; 4] = [Self::HS256, Self::RS256, Self::ES256, Self::EdDSA];

    /// The `alg` header value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::HS256 => "HS256",
            Self::RS256 => "RS256",
            Self::ES256 => "ES256",
            Self::EdDSA => "EdDSA",
        }
    }

    /// Exact, case-sensitive, as in the `alg` header.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|a| a.as_str() == s)
    }
}

fn err(errors: &mut Vec<FieldError>, path: impl Into<String>, rule: impl Into<String>) {
    errors.push(FieldError {
        path: path.into(),
        rule: rule.into(),
    });
}

fn duration(
    errors: &mut Vec<FieldError>,
    path: String,
    v: Option<&str>,
    default: Duration,
) -> Duration {
    match v.map(parse_duration) {
        None => default,
        Some(Ok(d)) => d,
        Some(Err(e)) => {
            err(errors, path, e.to_string());
            default
        }
    }
}

fn header(errors: &mut Vec<FieldError>, path: String, v: &str) -> Option<http::HeaderName> {
    http::HeaderName::from_bytes(v.as_bytes())
        .map_err(|_| err(errors, path, format!("invalid header name {v:?}")))
        .ok()
}

fn jwks_url(s: &str) -> Result<http::Uri, String> {
    let uri: http::Uri = s
        .parse()
        .map_err(|_| format!("{s:?} is not a URL (e.g. http://127.0.0.1:8081/jwks.json)"))?;
    match uri.scheme_str() {
        Some("http" | "https") => {}
        _ => {
            return Err(format!(
                "{s:?} must be an https:// or http:// URL (e.g. https://auth.example.com/jwks.json)"
            ));
        }
    }
    if uri.host().is_none_or(str::is_empty) {
        return Err(format!("{s:?} has no host"));
    }
    Ok(uri)
}

/// Checks a `jwt` entry's config; `path` ends in `.jwt`.
pub fn parse(path: &str, config: &serde_json::Value) -> Result<Jwt, Vec<FieldError>> {
    crate::check::parse_with(path, config, validate_jwt)
}

/// Validates a `jwt:` filter. `path` is where it sits, e.g. `listeners[0].filters[1].jwt`.
/// Returns the validated value only when there is no error; every error found is returned.
pub fn validate_jwt(path: &str, raw: &RawJwt) -> (Option<Jwt>, Vec<FieldError>) {
    let mut e = Vec::new();

    if let Some(iss) = &raw.issuer
        && iss.is_empty()
    {
        err(
            &mut e,
            format!("{path}.issuer"),
            "must not be empty; omit it to accept any issuer",
        );
    }
    let audiences = audiences(&mut e, path, raw.audiences.as_deref());
    let algorithms = algorithms(&mut e, path, raw.algorithms.as_deref());
    let hs256_secret_file = hs256_secret_file(&mut e, path, raw, &algorithms);
    let asymmetric = algorithms.iter().any(|a| *a != JwtAlgorithm::HS256);
    let jwks = jwks(&mut e, path, raw, asymmetric);
    let clock_skew = clock_skew(&mut e, path, raw.clock_skew.as_deref());
    let refresh_interval = refresh_interval(&mut e, path, raw.refresh_interval.as_deref());
    let from_header = match raw.from_header.as_deref() {
        None => Some(http::header::AUTHORIZATION),
        Some(h) => header(&mut e, format!("{path}.from_header"), h),
    };
    let forward_claims_header = forward_claims_header(&mut e, path, raw, from_header.as_ref());

    let Some(from_header) = from_header else {
        return (None, e);
    };
    if !e.is_empty() {
        return (None, e);
    }
    let jwt = Jwt {
        issuer: raw.issuer.clone(),
        audiences,
        jwks,
        algorithms,
        hs256_secret_file,
        clock_skew,
        refresh_interval,
        from_header,
        forward_claims_header,
        optional: raw.optional,
    };
    (Some(jwt), e)
}

/// Unset: empty, and `aud` is not checked.
fn audiences(e: &mut Vec<FieldError>, path: &str, list: Option<&[String]>) -> Vec<String> {
    let Some(list) = list else {
        return Vec::new();
    };
    if list.is_empty() {
        err(
            e,
            format!("{path}.audiences"),
            "must list at least one audience; omit it to accept any",
        );
    }
    for (i, a) in list.iter().enumerate() {
        if a.is_empty() {
            err(e, format!("{path}.audiences[{i}]"), "must not be empty");
        }
    }
    list.to_vec()
}

/// Unset: RS256, ES256, EdDSA. An unknown or repeated name is an error and left out.
fn algorithms(e: &mut Vec<FieldError>, path: &str, list: Option<&[String]>) -> Vec<JwtAlgorithm> {
    let Some(list) = list else {
        return vec![
            JwtAlgorithm::RS256,
            JwtAlgorithm::ES256,
            JwtAlgorithm::EdDSA,
        ];
    };
    if list.is_empty() {
        err(
            e,
            format!("{path}.algorithms"),
            "must list at least one algorithm; omit it for RS256, ES256, EdDSA",
        );
    }
    let mut out = Vec::with_capacity(list.len());
    for (i, s) in list.iter().enumerate() {
        match JwtAlgorithm::parse(s) {
            Some(a) if out.contains(&a) => {
                err(
                    e,
                    format!("{path}.algorithms[{i}]"),
                    format!("duplicate algorithm {s:?}"),
                );
            }
            Some(a) => out.push(a),
            None => err(
                e,
                format!("{path}.algorithms[{i}]"),
                format!("unsupported algorithm {s:?}; expected HS256, RS256, ES256 or EdDSA"),
            ),
        }
    }
    out
}

/// The shared secret's file: required with HS256 and an error without it.
fn hs256_secret_file(
    e: &mut Vec<FieldError>,
    path: &str,
    raw: &RawJwt,
    algorithms: &[JwtAlgorithm],
) -> Option<PathBuf> {
    let hs256 = algorithms.contains(&JwtAlgorithm::HS256);
    match (&raw.hs256_secret_file, hs256) {
        (Some(f), true) => crate::tls::readable_file(f)
            .map_err(|rule| err(e, format!("{path}.hs256_secret_file"), rule))
            .ok(),
        (Some(_), false) => {
            err(
                e,
                format!("{path}.hs256_secret_file"),
                "is only used with HS256; add HS256 to algorithms or remove it",
            );
            None
        }
        (None, true) => {
            let i = algorithms
                .iter()
                .position(|a| *a == JwtAlgorithm::HS256)
                .unwrap_or_default();
            err(
                e,
                format!("{path}.algorithms[{i}]"),
                "HS256 needs hs256_secret_file (the shared secret)",
            );
            None
        }
        (None, false) => None,
    }
}

/// The key set's `jwks_file` or `jwks_url`, required when an `asymmetric` algorithm is
/// allowed.
fn jwks(e: &mut Vec<FieldError>, path: &str, raw: &RawJwt, asymmetric: bool) -> Option<JwksSource> {
    match (&raw.jwks_file, &raw.jwks_url) {
        (Some(f), None) => crate::tls::readable_file(f)
            .map_err(|rule| err(e, format!("{path}.jwks_file"), rule))
            .ok()
            .map(JwksSource::File),
        (None, Some(u)) => {
            let ca_file = raw.jwks_ca_file.as_ref().and_then(|f| {
                crate::tls::readable_file(f)
                    .map_err(|rule| err(e, format!("{path}.jwks_ca_file"), rule))
                    .ok()
            });
            jwks_url(u)
                .map_err(|rule| err(e, format!("{path}.jwks_url"), rule))
                .ok()
                .map(|uri| {
                    if ca_file.is_some() && uri.scheme_str() != Some("https") {
                        err(
                            e,
                            format!("{path}.jwks_ca_file"),
                            "only used with an https:// jwks_url",
                        );
                    }
                    JwksSource::Url { uri, ca_file }
                })
        }
        (Some(_), Some(_)) => {
            err(e, path, "set only one of jwks_file, jwks_url");
            None
        }
        (None, None) => {
            if asymmetric {
                err(
                    e,
                    path,
                    "set one of jwks_file, jwks_url (the keys for RS256, ES256, EdDSA)",
                );
            }
            None
        }
    }
}

fn clock_skew(e: &mut Vec<FieldError>, path: &str, v: Option<&str>) -> Duration {
    let clock_skew = duration(e, format!("{path}.clock_skew"), v, Duration::from_secs(60));
    if clock_skew > MAX_CLOCK_SKEW {
        err(e, format!("{path}.clock_skew"), "must be at most 1h");
    }
    clock_skew
}

fn refresh_interval(e: &mut Vec<FieldError>, path: &str, v: Option<&str>) -> Duration {
    let interval = duration(
        e,
        format!("{path}.refresh_interval"),
        v,
        Duration::from_secs(300),
    );
    if interval < Duration::from_secs(1) {
        err(e, format!("{path}.refresh_interval"), "must be at least 1s");
    }
    interval
}

/// The header the verified claims go out in; it must not be the one the token comes in.
fn forward_claims_header(
    e: &mut Vec<FieldError>,
    path: &str,
    raw: &RawJwt,
    from_header: Option<&http::HeaderName>,
) -> Option<http::HeaderName> {
    let claims = raw
        .forward_claims_header
        .as_deref()
        .and_then(|h| header(e, format!("{path}.forward_claims_header"), h));
    if let (Some(f), Some(c)) = (from_header, &claims)
        && f == c
    {
        err(
            e,
            format!("{path}.forward_claims_header"),
            "must differ from from_header",
        );
    }
    claims
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(yaml: &str) -> RawJwt {
        serde_saphyr::from_str(yaml).unwrap()
    }

    fn messages(yaml: &str) -> Vec<String> {
        let (jwt, errors) = validate_jwt("listeners[0].filters[1].jwt", &raw(yaml));
        assert_eq!(jwt.is_some(), errors.is_empty());
        errors.iter().map(ToString::to_string).collect()
    }

    fn file() -> (tempfile::TempDir, String) {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("jwks.json");
        std::fs::write(&p, "{}").unwrap();
        let s = p.to_str().unwrap().to_owned();
        (dir, s)
    }

    #[test]
    fn minimal_gets_defaults() {
        let (jwt, errors) = validate_jwt("j", &raw("jwks_url: http://127.0.0.1:9/keys\n"));
        assert_eq!(errors, vec![]);
        let jwt = jwt.unwrap();
        assert_eq!(
            jwt.algorithms,
            vec![
                JwtAlgorithm::RS256,
                JwtAlgorithm::ES256,
                JwtAlgorithm::EdDSA
            ]
        );
        assert_eq!(jwt.clock_skew, Duration::from_secs(60));
        assert_eq!(jwt.refresh_interval, Duration::from_secs(300));
        assert_eq!(jwt.from_header, http::header::AUTHORIZATION);
        assert!(jwt.bearer_scheme());
        assert_eq!(jwt.issuer, None);
        assert!(jwt.audiences.is_empty());
        assert!(!jwt.optional);
        assert!(
            matches!(jwt.jwks, Some(JwksSource::Url { uri, ca_file: None }) if uri.path() == "/keys")
        );
    }

    #[test]
    fn full() {
        let (_d, f) = file();
        let yaml = format!(
            "issuer: https://auth.example.com/\naudiences: [api, web]\njwks_file: {f}\n\
             algorithms: [HS256, EdDSA]\nhs256_secret_file: {f}\nclock_skew: 5s\n\
             refresh_interval: 1m\nfrom_header: X-Token\nforward_claims_header: X-Claims\n\
             optional: true\n"
        );
        let (jwt, errors) = validate_jwt("j", &raw(&yaml));
        assert_eq!(errors, vec![]);
        let jwt = jwt.unwrap();
        assert_eq!(jwt.issuer.as_deref(), Some("https://auth.example.com/"));
        assert_eq!(jwt.audiences, vec!["api", "web"]);
        assert_eq!(jwt.jwks, Some(JwksSource::File(f.clone().into())));
        assert_eq!(
            jwt.algorithms,
            vec![JwtAlgorithm::HS256, JwtAlgorithm::EdDSA]
        );
        assert_eq!(jwt.hs256_secret_file, Some(f.into()));
        assert_eq!(jwt.clock_skew, Duration::from_secs(5));
        assert_eq!(jwt.from_header.as_str(), "x-token");
        assert!(!jwt.bearer_scheme());
        assert_eq!(jwt.forward_claims_header.unwrap().as_str(), "x-claims");
        assert!(jwt.optional);
    }

    #[test]
    fn hs256_alone_needs_no_key_set() {
        let (_d, f) = file();
        let errors = messages(&format!("algorithms: [HS256]\nhs256_secret_file: {f}\n"));
        assert_eq!(errors, Vec::<String>::new());
    }

    #[test]
    fn bad_values_name_their_field() {
        let p = "listeners[0].filters[1].jwt";
        let cases: &[(&str, &str)] = &[
            (
                "{}",
                "listeners[0].filters[1].jwt: set one of jwks_file, jwks_url",
            ),
            (
                "{ jwks_file: /nonexistent/jwks.json }",
                "listeners[0].filters[1].jwt.jwks_file: cannot read \"/nonexistent/jwks.json\"",
            ),
            (
                "{ jwks_file: /tmp, jwks_url: \"http://a/\" }",
                "listeners[0].filters[1].jwt: set only one of jwks_file, jwks_url",
            ),
            (
                "{ jwks_url: \"ftp://a/keys\" }",
                "listeners[0].filters[1].jwt.jwks_url: \"ftp://a/keys\" must be an https:// or http:// URL",
            ),
            (
                "{ jwks_url: \"http://a/keys\", jwks_ca_file: /etc/hostname }",
                "listeners[0].filters[1].jwt.jwks_ca_file: only used with an https:// jwks_url",
            ),
            (
                "{ jwks_url: \"not a url\" }",
                "listeners[0].filters[1].jwt.jwks_url: \"not a url\" is not a URL",
            ),
            (
                "{ jwks_url: \"http://a/\", algorithms: [RS256, none] }",
                "listeners[0].filters[1].jwt.algorithms[1]: unsupported algorithm \"none\"",
            ),
            (
                "{ jwks_url: \"http://a/\", algorithms: [RS256, HS512] }",
                "listeners[0].filters[1].jwt.algorithms[1]: unsupported algorithm \"HS512\"",
            ),
            (
                "{ jwks_url: \"http://a/\", algorithms: [rs256] }",
                "listeners[0].filters[1].jwt.algorithms[0]: unsupported algorithm \"rs256\"",
            ),
            (
                "{ jwks_url: \"http://a/\", algorithms: [ES256, ES256] }",
                "listeners[0].filters[1].jwt.algorithms[1]: duplicate algorithm \"ES256\"",
            ),
            (
                "{ jwks_url: \"http://a/\", algorithms: [] }",
                "listeners[0].filters[1].jwt.algorithms: must list at least one algorithm",
            ),
            (
                "{ jwks_url: \"http://a/\", algorithms: [RS256, HS256] }",
                "listeners[0].filters[1].jwt.algorithms[1]: HS256 needs hs256_secret_file",
            ),
            (
                "{ jwks_url: \"http://a/\", hs256_secret_file: /tmp/x }",
                "listeners[0].filters[1].jwt.hs256_secret_file: is only used with HS256",
            ),
            (
                "{ jwks_url: \"http://a/\", clock_skew: soon }",
                "listeners[0].filters[1].jwt.clock_skew: invalid duration \"soon\"",
            ),
            (
                "{ jwks_url: \"http://a/\", clock_skew: 2h }",
                "listeners[0].filters[1].jwt.clock_skew: must be at most 1h",
            ),
            (
                "{ jwks_url: \"http://a/\", refresh_interval: 10ms }",
                "listeners[0].filters[1].jwt.refresh_interval: must be at least 1s",
            ),
            (
                "{ jwks_url: \"http://a/\", from_header: \"bad header\" }",
                "listeners[0].filters[1].jwt.from_header: invalid header name \"bad header\"",
            ),
            (
                "{ jwks_url: \"http://a/\", forward_claims_header: Authorization }",
                "listeners[0].filters[1].jwt.forward_claims_header: must differ from from_header",
            ),
            (
                "{ jwks_url: \"http://a/\", issuer: \"\" }",
                "listeners[0].filters[1].jwt.issuer: must not be empty",
            ),
            (
                "{ jwks_url: \"http://a/\", audiences: [] }",
                "listeners[0].filters[1].jwt.audiences: must list at least one audience",
            ),
            (
                "{ jwks_url: \"http://a/\", audiences: [a, \"\"] }",
                "listeners[0].filters[1].jwt.audiences[1]: must not be empty",
            ),
        ];
        for (yaml, want) in cases {
            let got = messages(yaml);
            assert_eq!(got.len(), 1, "{yaml}: {got:?}");
            assert!(
                got[0].starts_with(want),
                "{yaml}:\n got {:?}\nwant {want:?}",
                got[0]
            );
            assert!(got[0].starts_with(p));
        }
    }

    #[test]
    fn unknown_field_is_rejected() {
        let r: Result<RawJwt, _> = serde_saphyr::from_str("jwks_url: http://a/\nissuers: [x]\n");
        assert!(r.is_err());
    }
}

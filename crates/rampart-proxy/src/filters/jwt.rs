//! The `jwt` filter: verifies a bearer token (RFC 7519) and hands its claims to later filters.
//!
//! A request's token comes from `from_header` (`Authorization: Bearer <token>` by default).
//! The filter checks, in order: the token's shape, that its `alg` is allowed (never `none`),
//! that a key of that algorithm's family signed it — the HS256 secret for HS256, a key from
//! the JSON Web Key Set otherwise, chosen by `kid`, so an HS256 token can never be checked
//! against an RSA public key — and then `exp` and `nbf` (with `clock_skew`), `iss` and `aud`.
//! A valid token's claims go into [`RequestContext::extensions`] as [`JwtClaims`], and to the
//! upstream in `forward_claims_header` when set.
//!
//! Every rejection is a 401 with `WWW-Authenticate: Bearer error="invalid_token",
//! error_description="<reason>"` and the same reason in a small JSON body. Reasons are fixed
//! strings: neither the token nor key material is ever echoed or logged.
//!
//! Verification is synchronous. Only a token whose `kid` is not in the key set waits: it
//! joins (or starts) a key set refresh on the control runtime — at most one on-demand refresh
//! per 10 s — and is checked again once that ends.

mod jwks;

use std::sync::Arc;

use http::{HeaderMap, HeaderName, HeaderValue, StatusCode, request};
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use prometheus_client::metrics::counter::Counter;
use rampart_config::model::{JwksSource, Jwt, JwtAlgorithm};

pub use self::jwks::JwksRegistry;
use self::jwks::{JwksCache, NoKey};
use crate::body::ProxyBody;
use crate::error::local_response;
use crate::filter::{
    BuildEnv, FilterBuildError, FilterFactory, FilterRef, Flow, HttpFilter, JwtClaims,
    RequestContext, Verdict,
};

pub struct JwtFactory;

impl FilterFactory for JwtFactory {
    type Config = Jwt;

    fn name(&self) -> &'static str {
        "jwt"
    }

    fn parse(
        &self,
        path: &str,
        config: &serde_json::Value,
    ) -> Result<Jwt, Vec<rampart_config::FieldError>> {
        rampart_config::jwt::parse(path, config)
    }

    fn build(&self, config: Jwt, env: &BuildEnv) -> Result<FilterRef, FilterBuildError> {
        Ok(Arc::new(JwtFilter::new(&config, env)?))
    }
}

/// The gateway's key sets, kept across versions so a reload does not refetch them.
fn key_sets(env: &BuildEnv) -> Arc<JwksRegistry> {
    env.shared(|env| {
        Arc::new(JwksRegistry::new(
            env.control.clone(),
            env.tasks.clone(),
            env.stop.clone(),
        ))
    })
}

/// Shortest HS256 secret accepted (RFC 7518 §3.2: at least the hash size).
const MIN_HS256_SECRET: usize = 32;

/// Why a request was refused. The descriptions are what clients see.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reject {
    MissingToken,
    Malformed,
    CriticalHeader,
    AlgorithmNotAllowed,
    AlgorithmKeyMismatch,
    UnknownKid,
    /// No `kid`, and more keys for the algorithm than one token may cost to try.
    KidRequired,
    BadSignature,
    Expired,
    NotYetValid,
    WrongIssuer,
    WrongAudience,
    NoExp,
    NoIssuer,
    NoAudience,
}

/// A token without `kid` is tried against at most this many keys: each try is a public-key
/// operation, and a client must not be able to make one request cost the whole key set.
const MAX_KEYS_WITHOUT_KID: usize = 4;

impl Reject {
    const ALL: [Self; 15] = [
        Self::MissingToken,
        Self::Malformed,
        Self::CriticalHeader,
        Self::AlgorithmNotAllowed,
        Self::AlgorithmKeyMismatch,
        Self::UnknownKid,
        Self::KidRequired,
        Self::BadSignature,
        Self::Expired,
        Self::NotYetValid,
        Self::WrongIssuer,
        Self::WrongAudience,
        Self::NoExp,
        Self::NoIssuer,
        Self::NoAudience,
    ];

    fn description(self) -> &'static str {
        match self {
            Self::MissingToken => "missing token",
            Self::Malformed => "malformed token",
            Self::CriticalHeader => "unsupported critical header",
            Self::AlgorithmNotAllowed => "algorithm not allowed",
            Self::AlgorithmKeyMismatch => "algorithm does not match key",
            Self::UnknownKid => "unknown key id",
            Self::KidRequired => "token has no kid and too many keys match its algorithm",
            Self::BadSignature => "bad signature",
            Self::Expired => "token expired",
            Self::NotYetValid => "token not yet valid",
            Self::WrongIssuer => "wrong issuer",
            Self::WrongAudience => "wrong audience",
            Self::NoExp => "token has no exp claim",
            Self::NoIssuer => "token has no iss claim",
            Self::NoAudience => "token has no aud claim",
        }
    }

    /// The `result` label of `rampart_jwt_requests_total`.
    fn label(self) -> &'static str {
        match self {
            Self::MissingToken => "missing_token",
            Self::Malformed => "malformed",
            Self::CriticalHeader => "critical_header",
            Self::AlgorithmNotAllowed => "algorithm_not_allowed",
            Self::AlgorithmKeyMismatch => "algorithm_key_mismatch",
            Self::UnknownKid => "unknown_kid",
            Self::KidRequired => "kid_required",
            Self::BadSignature => "bad_signature",
            Self::Expired => "expired",
            Self::NotYetValid => "not_yet_valid",
            Self::WrongIssuer => "wrong_issuer",
            Self::WrongAudience => "wrong_audience",
            Self::NoExp => "no_exp",
            Self::NoIssuer => "no_issuer",
            Self::NoAudience => "no_audience",
        }
    }

    fn from_error(e: &jsonwebtoken::errors::Error) -> Self {
        match e.kind() {
            ErrorKind::InvalidSignature
            | ErrorKind::InvalidEcdsaKey
            | ErrorKind::InvalidRsaKey(_)
            | ErrorKind::InvalidKeyFormat
            | ErrorKind::Crypto(_) => Self::BadSignature,
            ErrorKind::ExpiredSignature => Self::Expired,
            ErrorKind::ImmatureSignature => Self::NotYetValid,
            ErrorKind::InvalidIssuer => Self::WrongIssuer,
            ErrorKind::InvalidAudience => Self::WrongAudience,
            ErrorKind::MissingRequiredClaim(c) => match c.as_str() {
                "exp" => Self::NoExp,
                "iss" => Self::NoIssuer,
                "aud" => Self::NoAudience,
                _ => Self::Malformed,
            },
            ErrorKind::InvalidAlgorithm | ErrorKind::MissingAlgorithm => Self::AlgorithmNotAllowed,
            _ => Self::Malformed,
        }
    }

    fn response(self) -> http::Response<ProxyBody> {
        let d = self.description();
        let body = format!("{{\"error\":\"invalid_token\",\"error_description\":\"{d}\"}}\n");
        let mut resp = local_response(StatusCode::UNAUTHORIZED, &body);
        let h = resp.headers_mut();
        h.insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        // The descriptions are fixed ASCII without quotes, so this always parses.
        if let Ok(v) = HeaderValue::from_str(&format!(
            "Bearer error=\"invalid_token\", error_description=\"{d}\""
        )) {
            h.insert(http::header::WWW_AUTHENTICATE, v);
        }
        resp
    }
}

/// The JOSE header fields the filter looks at.
#[derive(serde::Deserialize)]
struct JoseHeader {
    alg: String,
    #[serde(default)]
    kid: Option<String>,
    /// Extensions the verifier must understand (RFC 7515 §4.1.11); this one knows none.
    #[serde(default)]
    crit: Option<serde_json::Value>,
}

/// A token that passed every check.
struct Verified {
    claims: serde_json::Value,
    /// The payload as sent (base64url JSON), for `forward_claims_header`.
    forward: Option<HeaderValue>,
}

enum Checked {
    Valid(Verified),
    Invalid(Reject),
    /// No key has the token's `kid`: a key set refresh might bring it.
    NeedKeys,
}

/// The outcome counters, looked up once per filter.
struct Counters {
    ok: Counter,
    no_token: Counter,
    rejected: Vec<Counter>,
}

pub struct JwtFilter {
    from_header: HeaderName,
    bearer: bool,
    claims_header: Option<HeaderName>,
    optional: bool,
    keys: Option<Arc<JwksCache>>,
    hs256: Option<DecodingKey>,
    /// One per allowed algorithm.
    validations: Vec<(JwtAlgorithm, Algorithm, Validation)>,
    counters: Counters,
}

fn build_error(field: &str, message: impl Into<String>) -> FilterBuildError {
    FilterBuildError {
        field: field.to_owned(),
        message: message.into(),
    }
}

impl JwtFilter {
    /// Loads the key material (a JWKS file is read now; a URL is fetched in the background).
    pub fn new(cfg: &Jwt, env: &BuildEnv) -> Result<Self, FilterBuildError> {
        let keys = match &cfg.jwks {
            None => None,
            Some(source) => {
                let field = match source {
                    JwksSource::File(_) => "jwks_file",
                    JwksSource::Url { .. } => "jwks_url",
                };
                Some(
                    key_sets(env)
                        .get(source, cfg.refresh_interval)
                        .map_err(|m| build_error(field, m))?,
                )
            }
        };
        let hs256 = match &cfg.hs256_secret_file {
            None => None,
            Some(path) => {
                let mut secret = std::fs::read(path).map_err(|e| {
                    build_error(
                        "hs256_secret_file",
                        format!("cannot read {}: {e}", path.display()),
                    )
                })?;
                while secret.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
                    secret.pop();
                }
                if secret.len() < MIN_HS256_SECRET {
                    return Err(build_error(
                        "hs256_secret_file",
                        format!(
                            "the secret in {} is {} bytes; HS256 needs at least {MIN_HS256_SECRET}",
                            path.display(),
                            secret.len()
                        ),
                    ));
                }
                Some(DecodingKey::from_secret(&secret))
            }
        };
        let validations = cfg
            .algorithms
            .iter()
            .map(|a| {
                let alg = match a {
                    JwtAlgorithm::HS256 => Algorithm::HS256,
                    JwtAlgorithm::RS256 => Algorithm::RS256,
                    JwtAlgorithm::ES256 => Algorithm::ES256,
                    JwtAlgorithm::EdDSA => Algorithm::EdDSA,
                };
                (*a, alg, validation(cfg, alg))
            })
            .collect();
        let m = &env.metrics;
        Ok(Self {
            from_header: cfg.from_header.clone(),
            bearer: cfg.bearer_scheme(),
            claims_header: cfg.forward_claims_header.clone(),
            optional: cfg.optional,
            keys,
            hs256,
            validations,
            counters: Counters {
                ok: m.jwt_result("ok"),
                no_token: m.jwt_result("no_token"),
                rejected: Reject::ALL
                    .iter()
                    .map(|r| m.jwt_result(r.label()))
                    .collect(),
            },
        })
    }

    /// The token in the request: `Ok(None)` when there is none (for `authorization`, also
    /// when the scheme is not Bearer).
    fn token<'h>(&self, headers: &'h HeaderMap) -> Result<Option<&'h str>, Reject> {
        let Some(v) = headers.get(&self.from_header) else {
            return Ok(None);
        };
        let s = v.to_str().map_err(|_| Reject::Malformed)?.trim();
        let token = if self.bearer {
            match s.split_once(' ') {
                Some((scheme, rest)) if scheme.eq_ignore_ascii_case("bearer") => rest.trim(),
                _ => return Ok(None),
            }
        } else {
            s
        };
        Ok((!token.is_empty()).then_some(token))
    }

    fn check(&self, token: &str) -> Checked {
        let mut parts = token.split('.');
        let (Some(header), Some(payload), Some(_signature), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Checked::Invalid(Reject::Malformed);
        };
        let Some(header) =
            b64url_decode(header).and_then(|h| serde_json::from_slice::<JoseHeader>(&h).ok())
        else {
            return Checked::Invalid(Reject::Malformed);
        };
        if header.crit.is_some() {
            return Checked::Invalid(Reject::CriticalHeader);
        }
        let Some((_, alg, validation)) = JwtAlgorithm::parse(&header.alg)
            .and_then(|a| self.validations.iter().find(|(allowed, ..)| *allowed == a))
        else {
            return Checked::Invalid(Reject::AlgorithmNotAllowed);
        };
        let decode = |key: &DecodingKey| {
            jsonwebtoken::decode::<serde_json::Value>(token, key, validation)
                .map(|d| d.claims)
                .map_err(|e| Reject::from_error(&e))
        };
        let result = if *alg == Algorithm::HS256 {
            match &self.hs256 {
                Some(secret) => decode(secret),
                None => Err(Reject::AlgorithmNotAllowed),
            }
        } else {
            let Some(cache) = &self.keys else {
                return Checked::Invalid(Reject::AlgorithmNotAllowed);
            };
            let set = cache.keys();
            match set.candidates(header.kid.as_deref(), *alg) {
                Err(NoKey::UnknownKid) => return Checked::NeedKeys,
                Err(NoKey::WrongAlgorithm) => Err(Reject::AlgorithmKeyMismatch),
                Ok(keys) => {
                    // Without a kid, each key for the algorithm is tried (a few at most); any
                    // other failure than the signature means the key was right.
                    let mut result = Err(Reject::BadSignature);
                    for (tried, key) in keys.enumerate() {
                        if tried == MAX_KEYS_WITHOUT_KID {
                            result = Err(Reject::KidRequired);
                            break;
                        }
                        result = decode(key);
                        if !matches!(result, Err(Reject::BadSignature)) {
                            break;
                        }
                    }
                    result
                }
            }
        };
        match result {
            Ok(claims) => Checked::Valid(Verified {
                claims,
                forward: self
                    .claims_header
                    .as_ref()
                    .and_then(|_| HeaderValue::from_str(payload).ok()),
            }),
            Err(r) => Checked::Invalid(r),
        }
    }

    fn accept(&self, ctx: &mut RequestContext, req: &mut request::Parts, v: Verified) {
        self.counters.ok.inc();
        ctx.extensions.insert(JwtClaims(Arc::new(v.claims)));
        if let (Some(name), Some(value)) = (&self.claims_header, v.forward) {
            req.headers.insert(name.clone(), value);
        }
    }

    fn reject(&self, ctx: &RequestContext, r: Reject) -> http::Response<ProxyBody> {
        if let Some(c) = Reject::ALL
            .iter()
            .position(|x| *x == r)
            .and_then(|i| self.counters.rejected.get(i))
        {
            c.inc();
        }
        tracing::debug!(
            request_id = ?ctx.request_id,
            route = %ctx.route,
            reason = r.description(),
            "jwt rejected the request"
        );
        r.response()
    }
}

/// What `jsonwebtoken` checks for one algorithm: `exp` always (and required), `nbf` when
/// present, `iss` and `aud` (then required) when configured.
fn validation(cfg: &Jwt, alg: Algorithm) -> Validation {
    let mut v = Validation::new(alg);
    v.leeway = cfg.clock_skew.as_secs();
    v.validate_exp = true;
    v.validate_nbf = true;
    let mut required = vec!["exp"];
    if let Some(iss) = &cfg.issuer {
        v.set_issuer(&[iss]);
        required.push("iss");
    }
    if cfg.audiences.is_empty() {
        // Otherwise a token that names any audience would be refused.
        v.validate_aud = false;
    } else {
        v.set_audience(&cfg.audiences);
        required.push("aud");
    }
    v.set_required_spec_claims(&required);
    v
}

impl HttpFilter for JwtFilter {
    fn name(&self) -> &'static str {
        "jwt"
    }

    fn on_request_headers<'a>(
        &'a self,
        ctx: &'a mut RequestContext,
        req: &'a mut request::Parts,
    ) -> Flow<'a> {
        if let Some(h) = &self.claims_header {
            // Only this filter may set it.
            req.headers.remove(h);
        }
        let token = match self.token(&req.headers) {
            Ok(Some(t)) => t,
            Ok(None) if self.optional => {
                self.counters.no_token.inc();
                return Flow::Continue;
            }
            Ok(None) => return Flow::Respond(self.reject(ctx, Reject::MissingToken)),
            Err(r) => return Flow::Respond(self.reject(ctx, r)),
        };
        match self.check(token) {
            Checked::Valid(v) => {
                self.accept(ctx, req, v);
                Flow::Continue
            }
            Checked::Invalid(r) => Flow::Respond(self.reject(ctx, r)),
            Checked::NeedKeys => {
                let Some(mut done) = self.keys.as_ref().and_then(|k| k.refresh(true)) else {
                    return Flow::Respond(self.reject(ctx, Reject::UnknownKid));
                };
                let token = token.to_owned();
                Flow::Async(Box::pin(async move {
                    let wait = jwks::FETCH_TIMEOUT + std::time::Duration::from_secs(1);
                    let _ = tokio::time::timeout(wait, done.changed()).await;
                    match self.check(&token) {
                        Checked::Valid(v) => {
                            self.accept(ctx, req, v);
                            Verdict::Continue
                        }
                        Checked::Invalid(r) => Verdict::Respond(self.reject(ctx, r)),
                        Checked::NeedKeys => Verdict::Respond(self.reject(ctx, Reject::UnknownKid)),
                    }
                }))
            }
        }
    }
}

/// Decodes unpadded base64url (RFC 4648 §5), as JWTs and JWKs use it. Rejects padding, other
/// alphabets and non-canonical trailing bits.
pub(crate) fn b64url_decode(s: &str) -> Option<Vec<u8>> {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(s)
        .ok()
}

#[cfg(test)]
pub(crate) fn b64url_encode(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn base64url_known_values() {
        assert_eq!(b64url_encode(b""), "");
        assert_eq!(b64url_encode(b"f"), "Zg");
        assert_eq!(b64url_encode(b"fo"), "Zm8");
        assert_eq!(b64url_encode(b"foo"), "Zm9v");
        assert_eq!(b64url_encode(&[0xfb, 0xff]), "-_8");
        assert_eq!(b64url_decode("Zm9vYg").unwrap(), b"foob");
        for bad in ["Zg==", "Z", "Zh", "Zm9v+", "Zm9v/", "a b"] {
            assert_eq!(b64url_decode(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn rejections_are_401_with_a_reason() {
        for r in Reject::ALL {
            let resp = r.response();
            assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
            let www = resp.headers()[http::header::WWW_AUTHENTICATE]
                .to_str()
                .unwrap();
            assert_eq!(
                www,
                format!(
                    "Bearer error=\"invalid_token\", error_description=\"{}\"",
                    r.description()
                )
            );
        }
    }

    proptest! {
        #[test]
        fn base64url_round_trips(bytes in prop::collection::vec(any::<u8>(), 0..200)) {
            prop_assert_eq!(b64url_decode(&b64url_encode(&bytes)), Some(bytes));
        }

        #[test]
        fn base64url_decode_never_panics(s in "\\PC{0,64}") {
            let _ = b64url_decode(&s);
        }
    }
}

//! An operation's security requirements as the gateway can see them: which credentials a
//! request must carry (an API key in a header, query parameter or cookie; an `Authorization`
//! header of a scheme). Whether a credential is good is for the filters that verify it (`jwt`,
//! an API key check, a policy); here a request that carries none of the alternatives the spec
//! allows is told so before anything else is checked.

use serde_json::Value;

use crate::Problem;

/// Where one scheme's credential travels.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Carrier {
    Header(String),
    Query(String),
    Cookie(String),
    /// `Authorization: <scheme> ...` (lower case), or any scheme when `None`.
    Authorization(Option<String>),
    /// Not visible in the request head (mutual TLS): taken as present.
    Connection,
}

/// The alternatives of an operation's `security`: a request must carry every credential of
/// at least one (no alternatives, or an empty one: anonymous access).
#[derive(Debug, Clone, Default)]
pub struct Requirements {
    alternatives: Vec<Vec<(String, Carrier)>>,
}

/// What a request carries, for [`Requirements::met`].
pub struct Carried<'a> {
    pub headers: &'a http::HeaderMap,
    pub query: &'a [(String, String)],
    pub cookies: &'a [(String, String)],
}

impl Requirements {
    /// `security` (the operation's or the spec's) against the spec's `securitySchemes`.
    pub fn new(security: &Value, schemes: &Value) -> Result<Self, Problem> {
        let mut alternatives = Vec::new();
        for (i, alt) in security.as_array().into_iter().flatten().enumerate() {
            let Some(alt) = alt.as_object() else {
                return Err(Problem::new(
                    &format!("/security/{i}"),
                    "a security requirement is an object",
                ));
            };
            let mut all = Vec::new();
            for name in alt.keys() {
                let scheme = &schemes[name];
                if !scheme.is_object() {
                    return Err(Problem::new(
                        &format!("/security/{i}/{name}"),
                        format!("no security scheme {name:?} in components/securitySchemes"),
                    ));
                }
                all.push((name.clone(), carrier(scheme)));
            }
            alternatives.push(all);
        }
        Ok(Self { alternatives })
    }

    /// Whether `r` carries every credential of some alternative.
    pub fn met(&self, r: &Carried<'_>) -> bool {
        self.alternatives.is_empty()
            || self
                .alternatives
                .iter()
                .any(|alt| alt.iter().all(|(_, c)| carries(r, c)))
    }

    /// The alternatives in words, for the problem document: `apiKey (header x-api-key) or
    /// bearer (Authorization: Bearer)`.
    pub fn describe(&self) -> String {
        self.alternatives
            .iter()
            .map(|alt| {
                alt.iter()
                    .map(|(name, c)| format!("{name} ({})", describe(c)))
                    .collect::<Vec<_>>()
                    .join(" and ")
            })
            .collect::<Vec<_>>()
            .join(" or ")
    }
}

fn carrier(scheme: &Value) -> Carrier {
    let name = scheme["name"].as_str().unwrap_or_default().to_owned();
    match (scheme["type"].as_str(), scheme["in"].as_str()) {
        (Some("apiKey"), Some("query")) => Carrier::Query(name),
        (Some("apiKey"), Some("cookie")) => Carrier::Cookie(name),
        (Some("apiKey"), _) => Carrier::Header(name.to_ascii_lowercase()),
        (Some("http"), _) => Carrier::Authorization(
            scheme["scheme"]
                .as_str()
                .map(str::to_ascii_lowercase)
                .filter(|s| !s.is_empty()),
        ),
        (Some("oauth2" | "openIdConnect"), _) => Carrier::Authorization(Some("bearer".into())),
        _ => Carrier::Connection,
    }
}

fn carries(r: &Carried<'_>, c: &Carrier) -> bool {
    let non_empty = |v: &str| !v.trim().is_empty();
    match c {
        Carrier::Header(h) => r
            .headers
            .get_all(h.as_str())
            .iter()
            .any(|v| non_empty(&String::from_utf8_lossy(v.as_bytes()))),
        Carrier::Query(q) => r.query.iter().any(|(k, v)| k == q && non_empty(v)),
        Carrier::Cookie(n) => r.cookies.iter().any(|(k, v)| k == n && non_empty(v)),
        Carrier::Authorization(scheme) => r
            .headers
            .get_all(http::header::AUTHORIZATION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .any(|v| {
                let mut parts = v.trim().splitn(2, ' ');
                let (kind, cred) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
                non_empty(cred)
                    && scheme
                        .as_deref()
                        .is_none_or(|s| kind.eq_ignore_ascii_case(s))
            }),
        Carrier::Connection => true,
    }
}

fn describe(c: &Carrier) -> String {
    match c {
        Carrier::Header(h) => format!("header {h}"),
        Carrier::Query(q) => format!("query parameter {q}"),
        Carrier::Cookie(n) => format!("cookie {n}"),
        Carrier::Authorization(Some(s)) => {
            let mut s = s.clone();
            if let Some(first) = s.get_mut(..1) {
                first.make_ascii_uppercase();
            }
            format!("Authorization: {s}")
        }
        Carrier::Authorization(None) => "Authorization".into(),
        Carrier::Connection => "mutual TLS".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn head(pairs: &[(&str, &str)]) -> http::HeaderMap {
        pairs
            .iter()
            .map(|(k, v)| {
                (
                    http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                    http::HeaderValue::from_str(v).unwrap(),
                )
            })
            .collect()
    }

    #[test]
    fn one_alternative_fully_carried_is_enough() {
        let schemes = json!({
            "key": { "type": "apiKey", "in": "header", "name": "X-Api-Key" },
            "bearer": { "type": "http", "scheme": "bearer" },
            "sid": { "type": "apiKey", "in": "cookie", "name": "sid" },
            "tls": { "type": "mutualTLS" },
        });
        let r = Requirements::new(
            &json!([{ "key": [] }, { "bearer": [], "sid": [] }]),
            &schemes,
        )
        .unwrap();
        let cookies = [("sid".to_owned(), "s1".to_owned())];
        let met = |h: &[(&str, &str)], c: &[(String, String)]| {
            r.met(&Carried {
                headers: &head(h),
                query: &[],
                cookies: c,
            })
        };
        assert!(met(&[("x-api-key", "k")], &[]));
        assert!(!met(&[("x-api-key", " ")], &[]), "an empty key is no key");
        assert!(
            !met(&[("authorization", "Bearer t")], &[]),
            "half of an alternative"
        );
        assert!(met(&[("authorization", "bearer t")], &cookies));
        assert!(
            !met(&[("authorization", "Basic t")], &cookies),
            "another scheme"
        );
        assert!(
            !met(&[("authorization", "Bearer")], &cookies),
            "no credential"
        );
        assert_eq!(
            r.describe(),
            "key (header x-api-key) or bearer (Authorization: Bearer) and sid (cookie sid)"
        );
        let anyone = Requirements::new(&json!([{}, { "key": [] }]), &schemes).unwrap();
        assert!(anyone.met(&Carried {
            headers: &head(&[]),
            query: &[],
            cookies: &[],
        }));
        let tls = Requirements::new(&json!([{ "tls": [] }]), &schemes).unwrap();
        assert!(tls.met(&Carried {
            headers: &head(&[]),
            query: &[],
            cookies: &[],
        }));
        assert!(Requirements::new(&json!([{ "nope": [] }]), &schemes).is_err());
    }
}

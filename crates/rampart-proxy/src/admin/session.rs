//! Browser sessions on the admin port. The admin token is exchanged once, at `/ui/login`
//! (the link `rampart up` prints, or the form there), for a cookie that is HttpOnly,
//! SameSite=Strict and signed: `v1.<expiry>.<HMAC-SHA256 of "v1.<expiry>">` under a key
//! drawn at start. Nothing is stored per session, so there is no table to bound; a restart
//! or the expiry (12 h) ends every session.
//!
//! A cookie is ambient — the browser sends it whatever page asked — so a change made with
//! one (any method but GET/HEAD) must also come from the admin port's own pages: the
//! `Origin` the browser sets must be this port's, and `Sec-Fetch-Site`, when sent, must say
//! `same-origin`. A bearer token needs neither.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::header::{self, HeaderMap, HeaderValue};
use ring::hmac;

/// The cookie's name.
pub(crate) const COOKIE: &str = "rampart_session";

/// How long a session lasts.
pub(crate) const TTL: Duration = Duration::from_secs(12 * 3600);

/// Where the login page and the logout action live.
pub(crate) const LOGIN_PATH: &str = "/ui/login";
pub(crate) const LOGOUT_PATH: &str = "/ui/logout";

/// Issues and checks session cookies.
pub(crate) struct Sessions {
    key: hmac::Key,
}

impl Sessions {
    /// A fresh signing key from the system's random source.
    pub(crate) fn new() -> Self {
        let rng = ring::rand::SystemRandom::new();
        let key = hmac::Key::generate(hmac::HMAC_SHA256, &rng)
            .expect("the system random source is readable");
        Self { key }
    }

    /// A cookie value valid until `now + TTL`.
    pub(crate) fn issue(&self, now: SystemTime) -> String {
        let expiry = unix(now) + TTL.as_secs();
        let payload = format!("v1.{expiry}");
        let tag = hmac::sign(&self.key, payload.as_bytes());
        format!("{payload}.{}", hex(tag.as_ref()))
    }

    /// Whether `value` is a cookie this process issued and it has not expired.
    pub(crate) fn valid(&self, value: &str, now: SystemTime) -> bool {
        let Some((payload, tag)) = value.rsplit_once('.') else {
            return false;
        };
        let Some(expiry) = payload
            .strip_prefix("v1.")
            .and_then(|e| e.parse::<u64>().ok())
        else {
            return false;
        };
        let Some(tag) = unhex(tag) else {
            return false;
        };
        // Constant time in the tag; the expiry is checked after the signature.
        hmac::verify(&self.key, payload.as_bytes(), &tag).is_ok() && unix(now) < expiry
    }

    /// Whether the request carries a valid session cookie.
    pub(crate) fn in_request(&self, headers: &HeaderMap, now: SystemTime) -> bool {
        cookie_values(headers, COOKIE).any(|v| self.valid(v, now))
    }
}

/// The `Set-Cookie` header that starts a session.
pub(crate) fn set_cookie(value: &str) -> HeaderValue {
    HeaderValue::try_from(format!(
        "{COOKIE}={value}; Path=/; HttpOnly; SameSite=Strict; Max-Age={}",
        TTL.as_secs()
    ))
    .expect("the cookie is ASCII")
}

/// The `Set-Cookie` header that ends it.
pub(crate) fn clear_cookie() -> HeaderValue {
    HeaderValue::from_static("rampart_session=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0")
}

/// Every value of cookie `name` in the request's `Cookie` headers.
pub(crate) fn cookie_values<'a>(
    headers: &'a HeaderMap,
    name: &'a str,
) -> impl Iterator<Item = &'a str> + 'a {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|h| h.to_str().ok())
        .flat_map(|h| h.split(';'))
        .filter_map(move |pair| {
            let (k, v) = pair.trim().split_once('=')?;
            (k.trim() == name).then(|| v.trim())
        })
}

/// Whether a request sent with the browser's cookie came from the admin port's own pages:
/// its `Sec-Fetch-Site` says `same-origin` (browsers set it and pages cannot), or, from a
/// browser without it, its `Origin` is `http://<Host>`.
pub(crate) fn same_origin(headers: &HeaderMap) -> bool {
    let get = |h: header::HeaderName| headers.get(h).and_then(|v| v.to_str().ok());
    if let Some(site) = get(header::HeaderName::from_static("sec-fetch-site")) {
        return site == "same-origin";
    }
    match (get(header::ORIGIN), get(header::HOST)) {
        (Some(origin), Some(host)) => {
            origin
                .strip_prefix("http://")
                .or_else(|| origin.strip_prefix("https://"))
                == Some(host)
        }
        _ => false,
    }
}

fn unix(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) || !s.is_ascii() {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).ok())
        .collect()
}

/// The login page: a form that posts the token (for users without the printed link).
pub(crate) fn login_page(message: Option<&str>) -> String {
    let message = message.map_or(String::new(), |m| {
        format!("<p role=\"alert\">{}</p>", escape(m))
    });
    format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>Rampart — sign in</title></head><body><main>\
         <h1>Rampart dashboard</h1>{message}\
         <p>Open the link <code>rampart up</code> printed, or paste the admin token \
         (the file <code>rampart-data/admin.token</code> by default).</p>\
         <form method=\"post\" action=\"{LOGIN_PATH}\">\
         <label for=\"token\">Admin token</label> \
         <input id=\"token\" name=\"token\" type=\"password\" autocomplete=\"current-password\" required> \
         <button type=\"submit\">Sign in</button></form></main></body></html>\n"
    )
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn issued_cookies_are_valid_until_they_expire() {
        let s = Sessions::new();
        let now = SystemTime::now();
        let c = s.issue(now);
        assert!(s.valid(&c, now));
        assert!(s.valid(&c, now + TTL - Duration::from_secs(1)));
        assert!(!s.valid(&c, now + TTL + Duration::from_secs(1)), "expired");
        assert!(!Sessions::new().valid(&c, now), "another process's key");
    }

    #[test]
    fn a_changed_expiry_breaks_the_signature() {
        let s = Sessions::new();
        let now = SystemTime::now();
        let c = s.issue(now);
        let (payload, tag) = c.rsplit_once('.').unwrap();
        let expiry: u64 = payload[3..].parse().unwrap();
        let forged = format!("v1.{}.{tag}", expiry + 3600 * 24 * 365);
        assert!(!s.valid(&forged, now + TTL * 2));
    }

    #[test]
    fn same_origin_needs_this_ports_origin() {
        let h = |pairs: &[(&'static str, &'static str)]| {
            let mut m = HeaderMap::new();
            for (k, v) in pairs {
                m.insert(*k, HeaderValue::from_static(v));
            }
            m
        };
        assert!(same_origin(&h(&[
            ("host", "127.0.0.1:9901"),
            ("origin", "http://127.0.0.1:9901"),
            ("sec-fetch-site", "same-origin"),
        ])));
        assert!(!same_origin(&h(&[("host", "127.0.0.1:9901")])), "no Origin");
        assert!(
            same_origin(&h(&[
                ("host", "127.0.0.1:9901"),
                ("origin", "null"),
                ("sec-fetch-site", "same-origin"),
            ])),
            "a form posted under Referrer-Policy no-referrer has Origin null"
        );
        assert!(!same_origin(&h(&[
            ("host", "127.0.0.1:9901"),
            ("origin", "http://evil.example"),
        ])));
        assert!(!same_origin(&h(&[
            ("host", "127.0.0.1:9901"),
            ("origin", "http://127.0.0.1:9901"),
            ("sec-fetch-site", "cross-site"),
        ])));
    }

    proptest! {
        /// The session cookie is found among any other cookies, in any position.
        #[test]
        fn cookie_found_among_others(
            before in proptest::collection::vec(("[a-z_]{1,8}", "[ -:<-~]{0,12}"), 0..4),
            after in proptest::collection::vec(("[a-z_]{1,8}", "[ -:<-~]{0,12}"), 0..4),
        ) {
            let s = Sessions::new();
            let now = SystemTime::now();
            let good = s.issue(now);
            let render = |v: &[(String, String)]| v.iter()
                .filter(|(k, _)| k != COOKIE)
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>();
            let mut parts = render(&before);
            parts.push(format!("{COOKIE}={good}"));
            parts.extend(render(&after));
            let mut m = HeaderMap::new();
            m.insert(header::COOKIE, HeaderValue::try_from(parts.join("; ")).unwrap());
            prop_assert!(s.in_request(&m, now));
        }

        /// No string an attacker sends is a valid session, and none panics the check.
        #[test]
        fn arbitrary_values_never_validate(v in "\\PC{0,120}") {
            let s = Sessions::new();
            prop_assert!(!s.valid(&v, SystemTime::now()));
        }
    }
}

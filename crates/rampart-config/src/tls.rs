//! TLS settings: listeners terminate TLS, clusters originate it.
//!
//! The raw structs are what YAML holds; [`validate_listener_tls`] and
//! [`validate_cluster_tls`] check their shape and that every referenced file can be opened,
//! and produce the validated types. Certificates are not parsed here (this crate has no
//! crypto): a file that exists but holds no usable PEM is reported by the proxy when it builds
//! the rustls configuration.
//!
//! ```yaml
//! listeners:
//!   - name: public
//!     tls:
//!       certificates:
//!         - { cert: /etc/rampart/default.pem, key: /etc/rampart/default.key }
//!         - cert: /etc/rampart/api.pem
//!           key: /etc/rampart/api.key
//!           server_names: [api.example.com, "*.api.example.com"]
//!       alpn: [h2, http/1.1]        # default; the order is the server's preference
//!       min_version: "1.2"          # or "1.3"
//!       client_auth:
//!         ca: /etc/rampart/clients-ca.pem
//!         required: true            # default
//!         allowed_sans: ["spiffe://cluster.local/ns/prod/*", "*.internal"]
//! clusters:
//!   - name: api
//!     tls:
//!       ca: /etc/rampart/upstream-ca.pem
//!       server_name: api.internal   # default: the endpoint's host name or IP
//!       client_cert: /etc/rampart/proxy.pem
//!       client_key: /etc/rampart/proxy.key
//!       min_version: "1.3"
//! ```
//!
//! Relative paths are opened relative to the process's working directory.

use std::fmt;
use std::net::IpAddr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::error::FieldError;

// ---------------------------------------------------------------------------------------------
// Raw

/// A listener's `tls:` block.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RawListenerTls {
    /// At least one; the first is served to clients that send no SNI or an unknown name.
    pub certificates: Vec<RawCertificate>,
    /// `h2`, `http/1.1`; defaults to both, h2 first.
    #[serde(default)]
    pub alpn: Option<Vec<String>>,
    /// `"1.2"` (default) or `"1.3"`.
    #[serde(default)]
    pub min_version: Option<String>,
    #[serde(default)]
    pub client_auth: Option<RawClientAuth>,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RawCertificate {
    /// PEM certificate chain, end-entity first.
    pub cert: String,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub key: String,
    /// SNI names this certificate answers: exact names or `*.suffix`. Defaults to the
    /// certificate's DNS subject alternative names.
    #[serde(default)]
    pub server_names: Option<Vec<String>>,
}

/// Client certificate authentication (mTLS) on a listener.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RawClientAuth {
    /// PEM bundle of the CAs that client certificates must chain to.
    pub ca: String,
    /// Reject clients without a certificate (default true). When false, a client may present
    /// none; one that presents a certificate must still pass every check.
    #[serde(default)]
    pub required: Option<bool>,
    /// Patterns for the client certificate's URI or DNS SANs: exact, a trailing `*` for URIs
    /// (`spiffe://cluster.local/ns/prod/*`) or a leading `*.` for DNS names (`*.internal`).
    /// Empty: any certificate signed by `ca` is accepted.
    #[serde(default)]
    pub allowed_sans: Vec<String>,
}

/// A cluster's `tls:` block: TLS from the proxy to the cluster's endpoints.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RawClusterTls {
    /// PEM bundle of the CAs the upstream's certificate must chain to.
    pub ca: String,
    /// SNI and the name verified; defaults to the endpoint's host name, or its IP.
    #[serde(default)]
    pub server_name: Option<String>,
    /// PEM chain presented to the upstream (mTLS); set together with `client_key`.
    #[serde(default)]
    pub client_cert: Option<String>,
    #[serde(default)]
    pub client_key: Option<String>,
    /// Protocols offered; defaults to what the cluster's `protocol` speaks.
    #[serde(default)]
    pub alpn: Option<Vec<String>>,
    /// `"1.2"` (default) or `"1.3"`.
    #[serde(default)]
    pub min_version: Option<String>,
}

// ---------------------------------------------------------------------------------------------
// Validated

/// Validated listener TLS. Every file named here could be opened at validation time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenerTls {
    /// Never empty; the first is the default certificate.
    pub certificates: Vec<ServerCertificate>,
    /// Never empty, no duplicates, in the server's order of preference.
    pub alpn: Vec<AlpnProtocol>,
    pub min_version: TlsVersion,
    pub client_auth: Option<ClientAuth>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerCertificate {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// `None`: the certificate's DNS SANs, read when the proxy loads it.
    pub server_names: Option<Vec<SniName>>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientAuth {
    pub ca: PathBuf,
    pub required: bool,
    /// Empty: no SAN check beyond the CA.
    pub allowed_sans: Vec<SanPattern>,
}

impl ClientAuth {
    /// True when the SANs of a (CA-verified) client certificate are acceptable: the list is
    /// empty, or one URI SAN or DNS SAN matches one pattern.
    pub fn sans_allowed<'a>(
        &self,
        uris: impl IntoIterator<Item = &'a str>,
        dns_names: impl IntoIterator<Item = &'a str>,
    ) -> bool {
        if self.allowed_sans.is_empty() {
            return true;
        }
        uris.into_iter()
            .any(|u| self.allowed_sans.iter().any(|p| p.matches_uri(u)))
            || dns_names
                .into_iter()
                .any(|d| self.allowed_sans.iter().any(|p| p.matches_dns(d)))
    }
}

/// Validated cluster TLS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterTls {
    pub ca: PathBuf,
    /// A DNS name (lower-cased) or an IP address; `None`: derive it from the endpoint.
    pub server_name: Option<String>,
    pub client_identity: Option<ClientIdentity>,
    /// `None`: offer what the cluster's protocol speaks.
    pub alpn: Option<Vec<AlpnProtocol>>,
    pub min_version: TlsVersion,
}

/// A certificate chain and its key, presented to an upstream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientIdentity {
    pub cert: PathBuf,
    pub key: PathBuf,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AlpnProtocol {
    H2,
    Http11,
}

impl AlpnProtocol {
    /// The ALPN protocol ID on the wire.
    pub fn as_bytes(self) -> &'static [u8] {
        match self {
            Self::H2 => b"h2",
            Self::Http11 => b"http/1.1",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        match s {
            "h2" => Some(Self::H2),
            "http/1.1" => Some(Self::Http11),
            _ => None,
        }
    }
}

impl fmt::Display for AlpnProtocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::H2 => "h2",
            Self::Http11 => "http/1.1",
        })
    }
}

/// The lowest TLS version accepted; the highest is always 1.3.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub enum TlsVersion {
    #[default]
    Tls12,
    Tls13,
}

impl fmt::Display for TlsVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Tls12 => "1.2",
            Self::Tls13 => "1.3",
        })
    }
}

/// A name a server certificate answers to in SNI.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum SniName {
    /// `api.example.com`, lower-cased.
    Exact(String),
    /// `*.example.com` stored as `example.com`: matches exactly one more label
    /// (`a.example.com`, not `a.b.example.com` nor `example.com`), as certificate
    /// verification does.
    Wildcard(String),
}

impl SniName {
    /// Parses `name` or `*.suffix`. Used for `server_names` and, by the proxy, for the DNS
    /// SANs of a certificate.
    pub fn parse(s: &str) -> Result<Self, String> {
        let lower = s.to_ascii_lowercase();
        if lower.parse::<IpAddr>().is_ok() {
            return Err(format!(
                "{s:?} is an IP address; SNI carries only DNS names (clients connecting by IP get the first certificate)"
            ));
        }
        let (wildcard, name) = match lower.strip_prefix("*.") {
            Some(rest) => (true, rest),
            None => (false, lower.as_str()),
        };
        if !is_dns_name(name) {
            return Err(format!(
                "invalid server name {s:?}: use a DNS name or \"*.suffix\""
            ));
        }
        Ok(if wildcard {
            Self::Wildcard(name.to_owned())
        } else {
            Self::Exact(name.to_owned())
        })
    }
}

impl fmt::Display for SniName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Exact(n) => f.write_str(n),
            Self::Wildcard(s) => write!(f, "*.{s}"),
        }
    }
}

/// A pattern for a client certificate's subject alternative names. URI patterns (those with
/// `://`) match only URI SANs, byte for byte; DNS patterns match only DNS SANs, ignoring
/// ASCII case.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum SanPattern {
    /// `spiffe://cluster.local/ns/prod/sa/web`: this URI.
    UriExact(String),
    /// `spiffe://cluster.local/ns/prod/*` stored without the `*`: URIs that start with it.
    UriPrefix(String),
    /// `db.internal`, lower-cased: this DNS name.
    DnsExact(String),
    /// `*.internal` stored as `.internal`: DNS names that end with it, at any depth.
    DnsSuffix(String),
}

impl SanPattern {
    pub fn parse(s: &str) -> Result<Self, String> {
        if s == "*" {
            return Err(
                "\"*\" alone is not a pattern; omit allowed_sans to accept any certificate signed by the CA"
                    .to_owned(),
            );
        }
        if s.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(format!("invalid SAN pattern {s:?}: contains whitespace"));
        }
        if let Some((scheme, rest)) = s.split_once("://") {
            let valid_scheme = scheme
                .chars()
                .next()
                .is_some_and(|c| c.is_ascii_alphabetic())
                && scheme
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c));
            if !valid_scheme {
                return Err(format!("invalid SAN pattern {s:?}: bad URI scheme"));
            }
            return match rest.find('*') {
                None if rest.is_empty() => {
                    Err(format!("invalid SAN pattern {s:?}: nothing after \"://\""))
                }
                None => Ok(Self::UriExact(s.to_owned())),
                Some(i) if i + 1 == rest.len() => Ok(Self::UriPrefix(s[..s.len() - 1].to_owned())),
                Some(_) => Err(format!(
                    "invalid SAN pattern {s:?}: '*' is allowed only at the end of a URI pattern"
                )),
            };
        }
        let lower = s.to_ascii_lowercase();
        let (suffix, name) = match lower.strip_prefix("*.") {
            Some(rest) => (true, rest),
            None => (false, lower.as_str()),
        };
        if !is_dns_name(name) {
            return Err(format!(
                "invalid SAN pattern {s:?}: use a URI (\"spiffe://td/path\", optionally ending in '*'), a DNS name, or \"*.suffix\""
            ));
        }
        Ok(if suffix {
            Self::DnsSuffix(format!(".{name}"))
        } else {
            Self::DnsExact(name.to_owned())
        })
    }

    pub fn matches_uri(&self, uri: &str) -> bool {
        match self {
            Self::UriExact(u) => uri == u,
            Self::UriPrefix(p) => uri.starts_with(p.as_str()),
            Self::DnsExact(_) | Self::DnsSuffix(_) => false,
        }
    }

    pub fn matches_dns(&self, name: &str) -> bool {
        match self {
            Self::DnsExact(n) => name.eq_ignore_ascii_case(n),
            Self::DnsSuffix(s) => {
                name.len() > s.len()
                    && name
                        .get(name.len() - s.len()..)
                        .is_some_and(|tail| tail.eq_ignore_ascii_case(s))
            }
            Self::UriExact(_) | Self::UriPrefix(_) => false,
        }
    }
}

impl fmt::Display for SanPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::UriExact(s) | Self::DnsExact(s) => f.write_str(s),
            Self::UriPrefix(p) => write!(f, "{p}*"),
            Self::DnsSuffix(s) => write!(f, "*{s}"),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Validation

struct Errors(Vec<FieldError>);

impl Errors {
    fn err(&mut self, path: impl Into<String>, rule: impl Into<String>) {
        self.0.push(FieldError {
            path: path.into(),
            rule: rule.into(),
        });
    }

    /// A path that must name a file this process can open for reading.
    fn readable_file(&mut self, path: &str, value: &str) -> Option<PathBuf> {
        readable_file(value)
            .map_err(|rule| self.err(path, rule))
            .ok()
    }

    fn alpn(&mut self, path: &str, raw: &[String]) -> Vec<AlpnProtocol> {
        if raw.is_empty() {
            self.err(
                path,
                "must list at least one protocol (h2, http/1.1); omit it for the default",
            );
        }
        let mut out = Vec::with_capacity(raw.len());
        for (i, p) in raw.iter().enumerate() {
            match AlpnProtocol::parse(p) {
                Some(a) if out.contains(&a) => {
                    self.err(format!("{path}[{i}]"), format!("duplicate protocol {p:?}"));
                }
                Some(a) => out.push(a),
                None => self.err(
                    format!("{path}[{i}]"),
                    format!("unknown protocol {p:?}; expected h2 or http/1.1"),
                ),
            }
        }
        out
    }

    fn min_version(&mut self, path: &str, raw: Option<&str>) -> TlsVersion {
        match raw {
            None | Some("1.2") => TlsVersion::Tls12,
            Some("1.3") => TlsVersion::Tls13,
            Some(v @ ("1.0" | "1.1")) => {
                self.err(
                    path,
                    format!("TLS {v} is not allowed; the minimum is \"1.2\""),
                );
                TlsVersion::Tls12
            }
            Some(v) => {
                self.err(
                    path,
                    format!("unknown version {v:?}; expected \"1.2\" or \"1.3\""),
                );
                TlsVersion::Tls12
            }
        }
    }

    /// The `server_names` of `certificates[index]`. `claimed` maps each name taken so far to
    /// the certificate that took it; a name may be served by one certificate only.
    fn server_names(
        &mut self,
        cpath: &str,
        names: &[String],
        index: usize,
        claimed: &mut Vec<(SniName, usize)>,
    ) -> Vec<SniName> {
        if names.is_empty() {
            self.err(
                format!("{cpath}.server_names"),
                "must list at least one name; omit it to use the certificate's DNS names",
            );
        }
        names
            .iter()
            .enumerate()
            .filter_map(|(j, n)| {
                let npath = format!("{cpath}.server_names[{j}]");
                let name = SniName::parse(n)
                    .map_err(|rule| self.err(&npath, rule))
                    .ok()?;
                if let Some((_, other)) = claimed.iter().find(|(c, _)| *c == name) {
                    self.err(
                        npath,
                        format!("{name} is already served by certificates[{other}]"),
                    );
                    return None;
                }
                claimed.push((name.clone(), index));
                Some(name)
            })
            .collect()
    }

    fn client_auth(&mut self, apath: &str, a: &RawClientAuth) -> ClientAuth {
        let ca = self.readable_file(&format!("{apath}.ca"), &a.ca);
        let allowed_sans = a
            .allowed_sans
            .iter()
            .enumerate()
            .filter_map(|(i, p)| {
                SanPattern::parse(p)
                    .map_err(|rule| self.err(format!("{apath}.allowed_sans[{i}]"), rule))
                    .ok()
            })
            .collect();
        ClientAuth {
            ca: ca.unwrap_or_default(),
            required: a.required.unwrap_or(true),
            allowed_sans,
        }
    }

    fn finish<T>(self, value: T) -> (Option<T>, Vec<FieldError>) {
        if self.0.is_empty() {
            (Some(value), self.0)
        } else {
            (None, self.0)
        }
    }
}

/// Checks that `value` names a file this process can open for reading (not a directory);
/// the error is the rule broken, for a [`FieldError`].
pub(crate) fn readable_file(value: &str) -> Result<PathBuf, String> {
    if value.is_empty() {
        return Err("must name a file".to_owned());
    }
    let file = PathBuf::from(value);
    match std::fs::File::open(&file).and_then(|f| f.metadata()) {
        Ok(m) if m.is_dir() => Err(format!("cannot read {value:?}: is a directory")),
        Ok(_) => Ok(file),
        Err(e) => Err(format!("cannot read {value:?}: {}", io_reason(&e))),
    }
}

/// `io::Error`'s message without the trailing " (os error N)".
fn io_reason(e: &std::io::Error) -> String {
    let s = e.to_string();
    match s.rfind(" (os error ") {
        Some(i) if s.ends_with(')') => s[..i].to_owned(),
        _ => s,
    }
}

/// Letters, digits, `-` and `_` in dot-separated labels of 1 to 63 bytes; 253 bytes at most.
fn is_dns_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

/// Validates a listener's `tls:` block. `path` is where it sits, e.g. `listeners[0].tls`.
/// Returns the validated value only when there is no error; every error found is returned.
pub fn validate_listener_tls(
    path: &str,
    raw: &RawListenerTls,
) -> (Option<ListenerTls>, Vec<FieldError>) {
    let mut e = Errors(Vec::new());
    if raw.certificates.is_empty() {
        e.err(
            format!("{path}.certificates"),
            "must list at least one certificate",
        );
    }
    // Name → index of the certificate that claimed it first.
    let mut claimed: Vec<(SniName, usize)> = Vec::new();
    let certificates = raw
        .certificates
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let cpath = format!("{path}.certificates[{i}]");
            let cert = e.readable_file(&format!("{cpath}.cert"), &c.cert);
            let key = e.readable_file(&format!("{cpath}.key"), &c.key);
            let server_names = c
                .server_names
                .as_ref()
                .map(|names| e.server_names(&cpath, names, i, &mut claimed));
            ServerCertificate {
                cert: cert.unwrap_or_default(),
                key: key.unwrap_or_default(),
                server_names,
            }
        })
        .collect();
    let alpn = match &raw.alpn {
        Some(list) => e.alpn(&format!("{path}.alpn"), list),
        None => vec![AlpnProtocol::H2, AlpnProtocol::Http11],
    };
    let min_version = e.min_version(&format!("{path}.min_version"), raw.min_version.as_deref());
    let client_auth = raw
        .client_auth
        .as_ref()
        .map(|a| e.client_auth(&format!("{path}.client_auth"), a));
    e.finish(ListenerTls {
        certificates,
        alpn,
        min_version,
        client_auth,
    })
}

/// Validates a cluster's `tls:` block. `path` is where it sits, e.g. `clusters[2].tls`.
/// Returns the validated value only when there is no error; every error found is returned.
pub fn validate_cluster_tls(
    path: &str,
    raw: &RawClusterTls,
) -> (Option<ClusterTls>, Vec<FieldError>) {
    let mut e = Errors(Vec::new());
    let ca = e.readable_file(&format!("{path}.ca"), &raw.ca);
    let server_name = raw.server_name.as_ref().and_then(|n| {
        if n.parse::<IpAddr>().is_ok() {
            Some(n.clone())
        } else if is_dns_name(n) {
            Some(n.to_ascii_lowercase())
        } else {
            e.err(
                format!("{path}.server_name"),
                format!("invalid server name {n:?}: use a DNS name or an IP address"),
            );
            None
        }
    });
    let client_identity = match (&raw.client_cert, &raw.client_key) {
        (Some(cert), Some(key)) => {
            let cert = e.readable_file(&format!("{path}.client_cert"), cert);
            let key = e.readable_file(&format!("{path}.client_key"), key);
            cert.zip(key)
                .map(|(cert, key)| ClientIdentity { cert, key })
        }
        (None, None) => None,
        (Some(_), None) => {
            e.err(
                format!("{path}.client_key"),
                "required when client_cert is set",
            );
            None
        }
        (None, Some(_)) => {
            e.err(
                format!("{path}.client_cert"),
                "required when client_key is set",
            );
            None
        }
    };
    let alpn = raw
        .alpn
        .as_ref()
        .map(|list| e.alpn(&format!("{path}.alpn"), list));
    let min_version = e.min_version(&format!("{path}.min_version"), raw.min_version.as_deref());
    e.finish(ClusterTls {
        ca: ca.unwrap_or_default(),
        server_name,
        client_identity,
        alpn,
        min_version,
    })
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use proptest::prelude::*;

    use super::*;

    /// A temp dir with readable `a.pem`, `b.pem`, `c.pem` and a subdirectory `dir`.
    fn files() -> (tempfile::TempDir, impl Fn(&str) -> String) {
        let dir = tempfile::tempdir().unwrap();
        for f in ["a.pem", "b.pem", "c.pem"] {
            std::fs::write(dir.path().join(f), "x").unwrap();
        }
        std::fs::create_dir(dir.path().join("dir")).unwrap();
        let root = dir.path().to_path_buf();
        (dir, move |name: &str| {
            root.join(name).to_str().unwrap().to_owned()
        })
    }

    fn listener_yaml(yaml: &str) -> RawListenerTls {
        serde_saphyr::from_str(yaml).unwrap()
    }

    fn messages(errors: &[FieldError]) -> Vec<String> {
        errors.iter().map(ToString::to_string).collect()
    }

    #[test]
    fn minimal_listener_gets_defaults() {
        let (_dir, f) = files();
        let raw = listener_yaml(&format!(
            "certificates:\n  - {{ cert: {}, key: {} }}\n",
            f("a.pem"),
            f("b.pem")
        ));
        let (tls, errors) = validate_listener_tls("listeners[0].tls", &raw);
        assert_eq!(errors, vec![]);
        let tls = tls.unwrap();
        assert_eq!(tls.certificates.len(), 1);
        assert_eq!(tls.certificates[0].cert, Path::new(&f("a.pem")));
        assert_eq!(tls.certificates[0].server_names, None);
        assert_eq!(tls.alpn, vec![AlpnProtocol::H2, AlpnProtocol::Http11]);
        assert_eq!(tls.min_version, TlsVersion::Tls12);
        assert_eq!(tls.client_auth, None);
    }

    #[test]
    fn full_listener() {
        let (_dir, f) = files();
        let raw = listener_yaml(&format!(
            r#"
certificates:
  - {{ cert: {a}, key: {b} }}
  - cert: {a}
    key: {b}
    server_names: [API.example.com, "*.api.example.com"]
alpn: [http/1.1]
min_version: 1.3
client_auth:
  ca: {c}
  required: false
  allowed_sans: ["spiffe://cluster.local/ns/prod/*", "*.Internal", "spiffe://x/exact"]
"#,
            a = f("a.pem"),
            b = f("b.pem"),
            c = f("c.pem"),
        ));
        let (tls, errors) = validate_listener_tls("l", &raw);
        assert_eq!(errors, vec![]);
        let tls = tls.unwrap();
        assert_eq!(
            tls.certificates[1].server_names,
            Some(vec![
                SniName::Exact("api.example.com".into()),
                SniName::Wildcard("api.example.com".into()),
            ])
        );
        assert_eq!(tls.alpn, vec![AlpnProtocol::Http11]);
        assert_eq!(tls.min_version, TlsVersion::Tls13);
        let auth = tls.client_auth.unwrap();
        assert!(!auth.required);
        assert_eq!(
            auth.allowed_sans,
            vec![
                SanPattern::UriPrefix("spiffe://cluster.local/ns/prod/".into()),
                SanPattern::DnsSuffix(".internal".into()),
                SanPattern::UriExact("spiffe://x/exact".into()),
            ]
        );
    }

    #[test]
    fn client_auth_is_required_by_default() {
        let (_dir, f) = files();
        let raw = listener_yaml(&format!(
            "certificates: [{{ cert: {a}, key: {a} }}]\nclient_auth: {{ ca: {a} }}\n",
            a = f("a.pem")
        ));
        let tls = validate_listener_tls("l", &raw).0.unwrap();
        let auth = tls.client_auth.unwrap();
        assert!(auth.required);
        assert!(auth.allowed_sans.is_empty());
    }

    #[test]
    fn listener_reports_every_error_at_once() {
        let (_dir, f) = files();
        let raw = listener_yaml(&format!(
            r#"
certificates:
  - {{ cert: {a}, key: /nonexistent/key.pem, server_names: [a.example.com] }}
  - cert: {dir}
    key: ""
    server_names: ["a.EXAMPLE.com", "bad*name", "10.0.0.1", "*.ok.example.com"]
  - {{ cert: {a}, key: {b}, server_names: [] }}
alpn: [h2, h3, h2]
min_version: "1.1"
client_auth:
  ca: /nonexistent/ca.pem
  allowed_sans: ["*", "spiffe://td/*/sa", "a b", "://x", "*.ok", "x.*"]
"#,
            a = f("a.pem"),
            b = f("b.pem"),
            dir = f("dir"),
        ));
        let (tls, errors) = validate_listener_tls("listeners[3].tls", &raw);
        assert!(tls.is_none());
        let dir = f("dir");
        assert_eq!(
            messages(&errors),
            vec![
                "listeners[3].tls.certificates[0].key: cannot read \"/nonexistent/key.pem\": No such file or directory".to_owned(),
                format!("listeners[3].tls.certificates[1].cert: cannot read {dir:?}: is a directory"),
                "listeners[3].tls.certificates[1].key: must name a file".to_owned(),
                "listeners[3].tls.certificates[1].server_names[0]: a.example.com is already served by certificates[0]".to_owned(),
                "listeners[3].tls.certificates[1].server_names[1]: invalid server name \"bad*name\": use a DNS name or \"*.suffix\"".to_owned(),
                "listeners[3].tls.certificates[1].server_names[2]: \"10.0.0.1\" is an IP address; SNI carries only DNS names (clients connecting by IP get the first certificate)".to_owned(),
                "listeners[3].tls.certificates[2].server_names: must list at least one name; omit it to use the certificate's DNS names".to_owned(),
                "listeners[3].tls.alpn[1]: unknown protocol \"h3\"; expected h2 or http/1.1".to_owned(),
                "listeners[3].tls.alpn[2]: duplicate protocol \"h2\"".to_owned(),
                "listeners[3].tls.min_version: TLS 1.1 is not allowed; the minimum is \"1.2\"".to_owned(),
                "listeners[3].tls.client_auth.ca: cannot read \"/nonexistent/ca.pem\": No such file or directory".to_owned(),
                "listeners[3].tls.client_auth.allowed_sans[0]: \"*\" alone is not a pattern; omit allowed_sans to accept any certificate signed by the CA".to_owned(),
                "listeners[3].tls.client_auth.allowed_sans[1]: invalid SAN pattern \"spiffe://td/*/sa\": '*' is allowed only at the end of a URI pattern".to_owned(),
                "listeners[3].tls.client_auth.allowed_sans[2]: invalid SAN pattern \"a b\": contains whitespace".to_owned(),
                "listeners[3].tls.client_auth.allowed_sans[3]: invalid SAN pattern \"://x\": bad URI scheme".to_owned(),
                "listeners[3].tls.client_auth.allowed_sans[5]: invalid SAN pattern \"x.*\": use a URI (\"spiffe://td/path\", optionally ending in '*'), a DNS name, or \"*.suffix\"".to_owned(),
            ]
        );
    }

    #[test]
    fn empty_certificate_list_and_unknown_version() {
        let raw = RawListenerTls {
            certificates: vec![],
            alpn: Some(vec![]),
            min_version: Some("TLSv1.3".into()),
            client_auth: None,
        };
        let (tls, errors) = validate_listener_tls("l.tls", &raw);
        assert!(tls.is_none());
        assert_eq!(
            messages(&errors),
            vec![
                "l.tls.certificates: must list at least one certificate",
                "l.tls.alpn: must list at least one protocol (h2, http/1.1); omit it for the default",
                "l.tls.min_version: unknown version \"TLSv1.3\"; expected \"1.2\" or \"1.3\"",
            ]
        );
    }

    #[test]
    fn unknown_fields_are_rejected() {
        let e = serde_saphyr::from_str::<RawListenerTls>("certificates: []\nciphers: [x]\n")
            .unwrap_err();
        assert!(e.to_string().contains("ciphers"), "{e}");
        let e = serde_saphyr::from_str::<RawClusterTls>("ca: x\nverify: false\n").unwrap_err();
        assert!(e.to_string().contains("verify"), "{e}");
        let e = serde_saphyr::from_str::<RawListenerTls>(
            "certificates: [{ cert: a, key: b, password: c }]\n",
        )
        .unwrap_err();
        assert!(e.to_string().contains("password"), "{e}");
    }

    #[test]
    fn raw_round_trips_through_yaml() {
        let raw = RawClusterTls {
            ca: "/ca.pem".into(),
            server_name: Some("api.internal".into()),
            client_cert: Some("/c.pem".into()),
            client_key: Some("/k.pem".into()),
            alpn: Some(vec!["h2".into()]),
            min_version: Some("1.3".into()),
        };
        let text = serde_saphyr::to_string(&raw).unwrap();
        assert_eq!(serde_saphyr::from_str::<RawClusterTls>(&text).unwrap(), raw);
    }

    #[test]
    fn cluster_minimal_and_full() {
        let (_dir, f) = files();
        let raw: RawClusterTls = serde_saphyr::from_str(&format!("ca: {}\n", f("a.pem"))).unwrap();
        let (tls, errors) = validate_cluster_tls("clusters[0].tls", &raw);
        assert_eq!(errors, vec![]);
        assert_eq!(
            tls.unwrap(),
            ClusterTls {
                ca: f("a.pem").into(),
                server_name: None,
                client_identity: None,
                alpn: None,
                min_version: TlsVersion::Tls12,
            }
        );

        let raw: RawClusterTls = serde_saphyr::from_str(&format!(
            "ca: {a}\nserver_name: API.Internal\nclient_cert: {b}\nclient_key: {c}\nalpn: [h2]\nmin_version: \"1.3\"\n",
            a = f("a.pem"),
            b = f("b.pem"),
            c = f("c.pem"),
        ))
        .unwrap();
        let tls = validate_cluster_tls("c", &raw).0.unwrap();
        assert_eq!(tls.server_name.as_deref(), Some("api.internal"));
        assert_eq!(
            tls.client_identity,
            Some(ClientIdentity {
                cert: f("b.pem").into(),
                key: f("c.pem").into(),
            })
        );
        assert_eq!(tls.alpn, Some(vec![AlpnProtocol::H2]));
        assert_eq!(tls.min_version, TlsVersion::Tls13);

        let raw = RawClusterTls {
            server_name: Some("::1".into()),
            ..raw
        };
        let tls = validate_cluster_tls("c", &raw).0.unwrap();
        assert_eq!(tls.server_name.as_deref(), Some("::1"));
    }

    #[test]
    fn cluster_reports_every_error_at_once() {
        let raw = RawClusterTls {
            ca: "/nonexistent/ca.pem".into(),
            server_name: Some("*.api.internal".into()),
            client_cert: Some("/nonexistent/c.pem".into()),
            client_key: None,
            alpn: Some(vec!["spdy/3".into()]),
            min_version: Some("1.0".into()),
        };
        let (tls, errors) = validate_cluster_tls("clusters[1].tls", &raw);
        assert!(tls.is_none());
        assert_eq!(
            messages(&errors),
            vec![
                "clusters[1].tls.ca: cannot read \"/nonexistent/ca.pem\": No such file or directory",
                "clusters[1].tls.server_name: invalid server name \"*.api.internal\": use a DNS name or an IP address",
                "clusters[1].tls.client_key: required when client_cert is set",
                "clusters[1].tls.alpn[0]: unknown protocol \"spdy/3\"; expected h2 or http/1.1",
                "clusters[1].tls.min_version: TLS 1.0 is not allowed; the minimum is \"1.2\"",
            ]
        );

        let raw = RawClusterTls {
            ca: String::new(),
            server_name: None,
            client_cert: None,
            client_key: Some("/k.pem".into()),
            alpn: None,
            min_version: None,
        };
        assert_eq!(
            messages(&validate_cluster_tls("c", &raw).1),
            vec![
                "c.ca: must name a file",
                "c.client_cert: required when client_key is set",
            ]
        );
    }

    #[test]
    fn both_client_files_are_checked() {
        let (_dir, f) = files();
        let raw = RawClusterTls {
            ca: f("a.pem"),
            server_name: None,
            client_cert: Some(f("missing-cert.pem")),
            client_key: Some(f("missing-key.pem")),
            alpn: None,
            min_version: None,
        };
        let errors = messages(&validate_cluster_tls("c", &raw).1);
        assert_eq!(errors.len(), 2, "{errors:?}");
        assert!(
            errors[0].starts_with("c.client_cert: cannot read"),
            "{errors:?}"
        );
        assert!(errors[0].contains("missing-cert.pem"), "{errors:?}");
        assert!(
            errors[1].starts_with("c.client_key: cannot read"),
            "{errors:?}"
        );
    }

    #[test]
    fn san_patterns_match() {
        let uri = SanPattern::parse("spiffe://cluster.local/ns/prod/*").unwrap();
        assert!(uri.matches_uri("spiffe://cluster.local/ns/prod/sa/web"));
        assert!(!uri.matches_uri("spiffe://cluster.local/ns/production/sa/web"));
        assert!(!uri.matches_uri("spiffe://cluster.local/ns/dev/sa/web"));
        assert!(!uri.matches_dns("spiffe://cluster.local/ns/prod/sa/web"));

        let exact = SanPattern::parse("spiffe://td/a").unwrap();
        assert!(exact.matches_uri("spiffe://td/a"));
        assert!(!exact.matches_uri("spiffe://td/A"));
        assert!(!exact.matches_uri("spiffe://td/ab"));

        let dns = SanPattern::parse("*.Internal").unwrap();
        assert!(dns.matches_dns("db.internal"));
        assert!(dns.matches_dns("a.b.INTERNAL"));
        assert!(!dns.matches_dns("internal"));
        assert!(!dns.matches_dns(".internal"));
        assert!(!dns.matches_dns("dbinternal"));
        // A URI SAN never satisfies a DNS pattern, even when its text ends the same way.
        assert!(!dns.matches_uri("spiffe://evil/x.internal"));

        let host = SanPattern::parse("db.internal").unwrap();
        assert!(host.matches_dns("DB.internal"));
        assert!(!host.matches_dns("x.db.internal"));
        assert_eq!(host.to_string(), "db.internal");
        assert_eq!(dns.to_string(), "*.internal");
        assert_eq!(uri.to_string(), "spiffe://cluster.local/ns/prod/*");
    }

    #[test]
    fn sans_allowed_checks_uris_and_dns_names() {
        let auth = ClientAuth {
            ca: PathBuf::new(),
            required: true,
            allowed_sans: vec![
                SanPattern::parse("spiffe://td/ns/prod/*").unwrap(),
                SanPattern::parse("*.internal").unwrap(),
            ],
        };
        assert!(auth.sans_allowed(["spiffe://td/ns/prod/sa/x"], []));
        assert!(auth.sans_allowed([], ["db.internal"]));
        assert!(auth.sans_allowed(["spiffe://td/ns/dev/sa/x"], ["db.internal"]));
        assert!(!auth.sans_allowed(["spiffe://td/ns/dev/sa/x"], ["db.example.com"]));
        assert!(!auth.sans_allowed([], []));
        let open = ClientAuth {
            allowed_sans: vec![],
            ..auth
        };
        assert!(open.sans_allowed([], []));
    }

    #[test]
    fn sni_names_parse() {
        assert_eq!(
            SniName::parse("*.Example.com"),
            Ok(SniName::Wildcard("example.com".into()))
        );
        assert_eq!(
            SniName::parse("a.example.com"),
            Ok(SniName::Exact("a.example.com".into()))
        );
        for bad in ["", "*", "*.", "a.*.com", "a..com", "::1", "a b", "a.com."] {
            assert!(SniName::parse(bad).is_err(), "{bad:?} should be rejected");
        }
    }

    proptest! {
        #[test]
        fn uri_prefix_matches_any_continuation(
            base in "spiffe://[a-z]{1,8}(/[a-z0-9]{1,8}){0,3}/",
            rest in "[a-zA-Z0-9/._-]{0,20}",
        ) {
            let p = SanPattern::parse(&format!("{base}*")).unwrap();
            let uri = format!("{base}{rest}");
            prop_assert!(p.matches_uri(&uri));
            prop_assert!(!p.matches_dns(&uri));
            // Dropping the last character of the prefix no longer matches.
            prop_assert!(!p.matches_uri(&base[..base.len() - 1]));
        }

        #[test]
        fn dns_suffix_matches_names_under_it_only(
            labels in proptest::collection::vec("[a-z0-9]{1,10}", 1..4),
            suffix in "[a-z]{1,10}\\.[a-z]{2,5}",
        ) {
            let p = SanPattern::parse(&format!("*.{suffix}")).unwrap();
            let name = format!("{}.{suffix}", labels.join("."));
            prop_assert!(p.matches_dns(&name));
            prop_assert!(p.matches_dns(&name.to_ascii_uppercase()));
            prop_assert!(!p.matches_dns(&suffix));
            let glued = format!("{}{suffix}", labels.join(""));
            prop_assert!(!p.matches_dns(&glued));
        }

        #[test]
        fn parse_never_panics(s in "\\PC{0,40}") {
            let _ = SanPattern::parse(&s);
            let _ = SniName::parse(&s);
        }
    }
}

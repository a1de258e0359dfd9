//! TLS building blocks: rustls configurations for listeners ([`server_config`]) and for
//! connections to upstreams ([`client_config`]), built from validated
//! [`rampart_config::tls`] settings on the ring provider.
//!
//! A listener picks its certificate by SNI (exact name, then `*.parent` wildcard, then the
//! first certificate), negotiates ALPN, and may require client certificates that chain to a CA
//! and whose URI or DNS SANs match an allow-list. Nothing here does IO beyond reading PEM
//! files when a configuration is built, and nothing here knows about HTTP: the caller runs
//! the handshake (e.g. `tokio_rustls::TlsAcceptor`) and then asks [`negotiated_h2`] which
//! protocol to serve. Build each configuration once per config version and share the `Arc`:
//! it holds the session caches that make resumption work.

use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, LazyLock};

use rampart_config::model::EndpointAddr;
use rampart_config::tls::{
    ClientAuth, ClusterTls, ListenerTls, SanPattern, ServerCertificate, SniName, TlsVersion,
};
use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::{CertifiedKey, SingleCertAndKey};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, DistinguishedName, InconsistentKeys,
    OtherError, RootCertStore, ServerConfig, SignatureScheme, SupportedProtocolVersion,
};
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::FromDer;

/// Why a TLS configuration could not be built. Each names the file and what is wrong with it.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid PEM in {}: {reason}", path.display())]
    Pem { path: PathBuf, reason: String },
    #[error(
        "no certificate found in {}; expected PEM \"-----BEGIN CERTIFICATE-----\" blocks{hint}",
        path.display()
    )]
    NoCertificate { path: PathBuf, hint: &'static str },
    #[error("no private key found in {}; {hint}", path.display())]
    NoPrivateKey { path: PathBuf, hint: &'static str },
    #[error("invalid certificate in {}: {reason}", path.display())]
    BadCertificate { path: PathBuf, reason: String },
    #[error("unusable private key in {}: {reason}", path.display())]
    BadKey { path: PathBuf, reason: String },
    #[error(
        "certificate {} does not match its key {}; check that the two files belong together",
        cert.display(),
        key.display()
    )]
    KeyMismatch { cert: PathBuf, key: PathBuf },
    #[error("no trusted root certificates found on this system ({0}); set a CA file")]
    NoSystemRoots(String),
    #[error(
        "certificate {} has no DNS names, so no client could select it by SNI; list server_names for it",
        path.display()
    )]
    NoServerNames { path: PathBuf },
    #[error("CA certificate #{index} in {} is unusable: {reason}", path.display())]
    BadCa {
        path: PathBuf,
        /// 1-based position in the bundle.
        index: usize,
        reason: String,
    },
    #[error("cannot build the client certificate verifier from {}: {reason}", path.display())]
    ClientVerifier { path: PathBuf, reason: String },
    #[error("invalid upstream server name {name:?}: use a DNS name or an IP address")]
    ServerName { name: String },
    #[error("no certificate configured: list at least one under tls.certificates")]
    NoCertificates,
    #[error("cannot build the TLS configuration: {0}")]
    Config(#[source] rustls::Error),
}

/// The one crypto provider: ring (see shared/DEPENDENCIES.md). Passed explicitly, so no
/// process-wide default has to be installed.
static PROVIDER: LazyLock<Arc<CryptoProvider>> =
    LazyLock::new(|| Arc::new(rustls::crypto::ring::default_provider()));

static TLS12_AND_13: [&SupportedProtocolVersion; 2] =
    [&rustls::version::TLS13, &rustls::version::TLS12];
static TLS13_ONLY: [&SupportedProtocolVersion; 1] = [&rustls::version::TLS13];

fn versions(min: TlsVersion) -> &'static [&'static SupportedProtocolVersion] {
    match min {
        TlsVersion::Tls12 => &TLS12_AND_13,
        TlsVersion::Tls13 => &TLS13_ONLY,
    }
}

/// Builds a listener's server configuration: SNI certificate selection, ALPN, protocol
/// versions and, when configured, client certificate authentication.
pub fn server_config(tls: &ListenerTls) -> Result<Arc<ServerConfig>, TlsError> {
    let provider = PROVIDER.clone();
    let resolver = SniResolver::load(&tls.certificates, &provider)?;
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(versions(tls.min_version))
        .map_err(TlsError::Config)?;
    let builder = match &tls.client_auth {
        None => builder.with_no_client_auth(),
        Some(auth) => builder.with_client_cert_verifier(client_verifier(auth, &provider)?),
    };
    let mut config = builder.with_cert_resolver(Arc::new(resolver));
    config.alpn_protocols = tls.alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
    Ok(Arc::new(config))
}

/// Builds the client configuration for a cluster's upstream connections. ALPN offers
/// `tls.alpn` when the cluster configures it, otherwise `alpn` (what the cluster's protocol
/// speaks, e.g. `[b"h2".to_vec()]`). The name to verify is chosen per connection; see
/// [`upstream_server_name`].
pub fn client_config(tls: &ClusterTls, alpn: &[Vec<u8>]) -> Result<Arc<ClientConfig>, TlsError> {
    let provider = PROVIDER.clone();
    let roots = root_store(&tls.ca)?;
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(versions(tls.min_version))
        .map_err(TlsError::Config)?
        .with_root_certificates(roots);
    let mut config = match &tls.client_identity {
        None => builder.with_no_client_auth(),
        Some(id) => {
            let key = certified_key(&id.cert, &id.key, &provider)?;
            builder.with_client_cert_resolver(Arc::new(SingleCertAndKey::from(key)))
        }
    };
    config.alpn_protocols = match &tls.alpn {
        Some(list) => list.iter().map(|p| p.as_bytes().to_vec()).collect(),
        None => alpn.to_vec(),
    };
    Ok(Arc::new(config))
}

/// The name sent in SNI and verified against the upstream's certificate: the configured
/// `server_name`, else the endpoint's DNS host, else its IP address (no SNI is sent for an
/// IP; the certificate must then carry it as an IP SAN).
pub fn upstream_server_name(
    tls: &ClusterTls,
    endpoint: &EndpointAddr,
) -> Result<ServerName<'static>, TlsError> {
    let name = match (&tls.server_name, endpoint) {
        (Some(name), _) | (None, EndpointAddr::Dns { host: name, .. }) => name,
        (None, EndpointAddr::Ip(addr)) => return Ok(ServerName::IpAddress(addr.ip().into())),
    };
    ServerName::try_from(name.clone()).map_err(|_| TlsError::ServerName { name: name.clone() })
}

/// True when the handshake chose HTTP/2 by ALPN.
pub fn negotiated_h2(conn: &rustls::ServerConnection) -> bool {
    conn.alpn_protocol() == Some(b"h2".as_slice())
}

/// The URI and DNS subject alternative names of the client's certificate, in certificate
/// order; empty when the client sent none. For logs and policy input: only meaningful when
/// the listener verifies client certificates.
pub fn peer_sans(conn: &rustls::ServerConnection) -> Vec<String> {
    conn.peer_certificates()
        .and_then(<[CertificateDer<'_>]>::first)
        .and_then(|cert| Sans::of(cert).ok())
        .map(|s| s.all)
        .unwrap_or_default()
}

// ---------------------------------------------------------------------------------------------
// PEM loading

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.to_owned(),
        source,
    })
}

fn pem_error(path: &Path, e: &pem::Error) -> TlsError {
    let reason = match e {
        pem::Error::MissingSectionEnd { end_marker } => format!(
            "missing \"-----END {}-----\" line",
            String::from_utf8_lossy(end_marker)
        ),
        pem::Error::IllegalSectionStart { line } => format!(
            "malformed line {:?}",
            String::from_utf8_lossy(line).trim_end()
        ),
        pem::Error::Base64Decode(why) => format!("bad base64 ({why})"),
        other => other.to_string(),
    };
    TlsError::Pem {
        path: path.to_owned(),
        reason,
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let bytes = read(path)?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem_error(path, &e))?;
    if certs.is_empty() {
        let hint = if contains(&bytes, b"PRIVATE KEY-----") {
            " (it holds a private key: are cert and key swapped?)"
        } else {
            ""
        };
        return Err(TlsError::NoCertificate {
            path: path.to_owned(),
            hint,
        });
    }
    Ok(certs)
}

fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let bytes = read(path)?;
    match PrivateKeyDer::from_pem_slice(&bytes) {
        Ok(key) => Ok(key),
        Err(pem::Error::NoItemsFound) => Err(TlsError::NoPrivateKey {
            path: path.to_owned(),
            hint: if contains(&bytes, b"ENCRYPTED PRIVATE KEY-----")
                || contains(&bytes, b"Proc-Type: 4,ENCRYPTED")
            {
                "the key is encrypted: store it decrypted (e.g. `openssl pkey -in KEY -out PLAIN`) with tight file permissions"
            } else if contains(&bytes, b"-----BEGIN CERTIFICATE-----") {
                "it holds a certificate: are cert and key swapped?"
            } else {
                "expected a PEM \"PRIVATE KEY\", \"RSA PRIVATE KEY\" or \"EC PRIVATE KEY\" block"
            },
        }),
        Err(e) => Err(pem_error(path, &e)),
    }
}

/// A certificate chain and its private key, checked to belong together.
fn certified_key(
    cert: &Path,
    key: &Path,
    provider: &CryptoProvider,
) -> Result<CertifiedKey, TlsError> {
    let chain = load_certs(cert)?;
    let signing_key = provider
        .key_provider
        .load_private_key(load_key(key)?)
        .map_err(|e| TlsError::BadKey {
            path: key.to_owned(),
            reason: e.to_string(),
        })?;
    let certified = CertifiedKey::new(chain, signing_key);
    match certified.keys_match() {
        // Unknown: the key cannot tell its public half; the handshake will find out.
        Ok(()) | Err(rustls::Error::InconsistentKeys(InconsistentKeys::Unknown)) => Ok(certified),
        Err(rustls::Error::InconsistentKeys(InconsistentKeys::KeyMismatch)) => {
            Err(TlsError::KeyMismatch {
                cert: cert.to_owned(),
                key: key.to_owned(),
            })
        }
        Err(e) => Err(TlsError::BadCertificate {
            path: cert.to_owned(),
            reason: e.to_string(),
        }),
    }
}

/// A client configuration for fetching from an `https` URL (JWKS): `ca_file`'s certificates,
/// or the operating system's trusted roots, as the only trust anchors.
pub(crate) fn https_client_config(ca_file: Option<&Path>) -> Result<Arc<ClientConfig>, TlsError> {
    let roots = match ca_file {
        Some(path) => root_store(path)?,
        None => {
            let found = rustls_native_certs::load_native_certs();
            let mut roots = RootCertStore::empty();
            let (added, _) = roots.add_parsable_certificates(found.certs);
            if added == 0 {
                return Err(TlsError::NoSystemRoots(
                    found
                        .errors
                        .first()
                        .map_or_else(|| "none found".to_owned(), ToString::to_string),
                ));
            }
            roots
        }
    };
    let config = ClientConfig::builder_with_provider(PROVIDER.clone())
        .with_safe_default_protocol_versions()
        .map_err(TlsError::Config)?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

fn root_store(path: &Path) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for (i, cert) in load_certs(path)?.into_iter().enumerate() {
        roots.add(cert).map_err(|e| TlsError::BadCa {
            path: path.to_owned(),
            index: i + 1,
            reason: e.to_string(),
        })?;
    }
    Ok(roots)
}

/// URI and DNS SANs of one certificate.
struct Sans {
    uris: Vec<String>,
    dns: Vec<String>,
    /// Both kinds, in certificate order.
    all: Vec<String>,
}

impl Sans {
    fn of(cert: &CertificateDer<'_>) -> Result<Self, String> {
        let (_, parsed) = X509Certificate::from_der(cert.as_ref()).map_err(|e| e.to_string())?;
        let mut sans = Self {
            uris: Vec::new(),
            dns: Vec::new(),
            all: Vec::new(),
        };
        let ext = parsed
            .subject_alternative_name()
            .map_err(|e| e.to_string())?;
        for name in ext.iter().flat_map(|e| &e.value.general_names) {
            let (list, value) = match name {
                GeneralName::URI(u) => (&mut sans.uris, *u),
                GeneralName::DNSName(d) => (&mut sans.dns, *d),
                _ => continue,
            };
            list.push(value.to_owned());
            sans.all.push(value.to_owned());
        }
        Ok(sans)
    }
}

// ---------------------------------------------------------------------------------------------
// SNI

/// Picks a listener's certificate by SNI: exact name, then a `*.parent` wildcard for the
/// name's parent domain, then the first certificate (also used without SNI).
#[derive(Debug)]
struct SniResolver {
    exact: HashMap<String, Arc<CertifiedKey>>,
    /// Keyed by the parent domain: `*.example.com` is stored under `example.com`.
    wildcard: HashMap<String, Arc<CertifiedKey>>,
    default: Arc<CertifiedKey>,
}

impl SniResolver {
    fn load(certs: &[ServerCertificate], provider: &CryptoProvider) -> Result<Self, TlsError> {
        let mut exact = HashMap::new();
        let mut wildcard = HashMap::new();
        let mut default = None;
        for (i, c) in certs.iter().enumerate() {
            let key = Arc::new(certified_key(&c.cert, &c.key, provider)?);
            let names = match &c.server_names {
                Some(names) => names.clone(),
                None => dns_names(&c.cert, &key)?,
            };
            if names.is_empty() && i > 0 {
                return Err(TlsError::NoServerNames {
                    path: c.cert.clone(),
                });
            }
            // The first certificate to claim a name keeps it.
            for name in names {
                let table = match &name {
                    SniName::Exact(_) => &mut exact,
                    SniName::Wildcard(_) => &mut wildcard,
                };
                let (SniName::Exact(n) | SniName::Wildcard(n)) = name;
                table.entry(n).or_insert_with(|| key.clone());
            }
            default.get_or_insert(key);
        }
        // Validation guarantees at least one certificate; an empty list is still an error here.
        let default = default.ok_or(TlsError::NoCertificates)?;
        Ok(Self {
            exact,
            wildcard,
            default,
        })
    }

    fn lookup(&self, sni: Option<&str>) -> &Arc<CertifiedKey> {
        let Some(name) = sni else {
            return &self.default;
        };
        let name = name.strip_suffix('.').unwrap_or(name);
        let name: Cow<'_, str> = if name.bytes().any(|b| b.is_ascii_uppercase()) {
            Cow::Owned(name.to_ascii_lowercase())
        } else {
            Cow::Borrowed(name)
        };
        if let Some(key) = self.exact.get(name.as_ref()) {
            return key;
        }
        name.split_once('.')
            .and_then(|(_, parent)| self.wildcard.get(parent))
            .unwrap_or(&self.default)
    }
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.lookup(hello.server_name()).clone())
    }
}

/// The DNS SANs of a certificate as SNI names; names that are not valid SNI names are skipped.
fn dns_names(path: &Path, key: &CertifiedKey) -> Result<Vec<SniName>, TlsError> {
    let end_entity = key
        .end_entity_cert()
        .map_err(|e| TlsError::BadCertificate {
            path: path.to_owned(),
            reason: e.to_string(),
        })?;
    let sans = Sans::of(end_entity).map_err(|reason| TlsError::BadCertificate {
        path: path.to_owned(),
        reason,
    })?;
    Ok(sans
        .dns
        .iter()
        .filter_map(|d| SniName::parse(d).ok())
        .collect())
}

// ---------------------------------------------------------------------------------------------
// Client certificates

fn client_verifier(
    auth: &ClientAuth,
    provider: &Arc<CryptoProvider>,
) -> Result<Arc<dyn ClientCertVerifier>, TlsError> {
    let roots = Arc::new(root_store(&auth.ca)?);
    let mut builder = WebPkiClientVerifier::builder_with_provider(roots, provider.clone());
    if !auth.required {
        builder = builder.allow_unauthenticated();
    }
    let webpki = builder.build().map_err(|e| TlsError::ClientVerifier {
        path: auth.ca.clone(),
        reason: e.to_string(),
    })?;
    if auth.allowed_sans.is_empty() {
        return Ok(webpki);
    }
    Ok(Arc::new(SanAllowList {
        inner: webpki,
        auth: auth.clone(),
    }))
}

/// Why a client certificate that chains to the CA was still rejected. Reaches the acceptor's
/// error as `rustls::Error::Other`; the client sees a `handshake_failure` alert.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SanNotAllowed {
    /// The certificate's URI and DNS SANs.
    pub presented: Vec<String>,
    /// The listener's `allowed_sans`, as written.
    pub allowed: Vec<String>,
}

impl fmt::Display for SanNotAllowed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "client certificate rejected: none of its URI/DNS SANs {:?} matches allowed_sans {:?}",
            self.presented, self.allowed
        )
    }
}

impl std::error::Error for SanNotAllowed {}

/// The WebPKI verifier, then the SAN allow-list on the end-entity certificate.
#[derive(Debug)]
struct SanAllowList {
    inner: Arc<dyn ClientCertVerifier>,
    auth: ClientAuth,
}

impl ClientCertVerifier for SanAllowList {
    fn offer_client_auth(&self) -> bool {
        self.inner.offer_client_auth()
    }

    fn client_auth_mandatory(&self) -> bool {
        self.inner.client_auth_mandatory()
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let verified = self
            .inner
            .verify_client_cert(end_entity, intermediates, now)?;
        let sans = Sans::of(end_entity)
            .map_err(|_| rustls::Error::InvalidCertificate(CertificateError::BadEncoding))?;
        let uris = sans.uris.iter().map(String::as_str);
        let dns = sans.dns.iter().map(String::as_str);
        if self.auth.sans_allowed(uris, dns) {
            Ok(verified)
        } else {
            Err(rustls::Error::Other(OtherError(Arc::new(SanNotAllowed {
                presented: sans.all,
                allowed: self
                    .auth
                    .allowed_sans
                    .iter()
                    .map(SanPattern::to_string)
                    .collect(),
            }))))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }

    fn requires_raw_public_keys(&self) -> bool {
        self.inner.requires_raw_public_keys()
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;
    use std::time::Duration;

    use rampart_config::tls::{AlpnProtocol, ClientIdentity};
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
        KeyPair, KeyUsagePurpose, SanType,
    };
    use rustls::ProtocolVersion;
    use rustls::client::danger::{ServerCertVerified, ServerCertVerifier};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};
    use tokio_rustls::{TlsAcceptor, TlsConnector};

    use super::*;

    /// Certificates generated for one test, written to a temp dir.
    struct Pki {
        dir: tempfile::TempDir,
    }

    type Ca = Issuer<'static, KeyPair>;

    impl Pki {
        fn new() -> Self {
            Self {
                dir: tempfile::tempdir().unwrap(),
            }
        }

        fn write(&self, name: &str, contents: &str) -> PathBuf {
            let path = self.dir.path().join(name);
            std::fs::write(&path, contents).unwrap();
            path
        }

        fn path(&self, name: &str) -> PathBuf {
            self.dir.path().join(name)
        }

        /// A self-signed CA, written to `{name}.pem`.
        fn ca(&self, name: &str) -> Ca {
            let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
            params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            params.distinguished_name.push(DnType::CommonName, name);
            params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
            let key = KeyPair::generate().unwrap();
            let cert = params.self_signed(&key).unwrap();
            self.write(&format!("{name}.pem"), &cert.pem());
            Issuer::new(params, key)
        }

        /// A certificate for servers and clients signed by `ca`, written to `{name}.pem` and
        /// `{name}.key`. SANs with `://` are URIs, IP addresses are IP SANs, the rest DNS names.
        fn leaf(&self, ca: &Ca, name: &str, sans: &[&str]) -> (PathBuf, PathBuf) {
            let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
            params.distinguished_name.push(DnType::CommonName, name);
            params.subject_alt_names = sans
                .iter()
                .map(|s| {
                    if s.contains("://") {
                        SanType::URI((*s).try_into().unwrap())
                    } else if let Ok(ip) = s.parse() {
                        SanType::IpAddress(ip)
                    } else {
                        SanType::DnsName((*s).try_into().unwrap())
                    }
                })
                .collect();
            params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
            params.extended_key_usages = vec![
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ];
            let key = KeyPair::generate().unwrap();
            let cert = params.signed_by(&key, ca).unwrap();
            (
                self.write(&format!("{name}.pem"), &cert.pem()),
                self.write(&format!("{name}.key"), &key.serialize_pem()),
            )
        }
    }

    fn cert(files: (PathBuf, PathBuf), names: Option<&[&str]>) -> ServerCertificate {
        ServerCertificate {
            cert: files.0,
            key: files.1,
            server_names: names.map(|n| n.iter().map(|s| SniName::parse(s).unwrap()).collect()),
        }
    }

    fn listener(certificates: Vec<ServerCertificate>) -> ListenerTls {
        ListenerTls {
            certificates,
            alpn: vec![AlpnProtocol::H2, AlpnProtocol::Http11],
            min_version: TlsVersion::Tls12,
            client_auth: None,
        }
    }

    fn cluster(ca: PathBuf) -> ClusterTls {
        ClusterTls {
            ca,
            server_name: None,
            client_identity: None,
            alpn: None,
            min_version: TlsVersion::Tls12,
        }
    }

    /// Accepts any server certificate, so a test can look at which one was served.
    #[derive(Debug)]
    struct AcceptAnyServerCert;

    impl ServerCertVerifier for AcceptAnyServerCert {
        fn verify_server_cert(
            &self,
            _: &CertificateDer<'_>,
            _: &[CertificateDer<'_>],
            _: &ServerName<'_>,
            _: &[u8],
            _: UnixTime,
        ) -> Result<ServerCertVerified, rustls::Error> {
            Ok(ServerCertVerified::assertion())
        }

        fn verify_tls12_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls12_signature(
                message,
                cert,
                dss,
                &PROVIDER.signature_verification_algorithms,
            )
        }

        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls13_signature(
                message,
                cert,
                dss,
                &PROVIDER.signature_verification_algorithms,
            )
        }

        fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
            PROVIDER
                .signature_verification_algorithms
                .supported_schemes()
        }
    }

    fn trusting_client(versions: &[&'static SupportedProtocolVersion]) -> ClientConfig {
        ClientConfig::builder_with_provider(PROVIDER.clone())
            .with_protocol_versions(versions)
            .unwrap()
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAnyServerCert))
            .with_no_client_auth()
    }

    #[derive(Debug)]
    struct ServerSide {
        h2: bool,
        alpn: Option<Vec<u8>>,
        peer_sans: Vec<String>,
        version: Option<ProtocolVersion>,
    }

    #[derive(Debug)]
    struct ClientSide {
        /// URI and DNS SANs of the certificate the server presented.
        served: Vec<String>,
        alpn: Option<Vec<u8>>,
    }

    /// One connection over loopback: the server accepts, writes "ok" and closes; the client
    /// connects and reads to the end. Each side's error is its message.
    async fn handshake(
        server: Arc<ServerConfig>,
        client: Arc<ClientConfig>,
        name: ServerName<'static>,
    ) -> (Result<ServerSide, String>, Result<ClientSide, String>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr: SocketAddr = listener.local_addr().unwrap();
        let serve = async move {
            let (tcp, _) = listener.accept().await.map_err(|e| e.to_string())?;
            let mut tls = TlsAcceptor::from(server)
                .accept(tcp)
                .await
                .map_err(|e| e.to_string())?;
            let conn = tls.get_ref().1;
            let side = ServerSide {
                h2: negotiated_h2(conn),
                alpn: conn.alpn_protocol().map(<[u8]>::to_vec),
                peer_sans: peer_sans(conn),
                version: conn.protocol_version(),
            };
            tls.write_all(b"ok").await.map_err(|e| e.to_string())?;
            tls.shutdown().await.map_err(|e| e.to_string())?;
            Ok(side)
        };
        let connect = async move {
            let tcp = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
            let mut tls = TlsConnector::from(client)
                .connect(name, tcp)
                .await
                .map_err(|e| e.to_string())?;
            let conn = tls.get_ref().1;
            let side = ClientSide {
                served: conn
                    .peer_certificates()
                    .and_then(<[CertificateDer<'_>]>::first)
                    .map(|c| Sans::of(c).unwrap().all)
                    .unwrap_or_default(),
                alpn: conn.alpn_protocol().map(<[u8]>::to_vec),
            };
            let mut buf = Vec::new();
            // In TLS 1.3 a rejected client certificate shows up here, after the handshake.
            tls.read_to_end(&mut buf).await.map_err(|e| e.to_string())?;
            if buf != b"ok" {
                return Err(format!("server closed without answering ({buf:?})"));
            }
            Ok(side)
        };
        tokio::time::timeout(Duration::from_secs(20), async {
            tokio::join!(serve, connect)
        })
        .await
        .expect("handshake did not finish")
    }

    fn dns(name: &str) -> ServerName<'static> {
        ServerName::try_from(name.to_owned()).unwrap()
    }

    #[tokio::test]
    async fn sni_selects_exact_wildcard_and_default_certificates() {
        let pki = Pki::new();
        let ca = pki.ca("ca");
        let server = server_config(&listener(vec![
            cert(pki.leaf(&ca, "default", &["default.test"]), None),
            cert(
                pki.leaf(&ca, "exact", &["exact.test"]),
                Some(&["exact.test", "special.wild.test"]),
            ),
            cert(pki.leaf(&ca, "wild", &["*.wild.test"]), None),
        ]))
        .unwrap();
        let client = Arc::new(trusting_client(&[&rustls::version::TLS13]));
        for (sni, served) in [
            ("exact.test", "exact.test"),
            ("EXACT.test", "exact.test"),
            ("a.wild.test", "*.wild.test"),
            // An exact name beats a wildcard.
            ("special.wild.test", "exact.test"),
            // A wildcard covers one label only.
            ("a.b.wild.test", "default.test"),
            ("wild.test", "default.test"),
            ("unknown.test", "default.test"),
        ] {
            let (s, c) = handshake(server.clone(), client.clone(), dns(sni)).await;
            s.unwrap();
            assert_eq!(c.unwrap().served, vec![served.to_owned()], "SNI {sni}");
        }

        // No SNI: SNI disabled, and an IP address (which is never sent as SNI).
        let mut no_sni = trusting_client(&[&rustls::version::TLS13]);
        no_sni.enable_sni = false;
        let (_, c) = handshake(server.clone(), Arc::new(no_sni), dns("exact.test")).await;
        assert_eq!(c.unwrap().served, vec!["default.test".to_owned()]);
        let ip = ServerName::IpAddress(std::net::IpAddr::from([127, 0, 0, 1]).into());
        let (_, c) = handshake(server, client, ip).await;
        assert_eq!(c.unwrap().served, vec!["default.test".to_owned()]);
    }

    #[tokio::test]
    async fn alpn_negotiates_h2_when_offered_and_http1_otherwise() {
        let pki = Pki::new();
        let ca = pki.ca("ca");
        let server = server_config(&listener(vec![cert(
            pki.leaf(&ca, "server", &["server.test"]),
            None,
        )]))
        .unwrap();
        let upstream = cluster(pki.path("ca.pem"));

        let both = client_config(&upstream, &[b"h2".to_vec(), b"http/1.1".to_vec()]).unwrap();
        let (s, c) = handshake(server.clone(), both, dns("server.test")).await;
        let s = s.unwrap();
        assert!(s.h2);
        assert_eq!(s.alpn.as_deref(), Some(b"h2".as_slice()));
        assert_eq!(c.unwrap().alpn.as_deref(), Some(b"h2".as_slice()));

        let http1 = client_config(&upstream, &[b"http/1.1".to_vec()]).unwrap();
        let (s, c) = handshake(server.clone(), http1, dns("server.test")).await;
        let s = s.unwrap();
        assert!(!s.h2);
        assert_eq!(s.alpn.as_deref(), Some(b"http/1.1".as_slice()));
        assert_eq!(c.unwrap().alpn.as_deref(), Some(b"http/1.1".as_slice()));

        // A client that offers no ALPN gets none (and speaks HTTP/1.1 by default).
        let none = client_config(&upstream, &[]).unwrap();
        let (s, _) = handshake(server.clone(), none, dns("server.test")).await;
        let s = s.unwrap();
        assert!(!s.h2);
        assert_eq!(s.alpn, None);

        // The cluster's own alpn setting wins over the caller's default.
        let pinned = client_config(
            &ClusterTls {
                alpn: Some(vec![AlpnProtocol::Http11]),
                ..upstream
            },
            &[b"h2".to_vec()],
        )
        .unwrap();
        let (s, _) = handshake(server, pinned, dns("server.test")).await;
        assert!(!s.unwrap().h2);
    }

    /// A listener on `server.test` that verifies clients against `ca.pem`.
    fn mtls_server(pki: &Pki, ca: &Ca, required: bool, allowed: &[&str]) -> Arc<ServerConfig> {
        let mut tls = listener(vec![cert(pki.leaf(ca, "server", &["server.test"]), None)]);
        tls.client_auth = Some(ClientAuth {
            ca: pki.path("ca.pem"),
            required,
            allowed_sans: allowed
                .iter()
                .map(|p| SanPattern::parse(p).unwrap())
                .collect(),
        });
        server_config(&tls).unwrap()
    }

    /// A client that trusts `ca.pem` and presents `{name}.pem`, if given.
    fn mtls_client(pki: &Pki, name: Option<&str>) -> Arc<ClientConfig> {
        let tls = ClusterTls {
            client_identity: name.map(|n| ClientIdentity {
                cert: pki.path(&format!("{n}.pem")),
                key: pki.path(&format!("{n}.key")),
            }),
            ..cluster(pki.path("ca.pem"))
        };
        client_config(&tls, &[]).unwrap()
    }

    const PROD: &[&str] = &["spiffe://cluster.local/ns/prod/*", "*.internal"];

    #[tokio::test]
    async fn mtls_accepts_a_client_from_the_ca_with_an_allowed_san() {
        let pki = Pki::new();
        let ca = pki.ca("ca");
        let server = mtls_server(&pki, &ca, true, PROD);
        pki.leaf(&ca, "web", &["spiffe://cluster.local/ns/prod/sa/web"]);
        pki.leaf(&ca, "db", &["db.internal"]);

        let (s, c) = handshake(
            server.clone(),
            mtls_client(&pki, Some("web")),
            dns("server.test"),
        )
        .await;
        c.unwrap();
        assert_eq!(
            s.unwrap().peer_sans,
            vec!["spiffe://cluster.local/ns/prod/sa/web".to_owned()]
        );

        let (s, c) = handshake(
            server.clone(),
            mtls_client(&pki, Some("db")),
            dns("server.test"),
        )
        .await;
        c.unwrap();
        assert_eq!(s.unwrap().peer_sans, vec!["db.internal".to_owned()]);

        // TLS 1.2 takes the other signature path through the wrapper.
        let web = certified_key(&pki.path("web.pem"), &pki.path("web.key"), &PROVIDER).unwrap();
        let tls12 = ClientConfig::builder_with_provider(PROVIDER.clone())
            .with_protocol_versions(&[&rustls::version::TLS12])
            .unwrap()
            .with_root_certificates(root_store(&pki.path("ca.pem")).unwrap())
            .with_client_cert_resolver(Arc::new(SingleCertAndKey::from(web)));
        let (s, c) = handshake(server, Arc::new(tls12), dns("server.test")).await;
        c.unwrap();
        let s = s.unwrap();
        assert_eq!(s.version, Some(ProtocolVersion::TLSv1_2));
        assert_eq!(s.peer_sans.len(), 1);
    }

    #[tokio::test]
    async fn mtls_rejects_a_client_signed_by_another_ca() {
        let pki = Pki::new();
        let ca = pki.ca("ca");
        let other = pki.ca("other-ca");
        let server = mtls_server(&pki, &ca, true, PROD);
        pki.leaf(
            &other,
            "intruder",
            &["spiffe://cluster.local/ns/prod/sa/web"],
        );
        let (s, c) = handshake(
            server,
            mtls_client(&pki, Some("intruder")),
            dns("server.test"),
        )
        .await;
        let e = s.unwrap_err();
        assert!(e.contains("UnknownIssuer"), "{e}");
        assert!(c.is_err());
    }

    #[tokio::test]
    async fn mtls_rejects_a_client_whose_san_is_not_allowed() {
        let pki = Pki::new();
        let ca = pki.ca("ca");
        let server = mtls_server(&pki, &ca, true, PROD);
        pki.leaf(
            &ca,
            "dev",
            &["spiffe://cluster.local/ns/dev/sa/web", "web.example.com"],
        );
        let (s, c) = handshake(server, mtls_client(&pki, Some("dev")), dns("server.test")).await;
        let e = s.unwrap_err();
        assert!(
            e.contains(
                "client certificate rejected: none of its URI/DNS SANs [\"spiffe://cluster.local/ns/dev/sa/web\", \"web.example.com\"] matches allowed_sans [\"spiffe://cluster.local/ns/prod/*\", \"*.internal\"]"
            ),
            "{e}"
        );
        let e = c.unwrap_err();
        assert!(e.contains("HandshakeFailure"), "{e}");
    }

    #[tokio::test]
    async fn mtls_without_a_client_certificate() {
        let pki = Pki::new();
        let ca = pki.ca("ca");

        let required = mtls_server(&pki, &ca, true, PROD);
        let (s, c) = handshake(required, mtls_client(&pki, None), dns("server.test")).await;
        let e = s.unwrap_err();
        assert!(e.contains("peer sent no certificates"), "{e}");
        assert!(c.is_err());

        let optional = mtls_server(&pki, &ca, false, PROD);
        let (s, c) = handshake(
            optional.clone(),
            mtls_client(&pki, None),
            dns("server.test"),
        )
        .await;
        c.unwrap();
        assert_eq!(s.unwrap().peer_sans, Vec::<String>::new());

        // Optional does not mean unchecked: a presented certificate must still pass.
        pki.leaf(&ca, "dev", &["spiffe://cluster.local/ns/dev/sa/web"]);
        let (s, _) = handshake(optional, mtls_client(&pki, Some("dev")), dns("server.test")).await;
        assert!(s.is_err());
    }

    #[tokio::test]
    async fn tls13_only_server_rejects_a_tls12_only_client() {
        let pki = Pki::new();
        let ca = pki.ca("ca");
        let mut tls = listener(vec![cert(pki.leaf(&ca, "server", &["server.test"]), None)]);
        let tls12_client = Arc::new(trusting_client(&[&rustls::version::TLS12]));

        let (s, c) = handshake(
            server_config(&tls).unwrap(),
            tls12_client.clone(),
            dns("server.test"),
        )
        .await;
        assert_eq!(s.unwrap().version, Some(ProtocolVersion::TLSv1_2));
        c.unwrap();

        tls.min_version = TlsVersion::Tls13;
        let (s, c) = handshake(
            server_config(&tls).unwrap(),
            tls12_client,
            dns("server.test"),
        )
        .await;
        let e = s.unwrap_err();
        assert!(e.contains("peer is incompatible"), "{e}");
        assert!(c.is_err());
    }

    #[tokio::test]
    async fn client_config_verifies_the_upstream() {
        let pki = Pki::new();
        let ca = pki.ca("ca");
        let other = pki.ca("other-ca");
        let upstream = server_config(&listener(vec![cert(
            pki.leaf(&ca, "upstream", &["upstream.test", "127.0.0.1"]),
            None,
        )]))
        .unwrap();
        let ip = EndpointAddr::Ip("127.0.0.1:443".parse().unwrap());
        let host = EndpointAddr::Dns {
            host: "upstream.test".into(),
            port: 443,
        };
        let good = cluster(pki.path("ca.pem"));

        // Default names: the endpoint's host, or its IP.
        for endpoint in [&host, &ip] {
            let name = upstream_server_name(&good, endpoint).unwrap();
            let (s, c) =
                handshake(upstream.clone(), client_config(&good, &[]).unwrap(), name).await;
            s.unwrap();
            c.unwrap();
        }

        // Another CA.
        let untrusted = cluster(pki.path("other-ca.pem"));
        let name = upstream_server_name(&untrusted, &host).unwrap();
        let (_, c) = handshake(
            upstream.clone(),
            client_config(&untrusted, &[]).unwrap(),
            name,
        )
        .await;
        let e = c.unwrap_err();
        assert!(e.contains("UnknownIssuer"), "{e}");

        // A certificate from another CA on the upstream.
        let impostor = server_config(&listener(vec![cert(
            pki.leaf(&other, "impostor", &["upstream.test"]),
            None,
        )]))
        .unwrap();
        let name = upstream_server_name(&good, &host).unwrap();
        let (_, c) = handshake(impostor, client_config(&good, &[]).unwrap(), name).await;
        assert!(c.unwrap_err().contains("UnknownIssuer"));

        // A configured server_name the certificate does not carry.
        let wrong = ClusterTls {
            server_name: Some("wrong.test".into()),
            ..good.clone()
        };
        let name = upstream_server_name(&wrong, &ip).unwrap();
        assert_eq!(name, dns("wrong.test"));
        let (_, c) = handshake(upstream, client_config(&wrong, &[]).unwrap(), name).await;
        let e = c.unwrap_err();
        assert!(
            e.contains("certificate not valid for name \"wrong.test\""),
            "{e}"
        );
    }

    #[tokio::test]
    async fn client_config_presents_its_certificate_for_upstream_mtls() {
        let pki = Pki::new();
        let ca = pki.ca("ca");
        let server = mtls_server(&pki, &ca, true, &[]);
        pki.leaf(&ca, "proxy", &["spiffe://cluster.local/ns/edge/sa/rampart"]);
        let (s, c) = handshake(server, mtls_client(&pki, Some("proxy")), dns("server.test")).await;
        c.unwrap();
        assert_eq!(
            s.unwrap().peer_sans,
            vec!["spiffe://cluster.local/ns/edge/sa/rampart".to_owned()]
        );
    }

    #[test]
    fn upstream_server_name_rejects_what_rustls_cannot_use() {
        let tls = ClusterTls {
            server_name: Some("bad name".into()),
            ..cluster(PathBuf::from("/unused"))
        };
        let host = EndpointAddr::Dns {
            host: "a.test".into(),
            port: 1,
        };
        let e = upstream_server_name(&tls, &host).unwrap_err();
        assert_eq!(
            e.to_string(),
            "invalid upstream server name \"bad name\": use a DNS name or an IP address"
        );
    }

    fn cert_of(cert: &Path, key: &Path) -> ServerCertificate {
        ServerCertificate {
            cert: cert.to_owned(),
            key: key.to_owned(),
            server_names: None,
        }
    }

    fn err(result: Result<Arc<ServerConfig>, TlsError>) -> String {
        result.map(|_| ()).unwrap_err().to_string()
    }

    #[test]
    fn bad_files_give_clear_errors() {
        let pki = Pki::new();
        let ca = pki.ca("ca");
        let (a_cert, a_key) = pki.leaf(&ca, "a", &["a.test"]);
        let (b_cert, b_key) = pki.leaf(&ca, "b", &["b.test"]);
        let show = |p: &Path| p.display().to_string();
        let one = |cert: &Path, key: &Path| listener(vec![cert_of(cert, key)]);

        let missing = pki.path("missing.pem");
        assert_eq!(
            err(server_config(&one(&missing, &a_key))),
            format!(
                "cannot read {}: No such file or directory (os error 2)",
                show(&missing)
            )
        );
        assert_eq!(
            err(server_config(&one(&a_cert, &a_cert))),
            format!(
                "no private key found in {}; it holds a certificate: are cert and key swapped?",
                show(&a_cert)
            )
        );
        let empty = pki.write("empty.key", "");
        assert_eq!(
            err(server_config(&one(&a_cert, &empty))),
            format!(
                "no private key found in {}; expected a PEM \"PRIVATE KEY\", \"RSA PRIVATE KEY\" or \"EC PRIVATE KEY\" block",
                show(&empty)
            )
        );
        let encrypted = pki.write(
            "enc.key",
            "-----BEGIN ENCRYPTED PRIVATE KEY-----\nMIIB\n-----END ENCRYPTED PRIVATE KEY-----\n",
        );
        assert!(
            err(server_config(&one(&a_cert, &encrypted))).starts_with(&format!(
                "no private key found in {}; the key is encrypted",
                show(&encrypted)
            ))
        );
        assert_eq!(
            err(server_config(&one(&a_key, &a_key))),
            format!(
                "no certificate found in {}; expected PEM \"-----BEGIN CERTIFICATE-----\" blocks (it holds a private key: are cert and key swapped?)",
                show(&a_key)
            )
        );
        assert_eq!(
            err(server_config(&one(&a_cert, &b_key))),
            format!(
                "certificate {} does not match its key {}; check that the two files belong together",
                show(&a_cert),
                show(&b_key)
            )
        );
        let text = std::fs::read_to_string(&a_cert).unwrap();
        let truncated = pki.write("truncated.pem", &text[..text.len() / 2]);
        assert_eq!(
            err(server_config(&one(&truncated, &a_key))),
            format!(
                "invalid PEM in {}: missing \"-----END CERTIFICATE-----\" line",
                show(&truncated)
            )
        );
        let garbage = pki.write(
            "garbage.pem",
            "-----BEGIN CERTIFICATE-----\n!!not base64!!\n-----END CERTIFICATE-----\n",
        );
        assert!(
            err(server_config(&one(&garbage, &a_key)))
                .starts_with(&format!("invalid PEM in {}: bad base64", show(&garbage))),
        );
        let not_der = pki.write(
            "not-der.pem",
            "-----BEGIN CERTIFICATE-----\naGVsbG8=\n-----END CERTIFICATE-----\n",
        );
        assert!(
            err(server_config(&one(&not_der, &a_key)))
                .starts_with(&format!("invalid certificate in {}", show(&not_der))),
        );

        // A second certificate that no SNI name could select.
        let (ip_cert, ip_key) = pki.leaf(&ca, "ip-only", &["10.1.2.3"]);
        let tls = listener(vec![cert_of(&a_cert, &a_key), cert_of(&ip_cert, &ip_key)]);
        assert_eq!(
            err(server_config(&tls)),
            format!(
                "certificate {} has no DNS names, so no client could select it by SNI; list server_names for it",
                show(&ip_cert)
            )
        );
        // As the first (default) certificate it is fine.
        server_config(&listener(vec![cert_of(&ip_cert, &ip_key)])).unwrap();
        assert_eq!(
            err(server_config(&listener(vec![]))),
            "no certificate configured: list at least one under tls.certificates"
        );

        // Client authentication CA bundle without certificates.
        let mut tls = one(&a_cert, &a_key);
        tls.client_auth = Some(ClientAuth {
            ca: b_key.clone(),
            required: true,
            allowed_sans: vec![],
        });
        assert!(
            err(server_config(&tls))
                .starts_with(&format!("no certificate found in {}", show(&b_key)))
        );

        // Upstream side: CA bundle and client identity.
        let e = client_config(&cluster(missing.clone()), &[])
            .map(|_| ())
            .unwrap_err();
        assert!(
            e.to_string()
                .starts_with(&format!("cannot read {}", show(&missing))),
            "{e}"
        );
        let mismatched = ClusterTls {
            client_identity: Some(ClientIdentity {
                cert: b_cert.clone(),
                key: a_key.clone(),
            }),
            ..cluster(pki.path("ca.pem"))
        };
        let e = client_config(&mismatched, &[]).map(|_| ()).unwrap_err();
        assert!(matches!(e, TlsError::KeyMismatch { .. }), "{e}");
    }
}

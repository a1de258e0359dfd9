//! TLS on the client and peer ports: rustls on ring (tonic's `tls-ring`), configured with
//! etcd's flags. Client port: `--cert-file --key-file` serve TLS, `--trusted-ca-file` makes
//! client certificates checked when offered, `--client-cert-auth` requires one. Peer port:
//! the same with `--peer-*`; a node also presents its peer certificate when it connects to
//! other members and checks theirs against `--peer-trusted-ca-file`, so with
//! `--peer-client-cert-auth` only holders of a certificate from that CA take part in Raft
//! (the peer port carries raw Raft messages: this is what protects them).
//!
//! [`dev_certs`] makes a throw-away CA and certificates for local clusters and tests
//! (`rampart kv certs`).

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use tonic::transport::{Certificate, ClientTlsConfig, Identity, ServerTlsConfig};

/// One port's TLS files, as etcd's flags name them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    pub trusted_ca_file: Option<PathBuf>,
    /// Require a client certificate signed by `trusted_ca_file`.
    pub client_cert_auth: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {what} {path}: {source}")]
    Read {
        what: &'static str,
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "client certificate authentication needs a trusted CA file (--trusted-ca-file or --peer-trusted-ca-file)"
    )]
    NoTrustedCa,
    #[error("invalid TLS settings: {0}")]
    Config(String),
    #[error("cannot write {path}: {source}")]
    Write {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot generate certificates: {0}")]
    Generate(#[from] rcgen::Error),
}

fn read(what: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        what,
        path: path.display().to_string(),
        source,
    })
}

fn identity(f: &TlsFiles) -> Result<Identity, TlsError> {
    Ok(Identity::from_pem(
        read("certificate", &f.cert_file)?,
        read("key", &f.key_file)?,
    ))
}

/// The server side of a port.
pub fn server_config(f: &TlsFiles) -> Result<ServerTlsConfig, TlsError> {
    let mut c = ServerTlsConfig::new().identity(identity(f)?);
    match &f.trusted_ca_file {
        Some(ca) => {
            c = c
                .client_ca_root(Certificate::from_pem(read("trusted CA", ca)?))
                .client_auth_optional(!f.client_cert_auth);
        }
        None if f.client_cert_auth => return Err(TlsError::NoTrustedCa),
        None => {}
    }
    Ok(c)
}

/// A member's side when it connects to another member: it presents its own certificate and
/// checks the other's against the trusted CA (the system roots when none is given).
pub fn client_config(f: &TlsFiles) -> Result<ClientTlsConfig, TlsError> {
    let mut c = ClientTlsConfig::new().identity(identity(f)?);
    if let Some(ca) = &f.trusted_ca_file {
        c = c.ca_certificate(Certificate::from_pem(read("trusted CA", ca)?));
    }
    Ok(c)
}

/// A client's TLS (etcdctl's `--cacert`, and `--cert --key` when the store requires a
/// client certificate).
pub fn client_tls(
    ca: &Path,
    identity: Option<(&Path, &Path)>,
) -> Result<ClientTlsConfig, TlsError> {
    let mut c = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(read("CA", ca)?));
    if let Some((cert, key)) = identity {
        c = c.identity(Identity::from_pem(
            read("certificate", cert)?,
            read("key", key)?,
        ));
    }
    Ok(c)
}

fn write(path: &Path, text: &str, secret: bool) -> Result<(), TlsError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let err = |source| TlsError::Write {
        path: path.display().to_string(),
        source,
    };
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(if secret { 0o600 } else { 0o644 })
        .open(path)
        .map_err(err)?;
    f.write_all(text.as_bytes()).map_err(err)
}

/// A development CA (`ca.pem`, `ca-key.pem`) and, signed by it, a certificate per node
/// (`NAME.pem`, `NAME-key.pem`: server and client use, for `NAME`, `localhost`, 127.0.0.1
/// and ::1) plus `client.pem`/`client-key.pem` for etcdctl. Returns the files written.
pub fn dev_certs(dir: &Path, nodes: &[String]) -> Result<Vec<PathBuf>, TlsError> {
    std::fs::create_dir_all(dir).map_err(|source| TlsError::Write {
        path: dir.display().to_string(),
        source,
    })?;
    let mut written = Vec::new();
    let mut put = |name: &str, text: &str, secret: bool| -> Result<(), TlsError> {
        let path = dir.join(name);
        write(&path, text, secret)?;
        written.push(path);
        Ok(())
    };
    let mut ca = CertificateParams::new(Vec::<String>::new())?;
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(DnType::CommonName, "rampart-kv development CA");
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca_key = KeyPair::generate()?;
    let ca_cert = ca.self_signed(&ca_key)?;
    put("ca.pem", &ca_cert.pem(), false)?;
    put("ca-key.pem", &ca_key.serialize_pem(), true)?;
    let issuer = Issuer::new(ca, ca_key);
    for name in nodes.iter().map(String::as_str).chain(["client"]) {
        let sans: Vec<String> = vec![
            name.to_string(),
            "localhost".into(),
            "127.0.0.1".into(),
            "::1".into(),
        ];
        let mut leaf = CertificateParams::new(sans)?;
        leaf.distinguished_name.push(DnType::CommonName, name);
        leaf.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        leaf.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let key = KeyPair::generate()?;
        let cert = leaf.signed_by(&key, &issuer)?;
        put(&format!("{name}.pem"), &cert.pem(), false)?;
        put(&format!("{name}-key.pem"), &key.serialize_pem(), true)?;
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dev_certs_load_as_server_and_client_configs() {
        let dir = tempfile::tempdir().unwrap();
        let files = dev_certs(dir.path(), &["n1".into()]).unwrap();
        assert_eq!(files.len(), 6);
        let f = TlsFiles {
            cert_file: dir.path().join("n1.pem"),
            key_file: dir.path().join("n1-key.pem"),
            trusted_ca_file: Some(dir.path().join("ca.pem")),
            client_cert_auth: true,
        };
        server_config(&f).unwrap();
        client_config(&f).unwrap();
        let no_ca = TlsFiles {
            trusted_ca_file: None,
            ..f
        };
        assert!(matches!(server_config(&no_ca), Err(TlsError::NoTrustedCa)));
        let missing = TlsFiles {
            cert_file: dir.path().join("absent.pem"),
            ..no_ca
        };
        assert!(matches!(
            client_config(&missing),
            Err(TlsError::Read { .. })
        ));
    }
}

//! TLS through the gateway over real sockets, with certificates made at test time: listener
//! termination (SNI, ALPN h2/http1.1, mTLS with SAN rules), origination to TLS upstreams
//! (CA verification, SNI), and certificate reload without dropping connections.

mod common;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use common::*;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, pem::PemObject};
use tokio_rustls::TlsConnector;

type Ca = Issuer<'static, KeyPair>;

/// Certificates in a scratch directory.
struct Certs(tempfile::TempDir);

impl Certs {
    fn new() -> Self {
        Self(tempfile::tempdir().unwrap())
    }

    fn path(&self, name: &str) -> PathBuf {
        self.0.path().join(name)
    }

    fn ca(&self, name: &str) -> Ca {
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.distinguished_name.push(DnType::CommonName, name);
        p.key_usages = vec![KeyUsagePurpose::KeyCertSign];
        let key = KeyPair::generate().unwrap();
        std::fs::write(
            self.path(&format!("{name}.pem")),
            p.self_signed(&key).unwrap().pem(),
        )
        .unwrap();
        Issuer::new(p, key)
    }

    /// A leaf for `sans` (URIs contain `://`) written to `{name}.pem`/`{name}.key`.
    fn leaf(&self, ca: &Ca, name: &str, sans: &[&str]) {
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.distinguished_name.push(DnType::CommonName, name);
        p.subject_alt_names = sans
            .iter()
            .map(|s| {
                if s.contains("://") {
                    SanType::URI((*s).try_into().unwrap())
                } else {
                    SanType::DnsName((*s).try_into().unwrap())
                }
            })
            .collect();
        p.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let key = KeyPair::generate().unwrap();
        let cert = p.signed_by(&key, ca).unwrap();
        std::fs::write(self.path(&format!("{name}.pem")), cert.pem()).unwrap();
        std::fs::write(self.path(&format!("{name}.key")), key.serialize_pem()).unwrap();
    }

    fn p(&self, name: &str) -> String {
        self.path(name).display().to_string()
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A client config trusting `ca`, offering `alpn`, optionally presenting `identity`.
fn client(ca: &Path, alpn: &[&[u8]], identity: Option<(&Path, &Path)>) -> TlsConnector {
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(ca).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let b = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    let mut cfg = match identity {
        Some((cert, key)) => b
            .with_client_auth_cert(
                CertificateDer::pem_file_iter(cert)
                    .unwrap()
                    .map(Result::unwrap)
                    .collect(),
                PrivateKeyDer::from_pem_file(key).unwrap(),
            )
            .unwrap(),
        None => b.with_no_client_auth(),
    };
    cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    TlsConnector::from(Arc::new(cfg))
}

/// One GET over a fresh TLS connection with SNI `sni`; returns (ALPN, server cert DNS names,
/// response status, body) or the handshake/request error.
async fn tls_get(
    addr: SocketAddr,
    connector: &TlsConnector,
    sni: &str,
    path: &str,
) -> Result<(Option<Vec<u8>>, Vec<String>, u16, Bytes), String> {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let tls = connector
        .connect(ServerName::try_from(sni.to_owned()).unwrap(), tcp)
        .await
        .map_err(|e| e.to_string())?;
    let alpn = tls.get_ref().1.alpn_protocol().map(<[u8]>::to_vec);
    let names = served_names(tls.get_ref().1.peer_certificates().unwrap());
    let req = Request::get(format!("https://{sni}{path}"))
        .header("host", sni)
        .body(Full::new(Bytes::new()))
        .unwrap();
    let resp = if alpn.as_deref() == Some(b"h2") {
        let (mut s, c) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
                .await
                .map_err(|e| e.to_string())?;
        tokio::spawn(c);
        s.send_request(req).await.map_err(|e| e.to_string())?
    } else {
        let (mut s, c) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .map_err(|e| e.to_string())?;
        tokio::spawn(c);
        s.send_request(req).await.map_err(|e| e.to_string())?
    };
    let status = resp.status().as_u16();
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    Ok((alpn, names, status, body))
}

fn served_names(chain: &[CertificateDer<'_>]) -> Vec<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(&chain[0]).unwrap();
    cert.subject_alternative_name()
        .unwrap()
        .map(|san| {
            san.value
                .general_names
                .iter()
                .filter_map(|n| match n {
                    x509_parser::extensions::GeneralName::DNSName(d) => Some((*d).to_owned()),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default()
}

fn tls_listener_config(listener_tls: &str, routes: &str, clusters: &str) -> String {
    config(routes, clusters).replace(
        "    route_table: t\n",
        &format!("    route_table: t\n    tls:\n{listener_tls}"),
    )
}

#[tokio::test]
async fn terminates_tls_with_sni_and_alpn() {
    let certs = Certs::new();
    let ca = certs.ca("ca");
    certs.leaf(&ca, "default", &["default.test"]);
    certs.leaf(&ca, "api", &["api.test", "*.wild.test"]);
    let up = upstream("u").await;
    let tls = format!(
        "      certificates:\n        - {{ cert: \"{}\", key: \"{}\" }}\n        - {{ cert: \"{}\", key: \"{}\" }}\n",
        certs.p("default.pem"),
        certs.p("default.key"),
        certs.p("api.pem"),
        certs.p("api.key")
    );
    let tg = gateway(&tls_listener_config(
        &tls,
        "          - forward: { cluster: u }\n",
        &format!("  - {{ name: u, endpoints: [\"{}\"] }}\n", up.addr),
    ))
    .await;
    let h2_and_h1 = client(&certs.path("ca.pem"), &[b"h2", b"http/1.1"], None);
    let (alpn, names, status, body) = tls_get(tg.addr, &h2_and_h1, "api.test", "/x")
        .await
        .unwrap();
    assert_eq!(alpn.as_deref(), Some(&b"h2"[..]));
    assert!(names.contains(&"api.test".to_owned()), "{names:?}");
    assert_eq!(status, 200);
    let j: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(j["headers"]["x-forwarded-proto"], "https");
    assert_eq!(j["headers"]["host"], "api.test");

    let (_, names, _, _) = tls_get(tg.addr, &h2_and_h1, "a.wild.test", "/")
        .await
        .unwrap();
    assert!(
        names.contains(&"*.wild.test".to_owned()),
        "wildcard SNI: {names:?}"
    );
    // An unknown name gets the default certificate, which the client rejects for its name.
    let e = tls_get(tg.addr, &h2_and_h1, "unknown.test", "/")
        .await
        .unwrap_err();
    assert!(
        e.contains("only valid for DnsName(\"default.test\")"),
        "{e}"
    );
    let h1_only = client(&certs.path("ca.pem"), &[b"http/1.1"], None);
    let (alpn, _, status, _) = tls_get(tg.addr, &h1_only, "default.test", "/")
        .await
        .unwrap();
    assert_eq!(alpn.as_deref(), Some(&b"http/1.1"[..]));
    assert_eq!(status, 200);
}

#[tokio::test]
async fn mutual_tls_accepts_allowed_clients_and_rejects_others() {
    let certs = Certs::new();
    let ca = certs.ca("ca");
    let other = certs.ca("other");
    certs.leaf(&ca, "server", &["mesh.test"]);
    certs.leaf(&ca, "good", &["spiffe://mesh/ns/prod/sa/web"]);
    certs.leaf(&ca, "wrong-san", &["spiffe://mesh/ns/dev/sa/web"]);
    certs.leaf(&other, "stranger", &["spiffe://mesh/ns/prod/sa/web"]);
    let up = upstream("u").await;
    let tls = format!(
        "      certificates: [{{ cert: \"{}\", key: \"{}\" }}]\n      client_auth: {{ ca: \"{}\", allowed_sans: [\"spiffe://mesh/ns/prod/*\"] }}\n",
        certs.p("server.pem"),
        certs.p("server.key"),
        certs.p("ca.pem")
    );
    let tg = gateway(&tls_listener_config(
        &tls,
        "          - forward: { cluster: u }\n",
        &format!("  - {{ name: u, endpoints: [\"{}\"] }}\n", up.addr),
    ))
    .await;
    let ca_pem = certs.path("ca.pem");
    let with = |name: &str| {
        client(
            &ca_pem,
            &[b"http/1.1"],
            Some((
                &certs.path(&format!("{name}.pem")),
                &certs.path(&format!("{name}.key")),
            )),
        )
    };
    let ok = tls_get(tg.addr, &with("good"), "mesh.test", "/")
        .await
        .unwrap();
    assert_eq!(ok.2, 200);
    for (who, connector) in [
        ("no certificate", client(&ca_pem, &[b"http/1.1"], None)),
        ("SAN not allowed", with("wrong-san")),
        ("another CA", with("stranger")),
    ] {
        let r = tls_get(tg.addr, &connector, "mesh.test", "/").await;
        assert!(r.is_err(), "{who}: accepted");
    }
    // The gateway still serves good clients afterwards.
    assert_eq!(
        tls_get(tg.addr, &with("good"), "mesh.test", "/")
            .await
            .unwrap()
            .2,
        200
    );
}

/// A TLS upstream (HTTP/1.1) answering with the SNI it saw.
async fn tls_upstream(certs: &Certs, name: &str) -> SocketAddr {
    let chain: Vec<_> = CertificateDer::pem_file_iter(certs.path(&format!("{name}.pem")))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    let key = PrivateKeyDer::from_pem_file(certs.path(&format!("{name}.key"))).unwrap();
    let cfg = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((s, _)) = l.accept().await else { return };
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(s).await else {
                    return;
                };
                let sni = tls.get_ref().1.server_name().unwrap_or("-").to_owned();
                let svc = service_fn(move |_req: Request<hyper::body::Incoming>| {
                    let sni = sni.clone();
                    async move {
                        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(format!(
                            "sni={sni}"
                        )))))
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tls), svc)
                    .await;
            });
        }
    });
    addr
}

#[tokio::test]
async fn originates_tls_and_verifies_the_upstream() {
    let certs = Certs::new();
    let ca = certs.ca("ca");
    let _other = certs.ca("other");
    certs.leaf(&ca, "backend", &["backend.internal"]);
    let up = tls_upstream(&certs, "backend").await;
    let clusters = format!(
        "  - {{ name: good, endpoints: [\"{up}\"], tls: {{ ca: \"{}\", server_name: backend.internal }} }}\n  \
         - {{ name: wrongname, endpoints: [\"{up}\"], tls: {{ ca: \"{}\", server_name: evil.internal }} }}\n  \
         - {{ name: wrongca, endpoints: [\"{up}\"], tls: {{ ca: \"{}\", server_name: backend.internal }} }}\n",
        certs.p("ca.pem"),
        certs.p("ca.pem"),
        certs.p("other.pem")
    );
    let routes = "          - { match: { path: { prefix: /good } }, forward: { cluster: good } }\n          \
                  - { match: { path: { prefix: /wrongname } }, forward: { cluster: wrongname } }\n          \
                  - { match: { path: { prefix: /wrongca } }, forward: { cluster: wrongca } }\n";
    let tg = gateway(&config(routes, &clusters)).await;
    let r = get(tg.addr, "/good", &[]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.text(), "sni=backend.internal");
    for path in ["/wrongname", "/wrongca"] {
        let r = get(tg.addr, path, &[]).await;
        assert_eq!(r.status, 502, "{path}: {}", r.text());
        assert!(
            r.text() == "upstream connect error\n",
            "{path}: {}",
            r.text()
        );
    }
}

/// A TLS listener serving `site.test` (certificate `site`, SANs site.test and
/// v1.site.test, signed by `ca`) in front of an upstream; a client trusting `ca`.
async fn site_on_tls() -> (Certs, Ca, Upstream, String, TestGateway, TlsConnector) {
    let certs = Certs::new();
    let ca = certs.ca("ca");
    certs.leaf(&ca, "site", &["site.test", "v1.site.test"]);
    let up = upstream("u").await;
    let tls = format!(
        "      certificates: [{{ cert: \"{}\", key: \"{}\" }}]\n      alpn: [\"http/1.1\"]\n",
        certs.p("site.pem"),
        certs.p("site.key")
    );
    let yaml = tls_listener_config(
        &tls,
        "          - forward: { cluster: u }\n",
        &format!("  - {{ name: u, endpoints: [\"{}\"] }}\n", up.addr),
    );
    let tg = gateway(&yaml).await;
    let connector = client(&certs.path("ca.pem"), &[b"http/1.1"], None);
    (certs, ca, up, yaml, tg, connector)
}

#[tokio::test]
async fn certificates_reload_without_dropping_connections() {
    let (certs, ca, _up, yaml, tg, connector) = site_on_tls().await;

    // A keep-alive connection opened on the first certificate.
    let tcp = tokio::net::TcpStream::connect(tg.addr).await.unwrap();
    let tls = connector
        .connect(ServerName::try_from("site.test").unwrap(), tcp)
        .await
        .unwrap();
    assert!(
        served_names(tls.get_ref().1.peer_certificates().unwrap())
            .contains(&"v1.site.test".to_owned())
    );
    let (mut old, c) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .unwrap();
    tokio::spawn(c);
    let req = || {
        Request::get("/")
            .header("host", "site.test")
            .body(Full::new(Bytes::new()))
            .unwrap()
    };
    assert_eq!(old.send_request(req()).await.unwrap().status(), 200);

    // Renew the certificate in place and reload the same config.
    certs.leaf(&ca, "site", &["site.test", "v2.site.test"]);
    tg.gw
        .reload(rampart_config::from_yaml(&yaml).unwrap())
        .await
        .unwrap();

    let (_, names, status, _) = tls_get(tg.addr, &connector, "site.test", "/")
        .await
        .unwrap();
    assert_eq!(status, 200);
    assert!(
        names.contains(&"v2.site.test".to_owned()),
        "new connections get the new certificate: {names:?}"
    );
    let resp = old.send_request(req()).await.unwrap();
    assert_eq!(
        resp.status(),
        200,
        "the connection opened before the reload still works"
    );
}

/// A reload whose certificate does not load is rejected with the file named; the listener
/// keeps serving the certificate it had.
#[tokio::test]
async fn a_broken_certificate_reload_keeps_the_old_certificate() {
    let (certs, _ca, _up, yaml, tg, connector) = site_on_tls().await;

    std::fs::write(
        certs.path("site.pem"),
        "-----BEGIN CERTIFICATE-----\nbroken\n",
    )
    .unwrap();
    let err = tg
        .gw
        .reload(rampart_config::from_yaml(&yaml).unwrap())
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("site.pem"), "{err}");
    let (_, names, status, _) = tls_get(tg.addr, &connector, "site.test", "/")
        .await
        .unwrap();
    assert_eq!(status, 200);
    assert!(names.contains(&"v1.site.test".to_owned()), "{names:?}");
    let dump = admin(&tg, "/config_dump").await.json();
    assert_eq!(dump["version"], 1);
    assert_eq!(dump["last_reload_error"], err);
}

//! The `jwt` filter on a real gateway: tokens signed with keys made here (ES256, EdDSA),
//! a committed RSA test key (RS256) and a shared secret (HS256), against key sets served from
//! a file and from a small HTTP server.

mod common;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use common::*;
use http_body_util::Full;
use hyper_util::rt::TokioIo;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use proptest::prelude::*;
use rampart_proxy::GatewayError;
use serde_json::{Value, json};

const ISSUER: &str = "https://issuer.test/";
const SECRET: &str = "an-hs256-test-secret-of-at-least-32-bytes";
const RSA_KEY: &str = include_str!("fixtures/jwt-rs256.key");
const RSA_PUBLIC_PEM: &str = include_str!("fixtures/jwt-rs256.pub.pem");
const RSA_JWK: &str = include_str!("fixtures/jwt-rs256.jwk.json");

fn b64url(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

fn b64url_decode(s: &str) -> Vec<u8> {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(s)
        .unwrap_or_else(|e| panic!("not base64url ({e}): {s}"))
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// A signing key and its public JWK.
struct TestKey {
    alg: Algorithm,
    kid: String,
    enc: EncodingKey,
    /// `None` for HS256 (the secret is not in the key set).
    jwk: Option<Value>,
}

impl TestKey {
    fn rsa(kid: &str) -> Self {
        let mut jwk: Value = serde_json::from_str(RSA_JWK).unwrap();
        jwk["kid"] = kid.into();
        Self {
            alg: Algorithm::RS256,
            kid: kid.into(),
            enc: EncodingKey::from_rsa_pem(RSA_KEY.as_bytes()).unwrap(),
            jwk: Some(jwk),
        }
    }

    fn ec(kid: &str) -> Self {
        let kp = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let raw = kp.public_key_raw();
        assert_eq!(raw.len(), 65);
        Self {
            alg: Algorithm::ES256,
            kid: kid.into(),
            enc: EncodingKey::from_ec_der(&kp.serialize_der()),
            jwk: Some(json!({
                "kty": "EC", "crv": "P-256", "kid": kid, "use": "sig",
                "x": b64url(&raw[1..33]), "y": b64url(&raw[33..]),
            })),
        }
    }

    fn ed(kid: &str) -> Self {
        let kp = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
        Self {
            alg: Algorithm::EdDSA,
            kid: kid.into(),
            enc: EncodingKey::from_ed_der(&kp.serialize_der()),
            jwk: Some(json!({
                "kty": "OKP", "crv": "Ed25519", "kid": kid, "alg": "EdDSA",
                "x": b64url(kp.public_key_raw()),
            })),
        }
    }

    fn hs(secret: &str) -> Self {
        Self {
            alg: Algorithm::HS256,
            kid: "shared".into(),
            enc: EncodingKey::from_secret(secret.as_bytes()),
            jwk: None,
        }
    }

    fn sign(&self, claims: &Value) -> String {
        let mut h = Header::new(self.alg);
        h.kid = Some(self.kid.clone());
        jsonwebtoken::encode(&h, claims, &self.enc).unwrap()
    }
}

fn jwks(keys: &[&TestKey]) -> String {
    let keys: Vec<&Value> = keys.iter().filter_map(|k| k.jwk.as_ref()).collect();
    json!({ "keys": keys }).to_string()
}

fn claims() -> Value {
    json!({
        "sub": "alice",
        "iss": ISSUER,
        "aud": "api",
        "iat": now(),
        "nbf": now() - 10,
        "exp": now() + 600,
        "role": "admin",
    })
}

fn with(mut c: Value, edits: &[(&str, Value)]) -> Value {
    for (k, v) in edits {
        if v.is_null() {
            c.as_object_mut().unwrap().remove(*k);
        } else {
            c[*k] = v.clone();
        }
    }
    c
}

/// A gateway whose only listener has `[cors, jwt]` (so the jwt filter is
/// `listeners[0].filters[1]`) in front of a demo upstream.
fn yaml(jwt: &str, upstream: SocketAddr) -> String {
    format!(
        r#"
workers: 1
access_log: {{ format: "off" }}
admin: {{ address: "127.0.0.1:0" }}
listeners:
  - name: main
    address: "127.0.0.1:0"
    route_table: t
    filters:
      - cors: {{ allow_origins: ["*"] }}
      - jwt: {jwt}
route_tables:
  - name: t
    virtual_hosts:
      - name: all
        domains: ["*"]
        routes:
          - name: r
            forward: {{ cluster: u }}
clusters:
  - {{ name: u, endpoints: ["{upstream}"] }}
"#
    )
}

struct Setup {
    dir: tempfile::TempDir,
    up: Upstream,
    tg: TestGateway,
    rsa: TestKey,
    ec: TestKey,
    ed: TestKey,
    hs: TestKey,
}

impl Setup {
    fn path(&self, name: &str) -> String {
        self.dir.path().join(name).to_str().unwrap().to_owned()
    }

    async fn get(&self, token: &str) -> Reply {
        let auth = format!("Bearer {token}");
        get(self.tg.addr, "/x", &[("authorization", &auth)]).await
    }
}

/// Every algorithm, issuer and audiences checked, claims forwarded, keys from a file.
async fn setup_with(extra: &str) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let (rsa, ec, ed, hs) = (
        TestKey::rsa("rsa-1"),
        TestKey::ec("ec-1"),
        TestKey::ed("ed-1"),
        TestKey::hs(SECRET),
    );
    let p = |n: &str| dir.path().join(n).to_str().unwrap().to_owned();
    std::fs::write(p("jwks.json"), jwks(&[&rsa, &ec, &ed])).unwrap();
    std::fs::write(p("secret"), format!("{SECRET}\n")).unwrap();
    let up = upstream("u").await;
    let jwt = format!(
        "{{ issuer: \"{ISSUER}\", audiences: [api, web], jwks_file: \"{}\", \
         algorithms: [HS256, RS256, ES256, EdDSA], hs256_secret_file: \"{}\", \
         forward_claims_header: x-jwt-claims{extra} }}",
        p("jwks.json"),
        p("secret"),
    );
    let tg = gateway(&yaml(&jwt, up.addr)).await;
    Setup {
        dir,
        up,
        tg,
        rsa,
        ec,
        ed,
        hs,
    }
}

async fn setup() -> Setup {
    setup_with("").await
}

/// A 401 with `reason` in `www-authenticate` and the body, and nothing secret in the reply.
#[track_caller]
fn assert_rejected(r: &Reply, reason: &str, secrets: &[&str]) {
    assert_eq!(r.status, 401, "{}", r.text());
    assert_eq!(
        r.header("www-authenticate"),
        Some(format!("Bearer error=\"invalid_token\", error_description=\"{reason}\"").as_str()),
    );
    assert_eq!(r.json()["error_description"], reason, "{}", r.text());
    assert_eq!(
        r.header("x-upstream-name"),
        None,
        "the upstream was reached"
    );
    let text = format!("{:?} {}", r.headers, r.text());
    let rsa_n: Value = serde_json::from_str(RSA_JWK).unwrap();
    let mut never = vec![
        SECRET,
        rsa_n["n"].as_str().unwrap(),
        "PRIVATE KEY",
        "PUBLIC KEY",
    ];
    never.extend_from_slice(secrets);
    for s in never {
        assert!(
            s.len() < 8 || !text.contains(s),
            "reply leaks {s:?}: {text}"
        );
    }
}

#[tokio::test]
async fn valid_tokens_of_every_algorithm_pass_with_their_claims() {
    let s = setup().await;
    for key in [&s.hs, &s.rsa, &s.ec, &s.ed] {
        let c = claims();
        let r = s.get(&key.sign(&c)).await;
        assert_eq!(r.status, 200, "{:?}: {}", key.alg, r.text());
        assert_eq!(r.header("x-upstream-name"), Some("u"));
        let forwarded = r.upstream_header("x-jwt-claims").expect("claims forwarded");
        let seen: Value = serde_json::from_slice(&b64url_decode(&forwarded)).unwrap();
        assert_eq!(seen, c, "{:?}", key.alg);
    }
    // An audience list in the token needs one match; a skew inside clock_skew is fine.
    let c = with(
        claims(),
        &[("aud", json!(["other", "web"])), ("exp", json!(now() - 30))],
    );
    assert_eq!(s.get(&s.ec.sign(&c)).await.status, 200);
    // A token without kid is checked against every key for its algorithm.
    let mut h = Header::new(Algorithm::EdDSA);
    h.kid = None;
    let t = jsonwebtoken::encode(&h, &claims(), &s.ed.enc).unwrap();
    assert_eq!(s.get(&t).await.status, 200);

    let m = admin(&s.tg, "/metrics").await.text();
    assert_eq!(
        metric(&m, "rampart_jwt_requests_total{result=\"ok\"}"),
        Some(6.0),
        "{m}"
    );
}

#[tokio::test]
async fn bad_claims_are_rejected_with_their_reason() {
    let s = setup().await;
    let cases: Vec<(Value, &str)> = vec![
        (
            with(claims(), &[("exp", json!(now() - 3600))]),
            "token expired",
        ),
        (
            with(claims(), &[("nbf", json!(now() + 3600))]),
            "token not yet valid",
        ),
        (
            with(claims(), &[("iss", json!("https://evil.test/"))]),
            "wrong issuer",
        ),
        (with(claims(), &[("aud", json!("other"))]), "wrong audience"),
        (
            with(claims(), &[("aud", json!(["a", "b"]))]),
            "wrong audience",
        ),
        (
            with(claims(), &[("exp", Value::Null)]),
            "token has no exp claim",
        ),
        (
            with(claims(), &[("iss", Value::Null)]),
            "token has no iss claim",
        ),
        (
            with(claims(), &[("aud", Value::Null)]),
            "token has no aud claim",
        ),
    ];
    for key in [&s.hs, &s.rsa, &s.ec, &s.ed] {
        for (c, reason) in &cases {
            let t = key.sign(c);
            let r = s.get(&t).await;
            assert_rejected(&r, reason, &[&t]);
        }
    }
    let m = admin(&s.tg, "/metrics").await.text();
    assert_eq!(
        metric(&m, "rampart_jwt_requests_total{result=\"expired\"}"),
        Some(4.0),
        "{m}"
    );
}

#[tokio::test]
async fn tampered_forged_and_confused_tokens_are_rejected() {
    let s = setup().await;
    for key in [&s.hs, &s.rsa, &s.ec, &s.ed] {
        // Payload swapped for one with more rights; the signature no longer matches.
        let t = key.sign(&claims());
        let parts: Vec<&str> = t.split('.').collect();
        let evil = b64url(
            with(claims(), &[("role", json!("root"))])
                .to_string()
                .as_bytes(),
        );
        let tampered = format!("{}.{evil}.{}", parts[0], parts[2]);
        assert_rejected(&s.get(&tampered).await, "bad signature", &[&tampered]);
        // Signed by another key of the same kind under a known kid.
        let other = match key.alg {
            Algorithm::HS256 => TestKey::hs("another-secret-that-is-also-32-bytes-long"),
            Algorithm::ES256 => TestKey::ec("ec-1"),
            Algorithm::EdDSA => TestKey::ed("ed-1"),
            _ => continue,
        };
        assert_rejected(&s.get(&other.sign(&claims())).await, "bad signature", &[]);
    }

    // alg "none": no signature at all.
    let header = b64url(br#"{"alg":"none","typ":"JWT"}"#);
    let payload = b64url(claims().to_string().as_bytes());
    for t in [
        format!("{header}.{payload}."),
        format!("{header}.{payload}"),
    ] {
        let r = s.get(&t).await;
        let reason = if t.ends_with('.') {
            "algorithm not allowed"
        } else {
            "malformed token"
        };
        assert_rejected(&r, reason, &[&t]);
    }
    // Algorithms outside the list, even ones the library knows.
    for alg in ["HS512", "RS512", "PS256", "ES384", "nonsense"] {
        let h = b64url(format!("{{\"alg\":\"{alg}\",\"kid\":\"rsa-1\"}}").as_bytes());
        let t = format!("{h}.{payload}.c2ln");
        assert_rejected(&s.get(&t).await, "algorithm not allowed", &[]);
    }

    // HS256 signed with the RSA public key as the secret, under the RSA key's kid: the HMAC
    // is checked against the configured secret only, never against a public key.
    let confused = TestKey {
        alg: Algorithm::HS256,
        kid: "rsa-1".into(),
        enc: EncodingKey::from_secret(RSA_PUBLIC_PEM.as_bytes()),
        jwk: None,
    };
    let t = confused.sign(&claims());
    assert_rejected(&s.get(&t).await, "bad signature", &[&t]);
    // An ES256 token naming the RSA key.
    let mut wrong = TestKey::ec("x");
    wrong.kid = "rsa-1".into();
    assert_rejected(
        &s.get(&wrong.sign(&claims())).await,
        "algorithm does not match key",
        &[],
    );
    // A critical header extension this verifier does not know.
    let mut h = Header::new(Algorithm::EdDSA);
    h.kid = Some("ed-1".into());
    let mut hv = serde_json::to_value(&h).unwrap();
    hv["crit"] = json!(["exp"]);
    let signing_input = format!("{}.{payload}", b64url(hv.to_string().as_bytes()));
    let sig =
        jsonwebtoken::crypto::sign(signing_input.as_bytes(), &s.ed.enc, Algorithm::EdDSA).unwrap();
    let t = format!("{signing_input}.{sig}");
    assert_rejected(&s.get(&t).await, "unsupported critical header", &[&t]);
}

#[tokio::test]
async fn hs256_confusion_when_only_asymmetric_algorithms_are_allowed() {
    let dir = tempfile::tempdir().unwrap();
    let rsa = TestKey::rsa("rsa-1");
    let path = dir.path().join("jwks.json");
    std::fs::write(&path, jwks(&[&rsa])).unwrap();
    let up = upstream("u").await;
    let jwt = format!("{{ jwks_file: \"{}\" }}", path.display());
    let tg = gateway(&yaml(&jwt, up.addr)).await;
    let addr = tg.addr;
    let get = move |t: String| async move {
        get(addr, "/", &[("authorization", &format!("Bearer {t}"))]).await
    };
    assert_eq!(get(rsa.sign(&claims())).await.status, 200);
    let confused = TestKey {
        alg: Algorithm::HS256,
        kid: "rsa-1".into(),
        enc: EncodingKey::from_secret(RSA_PUBLIC_PEM.as_bytes()),
        jwk: None,
    };
    assert_rejected(
        &get(confused.sign(&claims())).await,
        "algorithm not allowed",
        &[],
    );
}

#[tokio::test]
async fn missing_tokens_and_optional_mode() {
    let s = setup().await;
    let t = s.ec.sign(&claims());
    for headers in [
        vec![],
        vec![("authorization", "Basic YWxpY2U6cHc=")],
        vec![("authorization", "Bearer")],
        vec![("authorization", "Bearer   ")],
    ] {
        assert_rejected(&get(s.tg.addr, "/", &headers).await, "missing token", &[]);
    }
    for bad in [
        "Bearer a.b",
        "Bearer not-a-jwt",
        "Bearer a.b.c.d",
        "Bearer ....",
        "Bearer e30.e30.e30",
    ] {
        assert_rejected(
            &get(s.tg.addr, "/", &[("authorization", bad)]).await,
            "malformed token",
            &[],
        );
    }
    // The scheme is case-insensitive.
    let r = get(s.tg.addr, "/", &[("authorization", &format!("bearer {t}"))]).await;
    assert_eq!(r.status, 200);

    let opt = setup_with(", optional: true").await;
    let r = get(opt.tg.addr, "/", &[("x-jwt-claims", "eyJzdWIiOiJyb290In0")]).await;
    assert_eq!(r.status, 200, "no token passes when optional");
    assert_eq!(
        r.upstream_header("x-jwt-claims"),
        None,
        "a client cannot send its own claims"
    );
    // A token that is present must still be valid.
    let expired = opt
        .ec
        .sign(&with(claims(), &[("exp", json!(now() - 3600))]));
    assert_rejected(&opt.get(&expired).await, "token expired", &[]);
    let r = opt.get(&opt.ec.sign(&claims())).await;
    assert_eq!(r.status, 200);
    let m = admin(&opt.tg, "/metrics").await.text();
    assert_eq!(
        metric(&m, "rampart_jwt_requests_total{result=\"no_token\"}"),
        Some(1.0)
    );
}

#[tokio::test]
async fn token_in_a_custom_header() {
    let s = setup_with(", from_header: x-token").await;
    let t = s.rsa.sign(&claims());
    assert_eq!(get(s.tg.addr, "/", &[("x-token", &t)]).await.status, 200);
    assert_rejected(
        &get(s.tg.addr, "/", &[("authorization", &format!("Bearer {t}"))]).await,
        "missing token",
        &[&t],
    );
}

#[tokio::test]
async fn an_updated_key_file_is_picked_up_for_unknown_key_ids() {
    let s = setup().await;
    let new = TestKey::ed("ed-2");
    let t = new.sign(&claims());
    assert_rejected(&s.get(&t).await, "unknown key id", &[&t]);

    std::fs::write(s.path("jwks.json"), jwks(&[&s.rsa, &s.ec, &s.ed, &new])).unwrap();
    // The first unknown kid used the on-demand refresh; the next may run 10 s later. The
    // periodic refresh (5 m here) is not waited for: a reload re-reads the file.
    let cfg = s.tg.gw.config_version();
    let again = rampart_config::from_yaml(&yaml(
        &format!(
            "{{ issuer: \"{ISSUER}\", audiences: [api, web], jwks_file: \"{}\", \
             algorithms: [HS256, RS256, ES256, EdDSA], hs256_secret_file: \"{}\", \
             forward_claims_header: x-jwt-claims }}",
            s.path("jwks.json"),
            s.path("secret"),
        ),
        s.up.addr,
    ))
    .unwrap();
    assert_eq!(s.tg.gw.reload(again).await.unwrap(), cfg + 1);
    assert_eq!(s.get(&t).await.status, 200);
}

#[tokio::test]
async fn an_unknown_key_id_triggers_one_refresh() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("jwks.json");
    let a = TestKey::ec("a");
    std::fs::write(&path, jwks(&[&a])).unwrap();
    let up = upstream("u").await;
    let jwt = format!("{{ jwks_file: \"{}\" }}", path.display());
    let tg = gateway(&yaml(&jwt, up.addr)).await;
    let addr = tg.addr;
    let get = move |t: String| async move {
        get(addr, "/", &[("authorization", &format!("Bearer {t}"))]).await
    };
    let b = TestKey::rsa("b");
    std::fs::write(&path, jwks(&[&a, &b])).unwrap();
    assert_eq!(
        get(b.sign(&claims())).await.status,
        200,
        "refreshed on demand"
    );
    // Within 10 s of that refresh another unknown kid does not refresh again.
    let c = TestKey::ed("c");
    std::fs::write(&path, jwks(&[&a, &b, &c])).unwrap();
    assert_rejected(&get(c.sign(&claims())).await, "unknown key id", &[]);
}

#[tokio::test]
async fn the_key_file_is_refreshed_periodically() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("jwks.json");
    let a = TestKey::ed("a");
    std::fs::write(&path, jwks(&[&a])).unwrap();
    let up = upstream("u").await;
    let jwt = format!(
        "{{ jwks_file: \"{}\", refresh_interval: 1s }}",
        path.display()
    );
    let tg = gateway(&yaml(&jwt, up.addr)).await;
    let addr = tg.addr;
    let get = move |t: String| async move {
        get(addr, "/", &[("authorization", &format!("Bearer {t}"))]).await
    };
    // Spend the on-demand refresh.
    let b = TestKey::ec("b");
    assert_rejected(&get(b.sign(&claims())).await, "unknown key id", &[]);
    std::fs::write(&path, jwks(&[&a, &b])).unwrap();
    let t = b.sign(&claims());
    assert!(
        eventually(Duration::from_secs(5), || {
            let t = t.clone();
            async move { get(t).await.status == 200 }
        })
        .await,
        "the periodic refresh loads the new key"
    );
}

#[tokio::test]
async fn bad_key_material_fails_start_and_reload_naming_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let p = |n: &str| dir.path().join(n).to_str().unwrap().to_owned();
    let up = upstream("u").await;
    let good = TestKey::ed("a");
    std::fs::write(p("good.json"), jwks(&[&good])).unwrap();
    std::fs::write(
        p("bad.json"),
        "{\"keys\": [{\"kty\": \"oct\", \"k\": \"c2VjcmV0\"}]}",
    )
    .unwrap();
    std::fs::write(p("short"), "too short").unwrap();
    let cfg = |jwt: String| rampart_config::from_yaml(&yaml(&jwt, up.addr)).unwrap();

    let bad = cfg(format!("{{ jwks_file: \"{}\" }}", p("bad.json")));
    let err = rampart_proxy::Gateway::start(bad.clone(), rampart_proxy::Runtimes::current())
        .await
        .err()
        .expect("start fails");
    let GatewayError::Filter { field, message } = &err else {
        panic!("{err}")
    };
    assert_eq!(field, "listeners[0].filters[1].jwt.jwks_file");
    assert!(message.contains("no usable signing key"), "{message}");
    assert!(!message.contains("c2VjcmV0"), "{message}");

    let tg = gateway_from(
        cfg(format!("{{ jwks_file: \"{}\" }}", p("good.json"))),
        vec![],
    )
    .await;
    let err = tg.gw.reload(bad).await.unwrap_err();
    assert!(
        err.to_string()
            .starts_with("listeners[0].filters[1].jwt.jwks_file: "),
        "{err}"
    );
    let short = cfg(format!(
        "{{ algorithms: [HS256], hs256_secret_file: \"{}\" }}",
        p("short")
    ));
    let err = tg.gw.reload(short).await.unwrap_err();
    let GatewayError::Filter { field, message } = &err else {
        panic!("{err}")
    };
    assert_eq!(field, "listeners[0].filters[1].jwt.hs256_secret_file");
    assert!(
        !message.contains("too short"),
        "the secret is not quoted: {message}"
    );
    assert_eq!(tg.gw.config_version(), 1, "the running config is kept");
    let t = good.sign(&claims());
    let r = get(tg.addr, "/", &[("authorization", &format!("Bearer {t}"))]).await;
    assert_eq!(r.status, 200, "still the first config and its keys");
    assert!(tg.gw.shutdown(Duration::from_secs(5)).await);
}

/// Serves a key set over HTTP, counting fetches; each answer waits `delay`.
struct KeyServer {
    addr: SocketAddr,
    body: Arc<Mutex<String>>,
    fetches: Arc<AtomicUsize>,
}

async fn key_server(body: String, delay: Duration) -> KeyServer {
    key_server_on(body, delay, None).await
}

/// A key server whose connections go through `tls` first, when given.
async fn key_server_on(
    body: String,
    delay: Duration,
    tls: Option<tokio_rustls::TlsAcceptor>,
) -> KeyServer {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let body = Arc::new(Mutex::new(body));
    let fetches = Arc::new(AtomicUsize::new(0));
    let (b, f) = (body.clone(), fetches.clone());
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let (b, f) = (b.clone(), f.clone());
            let tls = tls.clone();
            tokio::spawn(async move {
                let svc =
                    hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                        let (b, f) = (b.clone(), f.clone());
                        async move {
                            assert_eq!(req.uri().path(), "/keys");
                            f.fetch_add(1, Ordering::SeqCst);
                            tokio::time::sleep(delay).await;
                            let text = b.lock().unwrap().clone();
                            Ok::<_, Infallible>(http::Response::new(Full::new(Bytes::from(text))))
                        }
                    });
                let http = hyper::server::conn::http1::Builder::new();
                match tls {
                    None => {
                        let _ = http.serve_connection(TokioIo::new(stream), svc).await;
                    }
                    Some(acceptor) => {
                        if let Ok(s) = acceptor.accept(stream).await {
                            let _ = http.serve_connection(TokioIo::new(s), svc).await;
                        }
                    }
                }
            });
        }
    });
    KeyServer {
        addr,
        body,
        fetches,
    }
}

#[tokio::test]
async fn keys_from_a_url_are_fetched_once_and_refreshed_for_new_key_ids() {
    let a = TestKey::rsa("a");
    let server = key_server(jwks(&[&a]), Duration::from_millis(200)).await;
    let up = upstream("u").await;
    let jwt = format!(
        "{{ jwks_url: \"http://{}/keys\", issuer: \"{ISSUER}\" }}",
        server.addr
    );
    let tg = gateway(&yaml(&jwt, up.addr)).await;
    let auth = |t: &str| format!("Bearer {t}");
    let send_all = |tokens: Vec<String>| {
        let addr = tg.addr;
        async move {
            let c = h1();
            let reqs = tokens.iter().map(|t| {
                let c = c.clone();
                let h = auth(t);
                async move { send(&c, get_req(addr, "/", &[("authorization", &h)])).await }
            });
            let mut out = Vec::new();
            for r in reqs.collect::<Vec<_>>() {
                out.push(tokio::spawn(r));
            }
            let mut replies = Vec::new();
            for h in out {
                replies.push(h.await.unwrap());
            }
            replies
        }
    };

    // The first requests wait for the first fetch, which they share.
    let replies = send_all(vec![a.sign(&claims()); 6]).await;
    assert!(
        replies.iter().all(|r| r.status == 200),
        "{}",
        replies[0].text()
    );
    assert_eq!(server.fetches.load(Ordering::SeqCst), 1);

    // Key rotation: concurrent requests with the new kid share one refresh.
    let b = TestKey::ec("b");
    *server.body.lock().unwrap() = jwks(&[&a, &b]);
    let replies = send_all(vec![b.sign(&claims()); 6]).await;
    assert!(
        replies.iter().all(|r| r.status == 200),
        "{}",
        replies[0].text()
    );
    assert_eq!(server.fetches.load(Ordering::SeqCst), 2);

    // Unknown key ids do not make the gateway hammer the key server.
    let c = TestKey::ed("c");
    let replies = send_all(vec![c.sign(&claims()); 4]).await;
    for r in &replies {
        assert_rejected(r, "unknown key id", &[]);
    }
    assert_eq!(server.fetches.load(Ordering::SeqCst), 2);
    // Known keys keep working without any fetch.
    let replies = send_all(vec![a.sign(&claims()), b.sign(&claims())]).await;
    assert!(replies.iter().all(|r| r.status == 200));
    assert_eq!(server.fetches.load(Ordering::SeqCst), 2);
    assert!(tg.gw.shutdown(Duration::from_secs(5)).await);
}

/// A CA (written to `dir/ca.pem`) and a TLS acceptor for `localhost` signed by it.
fn tls_for_localhost(dir: &std::path::Path) -> tokio_rustls::TlsAcceptor {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_key = KeyPair::generate().unwrap();
    std::fs::write(dir.join("ca.pem"), ca.self_signed(&ca_key).unwrap().pem()).unwrap();
    let issuer = Issuer::new(ca, ca_key);
    let leaf = CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
    let key = KeyPair::generate().unwrap();
    let cert = leaf.signed_by(&key, &issuer).unwrap();
    let cfg = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(
        vec![cert.der().clone()],
        rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
    )
    .unwrap();
    tokio_rustls::TlsAcceptor::from(Arc::new(cfg))
}

/// `jwks_url: https://...` verified against `jwks_ca_file`; a server the CA did not sign
/// (here: the system's roots do not know the test CA) yields no keys.
#[tokio::test]
async fn keys_over_https_are_verified() {
    let dir = tempfile::tempdir().unwrap();
    let a = TestKey::rsa("a");
    let server = key_server_on(
        jwks(&[&a]),
        Duration::ZERO,
        Some(tls_for_localhost(dir.path())),
    )
    .await;
    let up = upstream("u").await;
    let url = format!("https://localhost:{}/keys", server.addr.port());
    let ca = dir.path().join("ca.pem");
    let jwt = format!(
        "{{ jwks_url: \"{url}\", jwks_ca_file: \"{}\" }}",
        ca.display()
    );
    let tg = gateway(&yaml(&jwt, up.addr)).await;
    let t = a.sign(&claims());
    let r = get(tg.addr, "/", &[("authorization", &format!("Bearer {t}"))]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(server.fetches.load(Ordering::SeqCst), 1);
    assert!(tg.gw.shutdown(Duration::from_secs(5)).await);

    // Without the CA, the system's roots do not trust the test server: no keys, 401.
    let jwt = format!("{{ jwks_url: \"{url}\" }}");
    let tg = gateway(&yaml(&jwt, up.addr)).await;
    let r = get(tg.addr, "/", &[("authorization", &format!("Bearer {t}"))]).await;
    assert_rejected(&r, "unknown key id", &[]);
    assert_eq!(
        server.fetches.load(Ordering::SeqCst),
        1,
        "no handshake, no fetch"
    );
    assert!(tg.gw.shutdown(Duration::from_secs(5)).await);
}

/// A token without `kid` is tried against a few keys only, however many the set holds.
#[tokio::test]
async fn a_token_without_kid_tries_a_bounded_number_of_keys() {
    let dir = tempfile::tempdir().unwrap();
    let keys: Vec<TestKey> = (0..6).map(|i| TestKey::ed(&format!("k{i}"))).collect();
    let refs: Vec<&TestKey> = keys.iter().collect();
    let file = dir.path().join("jwks.json");
    std::fs::write(&file, jwks(&refs)).unwrap();
    let up = upstream("u").await;
    let jwt = format!("{{ jwks_file: \"{}\" }}", file.display());
    let tg = gateway(&yaml(&jwt, up.addr)).await;
    let no_kid = |k: &TestKey| {
        let h = Header::new(k.alg);
        jsonwebtoken::encode(&h, &claims(), &k.enc).unwrap()
    };
    // Signed by one of the first keys: found among those tried.
    let r = get(
        tg.addr,
        "/",
        &[("authorization", &format!("Bearer {}", no_kid(&keys[1])))],
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    // Signed by the last: past the cap, refused without trying every key.
    let r = get(
        tg.addr,
        "/",
        &[("authorization", &format!("Bearer {}", no_kid(&keys[5])))],
    )
    .await;
    assert_rejected(
        &r,
        "token has no kid and too many keys match its algorithm",
        &[],
    );
    assert!(tg.gw.shutdown(Duration::from_secs(5)).await);
}

#[tokio::test]
async fn an_unreachable_key_url_rejects_without_hanging() {
    // A port that was free a moment ago: connections are refused.
    let addr = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let up = upstream("u").await;
    let tg = gateway(&yaml(
        &format!("{{ jwks_url: \"http://{addr}/keys\" }}"),
        up.addr,
    ))
    .await;
    let t = TestKey::ed("a").sign(&claims());
    let r = tokio::time::timeout(
        Duration::from_secs(10),
        get(tg.addr, "/", &[("authorization", &format!("Bearer {t}"))]),
    )
    .await
    .expect("answered in time");
    assert_rejected(&r, "unknown key id", &[]);
}

/// Strings shaped like tokens: three (or some other number of) dot-separated parts, the first
/// often a real JOSE header, the rest random base64url or junk.
fn token_like() -> impl Strategy<Value = String> {
    let alg = prop::sample::select(vec![
        "none", "HS256", "RS256", "ES256", "EdDSA", "PS256", "",
    ]);
    let kid = prop::sample::select(vec!["rsa-1", "ec-1", "ed-1", "nope", ""]);
    let header = (alg, kid, any::<bool>()).prop_map(|(a, k, crit)| {
        let mut h = json!({ "alg": a, "kid": k });
        if crit {
            h["crit"] = json!(["x"]);
        }
        b64url(h.to_string().as_bytes())
    });
    let segment = prop_oneof![
        "[A-Za-z0-9_-]{0,64}",
        prop::collection::vec(any::<u8>(), 0..64).prop_map(|b| b64url(&b)),
        Just(b64url(claims().to_string().as_bytes())),
        "[!-~]{0,16}",
    ];
    prop_oneof![
        (header, segment.clone(), segment.clone()).prop_map(|(h, p, s)| format!("{h}.{p}.{s}")),
        prop::collection::vec(segment, 0..5).prop_map(|v| v.join(".")),
    ]
}

#[test]
fn random_tokens_never_pass_and_never_panic() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let s = rt.block_on(setup());
    let client = rt.block_on(async { h1() });
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig {
        cases: 300,
        ..ProptestConfig::default()
    });
    let bytes = prop::collection::vec(any::<u8>(), 0..200);
    let strategy = prop_oneof![
        token_like().prop_map(|t| format!("Bearer {t}").into_bytes()),
        bytes
            .clone()
            .prop_map(|b| [b"Bearer ".as_slice(), &b].concat()),
        bytes,
    ];
    runner
        .run(&strategy, |value| {
            let Ok(v) = http::HeaderValue::from_bytes(&value) else {
                return Ok(()); // not sendable as a header at all
            };
            let mut req = get_req(s.tg.addr, "/", &[]);
            req.headers_mut().insert(http::header::AUTHORIZATION, v);
            let r = rt.block_on(send(&client, req));
            prop_assert_eq!(r.status, 401, "{:?}: {}", value, r.text());
            let www = r.header("www-authenticate").unwrap_or_default();
            prop_assert!(
                www.starts_with("Bearer error=\"invalid_token\", error_description=\""),
                "{}",
                www
            );
            Ok(())
        })
        .unwrap();
    // The gateway is still fine.
    let r = rt.block_on(s.get(&s.rsa.sign(&claims())));
    assert_eq!(r.status, 200);
}

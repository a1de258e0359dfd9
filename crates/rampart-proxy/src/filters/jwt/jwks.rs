//! JSON Web Key Sets (RFC 7517): parsing, a per-source cache shared across config versions,
//! and its refreshes.
//!
//! A [`JwksCache`] holds the keys of one source (a file or an `http://` URL). Requests read
//! them lock-free ([`ArcSwap`]). Refreshes run on the control runtime: every
//! `refresh_interval`, and on demand when a token names an unknown key id. On-demand
//! refreshes are bounded: while one is in flight, every request that wants one waits for that
//! same refresh; after one started, no other starts for [`ON_DEMAND_GAP`]. A failed refresh
//! keeps the previous keys.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::rt::TokioIo;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, KeyAlgorithm, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey};
use rampart_config::model::JwksSource;
use tokio::runtime::Handle;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::b64url_decode;

/// Least time between two refreshes triggered by unknown key ids.
pub(crate) const ON_DEMAND_GAP: Duration = Duration::from_secs(10);
/// A fetch (connect, request, whole body) that takes longer fails.
pub(crate) const FETCH_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest key set accepted.
const MAX_JWKS_BYTES: usize = 1 << 20;

/// One verification key.
struct Key {
    kid: Option<String>,
    /// The one algorithm this key verifies (from the JWK's `alg`, or its type and curve).
    alg: Algorithm,
    key: DecodingKey,
}

/// The usable keys of one key set.
#[derive(Default)]
pub(crate) struct KeySet {
    keys: Vec<Key>,
}

/// Why no key fits a token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum NoKey {
    /// No key has the token's `kid` (or, without a `kid`, none is for its `alg`).
    UnknownKid,
    /// Keys with the token's `kid` exist, but none is for its `alg`.
    WrongAlgorithm,
}

impl KeySet {
    /// Parses a JWK Set. Keys this filter cannot use (symmetric keys, encryption keys, other
    /// algorithms and curves, malformed entries) are skipped; a set with no usable key is an
    /// error. Messages never quote key material.
    pub(crate) fn parse(bytes: &[u8]) -> Result<Self, String> {
        #[derive(serde::Deserialize)]
        struct RawSet {
            keys: Vec<serde_json::Value>,
        }
        let raw: RawSet = serde_json::from_slice(bytes).map_err(|e| {
            format!("not a JSON Web Key Set (an object with a \"keys\" array): {e}")
        })?;
        let mut keys = Vec::with_capacity(raw.keys.len());
        for (i, v) in raw.keys.into_iter().enumerate() {
            match Self::key(v) {
                Ok(k) => keys.push(k),
                Err(why) => tracing::debug!(index = i, why, "JWKS entry skipped"),
            }
        }
        if keys.is_empty() {
            return Err(
                "holds no usable signing key (RSA for RS256, EC P-256 for ES256, OKP Ed25519 for EdDSA)"
                    .to_owned(),
            );
        }
        Ok(Self { keys })
    }

    fn key(v: serde_json::Value) -> Result<Key, &'static str> {
        let jwk: Jwk = serde_json::from_value(v).map_err(|_| "not a supported JWK")?;
        if matches!(jwk.common.public_key_use, Some(ref u) if *u != PublicKeyUse::Signature) {
            return Err("not a signature key (use)");
        }
        let declared = match jwk.common.key_algorithm {
            None => None,
            Some(KeyAlgorithm::RS256) => Some(Algorithm::RS256),
            Some(KeyAlgorithm::ES256) => Some(Algorithm::ES256),
            Some(KeyAlgorithm::EdDSA) => Some(Algorithm::EdDSA),
            Some(_) => return Err("unsupported alg"),
        };
        let bad = |_| "invalid key parameters";
        let (alg, key) = match &jwk.algorithm {
            AlgorithmParameters::RSA(p) => {
                let n = b64url_decode(&p.n).ok_or("invalid key parameters")?;
                // ring verifies RS256 only with 2048 to 8192 bit moduli.
                let bits = n.iter().skip_while(|b| **b == 0).count() * 8;
                if !(2048..=8192).contains(&bits) {
                    return Err("RSA modulus not 2048 to 8192 bits");
                }
                (
                    Algorithm::RS256,
                    DecodingKey::from_rsa_components(&p.n, &p.e).map_err(bad)?,
                )
            }
            AlgorithmParameters::EllipticCurve(p) => {
                if p.curve != EllipticCurve::P256 {
                    return Err("unsupported curve");
                }
                let coordinate = |s: &str| b64url_decode(s).is_some_and(|c| c.len() == 32);
                if !coordinate(&p.x) || !coordinate(&p.y) {
                    return Err("invalid key parameters");
                }
                (
                    Algorithm::ES256,
                    DecodingKey::from_ec_components(&p.x, &p.y).map_err(bad)?,
                )
            }
            AlgorithmParameters::OctetKeyPair(p) => {
                if p.curve != EllipticCurve::Ed25519 {
                    return Err("unsupported curve");
                }
                if b64url_decode(&p.x).is_none_or(|x| x.len() != 32) {
                    return Err("invalid key parameters");
                }
                (
                    Algorithm::EdDSA,
                    DecodingKey::from_ed_components(&p.x).map_err(bad)?,
                )
            }
            // A JWKS is public; a shared secret in one is a mistake (use hs256_secret_file).
            AlgorithmParameters::OctetKey(_) => return Err("symmetric key"),
        };
        if declared.is_some_and(|d| d != alg) {
            return Err("alg does not match the key type");
        }
        Ok(Key {
            kid: jwk.common.key_id,
            alg,
            key,
        })
    }

    pub(crate) fn len(&self) -> usize {
        self.keys.len()
    }

    /// The keys that may have signed a token with this `kid` and `alg`: the one with that
    /// `kid`, or without a `kid`, every key for `alg`.
    pub(crate) fn candidates<'a>(
        &'a self,
        kid: Option<&'a str>,
        alg: Algorithm,
    ) -> Result<impl Iterator<Item = &'a DecodingKey> + 'a, NoKey> {
        let matches = move |k: &&Key| kid.is_none_or(|kid| k.kid.as_deref() == Some(kid));
        let mut any_kid = false;
        let mut any = false;
        for k in self.keys.iter().filter(matches) {
            any_kid = true;
            any |= k.alg == alg;
        }
        match (any_kid, any) {
            (_, true) => Ok(self
                .keys
                .iter()
                .filter(matches)
                .filter(move |k| k.alg == alg)
                .map(|k| &k.key)),
            (true, false) if kid.is_some() => Err(NoKey::WrongAlgorithm),
            _ => Err(NoKey::UnknownKid),
        }
    }
}

#[derive(Default)]
struct RefreshState {
    in_flight: bool,
    last_on_demand: Option<Instant>,
}

/// The keys of one source, shared by every filter (of every config version) that uses it.
pub(crate) struct JwksCache {
    source: JwksSource,
    keys: ArcSwap<KeySet>,
    state: Mutex<RefreshState>,
    /// Bumped when a refresh ends (whether it succeeded or not).
    done: watch::Sender<u64>,
    handle: Handle,
    tracker: TaskTracker,
    stop: CancellationToken,
}

impl JwksCache {
    pub(crate) fn keys(&self) -> arc_swap::Guard<Arc<KeySet>> {
        self.keys.load()
    }

    fn lock(&self) -> MutexGuard<'_, RefreshState> {
        // A poisoned lock only means a panic elsewhere mid-update; two flags stay sound.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Reads and parses a file source now, replacing the keys (config load and reload).
    pub(crate) fn load_file_now(&self) -> Result<(), String> {
        let JwksSource::File(path) = &self.source else {
            return Ok(());
        };
        let bytes = read_file_blocking(path)?;
        self.keys.store(Arc::new(KeySet::parse(&bytes)?));
        Ok(())
    }

    /// Starts a refresh, or joins the one in flight. Returns what to wait on for its end, or
    /// `None` when an on-demand refresh is refused because the last one was too recent.
    pub(crate) fn refresh(self: &Arc<Self>, on_demand: bool) -> Option<watch::Receiver<u64>> {
        let mut st = self.lock();
        if st.in_flight {
            return Some(self.done.subscribe());
        }
        let now = Instant::now();
        if on_demand {
            if st
                .last_on_demand
                .is_some_and(|t| now.duration_since(t) < ON_DEMAND_GAP)
            {
                return None;
            }
            st.last_on_demand = Some(now);
        }
        st.in_flight = true;
        // Subscribed before the refresh can end (it needs this lock to finish).
        let rx = self.done.subscribe();
        let me = self.clone();
        self.tracker.spawn_on(
            async move {
                let result = tokio::select! {
                    () = me.stop.cancelled() => Err("shutting down".to_owned()),
                    r = tokio::time::timeout(FETCH_TIMEOUT, fetch(&me.source)) => {
                        r.unwrap_or_else(|_| Err(format!("no answer within {FETCH_TIMEOUT:?}")))
                    }
                };
                match result {
                    Ok(keys) => {
                        tracing::debug!(source = %me.source, keys = keys.len(), "JWKS refreshed");
                        me.keys.store(Arc::new(keys));
                    }
                    Err(error) => tracing::warn!(
                        source = %me.source,
                        %error,
                        "JWKS refresh failed; keeping the previous keys"
                    ),
                }
                let mut st = me.lock();
                st.in_flight = false;
                me.done.send_modify(|n| *n += 1);
                drop(st);
            },
            &self.handle,
        );
        Some(rx)
    }
}

/// Refreshes `cache` every `every` until it is dropped or `stop` is cancelled.
async fn refresh_loop(cache: Weak<JwksCache>, every: Duration, stop: CancellationToken) {
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(every) => {}
        }
        let Some(c) = cache.upgrade() else { return };
        let rx = c.refresh(false);
        drop(c);
        if let Some(mut rx) = rx {
            tokio::select! {
                () = stop.cancelled() => return,
                _ = rx.changed() => {}
            }
        }
    }
}

fn read_file_blocking(path: &Path) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))
}

async fn fetch(source: &JwksSource) -> Result<KeySet, String> {
    let bytes = match source {
        JwksSource::File(path) => tokio::fs::read(path)
            .await
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?,
        JwksSource::Url { uri, ca_file } => fetch_url(uri, ca_file.as_deref()).await?.to_vec(),
    };
    KeySet::parse(&bytes)
}

/// GET over HTTP/1.1 on a connection of its own: TLS (rustls, verifying the server against
/// `ca_file` or the system's roots) for `https`, plain TCP for `http`.
async fn fetch_url(uri: &http::Uri, ca_file: Option<&Path>) -> Result<Bytes, String> {
    let host = uri.host().ok_or("URL has no host")?;
    let https = uri.scheme_str() == Some("https");
    let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
    let connect_host = host.trim_start_matches('[').trim_end_matches(']');
    let tcp = tokio::net::TcpStream::connect((connect_host, port))
        .await
        .map_err(|e| format!("cannot connect: {e}"))?;
    if https {
        let config = crate::tls::https_client_config(ca_file).map_err(|e| e.to_string())?;
        let name = rustls::pki_types::ServerName::try_from(connect_host.to_owned())
            .map_err(|e| format!("{connect_host:?} is not a valid TLS server name: {e}"))?;
        let tls = tokio_rustls::TlsConnector::from(config)
            .connect(name, tcp)
            .await
            .map_err(|e| format!("TLS handshake failed: {e}"))?;
        get(uri, host, TokioIo::new(tls)).await
    } else {
        get(uri, host, TokioIo::new(tcp)).await
    }
}

async fn get<I>(uri: &http::Uri, host: &str, io: I) -> Result<Bytes, String>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(|e| format!("HTTP handshake failed: {e}"))?;
    let authority = uri.authority().map_or(host, http::uri::Authority::as_str);
    let req = http::Request::get(uri.path_and_query().map_or("/", |p| p.as_str()))
        .header(http::header::HOST, authority)
        .header(http::header::ACCEPT, "application/json")
        .header(http::header::USER_AGENT, "rampart")
        .body(Empty::<Bytes>::new())
        .map_err(|e| format!("bad request: {e}"))?;
    // The request owns `sender`; when it is done (or fails), the connection closes and `conn`
    // ends too.
    let work = async move {
        let resp = sender
            .send_request(req)
            .await
            .map_err(|e| format!("request failed: {e}"))?;
        if resp.status() != http::StatusCode::OK {
            return Err(format!("answered {}", resp.status()));
        }
        Limited::new(resp.into_body(), MAX_JWKS_BYTES)
            .collect()
            .await
            .map(http_body_util::Collected::to_bytes)
            .map_err(|e| format!("reading the body failed: {e}"))
    };
    let (result, _) = tokio::join!(work, conn);
    result
}

/// Key set caches by source and refresh interval, kept while some filter uses them: a reload
/// that keeps a `jwt` filter's source keeps its keys (a file source is re-read).
pub struct JwksRegistry {
    caches: Mutex<HashMap<(JwksSource, Duration), Weak<JwksCache>>>,
    handle: Handle,
    tracker: TaskTracker,
    stop: CancellationToken,
}

impl JwksRegistry {
    /// Refreshes run on `handle`, tracked by `tracker`, until `stop` is cancelled.
    pub fn new(handle: Handle, tracker: TaskTracker, stop: CancellationToken) -> Self {
        Self {
            caches: Mutex::new(HashMap::new()),
            handle,
            tracker,
            stop,
        }
    }

    /// The cache for a source. A new one starts its refresh loop; a new URL source also
    /// starts its first fetch (requests wait for it). A file source is (re-)read now, so a
    /// bad file fails the config that names it.
    pub(crate) fn get(
        &self,
        source: &JwksSource,
        every: Duration,
    ) -> Result<Arc<JwksCache>, String> {
        let (cache, created) = {
            let mut caches = self.caches.lock().unwrap_or_else(PoisonError::into_inner);
            caches.retain(|_, w| w.strong_count() > 0);
            let key = (source.clone(), every);
            match caches.get(&key).and_then(Weak::upgrade) {
                Some(c) => (c, false),
                None => {
                    let (done, _) = watch::channel(0);
                    let c = Arc::new(JwksCache {
                        source: source.clone(),
                        keys: ArcSwap::from_pointee(KeySet::default()),
                        state: Mutex::new(RefreshState::default()),
                        done,
                        handle: self.handle.clone(),
                        tracker: self.tracker.clone(),
                        stop: self.stop.clone(),
                    });
                    caches.insert(key, Arc::downgrade(&c));
                    (c, true)
                }
            }
        };
        if let JwksSource::File(_) = source {
            cache.load_file_now()?;
        }
        if created {
            self.tracker.spawn_on(
                refresh_loop(Arc::downgrade(&cache), every, self.stop.clone()),
                &self.handle,
            );
            if let JwksSource::Url { .. } = source {
                cache.refresh(false);
            }
        }
        Ok(cache)
    }

    /// Stops every refresh and waits for them to end.
    pub async fn shutdown(&self) {
        self.stop.cancel();
        self.tracker.close();
        self.tracker.wait().await;
    }

    /// Refresh tasks still running (loops and fetches).
    pub fn tasks(&self) -> usize {
        self.tracker.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b64(bytes: &[u8]) -> String {
        super::super::b64url_encode(bytes)
    }

    fn ed_jwk(kid: &str) -> serde_json::Value {
        serde_json::json!({ "kty": "OKP", "crv": "Ed25519", "kid": kid, "x": b64(&[7; 32]) })
    }

    #[test]
    fn parse_skips_unusable_keys() {
        let set = serde_json::json!({ "keys": [
            ed_jwk("ed"),
            { "kty": "oct", "kid": "hmac", "k": b64(b"secret") },
            { "kty": "EC", "crv": "P-384", "kid": "p384", "x": b64(&[1; 48]), "y": b64(&[1; 48]) },
            { "kty": "EC", "crv": "P-256", "kid": "short", "x": b64(&[1; 31]), "y": b64(&[1; 32]) },
            { "kty": "EC", "crv": "P-256", "kid": "ec", "x": b64(&[1; 32]), "y": b64(&[1; 32]) },
            { "kty": "RSA", "kid": "rsa-small", "n": b64(&[0xff; 128]), "e": "AQAB" },
            { "kty": "RSA", "kid": "rsa", "n": b64(&[0xff; 256]), "e": "AQAB", "alg": "RS256" },
            { "kty": "RSA", "kid": "rsa-ps", "n": b64(&[0xff; 256]), "e": "AQAB", "alg": "PS256" },
            { "kty": "RSA", "kid": "rsa-enc", "n": b64(&[0xff; 256]), "e": "AQAB", "use": "enc" },
            { "kty": "OKP", "crv": "Ed25519", "kid": "mislabeled", "x": b64(&[7; 32]), "alg": "ES256" },
            { "kty": "weird" },
            42,
        ]});
        let keys = KeySet::parse(set.to_string().as_bytes()).unwrap();
        assert_eq!(keys.len(), 3);
        assert_eq!(
            keys.candidates(Some("ed"), Algorithm::EdDSA)
                .unwrap()
                .count(),
            1
        );
        assert_eq!(
            keys.candidates(Some("ec"), Algorithm::ES256)
                .unwrap()
                .count(),
            1
        );
        assert_eq!(
            keys.candidates(Some("rsa"), Algorithm::RS256)
                .unwrap()
                .count(),
            1
        );
        assert_eq!(keys.candidates(None, Algorithm::RS256).unwrap().count(), 1);
        assert_eq!(
            keys.candidates(Some("rsa"), Algorithm::ES256).err(),
            Some(NoKey::WrongAlgorithm)
        );
        for kid in [
            "hmac",
            "p384",
            "short",
            "rsa-small",
            "rsa-ps",
            "rsa-enc",
            "nope",
        ] {
            assert_eq!(
                keys.candidates(Some(kid), Algorithm::RS256).err(),
                Some(NoKey::UnknownKid),
                "{kid}"
            );
        }
    }

    #[test]
    fn parse_rejects_sets_without_usable_keys() {
        for bad in [
            "",
            "[]",
            "{}",
            "{\"keys\": {}}",
            "{\"keys\": []}",
            "{\"keys\": [{\"kty\": \"oct\", \"k\": \"c2VjcmV0\"}]}",
        ] {
            assert!(KeySet::parse(bad.as_bytes()).is_err(), "{bad:?} accepted");
        }
    }

    #[tokio::test]
    async fn on_demand_refreshes_are_shared_and_spaced() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("jwks.json");
        let write = |kids: &[&str]| {
            let keys: Vec<_> = kids.iter().map(|k| ed_jwk(k)).collect();
            std::fs::write(&path, serde_json::json!({ "keys": keys }).to_string()).unwrap();
        };
        write(&["a"]);
        let reg = JwksRegistry::new(
            Handle::current(),
            TaskTracker::new(),
            CancellationToken::new(),
        );
        let source = JwksSource::File(path.clone());
        let cache = reg.get(&source, Duration::from_secs(3600)).unwrap();
        assert!(cache.keys().candidates(Some("a"), Algorithm::EdDSA).is_ok());

        write(&["a", "b"]);
        let waits: Vec<_> = (0..5).map(|_| cache.refresh(true)).collect();
        assert!(
            waits.iter().all(Option::is_some),
            "all join the one in flight"
        );
        for mut rx in waits.into_iter().flatten() {
            rx.changed().await.unwrap();
        }
        assert!(cache.keys().candidates(Some("b"), Algorithm::EdDSA).is_ok());
        assert!(
            cache.refresh(true).is_none(),
            "a second on-demand refresh waits 10 s"
        );
        // A periodic refresh is not bounded.
        write(&["c"]);
        cache.refresh(false).unwrap().changed().await.unwrap();
        assert!(cache.keys().candidates(Some("c"), Algorithm::EdDSA).is_ok());

        // The same source and interval share the cache; the file is re-read.
        write(&["d"]);
        let again = reg.get(&source, Duration::from_secs(3600)).unwrap();
        assert!(Arc::ptr_eq(&cache, &again));
        assert!(cache.keys().candidates(Some("d"), Algorithm::EdDSA).is_ok());
        // A bad file fails and keeps the previous keys.
        std::fs::write(&path, "not json").unwrap();
        assert!(reg.get(&source, Duration::from_secs(3600)).is_err());
        assert!(cache.keys().candidates(Some("d"), Algorithm::EdDSA).is_ok());

        assert!(reg.tasks() >= 1, "the refresh loop runs");
        tokio::time::timeout(Duration::from_secs(5), reg.shutdown())
            .await
            .expect("refresh tasks stop at shutdown");
        assert_eq!(reg.tasks(), 0);
    }

    #[tokio::test]
    async fn unused_caches_are_dropped_and_their_loops_end() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("jwks.json");
        std::fs::write(
            &path,
            serde_json::json!({ "keys": [ed_jwk("a")] }).to_string(),
        )
        .unwrap();
        let reg = JwksRegistry::new(
            Handle::current(),
            TaskTracker::new(),
            CancellationToken::new(),
        );
        let cache = reg
            .get(&JwksSource::File(path), Duration::from_secs(1))
            .unwrap();
        let weak = Arc::downgrade(&cache);
        drop(cache);
        assert!(weak.upgrade().is_none());
        // The loop notices at its next tick.
        tokio::time::timeout(Duration::from_secs(5), async {
            while reg.tasks() > 0 {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await
        .expect("refresh loop ends once its cache is gone");
    }
}

//! Access log: one line per request, text or JSON, written by a dedicated thread so that a
//! slow stdout never stalls a worker. Lines that do not fit the queue are counted, not blocked on.

use std::io::Write;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{SyncSender, TrySendError, sync_channel};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::{HeaderValue, Method, StatusCode, Version, request};
use rampart_config::model::AccessLogFormat;

/// What one request did.
pub struct AccessEntry {
    time: SystemTime,
    client: SocketAddr,
    method: Method,
    uri: http::Uri,
    version: Version,
    authority: Option<HeaderValue>,
    user_agent: Option<HeaderValue>,
    pub route: Option<Arc<str>>,
    pub cluster: Option<Arc<str>>,
    pub upstream: Option<SocketAddr>,
    pub request_id: Option<HeaderValue>,
    status: u16,
    duration: Duration,
}

impl AccessEntry {
    /// Records the request's facts; when the log is off, records nothing (no clones).
    pub fn start(parts: &request::Parts, client: SocketAddr, enabled: bool) -> Self {
        if !enabled {
            return Self {
                time: UNIX_EPOCH,
                client,
                method: Method::GET,
                uri: http::Uri::default(),
                version: Version::HTTP_11,
                authority: None,
                user_agent: None,
                route: None,
                cluster: None,
                upstream: None,
                request_id: None,
                status: 0,
                duration: Duration::ZERO,
            };
        }
        Self {
            time: SystemTime::now(),
            client,
            method: parts.method.clone(),
            uri: parts.uri.clone(),
            version: parts.version,
            authority: parts.headers.get(http::header::HOST).cloned(),
            user_agent: parts.headers.get(http::header::USER_AGENT).cloned(),
            route: None,
            cluster: None,
            upstream: None,
            request_id: None,
            status: 0,
            duration: Duration::ZERO,
        }
    }

    pub fn finish(&mut self, status: StatusCode, duration: Duration) {
        self.status = status.as_u16();
        self.duration = duration;
    }

    fn hv(v: Option<&HeaderValue>) -> &str {
        v.and_then(|v| v.to_str().ok()).unwrap_or("-")
    }

    fn raw(v: Option<&HeaderValue>) -> &[u8] {
        v.map_or(b"-", HeaderValue::as_bytes)
    }

    fn render(&self, format: AccessLogFormat) -> String {
        let ts = rfc3339(self.time);
        let ms = self.duration.as_secs_f64() * 1000.0;
        let host = self
            .uri
            .authority()
            .map(http::uri::Authority::as_str)
            .unwrap_or_else(|| Self::hv(self.authority.as_ref()));
        match format {
            AccessLogFormat::Json => serde_json::json!({
                "time": ts,
                "client": self.client.to_string(),
                "method": self.method.as_str(),
                "authority": host,
                "path": self.uri.path_and_query().map_or("/", http::uri::PathAndQuery::as_str),
                "protocol": format!("{:?}", self.version),
                "status": self.status,
                "duration_ms": (ms * 1000.0).round() / 1000.0,
                "route": self.route.as_deref(),
                "cluster": self.cluster.as_deref(),
                "upstream": self.upstream.map(|u| u.to_string()),
                "request_id": Self::hv(self.request_id.as_ref()),
                "user_agent": Self::hv(self.user_agent.as_ref()),
            })
            .to_string(),
            _ => format!(
                "{ts} {} \"{} {} {:?}\" {} {ms:.3}ms host={} route={} cluster={} upstream={} rid={} ua=\"{}\"",
                self.client,
                self.method,
                escape(
                    self.uri
                        .path_and_query()
                        .map_or("/", http::uri::PathAndQuery::as_str)
                        .as_bytes()
                ),
                self.version,
                self.status,
                escape(host.as_bytes()),
                self.route.as_deref().unwrap_or("-"),
                self.cluster.as_deref().unwrap_or("-"),
                self.upstream
                    .map_or_else(|| "-".to_owned(), |u| u.to_string()),
                escape(Self::raw(self.request_id.as_ref())),
                escape(Self::raw(self.user_agent.as_ref())),
            ),
        }
    }
}

#[derive(Clone)]
pub struct AccessLog {
    format: AccessLogFormat,
    tx: Option<SyncSender<String>>,
    dropped: Arc<AtomicU64>,
}

impl AccessLog {
    /// Starts the writer thread (unless the format is `off`).
    pub fn new(format: AccessLogFormat) -> Self {
        let tx = (format != AccessLogFormat::Off).then(|| {
            let (tx, rx) = sync_channel::<String>(16 * 1024);
            let spawned = std::thread::Builder::new()
                .name("rampart-access-log".into())
                .spawn(move || {
                    let stdout = std::io::stdout();
                    while let Ok(line) = rx.recv() {
                        // Locked per batch, not for the thread's life: others print to
                        // stdout too (`rampart up`'s banner).
                        let mut out = std::io::BufWriter::new(stdout.lock());
                        let _ = writeln!(out, "{line}");
                        while let Ok(line) = rx.try_recv() {
                            let _ = writeln!(out, "{line}");
                        }
                        let _ = out.flush();
                    }
                });
            if let Err(e) = spawned {
                tracing::error!(error = %e, "cannot start the access log thread; access log disabled");
            }
            tx
        });
        Self {
            format,
            tx,
            dropped: Arc::default(),
        }
    }

    pub fn write(&self, entry: &AccessEntry) {
        let Some(tx) = &self.tx else { return };
        match tx.try_send(entry.render(self.format)) {
            Ok(()) => {}
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                self.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    pub fn enabled(&self) -> bool {
        self.tx.is_some()
    }

    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

/// A client-controlled field made safe for the text format: `"` and `\` are escaped with a
/// backslash; spaces, control and non-ASCII bytes become `\xHH`. A client can then neither
/// end a field early nor forge another field or line.
fn escape(b: &[u8]) -> std::borrow::Cow<'_, str> {
    use std::fmt::Write as _;
    let clean = b
        .iter()
        .all(|&c| c.is_ascii_graphic() && c != b'"' && c != b'\\');
    if clean {
        // Every byte is printable ASCII, so nothing is lost.
        return String::from_utf8_lossy(b);
    }
    let mut out = String::with_capacity(b.len() + 8);
    for &c in b {
        match c {
            b'"' => out.push_str("\\\""),
            b'\\' => out.push_str("\\\\"),
            c if c.is_ascii_graphic() => out.push(char::from(c)),
            c => {
                let _ = write!(out, "\\x{c:02x}");
            }
        }
    }
    std::borrow::Cow::Owned(out)
}

/// `2026-11-28T13:02:09.123Z`
pub fn rfc3339(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60,
        d.subsec_millis()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_fields_cannot_be_forged() {
        assert_eq!(escape(b"curl/8.0"), "curl/8.0");
        assert_eq!(
            escape(b"x\" route=admin \"\n2026 fake"),
            "x\\\"\\x20route=admin\\x20\\\"\\x0a2026\\x20fake"
        );
        assert_eq!(escape(b"a\\b\x7f\xff"), "a\\\\b\\x7f\\xff");
    }

    #[test]
    fn rfc3339_known_dates() {
        let t = |s: u64| rfc3339(UNIX_EPOCH + Duration::from_secs(s));
        assert_eq!(t(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(t(951_782_400), "2000-02-29T00:00:00.000Z");
        assert_eq!(t(1_795_870_929), "2026-11-28T13:02:09.000Z");
    }
}

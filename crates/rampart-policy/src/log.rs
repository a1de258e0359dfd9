//! Decision logs: sampled JSON lines (tenant, decision, revision, latency), written by a
//! background thread so a slow disk never holds up a decision; lines that do not fit the
//! queue are dropped and counted.

use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{SyncSender, TrySendError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::decision::Decision;
use crate::error::DecideError;

#[derive(Debug, Clone, PartialEq)]
pub struct DecisionLogConfig {
    /// `None`: standard output.
    pub path: Option<PathBuf>,
    /// Fraction of decisions logged, 0.0..=1.0 (errors are always logged).
    pub sample_rate: f64,
}

pub(crate) struct DecisionLog {
    every: u64,
    seen: AtomicU64,
    pub(crate) dropped: AtomicU64,
    tx: SyncSender<String>,
}

impl DecisionLog {
    pub(crate) fn start(config: &DecisionLogConfig) -> Self {
        let (tx, rx) = std::sync::mpsc::sync_channel::<String>(4096);
        let path = config.path.clone();
        std::thread::Builder::new()
            .name("decision-log".into())
            .spawn(move || {
                let mut out: Box<dyn Write> = match &path {
                    Some(p) => match std::fs::OpenOptions::new().create(true).append(true).open(p) {
                        Ok(f) => Box::new(std::io::BufWriter::new(f)),
                        Err(e) => {
                            tracing::error!(path = %p.display(), error = %e, "cannot open the decision log; decisions are not logged");
                            return;
                        }
                    },
                    None => Box::new(std::io::stdout()),
                };
                while let Ok(line) = rx.recv() {
                    let _ = writeln!(out, "{line}");
                    // Flush when the queue is drained, so lines appear promptly but batch
                    // under load.
                    while let Ok(line) = rx.try_recv() {
                        let _ = writeln!(out, "{line}");
                    }
                    let _ = out.flush();
                }
            })
            .ok();
        let rate = config.sample_rate.clamp(0.0, 1.0);
        let every = if rate <= 0.0 {
            0
        } else {
            (1.0 / rate).round().max(1.0) as u64
        };
        Self {
            every,
            seen: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            tx,
        }
    }

    pub(crate) fn record(
        &self,
        tenant: &str,
        result: &Result<(Decision, String), DecideError>,
        latency: Duration,
    ) {
        let n = self.seen.fetch_add(1, Ordering::Relaxed);
        let sampled = self.every != 0 && n.is_multiple_of(self.every);
        if !sampled && result.is_ok() {
            return;
        }
        let ts = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        let mut line = serde_json::json!({
            "ts": ts,
            "tenant": tenant,
            "latency_us": latency.as_secs_f64() * 1e6,
        });
        match result {
            Ok((d, revision)) => {
                line["decision"] = serde_json::json!(if d.allowed { "allow" } else { "deny" });
                line["revision"] = serde_json::json!(revision);
                if !d.allowed {
                    line["status"] = serde_json::json!(d.http_status);
                }
            }
            Err(e) => {
                line["decision"] = serde_json::json!("error");
                line["error"] = serde_json::json!(e.to_string());
            }
        }
        if let Err(TrySendError::Full(_)) = self.tx.try_send(line.to_string()) {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

//! What functions wrote to stdout and stderr, by request: the last lines of each function,
//! kept in a bounded ring (`rampart fn logs`, `GET /functions/NAME/logs` on the admin port).

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;

/// Lines kept per function.
pub const KEPT_LINES: usize = 1000;
/// Longer lines are cut (marked with `…`).
pub const MAX_LINE: usize = 4096;

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct LogLine {
    /// Milliseconds since the Unix epoch.
    pub at_ms: u64,
    pub request_id: String,
    /// `stdout`, `stderr`, or `rampart` (what the runtime says about the invocation).
    pub stream: &'static str,
    pub line: String,
}

#[derive(Default)]
pub(crate) struct Ring(Mutex<VecDeque<LogLine>>);

impl Ring {
    /// Adds each line of `text` (a trailing partial line too).
    pub(crate) fn add(&self, request_id: &str, stream: &'static str, text: &[u8]) {
        if text.is_empty() {
            return;
        }
        let at_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        let text = String::from_utf8_lossy(text);
        let mut ring = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for line in text.lines() {
            let line = if line.len() > MAX_LINE {
                let mut cut = MAX_LINE;
                while !line.is_char_boundary(cut) {
                    cut -= 1;
                }
                format!("{}…", &line[..cut])
            } else {
                line.to_owned()
            };
            tracing::debug!(target: "rampart::fn", request_id, stream, "{line}");
            if ring.len() == KEPT_LINES {
                ring.pop_front();
            }
            ring.push_back(LogLine {
                at_ms,
                request_id: request_id.to_owned(),
                stream,
                line,
            });
        }
    }

    pub(crate) fn lines(&self) -> Vec<LogLine> {
        let ring = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        ring.iter().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_last_lines_and_cuts_long_ones() {
        let r = Ring::default();
        for i in 0..(KEPT_LINES + 5) {
            r.add("req", "stdout", format!("line {i}\n").as_bytes());
        }
        let lines = r.lines();
        assert_eq!(lines.len(), KEPT_LINES);
        assert_eq!(lines[0].line, "line 5");
        let long = "é".repeat(MAX_LINE);
        r.add("req2", "stderr", long.as_bytes());
        let last = r.lines().pop().unwrap();
        assert!(last.line.ends_with('…') && last.line.len() <= MAX_LINE + 3);
        assert_eq!((last.request_id.as_str(), last.stream), ("req2", "stderr"));
        r.add("req3", "stdout", b"a\nb");
        let tail: Vec<_> = r
            .lines()
            .into_iter()
            .rev()
            .take(2)
            .map(|l| l.line)
            .collect();
        assert_eq!(tail, ["b", "a"]);
    }
}

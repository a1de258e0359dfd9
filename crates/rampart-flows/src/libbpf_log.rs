//! Capturing what libbpf prints while loading, so that a verifier rejection ends up in the
//! [`FlowsError::Load`](crate::FlowsError::Load) message instead of on stderr.
//!
//! libbpf has one process-wide print callback. While a [`Capture`] lives, ours is installed
//! (loads are serialized by a lock so two tracers starting at once do not mix their logs);
//! dropping it restores whatever was installed before.

use std::sync::{Mutex, MutexGuard, PoisonError};

use libbpf_rs::{PrintCallback, PrintLevel};

/// Upper bound on what is kept from one load (a verifier log can be megabytes).
const MAX_CAPTURE: usize = 4 << 20;
/// How much of the verifier log goes into the error: its end, where the reason is.
const MAX_IN_ERROR: usize = 32 << 10;

static CAPTURED: Mutex<Option<String>> = Mutex::new(None);
static LOAD_LOCK: Mutex<()> = Mutex::new(());

fn captured() -> MutexGuard<'static, Option<String>> {
    CAPTURED.lock().unwrap_or_else(PoisonError::into_inner)
}

#[allow(clippy::needless_pass_by_value)] // the signature of libbpf_rs::PrintCallback
fn on_print(level: PrintLevel, msg: String) {
    let mut g = captured();
    match g.as_mut() {
        Some(buf) if buf.len() + msg.len() <= MAX_CAPTURE => buf.push_str(&msg),
        Some(_) => {}
        None => {
            drop(g);
            match level {
                PrintLevel::Warn => tracing::warn!(target: "libbpf", "{}", msg.trim_end()),
                PrintLevel::Info => tracing::info!(target: "libbpf", "{}", msg.trim_end()),
                PrintLevel::Debug => tracing::debug!(target: "libbpf", "{}", msg.trim_end()),
            }
        }
    }
}

/// Installs the capturing callback until dropped.
pub(crate) struct Capture {
    previous: Option<(PrintLevel, PrintCallback)>,
    _serial: MutexGuard<'static, ()>,
}

impl Capture {
    pub(crate) fn begin() -> Self {
        let serial = LOAD_LOCK.lock().unwrap_or_else(PoisonError::into_inner);
        *captured() = Some(String::new());
        let previous = libbpf_rs::set_print(Some((PrintLevel::Info, on_print)));
        Self {
            previous,
            _serial: serial,
        }
    }

    /// Everything libbpf printed so far.
    pub(crate) fn text(&self) -> String {
        captured().clone().unwrap_or_default()
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        libbpf_rs::set_print(self.previous.take());
        let text = captured().take().unwrap_or_default();
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            tracing::debug!(target: "libbpf", "{line}");
        }
    }
}

/// From libbpf's output, the program it blamed and the verifier log (its tail when long).
///
/// The error for an object that libbpf could not open, with what libbpf printed.
pub(crate) fn open_failed(printed: String, source: libbpf_rs::Error) -> crate::FlowsError {
    crate::FlowsError::Open {
        source,
        log: printed,
    }
}

/// The error for a skeleton whose load failed: the program libbpf named and its verifier
/// log, from what libbpf printed during the load.
pub(crate) fn load_failed(printed: &str, source: libbpf_rs::Error) -> crate::FlowsError {
    let (program, log) = verifier_log(printed);
    crate::FlowsError::Load {
        program,
        source,
        log,
    }
}

/// libbpf prints `libbpf: prog 'NAME': BPF program load failed: ...` followed by the log
/// between `-- BEGIN PROG LOAD LOG --` and `-- END PROG LOAD LOG --`. Relocation failures have
/// no such block; then everything printed is returned.
pub(crate) fn verifier_log(text: &str) -> (Option<String>, String) {
    let program = text
        .lines()
        .find(|l| l.contains("load failed") || l.contains("failed to"))
        .and_then(|l| {
            let start = l.find("prog '")? + "prog '".len();
            let len = l[start..].find('\'')?;
            Some(l[start..start + len].to_owned())
        });
    let body = match (
        text.find("-- BEGIN PROG LOAD LOG --"),
        text.find("-- END PROG LOAD LOG --"),
    ) {
        (Some(b), Some(e)) if b < e => {
            let begin = b + "-- BEGIN PROG LOAD LOG --".len();
            text[begin..e].trim_matches('\n')
        }
        _ => text.trim(),
    };
    (program, tail(body, MAX_IN_ERROR))
}

fn tail(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_owned();
    }
    let mut start = s.len() - max;
    while !s.is_char_boundary(start) {
        start += 1;
    }
    format!("[... {start} bytes of log omitted ...]\n{}", &s[start..])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extracts_program_and_verifier_log() {
        let text = "libbpf: prog 'rf_state': BPF program load failed: Permission denied\n\
                    libbpf: prog 'rf_state': -- BEGIN PROG LOAD LOG --\n\
                    0: R1=ctx() R10=fp0\n\
                    ; int rf_state(...)\n\
                    R1 invalid mem access 'scalar'\n\
                    processed 12 insns\n\
                    -- END PROG LOAD LOG --\n\
                    libbpf: prog 'rf_state': failed to load: -13\n";
        let (program, log) = verifier_log(text);
        assert_eq!(program.as_deref(), Some("rf_state"));
        assert!(log.contains("R1 invalid mem access 'scalar'"), "{log}");
        assert!(!log.contains("BEGIN PROG LOAD LOG"), "{log}");
        assert!(!log.contains("failed to load"), "{log}");
    }

    #[test]
    fn without_a_log_block_everything_is_kept() {
        let text = "libbpf: prog 'rf_destroy': relo #3: failed to resolve CO-RE relocation\n";
        let (program, log) = verifier_log(text);
        assert_eq!(program.as_deref(), Some("rf_destroy"));
        assert!(log.contains("CO-RE relocation"));
    }

    #[test]
    fn long_logs_keep_their_end() {
        let long = format!("{}THE REASON", "x".repeat(MAX_IN_ERROR * 2));
        let (_, log) = verifier_log(&long);
        assert!(log.ends_with("THE REASON"));
        assert!(log.len() < MAX_IN_ERROR + 100);
        assert!(log.starts_with("[... "));
    }

    #[test]
    fn capture_collects_and_restores() {
        let before = libbpf_rs::get_print();
        {
            let c = Capture::begin();
            on_print(PrintLevel::Warn, "libbpf: something\n".into());
            assert_eq!(c.text(), "libbpf: something\n");
        }
        assert!(captured().is_none());
        assert_eq!(
            libbpf_rs::get_print().map(|(l, f)| (l, f as usize)),
            before.map(|(l, f)| (l, f as usize))
        );
    }
}

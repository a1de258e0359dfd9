//! Support shared by the workspace's integration tests (a dev-dependency only; nothing in a
//! shipped binary uses it).
//!
//! Not for: production code, or helpers only one test binary needs.

mod envoy;
pub mod paths;
mod wasm;

pub use envoy::envoy_proto_dir;
pub use wasm::{function_example, wasm_guest};

use std::fmt::Display;
use std::future::Future;
use std::io::Write;
use std::net::SocketAddr;
use std::time::Duration;

/// A loopback port nobody listens on, for a server the test starts (often another process,
/// which cannot be handed a bound socket). Tests run in parallel and the probe socket is
/// released before the server binds, so the kernel could hand one port to two tests: a port
/// given out once is never given out again in this process. Another process may still take
/// it meanwhile; callers that spawn servers retry on a lost race.
pub fn free_port() -> u16 {
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    loop {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("bind an ephemeral port")
            .port();
        let mut given = GIVEN
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if !given.contains(&port) {
            given.push(port);
            return port;
        }
    }
}

/// `127.0.0.1:port`.
pub fn local(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// Polls `f` every 20 ms until it returns true (true) or `within` has passed (false); `f` runs
/// at least once. Tests wait on observable state with this instead of sleeping.
pub async fn eventually<F, Fut>(within: Duration, mut f: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if f().await {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Whether this run is CI's (`CI=true` or `CI=1`, as CI services and `.ci/run` set it).
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

/// A test that cannot run its real check on this machine (not root, no BTF, a missing tool).
///
/// Outside CI: prints `*** SKIPPED: test: why ***` on the real stderr (the harness hides the
/// captured output of passing tests, `eprintln!` included) and returns, so the caller returns
/// too. In CI: panics, so that a machine that lost a capability cannot turn real checks into
/// silent passes.
#[track_caller]
pub fn skip(test: &str, why: &dyn Display) {
    assert!(
        !in_ci(),
        "{test} cannot run its real check in CI: {why}. CI must provide it (scripts/test.sh \
         installs the tools; CI runs as root with BTF and tracefs)."
    );
    let _ = writeln!(
        std::io::stderr().lock(),
        "\n*** SKIPPED: {test}: {why} ***\n"
    );
}

/// A check that does not apply to this machine, as opposed to one it cannot run: for
/// example a byte comparison with an artefact built against another kernel's headers. Prints
/// the same loud line as [`skip`], in CI too.
pub fn not_applicable(test: &str, why: &dyn Display) {
    let _ = writeln!(
        std::io::stderr().lock(),
        "\n*** SKIPPED (not applicable here): {test}: {why} ***\n"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn eventually_polls_until_true_or_the_deadline() {
        let mut n = 0;
        assert!(
            eventually(Duration::from_secs(5), || {
                n += 1;
                std::future::ready(n == 3)
            })
            .await
        );
        assert_eq!(n, 3);
        let t0 = std::time::Instant::now();
        assert!(!eventually(Duration::from_millis(60), || std::future::ready(false)).await);
        assert!(t0.elapsed() >= Duration::from_millis(60));
    }

    #[test]
    fn ci_is_recognised() {
        // The variable is read, not cached: what CI sets is what counts.
        assert_eq!(
            in_ci(),
            matches!(std::env::var("CI").as_deref(), Ok("true" | "1"))
        );
    }
}

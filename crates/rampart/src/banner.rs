//! What `rampart up` prints once the stack is ready: each endpoint, where its data lives,
//! and the dashboard's login link, as etcd and vite greet their users. Printed to stdout
//! (logs go to stderr), once.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Weak;
use std::time::{Duration, Instant};

use rampart_proxy::Gateway;

/// Everything the banner names.
#[derive(Default)]
pub(crate) struct Banner {
    /// (listener name, address)
    pub(crate) listeners: Vec<(String, SocketAddr)>,
    pub(crate) admin: Option<SocketAddr>,
    pub(crate) token_file: Option<PathBuf>,
    /// Whether this build serves the dashboard on the admin port.
    pub(crate) dashboard: bool,
    /// The store's client address and data directory.
    pub(crate) store: Option<(SocketAddr, PathBuf)>,
    /// Why the store (and the control plane) did not start, when they were wanted.
    pub(crate) store_off: Option<String>,
    /// ADS and its status address.
    pub(crate) xds: Option<(SocketAddr, SocketAddr)>,
    /// The flow metrics address, or why tracing is off (None: not in this build).
    pub(crate) flows: Option<Result<SocketAddr, String>>,
    pub(crate) policy_dir: Option<PathBuf>,
    pub(crate) functions_cache: Option<PathBuf>,
    pub(crate) demo_upstream: Option<SocketAddr>,
}

impl Banner {
    /// The text, with the token read from its file (None when it cannot be read).
    pub(crate) fn render(&self, started: Duration) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "\nRampart {} is up (ready in {:.1} s)\n",
            env!("CARGO_PKG_VERSION"),
            started.as_secs_f64()
        );
        let mut line = |what: &str, text: String| {
            let _ = writeln!(out, "  {what:<11} {text}");
        };
        for (name, addr) in &self.listeners {
            line("gateway", format!("http://{addr}  (listener {name})"));
        }
        if let Some(admin) = self.admin {
            let token = self
                .token_file
                .as_ref()
                .and_then(|p| std::fs::read_to_string(p).ok())
                .map(|t| t.trim().to_owned())
                .filter(|t| !t.is_empty());
            if self.dashboard {
                match &token {
                    Some(t) => line("dashboard", format!("http://{admin}/ui/login?token={t}")),
                    None => line(
                        "dashboard",
                        format!("http://{admin}/ui  (needs admin.token_file to sign in)"),
                    ),
                }
            }
            let where_token = match &self.token_file {
                Some(p) => format!("token in {}", p.display()),
                None => "read-only: no admin.token_file".into(),
            };
            line("admin API", format!("http://{admin}  ({where_token})"));
        }
        if let Some((addr, data)) = &self.store {
            line(
                "store",
                format!(
                    "{addr}  (etcd v3 API, etcdctl works; data in {})",
                    data.display()
                ),
            );
        }
        if let Some(why) = &self.store_off {
            line("store", format!("off: {why}"));
        }
        if let Some((ads, status)) = &self.xds {
            line(
                "xDS",
                format!("{ads}  (ADS, SotW and Delta; status http://{status}/status)"),
            );
        }
        match &self.flows {
            Some(Ok(addr)) => line("flows", format!("http://{addr}/metrics  (eBPF)")),
            Some(Err(why)) => line("flows", format!("off: {why}")),
            None => {}
        }
        if let Some(dir) = &self.policy_dir {
            line(
                "policies",
                format!(
                    "{}  (one directory per tenant; edits reload)",
                    dir.display()
                ),
            );
        }
        if let Some(dir) = &self.functions_cache {
            line("functions", format!("compiled cache in {}", dir.display()));
        }
        if let Some(addr) = self.demo_upstream {
            line("demo", format!("upstream on {addr}"));
        }
        if let Some((_, addr)) = self.listeners.first() {
            let _ = writeln!(out, "\n  try: curl -i http://{addr}/hello");
        }
        let _ = writeln!(out, "  stop: Ctrl-C\n");
        out
    }
}

/// Prints `banner` once the gateway reports ready (its first config applied), or says
/// what it is waiting for after a while.
pub(crate) async fn print_when_ready(gw: Weak<Gateway>, banner: Banner, started: Instant) {
    let mut warned = false;
    loop {
        let Some(g) = gw.upgrade() else { return };
        if g.is_ready() {
            break;
        }
        if !warned && started.elapsed() > Duration::from_secs(20) {
            match g.last_reload_error() {
                // E.g. a listener's port taken by another process.
                Some(e) => tracing::warn!(
                    "the gateway is not ready after 20 s: its config was refused: {e} (fix it with `rampart apply`, or free what it needs, e.g. stop the process on a listener's port)"
                ),
                None => tracing::warn!(
                    "the gateway is not ready after 20 s: it waits for its first config from the control plane (see the errors above)"
                ),
            }
            warned = true;
        }
        drop(g);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let text = banner.render(started.elapsed());
    // Off the control runtime: a stdout nobody reads must not stall it.
    let _ = tokio::task::spawn_blocking(move || {
        use std::io::Write as _;
        let mut stdout = std::io::stdout().lock();
        let _ = stdout.write_all(text.as_bytes());
        let _ = stdout.flush();
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_every_endpoint_and_the_login_link() {
        let dir = tempfile::tempdir().unwrap();
        let token = dir.path().join("admin.token");
        std::fs::write(&token, "abc123\n").unwrap();
        let b = Banner {
            listeners: vec![("main".into(), "127.0.0.1:8080".parse().unwrap())],
            admin: Some("127.0.0.1:9901".parse().unwrap()),
            token_file: Some(token.clone()),
            dashboard: true,
            store: Some(("127.0.0.1:2379".parse().unwrap(), "rampart-data/kv".into())),
            xds: Some((
                "127.0.0.1:18000".parse().unwrap(),
                "127.0.0.1:18001".parse().unwrap(),
            )),
            flows: Some(Err("needs root".into())),
            ..Banner::default()
        };
        let text = b.render(Duration::from_millis(1500));
        for want in [
            "gateway     http://127.0.0.1:8080",
            "dashboard   http://127.0.0.1:9901/ui/login?token=abc123",
            &format!("token in {}", token.display()),
            "data in rampart-data/kv",
            "status http://127.0.0.1:18001/status",
            "flows       off: needs root",
            "ready in 1.5 s",
        ] {
            assert!(text.contains(want), "{want:?} missing in:\n{text}");
        }
    }
}

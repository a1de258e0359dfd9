//! One conformance test, run against every config source of a real `rampart serve`: the
//! watched file, the file on SIGHUP, and the admin API's `PUT /config`. Each source must
//! apply a good config, reject a bad one while the old one keeps serving, record the
//! rejection (metrics, `/config_dump`) and clear it on the next good config, all through the
//! gateway's one `apply`.

mod support;

use std::net::SocketAddr;

use support::*;

const RELOAD_OK: &str = "rampart_config_reloads_total{result=\"success\"}";
const RELOAD_FAILED: &str = "rampart_config_reloads_total{result=\"failure\"}";
const LAST_OK: &str = "rampart_config_last_reload_success";
const TOKEN: &str = "conformance-admin-token-0123456789";

#[derive(Clone, Copy, Debug)]
enum Source {
    /// The file, polled every 100 ms.
    File,
    /// The file, not polled; read on SIGHUP.
    Sighup,
    /// `PUT /config` on the admin port.
    Admin,
}

struct Stack {
    addr: SocketAddr,
    admin: SocketAddr,
    config: std::path::PathBuf,
    token_file: std::path::PathBuf,
    proc: Proc,
    _dir: TempDir,
}

/// Routes answering `GET /` with `body`; `filter` adds a filter entry to the route.
fn routes(body: &str, filter: &str) -> String {
    format!(
        "route_tables:\n  - name: main\n    virtual_hosts:\n      - name: all\n        \
         domains: [\"*\"]\n        routes:\n          - match: {{ path: {{ prefix: / }} }}\n            \
         direct_response: {{ status: 200, body: \"{body}\" }}\n            filters: [{filter}]\n"
    )
}

/// The whole file: a listener on `addr`, the admin port on `admin` with its token file.
fn file_text(
    addr: SocketAddr,
    admin: SocketAddr,
    token_file: &std::path::Path,
    body: &str,
) -> String {
    format!(
        "workers: 1\nadmin: {{ address: \"{admin}\", token_file: \"{}\" }}\nlisteners:\n  - name: main\n    \
         address: \"{addr}\"\n    route_table: main\n{body}",
        token_file.display()
    )
}

async fn start(test: &str, source: Source) -> Stack {
    let interval = match source {
        Source::File => "100ms",
        Source::Sighup | Source::Admin => "0s",
    };
    let dir = TempDir::new(test);
    let config = dir.path("rampart.yaml");
    let token_file = dir.path("admin.token");
    std::fs::write(&token_file, TOKEN).unwrap();
    let (proc, addr, admin) = spawn_serve(
        test,
        &config,
        |addr, admin| file_text(addr, admin, &token_file, &routes("v1", "")),
        &["--watch-interval", interval],
    )
    .await;
    Stack {
        addr,
        admin,
        config,
        token_file,
        proc,
        _dir: dir,
    }
}

impl Stack {
    /// The file for `body`, with the listeners as configured (port 0, so they are kept).
    fn text(&self, body: &str) -> String {
        file_text(ANY_PORT, ANY_PORT, &self.token_file, body)
    }

    /// Offers a config through `source`; the admin API answers, the file does not.
    async fn push(&mut self, source: Source, body: &str) -> Option<Reply> {
        let text = self.text(body);
        match source {
            Source::File => {
                write_atomically(&self.config, &text);
                None
            }
            Source::Sighup => {
                write_atomically(&self.config, &text);
                self.proc.signal("HUP");
                None
            }
            Source::Admin => Some(admin_put(self.admin, &text, Some(TOKEN)).await),
        }
    }

    async fn dump(&self) -> serde_json::Value {
        get(self.admin, "/config_dump").await.json()
    }
}

async fn admin_put(admin: SocketAddr, yaml: &str, token: Option<&str>) -> Reply {
    let mut req = http::Request::builder()
        .method(http::Method::PUT)
        .uri(format!("http://{admin}/config"));
    if let Some(t) = token {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    let req = req
        .body(http_body_util::Full::new(bytes::Bytes::from(
            yaml.to_owned(),
        )))
        .unwrap();
    send(&h1(), req).await
}

async fn serves(addr: SocketAddr, body: &str) -> bool {
    eventually(STARTUP, || async { get(addr, "/").await.text() == body }).await
}

async fn conformance(test: &str, source: Source) {
    let mut s = start(test, source).await;
    let (addr, admin) = (s.addr, s.admin);
    assert_eq!(get(addr, "/").await.text(), "v1");

    // A good config is applied, once.
    let r = s.push(source, &routes("v2", "")).await;
    if let Some(r) = r {
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.json()["version"], 2);
    }
    assert!(serves(addr, "v2").await, "{source:?}: v2 never served");
    await_metric(admin, RELOAD_OK, 1.0).await;
    assert_eq!(s.dump().await["version"], 2);

    // A bad one is rejected with its field path; v2 keeps serving.
    let bad = routes("v3-bad", "{ nope: {} }");
    let r = s.push(source, &bad).await;
    if let Some(r) = r {
        assert_eq!(r.status, 400, "{}", r.text());
        let errors = r.json()["errors"].to_string();
        assert!(
            errors.contains("filters[0].nope: unknown filter"),
            "{errors}"
        );
    }
    await_metric(admin, RELOAD_FAILED, 1.0).await;
    await_metric(admin, LAST_OK, 0.0).await;
    let dump = s.dump().await;
    assert!(
        dump["last_reload_error"]
            .as_str()
            .is_some_and(|e| e.contains("filters[0].nope: unknown filter")),
        "{source:?}: {dump}"
    );
    assert_eq!(dump["version"], 2);
    assert_eq!(
        get(addr, "/").await.text(),
        "v2",
        "the old config keeps serving"
    );

    // The next good one clears the error.
    s.push(source, &routes("v3", "")).await;
    assert!(serves(addr, "v3").await, "{source:?}: v3 never served");
    await_metric(admin, LAST_OK, 1.0).await;
    let dump = s.dump().await;
    assert!(dump["last_reload_error"].is_null(), "{dump}");
    assert_eq!(dump["version"], 3);
    await_metric(admin, RELOAD_OK, 2.0).await;
}

#[tokio::test]
async fn the_watched_file_conforms() {
    conformance("source-file", Source::File).await;
}

#[tokio::test]
async fn the_file_on_sighup_conforms() {
    conformance("source-sighup", Source::Sighup).await;
}

#[tokio::test]
async fn the_admin_api_conforms() {
    conformance("source-admin", Source::Admin).await;
}

#[tokio::test]
async fn the_admin_api_applies_nothing_without_the_token() {
    let s = start("source-admin-auth", Source::Admin).await;
    let text = s.text(&routes("evil", ""));
    for token in [None, Some("wrong-token-wrong-token-0123456")] {
        let r = admin_put(s.admin, &text, token).await;
        assert_eq!(r.status, 401, "{}", r.text());
    }
    assert_eq!(get(s.addr, "/").await.text(), "v1");
    assert_eq!(s.dump().await["version"], 1);
    let m = metrics(s.admin).await;
    assert_eq!(
        metric(&m, RELOAD_FAILED).unwrap_or(0.0),
        0.0,
        "a refused request is not a reload"
    );
    assert_eq!(metric(&m, LAST_OK), Some(1.0));
}

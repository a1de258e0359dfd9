//! The dashboard of a real `rampart up` (on its fixed ports, as a new user runs it): the
//! ready banner, who may open `/ui` and change things with a session (each attack as a raw
//! request against the process), and every page in headless Chromium with Playwright and
//! axe-core (`tests/ui/dashboard.mjs`).

mod support;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use http::{Method, StatusCode};
use support::*;

/// What the browser test needs: node, Chromium, and playwright-core + axe-core from npm
/// (scripts/test.sh installs them); the reason when something is missing.
fn browser_tools() -> Result<(PathBuf, PathBuf), String> {
    let modules = PathBuf::from(
        std::env::var("RAMPART_NODE_MODULES")
            .unwrap_or_else(|_| "/var/cache/rampart/node/node_modules".into()),
    );
    for package in ["playwright-core", "axe-core"] {
        if !modules.join(package).join("package.json").exists() {
            return Err(format!(
                "{package} is not in {} (scripts/test.sh installs it with npm)",
                modules.display()
            ));
        }
    }
    let chromium = PathBuf::from(
        std::env::var("RAMPART_CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into()),
    );
    if !chromium.exists() {
        return Err(format!(
            "no Chromium at {} (apt-get install chromium)",
            chromium.display()
        ));
    }
    let node_ok = std::process::Command::new("node")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !node_ok {
        return Err("no node on PATH (apt-get install nodejs)".into());
    }
    Ok((modules, chromium))
}

/// The demo tenant acme's bundle as the admin API takes it.
fn acme_bundle() -> String {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../examples/policy/tenants/acme");
    let read = |f: &str| std::fs::read_to_string(dir.join(f)).unwrap();
    serde_json::json!({
        "modules": {
            "authz.rego": read("authz.rego"),
            "authz_test.rego": read("authz_test.rego"),
        },
        "data": serde_json::from_str::<serde_json::Value>(&read("data.json")).unwrap(),
    })
    .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_user_opens_the_printed_dashboard_and_sees_the_stack_live() {
    let (gw, admin) = (local(8080), local(9901));
    assert_up_ports_free();
    let dir = TempDir::new("dashboard");
    // The store's port taken: the gateway still starts, on its config, and the banner
    // says why the store is off and what to do.
    {
        let _taken = std::net::TcpListener::bind(local(2379)).unwrap();
        let mut up = Proc::spawn(
            "rampart up (store port taken)",
            &[
                "up",
                "--flows-listen",
                "off",
                "--data-dir",
                dir.path("taken/kv").to_str().unwrap(),
                "--policy-dir",
                dir.path("taken/tenants").to_str().unwrap(),
            ],
        );
        assert!(
            await_ok(&mut up, admin, "/ready").await,
            "up without its store did not start: {}",
            up.stderr()
        );
        assert!(
            eventually(Duration::from_secs(10), || async {
                up.stdout().contains("is up")
            })
            .await
        );
        let banner = up.stdout();
        assert!(
            banner.contains("store       off: 127.0.0.1:2379 is not free")
                && banner.contains("Stop it"),
            "{banner}"
        );
        assert!(
            !banner.contains("xDS         "),
            "no control plane: {banner}"
        );
        let r = get(gw, "/healthz").await;
        assert_eq!(
            r.status,
            StatusCode::OK,
            "the gateway serves without the store"
        );
        up.signal("TERM");
        assert!(up.wait_exit(Duration::from_secs(30)).await.success());
    }
    // The demo upstream as its own process, so the test can kill it.
    let demo = Proc::spawn(
        "demo-upstream",
        &["demo-upstream", "--listen", "127.0.0.1:8081"],
    );
    let labels_dir = format!("/sys/fs/bpf/rampart-dash-{}", std::process::id());
    // `up` is not told: it finds the demo port taken, says so, and starts the rest.
    let mut up = spawn_up(&dir, &labels_dir, &[]).await;
    let token = std::fs::read_to_string(dir.path("admin.token"))
        .unwrap()
        .trim()
        .to_owned();

    // The banner: every endpoint, where data lives, and the login link with the token.
    let login = format!("http://{admin}/ui/login?token={token}");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !up.stdout().contains("is up") && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let banner = up.stdout();
    for want in [
        format!("gateway     http://{gw}"),
        format!("dashboard   {login}"),
        format!("admin API   http://{admin}"),
        "store       127.0.0.1:2379".to_owned(),
        format!("data in {}", dir.path("kv").display()),
        "xDS         127.0.0.1:18000".to_owned(),
        "flows       ".to_owned(),
        format!("policies    {}", dir.path("tenants").display()),
    ] {
        assert!(
            banner.contains(&want),
            "{want:?} not in the banner:\n{banner}"
        );
    }
    assert_eq!(banner.matches("is up").count(), 1, "printed once");
    assert!(!banner.contains("demo        upstream"), "{banner}");
    assert!(
        up.stderr()
            .contains("the demo upstream cannot listen on 127.0.0.1:8081 (Address already in use"),
        "{}",
        up.stderr()
    );

    // Who may in: the raw requests an attacker would send.
    let client = h1();
    let html = [("accept", "text/html")];
    let r = send(&client, request(Method::GET, admin, "/ui", &html)).await;
    assert_eq!(
        r.status,
        StatusCode::SEE_OTHER,
        "no session: to the login page"
    );
    assert_eq!(r.header("location"), Some("/ui/login"));
    let r = send(&client, request(Method::GET, admin, "/ui/events", &[])).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED, "no session, no feed");
    let r = send(
        &client,
        request(Method::GET, admin, "/ui/login?token=not-the-token", &[]),
    )
    .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert!(r.header("set-cookie").is_none());
    let r = send(
        &client,
        request(
            Method::GET,
            admin,
            "/ui",
            &[("cookie", "rampart_session=v1.99999999999.00")],
        ),
    )
    .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED, "a forged cookie");
    let r = send(
        &client,
        request(Method::GET, admin, &format!("/ui/login?token={token}"), &[]),
    )
    .await;
    assert_eq!(r.status, StatusCode::SEE_OTHER);
    let set = r.header("set-cookie").expect("a session cookie").to_owned();
    for attr in ["HttpOnly", "SameSite=Strict", "Path=/"] {
        assert!(set.contains(attr), "{attr} in {set}");
    }
    let cookie = set.split(';').next().unwrap().to_owned();
    let r = send(
        &client,
        request(Method::GET, admin, "/ui", &[("cookie", &cookie)]),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    let csp = r.header("content-security-policy").unwrap_or("");
    assert!(
        csp.contains("script-src 'self'") && csp.contains("frame-ancestors 'none'"),
        "{csp}"
    );
    // A change with the cookie from another site's page is refused; from the port's own
    // page it reaches the API (which refuses the empty bundle on its merits).
    let put = |origin: &'static str| {
        http::Request::put(format!("http://{admin}/policy/tenants/acme"))
            .header("cookie", &cookie)
            .header("origin", origin)
            .header("content-type", "application/json")
            .body(http_body_util::Full::new(bytes::Bytes::from_static(
                b"{\"modules\": {}}",
            )))
            .unwrap()
    };
    let r = send(&client, put("http://evil.example")).await;
    assert_eq!(
        r.status,
        StatusCode::UNAUTHORIZED,
        "cross-site change with the cookie"
    );
    let r = send(&client, put("http://127.0.0.1:9901")).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.text());
    // Signing a victim's browser in from another site (login CSRF) is refused.
    let r = send(
        &client,
        http::Request::post(format!("http://{admin}/ui/login"))
            .header("origin", "http://evil.example")
            .header("content-type", "application/x-www-form-urlencoded")
            .body(http_body_util::Full::new(bytes::Bytes::from(format!(
                "token={token}"
            ))))
            .unwrap(),
    )
    .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);

    // The pages in a real browser.
    let (modules, chromium) = match browser_tools() {
        Ok(t) => t,
        Err(why) => {
            loud_skip("dashboard in Chromium", &why);
            return;
        }
    };
    let artifacts = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("dashboard");
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/ui/dashboard.mjs");
    // Bounded: `timeout` stops the browser test if it hangs.
    let mut node = std::process::Command::new("timeout");
    node.arg("240")
        .arg("node")
        .arg(&script)
        .env("RAMPART_UI_LOGIN", &login)
        .env("RAMPART_GATEWAY", format!("http://{gw}"))
        .env("RAMPART_ADMIN", format!("http://{admin}"))
        .env("RAMPART_TOKEN", &token)
        .env("RAMPART_DEMO_PID", demo.pid().to_string())
        .env("RAMPART_NODE_MODULES", &modules)
        .env("RAMPART_CHROMIUM", &chromium)
        .env("RAMPART_ARTIFACTS", &artifacts)
        .env("RAMPART_ACME_BUNDLE", acme_bundle());
    let out = tokio::task::spawn_blocking(move || node.output())
        .await
        .unwrap()
        .expect("node runs");
    let log = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    println!("{log}");
    assert!(
        out.status.success(),
        "the browser test failed:\n{log}\nrampart up's log:\n{}",
        up.stderr()
    );
    for page in [
        "overview",
        "routes",
        "clusters",
        "policies",
        "xds",
        "store",
        "functions",
        "flows",
    ] {
        assert!(
            artifacts.join(format!("{page}.png")).exists(),
            "screenshot of {page}"
        );
    }
    up.signal("TERM");
    let status = up.wait_exit(Duration::from_secs(30)).await;
    assert!(status.success(), "rampart up stops cleanly: {status:?}");
    drop(demo);
}

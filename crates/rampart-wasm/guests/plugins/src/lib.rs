//! A proxy-wasm plugin written the way Envoy plugins are, with the public SDK, for the
//! host's tests. Its configuration is `key=value` entries separated by `;`:
//!
//! - `NAME=VALUE` (any other key): adds that request header; answers 403 itself when the
//!   request carries `x-deny`, replaces `x-replace`, removes `x-remove`, adds
//!   `x-seen-path`, and marks responses with `x-plugin-response: seen`.
//! - `body=upper`: buffers the request body and upper-cases it; buffers the response body
//!   and appends `!` (both drop `content-length`, as Envoy plugins that rewrite must).
//! - `auth=CLUSTER`: asks `CLUSTER` for `/status/<x-token>` with an HTTP call and pauses;
//!   a 200 resumes the request with `x-auth-status: 200`, any other answer is refused with
//!   403, no `x-token` with 401.
//! - `shared=on`: counts requests in shared data (compare-and-swap), ticks every 20 ms
//!   (counted in shared data), and sends each request's path through a shared queue whose
//!   notices are counted; the counts come back as response headers `x-count`, `x-ticks`,
//!   `x-queued`.
//! - `props=on`: copies properties into request headers (`x-prop-path`, `x-prop-source`,
//!   `x-prop-route`, `x-prop-plugin`, `x-prop-id`) and the response code into `x-prop-code`.
//! - `trailers=on`: adds `x-plugin-trailer: seen` to response trailers and records the
//!   request trailers' count in `x-request-trailers` (a response header).
//! - `fail=HOW[@PHASE]`: misbehaves instead — `trap` (a panic), `loop` (forever), `flood`
//!   (ten thousand headers), `log` (a million log lines) — in request headers, or in the
//!   phase named: `configure`, `request_body`, `response_headers`, `response_body`,
//!   `response_trailers`, `log`, `tick`, `call_response`.

use std::collections::HashMap;
use std::time::Duration;

use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel};

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> {
        Box::new(Root { settings: Settings::default(), queue: None })
    });
}}

#[derive(Clone, Default)]
struct Settings {
    header: Option<(String, String)>,
    entries: HashMap<String, String>,
}

impl Settings {
    fn parse(text: &str) -> Option<Self> {
        let mut s = Settings::default();
        for entry in text.split(';').filter(|e| !e.trim().is_empty()) {
            let (k, v) = entry.split_once('=')?;
            let (k, v) = (k.trim().to_owned(), v.trim().to_owned());
            match k.as_str() {
                "body" | "auth" | "shared" | "props" | "trailers" | "fail" => {
                    s.entries.insert(k, v);
                }
                _ => s.header = Some((k, v)),
            }
        }
        Some(s)
    }

    fn get(&self, key: &str) -> Option<&str> {
        self.entries.get(key).map(String::as_str)
    }

    /// How to fail in `phase`, if this is the phase to fail in.
    fn fail_in(&self, phase: &str) -> Option<&str> {
        let f = self.get("fail")?;
        match f.split_once('@') {
            Some((how, at)) if at == phase => Some(how),
            Some(_) => None,
            None if phase == "request_headers" => Some(f),
            None => None,
        }
    }
}

fn misbehave(how: &str, ctx: &dyn HttpContext) {
    match how {
        "trap" => panic!("a plugin bug"),
        "loop" => loop {
            std::hint::black_box(how);
        },
        "flood" => {
            for i in 0..10_000 {
                ctx.add_http_request_header(&format!("x-flood-{i}"), "x");
            }
        }
        _ => {
            for i in 0..1_000_000 {
                log::info!("flood {i}");
            }
        }
    }
}

struct Root {
    settings: Settings,
    queue: Option<u32>,
}

impl Context for Root {}

impl RootContext for Root {
    fn on_configure(&mut self, _size: usize) -> bool {
        let Some(config) = self.get_plugin_configuration() else {
            return false;
        };
        let text = String::from_utf8_lossy(&config).into_owned();
        let Some(settings) = Settings::parse(&text) else {
            log::error!("configuration must be key=value entries, got {text:?}");
            return false;
        };
        if settings.header.is_none() && settings.entries.is_empty() {
            log::error!("configuration must be key=value entries, got {text:?}");
            return false;
        }
        if settings.fail_in("configure") == Some("trap") {
            panic!("a plugin bug in on_configure");
        }
        if settings.get("shared") == Some("on") {
            self.set_tick_period(Duration::from_millis(20));
            self.queue = Some(self.register_shared_queue("paths"));
        }
        if let Some((k, v)) = &settings.header {
            log::info!("configured: {k}={v}");
        }
        self.settings = settings;
        true
    }

    fn on_tick(&mut self) {
        if self.settings.fail_in("tick") == Some("trap") {
            panic!("a plugin bug in on_tick");
        }
        add_shared("ticks", 1);
    }

    fn on_queue_ready(&mut self, queue_id: u32) {
        while let Ok(Some(_)) = self.dequeue_shared_queue(queue_id) {
            add_shared("queued", 1);
        }
    }

    fn create_http_context(&self, _id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Request {
            settings: self.settings.clone(),
            queue: self.queue,
            body_seen: false,
            request_trailers: None,
        }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

/// Adds `n` to the shared counter `key`, retrying on a compare-and-swap conflict.
fn add_shared(key: &str, n: u64) -> u64 {
    loop {
        let (value, cas) = proxy_wasm::hostcalls::get_shared_data(key).unwrap_or((None, None));
        let now = value
            .and_then(|v| String::from_utf8(v).ok())
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
            + n;
        let text = now.to_string();
        match proxy_wasm::hostcalls::set_shared_data(key, Some(text.as_bytes()), cas) {
            Ok(()) => return now,
            Err(_) => continue,
        }
    }
}

fn read_shared(key: &str) -> String {
    proxy_wasm::hostcalls::get_shared_data(key)
        .ok()
        .and_then(|(v, _)| v)
        .map(|v| String::from_utf8_lossy(&v).into_owned())
        .unwrap_or_else(|| "0".into())
}

struct Request {
    settings: Settings,
    queue: Option<u32>,
    body_seen: bool,
    request_trailers: Option<usize>,
}

impl Context for Request {
    fn on_http_call_response(&mut self, _token: u32, _headers: usize, _body: usize, _trailers: usize) {
        if self.settings.fail_in("call_response") == Some("trap") {
            panic!("a plugin bug in on_http_call_response");
        }
        let status = self
            .get_http_call_response_header(":status")
            .unwrap_or_default();
        if status == "200" {
            self.set_http_request_header("x-auth-status", Some(&status));
            self.resume_http_request();
        } else {
            let reason = format!("denied by the auth service ({status})\n");
            self.send_http_response(403, vec![], Some(reason.as_bytes()));
        }
    }
}

impl Request {
    fn properties(&self) {
        let text = |path: Vec<&str>| {
            self.get_property(path)
                .map(|v| String::from_utf8_lossy(&v).into_owned())
                .unwrap_or_else(|| "-".into())
        };
        self.add_http_request_header("x-prop-path", &text(vec!["request", "path"]));
        self.add_http_request_header("x-prop-source", &text(vec!["source", "address"]));
        self.add_http_request_header("x-prop-route", &text(vec!["route_name"]));
        self.add_http_request_header("x-prop-plugin", &text(vec!["plugin_name"]));
        self.add_http_request_header("x-prop-id", &text(vec!["request", "id"]));
    }

    fn auth(&self, cluster: &str) -> Action {
        let Some(token) = self.get_http_request_header("x-token") else {
            self.send_http_response(401, vec![], Some(b"no token\n"));
            return Action::Pause;
        };
        let path = format!("/status/{token}");
        let call = self.dispatch_http_call(
            cluster,
            vec![(":method", "GET"), (":path", &path), (":authority", "auth")],
            None,
            vec![],
            Duration::from_secs(2),
        );
        if let Err(e) = call {
            log::error!("auth call failed: {e:?}");
            self.send_http_response(500, vec![], Some(b"auth call failed\n"));
        }
        Action::Pause
    }
}

impl HttpContext for Request {
    fn on_http_request_headers(&mut self, _n: usize, _end_of_stream: bool) -> Action {
        if let Some(how) = self.settings.fail_in("request_headers") {
            misbehave(how, self);
            return Action::Continue;
        }
        if self.get_http_request_header("x-deny").is_some() {
            self.send_http_response(403, vec![("x-denied-by", "plugin")], Some(b"denied by plugin\n"));
            return Action::Pause;
        }
        if let Some((k, v)) = &self.settings.header {
            self.add_http_request_header(k, v);
        }
        if self.get_http_request_header("x-replace").is_some() {
            self.set_http_request_header("x-replace", Some("replaced"));
        }
        self.set_http_request_header("x-remove", None);
        let path = self.get_http_request_header(":path").unwrap_or_default();
        self.add_http_request_header("x-seen-path", &path);
        if self.settings.get("body") == Some("upper") {
            self.set_http_request_header("content-length", None);
        }
        if self.settings.get("props") == Some("on") {
            self.properties();
        }
        if self.settings.get("shared") == Some("on") {
            add_shared("requests", 1);
            if let Some(q) = self.queue {
                let _ = self.enqueue_shared_queue(q, Some(path.as_bytes()));
            }
        }
        if let Some(cluster) = self.settings.get("auth").map(str::to_owned) {
            return self.auth(&cluster);
        }
        Action::Continue
    }

    fn on_http_request_body(&mut self, size: usize, end_of_stream: bool) -> Action {
        if let Some(how) = self.settings.fail_in("request_body") {
            misbehave(how, self);
        }
        if self.settings.get("body") != Some("upper") {
            return Action::Continue;
        }
        if !end_of_stream {
            return Action::Pause;
        }
        let body = self.get_http_request_body(0, size).unwrap_or_default();
        self.set_http_request_body(0, size, &body.to_ascii_uppercase());
        Action::Continue
    }

    fn on_http_request_trailers(&mut self, n: usize) -> Action {
        self.request_trailers = Some(n);
        Action::Continue
    }

    fn on_http_response_headers(&mut self, _n: usize, _end_of_stream: bool) -> Action {
        if let Some(how) = self.settings.fail_in("response_headers") {
            misbehave(how, self);
        }
        self.add_http_response_header("x-plugin-response", "seen");
        if self.settings.get("body") == Some("upper") {
            self.set_http_response_header("content-length", None);
        }
        if self.settings.get("shared") == Some("on") {
            self.add_http_response_header("x-count", &read_shared("requests"));
            self.add_http_response_header("x-ticks", &read_shared("ticks"));
            self.add_http_response_header("x-queued", &read_shared("queued"));
        }
        if self.settings.get("props") == Some("on") {
            let code = self
                .get_property(vec!["response", "code"])
                .and_then(|v| <[u8; 8]>::try_from(v.as_slice()).ok())
                .map_or(-1, i64::from_le_bytes);
            self.add_http_response_header("x-prop-code", &code.to_string());
        }
        if let Some(n) = self.request_trailers {
            self.add_http_response_header("x-request-trailers", &n.to_string());
        }
        Action::Continue
    }

    fn on_http_response_body(&mut self, size: usize, end_of_stream: bool) -> Action {
        if let Some(how) = self.settings.fail_in("response_body") {
            misbehave(how, self);
        }
        if self.settings.get("body") != Some("upper") {
            return Action::Continue;
        }
        self.body_seen = true;
        if !end_of_stream {
            return Action::Pause;
        }
        self.set_http_response_body(size, 0, b"!");
        Action::Continue
    }

    fn on_http_response_trailers(&mut self, _n: usize) -> Action {
        if let Some(how) = self.settings.fail_in("response_trailers") {
            misbehave(how, self);
        }
        if self.settings.get("trailers") == Some("on") {
            self.add_http_response_trailer("x-plugin-trailer", "seen");
        }
        Action::Continue
    }

    fn on_log(&mut self) {
        if let Some(how) = self.settings.fail_in("log") {
            misbehave(how, self);
        }
    }
}

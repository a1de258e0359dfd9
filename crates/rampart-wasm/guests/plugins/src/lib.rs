//! A proxy-wasm plugin written the way Envoy plugins are, with the public SDK: adds the
//! request header named in its configuration (`name=value`), answers 403 itself when the
//! request carries `x-deny`, replaces `x-replace`, removes `x-remove`, and marks responses.
//!
//! Configured `fail=trap`, `fail=loop`, `fail=flood` or `fail=log`, it misbehaves on every
//! request instead (a panic, an endless loop, ten thousand headers, a million log lines),
//! for the host's adversarial tests.

use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel};

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> {
        Box::new(Root { header: ("x-plugin".into(), "unconfigured".into()) })
    });
}}

struct Root {
    header: (String, String),
}

impl Context for Root {}

impl RootContext for Root {
    fn on_configure(&mut self, _size: usize) -> bool {
        let Some(config) = self.get_plugin_configuration() else {
            return false;
        };
        let text = String::from_utf8_lossy(&config).into_owned();
        let Some((name, value)) = text.split_once('=') else {
            log::error!("configuration must be name=value, got {text:?}");
            return false;
        };
        self.header = (name.trim().to_owned(), value.trim().to_owned());
        log::info!("configured: {}={}", self.header.0, self.header.1);
        true
    }

    fn create_http_context(&self, _id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Request {
            header: self.header.clone(),
        }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct Request {
    header: (String, String),
}

impl Context for Request {}

impl HttpContext for Request {
    fn on_http_request_headers(&mut self, _n: usize, _end_of_stream: bool) -> Action {
        if self.header.0 == "fail" {
            match self.header.1.as_str() {
                "trap" => panic!("a plugin bug"),
                "loop" => loop {
                    std::hint::black_box(&self.header);
                },
                "flood" => {
                    for i in 0..10_000 {
                        self.add_http_request_header(&format!("x-flood-{i}"), "x");
                    }
                }
                _ => {
                    for i in 0..1_000_000 {
                        log::info!("flood {i}");
                    }
                }
            }
            return Action::Continue;
        }
        if self.get_http_request_header("x-deny").is_some() {
            self.send_http_response(403, vec![("x-denied-by", "plugin")], Some(b"denied by plugin\n"));
            return Action::Pause;
        }
        self.add_http_request_header(&self.header.0, &self.header.1);
        if self.get_http_request_header("x-replace").is_some() {
            self.set_http_request_header("x-replace", Some("replaced"));
        }
        self.set_http_request_header("x-remove", None);
        let path = self.get_http_request_header(":path").unwrap_or_default();
        self.add_http_request_header("x-seen-path", &path);
        Action::Continue
    }

    fn on_http_response_headers(&mut self, _n: usize, _end_of_stream: bool) -> Action {
        self.add_http_response_header("x-plugin-response", "seen");
        Action::Continue
    }
}

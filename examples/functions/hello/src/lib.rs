//! `hello`: answers any request with `200 hello, <GREETING_NAME>\n` (`hello, world\n` when
//! the variable is unset), and writes a line to stderr to show that stderr reaches the logs.

#[allow(dead_code)]
#[path = "../../common.rs"]
mod common;

use wasip2::exports::http::incoming_handler::Guest;
use wasip2::http::types::{IncomingRequest, ResponseOutparam};

struct Hello;

impl Guest for Hello {
    fn handle(request: IncomingRequest, out: ResponseOutparam) {
        common::log_request("hello", &request);
        eprintln!("hello: stderr works");
        let name = std::env::var("GREETING_NAME").unwrap_or_else(|_| "world".to_owned());
        common::respond(
            out,
            200,
            "text/plain; charset=utf-8",
            format!("hello, {name}\n").as_bytes(),
        );
    }
}

wasip2::http::proxy::export!(Hello);

//! `misbehave`: a function that breaks the rules on request, for the isolation tests. By path
//! (the query is ignored): `/trap` panics (a trap), `/spin` loops forever, `/grow` allocates
//! memory a MiB at a time until none is left (then aborts), `/big` answers a 64 MiB body, and
//! anything else answers `200 ok`.

#[allow(dead_code)]
#[path = "../../common.rs"]
mod common;

use wasip2::exports::http::incoming_handler::Guest;
use wasip2::http::types::{IncomingRequest, ResponseOutparam};

const MIB: usize = 1024 * 1024;

struct Misbehave;

impl Guest for Misbehave {
    fn handle(request: IncomingRequest, out: ResponseOutparam) {
        let (_, path) = common::log_request("misbehave", &request);
        match path.split('?').next().unwrap_or_default() {
            "/trap" => panic!("asked to trap"),
            "/spin" => spin(),
            "/grow" => grow(),
            "/big" => big(out),
            _ => common::respond(out, 200, "text/plain", b"ok\n"),
        }
    }
}

/// Never returns, and the optimiser cannot prove the loop does nothing.
fn spin() -> ! {
    let mut counter: u64 = 0;
    loop {
        counter = counter.wrapping_add(1);
        core::hint::black_box(counter);
    }
}

/// Keeps every MiB it allocates, and writes to all of it so that it is really used.
fn grow() -> ! {
    let mut blocks: Vec<Vec<u8>> = Vec::with_capacity(4096);
    loop {
        let mut block = Vec::new();
        if block.try_reserve_exact(MIB).is_err() {
            eprintln!("misbehave: out of memory after {} MiB", blocks.len());
            std::process::abort();
        }
        block.resize(MIB, 0xa5);
        blocks.push(core::hint::black_box(block));
    }
}

/// 200 with a 64 MiB body of `x`, written 64 KiB at a time.
fn big(out: ResponseOutparam) {
    let writer = common::Writer::start(out, 200, common::content_type("application/octet-stream"));
    let chunk = vec![b'x'; 64 * 1024];
    for _ in 0..(64 * MIB / chunk.len()) {
        if let Err(e) = writer.write(&chunk) {
            eprintln!("misbehave: cannot write the big body: {e:?}");
            return;
        }
    }
    writer.finish();
}

wasip2::http::proxy::export!(Misbehave);

//! A proxy-wasm plugin written with the public SDK (`proxy-wasm` 0.2.5, as Envoy plugins
//! are; `guests/plugins`) runs in Rampart's host: configured from its plugin configuration,
//! it adds, replaces and removes request headers, answers a request itself, marks the
//! response, and logs through the host.

use std::time::Duration;

use rampart_wasm::proxy_wasm::{Verdict, Vm};
use rampart_wasm::{Limits, Sandbox, WasmError};

fn plugin(s: &Sandbox) -> Option<wasmtime::Module> {
    match rampart_test_support::wasm_guest("wasm32-wasip1", "rampart_test_plugins") {
        Ok(path) => Some(wasmtime::Module::from_file(s.engine(), path).unwrap()),
        Err(why) => {
            rampart_test_support::skip("the proxy-wasm test plugin", &why);
            None
        }
    }
}

fn sandbox() -> Sandbox {
    Sandbox::new(Limits {
        deadline: Duration::from_millis(500),
        ..Limits::default()
    })
    .unwrap()
}

fn headers(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

fn get<'a>(h: &'a [(String, String)], name: &str) -> Vec<&'a str> {
    h.iter()
        .filter(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
        .collect()
}

#[test]
fn an_sdk_plugin_edits_headers_answers_requests_and_logs() {
    let s = sandbox();
    let Some(module) = plugin(&s) else { return };
    let mut vm = Vm::start(&s, &module, b"x-tenant=acme").unwrap();
    let logs = vm.take_logs();
    assert!(
        logs.iter()
            .any(|l| l.message == "configured: x-tenant=acme" && l.level == 2),
        "{logs:?}"
    );

    let ctx = vm.open(&s).unwrap();
    let mut req = headers(&[
        (":method", "GET"),
        (":path", "/orders"),
        (":authority", "api"),
        ("x-replace", "old"),
        ("x-remove", "gone"),
    ]);
    assert_eq!(
        vm.request_headers(&s, ctx, &mut req, true).unwrap(),
        Verdict::Continue
    );
    assert_eq!(get(&req, "x-tenant"), ["acme"]);
    assert_eq!(get(&req, "x-replace"), ["replaced"]);
    assert!(get(&req, "x-remove").is_empty());
    assert_eq!(get(&req, "x-seen-path"), ["/orders"]);
    let mut resp = headers(&[(":status", "200"), ("content-type", "text/plain")]);
    assert_eq!(
        vm.response_headers(&s, ctx, &mut resp, false).unwrap(),
        Verdict::Continue
    );
    assert_eq!(get(&resp, "x-plugin-response"), ["seen"]);
    vm.done(&s, ctx).unwrap();

    // The plugin answers this one itself.
    let ctx = vm.open(&s).unwrap();
    let mut req = headers(&[(":method", "GET"), (":path", "/"), ("x-deny", "1")]);
    let Verdict::Respond(local) = vm.request_headers(&s, ctx, &mut req, true).unwrap() else {
        panic!("the plugin let a denied request through")
    };
    assert_eq!(local.status, 403);
    assert_eq!(local.body, b"denied by plugin\n");
    assert_eq!(get(&local.headers, "x-denied-by"), ["plugin"]);
    vm.done(&s, ctx).unwrap();
}

#[test]
fn a_plugin_that_rejects_its_configuration_is_refused() {
    let s = sandbox();
    let Some(module) = plugin(&s) else { return };
    let Err(e) = Vm::start(&s, &module, b"not a name value pair") else {
        panic!("started with a configuration it rejects")
    };
    assert!(
        matches!(&e, WasmError::Instantiate(m) if m.contains("rejected its configuration")),
        "{e}"
    );
}

#[test]
fn many_requests_reuse_one_vm() {
    let s = sandbox();
    let Some(module) = plugin(&s) else { return };
    let mut vm = Vm::start(&s, &module, b"x-n=1").unwrap();
    for i in 0..2000 {
        let ctx = vm.open(&s).unwrap();
        let path = format!("/r/{i}");
        let mut req = headers(&[(":method", "GET"), (":path", &path)]);
        assert_eq!(
            vm.request_headers(&s, ctx, &mut req, true).unwrap(),
            Verdict::Continue
        );
        assert_eq!(get(&req, "x-seen-path"), [path.as_str()]);
        vm.done(&s, ctx).unwrap();
    }
}

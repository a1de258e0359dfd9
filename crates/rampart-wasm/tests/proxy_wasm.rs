//! A proxy-wasm plugin written with the public SDK (`proxy-wasm` 0.2.5, as Envoy plugins
//! are; `guests/plugins`) runs in Rampart's host: configured from its plugin configuration,
//! it edits request headers, answers a request itself, rewrites buffered bodies, makes an
//! HTTP call and resumes on its answer, reads request properties, shares data and queues
//! between VMs, ticks, and logs through the host. Each callback that traps is the call's
//! error, and leaves no context behind.

use std::borrow::Cow;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::HeaderMap;
use rampart_wasm::proxy_wasm::{
    CallResponse, Headers, Plugin, Prepared, QueueNotifier, RequestInfo, Verdict, Vm,
};
use rampart_wasm::{Limits, Sandbox, WasmError};

fn module(s: &Sandbox) -> Option<wasmtime::Module> {
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

fn prepared(s: &Sandbox, config: &str) -> Option<Prepared> {
    let m = module(s)?;
    let plugin = Plugin {
        config: config.as_bytes().to_vec(),
        name: "test-plugin".into(),
        vm_id: format!("vm-{config}"),
    };
    Some(Prepared::new(s, &m, plugin).unwrap())
}

fn request(path: &str, extra: &[(&str, &str)]) -> Headers {
    let mut map = HeaderMap::new();
    for (k, v) in extra {
        map.append(
            http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
            v.parse().unwrap(),
        );
    }
    Headers::new(
        vec![
            (Cow::Borrowed(":method"), "GET".into()),
            (Cow::Borrowed(":path"), path.into()),
            (Cow::Borrowed(":authority"), "api".into()),
        ],
        map,
    )
}

fn response(status: &str) -> Headers {
    Headers::new(
        vec![(Cow::Borrowed(":status"), status.into())],
        HeaderMap::new(),
    )
}

fn info(path: &str) -> RequestInfo {
    RequestInfo {
        id: "req-1".into(),
        method: http::Method::GET,
        path: path.parse().unwrap(),
        host: Some(http::HeaderValue::from_static("api")),
        scheme: "http",
        protocol: http::Version::HTTP_11,
        time: std::time::SystemTime::now(),
        user_agent: None,
        referer: None,
        source: "127.0.0.9:5000".parse().unwrap(),
        listener: "public".into(),
        route: "orders".into(),
        cluster: Some("orders".into()),
        response_code: None,
        custom: Vec::new(),
    }
}

fn get<'a>(h: &'a Headers, name: &str) -> Vec<&'a str> {
    h.map
        .get_all(name)
        .iter()
        .map(|v| v.to_str().unwrap())
        .collect()
}

#[test]
fn an_sdk_plugin_edits_headers_answers_requests_and_logs() {
    let s = sandbox();
    let Some(p) = prepared(&s, "x-tenant=acme") else {
        return;
    };
    let mut vm = Vm::start(&s, &p, None).unwrap();
    let logs = vm.take_logs();
    assert!(
        logs.iter()
            .any(|l| l.message == "configured: x-tenant=acme" && l.level == 2),
        "{logs:?}"
    );

    let ctx = vm.open(&s, info("/orders")).unwrap();
    let mut req = request("/orders", &[("x-replace", "old"), ("x-remove", "gone")]);
    assert_eq!(
        vm.request_headers(&s, ctx, &mut req, true).unwrap(),
        Verdict::Continue
    );
    assert_eq!(get(&req, "x-tenant"), ["acme"]);
    assert_eq!(get(&req, "x-replace"), ["replaced"]);
    assert!(get(&req, "x-remove").is_empty());
    assert_eq!(get(&req, "x-seen-path"), ["/orders"]);
    let mut resp = response("200");
    assert_eq!(
        vm.response_headers(&s, ctx, &mut resp, false).unwrap(),
        Verdict::Continue
    );
    assert_eq!(get(&resp, "x-plugin-response"), ["seen"]);
    vm.done(&s, ctx).unwrap();

    // The plugin answers this one itself.
    let ctx = vm.open(&s, info("/")).unwrap();
    let mut req = request("/", &[("x-deny", "1")]);
    let Verdict::Respond(local) = vm.request_headers(&s, ctx, &mut req, true).unwrap() else {
        panic!("the plugin let a denied request through")
    };
    assert_eq!(local.status, 403);
    assert_eq!(local.body, b"denied by plugin\n");
    assert!(
        local
            .headers
            .iter()
            .any(|(k, v)| k == "x-denied-by" && v == "plugin")
    );
    vm.done(&s, ctx).unwrap();
    assert_eq!(vm.open_contexts(), 0);
}

#[test]
fn a_plugin_that_rejects_its_configuration_is_refused() {
    let s = sandbox();
    let Some(p) = prepared(&s, "not a name value pair") else {
        return;
    };
    let Err(e) = Vm::start(&s, &p, None) else {
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
    let Some(p) = prepared(&s, "x-n=1") else {
        return;
    };
    let mut vm = Vm::start(&s, &p, None).unwrap();
    for i in 0..2000 {
        let path = format!("/r/{i}");
        let ctx = vm.open(&s, info(&path)).unwrap();
        let mut req = request(&path, &[]);
        assert_eq!(
            vm.request_headers(&s, ctx, &mut req, true).unwrap(),
            Verdict::Continue
        );
        assert_eq!(get(&req, "x-seen-path"), [path.as_str()]);
        vm.done(&s, ctx).unwrap();
    }
    assert_eq!(vm.open_contexts(), 0);
}

#[test]
fn bodies_are_buffered_until_the_plugin_continues_and_come_back_rewritten() {
    let s = sandbox();
    let Some(p) = prepared(&s, "body=upper") else {
        return;
    };
    let mut vm = Vm::start(&s, &p, None).unwrap();
    let ctx = vm.open(&s, info("/echo")).unwrap();
    let mut req = request("/echo", &[("content-length", "11")]);
    vm.request_headers(&s, ctx, &mut req, false).unwrap();
    assert!(
        get(&req, "content-length").is_empty(),
        "dropped for the rewrite"
    );
    let mut buffered = b"hello ".to_vec();
    assert_eq!(
        vm.body(&s, (ctx, false), &mut buffered, false).unwrap(),
        Verdict::Paused,
        "buffer until the end"
    );
    buffered.extend_from_slice(b"world");
    assert_eq!(
        vm.body(&s, (ctx, false), &mut buffered, true).unwrap(),
        Verdict::Continue
    );
    assert_eq!(buffered, b"HELLO WORLD");

    let mut resp = response("200");
    vm.response_headers(&s, ctx, &mut resp, false).unwrap();
    let mut out = b"answer".to_vec();
    assert_eq!(
        vm.body(&s, (ctx, true), &mut out, true).unwrap(),
        Verdict::Continue
    );
    assert_eq!(out, b"answer!");
    vm.done(&s, ctx).unwrap();
}

#[test]
fn an_http_call_pauses_the_request_until_its_answer_resumes_or_refuses_it() {
    let s = sandbox();
    let Some(p) = prepared(&s, "auth=auth-service") else {
        return;
    };
    let mut vm = Vm::start(&s, &p, None).unwrap();
    for (token, answer, want) in [("200", "200", None), ("403", "403", Some(403))] {
        let ctx = vm.open(&s, info("/")).unwrap();
        let mut req = request("/", &[("x-token", token)]);
        assert_eq!(
            vm.request_headers(&s, ctx, &mut req, true).unwrap(),
            Verdict::Paused
        );
        let calls = vm.take_calls();
        assert_eq!(calls.len(), 1);
        let call = &calls[0];
        assert_eq!(call.upstream, "auth-service");
        assert_eq!(call.context, ctx);
        assert_eq!(
            call.headers.pseudo(":path"),
            Some(&*format!("/status/{token}"))
        );
        assert_eq!(call.timeout, Duration::from_secs(2));
        let answer = CallResponse {
            headers: response(answer),
            ..CallResponse::default()
        };
        let verdict = vm
            .http_call_response(&s, (ctx, call.token), Some(answer), Some(&mut req))
            .unwrap();
        match want {
            None => {
                assert_eq!(verdict, Verdict::Continue);
                assert_eq!(get(&req, "x-auth-status"), ["200"], "set before resuming");
            }
            Some(code) => {
                let Verdict::Respond(r) = verdict else {
                    panic!("{verdict:?}")
                };
                assert_eq!(r.status, code);
            }
        }
        vm.done(&s, ctx).unwrap();
    }
    // No token: refused without a call.
    let ctx = vm.open(&s, info("/")).unwrap();
    let mut req = request("/", &[]);
    let v = vm.request_headers(&s, ctx, &mut req, true).unwrap();
    assert!(
        matches!(v, Verdict::Respond(ref r) if r.status == 401),
        "{v:?}"
    );
    assert!(vm.take_calls().is_empty());
}

#[test]
fn properties_answer_from_the_request_facts() {
    let s = sandbox();
    let Some(p) = prepared(&s, "props=on") else {
        return;
    };
    let mut vm = Vm::start(&s, &p, None).unwrap();
    let ctx = vm.open(&s, info("/orders?x=1")).unwrap();
    let mut req = request("/orders?x=1", &[]);
    vm.request_headers(&s, ctx, &mut req, true).unwrap();
    assert_eq!(get(&req, "x-prop-path"), ["/orders?x=1"]);
    assert_eq!(get(&req, "x-prop-source"), ["127.0.0.9:5000"]);
    assert_eq!(get(&req, "x-prop-route"), ["orders"]);
    assert_eq!(get(&req, "x-prop-plugin"), ["test-plugin"]);
    assert_eq!(get(&req, "x-prop-id"), ["req-1"]);
    let mut resp = response("201");
    vm.response_headers(&s, ctx, &mut resp, false).unwrap();
    assert_eq!(get(&resp, "x-prop-code"), ["201"]);
    vm.done(&s, ctx).unwrap();
}

#[test]
fn vms_share_data_and_queues_and_tick() {
    let s = sandbox();
    let Some(p) = prepared(&s, "shared=on") else {
        return;
    };
    let told: Arc<Mutex<Vec<u32>>> = Arc::default();
    let notifier: QueueNotifier = {
        let told = told.clone();
        Arc::new(move |q| told.lock().unwrap().push(q))
    };
    // Two VMs of one plugin, as on two worker threads; the second registered the queue
    // last, so it hears of new items.
    let mut a = Vm::start(&s, &p, None).unwrap();
    let mut b = Vm::start(&s, &p, Some(notifier)).unwrap();
    assert_eq!(a.tick_period(), Some(Duration::from_millis(20)));
    for vm in [&mut a, &mut b] {
        let ctx = vm.open(&s, info("/q")).unwrap();
        vm.request_headers(&s, ctx, &mut request("/q", &[]), true)
            .unwrap();
        vm.done(&s, ctx).unwrap();
    }
    let queued: Vec<u32> = told.lock().unwrap().clone();
    assert_eq!(queued.len(), 2, "each enqueue tells the registrant");
    b.queue_ready(&s, queued[0]).unwrap();
    a.tick(&s).unwrap();
    b.tick(&s).unwrap();
    let ctx = a.open(&s, info("/q")).unwrap();
    let mut resp = response("200");
    a.response_headers(&s, ctx, &mut resp, false).unwrap();
    assert_eq!(get(&resp, "x-count"), ["2"], "counted by both VMs");
    assert_eq!(get(&resp, "x-ticks"), ["2"]);
    assert_eq!(get(&resp, "x-queued"), ["2"], "both items drained");
    a.done(&s, ctx).unwrap();
}

#[test]
fn a_trap_in_any_callback_is_that_calls_error() {
    let s = sandbox();
    if module(&s).is_none() {
        return;
    }
    for phase in [
        "request_headers",
        "request_body",
        "response_headers",
        "response_body",
        "response_trailers",
        "log",
        "tick",
        "call_response",
    ] {
        let config = format!("fail=trap@{phase};auth=a");
        let p = prepared(&s, &config).unwrap();
        let mut vm = Vm::start(&s, &p, None).unwrap();
        let ctx = vm.open(&s, info("/")).unwrap();
        let mut req = request("/", &[("x-token", "200")]);
        let result = (|| -> Result<(), WasmError> {
            let token = match vm.request_headers(&s, ctx, &mut req, false)? {
                Verdict::Paused => vm.take_calls()[0].token,
                v => panic!("{phase}: {v:?}"),
            };
            let answer = CallResponse {
                headers: response("200"),
                ..CallResponse::default()
            };
            vm.http_call_response(&s, (ctx, token), Some(answer), Some(&mut req))?;
            vm.body(&s, (ctx, false), &mut b"x".to_vec(), true)?;
            vm.response_headers(&s, ctx, &mut response("200"), false)?;
            vm.body(&s, (ctx, true), &mut b"y".to_vec(), true)?;
            vm.trailers(&s, (ctx, true), &mut Headers::default())?;
            vm.tick(&s)?;
            vm.done(&s, ctx)
        })();
        match result {
            Err(WasmError::Trap(m)) => assert!(
                m.contains("unreachable") || m.contains("wasm"),
                "{phase}: {m}"
            ),
            other => panic!("{phase}: a trap was not reported: {other:?}"),
        }
    }
    let p = prepared(&s, "fail=trap@configure").unwrap();
    assert!(matches!(Vm::start(&s, &p, None), Err(WasmError::Trap(_))));
}

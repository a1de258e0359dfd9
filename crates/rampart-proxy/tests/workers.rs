//! The data plane as the benchmarks and `rampart up` run it: two worker threads, each with
//! its own runtime, its own SO_REUSEPORT socket and its own upstream pool. Limits and circuit
//! breakers are per listener and per cluster, not per worker: they hold across both.

mod common;

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::thread::ThreadId;
use std::time::Duration;

use common::*;
use http::request;
use rampart_proxy::filter::{Flow, HttpFilter, RequestContext};
use rampart_proxy::snapshot::ExtraFilter;
use rampart_proxy::{Gateway, Runtimes};

/// Records which thread ran each request.
struct Threads(Arc<Mutex<HashSet<ThreadId>>>);

impl HttpFilter for Threads {
    fn name(&self) -> &'static str {
        "threads"
    }

    fn on_request_headers<'a>(
        &'a self,
        _ctx: &'a mut RequestContext,
        _req: &'a mut request::Parts,
    ) -> Flow<'a> {
        self.0.lock().unwrap().insert(std::thread::current().id());
        Flow::Continue
    }
}

/// Two single-threaded runtimes on threads of their own, as the binary's workers.
fn two_workers() -> Vec<tokio::runtime::Handle> {
    (0..2)
        .map(|i| {
            let (tx, rx) = std::sync::mpsc::channel();
            std::thread::Builder::new()
                .name(format!("worker-{i}"))
                .spawn(move || {
                    let rt = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .unwrap();
                    tx.send(rt.handle().clone()).unwrap();
                    rt.block_on(std::future::pending::<()>());
                })
                .unwrap();
            rx.recv().unwrap()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_workers_share_limits_and_breakers() {
    let up = upstream("u").await;
    let yaml = format!(
        r#"
workers: 2
access_log: {{ format: "off" }}
admin: {{ address: "127.0.0.1:0" }}
listeners:
  - name: main
    address: "127.0.0.1:0"
    route_table: t
    limits: {{ max_connections: 3 }}
route_tables:
  - name: t
    virtual_hosts:
      - {{ name: all, domains: ["*"], routes: [{{ forward: {{ cluster: u }} }}] }}
clusters:
  - {{ name: u, endpoints: ["{}"], circuit_breakers: {{ max_requests: 1 }} }}
"#,
        up.addr
    );
    let seen = Arc::new(Mutex::new(HashSet::new()));
    let runtimes = Runtimes {
        data: two_workers(),
        control: tokio::runtime::Handle::current(),
    };
    let gw = Gateway::start_with_filters(
        rampart_config::from_yaml(&yaml).unwrap(),
        runtimes,
        vec![ExtraFilter {
            listener: "main".into(),
            filter: Arc::new(Threads(seen.clone())),
        }],
    )
    .await
    .unwrap();
    let addr = gw.listener_addr("main").await.unwrap();

    // Both workers accept: new connections spread over their sockets.
    for _ in 0..40 {
        assert_eq!(get(addr, "/", &[("connection", "close")]).await.status, 200);
        if seen.lock().unwrap().len() == 2 {
            break;
        }
    }
    assert_eq!(
        seen.lock().unwrap().len(),
        2,
        "both worker threads served requests"
    );

    // One request at a time to the cluster, whichever worker runs it: of 3 concurrent slow
    // requests on 3 connections, one is served and the others are refused as overload.
    // (Two workers checking the count before either raised it once let two in.)
    let slow: Vec<_> = (0..3)
        .map(|_| tokio::spawn(async move { get(addr, "/delay/700", &[]).await }))
        .collect();
    let mut statuses = Vec::new();
    for s in slow {
        statuses.push(s.await.unwrap().status.as_u16());
    }
    statuses.sort_unstable();
    assert_eq!(
        statuses,
        [200, 503, 503],
        "max_requests holds across workers"
    );

    // Three connections at most, across both workers: a fourth waits for a free slot.
    let mut held = Vec::new();
    for _ in 0..3 {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        tokio::io::AsyncWriteExt::write_all(&mut s, b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
            .await
            .unwrap();
        let mut buf = [0u8; 12];
        tokio::io::AsyncReadExt::read_exact(&mut s, &mut buf)
            .await
            .unwrap();
        assert_eq!(&buf, b"HTTP/1.1 200");
        held.push(s);
    }
    let fourth = tokio::spawn(async move { get(addr, "/", &[("connection", "close")]).await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !fourth.is_finished(),
        "a fourth connection was served past max_connections"
    );
    drop(held);
    let r = tokio::time::timeout(Duration::from_secs(5), fourth)
        .await
        .expect("served once a slot was free")
        .unwrap();
    assert_eq!(r.status, 200);
    assert!(gw.shutdown(Duration::from_secs(5)).await);
}

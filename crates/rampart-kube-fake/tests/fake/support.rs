//! A plain hyper client for the fake (the crate must not depend on kube).

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use rampart_kube_fake::FakeApi;
use serde_json::Value;
use tokio::net::TcpStream;

pub(crate) const MERGE: &str = "application/merge-patch+json";
pub(crate) const STRATEGIC: &str = "application/strategic-merge-patch+json";
pub(crate) const JSON_PATCH: &str = "application/json-patch+json";
pub(crate) const APPLY: &str = "application/apply-patch+yaml";

/// How long a test waits for one watch event before failing.
pub(crate) const EVENT_WAIT: Duration = Duration::from_secs(2);

pub(crate) struct Client {
    addr: SocketAddr,
}

impl Client {
    pub(crate) fn new(api: &FakeApi) -> Self {
        Client { addr: api.addr() }
    }

    async fn request(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Vec<u8>,
    ) -> hyper::Response<Incoming> {
        let stream = TcpStream::connect(self.addr).await.unwrap();
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .unwrap();
        tokio::spawn(conn);
        let mut req = Request::builder()
            .method(method)
            .uri(path)
            .header("host", "localhost");
        for (name, value) in headers {
            req = req.header(*name, *value);
        }
        let req = req.body(Full::new(Bytes::from(body))).unwrap();
        sender.send_request(req).await.unwrap()
    }

    /// Sends a request; the status code and the body as JSON (`Null` if it is not JSON).
    pub(crate) async fn send(
        &self,
        method: &str,
        path: &str,
        content_type: &str,
        body: Option<&Value>,
    ) -> (u16, Value) {
        let bytes = body
            .map(|b| serde_json::to_vec(b).unwrap())
            .unwrap_or_default();
        self.send_raw(method, path, content_type, bytes).await
    }

    pub(crate) async fn send_raw(
        &self,
        method: &str,
        path: &str,
        content_type: &str,
        body: Vec<u8>,
    ) -> (u16, Value) {
        let headers: Vec<(&str, &str)> = if content_type.is_empty() {
            vec![]
        } else {
            vec![("content-type", content_type)]
        };
        let resp = self.request(method, path, &headers, body).await;
        let code = resp.status().as_u16();
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        (code, serde_json::from_slice(&bytes).unwrap_or(Value::Null))
    }

    pub(crate) async fn get(&self, path: &str) -> (u16, Value) {
        self.send("GET", path, "", None).await
    }

    pub(crate) async fn get_accept(&self, path: &str, accept: &str) -> (u16, Value) {
        let resp = self
            .request("GET", path, &[("accept", accept)], Vec::new())
            .await;
        let code = resp.status().as_u16();
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        (code, serde_json::from_slice(&bytes).unwrap())
    }

    pub(crate) async fn post(&self, path: &str, body: &Value) -> (u16, Value) {
        self.send("POST", path, "application/json", Some(body))
            .await
    }

    pub(crate) async fn put(&self, path: &str, body: &Value) -> (u16, Value) {
        self.send("PUT", path, "application/json", Some(body)).await
    }

    pub(crate) async fn patch(&self, path: &str, content_type: &str, body: &Value) -> (u16, Value) {
        self.send("PATCH", path, content_type, Some(body)).await
    }

    pub(crate) async fn delete(&self, path: &str) -> (u16, Value) {
        self.send("DELETE", path, "", None).await
    }

    /// Starts a watch (expects 200).
    pub(crate) async fn watch(&self, path: &str) -> Watch {
        let resp = self.request("GET", path, &[], Vec::new()).await;
        assert_eq!(resp.status(), 200, "watch {path}");
        Watch {
            body: resp.into_body(),
            buf: Vec::new(),
        }
    }
}

/// A watch's events, one JSON line at a time.
pub(crate) struct Watch {
    body: Incoming,
    buf: Vec<u8>,
}

impl Watch {
    /// The next event, waiting at most `wait`; `None` on timeout or when the stream ends.
    pub(crate) async fn next_within(&mut self, wait: Duration) -> Option<Value> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            if let Some(end) = self.buf.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = self.buf.drain(..=end).collect();
                return Some(serde_json::from_slice(&line).expect("an event line is JSON"));
            }
            let frame = tokio::time::timeout_at(deadline, self.body.frame())
                .await
                .ok()??;
            if let Ok(data) = frame.unwrap().into_data() {
                self.buf.extend_from_slice(&data);
            }
        }
    }

    /// The next event (failing the test if none comes within [`EVENT_WAIT`]).
    pub(crate) async fn next(&mut self) -> Value {
        self.next_within(EVENT_WAIT).await.expect("a watch event")
    }

    /// The next event's type and object name.
    pub(crate) async fn next_named(&mut self) -> (String, String) {
        let event = self.next().await;
        let ty = event["type"].as_str().unwrap().to_owned();
        let name = event["object"]["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        (ty, name)
    }

    /// Whether the stream has ended (no more data within `wait`, and the body is finished).
    pub(crate) async fn ended_within(&mut self, wait: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            match tokio::time::timeout_at(deadline, self.body.frame()).await {
                Err(_) => return false,
                Ok(None) => return true,
                Ok(Some(Err(_))) => return true,
                Ok(Some(Ok(_))) => {}
            }
        }
    }
}

/// A ConfigMap in a namespace, with labels.
pub(crate) fn config_map(ns: &str, name: &str, labels: Value) -> Value {
    let mut obj = serde_json::json!({
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": name, "namespace": ns},
        "data": {"k": "v"},
    });
    obj["metadata"]["labels"] = labels;
    obj
}

/// A custom resource with a spec.
pub(crate) fn widget(ns: &str, name: &str, size: i64) -> Value {
    serde_json::json!({
        "apiVersion": "example.com/v1",
        "kind": "Widget",
        "metadata": {"name": name, "namespace": ns},
        "spec": {"size": size},
    })
}

pub(crate) fn rv(obj: &Value) -> u64 {
    obj["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap()
}

pub(crate) fn names(list: &Value) -> Vec<String> {
    list["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["metadata"]["name"].as_str().unwrap().to_owned())
        .collect()
}

//! `json`: a JSON transformer. The request body must be a JSON object; the answer is
//! `{"keys":[sorted top-level keys],"count":n,"upper":<the object with every string value
//! upper-cased, recursively>,"sum":<the sum of every number in it, as f64>}`. Anything else
//! is a 400 `{"error":"..."}`.

#[allow(dead_code)]
#[path = "../../common.rs"]
mod common;

use serde_json::Value;
use wasip2::exports::http::incoming_handler::Guest;
use wasip2::http::types::{IncomingRequest, ResponseOutparam};

struct Json;

impl Guest for Json {
    fn handle(request: IncomingRequest, out: ResponseOutparam) {
        common::log_request("json", &request);
        let result = match request.consume() {
            Ok(body) => common::read_body(body, usize::MAX)
                .map_err(|e| format!("cannot read the body: {}", e.to_debug_string()))
                .and_then(|bytes| transform(&bytes)),
            Err(()) => Err("cannot read the body".to_owned()),
        };
        let (status, body) = match result {
            Ok(body) => (200, body),
            Err(message) => (400, serde_json::json!({ "error": message }).to_string()),
        };
        common::respond(out, status, "application/json", body.as_bytes());
    }
}

fn transform(bytes: &[u8]) -> Result<String, String> {
    let value: Value =
        serde_json::from_slice(bytes).map_err(|e| format!("the body is not JSON: {e}"))?;
    let Value::Object(object) = &value else {
        return Err("the body must be a JSON object".to_owned());
    };
    let mut keys: Vec<&String> = object.keys().collect();
    keys.sort();
    let count = object.len();
    let mut sum = 0.0;
    add_numbers(&value, &mut sum);
    let keys = serde_json::to_string(&keys).expect("strings serialize");
    let sum = serde_json::to_string(&sum).expect("an f64 serializes");
    let upper = upper(value);
    // Written out so the output keys keep this order whatever serde_json's map does.
    Ok(format!(
        r#"{{"keys":{keys},"count":{count},"upper":{upper},"sum":{sum}}}"#
    ))
}

/// `value` with every string in it upper-cased (keys stay as they are).
fn upper(value: Value) -> Value {
    match value {
        Value::String(s) => Value::String(s.to_uppercase()),
        Value::Array(items) => Value::Array(items.into_iter().map(upper).collect()),
        Value::Object(object) => Value::Object(
            object
                .into_iter()
                .map(|(key, value)| (key, upper(value)))
                .collect(),
        ),
        other => other,
    }
}

fn add_numbers(value: &Value, sum: &mut f64) {
    match value {
        Value::Number(n) => *sum += n.as_f64().unwrap_or(0.0),
        Value::Array(items) => items.iter().for_each(|item| add_numbers(item, sum)),
        Value::Object(object) => object.values().for_each(|item| add_numbers(item, sum)),
        _ => {}
    }
}

wasip2::http::proxy::export!(Json);

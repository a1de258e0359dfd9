//! What a policy's entry point returns, in the shape OPA's Envoy plugin uses:
//!
//! ```rego
//! decision := {"allowed": true, "headers": {"x-user": input.jwt.sub}}
//! decision := {"allowed": false, "http_status": 403, "body": "{\"error\":\"forbidden\"}",
//!              "headers": {"content-type": "application/json"}}
//! ```
//!
//! A bare boolean is also accepted. On allow, `headers` are added to the upstream request
//! and `request_headers_to_remove` removed from it; on deny, `headers` go on the local
//! response. `response_headers_to_add` decorate the response either way.

use regorus::Value;

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Decision {
    pub allowed: bool,
    /// Status of the deny response (403 when the policy gives none).
    pub http_status: u16,
    pub body: String,
    pub headers: Vec<(String, String)>,
    pub request_headers_to_remove: Vec<String>,
    pub response_headers_to_add: Vec<(String, String)>,
}

impl Decision {
    pub fn allow() -> Self {
        Self {
            allowed: true,
            http_status: 200,
            ..Self::default()
        }
    }

    pub fn deny() -> Self {
        Self {
            allowed: false,
            http_status: 403,
            ..Self::default()
        }
    }

    /// Reads a decision; anything else than a boolean or a well-formed object is an error
    /// (the caller fails closed on it).
    pub fn from_value(v: &Value) -> Result<Self, String> {
        match v {
            Value::Bool(true) => Ok(Self::allow()),
            Value::Bool(false) => Ok(Self::deny()),
            Value::Undefined => Err("the decision is undefined (add a default rule)".into()),
            Value::Object(obj) => {
                let get = |k: &str| obj.get(&Value::from(k));
                let allowed = match get("allowed") {
                    Some(Value::Bool(b)) => *b,
                    Some(other) => return Err(format!("allowed must be a boolean, not {other}")),
                    None => return Err("the decision object has no \"allowed\" field".into()),
                };
                let mut d = if allowed { Self::allow() } else { Self::deny() };
                if let Some(s) = get("http_status") {
                    let code = s
                        .as_u16()
                        .ok()
                        .filter(|c| (200..=599).contains(c))
                        .ok_or_else(|| format!("http_status must be 200..599, not {s}"))?;
                    d.http_status = code;
                }
                match get("body") {
                    None | Some(Value::Null) => {}
                    Some(Value::String(s)) => d.body = s.to_string(),
                    Some(other) => {
                        d.body = serde_json::to_string(other).map_err(|e| e.to_string())?;
                    }
                }
                d.headers = string_map(get("headers"), "headers")?;
                d.response_headers_to_add =
                    string_map(get("response_headers_to_add"), "response_headers_to_add")?;
                if let Some(v) = get("request_headers_to_remove") {
                    let arr = v
                        .as_array()
                        .map_err(|_| "request_headers_to_remove must be an array".to_string())?;
                    for item in arr {
                        let s = item.as_string().map_err(|_| {
                            "request_headers_to_remove must hold strings".to_string()
                        })?;
                        d.request_headers_to_remove.push(s.to_string());
                    }
                }
                Ok(d)
            }
            other => Err(format!(
                "the decision must be a boolean or an object, not {other}"
            )),
        }
    }
}

fn string_map(v: Option<&Value>, field: &str) -> Result<Vec<(String, String)>, String> {
    let Some(v) = v else { return Ok(Vec::new()) };
    let obj = v
        .as_object()
        .map_err(|_| format!("{field} must be an object"))?;
    obj.iter()
        .map(|(k, v)| {
            let k = k
                .as_string()
                .map_err(|_| format!("{field} keys must be strings"))?;
            let v = match v {
                Value::String(s) => s.to_string(),
                other => other.to_string(),
            };
            Ok((k.to_string(), v))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(json: serde_json::Value) -> Result<Decision, String> {
        Decision::from_value(&Value::from(json))
    }

    #[test]
    fn booleans_and_objects() {
        assert!(d(serde_json::json!(true)).unwrap().allowed);
        assert_eq!(d(serde_json::json!(false)).unwrap().http_status, 403);
        let x = d(
            serde_json::json!({"allowed": false, "http_status": 451, "body": {"e": 1},
                                      "headers": {"x-a": "b"}}),
        )
        .unwrap();
        assert_eq!(x.http_status, 451);
        assert_eq!(x.body, r#"{"e":1}"#);
        assert_eq!(x.headers, vec![("x-a".into(), "b".into())]);
    }

    #[test]
    fn malformed_decisions_are_errors() {
        assert!(d(serde_json::json!({"http_status": 403})).is_err());
        assert!(d(serde_json::json!({"allowed": "yes"})).is_err());
        assert!(d(serde_json::json!({"allowed": false, "http_status": 99})).is_err());
        assert!(d(serde_json::json!({"allowed": true, "headers": []})).is_err());
        assert!(d(serde_json::json!(3)).is_err());
        assert!(Decision::from_value(&Value::Undefined).is_err());
    }
}

//! Patch documents: JSON merge patch (RFC 7386) and JSON patch (RFC 6902).
//!
//! Strategic merge patch and server-side apply are served with the merge patch: objects merge
//! recursively, arrays and scalars are replaced, `null` removes a key. The real server merges
//! some lists by key (strategic merge) and tracks which field manager owns which field (apply);
//! the fake does neither, so an apply never removes a field the manager stopped sending, and
//! never reports a conflict between managers.

use serde_json::Value;

use crate::error::ApiError;

/// Applies a JSON merge patch (RFC 7386) to `target`.
pub(crate) fn merge_patch(target: &mut Value, patch: &Value) {
    let Value::Object(patch) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(serde_json::Map::new());
    }
    let Value::Object(map) = target else { return };
    for (key, value) in patch {
        if value.is_null() {
            map.remove(key);
        } else {
            merge_patch(map.entry(key.clone()).or_insert(Value::Null), value);
        }
    }
}

/// Applies a JSON patch (RFC 6902: add, remove, replace, move, copy, test) to `doc`.
///
/// A malformed patch is a 400; an operation that does not apply (a failed `test`, a missing
/// path) is a 422, as the API server answers. `doc` is left half-patched on error: patch a copy.
pub(crate) fn json_patch(doc: &mut Value, patch: &Value) -> Result<(), ApiError> {
    let ops = patch
        .as_array()
        .ok_or_else(|| ApiError::bad_request("a JSON patch must be an array of operations"))?;
    for op in ops {
        apply_op(doc, op)?;
    }
    Ok(())
}

fn str_field<'a>(op: &'a Value, field: &str) -> Result<&'a str, ApiError> {
    op.get(field).and_then(Value::as_str).ok_or_else(|| {
        ApiError::bad_request(format!("JSON patch operation without {field:?}: {op}"))
    })
}

fn value_field(op: &Value) -> Result<Value, ApiError> {
    op.get("value").cloned().ok_or_else(|| {
        ApiError::bad_request(format!("JSON patch operation without \"value\": {op}"))
    })
}

fn apply_op(doc: &mut Value, op: &Value) -> Result<(), ApiError> {
    let path = str_field(op, "path")?;
    match str_field(op, "op")? {
        "add" => add(doc, path, value_field(op)?),
        "remove" => remove(doc, path).map(drop),
        "replace" => {
            let value = value_field(op)?;
            let slot = doc.pointer_mut(path).ok_or_else(|| missing(path))?;
            *slot = value;
            Ok(())
        }
        "move" => {
            let value = remove(doc, str_field(op, "from")?)?;
            add(doc, path, value)
        }
        "copy" => {
            let from = str_field(op, "from")?;
            let value = doc.pointer(from).cloned().ok_or_else(|| missing(from))?;
            add(doc, path, value)
        }
        "test" => test(doc, path, &value_field(op)?),
        other => Err(ApiError::bad_request(format!(
            "unknown JSON patch operation {other:?}"
        ))),
    }
}

fn missing(path: &str) -> ApiError {
    ApiError::patch_failed(format!(
        "the server rejected our request due to an error in our request: path {path:?} does not exist"
    ))
}

/// Splits a pointer into its parent pointer and last token (unescaped).
fn split(path: &str) -> Result<(&str, String), ApiError> {
    let (parent, last) = path
        .rsplit_once('/')
        .filter(|(parent, _)| parent.is_empty() || parent.starts_with('/'))
        .ok_or_else(|| ApiError::bad_request(format!("invalid JSON pointer {path:?}")))?;
    Ok((parent, last.replace("~1", "/").replace("~0", "~")))
}

fn array_index(token: &str, len: usize, allow_end: bool) -> Option<usize> {
    if allow_end && token == "-" {
        return Some(len);
    }
    let ok = !token.is_empty() && token.bytes().all(|b| b.is_ascii_digit());
    let index = token.parse::<usize>().ok().filter(|_| ok)?;
    let max = if allow_end {
        len
    } else {
        len.saturating_sub(1)
    };
    (index <= max && (allow_end || len > 0)).then_some(index)
}

fn add(doc: &mut Value, path: &str, value: Value) -> Result<(), ApiError> {
    if path.is_empty() {
        *doc = value;
        return Ok(());
    }
    let (parent, token) = split(path)?;
    match doc.pointer_mut(parent) {
        Some(Value::Object(map)) => {
            map.insert(token, value);
            Ok(())
        }
        Some(Value::Array(items)) => {
            let index = array_index(&token, items.len(), true).ok_or_else(|| missing(path))?;
            items.insert(index, value);
            Ok(())
        }
        _ => Err(missing(path)),
    }
}

fn remove(doc: &mut Value, path: &str) -> Result<Value, ApiError> {
    let (parent, token) = split(path)?;
    match doc.pointer_mut(parent) {
        Some(Value::Object(map)) => map.remove(&token).ok_or_else(|| missing(path)),
        Some(Value::Array(items)) => {
            let index = array_index(&token, items.len(), false).ok_or_else(|| missing(path))?;
            Ok(items.remove(index))
        }
        _ => Err(missing(path)),
    }
}

/// `test`: equal values pass; a missing key in an existing object passes against `null`, as in
/// the API server's JSON patch library (kube-runtime's finalizer helper relies on it).
fn test(doc: &Value, path: &str, want: &Value) -> Result<(), ApiError> {
    let found = doc.pointer(path);
    let pass = match found {
        Some(v) => v == want,
        None if want.is_null() => split(path)
            .ok()
            .is_some_and(|(parent, _)| doc.pointer(parent).is_some_and(Value::is_object)),
        None => false,
    };
    if pass {
        Ok(())
    } else {
        Err(ApiError::patch_failed(format!(
            "the server rejected our request due to an error in our request: testing value {path} failed: test failed"
        )))
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn merge() {
        let mut doc = json!({"a": {"b": 1, "c": [1, 2]}, "d": "x"});
        merge_patch(
            &mut doc,
            &json!({"a": {"b": null, "c": [3], "e": {"f": 1}}, "d": "y"}),
        );
        assert_eq!(doc, json!({"a": {"c": [3], "e": {"f": 1}}, "d": "y"}));
    }

    #[test]
    fn json_ops() {
        let mut doc = json!({"metadata": {"name": "n"}, "l": [1, 2]});
        let patch = json!([
            {"op": "test", "path": "/metadata/finalizers", "value": null},
            {"op": "add", "path": "/metadata/finalizers", "value": ["x"]},
            {"op": "add", "path": "/metadata/finalizers/-", "value": "y"},
            {"op": "test", "path": "/metadata/finalizers/0", "value": "x"},
            {"op": "remove", "path": "/metadata/finalizers/0"},
            {"op": "replace", "path": "/l/1", "value": 5},
            {"op": "add", "path": "/l/0", "value": 0},
            {"op": "copy", "from": "/l/0", "path": "/m~1n"},
            {"op": "move", "from": "/m~1n", "path": "/o"},
        ]);
        json_patch(&mut doc, &patch).unwrap();
        assert_eq!(
            doc,
            json!({"metadata": {"name": "n", "finalizers": ["y"]}, "l": [0, 1, 5], "o": 0})
        );
    }

    #[test]
    fn json_failures() {
        let doc = json!({"metadata": {"finalizers": ["a"]}, "l": []});
        let code = |patch: Value| json_patch(&mut doc.clone(), &patch).unwrap_err().code();
        assert_eq!(
            code(json!([{"op": "test", "path": "/metadata/finalizers/0", "value": "b"}])),
            422
        );
        assert_eq!(
            code(json!([{"op": "test", "path": "/nope/x", "value": null}])),
            422
        );
        assert_eq!(code(json!([{"op": "remove", "path": "/l/0"}])), 422);
        assert_eq!(
            code(json!([{"op": "replace", "path": "/x", "value": 1}])),
            422
        );
        assert_eq!(code(json!([{"op": "frob", "path": "/x"}])), 400);
        assert_eq!(code(json!([{"op": "add", "path": "x", "value": 1}])), 400);
        assert_eq!(code(json!({"op": "add"})), 400);
    }
}

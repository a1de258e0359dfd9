//! `rampart openapi lint`: what would stop a spec from becoming routes and validators,
//! each problem at a JSON pointer (in another file: `file.yaml#/pointer`);
//! [`crate::locate`] turns them into lines.

use serde_json::Value;

use crate::Problem;
use crate::spec::Spec;
use crate::validate::Validators;

/// Every problem found; empty when the spec is usable.
pub fn lint(spec: &Spec) -> Vec<Problem> {
    let mut out = Vec::new();
    let root = spec.root();
    for field in ["title", "version"] {
        if !root["info"][field].is_string() {
            out.push(Problem::new(
                &format!("/info/{field}"),
                "missing (a string)",
            ));
        }
    }
    match root.get("paths") {
        Some(Value::Object(paths)) => {
            for p in paths.keys().filter(|p| !p.starts_with('/')) {
                let at = format!("/paths/{}", p.replace('~', "~0").replace('/', "~1"));
                out.push(Problem::new(&at, format!("{p:?} must start with '/'")));
            }
        }
        Some(_) => out.push(Problem::new("/paths", "must be an object")),
        None if root.get("webhooks").is_none() && root.get("components").is_none() => {
            out.push(Problem::new(
                "",
                "a 3.1 spec needs paths, webhooks or components",
            ));
        }
        None => {}
    }
    // Absolute URIs that schemas in the spec name as their `$id`: references to them resolve
    // inside the spec.
    let mut ids = std::collections::HashSet::new();
    for doc in spec.documents.values() {
        ids_in(doc, &mut ids);
    }
    for (uri, doc) in &spec.documents {
        let prefix = if *uri == spec.uri {
            String::new()
        } else {
            format!("{}#", uri.rsplit('/').next().unwrap_or(uri))
        };
        refs(doc, "", &mut |pointer, r| {
            let at = format!("{prefix}{pointer}");
            let target = r.split('#').next().unwrap_or("");
            if ids.contains(target) {
                // Resolved by JSON Schema through the `$id`.
            } else if r.contains("://") && !r.starts_with("file://") {
                out.push(Problem::new(
                    &at,
                    format!("$ref {r:?}: remote references are not fetched"),
                ));
            } else if r.starts_with('#') || !r.contains('#') && !r.contains('/') && !r.contains('.')
            {
                // A local pointer, or a plain-name anchor that JSON Schema resolves itself.
                if r.starts_with('#')
                    && r.len() > 1
                    && r[1..].starts_with('/')
                    && spec.resolve(uri, r).is_none()
                {
                    out.push(Problem::new(&at, format!("$ref {r:?} points at nothing")));
                }
            } else if spec.resolve(uri, r).is_none() {
                out.push(Problem::new(&at, format!("$ref {r:?} points at nothing")));
            }
        });
    }
    if out.is_empty()
        && let Err(mut problems) = Validators::compile(spec)
    {
        out.append(&mut problems);
    }
    out
}

fn ids_in(v: &Value, out: &mut std::collections::HashSet<String>) {
    match v {
        Value::Object(m) => {
            if let Some(Value::String(id)) = m.get("$id") {
                out.insert(id.trim_end_matches('#').to_owned());
            }
            m.values().for_each(|x| ids_in(x, out));
        }
        Value::Array(a) => a.iter().for_each(|x| ids_in(x, out)),
        _ => {}
    }
}

fn refs(v: &Value, pointer: &str, f: &mut impl FnMut(&str, &str)) {
    match v {
        Value::Object(m) => {
            if let Some(Value::String(r)) = m.get("$ref") {
                f(&format!("{pointer}/$ref"), r);
            }
            for (k, x) in m {
                refs(
                    x,
                    &format!("{pointer}/{}", k.replace('~', "~0").replace('/', "~1")),
                    f,
                );
            }
        }
        Value::Array(a) => {
            for (i, x) in a.iter().enumerate() {
                refs(x, &format!("{pointer}/{i}"), f);
            }
        }
        _ => {}
    }
}

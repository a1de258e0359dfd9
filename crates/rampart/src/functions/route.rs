//! `rampart fn deploy --route HOST/PATH`: the route that sends HOST/PATH… to a function,
//! as a change to the desired state's route tables (checked and committed like `apply`).

use anyhow::{Context, Result, bail};
use rampart_xds::desired::{Kind, Resource};
use serde_json::{Value, json};

/// `HOST/PATH`, `/PATH` (any host) or `HOST` (every path) → (host, path prefix).
pub(crate) fn parse(s: &str) -> Result<(String, String)> {
    let (host, path) = match s.find('/') {
        Some(0) => ("*", s),
        Some(i) => (&s[..i], &s[i..]),
        None => (s, "/"),
    };
    let host = host.to_ascii_lowercase();
    let host_ok = host == "*"
        || (!host.is_empty()
            && host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b':' | b'*')));
    if !host_ok {
        bail!("--route {s:?}: {host:?} is not a host name");
    }
    if path.contains(['?', '#', ' ']) || path.contains("/../") || path.ends_with("/..") {
        bail!("--route {s:?}: the path must be a plain prefix");
    }
    Ok((host, path.to_owned()))
}

fn route_name(function: &str) -> String {
    format!("fn-{function}")
}

/// Route tables with `function`'s route removed; the tables that changed.
pub(crate) fn without(resources: &[Resource], function: &str) -> Vec<Resource> {
    let mut changed = Vec::new();
    for r in resources.iter().filter(|r| r.kind == Kind::RouteTable) {
        let mut spec = r.spec.clone();
        let mut touched = false;
        if let Some(hosts) = spec["virtual_hosts"].as_array_mut() {
            for vh in hosts.iter_mut() {
                if let Some(routes) = vh["routes"].as_array_mut() {
                    let before = routes.len();
                    routes.retain(|rt| rt["function"].as_str() != Some(function));
                    touched |= routes.len() != before;
                }
            }
            // Hosts a deploy made for its function alone go with it.
            hosts.retain(|vh| {
                let ours = vh["name"].as_str().is_some_and(|n| n.starts_with("fn-"));
                !(ours && vh["routes"].as_array().is_some_and(Vec::is_empty))
            });
        }
        if touched {
            changed.push(Resource { spec, ..r.clone() });
        }
    }
    changed
}

/// The route tables changed so that `host`+`path` goes to `function` (first in its
/// virtual host, replacing the function's earlier route anywhere).
pub(crate) fn with(
    resources: &[Resource],
    function: &str,
    host: &str,
    path: &str,
) -> Result<Vec<Resource>> {
    let mut tables: Vec<Resource> = resources
        .iter()
        .filter(|r| r.kind == Kind::RouteTable)
        .cloned()
        .collect();
    if tables.is_empty() {
        bail!("the store has no route table to add a route to (apply one first)");
    }
    tables.sort_by(|a, b| a.name.cmp(&b.name));
    for t in &mut tables {
        if let Some(c) = without(std::slice::from_ref(t), function).pop() {
            *t = c;
        }
    }
    let serves = |vh: &Value| {
        vh["domains"]
            .as_array()
            .is_some_and(|d| d.iter().any(|d| d.as_str() == Some(host)))
    };
    let at = tables.iter().position(|t| {
        t.spec["virtual_hosts"]
            .as_array()
            .is_some_and(|hs| hs.iter().any(serves))
    });
    let route = json!({
        "name": route_name(function),
        "match": { "path": { "prefix": path } },
        "function": function,
    });
    let ti = at.unwrap_or(0);
    let hosts = tables[ti].spec["virtual_hosts"]
        .as_array_mut()
        .context("a route table without virtual_hosts")?;
    match hosts.iter_mut().find(|vh| serves(vh)) {
        Some(vh) => vh["routes"]
            .as_array_mut()
            .context("a virtual host without routes")?
            .insert(0, route),
        None if host == "*" => {
            bail!("no virtual host serves every host (\"*\"); name a host in --route")
        }
        // A host of its own, ahead of catch-alls (the first matching domain wins by
        // specificity, not order, so its place does not matter).
        None => hosts.insert(
            0,
            json!({ "name": route_name(function), "domains": [host], "routes": [route] }),
        ),
    }
    Ok(tables
        .into_iter()
        .filter(|t| {
            resources
                .iter()
                .find(|r| r.kind == t.kind && r.name == t.name)
                .is_none_or(|r| r.spec != t.spec)
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table() -> Resource {
        Resource {
            kind: Kind::RouteTable,
            name: "main".into(),
            spec: json!({ "name": "main", "virtual_hosts": [
                { "name": "all", "domains": ["*"], "routes": [
                    { "match": { "path": { "prefix": "/" } }, "forward": { "cluster": "demo" } }
                ]}
            ]}),
        }
    }

    #[test]
    fn routes_parse() {
        assert_eq!(
            parse("localhost/hello").unwrap(),
            ("localhost".into(), "/hello".into())
        );
        assert_eq!(parse("/hello").unwrap(), ("*".into(), "/hello".into()));
        assert_eq!(
            parse("api.example.com").unwrap(),
            ("api.example.com".into(), "/".into())
        );
        assert!(parse("bad host/x").is_err());
        assert!(parse("h/a/../b").is_err());
        assert!(parse("h/a?b").is_err());
    }

    #[test]
    fn a_route_goes_first_and_a_redeploy_moves_it() {
        let t = table();
        let changed = with(std::slice::from_ref(&t), "hello", "*", "/hello").unwrap();
        let routes = &changed[0].spec["virtual_hosts"][0]["routes"];
        assert_eq!(routes[0]["function"], "hello");
        assert_eq!(routes[0]["match"]["path"]["prefix"], "/hello");
        assert_eq!(routes.as_array().unwrap().len(), 2);
        // Again, elsewhere: one route, at its new place, in a host of its own.
        let again = with(&changed, "hello", "fn.local", "/").unwrap();
        let hosts = again[0].spec["virtual_hosts"].as_array().unwrap();
        assert_eq!(hosts.len(), 2);
        assert_eq!(hosts[0]["domains"][0], "fn.local");
        assert_eq!(hosts[1]["routes"].as_array().unwrap().len(), 1);
        // Removing it restores the table as it was.
        let gone = without(&again, "hello");
        assert_eq!(gone[0].spec, t.spec);
        // Unchanged tables are not rewritten.
        assert!(with(&changed, "hello", "*", "/hello").unwrap().is_empty());
    }

    #[test]
    fn the_changed_config_validates() {
        let changed = with(&[table()], "hello", "*", "/hello").unwrap();
        let raw: rampart_config::raw::RawRouteTable =
            serde_json::from_value(changed[0].spec.clone()).unwrap();
        assert_eq!(
            raw.virtual_hosts[0].routes[0].function.as_deref(),
            Some("hello")
        );
    }
}

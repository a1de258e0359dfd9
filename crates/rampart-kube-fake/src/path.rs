//! Request paths and query strings, as the API server lays them out.
//!
//! `/api/v1/...` is the core group, `/apis/{group}/{version}/...` the others. Below that prefix:
//!
//! | path | target |
//! | --- | --- |
//! | `{plural}` | the collection across namespaces (or a cluster-scoped collection) |
//! | `namespaces/{ns}/{plural}` | the collection in one namespace |
//! | `{plural}/{name}` | a cluster-scoped object (`namespaces/{name}` is a Namespace) |
//! | `namespaces/{ns}/{plural}/{name}` | a namespaced object |
//! | `.../{name}/status` | the object's status subresource |
//!
//! Simplified: the fake does not know which resources are namespaced, it believes the path; and
//! each API version is its own store (no conversion between `v1beta1` and `v1`).

use std::time::Duration;

use percent_encoding::percent_decode_str;

use crate::error::ApiError;

pub(crate) use crate::res::Res;

/// One object of a resource: namespace (`None` when cluster-scoped) and name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ObjRef {
    pub(crate) res: Res,
    pub(crate) ns: Option<String>,
    pub(crate) name: String,
}

impl ObjRef {
    /// The store's key: namespace ("" when cluster-scoped) and name.
    pub(crate) fn key(&self) -> (String, String) {
        (self.ns.clone().unwrap_or_default(), self.name.clone())
    }
}

/// What a path names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Route {
    /// A collection, in one namespace or across all (or cluster-scoped).
    Collection { res: Res, ns: Option<String> },
    /// One object, or its `status` subresource.
    Object { obj: ObjRef, status: bool },
    /// `/version`.
    Version,
    /// `/healthz`, `/livez`, `/readyz`.
    Health,
}

/// Parses a request path (without the query string).
pub(crate) fn parse_path(path: &str) -> Result<Route, ApiError> {
    let segments: Vec<String> = path
        .trim_start_matches('/')
        .trim_end_matches('/')
        .split('/')
        .map(|s| percent_decode_str(s).decode_utf8_lossy().into_owned())
        .collect();
    let segs: Vec<&str> = segments.iter().map(String::as_str).collect();
    let unknown = || ApiError::no_route(path);
    if segs.iter().any(|s| s.is_empty()) {
        return match segs.as_slice() {
            [""] => Err(unknown()),
            _ => Err(ApiError::bad_request(format!(
                "empty segment in path {path:?}"
            ))),
        };
    }
    let (api_version, rest) = match segs.as_slice() {
        ["version"] => return Ok(Route::Version),
        ["healthz" | "livez" | "readyz"] => return Ok(Route::Health),
        ["api", version, rest @ ..] => ((*version).to_owned(), rest),
        ["apis", group, version, rest @ ..] => (format!("{group}/{version}"), rest),
        _ => return Err(unknown()),
    };
    let res = |plural: &str| Res::new(&api_version, plural);
    let object = |plural: &str, ns: Option<&str>, name: &str, status: bool| Route::Object {
        obj: ObjRef {
            res: res(plural),
            ns: ns.map(str::to_owned),
            name: name.to_owned(),
        },
        status,
    };
    Ok(match rest {
        [plural] => Route::Collection {
            res: res(plural),
            ns: None,
        },
        ["namespaces", name, "status"] => object("namespaces", None, name, true),
        ["namespaces", ns, plural] => Route::Collection {
            res: res(plural),
            ns: Some((*ns).to_owned()),
        },
        [plural, name] => object(plural, None, name, false),
        [plural, name, "status"] => object(plural, None, name, true),
        ["namespaces", ns, plural, name] => object(plural, Some(ns), name, false),
        ["namespaces", ns, plural, name, "status"] => object(plural, Some(ns), name, true),
        _ => return Err(unknown()),
    })
}

/// The query parameters the fake reads; others are ignored.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Query {
    pub(crate) watch: bool,
    pub(crate) resource_version: Option<String>,
    pub(crate) timeout: Option<Duration>,
    pub(crate) label_selector: Option<String>,
    pub(crate) field_selector: Option<String>,
    pub(crate) field_manager: Option<String>,
    pub(crate) force: bool,
    pub(crate) allow_bookmarks: bool,
    pub(crate) send_initial_events: bool,
    pub(crate) dry_run: bool,
    pub(crate) propagation_policy: Option<String>,
}

/// Parses a query string (kube sends `?&a=b`: empty pairs are skipped).
pub(crate) fn parse_query(query: &str) -> Result<Query, ApiError> {
    let mut q = Query::default();
    for (key, value) in form_urlencoded::parse(query.as_bytes()) {
        let value = value.into_owned();
        match key.as_ref() {
            "watch" => q.watch = truthy(&value),
            "resourceVersion" => q.resource_version = Some(value).filter(|v| !v.is_empty()),
            "timeoutSeconds" => {
                let secs = value.parse::<u64>().map_err(|_| {
                    ApiError::bad_request(format!("invalid timeoutSeconds {value:?}"))
                })?;
                q.timeout = Some(Duration::from_secs(secs));
            }
            "labelSelector" => q.label_selector = Some(value),
            "fieldSelector" => q.field_selector = Some(value),
            "fieldManager" => q.field_manager = Some(value).filter(|v| !v.is_empty()),
            "force" => q.force = truthy(&value),
            "allowWatchBookmarks" => q.allow_bookmarks = truthy(&value),
            "sendInitialEvents" => q.send_initial_events = truthy(&value),
            "dryRun" => q.dry_run = value == "All",
            "propagationPolicy" => q.propagation_policy = Some(value),
            _ => {}
        }
    }
    Ok(q)
}

fn truthy(value: &str) -> bool {
    matches!(value, "true" | "1")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obj(api_version: &str, plural: &str, ns: Option<&str>, name: &str, status: bool) -> Route {
        Route::Object {
            obj: ObjRef {
                res: Res::new(api_version, plural),
                ns: ns.map(str::to_owned),
                name: name.to_owned(),
            },
            status,
        }
    }

    #[test]
    fn paths() {
        let coll = |v: &str, p: &str, ns: Option<&str>| Route::Collection {
            res: Res::new(v, p),
            ns: ns.map(str::to_owned),
        };
        let cases = [
            ("/api/v1/pods", coll("v1", "pods", None)),
            ("/api/v1/namespaces/a/pods", coll("v1", "pods", Some("a"))),
            (
                "/api/v1/namespaces/a",
                obj("v1", "namespaces", None, "a", false),
            ),
            (
                "/api/v1/namespaces/a/status",
                obj("v1", "namespaces", None, "a", true),
            ),
            (
                "/api/v1/namespaces/a/pods/p",
                obj("v1", "pods", Some("a"), "p", false),
            ),
            (
                "/apis/g.io/v1/namespaces/a/xs/n/status",
                obj("g.io/v1", "xs", Some("a"), "n", true),
            ),
            (
                "/apis/g.io/v1/nodes/n",
                obj("g.io/v1", "nodes", None, "n", false),
            ),
            (
                "/apis/g.io/v1/nodes/n/status",
                obj("g.io/v1", "nodes", None, "n", true),
            ),
            ("/version", Route::Version),
        ];
        for (path, want) in cases {
            assert_eq!(parse_path(path).unwrap(), want, "{path}");
        }
        for bad in [
            "/",
            "/api",
            "/apis",
            "/apis/g",
            "/api/v1/namespaces/a/pods/p/log",
            "/x//y",
        ] {
            assert!(parse_path(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn query() {
        let q =
            parse_query("&watch=1&resourceVersion=5&labelSelector=a%3Db&timeoutSeconds=3").unwrap();
        assert!(q.watch);
        assert_eq!(q.resource_version.as_deref(), Some("5"));
        assert_eq!(q.label_selector.as_deref(), Some("a=b"));
        assert_eq!(q.timeout, Some(Duration::from_secs(3)));
        assert!(parse_query("timeoutSeconds=x").is_err());
    }

    #[test]
    fn groups() {
        assert_eq!(Res::new("v1", "pods").qualified(), "pods");
        assert_eq!(
            Res::new("apps/v1", "deployments").qualified(),
            "deployments.apps"
        );
    }
}

//! `proxy_get_property`: the request and connection attributes Envoy's plugins read, by
//! the same paths (`request.path`, `source.address`, `plugin_name`, …). Strings come back
//! as their bytes, numbers as 8-byte little-endian integers, as in Envoy.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::SystemTime;

use wasmtime::Caller;

use super::abi::{self, BAD_ARGUMENT, INVALID_MEMORY_ACCESS, NOT_FOUND, OK};
use super::host::Host;

/// Most properties a plugin may set on one request.
const MAX_SET: usize = 64;

/// The facts of one request a plugin may read.
#[derive(Debug, Clone)]
pub struct RequestInfo {
    pub id: String,
    pub method: http::Method,
    /// Path and query, as routed.
    pub path: http::uri::PathAndQuery,
    pub host: Option<http::HeaderValue>,
    pub scheme: &'static str,
    pub protocol: http::Version,
    pub time: SystemTime,
    pub user_agent: Option<http::HeaderValue>,
    pub referer: Option<http::HeaderValue>,
    pub source: SocketAddr,
    pub listener: Arc<str>,
    pub route: Arc<str>,
    pub cluster: Option<Arc<str>>,
    /// Set once the response head is known.
    pub response_code: Option<u16>,
    /// What the plugin set (`proxy_set_property`), readable back.
    pub custom: Vec<(Vec<u8>, Vec<u8>)>,
}

fn int(n: i64) -> Vec<u8> {
    n.to_le_bytes().to_vec()
}

fn text(s: &str) -> Vec<u8> {
    s.as_bytes().to_vec()
}

fn protocol(v: http::Version) -> &'static str {
    match v {
        http::Version::HTTP_09 => "HTTP/0.9",
        http::Version::HTTP_10 => "HTTP/1.0",
        http::Version::HTTP_2 => "HTTP/2",
        http::Version::HTTP_3 => "HTTP/3",
        _ => "HTTP/1.1",
    }
}

impl RequestInfo {
    fn request(&self, attr: &str) -> Option<Vec<u8>> {
        Some(match attr {
            "path" => text(self.path.as_str()),
            "url_path" => text(self.path.path()),
            "query" => text(self.path.query().unwrap_or("")),
            "host" => self.host.as_ref()?.as_bytes().to_vec(),
            "scheme" => text(self.scheme),
            "method" => text(self.method.as_str()),
            "id" => text(&self.id),
            "protocol" => text(protocol(self.protocol)),
            "useragent" => self.user_agent.as_ref()?.as_bytes().to_vec(),
            "referer" => self.referer.as_ref()?.as_bytes().to_vec(),
            "time" => {
                let ns = self
                    .time
                    .duration_since(SystemTime::UNIX_EPOCH)
                    .ok()?
                    .as_nanos();
                int(i64::try_from(ns).ok()?)
            }
            _ => return None,
        })
    }

    fn get(&self, path: &[&str]) -> Option<Vec<u8>> {
        match path {
            ["request", attr] => self.request(attr),
            ["source", "address"] => Some(text(&self.source.to_string())),
            ["source", "port"] => Some(int(i64::from(self.source.port()))),
            ["response", "code"] => Some(int(i64::from(self.response_code?))),
            ["route_name"] | ["xds", "route_name"] => Some(text(&self.route)),
            ["cluster_name"] | ["xds", "cluster_name"] => Some(text(self.cluster.as_deref()?)),
            ["listener_name"] | ["xds", "listener_name"] => Some(text(&self.listener)),
            _ => None,
        }
    }
}

/// A property path: segments separated by NULs (a trailing NUL allowed).
fn segments(raw: &[u8]) -> Option<Vec<&str>> {
    let raw = raw.strip_suffix(&[0]).unwrap_or(raw);
    raw.split(|b| *b == 0)
        .map(|s| std::str::from_utf8(s).ok())
        .collect()
}

fn lookup(host: &Host, raw: &[u8]) -> Option<Vec<u8>> {
    let path = segments(raw)?;
    match path.as_slice() {
        ["plugin_name"] => return Some(text(&host.plugin.name)),
        ["plugin_vm_id"] => return Some(text(&host.plugin.vm_id)),
        ["plugin_root_id"] => return Some(Vec::new()),
        _ => {}
    }
    let info = host.requests.get(&host.stream.context)?;
    if let Some((_, v)) = info.custom.iter().find(|(k, _)| k == raw) {
        return Some(v.clone());
    }
    info.get(&path)
}

pub(super) fn get_property(mut caller: Caller<'_, Host>, path: (i32, i32), out: (i32, i32)) -> i32 {
    let found = abi::with_memory(&mut caller, |data, host| {
        abi::slice(data, path.0, path.1).map(|raw| lookup(host, raw))
    });
    match found {
        Some(Some(value)) => abi::give_some(&mut caller, value.as_deref(), out),
        _ => INVALID_MEMORY_ACCESS,
    }
}

/// Sets a property on the current request, readable back with `proxy_get_property`.
pub(super) fn set_property(
    mut caller: Caller<'_, Host>,
    path: (i32, i32),
    value: (i32, i32),
) -> i32 {
    let (Some(key), Some(value)) = (
        abi::read(&mut caller, path.0, path.1),
        abi::read(&mut caller, value.0, value.1),
    ) else {
        return INVALID_MEMORY_ACCESS;
    };
    let host = caller.data_mut();
    let context = host.stream.context;
    let Some(info) = host.requests.get_mut(&context) else {
        return NOT_FOUND;
    };
    match info.custom.iter().position(|(k, _)| *k == key) {
        Some(i) => info.custom[i].1 = value,
        None if info.custom.len() < MAX_SET => info.custom.push((key, value)),
        None => return BAD_ARGUMENT,
    }
    OK
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_split_on_nul() {
        assert_eq!(segments(b"request\0path").unwrap(), vec!["request", "path"]);
        assert_eq!(segments(b"plugin_name\0").unwrap(), vec!["plugin_name"]);
        assert!(segments(b"\xff").is_none());
    }
}

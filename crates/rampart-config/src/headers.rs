//! Header names, values and edits as config writes them.

use crate::check::Ctx;
use crate::raw::RawHeaderMutation;

/// Header edits, applied in the order remove, set, add (by the data plane).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HeaderMutation {
    pub add: Vec<(http::HeaderName, http::HeaderValue)>,
    pub set: Vec<(http::HeaderName, http::HeaderValue)>,
    pub remove: Vec<http::HeaderName>,
}

impl HeaderMutation {
    pub fn is_empty(&self) -> bool {
        self.add.is_empty() && self.set.is_empty() && self.remove.is_empty()
    }
}

pub(crate) fn header_name(cx: &mut Ctx, path: &str, s: &str) -> Option<http::HeaderName> {
    http::HeaderName::from_bytes(s.as_bytes())
        .map_err(|_| cx.err(path, format!("invalid header name {s:?}")))
        .ok()
}

pub(crate) fn header_value(cx: &mut Ctx, path: &str, s: &str) -> Option<http::HeaderValue> {
    http::HeaderValue::from_str(s)
        .map_err(|_| cx.err(path, format!("invalid header value {s:?}")))
        .ok()
}

pub(crate) fn mutation(cx: &mut Ctx, path: &str, m: Option<&RawHeaderMutation>) -> HeaderMutation {
    let Some(m) = m else {
        return HeaderMutation::default();
    };
    let mut pairs = |field: &str, map: &std::collections::BTreeMap<String, String>| {
        map.iter()
            .filter_map(|(k, v)| {
                let p = format!("{path}.{field}.{k}");
                let name = header_name(cx, &p, k);
                let value = header_value(cx, &p, v);
                Some((name?, value?))
            })
            .collect::<Vec<_>>()
    };
    let add = pairs("add", &m.add);
    let set = pairs("set", &m.set);
    let remove = m
        .remove
        .iter()
        .enumerate()
        .filter_map(|(i, k)| header_name(cx, &format!("{path}.remove[{i}]"), k))
        .collect();
    HeaderMutation { add, set, remove }
}

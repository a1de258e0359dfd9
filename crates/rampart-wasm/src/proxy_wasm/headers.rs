//! Header maps as a plugin sees them: the stream's pseudo-headers, then the `http` map
//! itself, lent to the host for the length of a callback (no copy of the headers).

use std::borrow::Cow;

use http::{HeaderMap, HeaderName, HeaderValue};
use wasmtime::Caller;

use super::abi::{
    self, BAD_ARGUMENT, CALL_RESPONSE_HEADERS, CALL_RESPONSE_TRAILERS, INVALID_MEMORY_ACCESS,
    NOT_FOUND, OK, REQUEST_HEADERS, REQUEST_TRAILERS, RESPONSE_HEADERS, RESPONSE_TRAILERS,
};
use super::host::Host;

/// Most entries a plugin may leave in a header map.
pub const MAX_HEADERS: usize = 512;

/// One header map: pseudo-headers (`:method`, `:path`, `:authority`, `:scheme`, or
/// `:status`) and the headers.
#[derive(Debug, Default, Clone)]
pub struct Headers {
    pub pseudo: Vec<(Cow<'static, str>, String)>,
    pub map: HeaderMap,
}

impl Headers {
    pub fn new(pseudo: Vec<(Cow<'static, str>, String)>, map: HeaderMap) -> Self {
        Self { pseudo, map }
    }

    /// A pseudo-header's value.
    pub fn pseudo(&self, name: &str) -> Option<&str> {
        self.pseudo
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn len(&self) -> usize {
        self.pseudo.len() + self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn get(&self, key: &[u8]) -> Option<Vec<u8>> {
        if key.first() == Some(&b':') {
            let key = std::str::from_utf8(key).ok()?;
            return self.pseudo(key).map(|v| v.as_bytes().to_vec());
        }
        let name = HeaderName::from_bytes(key).ok()?;
        let mut values = self.map.get_all(&name).iter();
        let first = values.next()?;
        // As Envoy: several values read as one, joined by commas.
        let mut out = first.as_bytes().to_vec();
        for v in values {
            out.extend_from_slice(b",");
            out.extend_from_slice(v.as_bytes());
        }
        Some(out)
    }

    /// Adds `value` under `key`, or sets it in place of any (`replace`).
    fn set(&mut self, key: &[u8], value: &[u8], replace: bool) -> Result<(), &'static str> {
        if key.first() == Some(&b':') {
            let key = std::str::from_utf8(key).map_err(|_| "a header name that is not text")?;
            let value = String::from_utf8_lossy(value).into_owned();
            match self.pseudo.iter_mut().find(|(k, _)| k == key) {
                Some(slot) => slot.1 = value,
                None => self.pseudo.push((Cow::Owned(key.to_owned()), value)),
            }
            return Ok(());
        }
        let name = HeaderName::from_bytes(key).map_err(|_| "an invalid header name")?;
        let value = HeaderValue::from_bytes(value).map_err(|_| "an invalid header value")?;
        if replace {
            self.map.insert(name, value);
        } else {
            // A plugin cannot grow a header map without bound.
            if self.len() >= MAX_HEADERS {
                return Err("too many headers");
            }
            self.map.append(name, value);
        }
        Ok(())
    }

    fn remove(&mut self, key: &[u8]) {
        if key.first() == Some(&b':') {
            self.pseudo.retain(|(k, _)| k.as_bytes() != key);
        } else if let Ok(name) = HeaderName::from_bytes(key) {
            self.map.remove(name);
        }
    }

    /// The ABI's encoding: count, each key and value length, then each key and value
    /// followed by a NUL.
    pub(super) fn encode(&self) -> Vec<u8> {
        let pairs: Vec<(&[u8], &[u8])> = self
            .pseudo
            .iter()
            .map(|(k, v)| (k.as_bytes(), v.as_bytes()))
            .chain(
                self.map
                    .iter()
                    .map(|(k, v)| (k.as_str().as_bytes(), v.as_bytes())),
            )
            .collect();
        encode_pairs(&pairs)
    }
}

pub(super) fn encode_pairs(pairs: &[(&[u8], &[u8])]) -> Vec<u8> {
    let len = |n: usize| u32::try_from(n).unwrap_or(u32::MAX).to_le_bytes();
    let size: usize = pairs.iter().map(|(k, v)| k.len() + v.len() + 10).sum();
    let mut out = Vec::with_capacity(4 + size);
    out.extend_from_slice(&len(pairs.len()));
    for (k, v) in pairs {
        out.extend_from_slice(&len(k.len()));
        out.extend_from_slice(&len(v.len()));
    }
    for (k, v) in pairs {
        out.extend_from_slice(k);
        out.push(0);
        out.extend_from_slice(v);
        out.push(0);
    }
    out
}

/// Decodes the ABI's header map encoding; `None` if it is malformed.
pub fn decode_pairs(bytes: &[u8]) -> Option<Vec<(String, String)>> {
    let word = |at: usize| -> Option<usize> {
        let b: [u8; 4] = bytes.get(at..at.checked_add(4)?)?.try_into().ok()?;
        usize::try_from(u32::from_le_bytes(b)).ok()
    };
    let n = word(0)?;
    // Each pair takes at least 10 bytes: a count larger than the buffer allows is a lie.
    if n > bytes.len() / 10 {
        return None;
    }
    let mut lens = Vec::with_capacity(n);
    for i in 0..n {
        lens.push((word(4 + i * 8)?, word(8 + i * 8)?));
    }
    let mut at = 4 + n * 8;
    let mut out = Vec::with_capacity(n);
    for (kl, vl) in lens {
        let k = bytes.get(at..at.checked_add(kl)?)?;
        at = at.checked_add(kl + 1)?;
        let v = bytes.get(at..at.checked_add(vl)?)?;
        at = at.checked_add(vl + 1)?;
        out.push((
            String::from_utf8_lossy(k).into_owned(),
            String::from_utf8_lossy(v).into_owned(),
        ));
    }
    Some(out)
}

/// Pairs decoded into a header map (pseudo-headers apart); invalid entries are skipped.
pub(super) fn headers_from_pairs(pairs: Vec<(String, String)>) -> Headers {
    let mut h = Headers::default();
    for (k, v) in pairs {
        let _ = h.set(k.as_bytes(), v.as_bytes(), false);
    }
    h
}

/// The map a callback may see, by ABI map type.
fn map(host: &mut Host, kind: i32) -> Option<&mut Headers> {
    let s = &mut host.stream;
    match kind {
        REQUEST_HEADERS => s.request.as_mut(),
        RESPONSE_HEADERS => s.response.as_mut(),
        REQUEST_TRAILERS => s.request_trailers.as_mut(),
        RESPONSE_TRAILERS => s.response_trailers.as_mut(),
        CALL_RESPONSE_HEADERS => s.call.as_mut().map(|c| &mut c.headers),
        CALL_RESPONSE_TRAILERS => s.call.as_mut().map(|c| &mut c.trailers),
        _ => None,
    }
}

pub(super) fn get_pairs(mut caller: Caller<'_, Host>, kind: i32, out_p: i32, out_l: i32) -> i32 {
    let Some(bytes) = map(caller.data_mut(), kind).map(|m| m.encode()) else {
        return NOT_FOUND;
    };
    abi::give(&mut caller, &bytes, out_p, out_l)
}

pub(super) fn set_pairs(mut caller: Caller<'_, Host>, kind: i32, ptr: i32, len: i32) -> i32 {
    let Some(raw) = abi::read(&mut caller, ptr, len) else {
        return INVALID_MEMORY_ACCESS;
    };
    let Some(pairs) = decode_pairs(&raw) else {
        return BAD_ARGUMENT;
    };
    if pairs.len() > MAX_HEADERS {
        return BAD_ARGUMENT;
    }
    let Some(m) = map(caller.data_mut(), kind) else {
        return NOT_FOUND;
    };
    *m = headers_from_pairs(pairs);
    OK
}

pub(super) fn get_value(
    mut caller: Caller<'_, Host>,
    kind: i32,
    key: (i32, i32),
    out: (i32, i32),
) -> i32 {
    let found = abi::with_memory(&mut caller, |data, host| {
        let key = abi::slice(data, key.0, key.1).ok_or(INVALID_MEMORY_ACCESS)?;
        let m = map(host, kind).ok_or(NOT_FOUND)?;
        m.get(key).ok_or(NOT_FOUND)
    });
    match found {
        Some(Ok(value)) => abi::give(&mut caller, &value, out.0, out.1),
        Some(Err(status)) => status,
        None => INVALID_MEMORY_ACCESS,
    }
}

/// `proxy_add_header_map_value` (`replace` false) and `proxy_replace_header_map_value`.
pub(super) fn set_value(
    mut caller: Caller<'_, Host>,
    kind: i32,
    key: (i32, i32),
    value: (i32, i32),
    replace: bool,
) -> i32 {
    let outcome = abi::with_memory(&mut caller, |data, host| {
        let k = abi::slice(data, key.0, key.1).ok_or(INVALID_MEMORY_ACCESS)?;
        let v = abi::slice(data, value.0, value.1).ok_or(INVALID_MEMORY_ACCESS)?;
        let m = map(host, kind).ok_or(NOT_FOUND)?;
        // A plugin cannot grow a header map without bound: past the cap the call fails
        // (the SDKs then trap, and the request gets the filter's failure outcome).
        if !replace && m.len() >= MAX_HEADERS {
            return Err(BAD_ARGUMENT);
        }
        if let Err(why) = m.set(k, v, replace) {
            // Envoy's SDKs treat a failed set as a bug (they panic): log it instead.
            let line = format!(
                "host: header {:?} not set: {why}",
                String::from_utf8_lossy(k)
            );
            host.log(3, line);
        }
        Ok(())
    });
    match outcome {
        Some(Ok(())) => OK,
        Some(Err(status)) => status,
        None => INVALID_MEMORY_ACCESS,
    }
}

pub(super) fn remove_value(mut caller: Caller<'_, Host>, kind: i32, kp: i32, kl: i32) -> i32 {
    let outcome = abi::with_memory(&mut caller, |data, host| {
        let k = abi::slice(data, kp, kl).ok_or(INVALID_MEMORY_ACCESS)?;
        map(host, kind).ok_or(NOT_FOUND)?.remove(k);
        Ok(())
    });
    match outcome {
        Some(Ok(())) => OK,
        Some(Err(status)) => status,
        None => INVALID_MEMORY_ACCESS,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_pairs_round_trip_and_malformed_ones_are_refused() {
        let mut h = Headers::default();
        h.pseudo.push((Cow::Borrowed(":path"), "/a".into()));
        h.map.insert("x", HeaderValue::from_static(""));
        let pairs = decode_pairs(&h.encode()).unwrap();
        assert_eq!(
            pairs,
            vec![(":path".into(), "/a".into()), ("x".into(), String::new())]
        );
        assert_eq!(
            decode_pairs(&[9, 0, 0, 0]),
            None,
            "claims 9 pairs, has none"
        );
        assert_eq!(decode_pairs(&[]), None);
        let mut long = h.encode();
        long.truncate(long.len() - 2);
        assert_eq!(decode_pairs(&long), None);
        assert_eq!(decode_pairs(&[0xff, 0xff, 0xff, 0xff, 0, 0]), None);
    }

    #[test]
    fn names_are_case_insensitive_and_values_join() {
        let mut h = Headers::default();
        h.set(b"X-Tenant", b"a", false).unwrap();
        h.set(b"x-tenant", b"b", false).unwrap();
        assert_eq!(h.get(b"X-TENANT").unwrap(), b"a,b");
        h.set(b"x-tenant", b"c", true).unwrap();
        assert_eq!(h.get(b"x-tenant").unwrap(), b"c");
        assert!(h.set(b"bad name", b"v", false).is_err());
        assert!(h.set(b"x", b"bad\nvalue", false).is_err());
        h.remove(b"X-Tenant");
        assert_eq!(h.get(b"x-tenant"), None);
    }

    proptest::proptest! {
        /// Any bytes a guest hands over decode or are refused, never panic; what the host
        /// encodes decodes to the same pairs.
        #[test]
        fn decoding_never_panics_and_round_trips(
            raw in proptest::collection::vec(proptest::num::u8::ANY, 0..256),
            pairs in proptest::collection::vec(("[a-z-]{1,12}", "[ -~]{0,20}"), 0..16),
        ) {
            let _ = decode_pairs(&raw);
            let borrowed: Vec<(&[u8], &[u8])> =
                pairs.iter().map(|(k, v)| (k.as_bytes(), v.as_bytes())).collect();
            let back = decode_pairs(&encode_pairs(&borrowed)).unwrap();
            let want: Vec<(String, String)> = pairs.clone();
            proptest::prop_assert_eq!(back, want);
        }
    }
}

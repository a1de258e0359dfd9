//! Components in the store: content-addressed blobs cut into chunks small enough for one
//! store request each. A blob's key names its SHA-256, so two functions (or two versions)
//! with the same component share it, writing it twice is harmless, and a reader checks
//! what it assembled against the name it asked for.

use ring::digest::{SHA256, digest};
use serde::{Deserialize, Serialize};

/// Where blobs live: `/rampart/blobs/sha256/<hex>/<index>`.
pub const BLOB_PREFIX: &str = "/rampart/blobs/sha256/";

/// Bytes per chunk: well under the store's request limit (etcd's default is 1.5 MiB).
pub const CHUNK_BYTES: usize = 512 * 1024;

/// The largest component accepted (its chunks are kept in the store's memory-mapped file).
pub const MAX_BLOB_BYTES: u64 = 64 << 20;

/// A blob as a function spec names it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BlobRef {
    /// SHA-256 of the whole blob, lower-case hex.
    pub sha256: String,
    pub size: u64,
    pub chunks: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BlobError {
    #[error("the blob has {got} chunk(s) in the store, its spec says {want}")]
    ChunkCount { got: usize, want: u32 },
    #[error("the blob's chunks add up to {got} bytes, its spec says {want}")]
    Size { got: u64, want: u64 },
    #[error("the blob's SHA-256 is {got}, its spec says {want}")]
    Digest { got: String, want: String },
    #[error("{0} bytes is larger than the {MAX_BLOB_BYTES}-byte limit")]
    TooLarge(u64),
    #[error("{0:?} is not a lower-case hex SHA-256")]
    BadDigest(String),
}

/// Lower-case hex SHA-256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    digest(&SHA256, bytes)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

impl BlobRef {
    /// The reference to `bytes` cut into `chunk`-byte pieces.
    pub fn of(bytes: &[u8], chunk: usize) -> Result<Self, BlobError> {
        let size = bytes.len() as u64;
        if size > MAX_BLOB_BYTES {
            return Err(BlobError::TooLarge(size));
        }
        Ok(Self {
            sha256: sha256_hex(bytes),
            size,
            chunks: u32::try_from(bytes.len().div_ceil(chunk.max(1))).unwrap_or(u32::MAX),
        })
    }

    /// The prefix every chunk key of this blob starts with.
    pub fn prefix(&self) -> Result<String, BlobError> {
        let ok = self.sha256.len() == 64
            && self
                .sha256
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        if ok {
            Ok(format!("{BLOB_PREFIX}{}/", self.sha256))
        } else {
            Err(BlobError::BadDigest(self.sha256.clone()))
        }
    }

    /// The key of chunk `i` (zero-padded, so keys sort in chunk order).
    pub fn chunk_key(&self, i: u32) -> Result<String, BlobError> {
        Ok(format!("{}{i:06}", self.prefix()?))
    }

    /// The blob from its chunks as read from the store (`(key, value)` in any order),
    /// checked against this reference.
    pub fn assemble(&self, mut parts: Vec<(String, Vec<u8>)>) -> Result<Vec<u8>, BlobError> {
        if self.size > MAX_BLOB_BYTES {
            return Err(BlobError::TooLarge(self.size));
        }
        let prefix = self.prefix()?;
        parts.retain(|(k, _)| k.starts_with(&prefix));
        if parts.len() != self.chunks as usize {
            return Err(BlobError::ChunkCount {
                got: parts.len(),
                want: self.chunks,
            });
        }
        parts.sort_by(|a, b| a.0.cmp(&b.0));
        let got: u64 = parts.iter().map(|(_, v)| v.len() as u64).sum();
        if got != self.size {
            return Err(BlobError::Size {
                got,
                want: self.size,
            });
        }
        let mut out = Vec::with_capacity(usize::try_from(got).unwrap_or(0));
        for (_, v) in parts {
            out.extend_from_slice(&v);
        }
        let sum = sha256_hex(&out);
        if sum != self.sha256 {
            return Err(BlobError::Digest {
                got: sum,
                want: self.sha256.clone(),
            });
        }
        Ok(out)
    }
}

/// `bytes` as `(key, chunk)` pairs under `r`.
pub fn chunks<'a>(
    r: &BlobRef,
    bytes: &'a [u8],
    chunk: usize,
) -> Result<Vec<(String, &'a [u8])>, BlobError> {
    bytes
        .chunks(chunk.max(1))
        .enumerate()
        .map(|(i, c)| Ok((r.chunk_key(u32::try_from(i).unwrap_or(u32::MAX))?, c)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn stored(bytes: &[u8], chunk: usize) -> (BlobRef, Vec<(String, Vec<u8>)>) {
        let r = BlobRef::of(bytes, chunk).unwrap();
        let parts = chunks(&r, bytes, chunk)
            .unwrap()
            .into_iter()
            .map(|(k, v)| (k, v.to_vec()))
            .collect();
        (r, parts)
    }

    proptest! {
        #[test]
        fn chunks_reassemble_in_any_order(bytes in proptest::collection::vec(any::<u8>(), 0..5000), chunk in 1usize..700, seed in any::<u64>()) {
            let (r, mut parts) = stored(&bytes, chunk);
            prop_assert_eq!(parts.len(), r.chunks as usize);
            // The store answers in key order, but nothing here may depend on it.
            let n = parts.len();
            if n > 1 {
                parts.swap(0, (seed as usize) % n);
            }
            prop_assert_eq!(r.assemble(parts).unwrap(), bytes);
        }

        #[test]
        fn any_damage_is_caught(bytes in proptest::collection::vec(any::<u8>(), 1..3000), chunk in 1usize..500, at in any::<usize>(), flip in 1u8..=255) {
            let (r, mut parts) = stored(&bytes, chunk);
            let i = at % parts.len();
            let j = at % parts[i].1.len();
            parts[i].1[j] ^= flip;
            let caught = matches!(r.assemble(parts), Err(BlobError::Digest { .. }));
            prop_assert!(caught);
        }

        #[test]
        fn a_missing_or_foreign_chunk_is_caught(bytes in proptest::collection::vec(any::<u8>(), 2..3000), chunk in 1usize..500, at in any::<usize>()) {
            let (r, mut parts) = stored(&bytes, chunk);
            let i = at % parts.len();
            let (key, _) = parts.remove(i);
            prop_assert!(r.assemble(parts.clone()).is_err());
            // Another blob's chunk under the same index does not stand in for it.
            let other = BlobRef::of(b"other", chunk).unwrap();
            parts.insert(i, (other.chunk_key(0).unwrap(), key.into_bytes()));
            prop_assert!(r.assemble(parts).is_err());
        }
    }

    #[test]
    fn keys_sort_in_chunk_order_and_digests_are_checked() {
        let r = BlobRef::of(&[7u8; 10], 3).unwrap();
        assert_eq!(r.chunks, 4);
        assert!(r.chunk_key(2).unwrap() < r.chunk_key(10).unwrap());
        let bad = BlobRef {
            sha256: "../../etc".into(),
            ..r
        };
        assert!(matches!(bad.chunk_key(0), Err(BlobError::BadDigest(_))));
        assert!(BlobRef::of(&vec![0; (MAX_BLOB_BYTES + 1) as usize], CHUNK_BYTES).is_err());
    }
}

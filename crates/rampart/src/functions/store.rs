//! Functions in the replicated store: specs at `/rampart/functions/<name>`, components as
//! content-addressed chunked blobs (`rampart_fn::blob`), and a gateway following both.

use std::collections::HashSet;
use std::time::Duration;

use crate::follow::range_prefix;
use anyhow::{Context, Result};
use rampart_fn::Functions;
use rampart_fn::blob::{BLOB_PREFIX, BlobRef, CHUNK_BYTES, chunks};
use rampart_fn::spec::{FunctionSpec, SPEC_PREFIX};
use rampart_kv::client::{Client, prefix_end};
use rampart_kv::proto::etcdserverpb as pb;
use tokio_util::sync::CancellationToken;

pub(crate) fn spec_key(name: &str) -> String {
    format!("{SPEC_PREFIX}{name}")
}

/// A blob by its digest alone: every chunk under its prefix, in key order (the chunk
/// numbers are zero-padded), at most the largest blob allowed.
pub(crate) async fn get_blob_by_digest(c: &mut Client, hex: &str) -> Result<Vec<u8>> {
    let resp = c
        .range(range_prefix(&format!("{BLOB_PREFIX}{hex}/")))
        .await
        .context("cannot read the store")?;
    let mut kvs = resp.kvs;
    kvs.sort_by(|a, b| a.key.cmp(&b.key));
    anyhow::ensure!(!kvs.is_empty(), "no blob sha256:{hex} in the store");
    let mut out = Vec::new();
    for kv in kvs {
        out.extend_from_slice(&kv.value);
        anyhow::ensure!(
            out.len() as u64 <= rampart_fn::blob::MAX_BLOB_BYTES,
            "blob sha256:{hex} is larger than allowed"
        );
    }
    Ok(out)
}

/// Where a gateway's `wasm` entries read `store:sha256:HEX` modules: the store at
/// `endpoints`, read on a thread of its own (filters are built synchronously), within 10 s,
/// the last few kept in memory.
pub(crate) fn module_store(endpoints: Vec<String>) -> rampart_filter_wasm::ModuleStore {
    type Cache = std::sync::Mutex<std::collections::HashMap<String, Vec<u8>>>;
    let cache: std::sync::Arc<Cache> = std::sync::Arc::default();
    rampart_filter_wasm::ModuleStore(std::sync::Arc::new(move |hex: &str| {
        let lock = || {
            cache
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
        };
        if let Some(bytes) = lock().get(hex) {
            return Ok(bytes.clone());
        }
        let (eps, h) = (endpoints.clone(), hex.to_owned());
        let fetched = std::thread::spawn(move || -> Result<Vec<u8>, String> {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| e.to_string())?;
            rt.block_on(async {
                let mut c = Client::new(&eps, Duration::from_secs(5)).map_err(|e| e.to_string())?;
                tokio::time::timeout(Duration::from_secs(10), get_blob_by_digest(&mut c, &h))
                    .await
                    .map_err(|_| "the store did not answer within 10s".to_owned())?
                    .map_err(|e| format!("{e:#}"))
            })
        })
        .join()
        .map_err(|_| "reading the module failed".to_owned())??;
        let mut cached = lock();
        if cached.len() >= 16 {
            cached.clear();
        }
        cached.insert(hex.to_owned(), fetched.clone());
        Ok(fetched)
    }))
}

/// Components kept for function `<name>` beyond its current spec (a JSON array of SHA-256
/// digests): the deployments a rollout may go back to. Garbage collection spares them.
const RETAINED_PREFIX: &str = "/rampart/functions-retained/";

/// Keeps exactly `digests` for function `name` (none: forgets it).
pub(crate) async fn retain(c: &mut Client, name: &str, digests: &[String]) -> Result<()> {
    let key = format!("{RETAINED_PREFIX}{name}");
    if digests.is_empty() {
        c.delete(pb::DeleteRangeRequest {
            key: key.into_bytes(),
            ..Default::default()
        })
        .await
        .context("cannot delete from the store")?;
        return Ok(());
    }
    c.put(pb::PutRequest {
        key: key.into_bytes(),
        value: serde_json::to_vec(digests)?,
        ..Default::default()
    })
    .await
    .context("cannot write to the store")?;
    Ok(())
}

/// Every digest some function retains.
async fn retained(c: &mut Client) -> Result<HashSet<String>> {
    let resp = c
        .range(range_prefix(RETAINED_PREFIX))
        .await
        .context("cannot read the store")?;
    Ok(resp
        .kvs
        .iter()
        .filter_map(|kv| serde_json::from_slice::<Vec<String>>(&kv.value).ok())
        .flatten()
        .collect())
}

/// Writes `bytes` as a blob (chunks already there are not written again).
pub(crate) async fn put_blob(c: &mut Client, bytes: &[u8]) -> Result<BlobRef> {
    let r = BlobRef::of(bytes, CHUNK_BYTES)?;
    let have = c
        .range(pb::RangeRequest {
            count_only: true,
            ..range_prefix(&r.prefix()?)
        })
        .await
        .context("cannot read the store")?
        .count;
    if have != i64::from(r.chunks) {
        for (key, chunk) in chunks(&r, bytes, CHUNK_BYTES)? {
            c.put(pb::PutRequest {
                key: key.into_bytes(),
                value: chunk.to_vec(),
                ..Default::default()
            })
            .await
            .context("cannot write a chunk to the store")?;
        }
    }
    Ok(r)
}

/// The blob `r` names, checked against it.
pub(crate) async fn get_blob(c: &mut Client, r: &BlobRef) -> Result<Vec<u8>> {
    let resp = c
        .range(range_prefix(&r.prefix()?))
        .await
        .context("cannot read the store")?;
    let parts = resp
        .kvs
        .into_iter()
        .map(|kv| (String::from_utf8_lossy(&kv.key).into_owned(), kv.value))
        .collect();
    Ok(r.assemble(parts)?)
}

/// Every function spec (or why its value is not one), and the revision read at.
pub(crate) async fn specs(
    c: &mut Client,
) -> Result<(Vec<(String, Result<FunctionSpec, String>)>, i64)> {
    let resp = c
        .range(range_prefix(SPEC_PREFIX))
        .await
        .context("cannot read the store")?;
    let revision = resp.header.map_or(0, |h| h.revision);
    let out = resp
        .kvs
        .into_iter()
        .map(|kv| {
            let key = String::from_utf8_lossy(&kv.key).into_owned();
            let name = key.trim_start_matches(SPEC_PREFIX).to_owned();
            let spec = serde_json::from_slice::<FunctionSpec>(&kv.value)
                .map_err(|e| format!("{key}: not a function spec: {e}"));
            (name, spec)
        })
        .collect();
    Ok((out, revision))
}

pub(crate) async fn put_spec(c: &mut Client, spec: &FunctionSpec) -> Result<()> {
    c.put(pb::PutRequest {
        key: spec_key(&spec.name).into_bytes(),
        value: serde_json::to_vec(spec)?,
        ..Default::default()
    })
    .await
    .context("cannot write the function to the store")?;
    Ok(())
}

pub(crate) async fn delete_spec(c: &mut Client, name: &str) -> Result<bool> {
    let resp = c
        .delete(pb::DeleteRangeRequest {
            key: spec_key(name).into_bytes(),
            ..Default::default()
        })
        .await
        .context("cannot delete from the store")?;
    Ok(resp.deleted > 0)
}

/// Deletes blobs no spec names and no function retains; returns how many. (A deploy racing
/// this one may lose chunks written before its spec: the gateways then refuse it, and it is
/// deployed again.)
pub(crate) async fn collect_garbage(c: &mut Client) -> Result<usize> {
    let (specs, _) = specs(c).await?;
    let mut used: HashSet<String> = specs
        .into_iter()
        .filter_map(|(_, s)| s.ok())
        .map(|s| s.blob.sha256)
        .collect();
    used.extend(retained(c).await?);
    let keys = c
        .range(pb::RangeRequest {
            keys_only: true,
            ..range_prefix(BLOB_PREFIX)
        })
        .await
        .context("cannot read the store")?;
    let mut unused: Vec<String> = keys
        .kvs
        .iter()
        .filter_map(|kv| {
            let key = String::from_utf8_lossy(&kv.key);
            let digest = key.strip_prefix(BLOB_PREFIX)?.split('/').next()?.to_owned();
            (!used.contains(&digest)).then_some(digest)
        })
        .collect();
    unused.sort();
    unused.dedup();
    for d in &unused {
        c.delete(pb::DeleteRangeRequest {
            ..delete_prefix(&format!("{BLOB_PREFIX}{d}/"))
        })
        .await
        .context("cannot delete from the store")?;
    }
    Ok(unused.len())
}

fn delete_prefix(prefix: &str) -> pb::DeleteRangeRequest {
    pb::DeleteRangeRequest {
        key: prefix.into(),
        range_end: prefix_end(prefix.as_bytes()),
        ..Default::default()
    }
}

/// Keeps `functions` equal to the store's: deploys new and changed specs (fetching their
/// blobs), removes deleted ones; reads everything again after each change under the spec
/// prefix.
pub(crate) async fn follow(functions: Functions, endpoints: Vec<String>, stop: CancellationToken) {
    crate::follow::follow(
        "functions",
        SPEC_PREFIX,
        endpoints,
        stop,
        Follower(functions),
    )
    .await;
}

struct Follower(Functions);

impl crate::follow::Sync for Follower {
    async fn sync(&mut self, c: &mut Client) -> Result<i64> {
        sync(&self.0, c).await
    }
}

/// One pass: the store's specs made the running set. Returns the revision read at.
async fn sync(functions: &Functions, c: &mut Client) -> Result<i64> {
    let (specs, revision) = specs(c).await?;
    let running = functions.specs();
    let mut seen = HashSet::new();
    for (name, spec) in specs {
        seen.insert(name.clone());
        let spec = match spec {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(function = %name, error = %e, "functions: not deployed");
                functions.reject(&name, e);
                continue;
            }
        };
        if running.get(&name) == Some(&spec) {
            continue;
        }
        let bytes = match get_blob(c, &spec.blob).await {
            Ok(b) => b,
            Err(e) => {
                tracing::error!(function = %name, error = %e, "functions: cannot read the component");
                functions.reject(&name, format!("{e:#}"));
                continue;
            }
        };
        let f = functions.clone();
        let deployed = tokio::task::spawn_blocking(move || f.deploy(&spec, &bytes)).await?;
        if let Err(e) = deployed {
            tracing::error!(function = %name, error = %e, "functions: not deployed");
        }
    }
    for name in running.keys().filter(|n| !seen.contains(*n)) {
        functions.remove(name);
        tracing::info!(function = %name, "function removed");
    }
    Ok(revision)
}

//! [`PinnedLabels`]: the proxy's names for its connections (route, cluster, tenant) in two BPF
//! maps pinned in bpffs (`src/bpf/labels.bpf.c`), so that processes other than the proxy see
//! them: the proxy reports, `rampart flows top --by route` and a tracer in another process
//! read. [`LabelRegistry`](crate::LabelRegistry) stays the in-process fast path (no system
//! call per event); this is the shared one.
//!
//! Layout: `rf_labels` maps the connection as the proxy's socket sees it (the tracer's
//! [`FlowKey`]) to three name ids; `rf_label_names` maps a name id (FNV-1a 64 of the name) to
//! the name. Both are LRU hashes (16 384 connections, 4 096 names; about 2.5 MB of kernel memory,
//! preallocated), so a proxy that dies
//! without cleaning up cannot fill them, and nothing else bounds what they hold.
//!
//! Names longer than 127 bytes are stored cut at a character boundary (their id is still of
//! the whole name). Entries are not removed when a connection closes: any number of tracers
//! in other processes may still be reading its close, and none can know it is the last. The
//! LRU drops the oldest instead, and a connection that reuses a closed one's addresses and
//! ports carries the old labels only until the proxy reports its own, at its first request.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard, PoisonError};

use aya::EbpfLoader;
use aya::maps::{HashMap as BpfHashMap, MapData, MapError};

use crate::{FlowKey, FlowLabels, FlowsError};

/// Where the maps are pinned unless told otherwise: `rf_labels` and `rf_label_names` in it.
pub const DEFAULT_LABELS_PIN_DIR: &str = "/sys/fs/bpf/rampart";

const KEY_SIZE: usize = 44;
const NAME_SIZE: usize = 128;
/// Name ids this process wrote, remembered so a name is written once, not per connection.
const WRITTEN_CAPACITY: usize = 1024;

type Labels = BpfHashMap<MapData, [u8; KEY_SIZE], [u64; 3]>;
type Names = BpfHashMap<MapData, u64, [u8; NAME_SIZE]>;

/// The pinned label maps, opened (or created, by whoever comes first) in one directory of
/// bpffs. Reporting and reading are system calls (about a microsecond each).
pub struct PinnedLabels {
    dir: PathBuf,
    inner: Mutex<Inner>,
}

struct Inner {
    labels: Labels,
    names: Names,
    written: HashSet<u64>,
}

impl std::fmt::Debug for PinnedLabels {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PinnedLabels")
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

impl PinnedLabels {
    /// Opens the maps pinned in `dir`, creating the directory and the maps when they are not
    /// there yet. Needs CAP_BPF (root) and bpffs mounted above `dir` (`/sys/fs/bpf` is on
    /// most systems; `mount -t bpf bpf /sys/fs/bpf` otherwise).
    pub fn open_or_create(dir: &Path) -> Result<Self, FlowsError> {
        std::fs::create_dir_all(dir).map_err(|source| FlowsError::Pin {
            path: dir.to_owned(),
            source,
        })?;
        let mut ebpf = EbpfLoader::new()
            .default_map_pin_directory(dir)
            .load(crate::LABELS_OBJ)
            .map_err(|source| FlowsError::Open {
                detail: crate::load::chain(&source),
                source: Box::new(source),
            })?;
        let mut take = |name: &'static str| {
            ebpf.take_map(name).ok_or_else(|| FlowsError::Map {
                map: name,
                op: "find",
                source: "the object has no map of this name".into(),
            })
        };
        let labels = Labels::try_from(take("rf_labels")?).map_err(map_err("rf_labels", "open"))?;
        let names =
            Names::try_from(take("rf_label_names")?).map_err(map_err("rf_label_names", "open"))?;
        Ok(Self {
            dir: dir.to_owned(),
            inner: Mutex::new(Inner {
                labels,
                names,
                written: HashSet::new(),
            }),
        })
    }

    /// The directory the maps are pinned in.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // Each operation is one or a few map updates; a panic elsewhere leaves nothing torn.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Records (or replaces) the labels of a connection.
    pub fn report(&self, key: &FlowKey, labels: &FlowLabels) -> Result<(), FlowsError> {
        let mut inner = self.lock();
        let mut ids = [0u64; 3];
        for (id, name) in ids
            .iter_mut()
            .zip([&labels.route, &labels.cluster, &labels.tenant])
        {
            *id = inner.name_id(name)?;
        }
        inner
            .labels
            .insert(encode_key(key), ids, 0)
            .map_err(map_err("rf_labels", "update"))
    }

    /// The labels of a connection, if a proxy reported them.
    pub fn get(&self, key: &FlowKey) -> Option<FlowLabels> {
        let inner = self.lock();
        let ids = inner.labels.get(&encode_key(key), 0).ok()?;
        let name = |id: u64| {
            if id == 0 {
                return String::new();
            }
            inner
                .names
                .get(&id, 0)
                .map(|b| decode_name(&b))
                .unwrap_or_else(|_| "?".to_owned())
        };
        Some(FlowLabels {
            route: name(ids[0]),
            cluster: name(ids[1]),
            tenant: name(ids[2]),
        })
    }

    /// Removes a connection's labels.
    pub fn forget(&self, key: &FlowKey) {
        // Absent (never labelled, or evicted) is fine.
        let _ = self.lock().labels.remove(&encode_key(key));
    }
}

impl Inner {
    /// The id of `name`, writing the name first unless this process already did.
    fn name_id(&mut self, name: &str) -> Result<u64, FlowsError> {
        if name.is_empty() {
            return Ok(0);
        }
        let id = fnv1a64(name.as_bytes()).max(1);
        if !self.written.contains(&id) {
            self.names
                .insert(id, encode_name(name), 0)
                .map_err(map_err("rf_label_names", "update"))?;
            if self.written.len() >= WRITTEN_CAPACITY {
                // Another process's LRU may have evicted some meanwhile anyway: start over.
                self.written.clear();
            }
            self.written.insert(id);
        }
        Ok(id)
    }
}

fn map_err(map: &'static str, op: &'static str) -> impl Fn(MapError) -> FlowsError {
    move |source| FlowsError::Map {
        map,
        op,
        source: Box::new(source),
    }
}

fn fnv1a64(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// `struct rf_label_key` (the layout of `struct rf_tuple`, see `raw.rs`).
fn encode_key(key: &FlowKey) -> [u8; KEY_SIZE] {
    let mut b = [0u8; KEY_SIZE];
    let family: u16 = match key.src {
        SocketAddr::V4(_) => 2,
        SocketAddr::V6(_) => 10,
    };
    let put_ip = |out: &mut [u8], addr: &SocketAddr| match addr {
        SocketAddr::V4(a) => out[..4].copy_from_slice(&a.ip().octets()),
        SocketAddr::V6(a) => out[..16].copy_from_slice(&a.ip().octets()),
    };
    put_ip(&mut b[0..16], &key.src);
    put_ip(&mut b[16..32], &key.dst);
    b[32..34].copy_from_slice(&key.src.port().to_ne_bytes());
    b[34..36].copy_from_slice(&key.dst.port().to_ne_bytes());
    b[36..38].copy_from_slice(&family.to_ne_bytes());
    // The namespace inode is 32 bits in the kernel's record.
    b[40..44].copy_from_slice(&(key.netns as u32).to_ne_bytes());
    b
}

fn encode_name(name: &str) -> [u8; NAME_SIZE] {
    let mut end = name.len().min(NAME_SIZE - 1);
    while !name.is_char_boundary(end) {
        end -= 1;
    }
    let mut b = [0u8; NAME_SIZE];
    b[..end].copy_from_slice(&name.as_bytes()[..end]);
    b
}

fn decode_name(b: &[u8]) -> String {
    let end = b.iter().position(|c| *c == 0).unwrap_or(b.len());
    String::from_utf8_lossy(&b[..end]).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_encode_like_the_kernel_tuple() {
        let k = FlowKey::tcp(
            "10.0.0.1:8080".parse().unwrap(),
            "10.0.0.2:40000".parse().unwrap(),
            4_026_531_840,
        );
        let b = encode_key(&k);
        assert_eq!(&b[0..4], &[10, 0, 0, 1]);
        assert_eq!(&b[16..20], &[10, 0, 0, 2]);
        assert_eq!(u16::from_ne_bytes([b[32], b[33]]), 8080);
        assert_eq!(u16::from_ne_bytes([b[34], b[35]]), 40000);
        assert_eq!(u16::from_ne_bytes([b[36], b[37]]), 2);
        assert_eq!(
            u32::from_ne_bytes([b[40], b[41], b[42], b[43]]),
            4_026_531_840
        );
        let v6 = FlowKey::tcp("[::1]:1".parse().unwrap(), "[::1]:2".parse().unwrap(), 1);
        assert_eq!(u16::from_ne_bytes([encode_key(&v6)[36], 0]), 10);
    }

    #[test]
    fn long_names_are_cut_at_a_character_boundary() {
        let long = "é".repeat(100); // 200 bytes
        let b = encode_name(&long);
        let back = decode_name(&b);
        assert!(back.len() < NAME_SIZE && long.starts_with(&back), "{back}");
        assert_eq!(decode_name(&encode_name("api")), "api");
    }
}

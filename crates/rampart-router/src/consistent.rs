//! Consistent hashing for upstream load balancing: Maglev and ring hash (Ketama), as Envoy
//! builds them, plus the xxHash64 that both use.
//!
//! A table is built once per endpoint set (when discovery or health changes the set) and then
//! answers one question per request: which endpoint does this 64-bit request hash go to.
//! It is for session affinity and cache locality (the same key keeps reaching the same
//! endpoint while the set changes little). It is not for computing the request hash (the
//! proxy hashes a header, cookie or address with [`hash_key`]), not for health checking, and
//! not for spreading load evenly when keys are skewed: a hot key stays on one endpoint.
//!
//! # Correctness rules
//! - **Determinism.** A table is a pure function of the *set* of `(identity, weight)` pairs
//!   and the configuration: the order of the input list does not change which identity a hash
//!   picks, and every process (and every version of this module) builds the same table, so all
//!   proxies of a fleet send a key to the same endpoint. Picks are returned as indices into the
//!   caller's list. Changing the hash function, the point keys or the fill order below is a
//!   breaking change: it moves every key.
//! - **Minimal disruption.** When one endpoint out of `N` leaves, its keys move and few others
//!   do: with Maglev at most `1.3/N` of all keys move (tests, `N` = 5..19), with ring hash
//!   about `2/N`, because Envoy's ring sizing gives the survivors extra points (see
//!   [`RingHash`]). When an endpoint joins, the same fractions of `N + 1` move.
//! - **Per-request exclusion.** `pick_healthy` skips endpoints the caller reports unhealthy
//!   without rebuilding: keys of healthy endpoints never move, keys of an unhealthy endpoint go
//!   to the same fallback every time, and the walk is bounded. For a lasting change, rebuild
//!   the table without the endpoint.
//! - **Lookups allocate nothing** and never panic; building allocates and validates.
//!
//! Identity is a stable string that names the endpoint, such as `10.0.0.1:80` (what Envoy
//! hashes by default) or a host name. Identities must be unique and non-empty; weights are at
//! least 1.

use std::fmt;

/// Envoy's default Maglev table size (a prime).
pub const DEFAULT_MAGLEV_TABLE_SIZE: usize = 65_537;
/// The largest Maglev table size accepted (Envoy's limit, a prime).
pub const MAX_MAGLEV_TABLE_SIZE: usize = 5_000_011;
/// How many salted rehashes [`Maglev::pick_healthy`] tries before probing linearly.
pub const MAGLEV_REHASH_ATTEMPTS: u64 = 8;
/// Envoy's default minimum ring size for ring hash.
pub const DEFAULT_MIN_RING_SIZE: usize = 1024;
/// Envoy's default, and largest accepted, maximum ring size for ring hash (8M points).
pub const MAX_RING_SIZE: usize = 8 * 1024 * 1024;

/// xxHash64 of `bytes` with seed 0: the hash of request keys and of ring points.
pub fn hash_key(bytes: &[u8]) -> u64 {
    xxh64(bytes, 0)
}

const P1: u64 = 0x9E37_79B1_85EB_CA87;
const P2: u64 = 0xC2B2_AE3D_27D4_EB4F;
const P3: u64 = 0x1656_67B1_9E37_79F9;
const P4: u64 = 0x85EB_CA77_C2B2_AE63;
const P5: u64 = 0x27D4_EB2F_1656_67C5;

/// xxHash64 (XXH64) of `input` with `seed`, bit-for-bit the reference algorithm.
pub fn xxh64(input: &[u8], seed: u64) -> u64 {
    fn round(acc: u64, lane: u64) -> u64 {
        acc.wrapping_add(lane.wrapping_mul(P2))
            .rotate_left(31)
            .wrapping_mul(P1)
    }
    fn merge(h: u64, acc: u64) -> u64 {
        (h ^ round(0, acc)).wrapping_mul(P1).wrapping_add(P4)
    }

    let (stripes, rest) = input.as_chunks::<32>();
    let mut h = if stripes.is_empty() {
        seed.wrapping_add(P5)
    } else {
        let mut v = [
            seed.wrapping_add(P1).wrapping_add(P2),
            seed.wrapping_add(P2),
            seed,
            seed.wrapping_sub(P1),
        ];
        for stripe in stripes {
            let (lanes, _) = stripe.as_chunks::<8>();
            for (acc, lane) in v.iter_mut().zip(lanes) {
                *acc = round(*acc, u64::from_le_bytes(*lane));
            }
        }
        let h = v[0]
            .rotate_left(1)
            .wrapping_add(v[1].rotate_left(7))
            .wrapping_add(v[2].rotate_left(12))
            .wrapping_add(v[3].rotate_left(18));
        v.iter().fold(h, |h, &acc| merge(h, acc))
    };
    h = h.wrapping_add(input.len() as u64);

    let (words, mut tail) = rest.as_chunks::<8>();
    for word in words {
        h ^= round(0, u64::from_le_bytes(*word));
        h = h.rotate_left(27).wrapping_mul(P1).wrapping_add(P4);
    }
    if let Some((word, after)) = tail.split_first_chunk::<4>() {
        h ^= u64::from(u32::from_le_bytes(*word)).wrapping_mul(P1);
        h = h.rotate_left(23).wrapping_mul(P2).wrapping_add(P3);
        tail = after;
    }
    for &byte in tail {
        h ^= u64::from(byte).wrapping_mul(P5);
        h = h.rotate_left(11).wrapping_mul(P1);
    }
    avalanche(h)
}

fn avalanche(mut h: u64) -> u64 {
    h ^= h >> 33;
    h = h.wrapping_mul(P2);
    h ^= h >> 29;
    h = h.wrapping_mul(P3);
    h ^ (h >> 32)
}

/// One upstream endpoint as the tables see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Endpoint<'a> {
    /// Stable, unique identity, e.g. `10.0.0.1:80`; the only thing hashed.
    pub id: &'a str,
    /// Relative weight, at least 1.
    pub weight: u32,
}

impl<'a> Endpoint<'a> {
    /// An endpoint of weight 1.
    pub fn new(id: &'a str) -> Self {
        Self { id, weight: 1 }
    }

    pub fn weighted(id: &'a str, weight: u32) -> Self {
        Self { id, weight }
    }
}

/// Why a table could not be built. Indices are positions in the caller's endpoint list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BuildError {
    TableSizeNotPrime {
        table_size: usize,
    },
    TableSizeTooSmall {
        table_size: usize,
        endpoints: usize,
    },
    TableSizeTooLarge {
        table_size: usize,
    },
    RingSizeBounds {
        min_ring_size: usize,
        max_ring_size: usize,
    },
    TooManyEndpoints {
        endpoints: usize,
        max_ring_size: usize,
    },
    EmptyId {
        index: usize,
    },
    ZeroWeight {
        index: usize,
        id: String,
    },
    DuplicateId {
        id: String,
        first: usize,
        second: usize,
    },
}

impl fmt::Display for BuildError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::TableSizeNotPrime { table_size } => write!(
                f,
                "maglev table_size {table_size} is not prime; use a prime such as \
                 {DEFAULT_MAGLEV_TABLE_SIZE} (the default)"
            ),
            Self::TableSizeTooSmall {
                table_size,
                endpoints,
            } => write!(
                f,
                "maglev table_size {table_size} is smaller than the {endpoints} endpoints; \
                 use a prime at least 100 times the endpoint count for even balance"
            ),
            Self::TableSizeTooLarge { table_size } => write!(
                f,
                "maglev table_size {table_size} is larger than the limit \
                 {MAX_MAGLEV_TABLE_SIZE}"
            ),
            Self::RingSizeBounds {
                min_ring_size,
                max_ring_size,
            } => write!(
                f,
                "ring hash: need 1 <= min_ring_size ({min_ring_size}) <= max_ring_size \
                 ({max_ring_size}) <= {MAX_RING_SIZE}"
            ),
            Self::TooManyEndpoints {
                endpoints,
                max_ring_size,
            } => write!(
                f,
                "ring hash: {endpoints} endpoints do not fit a ring of at most \
                 {max_ring_size} points; raise max_ring_size"
            ),
            Self::EmptyId { index } => write!(
                f,
                "endpoint {index} has an empty identity; give it its address or host name"
            ),
            Self::ZeroWeight { index, id } => write!(
                f,
                "endpoint {index} ({id:?}) has weight 0; use at least 1, or leave it out"
            ),
            Self::DuplicateId { id, first, second } => write!(
                f,
                "endpoints {first} and {second} share the identity {id:?}; identities must \
                 be unique (merge them into one endpoint with the summed weight)"
            ),
        }
    }
}

impl std::error::Error for BuildError {}

/// Validates the endpoints and returns their input indices sorted by identity (the order
/// every build works in, so that the input order does not matter).
fn identity_order(endpoints: &[Endpoint<'_>]) -> Result<Vec<u32>, BuildError> {
    for (index, e) in endpoints.iter().enumerate() {
        if e.id.is_empty() {
            return Err(BuildError::EmptyId { index });
        }
        if e.weight == 0 {
            return Err(BuildError::ZeroWeight {
                index,
                id: e.id.to_owned(),
            });
        }
    }
    // Callers bound the count well below u32::MAX (table and ring size limits).
    let mut order: Vec<u32> = (0..endpoints.len() as u32).collect();
    order.sort_unstable_by(|&a, &b| endpoints[a as usize].id.cmp(endpoints[b as usize].id));
    for pair in order.windows(2) {
        let (a, b) = (pair[0] as usize, pair[1] as usize);
        if endpoints[a].id == endpoints[b].id {
            return Err(BuildError::DuplicateId {
                id: endpoints[a].id.to_owned(),
                first: a.min(b),
                second: a.max(b),
            });
        }
    }
    Ok(order)
}

fn is_prime(n: usize) -> bool {
    if n < 2 {
        return false;
    }
    let mut d = 2;
    while d * d <= n {
        if n.is_multiple_of(d) {
            return false;
        }
        d += 1;
    }
    true
}

/// A Maglev table size must be a prime, at most [`MAX_MAGLEV_TABLE_SIZE`], and give each of
/// the `endpoints` a slot.
fn check_table_size(table_size: usize, endpoints: usize) -> Result<(), BuildError> {
    if table_size > MAX_MAGLEV_TABLE_SIZE {
        return Err(BuildError::TableSizeTooLarge { table_size });
    }
    if !is_prime(table_size) {
        return Err(BuildError::TableSizeNotPrime { table_size });
    }
    if table_size < endpoints {
        return Err(BuildError::TableSizeTooSmall {
            table_size,
            endpoints,
        });
    }
    Ok(())
}

/// Fills a [`Maglev`] table of `table_size` slots (slot → input index) from non-empty
/// `endpoints`, taking turns in identity `order`.
fn maglev_fill(endpoints: &[Endpoint<'_>], order: &[u32], table_size: usize) -> Box<[u32]> {
    struct Filler {
        index: u32,
        /// Current position in this endpoint's permutation.
        slot: u64,
        skip: u64,
        weight: u64,
        /// Turns are taken while `round * weight >= target`; each turn adds `max_weight`.
        target: u64,
    }
    let m = table_size as u64;
    let max_weight = endpoints.iter().map(|e| u64::from(e.weight)).max();
    let max_weight = max_weight.unwrap_or(1);
    let mut fillers: Vec<Filler> = order
        .iter()
        .map(|&i| {
            let id = endpoints[i as usize].id.as_bytes();
            Filler {
                index: i,
                slot: xxh64(id, 0) % m,
                skip: xxh64(id, 1) % (m - 1) + 1,
                weight: u64::from(endpoints[i as usize].weight),
                target: 0,
            }
        })
        .collect();

    const FREE: u32 = u32::MAX;
    let mut table = vec![FREE; table_size];
    let mut filled = 0;
    // The heaviest endpoint takes a turn every round, so this ends within `M` rounds. Each
    // permutation visits every slot once per `M` steps and a free slot always remains
    // while filling, so the inner walk ends too.
    let mut round: u64 = 1;
    while filled < table_size {
        for f in &mut fillers {
            if filled == table_size {
                break;
            }
            if round * f.weight < f.target {
                continue;
            }
            f.target += max_weight;
            while table[f.slot as usize] != FREE {
                f.slot = (f.slot + f.skip) % m;
            }
            table[f.slot as usize] = f.index;
            f.slot = (f.slot + f.skip) % m;
            filled += 1;
        }
        round += 1;
    }
    table.into()
}

/// A Maglev lookup table (Eisenbud et al., NSDI 2016) with Envoy's weighted fill.
///
/// Each endpoint walks its own permutation of the `M` slots (offset `xxh64(id, 0) % M`, step
/// `xxh64(id, 1) % (M - 1) + 1`); in rounds, in identity order, an endpoint whose turn it is
/// claims its next free slot. An endpoint of weight `w` takes a turn in `w / max_weight` of the
/// rounds, so it owns about `w / total_weight` of the table. With the input sorted by
/// identity the table is slot-for-slot Envoy's.
///
/// Balance is near perfect (each endpoint owns its share of `M`, give or take a slot or two
/// per round); removing one of `N` endpoints moves its keys and, by the paper's measurements,
/// a few percent of the others. Keep `M` at least 100 times the endpoint count.
#[derive(Clone)]
pub struct Maglev {
    /// Slot → input index.
    table: Box<[u32]>,
    /// Identity rank → input index.
    order: Box<[u32]>,
    /// Input index → identity rank.
    rank: Box<[u32]>,
}

impl fmt::Debug for Maglev {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Maglev")
            .field("table_size", &self.table.len())
            .field("endpoints", &self.order.len())
            .finish_non_exhaustive()
    }
}

impl Maglev {
    /// A table of [`DEFAULT_MAGLEV_TABLE_SIZE`] slots.
    pub fn new(endpoints: &[Endpoint<'_>]) -> Result<Self, BuildError> {
        Self::with_table_size(endpoints, DEFAULT_MAGLEV_TABLE_SIZE)
    }

    /// A table of `table_size` slots: a prime, at least the number of endpoints, at most
    /// [`MAX_MAGLEV_TABLE_SIZE`]. Building costs about `M·ln M` probes, `M·N` at worst for
    /// very uneven weights.
    pub fn with_table_size(
        endpoints: &[Endpoint<'_>],
        table_size: usize,
    ) -> Result<Self, BuildError> {
        check_table_size(table_size, endpoints.len())?;
        let order = identity_order(endpoints)?;
        let mut rank = vec![0u32; endpoints.len()];
        for (r, &i) in order.iter().enumerate() {
            rank[i as usize] = r as u32;
        }
        let table = if endpoints.is_empty() {
            Box::new([]) as Box<[u32]>
        } else {
            maglev_fill(endpoints, &order, table_size)
        };
        Ok(Self {
            table,
            order: order.into(),
            rank: rank.into(),
        })
    }

    pub fn table_size(&self) -> usize {
        self.table.len()
    }

    /// Number of endpoints.
    pub fn len(&self) -> usize {
        self.order.len()
    }

    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }

    /// The endpoint (index into the build's list) for `hash`: slot `hash % M`. `None` only
    /// when there are no endpoints.
    pub fn pick(&self, hash: u64) -> Option<usize> {
        let m = self.table.len() as u64;
        if m == 0 {
            return None;
        }
        self.table.get((hash % m) as usize).map(|&i| i as usize)
    }

    /// Like [`pick`](Self::pick), skipping endpoints for which `is_healthy` is false.
    ///
    /// If the first pick is unhealthy, tries up to [`MAGLEV_REHASH_ATTEMPTS`] salted rehashes
    /// of `hash` (so an unhealthy endpoint's keys spread over the others in proportion to
    /// their weight), then the endpoints in identity order after the first pick. Calls
    /// `is_healthy` at most `1 + MAGLEV_REHASH_ATTEMPTS + N - 1` times; `None` when none is
    /// healthy.
    pub fn pick_healthy(&self, hash: u64, is_healthy: impl Fn(usize) -> bool) -> Option<usize> {
        let first = self.pick(hash)?;
        if is_healthy(first) {
            return Some(first);
        }
        for attempt in 1..=MAGLEV_REHASH_ATTEMPTS {
            let salted = avalanche(hash ^ attempt.wrapping_mul(P1));
            if let Some(i) = self.pick(salted)
                && i != first
                && is_healthy(i)
            {
                return Some(i);
            }
        }
        let n = self.order.len();
        let start = self.rank.get(first).map_or(0, |&r| r as usize);
        (1..n)
            .filter_map(|step| self.order.get((start + step) % n))
            .map(|&i| i as usize)
            .find(|&i| is_healthy(i))
    }
}

/// Ring hash sizing, as Envoy's `RingHashLbConfig`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RingHashConfig {
    /// The ring holds at least this many points (more points: better balance, bigger ring).
    pub min_ring_size: usize,
    /// Caps the ring's scale; at most [`MAX_RING_SIZE`].
    pub max_ring_size: usize,
}

impl Default for RingHashConfig {
    fn default() -> Self {
        Self {
            min_ring_size: DEFAULT_MIN_RING_SIZE,
            max_ring_size: MAX_RING_SIZE,
        }
    }
}

/// A Ketama-style hash ring: each endpoint puts points `xxh64("{id}_{i}")` on a ring of
/// `u64`, and a hash goes to the first point at or after it, wrapping (a binary search).
///
/// Sizing follows Envoy: the least-weighted endpoint gets `q = ceil(min_ring_size · w_min /
/// W)` points and an endpoint of weight `w` gets `ceil(q · w / w_min)`, so equal weights give
/// `ceil(min_ring_size / N)` points each. If that would exceed `max_ring_size`, an endpoint gets
/// `max(1, floor(max_ring_size · w / W))`. (Envoy rounds with running sums and may give an
/// endpoint no point under a tight cap; here each endpoint's count depends only on its own
/// weight and every endpoint has at least one point. Without a cap, or with `w_min` dividing
/// every weight, the counts are Envoy's.)
///
/// Disruption: because the per-endpoint point count depends on `N`, removing one of `N`
/// equal endpoints also gives each survivor a few more points, which take keys from other
/// survivors: about `2/N` of the keys move instead of `1/N` (measured in the tests). Marking an
/// endpoint unhealthy through [`pick_healthy`](Self::pick_healthy) moves exactly that
/// endpoint's keys and no others. Balance is looser than Maglev's: an endpoint's share has a
/// standard deviation of about `1/sqrt(points)` of its ideal (10% at 100 points); raise
/// `min_ring_size` for better. Building costs one hash per point: very uneven weights (say 1
/// and 10⁶) push the ring to `max_ring_size` points, as in Envoy.
#[derive(Clone)]
pub struct RingHash {
    /// Point hashes, ascending.
    hashes: Box<[u64]>,
    /// Input index owning the point at the same position.
    owners: Box<[u32]>,
    endpoints: usize,
}

impl fmt::Debug for RingHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RingHash")
            .field("ring_size", &self.hashes.len())
            .field("endpoints", &self.endpoints)
            .finish_non_exhaustive()
    }
}

impl RingHash {
    pub fn new(endpoints: &[Endpoint<'_>], config: RingHashConfig) -> Result<Self, BuildError> {
        let RingHashConfig {
            min_ring_size,
            max_ring_size,
        } = config;
        if min_ring_size == 0 || min_ring_size > max_ring_size || max_ring_size > MAX_RING_SIZE {
            return Err(BuildError::RingSizeBounds {
                min_ring_size,
                max_ring_size,
            });
        }
        if endpoints.len() > max_ring_size {
            return Err(BuildError::TooManyEndpoints {
                endpoints: endpoints.len(),
                max_ring_size,
            });
        }
        let order = identity_order(endpoints)?;
        let weight = |i: u32| u128::from(endpoints[i as usize].weight);
        let total: u128 = order.iter().map(|&i| weight(i)).sum();
        let min_weight = order.iter().map(|&i| weight(i)).min().unwrap_or(1);
        let (min_size, max_size) = (min_ring_size as u128, max_ring_size as u128);
        let q = (min_weight * min_size).div_ceil(total.max(1));
        let capped = q * total > max_size * min_weight;
        let count = |w: u128| -> usize {
            let c = if capped {
                (max_size * w / total).max(1)
            } else {
                (q * w).div_ceil(min_weight)
            };
            // Bounded by max_ring_size (capped) or by min_ring_size · w / w_min (not capped),
            // both far below usize::MAX.
            c as usize
        };

        // (hash, identity rank, input index); the rank breaks hash ties by identity.
        let mut points: Vec<(u64, u32, u32)> = Vec::new();
        let mut key = Vec::new();
        for (rank, &i) in order.iter().enumerate() {
            key.clear();
            key.extend_from_slice(endpoints[i as usize].id.as_bytes());
            key.push(b'_');
            let base = key.len();
            for n in 0..count(weight(i)) {
                key.truncate(base);
                push_decimal(&mut key, n);
                points.push((xxh64(&key, 0), rank as u32, i));
            }
        }
        points.sort_unstable();
        Ok(Self {
            hashes: points.iter().map(|p| p.0).collect(),
            owners: points.iter().map(|p| p.2).collect(),
            endpoints: endpoints.len(),
        })
    }

    /// Number of points on the ring.
    pub fn ring_size(&self) -> usize {
        self.hashes.len()
    }

    /// Number of endpoints.
    pub fn len(&self) -> usize {
        self.endpoints
    }

    pub fn is_empty(&self) -> bool {
        self.endpoints == 0
    }

    /// Position of the first point at or after `hash`, wrapping to 0.
    fn position(&self, hash: u64) -> usize {
        let p = self.hashes.partition_point(|&h| h < hash);
        if p == self.hashes.len() { 0 } else { p }
    }

    /// The endpoint (index into the build's list) owning the first point at or after `hash`.
    /// `None` only when there are no endpoints.
    pub fn pick(&self, hash: u64) -> Option<usize> {
        self.owners.get(self.position(hash)).map(|&i| i as usize)
    }

    /// Like [`pick`](Self::pick), walking the ring forward past points of endpoints for
    /// which `is_healthy` is false: the same answer as a ring built without them at the same
    /// scale. Calls `is_healthy` at most `ring_size + N` times (after `N` failed points it
    /// checks whether any endpoint is healthy at all); `None` when none is.
    pub fn pick_healthy(&self, hash: u64, is_healthy: impl Fn(usize) -> bool) -> Option<usize> {
        let len = self.owners.len();
        let start = self.position(hash);
        for step in 0..len {
            if step == self.endpoints && !(0..self.endpoints).any(&is_healthy) {
                return None;
            }
            let i = self.owners.get((start + step) % len).map(|&i| i as usize)?;
            if is_healthy(i) {
                return Some(i);
            }
        }
        None
    }
}

fn push_decimal(buf: &mut Vec<u8>, mut n: usize) {
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    loop {
        at -= 1;
        digits[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    buf.extend_from_slice(&digits[at..]);
}

/// Either table, for a proxy that holds one per cluster.
#[derive(Debug, Clone)]
pub enum HashRing {
    Maglev(Maglev),
    Ring(RingHash),
}

impl HashRing {
    /// See [`Maglev::pick`] and [`RingHash::pick`].
    pub fn pick(&self, hash: u64) -> Option<usize> {
        match self {
            Self::Maglev(m) => m.pick(hash),
            Self::Ring(r) => r.pick(hash),
        }
    }

    /// See [`Maglev::pick_healthy`] and [`RingHash::pick_healthy`].
    pub fn pick_healthy(&self, hash: u64, is_healthy: impl Fn(usize) -> bool) -> Option<usize> {
        match self {
            Self::Maglev(m) => m.pick_healthy(hash, is_healthy),
            Self::Ring(r) => r.pick_healthy(hash, is_healthy),
        }
    }

    /// Number of endpoints.
    pub fn len(&self) -> usize {
        match self {
            Self::Maglev(m) => m.len(),
            Self::Ring(r) => r.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl From<Maglev> for HashRing {
    fn from(m: Maglev) -> Self {
        Self::Maglev(m)
    }
}

impl From<RingHash> for HashRing {
    fn from(r: RingHash) -> Self {
        Self::Ring(r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::cell::Cell;

    /// splitmix64: a fixed stream of well-mixed test keys.
    fn keys(n: usize, seed: u64) -> impl Iterator<Item = u64> {
        let mut s = seed;
        (0..n).map(move |_| {
            s = s.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = s;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^ (z >> 31)
        })
    }

    fn ids(n: usize) -> Vec<String> {
        (0..n)
            .map(|i| format!("10.0.{}.{}:8080", i / 250, i % 250 + 1))
            .collect()
    }

    fn equal(ids: &[String]) -> Vec<Endpoint<'_>> {
        ids.iter().map(|s| Endpoint::new(s)).collect()
    }

    fn shares(ring: &HashRing, n: usize, keys: impl Iterator<Item = u64>) -> Vec<f64> {
        let mut counts = vec![0usize; n];
        let mut total = 0usize;
        for k in keys {
            counts[ring.pick(k).unwrap()] += 1;
            total += 1;
        }
        counts.iter().map(|&c| c as f64 / total as f64).collect()
    }

    #[test]
    fn xxh64_matches_reference_vectors() {
        assert_eq!(xxh64(b"", 0), 0xEF46_DB37_51D8_E999);
        assert_eq!(xxh64(b"a", 0), 0xD24E_C4F1_A98C_6E5B);
        assert_eq!(xxh64(b"abc", 0), 0x44BC_2CF5_AD77_0999);
        assert_eq!(xxh64(b"", 1), 0xD5AF_BA13_36A3_BE4B);
        assert_eq!(xxh64(b"abc", 1), 0xBEA9_CA81_9932_8908);
        assert_eq!(
            xxh64(b"Nobody inspects the spammish repetition", 0),
            0xFBCE_A83C_8A37_8BF1
        );
        assert_eq!(hash_key(b"abc"), xxh64(b"abc", 0));

        // xxHash's own sanity buffer: covers every tail branch and the 32-byte stripes.
        // Its generator multiplier is not P1 (the last digits differ).
        const PRIME32: u64 = 2_654_435_761;
        const GEN: u64 = 11_400_714_785_074_694_797;
        let mut buf = Vec::new();
        let mut g = PRIME32;
        for _ in 0..2367 {
            buf.push((g >> 56) as u8);
            g = g.wrapping_mul(GEN);
        }
        for (len, seed, want) in [
            (0, PRIME32, 0xAC75_FDA2_929B_17EF),
            (1, 0, 0xE934_A84A_DB05_2768),
            (1, PRIME32, 0x5014_6076_43A9_B4C3),
            (4, 0, 0x9136_A0DC_A574_57EE),
            (4, PRIME32, 0xCAAB_286B_D8E9_FDB5),
            (14, 0, 0x8282_DCC4_994E_35C8),
            (14, PRIME32, 0xC3BD_6BF6_3DEB_6DF0),
            (222, 0, 0xB641_AE8C_B691_C174),
            (222, PRIME32, 0x20CB_8AB7_AE10_C14A),
            (2367, 0, 0xA824_18DD_EC0E_A581),
            (2367, PRIME32, 0xA36A_93C1_8052_673A),
        ] {
            assert_eq!(xxh64(&buf[..len], seed), want, "len {len} seed {seed}");
        }
    }

    #[test]
    fn primes() {
        let small: Vec<usize> = (0..30).filter(|&n| is_prime(n)).collect();
        assert_eq!(small, [2, 3, 5, 7, 11, 13, 17, 19, 23, 29]);
        assert!(is_prime(5003) && is_prime(65_537) && is_prime(MAX_MAGLEV_TABLE_SIZE));
        assert!(!is_prime(65_535) && !is_prime(1_000_000));
    }

    fn envoy_hosts(ports: std::ops::Range<u32>) -> Vec<String> {
        ports.map(|p| format!("127.0.0.1:{p}")).collect()
    }

    // Expected tables from Envoy's maglev_lb_test.cc (Basic, Weighted).
    #[test]
    fn maglev_matches_envoy() {
        let hosts = envoy_hosts(90..96);
        let m = Maglev::with_table_size(&equal(&hosts), 7).unwrap();
        let got: Vec<usize> = (0..7).map(|h| m.pick(h).unwrap()).collect();
        assert_eq!(got, [2, 4, 0, 1, 5, 0, 3]);

        let hosts = envoy_hosts(90..92);
        let eps = [
            Endpoint::weighted(&hosts[0], 1),
            Endpoint::weighted(&hosts[1], 2),
        ];
        let m = Maglev::with_table_size(&eps, 17).unwrap();
        let got: Vec<usize> = (0..17).map(|h| m.pick(h).unwrap()).collect();
        assert_eq!(got, [1, 0, 0, 1, 0, 1, 1, 0, 1, 1, 1, 1, 1, 0, 1, 0, 1]);
    }

    // Expected rings and picks from Envoy's ring_hash_lb_test.cc.
    #[test]
    fn ring_matches_envoy() {
        let config = |n| RingHashConfig {
            min_ring_size: n,
            max_ring_size: MAX_RING_SIZE,
        };
        // Basic: six hosts, min ring 12 → two points each.
        let hosts = envoy_hosts(90..96);
        let r = RingHash::new(&equal(&hosts), config(12)).unwrap();
        assert_eq!(r.ring_size(), 12);
        assert_eq!(r.hashes[0], 833_437_586_790_550_860);
        assert_eq!(r.hashes[11], 16_117_243_373_044_804_889);
        assert_eq!(r.pick(0), Some(4));
        assert_eq!(r.pick(u64::MAX), Some(4));
        assert_eq!(r.pick(3_551_244_743_356_806_947), Some(5));
        assert_eq!(r.pick(3_551_244_743_356_806_948), Some(3));

        // UnevenHosts: two hosts, min ring 3 → four points.
        let hosts = envoy_hosts(80..82);
        let r = RingHash::new(&equal(&hosts), config(3)).unwrap();
        assert_eq!(
            &*r.hashes,
            [
                5_454_692_015_285_649_509,
                7_859_399_908_942_313_493,
                13_838_424_394_637_650_569,
                16_064_866_803_292_627_174
            ]
        );
        assert_eq!(&*r.owners, [0, 1, 0, 1]);

        // HostWeightedLargeRing: weights 1, 2, 3, min ring 6144.
        let hosts = envoy_hosts(90..93);
        let eps: Vec<_> = (0..3)
            .map(|i| Endpoint::weighted(&hosts[i], i as u32 + 1))
            .collect();
        let r = RingHash::new(&eps, config(6144)).unwrap();
        assert_eq!(r.ring_size(), 6144);
        let mut counts = [0; 3];
        for i in 0..6000 {
            counts[r.pick(i * (u64::MAX / 6000)).unwrap()] += 1;
        }
        assert_eq!(counts, [987, 1932, 3081]);
    }

    #[test]
    fn build_errors_name_the_problem() {
        let hosts = ids(3);
        let eps = equal(&hosts);
        let err = |r: Result<Maglev, BuildError>| r.unwrap_err();
        assert_eq!(
            err(Maglev::with_table_size(&eps, 65_535)),
            BuildError::TableSizeNotPrime { table_size: 65_535 }
        );
        assert_eq!(
            err(Maglev::with_table_size(&eps, 2)),
            BuildError::TableSizeTooSmall {
                table_size: 2,
                endpoints: 3
            }
        );
        assert!(matches!(
            err(Maglev::with_table_size(&eps, 5_000_077)),
            BuildError::TableSizeTooLarge { .. }
        ));
        let dup = [Endpoint::new("b"), Endpoint::new("a"), Endpoint::new("b")];
        let e = err(Maglev::new(&dup));
        assert_eq!(
            e,
            BuildError::DuplicateId {
                id: "b".into(),
                first: 0,
                second: 2
            }
        );
        assert!(e.to_string().contains("unique"), "{e}");
        assert_eq!(
            err(Maglev::new(&[
                Endpoint::new("a"),
                Endpoint::weighted("c", 0)
            ])),
            BuildError::ZeroWeight {
                index: 1,
                id: "c".into()
            }
        );
        assert_eq!(
            err(Maglev::new(&[Endpoint::new("")])),
            BuildError::EmptyId { index: 0 }
        );
        let bad = RingHashConfig {
            min_ring_size: 20,
            max_ring_size: 10,
        };
        assert_eq!(
            RingHash::new(&eps, bad).unwrap_err(),
            BuildError::RingSizeBounds {
                min_ring_size: 20,
                max_ring_size: 10
            }
        );
        let tiny = RingHashConfig {
            min_ring_size: 2,
            max_ring_size: 2,
        };
        assert!(matches!(
            RingHash::new(&eps, tiny),
            Err(BuildError::TooManyEndpoints { .. })
        ));
    }

    #[test]
    fn empty_tables_pick_nothing() {
        let rings = [
            HashRing::from(Maglev::with_table_size(&[], 5003).unwrap()),
            HashRing::from(RingHash::new(&[], RingHashConfig::default()).unwrap()),
        ];
        for r in rings {
            assert!(r.is_empty());
            assert_eq!(r.pick(42), None);
            assert_eq!(r.pick_healthy(42, |_| true), None);
        }
    }

    #[test]
    fn ring_sizes_follow_envoy_scaling() {
        let hosts = ids(10);
        let r = RingHash::new(&equal(&hosts), RingHashConfig::default()).unwrap();
        assert_eq!(r.ring_size(), 1030); // ceil(1024 / 10) = 103 points each
        let capped = RingHashConfig {
            min_ring_size: 6,
            max_ring_size: 6,
        };
        let eps: Vec<_> = (0..3)
            .map(|i| Endpoint::weighted(&hosts[i], i as u32 + 1))
            .collect();
        let r = RingHash::new(&eps, capped).unwrap();
        let mut per = [0; 3];
        r.owners.iter().for_each(|&o| per[o as usize] += 1);
        assert_eq!(per, [1, 2, 3]);
        // Under a tight cap every endpoint still gets a point.
        let eps = [Endpoint::weighted("a", 1), Endpoint::weighted("b", 1000)];
        let r = RingHash::new(&eps, capped).unwrap();
        assert!(r.owners.contains(&0) && r.owners.contains(&1));
    }

    #[test]
    fn maglev_balance() {
        let hosts = ids(10);
        let m = HashRing::from(Maglev::with_table_size(&equal(&hosts), 5003).unwrap());
        let s = shares(&m, 10, keys(100_000, 1));
        let (lo, hi) = s
            .iter()
            .fold((1.0f64, 0.0f64), |(l, h), &x| (l.min(x), h.max(x)));
        eprintln!("maglev 10 equal: share min {lo:.4} max {hi:.4}");
        assert!(lo >= 0.08 && hi <= 0.12, "{s:?}");

        let eps = [
            Endpoint::weighted(&hosts[0], 1),
            Endpoint::weighted(&hosts[1], 2),
        ];
        let m = HashRing::from(Maglev::with_table_size(&eps, 5003).unwrap());
        let s = shares(&m, 2, keys(100_000, 2));
        eprintln!("maglev 1:2: ratio {:.3}", s[1] / s[0]);
        assert!((1.8..2.2).contains(&(s[1] / s[0])), "{s:?}");
    }

    #[test]
    fn maglev_default_size_balances_many_endpoints() {
        let hosts = ids(200);
        let m = Maglev::new(&equal(&hosts)).unwrap();
        assert_eq!(m.table_size(), 65_537);
        let mut slots = vec![0usize; 200];
        for h in 0..65_537 {
            slots[m.pick(h).unwrap()] += 1;
        }
        let (lo, hi) = (slots.iter().min().unwrap(), slots.iter().max().unwrap());
        eprintln!("maglev M=65537 N=200: slots per endpoint {lo}..={hi} (ideal 327.7)");
        assert!(*lo >= 320 && *hi <= 335, "{lo}..{hi}");
    }

    #[test]
    fn ring_balance() {
        let hosts = ids(10);
        let r = HashRing::from(RingHash::new(&equal(&hosts), RingHashConfig::default()).unwrap());
        let s = shares(&r, 10, keys(100_000, 3));
        let (lo, hi) = s
            .iter()
            .fold((1.0f64, 0.0f64), |(l, h), &x| (l.min(x), h.max(x)));
        eprintln!("ring 10 equal: share min {lo:.4} max {hi:.4}");
        assert!(lo >= 0.065 && hi <= 0.135, "{s:?}");

        let eps = [
            Endpoint::weighted(&hosts[0], 1),
            Endpoint::weighted(&hosts[1], 2),
        ];
        let r = HashRing::from(RingHash::new(&eps, RingHashConfig::default()).unwrap());
        let s = shares(&r, 2, keys(100_000, 4));
        eprintln!("ring 1:2: ratio {:.3}", s[1] / s[0]);
        assert!((1.6..2.4).contains(&(s[1] / s[0])), "{s:?}");
    }

    /// Identity picked for every slot (Maglev) or key (ring), for comparing builds.
    fn picked<'a>(ring: &HashRing, hosts: &'a [String], keys: &[u64]) -> Vec<&'a str> {
        keys.iter()
            .map(|&k| hosts[ring.pick(k).unwrap()].as_str())
            .collect()
    }

    fn moved(before: &[&str], after: &[&str]) -> usize {
        before.iter().zip(after).filter(|(a, b)| a != b).count()
    }

    #[test]
    fn maglev_minimal_disruption() {
        let slots: Vec<u64> = (0..5003).collect(); // every slot once: exact key-space fractions
        let mut worst_remove = 0.0f64;
        let mut worst_survivor = 0.0f64;
        let mut worst_add = 0.0f64;
        for n in 5..20 {
            let hosts = ids(n + 1);
            let build =
                |hs: &[String]| HashRing::from(Maglev::with_table_size(&equal(hs), 5003).unwrap());
            let full = build(&hosts[..n]);
            let before = picked(&full, &hosts, &slots);

            let gone = n / 2;
            let rest: Vec<String> = hosts[..n]
                .iter()
                .filter(|h| **h != hosts[gone])
                .cloned()
                .collect();
            let after = picked(&build(&rest), &rest, &slots);
            let removed = moved(&before, &after) as f64 / slots.len() as f64;
            let on_gone = before.iter().filter(|h| **h == hosts[gone]).count();
            let survivors =
                (moved(&before, &after) - on_gone) as f64 / (slots.len() - on_gone) as f64;
            assert!(removed <= 1.5 / n as f64 + 0.02, "n={n} removed {removed}");
            assert!(survivors <= 0.05, "n={n} survivors moved {survivors}");
            worst_remove = worst_remove.max(removed * n as f64);
            worst_survivor = worst_survivor.max(survivors);

            let grown = picked(&build(&hosts), &hosts, &slots);
            let added = moved(&before, &grown) as f64 / slots.len() as f64;
            assert!(added <= 1.5 / (n + 1) as f64 + 0.02, "n={n} added {added}");
            worst_add = worst_add.max(added * (n + 1) as f64);
        }
        eprintln!(
            "maglev M=5003 N=5..19: removal moved ≤ {worst_remove:.3}/N, survivors' keys moved \
             ≤ {worst_survivor:.4}, addition moved ≤ {worst_add:.3}/(N+1)"
        );
    }

    #[test]
    fn ring_disruption() {
        let probe: Vec<u64> = keys(20_000, 5).collect();
        let mut worst_remove = 0.0f64;
        let mut worst_add = 0.0f64;
        for n in 5..20 {
            let hosts = ids(n + 1);
            let build = |hs: &[String]| {
                HashRing::from(RingHash::new(&equal(hs), RingHashConfig::default()).unwrap())
            };
            let full = build(&hosts[..n]);
            let before = picked(&full, &hosts, &probe);

            let gone = n / 2;
            let rest: Vec<String> = hosts[..n]
                .iter()
                .filter(|h| **h != hosts[gone])
                .cloned()
                .collect();
            let after = picked(&build(&rest), &rest, &probe);
            // Every key of the removed endpoint moves; the rest of the movement comes from
            // the survivors' extra points (see `RingHash`).
            for (b, a) in before.iter().zip(&after) {
                assert!(*b != hosts[gone] || *a != hosts[gone]);
            }
            let removed = moved(&before, &after) as f64 / probe.len() as f64;
            assert!(removed <= 2.6 / n as f64 + 0.02, "n={n} removed {removed}");
            worst_remove = worst_remove.max(removed * n as f64);

            let grown = picked(&build(&hosts), &hosts, &probe);
            let added = moved(&before, &grown) as f64 / probe.len() as f64;
            assert!(added <= 2.6 / (n + 1) as f64 + 0.02, "n={n} added {added}");
            worst_add = worst_add.max(added * (n + 1) as f64);

            // Excluding an endpoint per request moves exactly its keys.
            let full_ring = &full;
            let excluded: Vec<&str> = probe
                .iter()
                .map(|&k| hosts[full_ring.pick_healthy(k, |i| i != gone).unwrap()].as_str())
                .collect();
            for (b, e) in before.iter().zip(&excluded) {
                assert_eq!(*b == hosts[gone], b != e);
            }
        }
        eprintln!(
            "ring min 1024 N=5..19: removal moved ≤ {worst_remove:.3}/N, addition moved ≤ \
             {worst_add:.3}/(N+1)"
        );
    }

    #[test]
    fn maglev_exclusion_spreads_keys_over_the_others() {
        let hosts = ids(10);
        let m = Maglev::with_table_size(&equal(&hosts), 5003).unwrap();
        let mut got = vec![0usize; 10];
        let mut total = 0usize;
        for h in 0..5003u64 {
            let first = m.pick(h).unwrap();
            let pick = m.pick_healthy(h, |i| i != 3).unwrap();
            if first == 3 {
                got[pick] += 1;
                total += 1;
            } else {
                assert_eq!(pick, first, "a healthy endpoint's key moved");
            }
        }
        let fair = total as f64 / 9.0;
        eprintln!("maglev exclusion of 1/10: fallbacks {got:?}");
        assert_eq!(got[3], 0);
        for (i, &c) in got.iter().enumerate().filter(|&(i, _)| i != 3) {
            assert!(
                (c as f64) > 0.5 * fair && (c as f64) < 1.6 * fair,
                "endpoint {i}: {c}"
            );
        }
    }

    fn endpoint_set() -> impl Strategy<Value = Vec<(String, u32)>> {
        prop::collection::btree_map("[a-z0-9.:]{1,12}", 1u32..5, 1..25)
            .prop_map(|m| m.into_iter().collect())
    }

    fn both(eps: &[Endpoint<'_>]) -> [HashRing; 2] {
        let small = RingHashConfig {
            min_ring_size: 256,
            max_ring_size: MAX_RING_SIZE,
        };
        [
            HashRing::from(Maglev::with_table_size(eps, 5003).unwrap()),
            HashRing::from(RingHash::new(eps, small).unwrap()),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]

        #[test]
        fn input_order_does_not_change_the_identity_picked(
            set in endpoint_set(),
            shuffled in any::<u64>(),
            hashes in prop::collection::vec(any::<u64>(), 64),
        ) {
            let eps: Vec<Endpoint<'_>> =
                set.iter().map(|(id, w)| Endpoint::weighted(id, *w)).collect();
            // A deterministic shuffle of the same set.
            let mut perm: Vec<usize> = (0..eps.len()).collect();
            let mut s = shuffled;
            for i in (1..perm.len()).rev() {
                s = avalanche(s.wrapping_add(i as u64));
                perm.swap(i, (s % (i as u64 + 1)) as usize);
            }
            let other: Vec<Endpoint<'_>> = perm.iter().map(|&i| eps[i]).collect();
            for (a, b) in both(&eps).iter().zip(both(&other).iter()) {
                for &h in &hashes {
                    let x = eps[a.pick(h).unwrap()].id;
                    let y = other[b.pick(h).unwrap()].id;
                    prop_assert_eq!(x, y);
                    let healthy = |id: &str| !xxh64(id.as_bytes(), h).is_multiple_of(3);
                    let x = a.pick_healthy(h, |i| healthy(eps[i].id)).map(|i| eps[i].id);
                    let y = b.pick_healthy(h, |i| healthy(other[i].id)).map(|i| other[i].id);
                    prop_assert_eq!(x, y);
                }
            }
        }

        #[test]
        fn pick_healthy_is_healthy_bounded_and_none_only_when_all_down(
            set in endpoint_set(),
            mask in prop::collection::vec(prop::bool::weighted(0.3), 25),
            hashes in prop::collection::vec(any::<u64>(), 32),
        ) {
            let eps: Vec<Endpoint<'_>> =
                set.iter().map(|(id, w)| Endpoint::weighted(id, *w)).collect();
            let n = eps.len();
            let any_up = mask[..n].iter().any(|&u| u);
            for ring in both(&eps) {
                let bound = match &ring {
                    HashRing::Maglev(_) => 1 + MAGLEV_REHASH_ATTEMPTS as usize + n,
                    HashRing::Ring(r) => r.ring_size() + n,
                };
                for &h in &hashes {
                    let calls = Cell::new(0usize);
                    let got = ring.pick_healthy(h, |i| {
                        calls.set(calls.get() + 1);
                        mask[i]
                    });
                    prop_assert!(calls.get() <= bound, "{} calls > {}", calls.get(), bound);
                    match got {
                        Some(i) => prop_assert!(mask[i]),
                        None => prop_assert!(!any_up),
                    }
                    let first = ring.pick(h).unwrap();
                    if mask[first] {
                        prop_assert_eq!(got, Some(first));
                    }
                    prop_assert_eq!(ring.pick_healthy(h, |_| true), Some(first));
                }
            }
        }
    }
}

//! [`TcCounter`]: bytes and packets per TCP flow and direction, counted on one interface by
//! TC programs on TCX links (`src/bpf/tc_bytes.bpf.c`). The packet-level alternative to the
//! socket-level byte counts of [`crate::FlowTracer`]; see "Byte counting" in the crate docs for
//! how the two compare.

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::ops::AddAssign;

use aya::Ebpf;
use aya::maps::{MapData, MapError, PerCpuArray, PerCpuHashMap};
use aya::programs::links::LinkOrder;
use aya::programs::tc::TcAttachOptions;
use aya::programs::{SchedClassifier, TcAttachType};

use crate::{FlowsError, load, preflight};

// struct rf_tc_key
const K_SADDR: usize = 0;
const K_DADDR: usize = 16;
const K_SPORT: usize = 32;
const K_DPORT: usize = 34;
const K_FAMILY: usize = 36;
const K_DIR: usize = 38;
const KEY_SIZE: usize = 40;

// struct rf_tc_value
const V_PACKETS: usize = 0;
const V_SEGS: usize = 8;
const V_PAYLOAD: usize = 16;
const V_IP: usize = 24;
const VALUE_SIZE: usize = 32;

// The C asserts the same offsets (`RF_AT` in `bpf/tc_bytes.bpf.c`).

// RF_TC_INGRESS / RF_TC_EGRESS
const DIR_INGRESS: u8 = 0;
const DIR_EGRESS: u8 = 1;
const AF_INET: u16 = 2;
const AF_INET6: u16 = 10;

// enum rf_tc_counter
const C_COUNTED: u32 = 0;
const C_NOT_TCP: u32 = 1;
const C_UNPARSED: u32 = 2;
const C_INSERT_FAILED: u32 = 3;
const C_COUNT: u32 = 4;

/// The names of the programs a [`TcCounter`] attaches (`bpftool prog list` shows them).
pub const TC_PROGRAMS: [&str; 2] = ["rf_tc_ingress", "rf_tc_egress"];

/// How to run a [`TcCounter`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TcCounterOptions {
    /// Capacity of the kernel table: an LRU hash with one entry per 5-tuple and hook, so a
    /// TCP connection through the interface takes two (four on `lo`, which sees each packet on
    /// both hooks). Values are per CPU: an entry takes about 100 bytes plus 32 per possible
    /// CPU. Default 65 536.
    pub max_flows: u32,
}

impl Default for TcCounterOptions {
    fn default() -> Self {
        Self { max_flows: 65_536 }
    }
}

impl TcCounterOptions {
    /// Checks the ranges; [`TcCounter::attach`] calls it first.
    pub fn validate(&self) -> Result<(), FlowsError> {
        if self.max_flows == 0 || self.max_flows > 1 << 24 {
            return Err(FlowsError::InvalidOption {
                field: "max_flows",
                value: self.max_flows.to_string(),
                rule: "between 1 and 16777216",
            });
        }
        Ok(())
    }
}

/// Checks privileges (CAP_BPF and CAP_NET_ADMIN) and kernel BTF without loading anything: the
/// same checks [`TcCounter::attach`] runs first.
pub fn check_tc_environment() -> Result<(), FlowsError> {
    preflight::check_tc(&preflight::SystemPaths::system())
}

/// The TC hook a packet passed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum TcDirection {
    /// Received by the interface.
    Ingress,
    /// Transmitted by the interface.
    Egress,
}

/// A key of the TC table: a TCP packet's own addresses (source and destination as in the
/// packet, not as seen by either socket) and the hook it passed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TcKey {
    /// The packet's source.
    pub src: SocketAddr,
    /// The packet's destination.
    pub dst: SocketAddr,
    /// The hook.
    pub direction: TcDirection,
}

/// What passed one hook for one 5-tuple, summed over CPUs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TcStats {
    /// Packets (skbs) that passed the hook: a GSO or GRO super-packet counts once.
    pub packets: u64,
    /// TCP segments: `max(1, gso_segs)` per packet, i.e. what would be on the wire.
    pub segments: u64,
    /// TCP payload bytes: IP length − IP header − TCP header (options included), summed over
    /// packets. Retransmitted payload counts again; SYN and FIN carry none.
    pub payload_bytes: u64,
    /// IP bytes: the IP length (headers included), summed over packets.
    pub ip_bytes: u64,
}

impl AddAssign for TcStats {
    fn add_assign(&mut self, o: Self) {
        self.packets += o.packets;
        self.segments += o.segments;
        self.payload_bytes += o.payload_bytes;
        self.ip_bytes += o.ip_bytes;
    }
}

/// The programs' global counters, summed over CPUs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TcCounters {
    /// TCP packets counted in the table.
    pub counted: u64,
    /// Packets that are not TCP over IPv4/IPv6 (ARP, UDP, ICMP, ...).
    pub not_tcp: u64,
    /// Packets not parsed: IPv6 extension headers, IPv4 fragments, malformed or short headers.
    /// TCP bytes in these are missing from the table.
    pub unparsed: u64,
    /// Table updates that failed (should stay 0: the table is an LRU).
    pub insert_failed: u64,
}

/// The TC table at one moment.
#[derive(Debug, Clone, Default)]
pub struct TcSnapshot {
    flows: HashMap<TcKey, TcStats>,
}

impl TcSnapshot {
    /// The stats of one key (zero when absent).
    pub fn get(&self, key: &TcKey) -> TcStats {
        self.flows.get(key).copied().unwrap_or_default()
    }

    /// What the socket `local` ↔ `remote` sent through this interface: egress packets from
    /// `local` to `remote`.
    ///
    /// On `lo` every packet passes egress and then ingress, so it is counted twice in the
    /// table: once as sent (egress, by the sending socket's address) and once as received
    /// (ingress, by the receiving socket's). Attributing egress to the packet's source and
    /// ingress to its destination, as these two methods do, counts it once per socket and
    /// gives the same answer on `lo`, on a veth and on a NIC.
    pub fn sent(&self, local: SocketAddr, remote: SocketAddr) -> TcStats {
        self.get(&TcKey {
            src: local,
            dst: remote,
            direction: TcDirection::Egress,
        })
    }

    /// What the socket `local` ↔ `remote` received through this interface: ingress packets
    /// from `remote` to `local`. See [`sent`](Self::sent).
    pub fn received(&self, local: SocketAddr, remote: SocketAddr) -> TcStats {
        self.get(&TcKey {
            src: remote,
            dst: local,
            direction: TcDirection::Ingress,
        })
    }

    /// Every key with its stats.
    pub fn iter(&self) -> impl Iterator<Item = (&TcKey, &TcStats)> {
        self.flows.iter()
    }

    /// Number of keys.
    pub fn len(&self) -> usize {
        self.flows.len()
    }

    /// True when nothing was counted (or everything was evicted).
    pub fn is_empty(&self) -> bool {
        self.flows.is_empty()
    }
}

/// TCP bytes and packets per 5-tuple and direction on one network interface, counted by two
/// TC programs (`rf_tc_ingress`, `rf_tc_egress`) attached through TCX links (Linux 6.6+).
///
/// TCX links need no clsact qdisc and leave the interface's qdiscs and classic TC filters
/// alone; the programs never change a packet's fate (they return `TCX_NEXT`, so programs and
/// filters after ours still run). The links belong to this process: dropping the counter (or
/// [`detach`](Self::detach)) removes them, and so does the process dying, even by SIGKILL,
/// since the kernel closes its file descriptors. Several counters may run on one interface.
///
/// The interface is looked up and the links are made in the calling thread's network
/// namespace; they stay on that interface whichever thread drops the counter.
///
/// Bytes are TCP payload bytes from the IP and TCP headers (see [`TcStats`]). Only
/// Ethernet-framed interfaces (`lo`, veth, NICs) are supported.
pub struct TcCounter {
    // Field order is drop order: the object first, which closes the links.
    ebpf: Ebpf,
    interface: String,
    ifindex: u32,
    flows: PerCpuHashMap<MapData, [u8; KEY_SIZE], [u8; VALUE_SIZE]>,
    counters: PerCpuArray<MapData, u64>,
    max_flows: u32,
}

impl std::fmt::Debug for TcCounter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TcCounter")
            .field("interface", &self.interface)
            .field("ifindex", &self.ifindex)
            .finish_non_exhaustive()
    }
}

impl TcCounter {
    /// Checks privileges, loads the programs and attaches them to `interface`'s ingress and
    /// egress hooks.
    pub fn attach(interface: &str, opts: TcCounterOptions) -> Result<Self, FlowsError> {
        opts.validate()?;
        check_tc_environment()?;
        let ifindex = lookup_interface(interface)?;

        let mut ebpf = load::open(crate::TC_OBJ, &[("rf_tc_flows", opts.max_flows)], &[])?;
        let hooks = [
            ("rf_tc_ingress", "ingress", TcAttachType::Ingress),
            ("rf_tc_egress", "egress", TcAttachType::Egress),
        ];
        for (name, hook, attach_type) in hooks {
            load::load_program(&mut ebpf, name)?;
            let tc_err = |source: crate::BoxError| FlowsError::Tc {
                interface: interface.to_owned(),
                hook,
                op: "attach",
                source,
            };
            let program: &mut SchedClassifier = ebpf
                .program_mut(name)
                .and_then(|p| p.try_into().ok())
                .ok_or_else(|| tc_err("not a TC program in the object".into()))?;
            // Last in the hook's order, after whatever is there; on error `ebpf` is dropped,
            // which closes the link made so far.
            program
                .attach_with_options(
                    interface,
                    attach_type,
                    TcAttachOptions::TcxOrder(LinkOrder::default()),
                )
                .map_err(|e| tc_err(Box::new(e)))?;
        }
        let take = |ebpf: &mut Ebpf, name: &'static str| {
            ebpf.take_map(name).ok_or_else(|| FlowsError::Map {
                map: name,
                op: "find",
                source: "the object has no map of this name".into(),
            })
        };
        let flows = PerCpuHashMap::try_from(take(&mut ebpf, "rf_tc_flows")?)
            .map_err(map_err("rf_tc_flows", "open"))?;
        let counters = PerCpuArray::try_from(take(&mut ebpf, "rf_tc_counters")?)
            .map_err(map_err("rf_tc_counters", "open"))?;

        Ok(Self {
            ebpf,
            interface: interface.to_owned(),
            ifindex,
            flows,
            counters,
            max_flows: opts.max_flows,
        })
    }

    /// The interface name given to [`attach`](Self::attach).
    pub fn interface(&self) -> &str {
        &self.interface
    }

    /// The interface index in its network namespace.
    pub fn ifindex(&self) -> u32 {
        self.ifindex
    }

    /// The names of the attached programs (all start with `rf_tc_`).
    pub fn programs(&self) -> impl Iterator<Item = &'static str> {
        TC_PROGRAMS.into_iter()
    }

    /// The table now, summed over CPUs. Not atomic: packets keep being counted during the
    /// walk.
    pub fn snapshot(&self) -> Result<TcSnapshot, FlowsError> {
        let limit = 2 * self.max_flows as usize + 16;
        let mut seen = HashSet::new();
        let keys: Vec<[u8; KEY_SIZE]> = self
            .flows
            .keys()
            .take(limit)
            .filter_map(Result::ok)
            .filter(|k| seen.insert(*k))
            .collect();
        let mut flows = HashMap::with_capacity(keys.len());
        for raw in keys {
            let Some(key) = decode_key(&raw) else {
                continue;
            };
            let per_cpu = match self.flows.get(&raw, 0) {
                Ok(v) => v,
                Err(MapError::KeyNotFound) => continue, // evicted meanwhile
                Err(source) => return Err(map_err("rf_tc_flows", "lookup")(source)),
            };
            let mut total = TcStats::default();
            for v in per_cpu.iter() {
                total += decode_value(v);
            }
            *flows.entry(key).or_default() += total;
        }
        Ok(TcSnapshot { flows })
    }

    /// The programs' global counters, summed over CPUs.
    pub fn counters(&self) -> Result<TcCounters, FlowsError> {
        let mut v = [0u64; C_COUNT as usize];
        for (idx, slot) in (0..C_COUNT).zip(v.iter_mut()) {
            let per_cpu = self
                .counters
                .get(&idx, 0)
                .map_err(map_err("rf_tc_counters", "lookup"))?;
            *slot = per_cpu.iter().sum();
        }
        let at = |i: u32| v[i as usize];
        Ok(TcCounters {
            counted: at(C_COUNTED),
            not_tcp: at(C_NOT_TCP),
            unparsed: at(C_UNPARSED),
            insert_failed: at(C_INSERT_FAILED),
        })
    }

    /// Removes both links (the same as dropping the counter).
    pub fn detach(self) {
        drop(self.ebpf);
    }
}

/// `interface`'s index in the calling thread's network namespace.
fn lookup_interface(interface: &str) -> Result<u32, FlowsError> {
    interface_index(interface).map_err(|source| FlowsError::NoSuchInterface {
        name: interface.to_owned(),
        source,
    })
}

/// The index of `name` in the calling thread's network namespace (SIOCGIFINDEX).
fn interface_index(name: &str) -> std::io::Result<u32> {
    let sock = rustix::net::socket(
        rustix::net::AddressFamily::INET,
        rustix::net::SocketType::DGRAM,
        None,
    )?;
    Ok(rustix::net::netdevice::name_to_index(&sock, name)?)
}

fn map_err(map: &'static str, op: &'static str) -> impl Fn(MapError) -> FlowsError {
    move |source| FlowsError::Map {
        map,
        op,
        source: Box::new(source),
    }
}

fn u64_at(b: &[u8], off: usize) -> u64 {
    b.get(off..off + 8)
        .and_then(|s| <[u8; 8]>::try_from(s).ok())
        .map_or(0, u64::from_ne_bytes)
}

fn u16_at(b: &[u8], off: usize) -> u16 {
    b.get(off..off + 2)
        .and_then(|s| <[u8; 2]>::try_from(s).ok())
        .map_or(0, u16::from_ne_bytes)
}

fn decode_value(b: &[u8]) -> TcStats {
    TcStats {
        packets: u64_at(b, V_PACKETS),
        segments: u64_at(b, V_SEGS),
        payload_bytes: u64_at(b, V_PAYLOAD),
        ip_bytes: u64_at(b, V_IP),
    }
}

fn decode_key(b: &[u8]) -> Option<TcKey> {
    if b.len() != KEY_SIZE {
        return None;
    }
    let addr = |off: usize| -> Option<IpAddr> {
        match u16_at(b, K_FAMILY) {
            AF_INET => {
                let a: [u8; 4] = b.get(off..off + 4)?.try_into().ok()?;
                Some(Ipv4Addr::from(a).into())
            }
            AF_INET6 => {
                let a: [u8; 16] = b.get(off..off + 16)?.try_into().ok()?;
                Some(Ipv6Addr::from(a).into())
            }
            _ => None,
        }
    };
    let direction = match b[K_DIR] {
        DIR_INGRESS => TcDirection::Ingress,
        DIR_EGRESS => TcDirection::Egress,
        _ => return None,
    };
    Some(TcKey {
        src: SocketAddr::new(addr(K_SADDR)?, u16_at(b, K_SPORT)),
        dst: SocketAddr::new(addr(K_DADDR)?, u16_at(b, K_DPORT)),
        direction,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(family: u16, dir: u8) -> Vec<u8> {
        let mut b = vec![0u8; KEY_SIZE];
        b[K_SADDR..K_SADDR + 4].copy_from_slice(&[127, 0, 0, 1]);
        b[K_DADDR..K_DADDR + 4].copy_from_slice(&[10, 0, 0, 2]);
        b[K_SPORT..K_SPORT + 2].copy_from_slice(&4242u16.to_ne_bytes());
        b[K_DPORT..K_DPORT + 2].copy_from_slice(&80u16.to_ne_bytes());
        b[K_FAMILY..K_FAMILY + 2].copy_from_slice(&family.to_ne_bytes());
        b[K_DIR] = dir;
        b
    }

    #[test]
    fn keys_decode() {
        let k = decode_key(&key(AF_INET, DIR_EGRESS)).unwrap();
        assert_eq!(k.src, "127.0.0.1:4242".parse().unwrap());
        assert_eq!(k.dst, "10.0.0.2:80".parse().unwrap());
        assert_eq!(k.direction, TcDirection::Egress);
        let k6 = decode_key(&key(AF_INET6, DIR_INGRESS)).unwrap();
        assert!(k6.src.is_ipv6());
        assert_eq!(k6.direction, TcDirection::Ingress);
        assert!(decode_key(&key(7, DIR_INGRESS)).is_none());
        assert!(decode_key(&key(AF_INET, 9)).is_none());
        assert!(decode_key(&[0u8; 12]).is_none());
    }

    #[test]
    fn values_decode_and_add() {
        let mut b = vec![0u8; VALUE_SIZE];
        for (i, off) in [V_PACKETS, V_SEGS, V_PAYLOAD, V_IP].into_iter().enumerate() {
            b[off..off + 8].copy_from_slice(&(i as u64 + 1).to_ne_bytes());
        }
        let mut s = decode_value(&b);
        s += decode_value(&b);
        assert_eq!(
            s,
            TcStats {
                packets: 2,
                segments: 4,
                payload_bytes: 6,
                ip_bytes: 8
            }
        );
        assert_eq!(decode_value(&[1, 2]), TcStats::default());
    }

    #[test]
    fn snapshot_attributes_egress_to_the_source_and_ingress_to_the_destination() {
        let (a, b): (SocketAddr, SocketAddr) = (
            "127.0.0.1:1000".parse().unwrap(),
            "127.0.0.1:2000".parse().unwrap(),
        );
        let one = |payload| TcStats {
            packets: 1,
            segments: 1,
            payload_bytes: payload,
            ip_bytes: payload + 52,
        };
        let mut snap = TcSnapshot::default();
        // a -> b: 10 bytes, seen on egress and on ingress (lo); b -> a: 20 bytes.
        for (src, dst, p) in [(a, b, 10), (b, a, 20)] {
            for direction in [TcDirection::Egress, TcDirection::Ingress] {
                snap.flows.insert(
                    TcKey {
                        src,
                        dst,
                        direction,
                    },
                    one(p),
                );
            }
        }
        assert_eq!(snap.sent(a, b).payload_bytes, 10);
        assert_eq!(snap.received(b, a).payload_bytes, 10);
        assert_eq!(snap.sent(b, a).payload_bytes, 20);
        assert_eq!(snap.received(a, b).payload_bytes, 20);
        assert_eq!(snap.len(), 4);
    }

    #[test]
    fn counter_can_move_to_another_thread() {
        fn send<T: Send>() {}
        send::<TcCounter>();
    }

    #[test]
    fn options_are_validated() {
        TcCounterOptions::default().validate().unwrap();
        let e = TcCounterOptions { max_flows: 0 }.validate().unwrap_err();
        assert!(e.to_string().contains("max_flows"), "{e}");
    }
}

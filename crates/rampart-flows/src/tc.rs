//! [`TcCounter`]: bytes and packets per TCP flow and direction, counted on one interface by
//! TC clsact programs (`src/bpf/tc_bytes.bpf.c`). The packet-level alternative to the
//! socket-level byte counts of [`crate::FlowTracer`]; see "Byte counting" in the crate docs for
//! how the two compare.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::mem::{MaybeUninit, offset_of, size_of};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::ops::AddAssign;
use std::os::fd::{AsFd as _, OwnedFd};

use libbpf_rs::skel::{OpenSkel as _, SkelBuilder as _};
use libbpf_rs::{
    MapCore as _, MapFlags, MapHandle, TC_EGRESS, TC_INGRESS, TcAttachPoint, TcHookBuilder,
};

use crate::tc_skel::{TcBytesSkelBuilder, types};
use crate::{FlowsError, current_netns, libbpf_log, preflight};

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

const _: () = {
    assert!(size_of::<types::rf_tc_key>() == KEY_SIZE);
    assert!(offset_of!(types::rf_tc_key, saddr) == K_SADDR);
    assert!(offset_of!(types::rf_tc_key, daddr) == K_DADDR);
    assert!(offset_of!(types::rf_tc_key, sport) == K_SPORT);
    assert!(offset_of!(types::rf_tc_key, dport) == K_DPORT);
    assert!(offset_of!(types::rf_tc_key, family) == K_FAMILY);
    assert!(offset_of!(types::rf_tc_key, dir) == K_DIR);
    assert!(size_of::<types::rf_tc_value>() == VALUE_SIZE);
    assert!(offset_of!(types::rf_tc_value, packets) == V_PACKETS);
    assert!(offset_of!(types::rf_tc_value, segs) == V_SEGS);
    assert!(offset_of!(types::rf_tc_value, payload_bytes) == V_PAYLOAD);
    assert!(offset_of!(types::rf_tc_value, ip_bytes) == V_IP);
};

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
/// TC programs (`rf_tc_ingress`, `rf_tc_egress`) on its clsact qdisc.
///
/// [`attach`](Self::attach) creates the clsact qdisc when the interface has none (and then
/// owns it) and adds one direct-action filter per hook; the programs never change a packet's
/// fate (they return `TC_ACT_UNSPEC`, so filters after ours still run). Dropping the counter
/// (or [`detach`](Self::detach)) removes both filters and, when it created the qdisc, destroys
/// the qdisc with both attach points, so no clsact qdisc is left behind. A clsact qdisc that
/// existed before is left in place with its other filters. Removing the qdisc removes the
/// filters others added to it meanwhile (a second counter on the same interface, say): run one
/// counter per interface.
///
/// Unlike the tracer's links, TC filters are not tied to a file descriptor: a counter killed
/// with SIGKILL leaves its filters (and a qdisc it created) attached, counting, until
/// `tc qdisc del dev <if> clsact` (or `tc filter del`) removes them.
///
/// The interface is looked up and the filters are attached in the calling thread's network
/// namespace; whichever thread drops the counter, they are removed in that same namespace.
///
/// Bytes are TCP payload bytes from the IP and TCP headers (see [`TcStats`]). Only
/// Ethernet-framed interfaces (`lo`, veth, NICs) are supported.
pub struct TcCounter {
    interface: String,
    ifindex: u32,
    netns: u64,
    netns_file: File,
    /// The programs, ingress and egress (the filters hold them too).
    progs: [OwnedFd; 2],
    /// `(handle, priority)` of the attached filters, ingress and egress; `None` once detached.
    /// (libbpf-rs' `TcHook` holds raw pointers, so it is not `Send`; hooks are rebuilt from
    /// these to detach.)
    filters: Option<[(u32, u32); 2]>,
    /// We created the clsact qdisc (and remove it on detach).
    owns_qdisc: bool,
    flows: MapHandle,
    counters: MapHandle,
    max_flows: u32,
}

impl std::fmt::Debug for TcCounter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TcCounter")
            .field("interface", &self.interface)
            .field("ifindex", &self.ifindex)
            .field("netns", &self.netns)
            .field("filters", &self.filters)
            .field("owns_qdisc", &self.owns_qdisc)
            .finish_non_exhaustive()
    }
}

impl TcCounter {
    /// Checks privileges, loads the programs and attaches them to `interface`'s ingress and
    /// egress hooks.
    pub fn attach(interface: &str, opts: TcCounterOptions) -> Result<Self, FlowsError> {
        opts.validate()?;
        check_tc_environment()?;
        let (ifindex, ifindex_i32) = lookup_interface(interface)?;
        let (netns, netns_file) = thread_netns()?;

        let capture = libbpf_log::Capture::begin();
        let mut storage = MaybeUninit::uninit();
        let mut open = TcBytesSkelBuilder::default()
            .open(&mut storage)
            .map_err(|source| libbpf_log::open_failed(capture.text(), source))?;
        open.maps
            .rf_tc_flows
            .set_max_entries(opts.max_flows)
            .map_err(map_err("rf_tc_flows", "set max_entries"))?;
        let skel = open
            .load()
            .map_err(|source| libbpf_log::load_failed(&capture.text(), source))?;

        let flows = MapHandle::try_from(&skel.maps.rf_tc_flows)
            .map_err(map_err("rf_tc_flows", "duplicate fd"))?;
        let counters = MapHandle::try_from(&skel.maps.rf_tc_counters)
            .map_err(map_err("rf_tc_counters", "duplicate fd"))?;

        let ingress_fd = skel.progs.rf_tc_ingress.as_fd();
        let egress_fd = skel.progs.rf_tc_egress.as_fd();
        let Attached {
            filters,
            owns_qdisc,
        } = attach_filters(interface, ifindex_i32, [ingress_fd, egress_fd])?;
        let dup = |fd: std::os::fd::BorrowedFd<'_>| {
            fd.try_clone_to_owned()
                .map_err(|source| FlowsError::ProcStatus {
                    path: "program fd (dup)".into(),
                    source,
                })
        };
        let progs = match (dup(ingress_fd), dup(egress_fd)) {
            (Ok(i), Ok(e)) => [i, e],
            (Err(e), _) | (_, Err(e)) => {
                let _ = detach_filters(
                    interface,
                    ifindex_i32,
                    [&ingress_fd, &egress_fd],
                    filters,
                    owns_qdisc,
                );
                return Err(e);
            }
        };
        // The probing attach above makes libbpf print the kernel's "Parent Qdisc doesn't
        // exists"; the capture kept that off stderr.
        drop(capture);
        // The filters hold the programs (and the programs their maps); the skeleton can go.
        drop(skel);

        Ok(Self {
            interface: interface.to_owned(),
            ifindex,
            netns,
            netns_file,
            progs,
            filters: Some(filters),
            owns_qdisc,
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

    /// True when [`attach`](Self::attach) created the clsact qdisc (and detaching removes it).
    pub fn owns_qdisc(&self) -> bool {
        self.owns_qdisc
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
        let keys: Vec<Vec<u8>> = self
            .flows
            .keys()
            .take(limit)
            .filter(|k| seen.insert(k.clone()))
            .collect();
        let mut flows = HashMap::with_capacity(keys.len());
        for raw in keys {
            let Some(key) = decode_key(&raw) else {
                continue;
            };
            let per_cpu = match self.flows.lookup_percpu(&raw, MapFlags::ANY) {
                Ok(Some(v)) => v,
                Ok(None) => continue, // evicted meanwhile
                Err(source) => {
                    return Err(FlowsError::Map {
                        map: "rf_tc_flows",
                        op: "lookup",
                        source,
                    });
                }
            };
            let mut total = TcStats::default();
            for v in &per_cpu {
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
                .lookup_percpu(&idx.to_ne_bytes(), MapFlags::ANY)
                .map_err(map_err("rf_tc_counters", "lookup"))?
                .unwrap_or_default();
            *slot = per_cpu.iter().map(|b| u64_at(b, 0)).sum();
        }
        let at = |i: u32| v[i as usize];
        Ok(TcCounters {
            counted: at(C_COUNTED),
            not_tcp: at(C_NOT_TCP),
            unparsed: at(C_UNPARSED),
            insert_failed: at(C_INSERT_FAILED),
        })
    }

    /// Removes both filters and, when we created it, the clsact qdisc; reports the first
    /// failure (dropping does the same and logs failures).
    pub fn detach(mut self) -> Result<(), FlowsError> {
        self.detach_all()
    }

    fn detach_all(&mut self) -> Result<(), FlowsError> {
        let Some(filters) = self.filters.take() else {
            return Ok(());
        };
        let ifindex = i32::try_from(self.ifindex).unwrap_or_default(); // checked in attach
        let [ingress_fd, egress_fd] = &self.progs;
        let (interface, owns_qdisc) = (self.interface.as_str(), self.owns_qdisc);
        let work = move || {
            detach_filters(
                interface,
                ifindex,
                [&ingress_fd.as_fd(), &egress_fd.as_fd()],
                filters,
                owns_qdisc,
            )
        };
        if current_netns().ok() == Some(self.netns) {
            return work();
        }
        // Dropped on a thread in another network namespace: the netlink socket must be opened
        // in the interface's namespace (ifindexes are per namespace), so do it on a thread
        // that joins it.
        let netns_file = &self.netns_file;
        std::thread::scope(|s| {
            s.spawn(move || {
                rustix::thread::move_into_link_name_space(
                    netns_file.as_fd(),
                    Some(rustix::thread::LinkNameSpaceType::Network),
                )
                .map_err(|e| FlowsError::ProcStatus {
                    path: "/proc/thread-self/ns/net (setns)".into(),
                    source: e.into(),
                })?;
                work()
            })
            .join()
            .unwrap_or_else(|_| {
                Err(FlowsError::ProcStatus {
                    path: "/proc/thread-self/ns/net".into(),
                    source: std::io::Error::other("the detaching thread panicked"),
                })
            })
        })
    }
}

impl Drop for TcCounter {
    fn drop(&mut self) {
        if let Err(e) = self.detach_all() {
            tracing::warn!(interface = %self.interface, "detaching the TC counter: {e}");
        }
    }
}

/// The filters [`attach_filters`] added, and whether it created the clsact qdisc.
struct Attached {
    /// `(handle, priority)`, ingress and egress.
    filters: [(u32, u32); 2],
    owns_qdisc: bool,
}

/// Adds the ingress and egress `progs` as direct-action filters on `interface`, creating its
/// clsact qdisc when it has none. On failure nothing of ours is left attached.
fn attach_filters(
    interface: &str,
    ifindex_i32: i32,
    progs: [std::os::fd::BorrowedFd<'_>; 2],
) -> Result<Attached, FlowsError> {
    let tc_err = |hook: &'static str, op: &'static str| {
        let interface = interface.to_owned();
        move |source| FlowsError::Tc {
            interface,
            hook,
            op,
            source,
        }
    };
    let [ingress_fd, egress_fd] = progs;
    // Handle and priority 0: the kernel picks free ones, so filters of others on the same
    // hook are never replaced; attach() returns the hook with the chosen values.
    let mut ingress = TcHookBuilder::new(ingress_fd)
        .ifindex(ifindex_i32)
        .replace(false)
        .hook(TC_INGRESS);
    let mut egress = TcHookBuilder::new(egress_fd)
        .ifindex(ifindex_i32)
        .replace(false)
        .hook(TC_EGRESS);

    // Attaching without a clsact qdisc fails with EINVAL: then create it, and own it.
    // (libbpf's hook_create succeeds on an existing qdisc, so it cannot tell us.)
    let mut owns_qdisc = false;
    let mut qdisc = TcHookBuilder::new(ingress_fd)
        .ifindex(ifindex_i32)
        .hook(TC_INGRESS | TC_EGRESS);
    let ingress = match ingress.attach() {
        Ok(h) => h,
        Err(e) if e.kind() == libbpf_rs::ErrorKind::InvalidInput => {
            qdisc.create().map_err(tc_err("clsact qdisc", "create"))?;
            match ingress.attach() {
                Ok(h) => {
                    owns_qdisc = true;
                    h
                }
                Err(source) => {
                    let _ = qdisc.destroy();
                    return Err(tc_err("ingress", "attach")(source));
                }
            }
        }
        Err(source) => return Err(tc_err("ingress", "attach")(source)),
    };
    let egress = match egress.attach() {
        Ok(h) => h,
        Err(source) => {
            let mut ingress = ingress;
            let _ = ingress.detach();
            if owns_qdisc {
                let _ = qdisc.destroy();
            }
            return Err(tc_err("egress", "attach")(source));
        }
    };
    Ok(Attached {
        filters: [
            (ingress.get_handle(), ingress.get_priority()),
            (egress.get_handle(), egress.get_priority()),
        ],
        owns_qdisc,
    })
}

/// `interface`'s index in the calling thread's network namespace, also as libbpf's `i32`.
fn lookup_interface(interface: &str) -> Result<(u32, i32), FlowsError> {
    let no_such = |source: std::io::Error| FlowsError::NoSuchInterface {
        name: interface.to_owned(),
        source,
    };
    let ifindex = interface_index(interface).map_err(no_such)?;
    let ifindex_i32 = i32::try_from(ifindex).map_err(|_| {
        no_such(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("interface index {ifindex} out of range"),
        ))
    })?;
    Ok((ifindex, ifindex_i32))
}

/// The calling thread's network namespace: its inode number and an open handle to it.
fn thread_netns() -> Result<(u64, File), FlowsError> {
    let netns = current_netns().map_err(|source| FlowsError::ProcStatus {
        path: "/proc/thread-self/ns/net".into(),
        source,
    })?;
    let netns_file =
        File::open("/proc/thread-self/ns/net").map_err(|source| FlowsError::ProcStatus {
            path: "/proc/thread-self/ns/net".into(),
            source,
        })?;
    Ok((netns, netns_file))
}

/// Detaches our egress and ingress filters (by handle and priority), then destroys the qdisc
/// if it is ours, with both attach points (destroying only one hook would flush that hook's
/// filters and leave the qdisc). Tries every step; returns the first failure.
fn detach_filters(
    interface: &str,
    ifindex: i32,
    progs: [&std::os::fd::BorrowedFd<'_>; 2],
    filters: [(u32, u32); 2],
    owns_qdisc: bool,
) -> Result<(), FlowsError> {
    let err = |hook: &'static str, op: &'static str| {
        move |source| FlowsError::Tc {
            interface: interface.to_owned(),
            hook,
            op,
            source,
        }
    };
    let hook = |i: usize, point: TcAttachPoint| {
        let (handle, priority) = filters[i];
        TcHookBuilder::new(*progs[i])
            .ifindex(ifindex)
            .handle(handle)
            .priority(priority)
            .hook(point)
    };
    let mut result = hook(1, TC_EGRESS).detach().map_err(err("egress", "detach"));
    let r = hook(0, TC_INGRESS)
        .detach()
        .map_err(err("ingress", "detach"));
    result = result.and(r);
    if owns_qdisc {
        let r = hook(0, TC_INGRESS | TC_EGRESS)
            .destroy()
            .map_err(err("clsact qdisc", "destroy"));
        result = result.and(r);
    }
    result
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

fn map_err(map: &'static str, op: &'static str) -> impl Fn(libbpf_rs::Error) -> FlowsError {
    move |source| FlowsError::Map { map, op, source }
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

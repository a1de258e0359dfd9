//! [`FlowTracer`]: loads and attaches the programs, delivers events, reads the tables.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use aya::Ebpf;
use aya::maps::{HashMap as BpfHashMap, Map, MapData, MapError, PerCpuArray, RingBuf};
use aya::programs::TracePoint;

use crate::model::{FlowCounters, FlowEvent, FlowSnapshot};
use crate::raw::{self, FLOW_SIZE, RawFlow, counter};
use crate::{FlowsError, LabelRegistry, PinnedLabels, load, preflight};

/// The programs in attach order, with their tracepoints. Destroy first and state changes
/// last: a flow is never created without the program that removes it being attached.
const PROGRAMS: [(&str, &str, &str); 7] = [
    ("rf_destroy", "tcp", "tcp_destroy_sock"),
    ("rf_send_len", "sock", "sock_send_length"),
    ("rf_recv_len", "sock", "sock_recv_length"),
    ("rf_retransmit", "tcp", "tcp_retransmit_skb"),
    ("rf_send_reset", "tcp", "tcp_send_reset"),
    ("rf_recv_reset", "tcp", "tcp_receive_reset"),
    ("rf_state", "sock", "inet_sock_set_state"),
];

/// How to run a [`FlowTracer`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FlowTracerOptions {
    /// Size of the BPF ring buffer in bytes: a power of two, at least 4096. One event takes
    /// 152 bytes. When the consumer falls behind and it fills, events are dropped and counted
    /// in [`FlowCounters::events_lost`]. Default 1 MiB.
    pub ring_buffer_bytes: u32,
    /// Capacity of the kernel flow table (an LRU hash keyed by socket). Default 65 536.
    pub max_flows: u32,
    /// Capacity of the [`LabelRegistry`]. Default 65 536.
    pub max_labels: usize,
    /// Mount tracefs on `/sys/kernel/tracing` when it is missing (needs CAP_SYS_ADMIN).
    /// Default false: report [`FlowsError::TracefsNotMounted`] instead.
    pub mount_tracefs: bool,
    /// Which events the kernel emits; the others cost nothing (flows are still tracked,
    /// counted and measured, and snapshots are unchanged). Default: all.
    pub events: EventKinds,
}

/// A set of [`FlowEvent`] kinds, for [`FlowTracerOptions::events`]: a consumer that only
/// needs closes (with their final counters) saves two ring-buffer events per socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EventKinds(u32);

impl EventKinds {
    /// [`FlowEvent::Open`].
    pub const OPEN: Self = Self(1 << 1);
    /// [`FlowEvent::Established`].
    pub const ESTABLISHED: Self = Self(1 << 2);
    /// [`FlowEvent::Close`].
    pub const CLOSE: Self = Self(1 << 3);
    /// [`FlowEvent::Retransmit`].
    pub const RETRANSMIT: Self = Self(1 << 4);
    /// [`FlowEvent::Reset`].
    pub const RESET: Self = Self(1 << 5);
    /// Every kind.
    pub const ALL: Self = Self(0b11_1110);
    const NAMES: [(&'static str, Self); 5] = [
        ("open", Self::OPEN),
        ("established", Self::ESTABLISHED),
        ("close", Self::CLOSE),
        ("retransmit", Self::RETRANSMIT),
        ("reset", Self::RESET),
    ];

    /// Both sets.
    #[must_use]
    pub const fn union(self, other: Self) -> Self {
        Self(self.0 | other.0)
    }

    /// Whether every kind of `other` is in this set.
    pub const fn contains(self, other: Self) -> bool {
        self.0 & other.0 == other.0
    }

    /// The bit mask the BPF programs read (`rf_event_mask`: bit `1 << RF_EV_*`).
    pub const fn mask(self) -> u32 {
        self.0
    }

    /// `all`, or kinds separated by commas: `open,established,close,retransmit,reset`.
    pub fn parse(text: &str) -> Result<Self, String> {
        if text.trim() == "all" {
            return Ok(Self::ALL);
        }
        let mut set = Self(0);
        for word in text.split(',').map(str::trim) {
            let (_, kind) = Self::NAMES
                .iter()
                .find(|(name, _)| *name == word)
                .ok_or_else(|| {
                    format!(
                        "unknown event kind {word:?}: expected all, or some of \
                         open,established,close,retransmit,reset"
                    )
                })?;
            set = set.union(*kind);
        }
        Ok(set)
    }
}

impl std::fmt::Display for EventKinds {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if *self == Self::ALL {
            return f.write_str("all");
        }
        let names: Vec<&str> = Self::NAMES
            .iter()
            .filter(|(_, k)| self.contains(*k))
            .map(|(n, _)| *n)
            .collect();
        f.write_str(&names.join(","))
    }
}

impl Default for FlowTracerOptions {
    fn default() -> Self {
        Self {
            ring_buffer_bytes: 1 << 20,
            max_flows: 65_536,
            max_labels: 65_536,
            mount_tracefs: false,
            events: EventKinds::ALL,
        }
    }
}

impl FlowTracerOptions {
    /// Checks the ranges; [`FlowTracer::start`] calls it first.
    pub fn validate(&self) -> Result<(), FlowsError> {
        let rb = self.ring_buffer_bytes;
        if rb < 4096 || !rb.is_power_of_two() {
            return Err(FlowsError::InvalidOption {
                field: "ring_buffer_bytes",
                value: rb.to_string(),
                rule: "a power of two, at least 4096 (one page)",
            });
        }
        if self.max_flows == 0 || self.max_flows > 1 << 24 {
            return Err(FlowsError::InvalidOption {
                field: "max_flows",
                value: self.max_flows.to_string(),
                rule: "between 1 and 16777216",
            });
        }
        if self.max_labels == 0 {
            return Err(FlowsError::InvalidOption {
                field: "max_labels",
                value: "0".into(),
                rule: "at least 1",
            });
        }
        Ok(())
    }
}

/// Checks privileges, kernel BTF, tracefs and the tracepoints without loading anything: the
/// same checks [`FlowTracer::start`] runs first. With `mount_tracefs`, mounts a missing tracefs.
pub fn check_environment(mount_tracefs: bool) -> Result<(), FlowsError> {
    preflight::check(&preflight::SystemPaths::system(), mount_tracefs)
}

/// The loaded and attached flow tracer. Dropping it (or [`stop`](Self::stop)) detaches every
/// program; nothing is pinned, so nothing outlives the process.
///
/// Events are delivered by [`poll`](Self::poll) on the caller's thread; a service runs it in a
/// loop on a dedicated thread. `FlowTracer` is `Send`, not `Sync`.
pub struct FlowTracer {
    // Field order is drop order: the object first, which detaches the programs, so nothing
    // writes while the maps go away.
    _object: Ebpf,
    attached: Vec<&'static str>,
    /// The event ring. `poll` takes `&self`; the lock is never contended (the tracer is not
    /// `Sync`), it only gives the ring's consumer position the `&mut` it needs.
    ring: Mutex<RingBuf<MapData>>,
    flows: BpfHashMap<MapData, u64, [u8; FLOW_SIZE]>,
    counters: PerCpuArray<MapData, u64>,
    max_flows: u32,
    labels: LabelRegistry,
    /// Labels other processes (a proxy) reported, read when the registry has none.
    pinned: Option<PinnedLabels>,
    decode_errors: AtomicU64,
}

impl std::fmt::Debug for FlowTracer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FlowTracer")
            .field("programs", &self.attached)
            .field("max_flows", &self.max_flows)
            .finish_non_exhaustive()
    }
}

/// Loads (without attaching) every program of a BPF object file and unloads them again,
/// reporting a verifier rejection exactly as [`FlowTracer::start`] does: as
/// [`FlowsError::Load`] naming the program, with the verifier's log. Returns the program
/// names. Useful to check an object before shipping it (and how the rejection path is tested).
pub fn check_object(path: &std::path::Path) -> Result<Vec<String>, FlowsError> {
    check_environment(false)?;
    let mut ebpf = load::open_file(path)?;
    load::load_all(&mut ebpf)
}

/// Takes map `name` out of the loaded object.
fn take_map(ebpf: &mut Ebpf, name: &'static str) -> Result<Map, FlowsError> {
    ebpf.take_map(name).ok_or_else(|| FlowsError::Map {
        map: name,
        op: "find",
        source: "the object has no map of this name".into(),
    })
}

fn map_err(map: &'static str, op: &'static str) -> impl Fn(MapError) -> FlowsError {
    move |source| FlowsError::Map {
        map,
        op,
        source: Box::new(source),
    }
}

impl FlowTracer {
    /// Checks the environment, loads the programs and attaches them.
    pub fn start(opts: FlowTracerOptions) -> Result<Self, FlowsError> {
        opts.validate()?;
        check_environment(opts.mount_tracefs)?;

        let mut ebpf = load::open(
            crate::FLOWS_OBJ,
            &[
                ("rf_flows", opts.max_flows),
                ("rf_events", opts.ring_buffer_bytes),
            ],
            &[("rf_event_mask", opts.events.mask())],
        )?;
        let mut attached = Vec::with_capacity(PROGRAMS.len());
        for (name, category, tracepoint) in PROGRAMS {
            load::load_program(&mut ebpf, name)?;
            let program: &mut TracePoint = ebpf
                .program_mut(name)
                .and_then(|p| p.try_into().ok())
                .ok_or_else(|| FlowsError::Attach {
                program: name,
                source: "not a tracepoint program in the object".into(),
            })?;
            // On error, `ebpf` is dropped, which detaches what was attached so far.
            program
                .attach(category, tracepoint)
                .map_err(|source| FlowsError::Attach {
                    program: name,
                    source: Box::new(source),
                })?;
            attached.push(name);
        }

        let flows = BpfHashMap::try_from(take_map(&mut ebpf, "rf_flows")?)
            .map_err(map_err("rf_flows", "open"))?;
        let counters = PerCpuArray::try_from(take_map(&mut ebpf, "rf_counters")?)
            .map_err(map_err("rf_counters", "open"))?;
        let ring = RingBuf::try_from(take_map(&mut ebpf, "rf_events")?)
            .map_err(map_err("rf_events", "open"))?;

        Ok(Self {
            _object: ebpf,
            attached,
            ring: Mutex::new(ring),
            flows,
            counters,
            max_flows: opts.max_flows,
            labels: LabelRegistry::new(opts.max_labels),
            pinned: None,
            decode_errors: AtomicU64::new(0),
        })
    }

    /// Waits up to `timeout` for events, then hands every available one to `on_event` (with
    /// labels attached) and returns how many. `Duration::ZERO` does not block. A signal that
    /// interrupts the wait returns `Ok` early, so a caller can check its shutdown flag.
    pub fn poll(
        &self,
        timeout: Duration,
        mut on_event: impl FnMut(FlowEvent),
    ) -> Result<usize, FlowsError> {
        let mut ring = self.ring.lock().unwrap_or_else(PoisonError::into_inner);
        let timeout = rustix::time::Timespec {
            tv_sec: i64::try_from(timeout.as_secs()).unwrap_or(i64::MAX),
            tv_nsec: i64::from(timeout.subsec_nanos()),
        };
        let mut fds = [rustix::event::PollFd::new(
            &*ring,
            rustix::event::PollFlags::IN,
        )];
        match rustix::event::poll(&mut fds, Some(&timeout)) {
            Ok(_) | Err(rustix::io::Errno::INTR) => {}
            Err(e) => {
                return Err(FlowsError::RingBuffer {
                    op: "poll",
                    source: e.into(),
                });
            }
        }
        let mut n = 0;
        while let Some(item) = ring.next() {
            match raw::decode_event(&item) {
                Some(mut ev) => {
                    drop(item);
                    self.attach_labels(&mut ev);
                    on_event(ev);
                    n += 1;
                }
                None => drop(self.decode_errors.fetch_add(1, Ordering::Relaxed)),
            }
        }
        Ok(n)
    }

    fn attach_labels(&self, ev: &mut FlowEvent) {
        if self.labels.is_empty() && self.pinned.is_none() {
            return;
        }
        let closing = matches!(ev, FlowEvent::Close { .. });
        let flow = ev.flow_mut();
        flow.labels = if closing {
            self.labels.forget(&flow.key)
        } else {
            self.labels.get(&flow.key)
        };
        if closing
            && flow.labels.is_none()
            && let Some(pinned) = &self.pinned
        {
            // One lookup per close (metrics count closes), not per event. Readers never remove
            // shared labels: other tracers may still need them (see `PinnedLabels`).
            flow.labels = pinned.get(&flow.key);
        }
    }

    /// Also read the labels that other processes (a proxy) report in the maps pinned in `dir`
    /// ([`PinnedLabels`]), creating them when none are there yet: closes and snapshots then
    /// carry them.
    pub fn share_labels(&mut self, dir: &std::path::Path) -> Result<(), FlowsError> {
        self.pinned = Some(PinnedLabels::open_or_create(dir)?);
        Ok(())
    }

    /// The registry whose labels are attached to events and snapshots; clone it into the
    /// proxy.
    pub fn labels(&self) -> &LabelRegistry {
        &self.labels
    }

    /// The flows in the kernel table now. Not atomic: flows may open and close during the
    /// walk. Bytes are exact as of the read; packets as of each flow's last socket call.
    pub fn snapshot(&self) -> Result<Vec<FlowSnapshot>, FlowsError> {
        let now = monotonic_ns();
        let mut out = Vec::new();
        for key in self.walk_keys() {
            let value = match self.flows.get(&key, 0) {
                Ok(v) => v,
                Err(MapError::KeyNotFound) => continue, // closed meanwhile
                Err(source) => return Err(map_err("rf_flows", "lookup")(source)),
            };
            let Some(raw) = RawFlow::decode(&value) else {
                self.decode_errors.fetch_add(1, Ordering::Relaxed);
                continue;
            };
            let mut flow = raw.info(raw.state, raw.opened_ns);
            flow.labels = self
                .labels
                .get(&flow.key)
                .or_else(|| self.pinned.as_ref().and_then(|p| p.get(&flow.key)));
            out.push(FlowSnapshot {
                flow,
                age: Duration::from_nanos(now.saturating_sub(raw.opened_ns)),
                established: raw.established_ns != 0,
                stats: raw.stats,
            });
        }
        Ok(out)
    }

    /// Keys of the flow table, each once. Deletions during the walk make the kernel restart
    /// it from the first key, so the walk dedups and is bounded.
    fn walk_keys(&self) -> Vec<u64> {
        let limit = 2 * self.max_flows as usize + 16;
        let mut seen = HashSet::new();
        self.flows
            .keys()
            .take(limit)
            .filter_map(Result::ok)
            .filter(|k| seen.insert(*k))
            .collect()
    }

    /// Global counters summed over CPUs, plus the live flow count and eviction estimate.
    pub fn counters(&self) -> Result<FlowCounters, FlowsError> {
        let mut v = [0u64; counter::COUNT as usize];
        for (idx, slot) in (0..counter::COUNT).zip(v.iter_mut()) {
            let per_cpu = self
                .counters
                .get(&idx, 0)
                .map_err(map_err("rf_counters", "lookup"))?;
            *slot = per_cpu.iter().sum();
        }
        let at = |i: u32| v[i as usize];
        let live = self.walk_keys().len() as u64;
        let created = at(counter::OPENED) + at(counter::ADOPTED);
        Ok(FlowCounters {
            events_emitted: at(counter::EMITTED),
            events_lost: at(counter::LOST),
            flows_opened: at(counter::OPENED),
            flows_adopted: at(counter::ADOPTED),
            flows_closed: at(counter::CLOSED),
            flow_insert_failures: at(counter::INSERT_FAILED),
            resets_without_flow: at(counter::RESET_NO_FLOW),
            live_flows: live,
            flows_evicted_estimate: created.saturating_sub(at(counter::CLOSED) + live),
            decode_errors: self.decode_errors.load(Ordering::Relaxed),
        })
    }

    /// Names of the attached programs (all start with `rf_`).
    pub fn programs(&self) -> impl Iterator<Item = &'static str> + '_ {
        self.attached.iter().copied()
    }

    /// Detaches everything and frees the maps (the same as dropping the tracer).
    pub fn stop(self) {}
}

/// `CLOCK_MONOTONIC` in nanoseconds: the clock of `bpf_ktime_get_ns`.
fn monotonic_ns() -> u64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    u64::try_from(t.tv_sec).unwrap_or(0) * 1_000_000_000 + u64::try_from(t.tv_nsec).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tracer_can_move_to_a_polling_thread() {
        fn send<T: Send>() {}
        send::<FlowTracer>();
        send::<LabelRegistry>();
    }

    #[test]
    fn event_kinds_parse_and_print() {
        assert_eq!(EventKinds::parse("all").unwrap(), EventKinds::ALL);
        let k = EventKinds::parse("close, reset").unwrap();
        assert!(k.contains(EventKinds::CLOSE) && k.contains(EventKinds::RESET));
        assert!(!k.contains(EventKinds::OPEN));
        assert_eq!(k.to_string(), "close,reset");
        assert_eq!(k.mask(), (1 << 3) | (1 << 5));
        assert_eq!(
            EventKinds::parse("open,established,close,retransmit,reset").unwrap(),
            EventKinds::ALL
        );
        let e = EventKinds::parse("close,bogus").unwrap_err();
        assert!(e.contains("bogus"), "{e}");
    }

    #[test]
    fn options_are_validated() {
        FlowTracerOptions::default().validate().unwrap();
        for bad in [0, 1000, 4096 + 4096 * 2, 3 << 20] {
            let o = FlowTracerOptions {
                ring_buffer_bytes: bad,
                ..Default::default()
            };
            let e = o.validate().unwrap_err();
            assert!(e.to_string().contains("ring_buffer_bytes"), "{e}");
        }
        let o = FlowTracerOptions {
            max_flows: 0,
            ..Default::default()
        };
        assert!(o.validate().unwrap_err().to_string().contains("max_flows"));
    }
}

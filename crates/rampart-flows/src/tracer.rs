//! [`FlowTracer`]: loads and attaches the programs, delivers events, reads the tables.

use std::collections::HashSet;
use std::mem::MaybeUninit;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::time::Duration;

use libbpf_rs::skel::{OpenSkel as _, SkelBuilder as _};
use libbpf_rs::{Link, MapCore as _, MapFlags, MapHandle, RingBuffer, RingBufferBuilder};

use crate::model::{FlowCounters, FlowEvent, FlowSnapshot};
use crate::raw::{self, RawFlow, counter};
use crate::skel::FlowsSkelBuilder;
use crate::{FlowsError, LabelRegistry, libbpf_log, preflight};

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
}

impl Default for FlowTracerOptions {
    fn default() -> Self {
        Self {
            ring_buffer_bytes: 1 << 20,
            max_flows: 65_536,
            max_labels: 65_536,
            mount_tracefs: false,
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
    // Field order is drop order: detach first, so nothing writes while the rest goes away.
    links: Vec<(&'static str, Link)>,
    ring: RingBuffer<'static>,
    _events: MapHandle,
    pending: mpsc::Receiver<FlowEvent>,
    flows: MapHandle,
    counters: MapHandle,
    max_flows: u32,
    labels: LabelRegistry,
    decode_errors: Arc<AtomicU64>,
}

impl std::fmt::Debug for FlowTracer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FlowTracer")
            .field(
                "programs",
                &self.links.iter().map(|(n, _)| *n).collect::<Vec<_>>(),
            )
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
    let capture = libbpf_log::Capture::begin();
    let open = libbpf_rs::ObjectBuilder::default()
        .open_file(path)
        .map_err(|source| libbpf_log::open_failed(capture.text(), source))?;
    let object = open
        .load()
        .map_err(|source| libbpf_log::load_failed(&capture.text(), source))?;
    Ok(object
        .progs()
        .map(|p| p.name().to_string_lossy().into_owned())
        .collect())
}

/// A reader of the `rf_events` ring: each event it decodes goes to the returned receiver,
/// each it cannot is counted in `decode_errors`.
fn event_ring(
    events: &MapHandle,
    decode_errors: Arc<AtomicU64>,
) -> Result<(RingBuffer<'static>, mpsc::Receiver<FlowEvent>), FlowsError> {
    let (tx, pending) = mpsc::channel();
    let mut builder = RingBufferBuilder::new();
    builder
        .add(events, move |data: &[u8]| {
            match raw::decode_event(data) {
                // The receiver lives as long as the ring buffer (same struct).
                Some(ev) => drop(tx.send(ev)),
                None => drop(decode_errors.fetch_add(1, Ordering::Relaxed)),
            }
            0
        })
        .map_err(|source| FlowsError::RingBuffer { op: "add", source })?;
    let ring = builder.build().map_err(|source| FlowsError::RingBuffer {
        op: "build",
        source,
    })?;
    Ok((ring, pending))
}

impl FlowTracer {
    /// Checks the environment, loads the programs and attaches them.
    pub fn start(opts: FlowTracerOptions) -> Result<Self, FlowsError> {
        opts.validate()?;
        check_environment(opts.mount_tracefs)?;

        let capture = libbpf_log::Capture::begin();
        let mut storage = MaybeUninit::uninit();
        let mut open = FlowsSkelBuilder::default()
            .open(&mut storage)
            .map_err(|source| libbpf_log::open_failed(capture.text(), source))?;
        open.maps
            .rf_flows
            .set_max_entries(opts.max_flows)
            .map_err(map_err("rf_flows", "set max_entries"))?;
        open.maps
            .rf_events
            .set_max_entries(opts.ring_buffer_bytes)
            .map_err(map_err("rf_events", "set max_entries"))?;
        let skel = open
            .load()
            .map_err(|source| libbpf_log::load_failed(&capture.text(), source))?;
        drop(capture);

        // Destroy first and state changes last: a flow is never created without the program
        // that removes it being attached.
        let progs = &skel.progs;
        let order = [
            ("rf_destroy", &progs.rf_destroy),
            ("rf_send_len", &progs.rf_send_len),
            ("rf_recv_len", &progs.rf_recv_len),
            ("rf_retransmit", &progs.rf_retransmit),
            ("rf_send_reset", &progs.rf_send_reset),
            ("rf_recv_reset", &progs.rf_recv_reset),
            ("rf_state", &progs.rf_state),
        ];
        let mut links = Vec::with_capacity(order.len());
        for (name, prog) in order {
            // On error, the links made so far are dropped, which detaches them.
            let link = prog.attach().map_err(|source| FlowsError::Attach {
                program: name,
                source,
            })?;
            links.push((name, link));
        }

        // Own the maps through duplicated fds so that the skeleton (which borrows `storage`)
        // can go; the links keep the programs, and the programs their maps.
        let handle = |map: &libbpf_rs::Map<'_>, name: &'static str| {
            MapHandle::try_from(map).map_err(map_err(name, "duplicate fd"))
        };
        let flows = handle(&skel.maps.rf_flows, "rf_flows")?;
        let counters = handle(&skel.maps.rf_counters, "rf_counters")?;
        let events = handle(&skel.maps.rf_events, "rf_events")?;
        drop(skel);

        let decode_errors = Arc::new(AtomicU64::new(0));
        let (ring, pending) = event_ring(&events, Arc::clone(&decode_errors))?;

        Ok(Self {
            links,
            ring,
            _events: events,
            pending,
            flows,
            counters,
            max_flows: opts.max_flows,
            labels: LabelRegistry::new(opts.max_labels),
            decode_errors,
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
        if let Err(source) = self.ring.poll(timeout)
            && source.kind() != libbpf_rs::ErrorKind::Interrupted
        {
            return Err(FlowsError::RingBuffer { op: "poll", source });
        }
        let mut n = 0;
        while let Ok(mut ev) = self.pending.try_recv() {
            self.attach_labels(&mut ev);
            on_event(ev);
            n += 1;
        }
        Ok(n)
    }

    fn attach_labels(&self, ev: &mut FlowEvent) {
        if self.labels.is_empty() {
            return;
        }
        let closing = matches!(ev, FlowEvent::Close { .. });
        let flow = ev.flow_mut();
        flow.labels = if closing {
            self.labels.forget(&flow.key)
        } else {
            self.labels.get(&flow.key)
        };
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
            let value = match self.flows.lookup(&key, MapFlags::ANY) {
                Ok(Some(v)) => v,
                Ok(None) => continue, // closed meanwhile
                Err(source) => {
                    return Err(FlowsError::Map {
                        map: "rf_flows",
                        op: "lookup",
                        source,
                    });
                }
            };
            let Some(raw) = RawFlow::decode(&value) else {
                self.decode_errors.fetch_add(1, Ordering::Relaxed);
                continue;
            };
            let mut flow = raw.info(raw.state, raw.opened_ns);
            flow.labels = self.labels.get(&flow.key);
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
    fn walk_keys(&self) -> Vec<Vec<u8>> {
        let limit = 2 * self.max_flows as usize + 16;
        let mut seen = HashSet::new();
        self.flows
            .keys()
            .take(limit)
            .filter(|k| seen.insert(k.clone()))
            .collect()
    }

    /// Global counters summed over CPUs, plus the live flow count and eviction estimate.
    pub fn counters(&self) -> Result<FlowCounters, FlowsError> {
        let mut v = [0u64; counter::COUNT as usize];
        for (idx, slot) in (0..counter::COUNT).zip(v.iter_mut()) {
            let per_cpu = self
                .counters
                .lookup_percpu(&idx.to_ne_bytes(), MapFlags::ANY)
                .map_err(map_err("rf_counters", "lookup"))?
                .unwrap_or_default();
            *slot = per_cpu
                .iter()
                .filter_map(|b| b.get(..8).and_then(|b| <[u8; 8]>::try_from(b).ok()))
                .map(u64::from_ne_bytes)
                .sum();
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
        self.links.iter().map(|(n, _)| *n)
    }

    /// Detaches everything and frees the maps (the same as dropping the tracer).
    pub fn stop(self) {}
}

fn map_err(map: &'static str, op: &'static str) -> impl Fn(libbpf_rs::Error) -> FlowsError {
    move |source| FlowsError::Map { map, op, source }
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

//! TCP flow tracing with eBPF: every TCP connection on the machine (all network namespaces)
//! with its 5-tuple, namespace, owning process, exact payload bytes and segment counts each
//! way, retransmits and resets, from open to close. It is for observability of the node the
//! proxy runs on (and, through [`LabelRegistry`], for tying kernel flows to the proxy's routes,
//! clusters and tenants). It is not a packet capture, not a firewall, and sees no payload.
//!
//! # How it works
//! C programs in `src/bpf/flows.bpf.c`, CO-RE against the kernel's BTF, attach to classic
//! tracepoints (fentry/fexit and kprobes are unavailable on our kernels):
//!
//! | tracepoint | used for |
//! |---|---|
//! | `sock:inet_sock_set_state` | open (SYN_SENT / SYN_RECV), established, CLOSE time |
//! | `sock:sock_send_length`, `sock:sock_recv_length` | payload bytes per direction |
//! | `tcp:tcp_retransmit_skb` | retransmits |
//! | `tcp:tcp_send_reset`, `tcp:tcp_receive_reset` | resets, and who sent them |
//! | `tcp:tcp_destroy_sock` | close event with final counters |
//!
//! Flows live in a bounded `BPF_MAP_TYPE_LRU_HASH` keyed by the socket pointer (not by the
//! first tuple seen: the source port is 0 at CLOSE→SYN_SENT). Events go through a BPF ring
//! buffer; a full ring buffer drops the event and increments a per-CPU counter, so losses are
//! visible in [`FlowTracer::counters`], never silent. Evictions from the LRU table have no
//! kernel callback; they are estimated (opened + adopted − closed − live).
//!
//! **Byte counting.** [`FlowStats`] bytes are payload bytes as the application saw them: what
//! `write`/`send`/`sendmsg` and `read`/`recv`/`recvmsg` returned, summed per socket (`MSG_PEEK`
//! excluded). This is exact and independent of segmentation, offloads and retransmissions; it
//! does not see data moved without those calls (`sendfile` and `splice` go through them on
//! current kernels; kernel TLS counts plaintext). Packet counts are the kernel's own
//! `tcp_sock.segs_out`/`segs_in`. The close event is emitted when the socket is destroyed,
//! not at the CLOSE transition, because an application can still read buffered data after
//! that transition.
//!
//! **Socket tracepoints or TC?** [`TcCounter`] is the packet-level alternative, kept for
//! comparison: TC ingress/egress programs (TCX links) on one interface count TCP payload bytes (IP
//! length − IP and TCP headers), packets and segments per 5-tuple and hook. Measured on Linux
//! 6.18 with 2 vCPUs (`tests/tc.rs`; `bench/flows-tc.sh`, results in `docs/BENCHMARKS.md`):
//! - *Exactness.* Without loss both equal the application's bytes, on `lo` and on a veth pair,
//!   IPv4 and IPv6, and TC's segment counts equal the sockets' `segs_out`/`segs_in` (plus the
//!   SYN-ACK on the accepting side). With loss only the socket tracepoints stay exact: TC counts
//!   retransmitted payload again (64 KiB written, 84 KiB seen at egress in the test). TC is also
//!   only as exact as its parser: IPv6 BIG TCP packets on `lo` carry a hop-by-hop jumbo header
//!   at egress (before the parser knew it, a 250 kB response came out 66 KiB short), and VLANs,
//!   tunnels and other IPv6 extension headers are counted as unparsed, not as bytes.
//! - *Cost.* Keep-alive HTTP on loopback, the programs' own time per request: socket
//!   tracepoints 1.05 µs (5.3 runs × 198 ns: both endpoints' send/recv calls), TC 1.26 µs
//!   (8 runs × 157 ns: 4 packets, each through egress and ingress of `lo`). Throughput relative
//!   to no tracing: 0.90 with the whole flow tracer, 0.92 with TC alone, a difference inside
//!   this machine's run-to-run noise. Neither is clearly cheaper; TC's cost grows with packets
//!   (ACKs, small segments), the socket tracepoints' with send/recv calls.
//! - *Scope.* TC sees one interface (every NIC and veth must be attached to see everything),
//!   knows no socket or process and keys by tuple (a reused tuple adds to the old entry). The
//!   tracepoints see every socket in every namespace.
//!
//! So the socket tracepoints stay the default: exact by construction, node-wide, and no more
//! expensive. [`TcCounter`] is for on-the-wire bytes (retransmissions included) of a chosen
//! interface.
//!
//! # Building without clang or libelf
//! The programs are loaded by [aya](https://docs.rs/aya), which parses the object, relocates it
//! against the kernel's BTF (CO-RE) and talks to the kernel in pure Rust: no libbpf, libelf or
//! zlib, so `rampart` carries flow tracing in its default build on a machine with nothing but
//! the Rust toolchain. (libbpf-rs needed Debian's libelf-dev and zlib1g-dev to build; aya's
//! loader does the same work for these objects, and the tests below pin it down.)
//!
//! The objects are compiled by clang (Debian clang 14) in `build.rs` against a `vmlinux.h`
//! dumped from the running kernel's BTF with bpftool and libbpf's BPF headers (Debian
//! libbpf-dev), then stripped of DWARF. `vmlinux.h` is not committed (about 3 MB,
//! kernel-specific, regenerated into `OUT_DIR`). The compiled objects *are* committed as
//! `src/bpf/flows.bpf.o` and `src/bpf/tc_bytes.bpf.o` (the [`TcCounter`] programs), each with
//! a `.meta` file recording the clang version and hashes of the `vmlinux.h` and headers it
//! was built against:
//! - feature `bpf-build` (default) with clang, llvm-strip, bpftool, the headers and
//!   `/sys/kernel/btf/vmlinux` present: the C is compiled and those objects embedded;
//!   otherwise (or with `--no-default-features`) the committed objects are embedded, with a
//!   cargo warning saying why.
//! - the test `committed_object_matches_source` (in `tests/flows.rs`) checks that each fresh
//!   object is byte-identical to the committed one whenever its inputs match the meta file, so
//!   the committed objects cannot drift from the sources. After changing the C, run it with
//!   `RAMPART_FLOWS_BLESS=1` to update the committed objects and metas. The C asserts the
//!   record layouts that `src/raw.rs` and `src/tc.rs` decode.
//!
//! CO-RE lets the committed object load on other kernels with BTF as long as the tracepoint
//! fields and kernel structure members it reads exist there; it is developed and tested on
//! Linux 6.18 (`sock_send_length`/`sock_recv_length` need 6.3 or later).
//!
//! # Use
//! ```no_run
//! use std::time::Duration;
//! use rampart_flows::{FlowEvent, FlowTracer, FlowTracerOptions};
//!
//! let tracer = FlowTracer::start(FlowTracerOptions::default())?;
//! loop {
//!     tracer.poll(Duration::from_millis(100), |ev| {
//!         if let FlowEvent::Close { flow, stats, duration, .. } = &ev {
//!             println!("{} pid {} {:?} {stats:?}", flow.key, flow.pid, duration);
//!         }
//!     })?;
//! #   break;
//! }
//! println!("{:?}", tracer.counters()?);
//! # Ok::<(), rampart_flows::FlowsError>(())
//! ```
//! Loading needs root (or CAP_BPF + CAP_PERFMON), kernel BTF and tracefs; the checks in
//! [`check_environment`] say which is missing and how to fix it.
// Panics on outside input are forbidden here; unit tests may unwrap (clippy.toml).
#![warn(clippy::unwrap_used)]

mod error;
mod label_map;
mod labels;
mod load;
mod model;
mod preflight;
mod raw;
mod tc;
mod tracer;

/// The compiled `src/bpf/flows.bpf.o` (fresh from clang or the committed copy; see `build.rs`),
/// aligned for the ELF parser.
static FLOWS_OBJ: &[u8] = aya::include_bytes_aligned!(env!("RAMPART_FLOWS_OBJ"));

/// The compiled `src/bpf/tc_bytes.bpf.o` (the [`TcCounter`] programs).
static TC_OBJ: &[u8] = aya::include_bytes_aligned!(env!("RAMPART_FLOWS_TC_OBJ"));

/// The compiled `src/bpf/labels.bpf.o` (the [`PinnedLabels`] maps).
static LABELS_OBJ: &[u8] = aya::include_bytes_aligned!(env!("RAMPART_FLOWS_LABELS_OBJ"));

pub use error::{BoxError, FlowsError};
pub use label_map::{DEFAULT_LABELS_PIN_DIR, PinnedLabels};
pub use labels::{FlowLabels, LabelRegistry};
pub use model::{
    Direction, FlowCounters, FlowEvent, FlowInfo, FlowKey, FlowSnapshot, FlowStats, Protocol,
    ResetBy, TcpState, current_netns,
};
pub use tc::{
    TC_PROGRAMS, TcCounter, TcCounterOptions, TcCounters, TcDirection, TcKey, TcSnapshot, TcStats,
    check_tc_environment,
};
pub use tracer::{EventKinds, FlowTracer, FlowTracerOptions, check_environment, check_object};

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
//! # Building without clang
//! The BPF object is compiled by clang (Debian clang 14) through libbpf-cargo's
//! `SkeletonBuilder` in `build.rs`, against a `vmlinux.h` dumped from the running kernel's BTF
//! with bpftool. `vmlinux.h` is not committed (about 3 MB, kernel-specific, regenerated into
//! `OUT_DIR`). The compiled object *is* committed as `src/bpf/flows.bpf.o`, with
//! `flows.bpf.o.meta` recording the clang version and a hash of the `vmlinux.h` it was built
//! against:
//! - feature `bpf-build` (default) with clang, bpftool and `/sys/kernel/btf/vmlinux` present:
//!   the C is compiled and that object embedded; otherwise (or with
//!   `--no-default-features`) the committed object is embedded, with a cargo warning saying
//!   why. The workspace therefore builds without clang (libbpf itself still needs a C compiler,
//!   `libelf-dev`, `zlib1g-dev`, `pkg-config` and `make`).
//! - the test `committed_object_matches_source` (in `tests/flows.rs`) checks that the fresh
//!   object is byte-identical to the committed one whenever clang and the kernel headers match
//!   the meta file, so the committed object cannot drift from the source. After changing the C,
//!   run it with `RAMPART_FLOWS_BLESS=1` to update the committed object and meta.
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
mod labels;
mod libbpf_log;
mod model;
mod preflight;
mod raw;
mod tracer;

/// The skeleton libbpf-cargo generates in `build.rs`. Generated code uses `unsafe` throughout
/// (FFI into libbpf); the workspace denies `unsafe_code`, so it is allowed for this module
/// only. The rest of the crate uses the skeleton's safe API.
#[allow(
    unsafe_code,
    unreachable_pub,
    clippy::all,
    clippy::pedantic,
    clippy::unwrap_used
)]
mod skel {
    include!(concat!(env!("OUT_DIR"), "/flows.skel.rs"));
}

pub use error::FlowsError;
pub use labels::{FlowLabels, LabelRegistry};
pub use model::{
    Direction, FlowCounters, FlowEvent, FlowInfo, FlowKey, FlowSnapshot, FlowStats, Protocol,
    ResetBy, TcpState, current_netns,
};
pub use tracer::{FlowTracer, FlowTracerOptions, check_environment};

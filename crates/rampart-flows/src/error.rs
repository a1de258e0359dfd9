//! The one error type of this crate: each variant says what an operator can do about it.

use std::io;
use std::path::PathBuf;

/// Why flow tracing could not start or a tracer operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FlowsError {
    /// The process may not load BPF programs or attach them to tracepoints.
    #[error(
        "eBPF flow tracing needs root or the capabilities CAP_BPF and CAP_PERFMON \
         (effective uid {euid}, missing: {missing}); run as root, or grant them with \
         `setcap cap_bpf,cap_perfmon+ep <binary>`"
    )]
    NotPermitted {
        /// Effective user id read from `/proc/self/status`.
        euid: u32,
        /// The missing capabilities, e.g. `CAP_BPF, CAP_PERFMON`.
        missing: String,
    },

    /// `/proc/self/status` could not be read or parsed.
    #[error("reading {path}: {source}; is /proc mounted?")]
    ProcStatus {
        /// The file that was read.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },

    /// The process may not attach TC programs (see [`crate::TcCounter`]).
    #[error(
        "TC byte counting needs root or the capabilities CAP_BPF and CAP_NET_ADMIN \
         (effective uid {euid}, missing: {missing}); run as root, or grant them with \
         `setcap cap_bpf,cap_net_admin+ep <binary>`"
    )]
    TcNotPermitted {
        /// Effective user id read from `/proc/self/status`.
        euid: u32,
        /// The missing capabilities, e.g. `CAP_NET_ADMIN`.
        missing: String,
    },

    /// The kernel exposes no BTF, so CO-RE programs cannot be relocated.
    #[error(
        "{path} is missing: the kernel has no BTF type information, which these CO-RE \
         programs need; use a kernel built with CONFIG_DEBUG_INFO_BTF=y"
    )]
    NoBtf {
        /// Where the kernel BTF was looked for.
        path: PathBuf,
    },

    /// tracefs is not mounted, so tracepoints cannot be attached.
    #[error(
        "{events} is missing: tracefs is not mounted; mount it with \
         `mount -t tracefs tracefs /sys/kernel/tracing` (or set \
         FlowTracerOptions::mount_tracefs to let the tracer do it)"
    )]
    TracefsNotMounted {
        /// The tracepoint directory that was looked for.
        events: PathBuf,
    },

    /// Mounting tracefs (`FlowTracerOptions::mount_tracefs`) failed.
    #[error(
        "mounting tracefs on {target} failed: {source}; mount it by hand with \
         `mount -t tracefs tracefs /sys/kernel/tracing` (needs CAP_SYS_ADMIN)"
    )]
    TracefsMount {
        /// The mount point.
        target: PathBuf,
        /// The underlying error.
        source: io::Error,
    },

    /// A tracepoint this crate attaches to does not exist on this kernel.
    #[error(
        "tracepoint {name} does not exist ({path} is missing); this kernel is too old or \
         built without it (sock:sock_send_length / sock_recv_length need Linux 6.3 or later)"
    )]
    MissingTracepoint {
        /// `category:name`, e.g. `sock:sock_send_length`.
        name: &'static str,
        /// The directory that was looked for.
        path: PathBuf,
    },

    /// An option is out of range.
    #[error("invalid option {field} = {value}: {rule}")]
    InvalidOption {
        /// The option's name in [`crate::FlowTracerOptions`].
        field: &'static str,
        /// The rejected value.
        value: String,
        /// What a valid value looks like.
        rule: &'static str,
    },

    /// libbpf could not open the embedded BPF object.
    #[error("opening the embedded BPF object failed: {source}\n{log}")]
    Open {
        /// The libbpf error.
        source: libbpf_rs::Error,
        /// What libbpf printed meanwhile.
        log: String,
    },

    /// The kernel (usually the verifier) rejected a program, or a CO-RE relocation failed.
    #[error(
        "loading the BPF programs failed{}: {source}; the kernel rejected them (verifier, \
         or a kernel type that differs from what the CO-RE relocations expect). libbpf and \
         verifier log:\n{log}",
        program.as_deref().map(|p| format!(" (program {p})")).unwrap_or_default()
    )]
    Load {
        /// The program libbpf named in its log, when it named one.
        program: Option<String>,
        /// The libbpf error.
        source: libbpf_rs::Error,
        /// The verifier log (or, failing that, everything libbpf printed).
        log: String,
    },

    /// Attaching a program to its tracepoint failed.
    #[error("attaching BPF program {program} failed: {source}")]
    Attach {
        /// Our program name (`rf_...`).
        program: &'static str,
        /// The libbpf error.
        source: libbpf_rs::Error,
    },

    /// A map operation (setting sizes, reading flows or counters) failed.
    #[error("BPF map {map}: {op} failed: {source}")]
    Map {
        /// The map name (`rf_...`).
        map: &'static str,
        /// What was being done.
        op: &'static str,
        /// The libbpf error.
        source: libbpf_rs::Error,
    },

    /// The network interface to attach to does not exist in this network namespace.
    #[error(
        "network interface {name:?}: {source}; `ip link` lists the interfaces of this network \
         namespace (the calling thread's)"
    )]
    NoSuchInterface {
        /// The name that was looked up.
        name: String,
        /// The underlying error.
        source: io::Error,
    },

    /// Creating the clsact qdisc, or attaching or detaching a TC program, failed.
    #[error("TC {hook} on {interface}: {op} failed: {source}")]
    Tc {
        /// The interface name.
        interface: String,
        /// `ingress`, `egress` or `clsact qdisc`.
        hook: &'static str,
        /// What was being done (`attach`, `create`, `detach`, `destroy`).
        op: &'static str,
        /// The libbpf error.
        source: libbpf_rs::Error,
    },

    /// Setting up or polling the ring buffer failed.
    #[error("ring buffer {op} failed: {source}")]
    RingBuffer {
        /// What was being done.
        op: &'static str,
        /// The libbpf error.
        source: libbpf_rs::Error,
    },
}

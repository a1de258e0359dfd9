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

    /// The BPF object could not be prepared: parsing it, relocating it against the kernel's
    /// BTF (CO-RE) or creating its maps failed.
    #[error(
        "preparing the BPF object failed: {detail}; a kernel type that differs from what the \
         CO-RE relocations expect, or a map the kernel refused"
    )]
    Open {
        /// aya's error with its causes.
        detail: String,
        /// aya's error.
        source: BoxError,
    },

    /// The kernel (usually the verifier) rejected a program.
    #[error(
        "loading the BPF programs failed{}: {source}; the kernel rejected them (verifier). \
         Verifier log:\n{log}",
        program.as_deref().map(|p| format!(" (program {p})")).unwrap_or_default()
    )]
    Load {
        /// The program that was refused, when known.
        program: Option<String>,
        /// aya's error.
        source: BoxError,
        /// The verifier log (or what else is known).
        log: String,
    },

    /// Attaching a program to its tracepoint failed.
    #[error("attaching BPF program {program} failed: {}", crate::load::chain(source.as_ref()))]
    Attach {
        /// Our program name (`rf_...`).
        program: &'static str,
        /// aya's error.
        source: BoxError,
    },

    /// A map operation (reading flows or counters) failed.
    #[error("BPF map {map}: {op} failed: {}", crate::load::chain(source.as_ref()))]
    Map {
        /// The map name (`rf_...`).
        map: &'static str,
        /// What was being done.
        op: &'static str,
        /// aya's error.
        source: BoxError,
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

    /// Attaching a TC program (a TCX link) failed.
    #[error("TC {hook} on {interface}: {op} failed: {}", crate::load::chain(source.as_ref()))]
    Tc {
        /// The interface name.
        interface: String,
        /// `ingress` or `egress`.
        hook: &'static str,
        /// What was being done (`attach`).
        op: &'static str,
        /// aya's error.
        source: BoxError,
    },

    /// The bpffs directory for pinned maps could not be made.
    #[error(
        "{path}: {source}; pinned maps need bpffs mounted above it (`mount -t bpf bpf \
         /sys/fs/bpf`) and root"
    )]
    Pin {
        /// The directory.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },

    /// Waiting on the ring buffer failed.
    #[error("ring buffer {op} failed: {source}")]
    RingBuffer {
        /// What was being done.
        op: &'static str,
        /// The underlying error.
        source: io::Error,
    },
}

/// The error types of aya, boxed: they are many and change between releases.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

//! The public data model: flow keys, events, per-flow statistics, snapshots and counters.

use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

use crate::FlowLabels;

/// The transport protocol of a flow. Only TCP is traced today.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Protocol {
    /// TCP (IP protocol 6).
    Tcp,
}

/// One socket's view of a connection: `src` is the local end, `dst` the remote end, in the
/// network namespace `netns` (the inode number of `/proc/<pid>/ns/net`, see
/// [`current_netns`](crate::current_netns)).
///
/// A connection between two sockets on this machine is two flows with mirrored keys. IPv4
/// traffic on a dual-stack (`AF_INET6`) socket appears as IPv4-mapped IPv6 addresses, exactly
/// as `getsockname`/`getpeername` report them, so a proxy can build the same key from its
/// `local_addr()`/`peer_addr()`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FlowKey {
    /// Always [`Protocol::Tcp`] for now.
    pub protocol: Protocol,
    /// Local address and port.
    pub src: SocketAddr,
    /// Remote address and port.
    pub dst: SocketAddr,
    /// Network namespace inode.
    pub netns: u64,
}

impl FlowKey {
    /// A TCP flow key.
    pub fn tcp(src: SocketAddr, dst: SocketAddr, netns: u64) -> Self {
        Self {
            protocol: Protocol::Tcp,
            src,
            dst,
            netns,
        }
    }

    /// False while the kernel has not yet bound every part of the tuple: an outbound
    /// connection's [`FlowEvent::Open`] has source port 0 (the port is picked just after).
    pub fn is_complete(&self) -> bool {
        self.src.port() != 0 && self.dst.port() != 0 && !self.dst.ip().is_unspecified()
    }
}

impl fmt::Display for FlowKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "tcp {} -> {} netns {}", self.src, self.dst, self.netns)
    }
}

/// Kernel TCP states (`include/net/tcp_states.h`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[allow(missing_docs)] // the names are the kernel's
pub enum TcpState {
    Established,
    SynSent,
    SynRecv,
    FinWait1,
    FinWait2,
    TimeWait,
    Close,
    CloseWait,
    LastAck,
    Listen,
    Closing,
    NewSynRecv,
    /// A state number this crate does not know.
    Other(u8),
}

impl TcpState {
    pub(crate) fn from_kernel(n: u8) -> Self {
        match n {
            1 => Self::Established,
            2 => Self::SynSent,
            3 => Self::SynRecv,
            4 => Self::FinWait1,
            5 => Self::FinWait2,
            6 => Self::TimeWait,
            7 => Self::Close,
            8 => Self::CloseWait,
            9 => Self::LastAck,
            10 => Self::Listen,
            11 => Self::Closing,
            12 => Self::NewSynRecv,
            n => Self::Other(n),
        }
    }
}

/// Who opened the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    /// This socket connected (CLOSE → SYN_SENT).
    Outbound,
    /// This socket was accepted from a listener (→ SYN_RECV).
    Inbound,
    /// First seen mid-life: opened before the tracer started (or dropped from a full flow
    /// table and seen again); byte counts start when it was first seen.
    Unknown,
}

/// Which side sent a TCP reset.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ResetBy {
    /// This host sent the RST (abortive close, `SO_LINGER` 0, RST to a closed port, ...).
    Local,
    /// The peer sent the RST and this socket received it.
    Remote,
}

/// Per-flow counters.
///
/// Bytes are payload bytes as the application moved them: the sum of what `write`/`send`/
/// `sendmsg` returned (sent) and what `read`/`recv`/`recvmsg` returned (received; `MSG_PEEK`
/// excluded), from the tracepoints `sock:sock_send_length` / `sock:sock_recv_length`. They
/// exclude TCP/IP headers and retransmitted copies, and are exact. Packets are the kernel's
/// own `tcp_sock.segs_out` / `segs_in` (segments on the wire, including SYN, FIN, pure ACKs and
/// retransmissions, counted per MSS-sized segment under GSO/GRO), as of the last socket
/// call, retransmit or close. `retransmits` counts `tcp:tcp_retransmit_skb` hits.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct FlowStats {
    /// Payload bytes the application wrote.
    pub bytes_sent: u64,
    /// Payload bytes the application read.
    pub bytes_received: u64,
    /// TCP segments sent.
    pub packets_sent: u64,
    /// TCP segments received.
    pub packets_received: u64,
    /// Retransmitted skbs.
    pub retransmits: u64,
}

/// What every event and snapshot says about its flow.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlowInfo {
    /// Unique per tracer for the tracer's lifetime, from 1; 0 only in a [`FlowEvent::Reset`]
    /// that belongs to no tracked flow (e.g. a RST answering a SYN to a closed port).
    pub flow_id: u64,
    /// The 5-tuple and namespace. See [`FlowKey::is_complete`] for an outbound `Open`.
    pub key: FlowKey,
    /// Who opened the connection.
    pub direction: Direction,
    /// The owning process (thread group id): the task that called `connect`, or for an
    /// accepted socket the first task that read or wrote it. 0 while unknown.
    pub pid: u32,
    /// The owning task's `comm` (empty while unknown).
    pub comm: String,
    /// The TCP state when the event was recorded.
    pub state: TcpState,
    /// When the event was recorded (for a snapshot: when the flow opened), as
    /// `CLOCK_MONOTONIC` time since boot.
    pub timestamp: Duration,
    /// Labels reported through the [`LabelRegistry`](crate::LabelRegistry) for this key.
    pub labels: Option<FlowLabels>,
}

/// An event from the ring buffer.
///
/// Per flow, in order: `Open`, `Established` (unless the handshake failed), any `Retransmit`
/// and `Reset`, and `Close` last (emitted when the socket is destroyed). An inbound flow's
/// `Open` and `Established` are emitted together when its handshake completes, because the
/// kernel sets the peer address only then.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum FlowEvent {
    /// A flow started (outbound: at SYN_SENT, with source port 0; inbound: when the handshake
    /// completed, just before `Established`; adopted: when first seen).
    Open {
        /// The flow.
        flow: FlowInfo,
    },
    /// The handshake completed; the key is complete from here on.
    Established {
        /// The flow.
        flow: FlowInfo,
        /// Time from `Open` to `Established`.
        handshake: Duration,
    },
    /// The socket is gone. Carries the final counters.
    Close {
        /// The flow.
        flow: FlowInfo,
        /// From open to the transition to CLOSE (or to destruction if that was never seen).
        duration: Duration,
        /// Final counters.
        stats: FlowStats,
        /// The handshake completed at some point.
        established: bool,
        /// This host sent a RST on this flow.
        reset_sent: bool,
        /// The peer reset this flow.
        reset_received: bool,
    },
    /// A segment was retransmitted.
    Retransmit {
        /// The flow.
        flow: FlowInfo,
        /// Counters so far (`stats.retransmits` includes this one).
        stats: FlowStats,
    },
    /// A RST was sent or received.
    Reset {
        /// The flow (`flow_id` 0 if it was not tracked).
        flow: FlowInfo,
        /// Who sent it.
        by: ResetBy,
    },
}

impl FlowEvent {
    /// The flow this event is about.
    pub fn flow(&self) -> &FlowInfo {
        match self {
            Self::Open { flow }
            | Self::Established { flow, .. }
            | Self::Close { flow, .. }
            | Self::Retransmit { flow, .. }
            | Self::Reset { flow, .. } => flow,
        }
    }

    pub(crate) fn flow_mut(&mut self) -> &mut FlowInfo {
        match self {
            Self::Open { flow }
            | Self::Established { flow, .. }
            | Self::Close { flow, .. }
            | Self::Retransmit { flow, .. }
            | Self::Reset { flow, .. } => flow,
        }
    }

    /// Shorthand for `self.flow().key`.
    pub fn key(&self) -> &FlowKey {
        &self.flow().key
    }
}

/// A live flow, read from the kernel's flow table by [`FlowTracer::snapshot`](crate::FlowTracer::snapshot).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlowSnapshot {
    /// The flow (`timestamp` is when it opened, `state` its current state).
    pub flow: FlowInfo,
    /// Time since it opened.
    pub age: Duration,
    /// The handshake completed.
    pub established: bool,
    /// Counters so far: bytes exact, packets as of the last socket call.
    pub stats: FlowStats,
}

/// Global counters, summed over CPUs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FlowCounters {
    /// Events written to the ring buffer.
    pub events_emitted: u64,
    /// Events dropped because the ring buffer was full (the consumer fell behind).
    pub events_lost: u64,
    /// Flows created at SYN_SENT / SYN_RECV.
    pub flows_opened: u64,
    /// Flows first seen mid-life.
    pub flows_adopted: u64,
    /// Flows closed (socket destroyed) and removed from the table.
    pub flows_closed: u64,
    /// Flow table inserts that failed (expected 0: the table is an LRU hash).
    pub flow_insert_failures: u64,
    /// Resets that belonged to no tracked flow.
    pub resets_without_flow: u64,
    /// Entries in the flow table when the counters were read.
    pub live_flows: u64,
    /// Estimate of flows the LRU table evicted to make room: opened + adopted − closed − live.
    /// The kernel gives no eviction callback; an evicted flow never gets its `Close` event,
    /// and is adopted again (as [`Direction::Unknown`]) if it shows activity later.
    pub flows_evicted_estimate: u64,
    /// Ring-buffer records user space could not decode (expected 0).
    pub decode_errors: u64,
}

/// The network namespace inode of the calling thread, as used in [`FlowKey::netns`] (the number
/// in the `net:[4026531840]` link of `/proc/thread-self/ns/net`).
pub fn current_netns() -> std::io::Result<u64> {
    let link = std::fs::read_link("/proc/thread-self/ns/net")?;
    let text = link.to_string_lossy();
    text.strip_prefix("net:[")
        .and_then(|s| s.strip_suffix(']'))
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("unexpected namespace link {text:?}"),
            )
        })
}

//! Decoding the kernel's records (`struct rf_flow`, `struct rf_event` in `bpf/flows.bpf.c`).
//!
//! Decoding is by explicit offsets on byte slices (no `unsafe` casts). The C side asserts the
//! same offsets (`RF_AT` in `bpf/flows.bpf.c`), so a change to the layout there that is not
//! mirrored here fails the object's compile, and `committed_object_matches_source` keeps the
//! committed object in step with the C.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use crate::model::{Direction, FlowEvent, FlowInfo, FlowKey, FlowStats, ResetBy, TcpState};

// struct rf_tuple
const T_SADDR: usize = 0;
const T_DADDR: usize = 16;
const T_SPORT: usize = 32;
const T_DPORT: usize = 34;
const T_FAMILY: usize = 36;
const T_NETNS: usize = 40;
const TUPLE_SIZE: usize = 44;
const _: () = assert!(F_PID == TUPLE_SIZE, "struct rf_flow starts with its tuple");

// struct rf_flow
const F_PID: usize = 44;
const F_FLOW_ID: usize = 48;
const F_OPENED: usize = 56;
const F_ESTABLISHED: usize = 64;
const F_CLOSED: usize = 72;
const F_BYTES_SENT: usize = 80;
const F_BYTES_RECEIVED: usize = 88;
const F_SEGS_OUT: usize = 96;
const F_SEGS_IN: usize = 100;
const F_RETRANSMITS: usize = 104;
const F_STATE: usize = 108;
const F_FLAGS: usize = 109;
const F_COMM: usize = 112;
pub(crate) const FLOW_SIZE: usize = 128;

// struct rf_event
const E_KIND: usize = 0;
const E_RESET_BY: usize = 1;
const E_STATE: usize = 2;
const E_TS: usize = 8;
const E_FLOW: usize = 16;
const EVENT_SIZE: usize = 144;

// Flow flags (RF_F_*).
const FL_ACTIVE: u8 = 0x01;
const FL_PASSIVE: u8 = 0x02;
const FL_RST_SENT: u8 = 0x08;
const FL_RST_RECV: u8 = 0x10;

// Event kinds (RF_EV_*).
const EV_OPEN: u8 = 1;
const EV_ESTABLISHED: u8 = 2;
const EV_CLOSE: u8 = 3;
const EV_RETRANSMIT: u8 = 4;
const EV_RESET: u8 = 5;

const RST_LOCAL: u8 = 1;

/// Indices of the per-CPU counters (enum rf_counter).
pub(crate) mod counter {
    pub(crate) const EMITTED: u32 = 0;
    pub(crate) const LOST: u32 = 1;
    pub(crate) const OPENED: u32 = 2;
    pub(crate) const ADOPTED: u32 = 3;
    pub(crate) const CLOSED: u32 = 4;
    pub(crate) const INSERT_FAILED: u32 = 5;
    pub(crate) const RESET_NO_FLOW: u32 = 6;
    pub(crate) const COUNT: u32 = 7;
}

const AF_INET6: u16 = 10;

fn u8_at(b: &[u8], off: usize) -> u8 {
    b[off]
}

fn u16_at(b: &[u8], off: usize) -> u16 {
    u16::from_ne_bytes([b[off], b[off + 1]])
}

fn u32_at(b: &[u8], off: usize) -> u32 {
    let mut a = [0; 4];
    a.copy_from_slice(&b[off..off + 4]);
    u32::from_ne_bytes(a)
}

fn u64_at(b: &[u8], off: usize) -> u64 {
    let mut a = [0; 8];
    a.copy_from_slice(&b[off..off + 8]);
    u64::from_ne_bytes(a)
}

fn addr(b: &[u8], family: u16, port: u16) -> SocketAddr {
    let ip = if family == AF_INET6 {
        let mut a = [0; 16];
        a.copy_from_slice(&b[..16]);
        IpAddr::V6(Ipv6Addr::from(a))
    } else {
        IpAddr::V4(Ipv4Addr::new(b[0], b[1], b[2], b[3]))
    };
    SocketAddr::new(ip, port)
}

/// A decoded `struct rf_flow`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RawFlow {
    pub(crate) key: FlowKey,
    pub(crate) pid: u32,
    pub(crate) flow_id: u64,
    pub(crate) opened_ns: u64,
    pub(crate) established_ns: u64,
    pub(crate) closed_ns: u64,
    pub(crate) stats: FlowStats,
    pub(crate) state: u8,
    pub(crate) flags: u8,
    pub(crate) comm: String,
}

impl RawFlow {
    /// Decodes a flow table value; `None` if `b` is not `FLOW_SIZE` long.
    pub(crate) fn decode(b: &[u8]) -> Option<Self> {
        if b.len() != FLOW_SIZE {
            return None;
        }
        let family = u16_at(b, T_FAMILY);
        let key = FlowKey::tcp(
            addr(&b[T_SADDR..T_SADDR + 16], family, u16_at(b, T_SPORT)),
            addr(&b[T_DADDR..T_DADDR + 16], family, u16_at(b, T_DPORT)),
            u64::from(u32_at(b, T_NETNS)),
        );
        let comm = &b[F_COMM..F_COMM + 16];
        let end = comm.iter().position(|&c| c == 0).unwrap_or(comm.len());
        Some(Self {
            key,
            pid: u32_at(b, F_PID),
            flow_id: u64_at(b, F_FLOW_ID),
            opened_ns: u64_at(b, F_OPENED),
            established_ns: u64_at(b, F_ESTABLISHED),
            closed_ns: u64_at(b, F_CLOSED),
            stats: FlowStats {
                bytes_sent: u64_at(b, F_BYTES_SENT),
                bytes_received: u64_at(b, F_BYTES_RECEIVED),
                packets_sent: u64::from(u32_at(b, F_SEGS_OUT)),
                packets_received: u64::from(u32_at(b, F_SEGS_IN)),
                retransmits: u64::from(u32_at(b, F_RETRANSMITS)),
            },
            state: u8_at(b, F_STATE),
            flags: u8_at(b, F_FLAGS),
            comm: String::from_utf8_lossy(&comm[..end]).into_owned(),
        })
    }

    pub(crate) fn direction(&self) -> Direction {
        if self.flags & FL_ACTIVE != 0 {
            Direction::Outbound
        } else if self.flags & FL_PASSIVE != 0 {
            Direction::Inbound
        } else {
            Direction::Unknown
        }
    }

    pub(crate) fn info(&self, state: u8, timestamp_ns: u64) -> FlowInfo {
        FlowInfo {
            flow_id: self.flow_id,
            key: self.key,
            direction: self.direction(),
            pid: self.pid,
            comm: self.comm.clone(),
            state: TcpState::from_kernel(state),
            timestamp: Duration::from_nanos(timestamp_ns),
            labels: None,
        }
    }
}

/// Decodes one ring-buffer record; `None` if it is malformed.
pub(crate) fn decode_event(b: &[u8]) -> Option<FlowEvent> {
    if b.len() < EVENT_SIZE {
        return None;
    }
    let flow = RawFlow::decode(&b[E_FLOW..E_FLOW + FLOW_SIZE])?;
    let ts = u64_at(b, E_TS);
    let info = flow.info(u8_at(b, E_STATE), ts);
    let ev = match u8_at(b, E_KIND) {
        EV_OPEN => FlowEvent::Open { flow: info },
        EV_ESTABLISHED => FlowEvent::Established {
            flow: info,
            handshake: Duration::from_nanos(flow.established_ns.saturating_sub(flow.opened_ns)),
        },
        EV_CLOSE => {
            let end = if flow.closed_ns != 0 {
                flow.closed_ns
            } else {
                ts
            };
            FlowEvent::Close {
                flow: info,
                duration: Duration::from_nanos(end.saturating_sub(flow.opened_ns)),
                stats: flow.stats,
                established: flow.established_ns != 0,
                reset_sent: flow.flags & FL_RST_SENT != 0,
                reset_received: flow.flags & FL_RST_RECV != 0,
            }
        }
        EV_RETRANSMIT => FlowEvent::Retransmit {
            flow: info,
            stats: flow.stats,
        },
        EV_RESET => FlowEvent::Reset {
            flow: info,
            by: if u8_at(b, E_RESET_BY) == RST_LOCAL {
                ResetBy::Local
            } else {
                ResetBy::Remote
            },
        },
        _ => return None,
    };
    Some(ev)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flow_bytes() -> Vec<u8> {
        let mut b = vec![0u8; FLOW_SIZE];
        b[T_SADDR..T_SADDR + 4].copy_from_slice(&[127, 0, 0, 1]);
        b[T_DADDR..T_DADDR + 4].copy_from_slice(&[10, 1, 2, 3]);
        b[T_SPORT..T_SPORT + 2].copy_from_slice(&40000u16.to_ne_bytes());
        b[T_DPORT..T_DPORT + 2].copy_from_slice(&443u16.to_ne_bytes());
        b[T_FAMILY..T_FAMILY + 2].copy_from_slice(&2u16.to_ne_bytes());
        b[T_NETNS..T_NETNS + 4].copy_from_slice(&4_026_531_840u32.to_ne_bytes());
        b[F_PID..F_PID + 4].copy_from_slice(&1234u32.to_ne_bytes());
        b[F_FLOW_ID..F_FLOW_ID + 8].copy_from_slice(&7u64.to_ne_bytes());
        b[F_OPENED..F_OPENED + 8].copy_from_slice(&1_000u64.to_ne_bytes());
        b[F_ESTABLISHED..F_ESTABLISHED + 8].copy_from_slice(&1_500u64.to_ne_bytes());
        b[F_CLOSED..F_CLOSED + 8].copy_from_slice(&9_000u64.to_ne_bytes());
        b[F_BYTES_SENT..F_BYTES_SENT + 8].copy_from_slice(&1001u64.to_ne_bytes());
        b[F_BYTES_RECEIVED..F_BYTES_RECEIVED + 8].copy_from_slice(&2001u64.to_ne_bytes());
        b[F_SEGS_OUT..F_SEGS_OUT + 4].copy_from_slice(&5u32.to_ne_bytes());
        b[F_SEGS_IN..F_SEGS_IN + 4].copy_from_slice(&6u32.to_ne_bytes());
        b[F_RETRANSMITS..F_RETRANSMITS + 4].copy_from_slice(&2u32.to_ne_bytes());
        b[F_STATE] = 7;
        b[F_FLAGS] = FL_ACTIVE | FL_RST_RECV;
        b[F_COMM..F_COMM + 4].copy_from_slice(b"curl");
        b
    }

    #[test]
    fn decodes_a_close_event() {
        let mut b = vec![0u8; EVENT_SIZE];
        b[E_KIND] = EV_CLOSE;
        b[E_STATE] = 7;
        b[E_TS..E_TS + 8].copy_from_slice(&10_000u64.to_ne_bytes());
        b[E_FLOW..].copy_from_slice(&flow_bytes());
        let ev = decode_event(&b).unwrap();
        let FlowEvent::Close {
            flow,
            duration,
            stats,
            established,
            reset_sent,
            reset_received,
        } = ev
        else {
            panic!("not a close: {ev:?}");
        };
        assert_eq!(
            flow.key.to_string(),
            "tcp 127.0.0.1:40000 -> 10.1.2.3:443 netns 4026531840"
        );
        assert_eq!(flow.flow_id, 7);
        assert_eq!(flow.pid, 1234);
        assert_eq!(flow.comm, "curl");
        assert_eq!(flow.direction, Direction::Outbound);
        assert_eq!(flow.state, TcpState::Close);
        assert_eq!(duration, Duration::from_nanos(8_000));
        assert_eq!(stats.bytes_sent, 1001);
        assert_eq!(stats.bytes_received, 2001);
        assert_eq!(
            (
                stats.packets_sent,
                stats.packets_received,
                stats.retransmits
            ),
            (5, 6, 2)
        );
        assert!(established && !reset_sent && reset_received);
    }

    #[test]
    fn decodes_ipv6() {
        let mut b = flow_bytes();
        b[T_FAMILY..T_FAMILY + 2].copy_from_slice(&10u16.to_ne_bytes());
        b[T_SADDR..T_SADDR + 16].copy_from_slice(&Ipv6Addr::LOCALHOST.octets());
        let f = RawFlow::decode(&b).unwrap();
        assert_eq!(f.key.src, "[::1]:40000".parse().unwrap());
    }

    #[test]
    fn malformed_records_are_rejected_not_panicking() {
        assert!(decode_event(&[]).is_none());
        assert!(decode_event(&[1u8; EVENT_SIZE - 1]).is_none());
        let mut b = vec![0u8; EVENT_SIZE];
        b[E_KIND] = 99;
        assert!(decode_event(&b).is_none());
        assert!(RawFlow::decode(&[0u8; FLOW_SIZE + 1]).is_none());
    }
}

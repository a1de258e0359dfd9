// SPDX-License-Identifier: Apache-2.0 OR GPL-2.0-only
//
// Rampart TCP flow tracing. Loaded by crates/rampart-flows (aya); see src/lib.rs there
// for the design and src/raw.rs for the Rust side of the layouts below.
//
// Hooks (classic tracepoints only: fentry/fexit and kprobes do not work on our kernels):
//   sock:inet_sock_set_state  TCP lifecycle: open (SYN_SENT / SYN_RECV), established, CLOSE
//   sock:sock_send_length     payload bytes moved by send/write/sendmsg (what the app wrote)
//   sock:sock_recv_length     payload bytes moved by recv/read/recvmsg (MSG_PEEK not counted)
//   tcp:tcp_retransmit_skb    retransmits
//   tcp:tcp_send_reset        we sent a RST (with or without a socket)
//   tcp:tcp_receive_reset     the peer reset the connection
//   tcp:tcp_destroy_sock      the socket is gone: emit CLOSE with the final counters
//
// Flows are keyed by the kernel socket pointer, never by the first tuple seen: the source port
// is still 0 on CLOSE->SYN_SENT, and the peer address is not yet set on the child's SYN_RECV.
// The close event is emitted when the socket is destroyed rather than on the CLOSE transition,
// because an application may still read buffered data after the transition (a FIN received in
// FIN_WAIT2 moves the socket to CLOSE at once); the CLOSE transition time is kept for the
// duration.
//
// Every program name starts with rf_ so that `bpftool prog list` shows which are ours.

#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_endian.h>

#define AF_INET 2
#define AF_INET6 10
#define IPPROTO_TCP 6
#define MSG_PEEK 2

/* Kernel TCP states (include/net/tcp_states.h): stable UAPI-visible numbers. */
#define RF_TCP_ESTABLISHED 1
#define RF_TCP_SYN_SENT 2
#define RF_TCP_SYN_RECV 3
#define RF_TCP_TIME_WAIT 6
#define RF_TCP_CLOSE 7
#define RF_TCP_LISTEN 10
#define RF_TCP_NEW_SYN_RECV 12

/* Flow flags (struct rf_flow.flags). Mirrored in src/raw.rs. */
#define RF_F_ACTIVE 0x01   /* we connected (CLOSE -> SYN_SENT) */
#define RF_F_PASSIVE 0x02  /* accepted (-> SYN_RECV) */
#define RF_F_ADOPTED 0x04  /* first seen mid-life: opened before the tracer started, or evicted */
#define RF_F_RST_SENT 0x08
#define RF_F_RST_RECV 0x10

/* Event kinds (struct rf_event.kind). Mirrored in src/raw.rs. */
#define RF_EV_OPEN 1
#define RF_EV_ESTABLISHED 2
#define RF_EV_CLOSE 3
#define RF_EV_RETRANSMIT 4
#define RF_EV_RESET 5

/* Who reset (struct rf_event.reset_by). */
#define RF_RST_LOCAL 1
#define RF_RST_REMOTE 2

/* Per-CPU global counters (rf_counters index). Mirrored in src/raw.rs. */
enum rf_counter {
	RF_C_EMITTED = 0,        /* events written to the ring buffer */
	RF_C_LOST = 1,           /* events dropped: ring buffer full (reserve failed) */
	RF_C_OPENED = 2,         /* flows created at SYN_SENT / SYN_RECV */
	RF_C_ADOPTED = 3,        /* flows created mid-life (pre-existing or evicted earlier) */
	RF_C_CLOSED = 4,         /* flows removed from the table when their socket was destroyed */
	RF_C_INSERT_FAILED = 5,  /* flow table update failed (should stay 0 with an LRU table) */
	RF_C_RESET_NO_FLOW = 6,  /* resets for which no flow was tracked (e.g. RST to a closed port) */
	RF_C_NR = 7,
};

struct rf_tuple {
	__u8 saddr[16];  /* local address (IPv4 in the first 4 bytes) */
	__u8 daddr[16];  /* remote address */
	__u16 sport;     /* local port, host byte order; 0 before the kernel binds it */
	__u16 dport;     /* remote port, host byte order */
	__u16 family;    /* AF_INET / AF_INET6 */
	__u16 pad;
	__u32 netns;     /* network namespace inode (sk->__sk_common.skc_net.net->ns.inum) */
};

struct rf_flow {
	struct rf_tuple t;
	__u32 pid;             /* tgid of the owner; 0 until known (see set_owner) */
	__u64 flow_id;         /* unique per tracer load, from 1 */
	__u64 opened_ns;       /* bpf_ktime_get_ns (CLOCK_MONOTONIC) */
	__u64 established_ns;  /* 0 if never established */
	__u64 closed_ns;       /* CLOSE transition; 0 while open */
	__u64 bytes_sent;      /* payload bytes the application wrote (atomic adds) */
	__u64 bytes_received;  /* payload bytes the application read (atomic adds) */
	__u32 segs_out;        /* tcp_sock.segs_out as of the last update */
	__u32 segs_in;         /* tcp_sock.segs_in as of the last update */
	__u32 retransmits;     /* tcp_retransmit_skb hits (atomic adds) */
	__u8 state;            /* last TCP state seen */
	__u8 flags;            /* RF_F_* */
	__u8 pad[2];
	char comm[16];
};

struct rf_event {
	__u8 kind;      /* RF_EV_* */
	__u8 reset_by;  /* RF_RST_* for RF_EV_RESET */
	__u8 state;     /* TCP state at the event (the retransmit/reset tracepoint's) */
	__u8 pad[5];
	__u64 ts_ns;
	struct rf_flow flow;
};

/* The layouts src/raw.rs decodes, offset by offset: a change here that is not mirrored there
 * fails this compile (and committed_object_matches_source keeps the object in step). */
#define RF_AT(type, field, off) _Static_assert(__builtin_offsetof(type, field) == (off), #type "." #field)
RF_AT(struct rf_tuple, saddr, 0);
RF_AT(struct rf_tuple, daddr, 16);
RF_AT(struct rf_tuple, sport, 32);
RF_AT(struct rf_tuple, dport, 34);
RF_AT(struct rf_tuple, family, 36);
RF_AT(struct rf_tuple, netns, 40);
_Static_assert(sizeof(struct rf_tuple) == 44, "struct rf_tuple size");
RF_AT(struct rf_flow, t, 0);
RF_AT(struct rf_flow, pid, 44);
RF_AT(struct rf_flow, flow_id, 48);
RF_AT(struct rf_flow, opened_ns, 56);
RF_AT(struct rf_flow, established_ns, 64);
RF_AT(struct rf_flow, closed_ns, 72);
RF_AT(struct rf_flow, bytes_sent, 80);
RF_AT(struct rf_flow, bytes_received, 88);
RF_AT(struct rf_flow, segs_out, 96);
RF_AT(struct rf_flow, segs_in, 100);
RF_AT(struct rf_flow, retransmits, 104);
RF_AT(struct rf_flow, state, 108);
RF_AT(struct rf_flow, flags, 109);
RF_AT(struct rf_flow, comm, 112);
_Static_assert(sizeof(struct rf_flow) == 128, "struct rf_flow size");
RF_AT(struct rf_event, kind, 0);
RF_AT(struct rf_event, reset_by, 1);
RF_AT(struct rf_event, state, 2);
RF_AT(struct rf_event, ts_ns, 8);
RF_AT(struct rf_event, flow, 16);
_Static_assert(sizeof(struct rf_event) == 144, "struct rf_event size");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536); /* set from FlowTracerOptions::max_flows before load */
	__type(key, __u64);         /* the struct sock pointer */
	__type(value, struct rf_flow);
} rf_flows SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 256 * 1024); /* set from FlowTracerOptions::ring_buffer_bytes */
} rf_events SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, RF_C_NR);
	__type(key, __u32);
	__type(value, __u64);
} rf_counters SEC(".maps");

__u64 rf_next_flow_id = 0;

/* Which events reach the ring buffer: bit (1 << RF_EV_*) per kind. Set by the loader before
 * the programs load (FlowTracerOptions::events); read-only then, so the verifier drops the
 * code of the kinds left out. Flows are tracked, counted and measured either way. */
const volatile __u32 rf_event_mask = 0xffffffff;

static __always_inline void count(__u32 idx)
{
	__u64 *v = bpf_map_lookup_elem(&rf_counters, &idx);

	if (v)
		*v += 1; /* per-CPU slot: no other writer */
}

static __always_inline void emit(__u8 kind, __u8 reset_by, __u8 state, const struct rf_flow *f,
				 __u64 now)
{
	if (!(rf_event_mask & (1u << kind)))
		return;
	struct rf_event *e = bpf_ringbuf_reserve(&rf_events, sizeof(*e), 0);

	if (!e) {
		count(RF_C_LOST);
		return;
	}
	e->kind = kind;
	e->reset_by = reset_by;
	e->state = state;
	__builtin_memset(e->pad, 0, sizeof(e->pad));
	e->ts_ns = now;
	__builtin_memcpy(&e->flow, f, sizeof(*f));
	bpf_ringbuf_submit(e, 0);
	count(RF_C_EMITTED);
}

static __always_inline void read_tuple(const struct sock *sk, struct rf_tuple *t)
{
	__u16 family = BPF_CORE_READ(sk, __sk_common.skc_family);

	__builtin_memset(t, 0, sizeof(*t));
	t->family = family;
	if (family == AF_INET) {
		BPF_CORE_READ_INTO(&t->saddr, sk, __sk_common.skc_rcv_saddr);
		BPF_CORE_READ_INTO(&t->daddr, sk, __sk_common.skc_daddr);
	} else {
		BPF_CORE_READ_INTO(&t->saddr, sk, __sk_common.skc_v6_rcv_saddr);
		BPF_CORE_READ_INTO(&t->daddr, sk, __sk_common.skc_v6_daddr);
	}
	t->sport = BPF_CORE_READ(sk, __sk_common.skc_num);
	t->dport = bpf_ntohs(BPF_CORE_READ(sk, __sk_common.skc_dport));
	t->netns = BPF_CORE_READ(sk, __sk_common.skc_net.net, ns.inum);
}

static __always_inline void read_segs(const struct sock *sk, struct rf_flow *f)
{
	const struct tcp_sock *tp = (const struct tcp_sock *)sk;

	f->segs_out = BPF_CORE_READ(tp, segs_out);
	f->segs_in = BPF_CORE_READ(tp, segs_in);
}

static __always_inline void set_owner(struct rf_flow *f)
{
	f->pid = bpf_get_current_pid_tgid() >> 32;
	bpf_get_current_comm(&f->comm, sizeof(f->comm));
}

/* Insert a new flow for sk; returns the map's copy (or NULL, counted). *created tells whether
 * this call inserted it. */
static __always_inline struct rf_flow *create_flow(const struct sock *sk, __u64 key, __u8 state,
						   __u8 flags, bool owner, __u64 now,
						   bool *created)
{
	struct rf_flow f = {};

	read_tuple(sk, &f.t);
	f.flow_id = __sync_fetch_and_add(&rf_next_flow_id, 1) + 1;
	f.opened_ns = now;
	f.state = state;
	f.flags = flags;
	if (owner)
		set_owner(&f);
	/* NOEXIST: two CPUs may adopt the same socket at once; the loser uses the winner's entry. */
	*created = bpf_map_update_elem(&rf_flows, &key, &f, BPF_NOEXIST) == 0;
	if (*created)
		count(flags & RF_F_ADOPTED ? RF_C_ADOPTED : RF_C_OPENED);
	struct rf_flow *p = bpf_map_lookup_elem(&rf_flows, &key);

	if (!p)
		count(RF_C_INSERT_FAILED);
	return p;
}

/* A socket first seen mid-life (send/recv/retransmit/state change without an entry). */
static __always_inline struct rf_flow *adopt(const struct sock *sk, __u64 key, __u64 now)
{
	__u8 state = BPF_CORE_READ(sk, __sk_common.skc_state);

	/* Not a flow (listener), or already over: do not resurrect it. */
	if (state == RF_TCP_CLOSE || state == RF_TCP_LISTEN || state == RF_TCP_TIME_WAIT ||
	    state == RF_TCP_NEW_SYN_RECV)
		return NULL;
	bool created = false;
	struct rf_flow *f = create_flow(sk, key, state, RF_F_ADOPTED, false, now, &created);

	if (f && created)
		emit(RF_EV_OPEN, 0, state, f, now);
	return f;
}

/* Emit CLOSE with the final counters and forget the flow. */
static __always_inline void finish(const struct sock *sk, __u64 key, struct rf_flow *f, __u64 now)
{
	read_segs(sk, f);
	if (!f->closed_ns)
		f->closed_ns = now;
	emit(RF_EV_CLOSE, 0, f->state, f, now);
	if (bpf_map_delete_elem(&rf_flows, &key) == 0)
		count(RF_C_CLOSED);
}

SEC("tracepoint/sock/inet_sock_set_state")
int rf_state(struct trace_event_raw_inet_sock_set_state *ctx)
{
	if (ctx->protocol != IPPROTO_TCP)
		return 0;
	int oldstate = ctx->oldstate;
	int newstate = ctx->newstate;

	/* Listening sockets are not flows. Their children are: a child is a clone of the
	 * listener, so its first transition is LISTEN -> SYN_RECV. */
	if (newstate == RF_TCP_LISTEN || (oldstate == RF_TCP_LISTEN && newstate != RF_TCP_SYN_RECV))
		return 0;

	const struct sock *sk = ctx->skaddr;
	__u64 key = (__u64)sk;
	__u64 now = bpf_ktime_get_ns();
	struct rf_flow *f = bpf_map_lookup_elem(&rf_flows, &key);

	/* A new connection on a socket we still track (reconnect after a failed connect, or a
	 * socket whose destroy we missed): the old flow is over. */
	if (f && (newstate == RF_TCP_SYN_SENT || newstate == RF_TCP_SYN_RECV)) {
		finish(sk, key, f, now);
		f = NULL;
	}
	if (!f) {
		bool created = false;

		if (newstate == RF_TCP_SYN_SENT) {
			/* connect(): process context, so the current task owns the socket. */
			f = create_flow(sk, key, newstate, RF_F_ACTIVE, true, now, &created);
			if (f && created)
				emit(RF_EV_OPEN, 0, newstate, f, now);
			return 0;
		}
		if (newstate == RF_TCP_SYN_RECV) {
			/* The child of a listener, created in softirq: the owner is whoever first
			 * reads or writes; the peer address is set after this transition, so OPEN
			 * is emitted at ESTABLISHED. */
			create_flow(sk, key, newstate, RF_F_PASSIVE, false, now, &created);
			return 0;
		}
		if (newstate == RF_TCP_CLOSE)
			return 0;
		f = adopt(sk, key, now);
		if (!f)
			return 0;
	}

	f->state = newstate;
	if (newstate == RF_TCP_ESTABLISHED) {
		read_tuple(sk, &f->t); /* complete now: source port and peer are set */
		f->established_ns = now;
		if (f->flags & RF_F_PASSIVE)
			emit(RF_EV_OPEN, 0, newstate, f, now);
		emit(RF_EV_ESTABLISHED, 0, newstate, f, now);
	} else if (newstate == RF_TCP_CLOSE) {
		f->closed_ns = now;
		read_segs(sk, f);
	}
	return 0;
}

SEC("tracepoint/tcp/tcp_destroy_sock")
int rf_destroy(struct trace_event_raw_tcp_event_sk *ctx)
{
	const struct sock *sk = ctx->skaddr;
	__u64 key = (__u64)sk;
	struct rf_flow *f = bpf_map_lookup_elem(&rf_flows, &key);

	if (f)
		finish(sk, key, f, bpf_ktime_get_ns());
	return 0;
}

static __always_inline int on_msg(struct trace_event_raw_sock_msg_length *ctx, bool sent)
{
	if (ctx->protocol != IPPROTO_TCP)
		return 0;
	if (ctx->family != AF_INET && ctx->family != AF_INET6)
		return 0;
	int len = ctx->ret;

	if (len <= 0)
		return 0;
	if (!sent && (ctx->flags & MSG_PEEK))
		return 0; /* the data stays queued; the real read counts it */

	const struct sock *sk = ctx->sk;
	__u64 key = (__u64)sk;
	struct rf_flow *f = bpf_map_lookup_elem(&rf_flows, &key);

	if (!f)
		f = adopt(sk, key, bpf_ktime_get_ns());
	if (!f)
		return 0;
	if (sent)
		__sync_fetch_and_add(&f->bytes_sent, len);
	else
		__sync_fetch_and_add(&f->bytes_received, len);
	/* send/recv run in the caller's process context: a reliable owner for accepted sockets. */
	if (!f->pid)
		set_owner(f);
	read_segs(sk, f);
	return 0;
}

SEC("tracepoint/sock/sock_send_length")
int rf_send_len(struct trace_event_raw_sock_msg_length *ctx)
{
	return on_msg(ctx, true);
}

SEC("tracepoint/sock/sock_recv_length")
int rf_recv_len(struct trace_event_raw_sock_msg_length *ctx)
{
	return on_msg(ctx, false);
}

SEC("tracepoint/tcp/tcp_retransmit_skb")
int rf_retransmit(struct trace_event_raw_tcp_retransmit_skb *ctx)
{
	const struct sock *sk = ctx->skaddr;
	__u64 key = (__u64)sk;
	__u64 now = bpf_ktime_get_ns();
	struct rf_flow *f = bpf_map_lookup_elem(&rf_flows, &key);

	if (!f)
		f = adopt(sk, key, now);
	if (!f)
		return 0;
	__sync_fetch_and_add(&f->retransmits, 1);
	read_segs(sk, f);
	emit(RF_EV_RETRANSMIT, 0, ctx->state, f, now);
	return 0;
}

/* A reset without a tracked flow: describe it from the socket, or from the tracepoint's
 * addresses (sockaddr_in / sockaddr_in6, local first) when no socket exists. */
static __always_inline void emit_orphan_reset(const struct sock *sk, const void *sa_local,
					      const void *sa_remote, const struct sk_buff *skb,
					      __u8 by, __u8 state, __u64 now)
{
	struct rf_flow f = {};

	if (sk) {
		read_tuple(sk, &f.t);
	} else {
		__u16 family = 0;

		bpf_probe_read_kernel(&family, sizeof(family), sa_local);
		f.t.family = family;
		if (family == AF_INET) {
			/* struct sockaddr_in: family, port, addr */
			bpf_probe_read_kernel(&f.t.saddr, 4, sa_local + 4);
			bpf_probe_read_kernel(&f.t.daddr, 4, sa_remote + 4);
		} else {
			/* struct sockaddr_in6: family, port, flowinfo, addr */
			bpf_probe_read_kernel(&f.t.saddr, 16, sa_local + 8);
			bpf_probe_read_kernel(&f.t.daddr, 16, sa_remote + 8);
		}
		__u16 port = 0;

		bpf_probe_read_kernel(&port, sizeof(port), sa_local + 2);
		f.t.sport = bpf_ntohs(port);
		bpf_probe_read_kernel(&port, sizeof(port), sa_remote + 2);
		f.t.dport = bpf_ntohs(port);
		if (skb)
			f.t.netns = BPF_CORE_READ(skb, dev, nd_net.net, ns.inum);
	}
	f.state = state;
	f.flags = by == RF_RST_LOCAL ? RF_F_RST_SENT : RF_F_RST_RECV;
	count(RF_C_RESET_NO_FLOW);
	emit(RF_EV_RESET, by, state, &f, now);
}

SEC("tracepoint/tcp/tcp_send_reset")
int rf_send_reset(struct trace_event_raw_tcp_send_reset *ctx)
{
	const struct sock *sk = ctx->skaddr;
	__u64 key = (__u64)sk;
	__u64 now = bpf_ktime_get_ns();
	int state = ctx->state;
	struct rf_flow *f = sk ? bpf_map_lookup_elem(&rf_flows, &key) : NULL;

	if (f) {
		f->flags |= RF_F_RST_SENT;
		emit(RF_EV_RESET, RF_RST_LOCAL, state, f, now);
		return 0;
	}
	emit_orphan_reset(sk, ctx->saddr, ctx->daddr, ctx->skbaddr, RF_RST_LOCAL, state, now);
	return 0;
}

SEC("tracepoint/tcp/tcp_receive_reset")
int rf_recv_reset(struct trace_event_raw_tcp_event_sk *ctx)
{
	const struct sock *sk = ctx->skaddr;
	__u64 key = (__u64)sk;
	__u64 now = bpf_ktime_get_ns();
	struct rf_flow *f = bpf_map_lookup_elem(&rf_flows, &key);
	__u8 state = BPF_CORE_READ(sk, __sk_common.skc_state);

	if (f) {
		f->flags |= RF_F_RST_RECV;
		emit(RF_EV_RESET, RF_RST_REMOTE, state, f, now);
		return 0;
	}
	emit_orphan_reset(sk, NULL, NULL, NULL, RF_RST_REMOTE, state, now);
	return 0;
}

char LICENSE[] SEC("license") = "GPL";

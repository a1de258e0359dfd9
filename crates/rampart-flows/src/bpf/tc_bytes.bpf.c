// SPDX-License-Identifier: Apache-2.0 OR GPL-2.0-only
//
// Rampart TC byte counting: the packet-level alternative to the socket-level byte counts of
// flows.bpf.c, kept separate so that the two can be loaded (and measured) independently.
// Loaded by crates/rampart-flows (src/tc.rs, aya, TCX links); see "Byte counting" in
// src/lib.rs for what it is for and what the measurements found.
//
// Two TC programs on TCX links (no qdisc needed), one per hook:
//   rf_tc_ingress  packets the interface receives
//   rf_tc_egress   packets the interface transmits
// Each TCP packet (IPv4, or IPv6 without extension headers) is counted in an LRU per-CPU hash
// keyed by the packet's own 5-tuple (source and destination as in the packet, not as seen by
// a socket) plus the hook it passed. Both programs return TC_ACT_UNSPEC (TCX_NEXT): they never
// drop, redirect or modify a packet, and the next program or filter on the hook still runs.
//
// What is counted per key:
//   packets        skbs that passed the hook (a GSO/GRO super-packet is one)
//   segs           max(1, gso_segs): TCP segments on the wire
//   payload_bytes  TCP payload: IP length - IP header - TCP header (options included)
//   ip_bytes       IP length (IPv4 total length, IPv6 40 + payload length)
// Lengths come from the IP header, not skb->len, so Ethernet padding of short frames is not
// counted. A GSO packet above 64 KiB (BIG TCP) has length 0 in its IP header: IPv6 ones carry
// a hop-by-hop jumbo payload option at the egress hook (seen on lo, Linux 6.18; it is gone by
// the ingress hook), whose length is used; otherwise skb->len minus the Ethernet header is.
//
// Ethernet-framed interfaces only (lo, veth, physical NICs): the IP header is expected right
// after a 14-byte Ethernet header. VLAN tags, tunnels, IPv4 fragments and IPv6 extension
// headers other than one hop-by-hop header are not parsed; such packets are counted in
// rf_tc_counters, never silently lost.
//
// Every program and map name starts with rf_tc_ so that `bpftool prog list` shows which are ours.

#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#define AF_INET 2
#define AF_INET6 10
#define ETH_HLEN 14
#define ETH_P_IP 0x0800
#define ETH_P_IPV6 0x86DD
#define IPPROTO_TCP 6
#define TC_ACT_UNSPEC (-1)

/* IPv6 extension headers (and ESP/AH): the TCP header is further in; not parsed. */
#define NEXTHDR_HOP 0
#define NEXTHDR_ROUTING 43
#define NEXTHDR_FRAGMENT 44
#define NEXTHDR_ESP 50
#define NEXTHDR_AUTH 51
#define NEXTHDR_DEST 60
#define IPV6_TLV_JUMBO 0xC2

/* Hooks (struct rf_tc_key.dir). Mirrored in src/tc.rs. */
#define RF_TC_INGRESS 0
#define RF_TC_EGRESS 1

/* Per-CPU global counters (rf_tc_counters index). Mirrored in src/tc.rs. */
enum rf_tc_counter {
	RF_TC_C_COUNTED = 0,       /* TCP packets counted in rf_tc_flows */
	RF_TC_C_NOT_TCP = 1,       /* not IPv4/IPv6, or not TCP */
	RF_TC_C_UNPARSED = 2,      /* IPv6 ext headers, IPv4 fragments, bad or short headers */
	RF_TC_C_INSERT_FAILED = 3, /* flow table update failed (should stay 0: LRU) */
	RF_TC_C_NR = 4,
};

/* Wire formats, declared here rather than taken from vmlinux.h: packet headers must not get
 * CO-RE relocations, and byte fields avoid endian-dependent bitfields. */
struct rf_iphdr {
	__u8 ver_ihl; /* version << 4 | header length in 32-bit words */
	__u8 tos;
	__be16 tot_len;
	__be16 id;
	__be16 frag_off; /* flags (3 bits) and fragment offset */
	__u8 ttl;
	__u8 protocol;
	__be16 check;
	__u8 saddr[4];
	__u8 daddr[4];
};

struct rf_ipv6hdr {
	__u8 ver_tc; /* version << 4 | high bits of the traffic class */
	__u8 flow_lbl[3];
	__be16 payload_len;
	__u8 nexthdr;
	__u8 hop_limit;
	__u8 saddr[16];
	__u8 daddr[16];
};

/* A hop-by-hop options header starting with a jumbo payload option: what the kernel puts in
 * IPv6 BIG TCP packets. */
struct rf_ipv6_hbh {
	__u8 nexthdr;
	__u8 hdrlen; /* in 8-byte units, not counting the first 8 */
	__u8 opt_type;
	__u8 opt_len;
	__be32 jumbo_len;
};

struct rf_tcphdr {
	__be16 source;
	__be16 dest;
	__be32 seq;
	__be32 ack_seq;
	__u8 doff_res; /* data offset in 32-bit words << 4 */
	__u8 flags;
	__be16 window;
	__be16 check;
	__be16 urg_ptr;
};

struct rf_tc_key {
	__u8 saddr[16]; /* the packet's source address (IPv4 in the first 4 bytes) */
	__u8 daddr[16]; /* the packet's destination address */
	__u16 sport;    /* host byte order */
	__u16 dport;    /* host byte order */
	__u16 family;   /* AF_INET / AF_INET6 */
	__u8 dir;       /* RF_TC_INGRESS / RF_TC_EGRESS */
	__u8 pad;
};

struct rf_tc_value {
	__u64 packets;
	__u64 segs;
	__u64 payload_bytes;
	__u64 ip_bytes;
};

/* The layouts src/tc.rs decodes, offset by offset: a change here that is not mirrored there
 * fails this compile (and committed_object_matches_source keeps the object in step). */
#define RF_AT(type, field, off) _Static_assert(__builtin_offsetof(type, field) == (off), #type "." #field)
RF_AT(struct rf_tc_key, saddr, 0);
RF_AT(struct rf_tc_key, daddr, 16);
RF_AT(struct rf_tc_key, sport, 32);
RF_AT(struct rf_tc_key, dport, 34);
RF_AT(struct rf_tc_key, family, 36);
RF_AT(struct rf_tc_key, dir, 38);
_Static_assert(sizeof(struct rf_tc_key) == 40, "struct rf_tc_key size");
RF_AT(struct rf_tc_value, packets, 0);
RF_AT(struct rf_tc_value, segs, 8);
RF_AT(struct rf_tc_value, payload_bytes, 16);
RF_AT(struct rf_tc_value, ip_bytes, 24);
_Static_assert(sizeof(struct rf_tc_value) == 32, "struct rf_tc_value size");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_PERCPU_HASH);
	__uint(max_entries, 65536); /* set from TcCounterOptions::max_flows before load */
	__type(key, struct rf_tc_key);
	__type(value, struct rf_tc_value);
} rf_tc_flows SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, RF_TC_C_NR);
	__type(key, __u32);
	__type(value, __u64);
} rf_tc_counters SEC(".maps");

static __always_inline void count(__u32 idx)
{
	__u64 *v = bpf_map_lookup_elem(&rf_tc_counters, &idx);

	if (v)
		*v += 1; /* per-CPU slot: no other writer */
}

/* Copies len bytes at offset off of the packet into dst: straight from the linear data when
 * they are there (the usual case: the stack builds its headers linear), else with
 * bpf_skb_load_bytes. Returns 0 on success. */
static __always_inline int load(struct __sk_buff *skb, __u32 off, void *dst, __u32 len)
{
	void *data = (void *)(long)skb->data;
	void *end = (void *)(long)skb->data_end;

	if (off > 256)
		return -1; /* bounds the offset for the verifier; headers are never that far */
	if (data + off + len <= end) {
		__builtin_memcpy(dst, data + off, len);
		return 0;
	}
	return bpf_skb_load_bytes(skb, off, dst, len);
}

static __always_inline int handle(struct __sk_buff *skb, __u8 dir)
{
	struct rf_tc_key key = {};
	__u32 ip_len, l4_off;
	__u8 proto;

	key.dir = dir;
	if (skb->protocol == bpf_htons(ETH_P_IP)) {
		struct rf_iphdr ip;

		if (load(skb, ETH_HLEN, &ip, sizeof(ip)))
			goto unparsed;
		__u32 ihl = (ip.ver_ihl & 0x0f) * 4;

		if ((ip.ver_ihl >> 4) != 4 || ihl < sizeof(ip))
			goto unparsed;
		proto = ip.protocol;
		if (proto != IPPROTO_TCP)
			goto not_tcp;
		/* A later fragment has no TCP header; a first one has part of the payload. */
		if (ip.frag_off & bpf_htons(0x3fff))
			goto unparsed;
		ip_len = bpf_ntohs(ip.tot_len);
		if (ip_len == 0) /* BIG TCP GSO packet above 64 KiB */
			ip_len = skb->len - ETH_HLEN;
		key.family = AF_INET;
		__builtin_memcpy(key.saddr, ip.saddr, 4);
		__builtin_memcpy(key.daddr, ip.daddr, 4);
		l4_off = ETH_HLEN + ihl;
	} else if (skb->protocol == bpf_htons(ETH_P_IPV6)) {
		struct rf_ipv6hdr ip6;

		if (load(skb, ETH_HLEN, &ip6, sizeof(ip6)))
			goto unparsed;
		if ((ip6.ver_tc >> 4) != 6)
			goto unparsed;
		proto = ip6.nexthdr;
		ip_len = bpf_ntohs(ip6.payload_len);
		l4_off = ETH_HLEN + sizeof(ip6);
		if (proto == NEXTHDR_HOP) {
			struct rf_ipv6_hbh hbh;

			if (load(skb, l4_off, &hbh, sizeof(hbh)))
				goto unparsed;
			proto = hbh.nexthdr;
			l4_off += (hbh.hdrlen + 1) * 8;
			/* BIG TCP: the jumbo payload option (RFC 2675) first, its length covers
			 * everything after the IPv6 header. */
			if (ip_len == 0 && hbh.opt_type == IPV6_TLV_JUMBO && hbh.opt_len == 4)
				ip_len = bpf_ntohl(hbh.jumbo_len);
		}
		if (proto != IPPROTO_TCP) {
			if (proto == NEXTHDR_HOP || proto == NEXTHDR_ROUTING ||
			    proto == NEXTHDR_FRAGMENT || proto == NEXTHDR_ESP ||
			    proto == NEXTHDR_AUTH || proto == NEXTHDR_DEST)
				goto unparsed;
			goto not_tcp;
		}
		if (ip_len == 0) /* BIG TCP GSO packet above 64 KiB, without the option */
			ip_len = skb->len - ETH_HLEN - sizeof(ip6);
		ip_len += sizeof(ip6);
		key.family = AF_INET6;
		__builtin_memcpy(key.saddr, ip6.saddr, 16);
		__builtin_memcpy(key.daddr, ip6.daddr, 16);
	} else {
		goto not_tcp;
	}

	struct rf_tcphdr tcp;

	if (load(skb, l4_off, &tcp, sizeof(tcp)))
		goto unparsed;
	__u32 doff = (tcp.doff_res >> 4) * 4;
	__u32 headers = l4_off - ETH_HLEN + doff;

	if (doff < sizeof(tcp) || headers > ip_len)
		goto unparsed;
	key.sport = bpf_ntohs(tcp.source);
	key.dport = bpf_ntohs(tcp.dest);

	__u64 segs = skb->gso_segs ? skb->gso_segs : 1;
	__u64 payload = ip_len - headers;
	struct rf_tc_value *v = bpf_map_lookup_elem(&rf_tc_flows, &key);

	if (!v) {
		struct rf_tc_value init = {
			.packets = 1,
			.segs = segs,
			.payload_bytes = payload,
			.ip_bytes = ip_len,
		};

		/* NOEXIST: another CPU may insert the same key at once; then add to its entry.
		 * A new per-CPU entry starts at zero on the other CPUs. */
		if (bpf_map_update_elem(&rf_tc_flows, &key, &init, BPF_NOEXIST) == 0) {
			count(RF_TC_C_COUNTED);
			return TC_ACT_UNSPEC;
		}
		v = bpf_map_lookup_elem(&rf_tc_flows, &key);
		if (!v) {
			count(RF_TC_C_INSERT_FAILED);
			return TC_ACT_UNSPEC;
		}
	}
	/* This CPU's slot: plain adds, no atomics (softirq and process context on one CPU do not
	 * interleave within a TC program run). */
	v->packets += 1;
	v->segs += segs;
	v->payload_bytes += payload;
	v->ip_bytes += ip_len;
	count(RF_TC_C_COUNTED);
	return TC_ACT_UNSPEC;

not_tcp:
	count(RF_TC_C_NOT_TCP);
	return TC_ACT_UNSPEC;
unparsed:
	count(RF_TC_C_UNPARSED);
	return TC_ACT_UNSPEC;
}

SEC("classifier")  /* aya's name for a TC (SchedClassifier) program */
int rf_tc_ingress(struct __sk_buff *skb)
{
	return handle(skb, RF_TC_INGRESS);
}

SEC("classifier")  /* aya's name for a TC (SchedClassifier) program */
int rf_tc_egress(struct __sk_buff *skb)
{
	return handle(skb, RF_TC_EGRESS);
}

char LICENSE[] SEC("license") = "GPL";

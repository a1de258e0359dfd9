// SPDX-License-Identifier: Apache-2.0 OR GPL-2.0-only
//
// Rampart flow labels: the names a proxy gives its connections (route, cluster, tenant), in
// two BPF maps pinned by name in bpffs, so that any process can read them: the proxy writes,
// `rampart flows top --by route|cluster|tenant` and flow metrics in other processes read.
// Maps only, no programs. Loaded by crates/rampart-flows (src/label_map.rs, aya); see there.
//
// rf_labels       the connection as the proxy's socket sees it (the flow tracer's key: local
//                 and remote address and port, family, network namespace) -> name ids
// rf_label_names  name id (FNV-1a 64 of the name) -> the name, NUL-padded
// Both are LRU hashes: a proxy that dies without cleaning up cannot fill them.

#include "vmlinux.h"
#include <bpf/bpf_helpers.h>

// Same layout as struct rf_tuple in flows.bpf.c.
struct rf_label_key {
	__u8 saddr[16];
	__u8 daddr[16];
	__u16 sport;
	__u16 dport;
	__u16 family;
	__u16 pad;
	__u32 netns;
};

struct rf_label {
	__u64 route;    // name ids; 0 = none
	__u64 cluster;
	__u64 tenant;
};

struct rf_label_name {
	char name[128];
};

#define RF_AT(type, field, off) _Static_assert(__builtin_offsetof(type, field) == (off), #type "." #field)
RF_AT(struct rf_label_key, sport, 32);
RF_AT(struct rf_label_key, netns, 40);
_Static_assert(sizeof(struct rf_label_key) == 44, "struct rf_label_key size");
_Static_assert(sizeof(struct rf_label) == 24, "struct rf_label size");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16384);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
	__type(key, struct rf_label_key);
	__type(value, struct rf_label);
} rf_labels SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 4096);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
	__type(key, __u64);
	__type(value, struct rf_label_name);
} rf_label_names SEC(".maps");

/* SPDX-License-Identifier: (GPL-2.0-only OR MIT) */
/*
 * Maps of the NAT. Every map is pinned by name, so a restarted agent finds
 * the live tables and translation never stops. Sizes that depend on the
 * configuration are set by the loader before load; the numbers here are
 * placeholders the loader always overrides.
 */
#ifndef BLOCKNAT_MAPS_H
#define BLOCKNAT_MAPS_H

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include "types.h"

/* inside_prefixes: key lpm_v4_key (inside prefix), value inside_prefix. */
struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, 256);
	__type(key, struct lpm_v4_key);
	__type(value, struct inside_prefix);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} inside_prefixes SEC(".maps");

/*
 * nat_exempt: destinations a subscriber reaches untranslated (the ISP's own
 * resolvers, portal, management network). public_inside: inside addresses
 * of their own (inside.public), routed untouched. Key lpm_v4_key, value u32
 * (1). A fixed size, so that a restart reuses the pinned tries whatever
 * the number of prefixes; the loader rewrites them at every load.
 */
struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, EXEMPT_PREFIX_LIMIT);
	__type(key, struct lpm_v4_key);
	__type(value, __u32);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} nat_exempt SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, EXEMPT_PREFIX_LIMIT);
	__type(key, struct lpm_v4_key);
	__type(value, __u32);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} public_inside SEC(".maps");

/*
 * The overflow pool: overflow_addrs (key u32 index, value __be32 address),
 * overflow_blocks (key u32 block id, value overflow_block), and
 * overflow_slots (key subscriber * OVERFLOW_SLOTS + slot, value u32: the
 * held block's id plus one, 0 for none). Each slot is its own element so
 * that the agent can clear one without writing over a CPU's claim in
 * another. Sized by the loader; one entry each when overflow is off.
 */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __be32);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} overflow_addrs SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct overflow_block);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} overflow_blocks SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u32);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} overflow_slots SEC(".maps");

/* pool_addrs: key u32 pool index, value __be32 public address. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __be32);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} pool_addrs SEC(".maps");

/* pool_index: key __be32 public address, value u32 pool index. Tells the
 * outside program in one lookup whether a packet is ours. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1);
	__type(key, __be32);
	__type(value, __u32);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} pool_index SEC(".maps");

/* subscribers: key u32 subscriber number, value subscriber_state. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct subscriber_state);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} subscribers SEC(".maps");

/*
 * flows_fwd: key flow_key (inside addr, port, proto), value flow_fwd.
 * flows_rev: key flow_key (public addr, port, proto), value flow_rev.
 * Plain hashes, not LRU: an existing mapping must never be evicted to make
 * room (RFC 6888 REQ-11); the agent's sweeper expires idle ones.
 */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1024);
	__type(key, struct flow_key);
	__type(value, struct flow_fwd);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} flows_fwd SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1024);
	__type(key, struct flow_key);
	__type(value, struct flow_rev);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} flows_rev SEC(".maps");

/*
 * frags: key frag_key (inbound: remote, pool address, id, proto), value
 * frag_val. LRU and small: a flood of fragments evicts old entries instead
 * of exhausting memory, and entries older than FRAG_TIMEOUT are ignored.
 */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 8192);
	__type(key, struct frag_key);
	__type(value, struct frag_val);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} frags SEC(".maps");

/* filters: key filter_key, value u64 coarse time last sent. Used only with
 * address-and-port-dependent filtering, and sized like the flow tables then;
 * one entry otherwise. The sweeper deletes an entry with its mapping. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 1024);
	__type(key, struct filter_key);
	__type(value, __u64);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} filters SEC(".maps");

/* iface_addrs: key u32 ifindex, value __be32, the router's own IPv4 address
 * on that interface (0: none), which the ICMP errors the data plane sends
 * come from. The loader writes it at attach and the agent when addresses
 * change. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, IFACE_INDEX_LIMIT);
	__type(key, __u32);
	__type(value, __be32);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} iface_addrs SEC(".maps");

/* iface_roles: key u32 ifindex, value u32 enum iface_role (0: none). */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, IFACE_INDEX_LIMIT);
	__type(key, __u32);
	__type(value, __u32);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} iface_roles SEC(".maps");

/* tx_ports: key u32 ifindex, value u32 ifindex: redirect targets. */
struct {
	__uint(type, BPF_MAP_TYPE_DEVMAP_HASH);
	__uint(max_entries, 64);
	__type(key, __u32);
	__type(value, __u32);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} tx_ports SEC(".maps");

/* nexthops: key nexthop_key (what the fib was asked), value nexthop (its
 * answer). LRU: an evicted entry only costs a fib lookup. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, struct nexthop_key);
	__type(value, struct nexthop);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} nexthops SEC(".maps");

/* route_gen: key u32 0, value route_state, written by the agent. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct route_state);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} route_gen SEC(".maps");

/*
 * pcp_entries: key flow_key (the internal endpoint), value pcp_entry.
 * Written by the agent only, and without preallocation, so that its fixed
 * size costs nothing until subscribers ask, and pcp.enabled can change
 * without a new table. pcp_epoch: key u32 0, value u64, the CLOCK_MONOTONIC
 * time the PCP state began (RFC 6887 §8.5): it goes with the pinned
 * tables, so a restart keeps the epoch and a detach starts a new one.
 */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1 << 20);
	__type(key, struct flow_key);
	__type(value, struct pcp_entry);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} pcp_entries SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} pcp_epoch SEC(".maps");

/* block_events: ring buffer of struct block_event, nothing else. */
struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 256 * 1024);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} block_events SEC(".maps");

#endif

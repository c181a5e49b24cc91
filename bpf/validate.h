/* SPDX-License-Identifier: (GPL-2.0-only OR MIT) */
/*
 * Inside source validation: a packet is translated only if its source
 * address is bound to where it came from. On a shared segment any device
 * can send with a neighbour's address; translated, that traffic would be
 * recorded, and answered for, in the neighbour's name.
 *
 *   - An address bound to a MAC (a DHCP lease held now, or a static
 *     binding; the agent keeps src_bindings in step) must arrive from that
 *     MAC.
 *   - An interface with IFACE_CHECK_PREFIXES carries only the prefixes
 *     iface_sources lists for it (a subscriber line or VLAN cannot speak
 *     for another's).
 *   - An interface with IFACE_REQUIRE_BINDING translates bound addresses
 *     only (nobody may use an address the DHCP server never gave out).
 *
 * An interface without a policy and an unbound address keep the plain
 * inside-prefix check of nat.c.
 */
#ifndef BLOCKNAT_VALIDATE_H
#define BLOCKNAT_VALIDATE_H

#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>
#include "types.h"

/* src_bindings: key __be32 inside address, value src_binding (its MAC). */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1);
	__type(key, __be32);
	__type(value, struct src_binding);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} src_bindings SEC(".maps");

/* iface_policy: key u32 ifindex, value u32 IFACE_CHECK_PREFIXES |
 * IFACE_REQUIRE_BINDING (0: no policy). */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, IFACE_INDEX_LIMIT);
	__type(key, __u32);
	__type(value, __u32);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} iface_policy SEC(".maps");

/* iface_sources: key iface_source_key (ifindex, prefix), value u32 (1). */
struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, 1024);
	__type(key, struct iface_source_key);
	__type(value, __u32);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} iface_sources SEC(".maps");

static __always_inline int mac_equal(const __u8 *a, const __u8 *b)
{
	return a[0] == b[0] && a[1] == b[1] && a[2] == b[2] &&
	       a[3] == b[3] && a[4] == b[4] && a[5] == b[5];
}

/* source_bound returns 1 if saddr may be translated when it arrives on
 * the ingress interface from eth->h_source, else 0. */
static __always_inline int source_bound(struct xdp_md *ctx, struct ethhdr *eth, __be32 saddr)
{
	__u32 ifindex = ctx->ingress_ifindex;
	struct src_binding *bound = bpf_map_lookup_elem(&src_bindings, &saddr);
	__u32 *policy;

	if (bound && !mac_equal(bound->mac, eth->h_source))
		return 0;
	policy = bpf_map_lookup_elem(&iface_policy, &ifindex);
	if (!policy || !*policy)
		return 1;
	if ((*policy & IFACE_REQUIRE_BINDING) && !bound)
		return 0;
	if (*policy & IFACE_CHECK_PREFIXES) {
		struct iface_source_key key = {
			.prefixlen = 64, .ifindex = bpf_htonl(ifindex), .addr = saddr,
		};

		if (!bpf_map_lookup_elem(&iface_sources, &key))
			return 0;
	}
	return 1;
}

#endif

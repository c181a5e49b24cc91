/* SPDX-License-Identifier: (GPL-2.0-only OR MIT) */
/*
 * Address classes the screen steps sort packets by before any table is
 * written: the router's own services, martians (RFC 1812 5.3.7, RFC 6890),
 * the pool and the inside prefixes.
 */
#ifndef BLOCKNAT_SCREEN_H
#define BLOCKNAT_SCREEN_H

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>
#include "config.h"
#include "maps.h"

/*
 * local_service says whether a packet belongs to the router itself and never
 * to the NAT: to the limited broadcast address, which no router forwards
 * (RFC 1812 5.3.5.1); to a multicast group, which this NAT does not
 * translate and the kernel's own multicast routing, if any, decides on; or
 * from 0.0.0.0, which only a host without an address sends, a DHCP client
 * (RFC 1122 3.2.1.3, RFC 2131 4.1). The route lookup sends the broadcast
 * address and the groups down the default route, out of an outside
 * interface, where the source check would drop a DHCPDISCOVER as spoofed
 * and a subscriber's mDNS would be translated and sent upstream. dst is the
 * destination in host order.
 *
 * A unicast destination fails the first compare, so the established path
 * pays two branches on a header it has just read.
 */
static __always_inline int local_service(__u32 dst, __be32 saddr)
{
	if (dst >= 0xe0000000 && (dst < 0xf0000000 || dst == 0xffffffff))
		return 1;
	return saddr == 0;
}

/* in_range_trie says whether addr lies in a prefix of an LPM trie keyed
 * by lpm_v4_key, whose prefixes span [lo, hi] (host order): the range
 * check spares the trie lookup for almost every other address. */
static __always_inline int in_range_trie(void *trie, __be32 addr, __u32 lo, __u32 hi)
{
	struct lpm_v4_key key = { .prefixlen = 32, .addr = addr };
	__u32 host = bpf_ntohl(addr);

	if (host < lo || host > hi)
		return 0;
	return bpf_map_lookup_elem(trie, &key) != 0;
}

/* in_inside_prefix says whether addr lies in an inside prefix. */
static __always_inline int in_inside_prefix(__be32 addr)
{
	return in_range_trie(&inside_prefixes, addr, inside_min, inside_max);
}

/* in_pool says whether addr (host order: host) is a pool address; the range
 * check spares the hash lookup for almost every other address. */
static __always_inline int in_pool(__be32 addr, __u32 host)
{
	return host >= pool_min && host <= pool_max && bpf_map_lookup_elem(&pool_index, &addr) != 0;
}

/*
 * martian_dst says whether a subscriber's packet is to an address no router
 * forwards (RFC 1812 5.3.7, RFC 6890): "this network" 0.0.0.0/8, loopback
 * 127.0.0.0/8, and the reserved 240.0.0.0/4. It runs after local_service,
 * which has already handed 255.255.255.255 (DHCP) and the multicast groups
 * to the kernel. dst is in host order.
 */
static __always_inline int martian_dst(__u32 dst)
{
	__u32 top = dst >> 24;

	return top == 0 || top == 127 || dst >= 0xf0000000;
}

/*
 * martian_src says whether a packet to a pool address has a source that
 * cannot come from the internet (RFC 1812 5.3.7, RFC 6890): 0.0.0.0/8,
 * loopback, a multicast group, 240.0.0.0/4 with the limited broadcast
 * address, one of the pool's own addresses, or an inside address, which
 * lives behind this NAT and never beyond it.
 */
static __always_inline int martian_src(__be32 saddr)
{
	__u32 src = bpf_ntohl(saddr);
	__u32 top = src >> 24;

	if (top == 0 || top == 127 || src >= 0xe0000000)
		return 1;
	if (in_pool(saddr, src))
		return 1;
	return in_inside_prefix(saddr);
}

#endif

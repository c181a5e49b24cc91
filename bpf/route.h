/* SPDX-License-Identifier: (GPL-2.0-only OR MIT) */
/*
 * The route and forward steps: where the kernel's routing table and
 * neighbour cache send a packet (bpf_fib_lookup), and sending it there
 * through the tx_ports devmap.
 *
 * The fib's successful answers are kept in the nexthops cache, keyed by the
 * whole question, so an established flow's packets are not asked again. An
 * answer holds for the route generation it was given under: the agent bumps
 * route_gen on every route, neighbour or link change it sees over netlink,
 * and the cache is used only while the agent's claim to be watching holds
 * (route_gen, its valid_until_ns). A miss, a stale generation, a longer packet
 * than the fib checked, or no agent: the fib is asked as before.
 */
#ifndef BLOCKNAT_ROUTE_H
#define BLOCKNAT_ROUTE_H

#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/ip.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>
#include "maps.h"
#include "pkt.h"
#include "stats.h"

/* A cache entry's last use is written when it moved by this much. */
#define NEXTHOP_USED_RESOLUTION_NS 1000000000ULL

#ifndef AF_INET
#define AF_INET 2
#endif

/* ip_decrease_ttl mirrors the kernel's: the TTL sits in the high byte of its
 * 16-bit word, so the checksum changes by 0x0100 with an end-around carry. */
static __always_inline void ip_decrease_ttl(struct iphdr *iph)
{
	__u32 check = iph->check;

	check += bpf_htons(0x0100);
	iph->check = (__sum16)(check + (check >= 0xffff));
	iph->ttl--;
}

/*
 * fib_lookup asks the kernel's routing table and neighbour cache where the
 * packet goes. tot_len 0 skips the MTU check, which otherwise stops the
 * lookup before it names the egress interface.
 */
static __always_inline int fib_lookup(struct xdp_md *ctx, struct iphdr *iph, __u16 tot_len,
				      struct bpf_fib_lookup *fib)
{
	__builtin_memset(fib, 0, sizeof(*fib));
	fib->family = AF_INET;
	fib->tos = iph->tos;
	fib->l4_protocol = iph->protocol;
	fib->tot_len = tot_len;
	fib->ipv4_src = iph->saddr;
	fib->ipv4_dst = iph->daddr;
	fib->ifindex = ctx->ingress_ifindex;
	return bpf_fib_lookup(ctx, fib, sizeof(*fib), 0);
}

/*
 * route asks where a packet of tot_len bytes goes: the cache when it holds
 * the answer, else the fib, noting a success for forward() to cache. Only
 * the fib's SUCCESS is cached, so every other answer (and what the steps
 * make of it: pass_fib, pass_frag_needed) is the fib's, every time.
 */
static __always_inline int route(struct pkt *p, struct iphdr *iph, __u16 tot_len)
{
	struct bpf_fib_lookup *fib = &p->fib;
	struct route_state *rg;
	struct nexthop *nh;
	__u32 zero = 0;
	int rc;

	rg = bpf_map_lookup_elem(&route_gen, &zero);
	if (rg && rg->valid_until_ns && (p->nh_now = bpf_ktime_get_coarse_ns()) < rg->valid_until_ns) {
		p->nhk.saddr = iph->saddr;
		p->nhk.daddr = iph->daddr;
		p->nhk.ifindex = p->ctx->ingress_ifindex;
		p->nhk.tos = iph->tos;
		p->nhk.proto = iph->protocol;
		p->nhk.pad[0] = 0;
		p->nhk.pad[1] = 0;
		/* Read before the fib is asked: an answer given across a
		 * change is cached under the generation the change ends. */
		p->nh_gen = rg->gen;
		nh = bpf_map_lookup_elem(&nexthops, &p->nhk);
		if (nh && nh->gen == p->nh_gen && tot_len <= nh->max_len) {
			if (p->nh_now - nh->used_ns > NEXTHOP_USED_RESOLUTION_NS)
				nh->used_ns = p->nh_now;
			fib->ifindex = nh->ifindex;
			__builtin_memcpy(fib->dmac, nh->dmac, ETH_ALEN);
			__builtin_memcpy(fib->smac, nh->smac, ETH_ALEN);
			return BPF_FIB_LKUP_RET_SUCCESS;
		}
		rc = fib_lookup(p->ctx, iph, tot_len, fib);
		if (rc == BPF_FIB_LKUP_RET_SUCCESS && tot_len) {
			p->nh_fill = 1;
			p->nh_len = tot_len;
		}
		return rc;
	}
	return fib_lookup(p->ctx, iph, tot_len, fib);
}

/* cache_nexthop keeps the fib's answer for a packet about to be redirected. */
static __always_inline void cache_nexthop(struct pkt *p)
{
	struct nexthop nh = { .gen = p->nh_gen, .used_ns = p->nh_now, .ifindex = p->fib.ifindex, .max_len = p->nh_len };

	__builtin_memcpy(nh.dmac, p->fib.dmac, ETH_ALEN);
	__builtin_memcpy(nh.smac, p->fib.smac, ETH_ALEN);
	bpf_map_update_elem(&nexthops, &p->nhk, &nh, BPF_ANY);
}

/*
 * forward sends a translated packet on its way: straight out of the egress
 * interface when the fib knew the neighbour, else through the kernel. A
 * packet whose route was not looked up before it was rewritten (inbound,
 * hairpin) is looked up now, by its new destination. What the fib answered
 * is cached only here, for a packet that is redirected.
 */
static __always_inline int forward(struct pkt *p)
{
	struct bpf_fib_lookup *fib = &p->fib;
	struct iphdr *iph = p->iph;

	if (p->fib_rc == FIB_NOT_ASKED)
		p->fib_rc = route(p, iph, bpf_ntohs(iph->tot_len));
	if (p->fib_rc != BPF_FIB_LKUP_RET_SUCCESS) {
		/* The kernel forwards the translated packet itself (it resolves
		 * the neighbour, fragments, or answers with ICMP). */
		stat_inc(STAT_PASS_FIB);
		return XDP_PASS;
	}
	if (p->nh_fill)
		cache_nexthop(p);
	ip_decrease_ttl(iph);
	__builtin_memcpy(p->eth->h_dest, fib->dmac, ETH_ALEN);
	__builtin_memcpy(p->eth->h_source, fib->smac, ETH_ALEN);
	/* The low bits of flags are the action when ifindex is not a
	 * redirect target: let the kernel forward it instead. */
	return bpf_redirect_map(&tx_ports, fib->ifindex, XDP_PASS);
}

#endif

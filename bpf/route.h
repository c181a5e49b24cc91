/* SPDX-License-Identifier: (GPL-2.0-only OR MIT) */
/*
 * The route and forward steps: where the kernel's routing table and
 * neighbour cache send a packet (bpf_fib_lookup), and sending it there
 * through the tx_ports devmap.
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
 * forward sends a translated packet on its way: straight out of the egress
 * interface when the fib knew the neighbour, else through the kernel. A
 * packet whose route was not looked up before it was rewritten (inbound,
 * hairpin) is looked up now, by its new destination.
 */
static __always_inline int forward(struct pkt *p)
{
	struct bpf_fib_lookup *fib = &p->fib;
	struct iphdr *iph = p->iph;

	if (p->fib_rc == FIB_NOT_ASKED)
		p->fib_rc = fib_lookup(p->ctx, iph, bpf_ntohs(iph->tot_len), fib);
	if (p->fib_rc != BPF_FIB_LKUP_RET_SUCCESS) {
		/* The kernel forwards the translated packet itself (it resolves
		 * the neighbour, fragments, or answers with ICMP). */
		stat_inc(STAT_PASS_FIB);
		return XDP_PASS;
	}
	ip_decrease_ttl(iph);
	__builtin_memcpy(p->eth->h_dest, fib->dmac, ETH_ALEN);
	__builtin_memcpy(p->eth->h_source, fib->smac, ETH_ALEN);
	/* The low bits of flags are the action when ifindex is not a
	 * redirect target: let the kernel forward it instead. */
	return bpf_redirect_map(&tx_ports, fib->ifindex, XDP_PASS);
}

#endif

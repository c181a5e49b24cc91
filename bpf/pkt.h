/* SPDX-License-Identifier: (GPL-2.0-only OR MIT) */
/*
 * What the steps of a packet's path share, and how a path ends.
 *
 * Each step (parse, screen, route, source, fragments, L4, flow, filter,
 * rewrite) takes the packet's state and returns a verdict: VERDICT_NEXT to
 * go on, or the stat index (bpf/stats.h) that names the outcome. Only
 * finish() counts a verdict and turns it into an XDP action, so a step
 * never counts and returns in two places.
 */
#ifndef BLOCKNAT_PKT_H
#define BLOCKNAT_PKT_H

#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/ip.h>
#include "parse.h"
#include "stats.h"
#include "types.h"

#define IP_MF 0x2000
#define IP_DF 0x4000
#define IP_OFFSET 0x1fff

#define TF_FIN 0x01
#define TF_SYN 0x02
#define TF_RST 0x04
#define TF_ACK 0x10

enum verdict {
	VERDICT_NEXT = -1,          /* this step let the packet through */
	VERDICT_FORWARD = STAT_MAX, /* translated: counted as such and forwarded */
};

/* fib_rc before the route is looked up: the forward step asks then. */
#define FIB_NOT_ASKED -1

/* l4 is the translatable part of a packet: the port (or ICMP echo
 * identifier) to rewrite and the checksum that covers it. */
struct l4 {
	__be16 *port;
	__sum16 *check;  /* NULL when a UDP checksum is 0 and must stay 0 */
	__u8 proto;
	__u8 pseudo;     /* the checksum covers the IP pseudo-header */
	__u8 udp;
	__u8 tcp_flags;  /* TCP_FLAG_* bits of interest, in the low byte */
};

/* pkt is one packet's way through a program. */
struct pkt {
	struct xdp_md *ctx;
	void *data_end;
	struct cursor c;
	struct ethhdr *eth;
	struct iphdr *iph;
	struct l4 l4;
	struct flow_rev *rev;    /* xdp_outside: the mapping of the destination */
	struct bpf_fib_lookup fib;
	struct frag_key frk;     /* xdp_outside: the datagram, for its fragments */
	__u64 now;               /* coarse clock, read by the flow step */
	__u32 bytes;             /* counted with a translated packet; 0: none */
	__u32 sub;               /* xdp_inside: the subscriber of a new flow */
	__be32 nat_addr;         /* xdp_inside: the source's mapping, from the flow step */
	__be16 nat_port;
	int fib_rc;              /* bpf_fib_lookup's answer, or FIB_NOT_ASKED */
	struct nexthop_key nhk;  /* the fib's question, when its answer is to be cached */
	__u64 nh_gen;            /* the route generation read before the fib was asked */
	__u64 nh_now;            /* coarse clock, read with the route generation */
	__u16 nh_len;            /* the length the fib checked */
	__u8 nh_fill;            /* cache the fib's answer if the packet is forwarded */
	__u8 proto;              /* the IP header's protocol */
	__u8 outbound;           /* xdp_inside */
	__u8 to_pool;            /* xdp_inside: to a pool address (hairpin) */
	__u8 first_frag;         /* xdp_outside: a first fragment (MF, offset 0) */
	__u8 translated;         /* count it as translated in its direction */
};

static __always_inline void pkt_init(struct pkt *p, struct xdp_md *ctx, int outbound)
{
	void *data = (void *)(long)ctx->data;

	p->ctx = ctx;
	p->data_end = (void *)(long)ctx->data_end;
	p->c.pos = data;
	p->bytes = p->data_end - data;
	p->fib_rc = FIB_NOT_ASKED;
	p->nh_fill = 0;
	p->outbound = outbound;
	p->to_pool = 0;
	p->first_frag = 0;
	p->translated = 0;
}

/* STEP runs one step of a path and ends the path on its verdict. */
#define STEP(step)                                  \
	do {                                        \
		int verdict_ = (step);              \
		if (verdict_ != VERDICT_NEXT)       \
			return verdict_;            \
	} while (0)

/* parse_ip is the first step of both programs: Ethernet, then IPv4. */
static __always_inline int parse_ip(struct pkt *p)
{
	int proto;

	if (parse_ethhdr(&p->c, p->data_end, &p->eth) != ETH_P_IP)
		return STAT_PASS_NOT_IPV4;
	proto = parse_iphdr(&p->c, p->data_end, &p->iph);
	if (proto < 0)
		return STAT_DROP_MALFORMED;
	p->proto = proto;
	return VERDICT_NEXT;
}

#endif

/* SPDX-License-Identifier: (GPL-2.0-only OR MIT) */
/*
 * ICMP the NAT must handle besides echo: errors that come back for a mapped
 * flow (RFC 5508), and the "host unreachable" a subscriber gets when its
 * block is full (RFC 6888 REQ-11).
 */
#ifndef BLOCKNAT_ICMP_H
#define BLOCKNAT_ICMP_H

#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/icmp.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#include "csum.h"

static __always_inline int icmp_is_error(__u8 type)
{
	return type == ICMP_DEST_UNREACH || type == ICMP_TIME_EXCEEDED || type == ICMP_PARAMETERPROB;
}

/*
 * icmp_quote is the packet an ICMP error carries: its IP header and the
 * first eight bytes of its L4 header, where the ports (or the echo id) and,
 * for UDP, the checksum are.
 */
struct icmp_quote {
	struct iphdr *iph;
	__be16 *port;     /* the quoted source port, or echo id */
	__sum16 *check;   /* the quoted L4 checksum when the quote holds it, else NULL */
	__u8 proto;
	__u8 pseudo;      /* that checksum covers the pseudo-header */
};

/*
 * parse_icmp_quote reads the quote after an ICMP error header. It accepts
 * a quoted TCP, UDP or ICMP echo request with an option-free IP header,
 * which is what a NAT's own outbound packets look like after translation.
 * A TCP checksum sits past the guaranteed eight bytes, so it is updated
 * only when the error quoted that far.
 */
static __always_inline int parse_icmp_quote(void *pos, void *data_end, struct icmp_quote *q)
{
	struct iphdr *iph = pos;
	__u8 *l4;

	if ((void *)(iph + 1) > data_end)
		return -1;
	if (iph->version != 4 || iph->ihl != 5)
		return -1;
	l4 = (__u8 *)(iph + 1);
	if ((void *)(l4 + 8) > data_end)
		return -1;
	q->iph = iph;
	q->proto = iph->protocol;
	q->check = 0;
	q->pseudo = 1;
	switch (iph->protocol) {
	case IPPROTO_UDP: {
		struct udphdr *uh = (struct udphdr *)l4;

		q->port = &uh->source;
		if (uh->check)
			q->check = &uh->check;
		return 0;
	}
	case IPPROTO_TCP: {
		struct tcphdr *th = (struct tcphdr *)l4;

		q->port = &th->source;
		if ((void *)(l4 + 18) <= data_end)
			q->check = &th->check;
		return 0;
	}
	case IPPROTO_ICMP: {
		struct icmphdr *ih = (struct icmphdr *)l4;

		if (ih->type != ICMP_ECHO)
			return -1;
		q->port = &ih->un.echo.id;
		q->check = &ih->checksum;
		q->pseudo = 0;
		return 0;
	}
	}
	return -1;
}

/*
 * icmp_quote_rewrite translates a quoted outbound packet back to the
 * subscriber: its source address and port become the inside ones. Every
 * changed word is also folded into the outer ICMP checksum, which covers
 * the quote.
 */
static __always_inline void icmp_quote_rewrite(struct icmphdr *icmph, struct icmp_quote *q, __be32 to_addr,
					       __be16 to_port)
{
	__be32 from_addr = q->iph->saddr;
	__be16 from_port = *q->port;
	__sum16 old_ipcheck = q->iph->check;
	__sum16 sum = icmph->checksum;

	q->iph->saddr = to_addr;
	q->iph->check = csum_replace4(q->iph->check, from_addr, to_addr);
	sum = csum_replace4(sum, from_addr, to_addr);
	sum = csum_replace2(sum, old_ipcheck, q->iph->check);

	*q->port = to_port;
	sum = csum_replace2(sum, from_port, to_port);
	if (q->check) {
		__sum16 old = *q->check;
		__sum16 c = old;

		if (q->pseudo)
			c = csum_replace4(c, from_addr, to_addr);
		c = csum_replace2(c, from_port, to_port);
		if (q->proto == IPPROTO_UDP)
			c = udp_csum_mangled(c);
		*q->check = c;
		sum = csum_replace2(sum, old, c);
	}
	icmph->checksum = sum;
}

#define UNREACH_QUOTE (sizeof(struct iphdr) + 8)
#define UNREACH_LEN (sizeof(struct ethhdr) + sizeof(struct iphdr) + sizeof(struct icmphdr) + UNREACH_QUOTE)

/*
 * icmp_host_unreachable turns the frame in ctx, a subscriber's packet that
 * could not be mapped, into an ICMP "host unreachable" back to its sender,
 * for XDP_TX. The error comes from the router's own address on the
 * interface the packet came in by (from), as a router's errors do (RFC
 * 1812 4.3.2.4); the sender's stack matches it to the socket by the quoted
 * header and fails the connect at once instead of retrying into a full
 * block. Only option-free IP headers are quoted; returns -1 when the frame
 * cannot be turned.
 */
static __always_inline int icmp_host_unreachable(struct xdp_md *ctx, __be32 from)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	struct iphdr *orig = (struct iphdr *)(eth + 1);
	__u8 smac[ETH_ALEN], dmac[ETH_ALEN];
	struct icmphdr *icmph;
	struct iphdr *iph;
	__be32 saddr;
	__u32 csum;
	int grow = sizeof(struct iphdr) + sizeof(struct icmphdr);

	if ((void *)orig + UNREACH_QUOTE > data_end || orig->ihl != 5)
		return -1;
	__builtin_memcpy(smac, eth->h_source, ETH_ALEN);
	__builtin_memcpy(dmac, eth->h_dest, ETH_ALEN);
	saddr = orig->saddr;

	/* Room in front for the new IP and ICMP headers: the old Ethernet
	 * header is then where the ICMP header goes, and the quoted IP header
	 * is already in place behind it. */
	if (bpf_xdp_adjust_head(ctx, -grow))
		return -1;
	data = (void *)(long)ctx->data;
	data_end = (void *)(long)ctx->data_end;
	if (data + UNREACH_LEN > data_end)
		return -1;
	if (bpf_xdp_adjust_tail(ctx, (int)UNREACH_LEN - (int)(data_end - data)))
		return -1;
	data = (void *)(long)ctx->data;
	data_end = (void *)(long)ctx->data_end;
	if (data + UNREACH_LEN > data_end)
		return -1;

	eth = data;
	__builtin_memcpy(eth->h_dest, smac, ETH_ALEN);
	__builtin_memcpy(eth->h_source, dmac, ETH_ALEN);
	eth->h_proto = bpf_htons(ETH_P_IP);

	iph = (struct iphdr *)(eth + 1);
	iph->version = 4;
	iph->ihl = 5;
	iph->tos = 0xc0; /* internetwork control, as the kernel's own errors */
	iph->tot_len = bpf_htons(UNREACH_LEN - sizeof(struct ethhdr));
	iph->id = 0;
	iph->frag_off = 0;
	iph->ttl = 64;
	iph->protocol = IPPROTO_ICMP;
	iph->check = 0;
	iph->saddr = from;
	iph->daddr = saddr;
	csum = bpf_csum_diff(0, 0, (__be32 *)iph, sizeof(*iph), 0);
	iph->check = ~csum_fold(csum);

	icmph = (struct icmphdr *)(iph + 1);
	icmph->type = ICMP_DEST_UNREACH;
	icmph->code = ICMP_HOST_UNREACH;
	icmph->checksum = 0;
	icmph->un.gateway = 0;
	csum = bpf_csum_diff(0, 0, (__be32 *)icmph, sizeof(*icmph) + UNREACH_QUOTE, 0);
	icmph->checksum = ~csum_fold(csum);
	return 0;
}

#endif

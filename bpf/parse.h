/* SPDX-License-Identifier: (GPL-2.0-only OR MIT) */
/*
 * Header parsers.
 *
 * Contract: each parser takes a cursor into the packet and data_end. It
 * checks that the whole header lies before data_end, advances the cursor past
 * it, and returns the next protocol number; it returns -1, leaving the cursor
 * alone, when the header is truncated or inconsistent. No parser writes to
 * the packet. Callers therefore never touch a header a parser did not accept.
 */
#ifndef BLOCKNAT_PARSE_H
#define BLOCKNAT_PARSE_H

#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/ip.h>
#include <linux/icmp.h>
#include <linux/tcp.h>
#include <linux/udp.h>
#include <bpf/bpf_endian.h>

struct cursor {
	void *pos;
};

/* parse_ethhdr returns the EtherType in host order. VLAN tags are not
 * parsed: tagged frames are not IPv4 to us and go to the kernel. */
static __always_inline int parse_ethhdr(struct cursor *c, void *data_end, struct ethhdr **eth)
{
	struct ethhdr *h = c->pos;

	if ((void *)(h + 1) > data_end)
		return -1;
	c->pos = h + 1;
	*eth = h;
	return bpf_ntohs(h->h_proto);
}

/*
 * parse_iphdr accepts IPv4 headers with options (IHL 5..15) and returns the
 * L4 protocol. A header whose IHL is below 5, whose version is not 4, or whose
 * total length is shorter than its header is inconsistent and rejected.
 */
static __always_inline int parse_iphdr(struct cursor *c, void *data_end, struct iphdr **iph)
{
	struct iphdr *h = c->pos;
	__u32 hdrsize;

	if ((void *)(h + 1) > data_end)
		return -1;
	if (h->version != 4 || h->ihl < 5)
		return -1;
	hdrsize = h->ihl * 4;
	if (bpf_ntohs(h->tot_len) < hdrsize)
		return -1;
	/* ihl is four bits, so hdrsize is at most 60 and the verifier can
	 * bound the variable offset. */
	if (c->pos + hdrsize > data_end)
		return -1;
	c->pos += hdrsize;
	*iph = h;
	return h->protocol;
}

static __always_inline int parse_udphdr(struct cursor *c, void *data_end, struct udphdr **udph)
{
	struct udphdr *h = c->pos;

	if ((void *)(h + 1) > data_end)
		return -1;
	c->pos = h + 1;
	*udph = h;
	return 0;
}

/* parse_tcphdr rejects a data offset below 5 words: such a header would
 * overlap its own payload, and translating it would be guesswork. */
static __always_inline int parse_tcphdr(struct cursor *c, void *data_end, struct tcphdr **tcph)
{
	struct tcphdr *h = c->pos;
	__u32 len;

	if ((void *)(h + 1) > data_end)
		return -1;
	len = h->doff * 4;
	if (len < sizeof(*h))
		return -1;
	if (c->pos + len > data_end)
		return -1;
	c->pos += len;
	*tcph = h;
	return 0;
}

static __always_inline int parse_icmphdr(struct cursor *c, void *data_end, struct icmphdr **icmph)
{
	struct icmphdr *h = c->pos;

	if ((void *)(h + 1) > data_end)
		return -1;
	c->pos = h + 1;
	*icmph = h;
	return h->type;
}

#endif

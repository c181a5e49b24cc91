/* SPDX-License-Identifier: (GPL-2.0-only OR MIT) */
/*
 * The L4 step: the port (or ICMP echo identifier) a packet is translated
 * by, and the rewrite of an address and that port with every checksum that
 * covers them (RFC 1624, bpf/csum.h).
 */
#ifndef BLOCKNAT_L4_H
#define BLOCKNAT_L4_H

#include <linux/bpf.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/icmp.h>
#include <linux/tcp.h>
#include <linux/udp.h>
#include "csum.h"
#include "parse.h"
#include "pkt.h"

/*
 * l4_parse finds the field to translate. Outbound it selects the source
 * port and ICMP echo requests; inbound the destination port and echo
 * replies. Other ICMP types are not translated here.
 */
static __always_inline int l4_parse(struct pkt *p)
{
	struct l4 *l4 = &p->l4;

	l4->proto = p->proto;
	l4->check = 0;
	l4->pseudo = 0;
	l4->udp = 0;
	l4->tcp_flags = 0;
	switch (p->proto) {
	case IPPROTO_TCP: {
		struct tcphdr *th;

		if (parse_tcphdr(&p->c, p->data_end, &th) < 0)
			return STAT_DROP_MALFORMED;
		l4->port = p->outbound ? &th->source : &th->dest;
		l4->check = &th->check;
		l4->pseudo = 1;
		l4->tcp_flags = ((__u8 *)th)[13];
		return VERDICT_NEXT;
	}
	case IPPROTO_UDP: {
		struct udphdr *uh;

		if (parse_udphdr(&p->c, p->data_end, &uh) < 0)
			return STAT_DROP_MALFORMED;
		l4->port = p->outbound ? &uh->source : &uh->dest;
		l4->check = uh->check ? &uh->check : 0;
		l4->pseudo = 1;
		l4->udp = 1;
		return VERDICT_NEXT;
	}
	case IPPROTO_ICMP: {
		struct icmphdr *ih;
		int type = parse_icmphdr(&p->c, p->data_end, &ih);

		if (type < 0)
			return STAT_DROP_MALFORMED;
		if (type != (p->outbound ? ICMP_ECHO : ICMP_ECHOREPLY))
			return STAT_DROP_UNSUPPORTED;
		l4->port = &ih->un.echo.id;
		l4->check = &ih->checksum;
		return VERDICT_NEXT;
	}
	}
	return STAT_DROP_UNSUPPORTED;
}

/* remote_port_of is the port of the far end: the other port of TCP and
 * UDP, none for ICMP echo (the id is the mapping's port). */
static __always_inline __be16 remote_port_of(struct l4 *l4, int outbound)
{
	struct udphdr *uh;

	if (l4->proto == IPPROTO_ICMP)
		return 0;
	/* For TCP and UDP the source and destination ports are the first
	 * two words; l4->port points at the one being translated. */
	uh = (struct udphdr *)(outbound ? (void *)l4->port : (void *)l4->port - 2);
	return outbound ? uh->dest : uh->source;
}

/*
 * rewrite replaces one address (at *addr) and the L4 port, and fixes the IP
 * and L4 checksums incrementally.
 */
static __always_inline void rewrite(struct iphdr *iph, __be32 *addr, struct l4 *l4, __be32 to_addr,
				    __be16 to_port)
{
	__be32 from_addr = *addr;
	__be16 from_port = *l4->port;

	*addr = to_addr;
	iph->check = csum_replace4(iph->check, from_addr, to_addr);
	*l4->port = to_port;
	if (l4->check) {
		__sum16 c = *l4->check;

		if (l4->pseudo)
			c = csum_replace4(c, from_addr, to_addr);
		c = csum_replace2(c, from_port, to_port);
		if (l4->udp)
			c = udp_csum_mangled(c);
		*l4->check = c;
	}
}

#endif

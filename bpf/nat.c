// SPDX-License-Identifier: (GPL-2.0-only OR MIT)
/*
 * blocknat data plane: deterministic port-block NAT (RFC 7422) in XDP.
 *
 * xdp_inside runs on the subscriber-facing interfaces and translates the
 * source of packets leaving by an outside interface; xdp_outside runs on the
 * internet-facing interfaces and translates the destination of packets to a
 * pool address back to the subscriber. Anything that is not the NAT's
 * business goes to the kernel with XDP_PASS. A packet is translated
 * correctly, passed, or dropped with a counter: never aborted.
 *
 * Each program is a list of steps (bpf/pkt.h): parse, screen, route,
 * source, exempt, fragments, L4, flow, filter, rewrite. A step returns VERDICT_NEXT
 * or the stat index of the packet's outcome, and finish() alone counts it
 * and turns it into an XDP action; forwarding is finish()'s too.
 *
 * The only thing reported to user space is that a subscriber's block became
 * active. Destinations never leave this file.
 */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/icmp.h>
#include <linux/tcp.h>
#include <linux/udp.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#include "types.h"
#include "config.h"
#include "csum.h"
#include "parse.h"
#include "stats.h"
#include "maps.h"
#include "pkt.h"
#include "l4.h"
#include "screen.h"
#include "route.h"
#include "icmp.h"
#include "validate.h"
#include "flow.h"
#include "filter.h"

char LICENSE[] SEC("license") = "Dual MIT/GPL";

/* BTF anchors: bpf2go emits Go twins only for types in the object's BTF, and
 * these are otherwise used only through pointers and constants. */
const struct block_event *unused_block_event __attribute__((unused));
const enum stat_index *unused_stat_index __attribute__((unused));
const enum iface_policy_flags *unused_iface_policy_flags __attribute__((unused));
const enum block_event_kind *unused_block_event_kind __attribute__((unused));
const enum flow_proto *unused_flow_proto __attribute__((unused));
const enum flow_state *unused_flow_state __attribute__((unused));
const enum iface_role *unused_iface_role __attribute__((unused));
const enum iface_limits *unused_iface_limits __attribute__((unused));
const enum flow_clock *unused_flow_clock __attribute__((unused));
const enum exempt_limits *unused_exempt_limits __attribute__((unused));
const enum overflow_limits *unused_overflow_limits __attribute__((unused));
const struct overflow_block *unused_overflow_block __attribute__((unused));
const struct pcp_op *unused_pcp_op __attribute__((unused));
const struct pcp_entry *unused_pcp_entry __attribute__((unused));
const enum pcp_op_flags *unused_pcp_op_flags __attribute__((unused));
const enum pcp_op_result *unused_pcp_op_result __attribute__((unused));
const enum pcp_entry_flags *unused_pcp_entry_flags __attribute__((unused));
const enum pcp_ports *unused_pcp_ports __attribute__((unused));
const enum flow_rev_flags *unused_flow_rev_flags __attribute__((unused));

/* How long the translation of a datagram's first fragment serves its
 * later fragments. */
#define FRAG_TIMEOUT_NS (5ULL * 1000000000ULL)

/*
 * finish is where every path ends: it counts the verdict (and, for a
 * packet the NAT translated, the packet and its bytes in its direction)
 * and acts on it. The translated verdicts forward; a full block may answer
 * with "host unreachable"; a pass reason passes; every other reason drops.
 */
static __always_inline int finish(struct pkt *p, int verdict)
{
	if (p->translated) {
		stat_inc(p->outbound ? STAT_OUT_PACKETS : STAT_IN_PACKETS);
		if (p->bytes)
			stat_add(p->outbound ? STAT_OUT_BYTES : STAT_IN_BYTES, p->bytes);
	}
	if (verdict != VERDICT_FORWARD)
		stat_inc(verdict);
	switch (verdict) {
	case VERDICT_FORWARD:
	case STAT_EXEMPT_OUT:
	case STAT_PUBLIC_OUT:
	case STAT_HAIRPIN:
	case STAT_FRAGMENTS:
	case STAT_ICMP_ERRORS_IN:
		return forward(p);
	case STAT_DROP_BLOCK_FULL:
		return block_full_icmp(p->ctx, p->sub, p->now);
	}
	return stat_is_pass(verdict) ? XDP_PASS : XDP_DROP;
}

/* ---- xdp_inside: subscriber to internet ---- */

/* inside_screen: first, nothing below may route, translate or call spoofed
 * what only the kernel may see, a later fragment of it included. Before the
 * TTL check too, since link-local multicast (IGMP, OSPF, VRRP) is sent with
 * TTL 1 and is no "time exceeded" case. */
static __always_inline int inside_screen(struct pkt *p)
{
	__u32 dst = bpf_ntohl(p->iph->daddr);

	if (local_service(dst, p->iph->saddr))
		return STAT_PASS_LOCAL_SERVICE;
	if (martian_dst(dst))
		return STAT_DROP_MARTIAN_DST;
	if (p->iph->ttl <= 1)
		return STAT_PASS_TTL;
	/* A pool address is another subscriber's: hairpin, whatever the
	 * routing table says about it. */
	p->to_pool = in_pool(p->iph->daddr, dst);
	return VERDICT_NEXT;
}

/*
 * inside_local: a packet to the router itself is the kernel's, but a
 * request to the PCP server (UDP to PCP_SERVER_PORT) must be judged by the
 * same source validation as the traffic it would map: a socket cannot see
 * the MAC a datagram came from. One that fails goes to PCP_SUSPECT_PORT
 * instead, where the server refuses whatever it asks; so a device cannot
 * open a port in a neighbour's name. Dropping it instead would leave the
 * client without the answer the RFC gives it (NOT_AUTHORIZED).
 */
static __always_inline int inside_local(struct pkt *p)
{
	struct iphdr *iph = p->iph;
	struct udphdr *udph = p->c.pos;
	__be16 to = bpf_htons(PCP_SUSPECT_PORT);

	if (!pcp_on || p->proto != IPPROTO_UDP || (iph->frag_off & bpf_htons(IP_MF | IP_OFFSET)))
		return STAT_PASS_LOCAL;
	if ((void *)(udph + 1) > p->data_end || udph->dest != bpf_htons(PCP_SERVER_PORT))
		return STAT_PASS_LOCAL;
	if (source_bound(p->ctx, p->eth, iph->saddr))
		return STAT_PASS_LOCAL;
	if (udph->check)
		udph->check = udp_csum_mangled(csum_replace2(udph->check, udph->dest, to));
	udph->dest = to;
	stat_inc(STAT_PCP_SUSPECT);
	return STAT_PASS_LOCAL;
}

/* inside_route: only what the routes send out of an outside interface is
 * the NAT's; the rest goes to the kernel untranslated. */
static __always_inline int inside_route(struct pkt *p)
{
	struct iphdr *iph = p->iph;
	__u32 *role;
	int rc;

	if (p->to_pool)
		return VERDICT_NEXT; /* routed after the rewrite, by its new destination */
	rc = route(p, iph, bpf_ntohs(iph->tot_len));
	if (rc == BPF_FIB_LKUP_RET_FRAG_NEEDED) {
		if (iph->frag_off & bpf_htons(IP_DF))
			/* The kernel answers "fragmentation needed" to the
			 * subscriber, which is only right untranslated. */
			return STAT_PASS_FRAG_NEEDED;
		/* Translated below and left to the kernel to fragment. */
		int again = fib_lookup(p->ctx, iph, 0, &p->fib);

		if (again != BPF_FIB_LKUP_RET_SUCCESS && again != BPF_FIB_LKUP_RET_NO_NEIGH)
			rc = again;
	}
	if (rc == BPF_FIB_LKUP_RET_NOT_FWDED)
		return inside_local(p);
	if (rc != BPF_FIB_LKUP_RET_SUCCESS && rc != BPF_FIB_LKUP_RET_NO_NEIGH &&
	    rc != BPF_FIB_LKUP_RET_FRAG_NEEDED)
		/* Unreachable, blackhole, prohibited: the kernel says so. */
		return STAT_PASS_FIB;
	role = bpf_map_lookup_elem(&iface_roles, &p->fib.ifindex);
	if (!role || *role != IFACE_OUTSIDE)
		return STAT_PASS_NOT_NAT;
	/* An inside address the routes send to the internet has no
	 * subscriber on any inside link (an unassigned one, or a prefix not
	 * routed here): it cannot belong upstream. Inside addresses routed
	 * to an inside link are the kernel's to forward, above (pass_not_nat). */
	if (in_inside_prefix(iph->daddr))
		return STAT_DROP_MARTIAN_DST;
	p->fib_rc = rc;
	return VERDICT_NEXT;
}

/* inside_source: before any translation, the established path and later
 * fragments included, a neighbour's existing mapping must not carry a
 * spoofer's packets either (bpf/validate.h). */
static __always_inline int inside_source(struct pkt *p)
{
	if (!source_bound(p->ctx, p->eth, p->iph->saddr))
		return STAT_DROP_SPOOFED_BINDING;
	return VERDICT_NEXT;
}

/* inside_exempt: what leaves by an outside interface untranslated, its
 * fragments included: a subscriber's packet to a nat_exempt destination,
 * and any packet from an address of its own (inside.public). Neither makes
 * a mapping, activates a block or leaves a record; the source check above
 * has held for both. A pool destination is a hairpin, never exempt (the
 * configuration refuses an exemption that overlaps the pool). */
static __always_inline int inside_exempt(struct pkt *p)
{
	struct iphdr *iph = p->iph;

	if (p->to_pool)
		return VERDICT_NEXT;
	if (public_inside_on && in_range_trie(&public_inside, iph->saddr, public_min, public_max))
		return STAT_PUBLIC_OUT;
	if (nat_exempt_on && in_range_trie(&nat_exempt, iph->daddr, exempt_min, exempt_max)) {
		/* Only a subscriber's traffic is exempt: a source from no
		 * inside prefix is as spoofed as on the translated path. */
		if (!in_inside_prefix(iph->saddr))
			return STAT_DROP_SPOOFED;
		return STAT_EXEMPT_OUT;
	}
	return VERDICT_NEXT;
}

/* inside_fragments: a later fragment carries no port, but the subscriber's
 * public address does not depend on one, so it is translated statelessly,
 * and fragments arriving before the first are handled the same as those
 * after it. A first fragment is counted and goes on by its L4 header. */
static __always_inline int inside_fragments(struct pkt *p)
{
	struct iphdr *iph = p->iph;
	struct subscriber_state *ss;
	__u32 slot, sub_key;
	__be32 *public, from;
	__s64 sub;

	if (!(iph->frag_off & bpf_htons(IP_OFFSET))) {
		if (iph->frag_off & bpf_htons(IP_MF))
			stat_inc(STAT_FRAGMENTS); /* a first fragment: its L4 header is here */
		return VERDICT_NEXT;
	}
	sub = subscriber_of(iph->saddr);
	if (sub < 0)
		return STAT_DROP_SPOOFED;
	if (p->to_pool)
		return STAT_DROP_FRAGMENT;
	/* Only under an active block, which has a record: nothing leaves
	 * under a public address that no record names. */
	sub_key = (__u32)sub;
	ss = bpf_map_lookup_elem(&subscribers, &sub_key);
	if (!ss || !ss->active)
		return STAT_DROP_FRAGMENT_INACTIVE;
	slot = (__u32)sub / sharing_ratio;
	public = bpf_map_lookup_elem(&pool_addrs, &slot);
	if (!public)
		return STAT_DROP_FLOW_TABLE;
	from = iph->saddr;
	iph->saddr = *public;
	iph->check = csum_replace4(iph->check, from, *public);
	p->translated = 1;
	return STAT_FRAGMENTS;
}

/* inside_flow finds the source's mapping, or makes one in the subscriber's
 * block; the rest of the path needs only its public address and port. */
static __always_inline int inside_flow(struct pkt *p)
{
	struct iphdr *iph = p->iph;
	struct l4 *l4 = &p->l4;
	struct flow_key fkey = { .addr = iph->saddr, .port = *l4->port, .proto = l4->proto };
	struct flow_fwd *fwd;
	__be32 peer_addr = 0;
	__be16 peer_port = 0;
	__u8 state;
	__s64 sub;

	p->now = bpf_ktime_get_coarse_ns();
	fwd = bpf_map_lookup_elem(&flows_fwd, &fkey);
	if (fwd) {
		/* A forward entry exists only for a source that passed the
		 * prefix check when it was created, so the established path
		 * skips the LPM lookup. Fields are written only when they
		 * change (the clock by its resolution, the TCP state when it
		 * moves), so most packets leave the cache line clean. */
		flow_touch(fwd, p->now);
		if (l4->proto == IPPROTO_TCP)
			tcp_track_out(fwd, iph->daddr, remote_port_of(l4, 1), l4->tcp_flags);
		p->nat_addr = fwd->nat_addr;
		p->nat_port = fwd->nat_port;
		p->translated = 1;
		return VERDICT_NEXT;
	}
	sub = subscriber_of(iph->saddr);
	if (sub < 0)
		return STAT_DROP_SPOOFED;
	state = FLOW_STATE_OTHER;
	if (l4->proto == IPPROTO_TCP) {
		state = tcp_initial_state(l4->tcp_flags);
		peer_addr = iph->daddr;
		peer_port = remote_port_of(l4, 1);
	}
	p->sub = sub;
	STEP(flow_create(p, &fkey, sub, state, peer_addr, peer_port));
	p->translated = 1;
	return VERDICT_NEXT;
}

/* inside_filter notes the remote endpoint the mapping sends to, which only
 * address-and-port-dependent filtering needs. */
static __always_inline int inside_filter(struct pkt *p)
{
	if (filter_apdf)
		filter_note(p->nat_addr, p->nat_port, p->iph, &p->l4, remote_port_of(&p->l4, 1), p->now);
	return VERDICT_NEXT;
}

/*
 * hairpin delivers a subscriber's packet to another subscriber's public
 * address and port (RFC 4787 REQ-9, RFC 5382 REQ-8): the source is mapped
 * as for the internet, the destination as for an inbound packet, so the
 * receiver sees the sender's public address and port.
 */
static __always_inline int hairpin(struct pkt *p)
{
	struct iphdr *iph = p->iph;
	struct l4 *l4 = &p->l4;
	struct flow_key rkey = { .addr = iph->daddr, .proto = l4->proto };
	struct l4 in = *l4;
	struct flow_rev *rev;

	if (l4->proto == IPPROTO_ICMP)
		/* An echo to a pool address has no mapping on the far side. */
		return STAT_DROP_NO_MAPPING;
	/* The destination port is the word after the source port. */
	in.port = (__be16 *)((void *)l4->port + 2);
	rkey.port = *in.port;
	rev = bpf_map_lookup_elem(&flows_rev, &rkey);
	if (!rev)
		return STAT_DROP_NO_MAPPING;
	if (!(rev->flags & FLOW_REV_OPEN) && !filter_allows(p->nat_addr, p->nat_port, iph->daddr, rkey.port, l4->proto))
		return STAT_DROP_FILTERED;
	rewrite(iph, &iph->saddr, l4, p->nat_addr, p->nat_port);
	rewrite(iph, &iph->daddr, &in, rev->addr, rev->port);
	return STAT_HAIRPIN;
}

static __always_inline int inside_rewrite(struct pkt *p)
{
	if (p->to_pool)
		return hairpin(p);
	rewrite(p->iph, &p->iph->saddr, &p->l4, p->nat_addr, p->nat_port);
	return VERDICT_FORWARD;
}

static __always_inline int inside_path(struct pkt *p)
{
	STEP(parse_ip(p));
	STEP(inside_screen(p));
	STEP(inside_route(p));
	STEP(inside_source(p));
	STEP(inside_exempt(p));
	STEP(inside_fragments(p));
	STEP(l4_parse(p));
	STEP(inside_flow(p));
	STEP(inside_filter(p));
	return inside_rewrite(p);
}

SEC("xdp")
int xdp_inside(struct xdp_md *ctx)
{
	struct pkt p;

	pkt_init(&p, ctx, 1);
	return finish(&p, inside_path(&p));
}

/* ---- xdp_outside: internet to subscriber ---- */

/* outside_screen: only packets to a pool address are ours; before anything
 * is translated, fragments and ICMP errors included, a source that cannot
 * come from the internet is dropped. */
static __always_inline int outside_screen(struct pkt *p)
{
	struct iphdr *iph = p->iph;

	if (!bpf_map_lookup_elem(&pool_index, &iph->daddr))
		return STAT_PASS_NOT_POOL;
	if (martian_src(iph->saddr))
		return STAT_DROP_MARTIAN_SRC;
	if (iph->ttl <= 1)
		return STAT_PASS_TTL;
	return VERDICT_NEXT;
}

/* outside_fragments: a later fragment carries no port, so it is translated
 * by its datagram's identity, which the first fragment recorded in frags. */
static __always_inline int outside_fragments(struct pkt *p)
{
	struct iphdr *iph = p->iph;
	struct frag_val *fv;
	__be32 from;

	p->frk.saddr = iph->saddr;
	p->frk.daddr = iph->daddr;
	p->frk.id = iph->id;
	p->frk.proto = iph->protocol;
	p->frk.pad = 0;
	if (!(iph->frag_off & bpf_htons(IP_OFFSET))) {
		p->first_frag = (iph->frag_off & bpf_htons(IP_MF)) != 0;
		return VERDICT_NEXT;
	}
	fv = bpf_map_lookup_elem(&frags, &p->frk);
	if (!fv || bpf_ktime_get_coarse_ns() - fv->seen_ns > FRAG_TIMEOUT_NS)
		return STAT_DROP_FRAGMENT;
	from = iph->daddr;
	iph->daddr = fv->addr;
	iph->check = csum_replace4(iph->check, from, fv->addr);
	p->translated = 1;
	return STAT_FRAGMENTS;
}

/*
 * outside_icmp_error translates an ICMP error about a packet the NAT sent
 * out (RFC 5508): the quoted packet's source is a public address and port,
 * so the reverse table names the subscriber. The outer destination must be
 * that same public address, or the error is forged or misrouted. A first
 * fragment is not taken for an error: its quote may be cut.
 */
static __always_inline int outside_icmp_error(struct pkt *p)
{
	struct iphdr *iph = p->iph;
	struct icmphdr *icmph = p->c.pos;
	struct icmp_quote q;
	struct flow_key rkey = {};
	struct flow_rev *rev;
	__be32 from;

	if (p->proto != IPPROTO_ICMP || p->first_frag)
		return VERDICT_NEXT;
	if ((void *)(icmph + 1) > p->data_end)
		return STAT_DROP_MALFORMED;
	if (!icmp_is_error(icmph->type))
		return VERDICT_NEXT;
	if (parse_icmp_quote((void *)(icmph + 1), p->data_end, &q) < 0)
		return STAT_DROP_ICMP_ERROR;
	if (q.iph->saddr != iph->daddr)
		return STAT_DROP_ICMP_ERROR;
	rkey.addr = q.iph->saddr;
	rkey.port = *q.port;
	rkey.proto = q.proto;
	rev = bpf_map_lookup_elem(&flows_rev, &rkey);
	if (!rev)
		return STAT_DROP_ICMP_ERROR;
	if (filter_apdf && !(rev->flags & FLOW_REV_OPEN)) {
		/* The error may come from any router on the path (RFC 4787
		 * REQ-12a), but it must be about a remote the mapping sent
		 * to: the quoted destination. */
		__be16 remote_port = 0;

		if (q.proto != IPPROTO_ICMP)
			remote_port = *(q.port + 1);
		if (!filter_allows(q.iph->daddr, remote_port, rkey.addr, rkey.port, q.proto))
			return STAT_DROP_FILTERED;
	}
	icmp_quote_rewrite(icmph, &q, rev->addr, rev->port);
	from = iph->daddr;
	iph->daddr = rev->addr;
	iph->check = csum_replace4(iph->check, from, rev->addr);
	p->translated = 1;
	p->bytes = 0; /* an ICMP error counts as a packet, not by its bytes */
	return STAT_ICMP_ERRORS_IN;
}

/* outside_flow: the reverse key (proto, public address, public port) names
 * the subscriber; unsolicited traffic creates no state. */
static __always_inline int outside_flow(struct pkt *p)
{
	struct flow_key rkey = { .addr = p->iph->daddr, .port = *p->l4.port, .proto = p->l4.proto };

	p->rev = bpf_map_lookup_elem(&flows_rev, &rkey);
	if (!p->rev)
		return STAT_DROP_NO_MAPPING;
	return VERDICT_NEXT;
}

/* outside_filter: a mapping a PCP MAP holds open takes inbound from
 * anyone, as an endpoint-independent filter would (RFC 6887 §11). */
static __always_inline int outside_filter(struct pkt *p)
{
	struct iphdr *iph = p->iph;

	if (p->rev->flags & FLOW_REV_OPEN)
		return VERDICT_NEXT;
	if (!filter_allows(iph->saddr, remote_port_of(&p->l4, 0), iph->daddr, *p->l4.port, p->l4.proto))
		return STAT_DROP_FILTERED;
	return VERDICT_NEXT;
}

/* outside_track: the forward entry holds the state and the clock. A close
 * from the peer shortens the mapping (and the peer's ACKs count towards
 * reopening a closing one), and inbound UDP refreshes it only when
 * configured. Everything else inbound leaves the forward entry alone. */
static __always_inline int outside_track(struct pkt *p)
{
	struct flow_rev *rev = p->rev;
	struct l4 *l4 = &p->l4;
	struct flow_key fkey = { .addr = rev->addr, .port = rev->port, .proto = l4->proto };
	struct flow_fwd *fwd;

	if (!((l4->proto == IPPROTO_TCP && ((l4->tcp_flags & (TF_FIN | TF_RST)) || rev->closing)) ||
	      (l4->proto == IPPROTO_UDP && udp_inbound_refresh)))
		return VERDICT_NEXT;
	fwd = bpf_map_lookup_elem(&flows_fwd, &fkey);
	if (!fwd)
		return VERDICT_NEXT;
	if (l4->proto != IPPROTO_TCP)
		flow_touch(fwd, bpf_ktime_get_coarse_ns());
	else if (fwd->peer_addr == p->iph->saddr && fwd->peer_port == remote_port_of(l4, 0))
		tcp_track(fwd, rev, l4->tcp_flags, 0);
	return VERDICT_NEXT;
}

static __always_inline int outside_rewrite(struct pkt *p)
{
	struct flow_rev *rev = p->rev;

	if (p->first_frag) {
		struct frag_val fv = { .addr = rev->addr, .seen_ns = bpf_ktime_get_coarse_ns() };

		bpf_map_update_elem(&frags, &p->frk, &fv, BPF_ANY);
		stat_inc(STAT_FRAGMENTS);
	}
	rewrite(p->iph, &p->iph->daddr, &p->l4, rev->addr, rev->port);
	p->translated = 1;
	return VERDICT_FORWARD;
}

static __always_inline int outside_path(struct pkt *p)
{
	STEP(parse_ip(p));
	STEP(outside_screen(p));
	STEP(outside_fragments(p));
	STEP(outside_icmp_error(p));
	STEP(l4_parse(p));
	STEP(outside_flow(p));
	STEP(outside_filter(p));
	STEP(outside_track(p));
	return outside_rewrite(p);
}

SEC("xdp")
int xdp_outside(struct xdp_md *ctx)
{
	struct pkt p;

	pkt_init(&p, ctx, 0);
	return finish(&p, outside_path(&p));
}

/* ---- pcp_map: the PCP server's mappings ---- */

/*
 * pcp_map makes the mapping a PCP or NAT-PMP request asks for, or takes
 * over the one traffic already made, with the same tables, port search and
 * block activation as a packet's new flow: a mapping the server grants is
 * recorded exactly like one traffic makes. It is never attached: the agent
 * runs it with BPF_PROG_TEST_RUN, and its input "packet" is a struct
 * pcp_op, which it answers in place. Only the subscriber's own block is
 * used (never an overflow block): a port a subscriber publishes must stay
 * its own for as long as it asks.
 */
static __always_inline int pcp_do(struct pcp_op *op)
{
	struct flow_key fkey = op->key;
	__u32 sub = op->subscriber;
	__u32 pool_slot = sub / sharing_ratio;
	__u16 base = port_lo + (sub % sharing_ratio) * block_size;
	__u64 now = bpf_ktime_get_coarse_ns();
	struct port_probe pp = {
		.rkey = { .proto = fkey.proto },
		.rev = { .addr = fkey.addr, .port = fkey.port, .subscriber = sub,
			 .flags = (op->flags & PCP_OP_OPEN) ? FLOW_REV_OPEN : 0 },
	};
	struct flow_fwd made = {};
	struct flow_fwd *fwd;
	struct flow_rev *rev;
	__be32 *public;
	__u16 port;
	long err;

	if ((fkey.proto != IPPROTO_TCP && fkey.proto != IPPROTO_UDP) || fkey.pad || !fkey.port)
		return PCP_OP_BAD_REQUEST;
	if (subscriber_of(fkey.addr) != sub)
		return PCP_OP_BAD_REQUEST;
	public = bpf_map_lookup_elem(&pool_addrs, &pool_slot);
	if (!public)
		return PCP_OP_TABLE;
	pp.rkey.addr = *public;

	fwd = bpf_map_lookup_elem(&flows_fwd, &fkey);
	if (fwd) {
		port = bpf_ntohs(fwd->nat_port);
		if (fwd->nat_addr != *public || port < base || port - base >= block_size)
			return PCP_OP_NOT_OWN_BLOCK;
		flow_touch(fwd, now);
		if (op->flags & PCP_OP_OPEN) {
			pp.rkey.port = fwd->nat_port;
			rev = bpf_map_lookup_elem(&flows_rev, &pp.rkey);
			if (!rev)
				return PCP_OP_RACE; /* being expired: ask again */
			if (!(rev->flags & FLOW_REV_OPEN))
				rev->flags |= FLOW_REV_OPEN;
		}
		block_activate(sub, fkey.addr, *public, base, now);
		op->adopted = 1;
		op->nat_addr = fwd->nat_addr;
		op->nat_port = fwd->nat_port;
		return PCP_OP_OK;
	}

	err = -EEXIST;
	port = bpf_ntohs(op->suggested);
	if (port >= base && port - base < block_size) {
		pp.rkey.port = op->suggested;
		err = bpf_map_update_elem(&flows_rev, &pp.rkey, &pp.rev, BPF_NOEXIST);
	}
	if (err == -EEXIST && (op->flags & PCP_OP_REQUIRED))
		return PCP_OP_TAKEN;
	if (err == -EEXIST)
		/* A request may search the whole block: it is rare, and a
		 * subscriber asking for a port should get one if any is free. */
		err = try_ports(&pp, base, block_size, block_size);
	if (err == -EEXIST)
		return PCP_OP_BLOCK_FULL;
	if (err)
		return PCP_OP_TABLE;

	made.last_seen = now >> FLOW_LAST_SEEN_SHIFT;
	made.nat_addr = pp.rkey.addr;
	made.nat_port = pp.rkey.port;
	made.state = fkey.proto == IPPROTO_TCP ? FLOW_STATE_TCP_EST : FLOW_STATE_OTHER;
	made.subscriber = sub;
	if (bpf_map_update_elem(&flows_fwd, &fkey, &made, BPF_NOEXIST)) {
		bpf_map_delete_elem(&flows_rev, &pp.rkey);
		return PCP_OP_RACE;
	}
	block_activate(sub, fkey.addr, pp.rkey.addr, base, now);
	stat_inc(STAT_NEW_FLOWS);
	op->adopted = 0;
	op->nat_addr = pp.rkey.addr;
	op->nat_port = pp.rkey.port;
	return PCP_OP_OK;
}

SEC("xdp")
int pcp_map(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct pcp_op *op = data;

	if ((void *)(op + 1) > data_end)
		return XDP_ABORTED;
	op->result = pcp_do(op);
	return XDP_PASS;
}

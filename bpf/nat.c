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
#include "csum.h"
#include "parse.h"
#include "stats.h"
#include "maps.h"
#include "icmp.h"
#include "validate.h"

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

#ifndef AF_INET
#define AF_INET 2
#endif
#define IP_MF 0x2000
#define IP_DF 0x4000
#define IP_OFFSET 0x1fff
#define EEXIST 17

/*
 * The mapping's fixed parameters. They change only with a new epoch, which
 * loads a new program, so they are constants the verifier can see. The
 * loader sets every one; the defaults only make the object loadable alone.
 */
volatile const __u16 port_lo = 1024;
volatile const __u16 block_size = 64;
volatile const __u32 sharing_ratio = 1; /* subscribers per public address */
volatile const __u32 subscriber_count = 1;
volatile const __u32 epoch = 0;
/* Address-and-port-dependent filtering instead of endpoint-independent. */
volatile const __u8 filter_apdf = 0;
/* Let inbound UDP keep its mapping alive (RFC 4787 REQ-6). */
volatile const __u8 udp_inbound_refresh = 0;
/* The lowest and highest pool address, host order: outside this range a
 * destination is no pool address, which spares the hash lookup on almost
 * every outbound packet. */
volatile const __u32 pool_min = 0;
volatile const __u32 pool_max = 0xffffffff;
/* The lowest and highest inside address, host order: the same shortcut
 * for the inside prefixes' trie. */
volatile const __u32 inside_min = 0;
volatile const __u32 inside_max = 0xffffffff;

/* How long the translation of a datagram's first fragment serves its
 * later fragments. */
#define FRAG_TIMEOUT_NS (5ULL * 1000000000ULL)
/* At most one "host unreachable" per subscriber in this interval. */
#define BLOCK_FULL_ICMP_INTERVAL_NS (100ULL * 1000000ULL)

/* Bound on ports tried for a new mapping. Blocks up to this size are
 * searched completely; larger ones are nearly empty when this runs out. */
#define MAX_PORT_PROBES 64

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

#define TF_FIN 0x01
#define TF_SYN 0x02
#define TF_RST 0x04
#define TF_ACK 0x10

enum l4_verdict {
	L4_OK = 0,
	L4_MALFORMED = -1,
	L4_UNSUPPORTED = -2,
};

/*
 * parse_l4 finds the field to translate. outbound selects the source port
 * and ICMP echo requests; inbound selects the destination port and echo
 * replies. Other ICMP types are not translated here.
 */
static __always_inline int parse_l4(struct cursor *c, void *data_end, __u8 proto, int outbound,
				    struct l4 *l4)
{
	l4->proto = proto;
	switch (proto) {
	case IPPROTO_TCP: {
		struct tcphdr *th;

		if (parse_tcphdr(c, data_end, &th) < 0)
			return L4_MALFORMED;
		l4->port = outbound ? &th->source : &th->dest;
		l4->check = &th->check;
		l4->pseudo = 1;
		l4->tcp_flags = ((__u8 *)th)[13];
		return L4_OK;
	}
	case IPPROTO_UDP: {
		struct udphdr *uh;

		if (parse_udphdr(c, data_end, &uh) < 0)
			return L4_MALFORMED;
		l4->port = outbound ? &uh->source : &uh->dest;
		l4->check = uh->check ? &uh->check : 0;
		l4->pseudo = 1;
		l4->udp = 1;
		return L4_OK;
	}
	case IPPROTO_ICMP: {
		struct icmphdr *ih;
		int type = parse_icmphdr(c, data_end, &ih);

		if (type < 0)
			return L4_MALFORMED;
		if (type != (outbound ? ICMP_ECHO : ICMP_ECHOREPLY))
			return L4_UNSUPPORTED;
		l4->port = &ih->un.echo.id;
		l4->check = &ih->checksum;
		return L4_OK;
	}
	}
	return L4_UNSUPPORTED;
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

/* forward sends a translated packet on its way: straight out of the egress
 * interface when the fib knew the neighbour, else through the kernel. */
static __always_inline int forward(struct ethhdr *eth, struct iphdr *iph, struct bpf_fib_lookup *fib, int rc)
{
	if (rc != BPF_FIB_LKUP_RET_SUCCESS) {
		/* The kernel forwards the translated packet itself (it resolves
		 * the neighbour, fragments, or answers with ICMP). */
		stat_inc(STAT_PASS_FIB);
		return XDP_PASS;
	}
	ip_decrease_ttl(iph);
	__builtin_memcpy(eth->h_dest, fib->dmac, ETH_ALEN);
	__builtin_memcpy(eth->h_source, fib->smac, ETH_ALEN);
	/* The low bits of flags are the action when ifindex is not a
	 * redirect target: let the kernel forward it instead. */
	return bpf_redirect_map(&tx_ports, fib->ifindex, XDP_PASS);
}

/*
 * TCP state picks a mapping's timeout (RFC 5382, RFC 7857 2.2): a SYN starts
 * a handshake, an ACK establishes it, and a FIN or RST either way marks it
 * closing, which holds it for the transitory timeout instead of removing
 * it. Only the peer moves the state: the remote endpoint the mapping's
 * connection runs to, set when the mapping is made and by each outbound SYN
 * (a new connection from the same inside port). A stranger's RST or FIN to
 * a public port changes nothing, nor does the subscriber's answer to it (its
 * RST to a forged FIN goes to the stranger, not to the peer).
 *
 * Closing reverts to established when both sides go on exchanging plain
 * ACKs (no SYN, FIN or RST) after the last FIN or RST: CLOSE_ACKS_REVERT
 * each way. An orderly close, or a simultaneous one, sends at most one ACK
 * each way after the last FIN, so it stays closing; a connection that keeps
 * carrying data after a forged RST from the peer's address, which the
 * subscriber's stack refused (RFC 5961), is established again.
 */
#define CLOSE_ACKS_REVERT 2
#define CLOSE_ACKS_OUT_SHIFT 0
#define CLOSE_ACKS_IN_SHIFT 2

/* tcp_initial_state is the state of a mapping made by this packet. */
static __always_inline __u8 tcp_initial_state(__u8 flags)
{
	if (flags & (TF_FIN | TF_RST))
		return FLOW_STATE_TCP_CLOSING;
	if (flags & TF_SYN)
		return FLOW_STATE_TCP_TRANS;
	return FLOW_STATE_TCP_EST;
}

/*
 * tcp_set_state moves a mapping to state, writing only on a change, and
 * keeps the reverse entry's closing copy in step (rev may be NULL: it is
 * then looked up, which happens only on a change of closing).
 */
static __always_inline void tcp_set_state(struct flow_fwd *fwd, struct flow_rev *rev, __u8 state)
{
	__u8 closing = state == FLOW_STATE_TCP_CLOSING;

	if (fwd->close_acks)
		fwd->close_acks = 0;
	if (fwd->state == state)
		return;
	if ((fwd->state == FLOW_STATE_TCP_CLOSING) != closing && !rev) {
		struct flow_key rkey = { .addr = fwd->nat_addr, .port = fwd->nat_port, .proto = IPPROTO_TCP };

		rev = bpf_map_lookup_elem(&flows_rev, &rkey);
	}
	fwd->state = state;
	if (rev && rev->closing != closing)
		rev->closing = closing;
}

/* tcp_track moves the state for a packet from or to the peer; outbound
 * says which direction's ACKs it counts while closing. */
static __always_inline void tcp_track(struct flow_fwd *fwd, struct flow_rev *rev, __u8 flags, int outbound)
{
	__u8 shift = outbound ? CLOSE_ACKS_OUT_SHIFT : CLOSE_ACKS_IN_SHIFT;
	__u8 acks, mine;

	if (flags & (TF_FIN | TF_RST)) {
		tcp_set_state(fwd, rev, FLOW_STATE_TCP_CLOSING);
		return;
	}
	if (flags & TF_SYN) {
		if (outbound)
			tcp_set_state(fwd, rev, FLOW_STATE_TCP_TRANS);
		return;
	}
	if (fwd->state != FLOW_STATE_TCP_CLOSING) {
		/* Inbound packets never establish: only the subscriber's
		 * ACK says its side of the handshake is done. */
		if (outbound && fwd->state != FLOW_STATE_TCP_EST)
			tcp_set_state(fwd, rev, FLOW_STATE_TCP_EST);
		return;
	}
	if (!(flags & TF_ACK))
		return;
	acks = fwd->close_acks;
	mine = (acks >> shift) & 3;
	if (mine >= CLOSE_ACKS_REVERT)
		return;
	acks += 1 << shift;
	if (((acks >> CLOSE_ACKS_OUT_SHIFT) & 3) >= CLOSE_ACKS_REVERT &&
	    ((acks >> CLOSE_ACKS_IN_SHIFT) & 3) >= CLOSE_ACKS_REVERT) {
		tcp_set_state(fwd, rev, FLOW_STATE_TCP_EST);
		return;
	}
	fwd->close_acks = acks;
}

/* tcp_track_out follows an outbound TCP packet to (daddr, dport). */
static __always_inline void tcp_track_out(struct flow_fwd *fwd, __be32 daddr, __be16 dport, __u8 flags)
{
	if ((flags & TF_SYN) && !(flags & (TF_FIN | TF_RST))) {
		/* A new connection on this mapping: its remote is the peer. */
		if (fwd->peer_addr != daddr)
			fwd->peer_addr = daddr;
		if (fwd->peer_port != dport)
			fwd->peer_port = dport;
	} else if (fwd->peer_addr != daddr || fwd->peer_port != dport) {
		return;
	}
	tcp_track(fwd, 0, flags, 1);
}

/*
 * subscriber_of maps an inside address to its subscriber number, or returns
 * -1 if the address is in no inside prefix (a spoofed or stray source).
 */
static __always_inline __s64 subscriber_of(__be32 addr)
{
	struct lpm_v4_key key = { .prefixlen = 32, .addr = addr };
	struct inside_prefix *p = bpf_map_lookup_elem(&inside_prefixes, &key);
	__u32 sub;

	if (!p)
		return -1;
	sub = p->first_subscriber + (bpf_ntohl(addr) - p->network);
	if (sub >= subscriber_count)
		return -1;
	return sub;
}

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

/* in_inside_prefix says whether addr lies in an inside prefix. */
static __always_inline int in_inside_prefix(__be32 addr)
{
	struct lpm_v4_key key = { .prefixlen = 32, .addr = addr };
	__u32 host = bpf_ntohl(addr);

	if (host < inside_min || host > inside_max)
		return 0;
	return bpf_map_lookup_elem(&inside_prefixes, &key) != 0;
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
	if (src >= pool_min && src <= pool_max && bpf_map_lookup_elem(&pool_index, &saddr))
		return 1;
	return in_inside_prefix(saddr);
}

/*
 * block_activate marks a subscriber's block active and, for the first flow
 * of an idle block only, reports it. The compare-and-swap makes exactly one
 * CPU report a block that several CPUs touch at once.
 */
static __always_inline void block_activate(__u32 sub, __be32 inside, __be32 public, __u16 base, __u64 now)
{
	struct subscriber_state *s = bpf_map_lookup_elem(&subscribers, &sub);
	struct block_event *e;
	__u64 since;

	if (!s)
		return;
	if (s->last_active_ns != now)
		s->last_active_ns = now;
	if (s->active)
		return;
	if (__sync_val_compare_and_swap(&s->active, 0, 1) != 0)
		return;
	since = bpf_ktime_get_ns();
	s->active_since_ns = since;
	stat_inc(STAT_BLOCK_ACTIVATIONS);
	e = bpf_ringbuf_reserve(&block_events, sizeof(*e), 0);
	if (!e) {
		/* The reconciler still finds the block, and when it began:
		 * both are in the subscriber's state above. */
		stat_inc(STAT_RINGBUF_FULL);
		return;
	}
	e->time_ns = since;
	e->subscriber = sub;
	e->inside_addr = inside;
	e->public_addr = public;
	e->port_lo = base;
	e->port_hi = base + block_size - 1;
	e->epoch = epoch;
	e->kind = BLOCK_EVENT_ACTIVATE;
	bpf_ringbuf_submit(e, 0);
}

static __always_inline void count_block_full(__u32 sub)
{
	struct subscriber_state *s = bpf_map_lookup_elem(&subscribers, &sub);

	if (s)
		__sync_fetch_and_add(&s->block_full_drops, 1);
}

/*
 * flow_create maps (inside addr, port, proto) to a free port of the
 * subscriber's block. The reverse entry is claimed first with BPF_NOEXIST,
 * which is what makes a port ours; the forward entry follows, and the
 * reverse one is rolled back if that fails. Returns the forward entry, or
 * NULL with *drop_reason set.
 */
static __always_inline struct flow_fwd *flow_create(struct flow_key *fkey, __u32 sub, __u8 state, __be32 peer_addr,
						   __be16 peer_port, __u64 now, __u32 *drop_reason)
{
	__u32 pool_slot = sub / sharing_ratio;
	__u16 base = port_lo + (sub % sharing_ratio) * block_size;
	__u32 start = bpf_get_prandom_u32() % block_size;
	struct flow_rev rev = { .addr = fkey->addr, .port = fkey->port, .subscriber = sub,
				.closing = state == FLOW_STATE_TCP_CLOSING };
	struct flow_key rkey = { .proto = fkey->proto };
	struct flow_fwd fwd = {};
	struct flow_fwd *found;
	__be32 *public;
	__u32 i;
	long err;

	public = bpf_map_lookup_elem(&pool_addrs, &pool_slot);
	if (!public) {
		*drop_reason = STAT_DROP_FLOW_TABLE;
		return 0;
	}
	rkey.addr = *public;

	for (i = 0; i < MAX_PORT_PROBES; i++) {
		__u32 off;

		if (i >= block_size)
			break;
		off = start + i;
		if (off >= block_size)
			off -= block_size;
		rkey.port = bpf_htons(base + off);
		err = bpf_map_update_elem(&flows_rev, &rkey, &rev, BPF_NOEXIST);
		if (!err)
			goto claimed;
		if (err != -EEXIST) {
			*drop_reason = STAT_DROP_FLOW_TABLE;
			return 0;
		}
	}
	count_block_full(sub);
	*drop_reason = STAT_DROP_BLOCK_FULL;
	return 0;

claimed:
	fwd.last_seen_ns = now;
	fwd.nat_addr = rkey.addr;
	fwd.nat_port = rkey.port;
	fwd.state = state;
	fwd.subscriber = sub;
	fwd.peer_addr = peer_addr;
	fwd.peer_port = peer_port;
	err = bpf_map_update_elem(&flows_fwd, fkey, &fwd, BPF_NOEXIST);
	if (err) {
		bpf_map_delete_elem(&flows_rev, &rkey);
		/* Another CPU mapped the same flow first: use its port. */
		found = bpf_map_lookup_elem(&flows_fwd, fkey);
		if (!found)
			*drop_reason = STAT_DROP_FLOW_TABLE;
		return found;
	}
	stat_inc(STAT_NEW_FLOWS);
	block_activate(sub, fkey->addr, rkey.addr, base, now);
	return bpf_map_lookup_elem(&flows_fwd, fkey);
}

/* block_full_icmp answers a refused new flow with "host unreachable",
 * at most once per interval per subscriber (RFC 6888 REQ-11). */
static __always_inline int block_full_icmp(struct xdp_md *ctx, __u32 sub, __u64 now)
{
	struct subscriber_state *s = bpf_map_lookup_elem(&subscribers, &sub);

	if (!s || now - s->last_icmp_ns < BLOCK_FULL_ICMP_INTERVAL_NS)
		return XDP_DROP;
	s->last_icmp_ns = now;
	if (icmp_host_unreachable(ctx) < 0)
		return XDP_DROP;
	stat_inc(STAT_ICMP_BLOCK_FULL);
	/* Back out of the interface it came in on, through the devmap like
	 * every forwarded frame: on veth, XDP_TX of this frame never reached
	 * the peer in testing, while the redirect does. */
	return bpf_redirect_map(&tx_ports, ctx->ingress_ifindex, XDP_DROP);
}

/* filter_note remembers that a mapping sent to a remote endpoint; only
 * address-and-port-dependent filtering needs it. */
static __always_inline void filter_note(struct flow_fwd *fwd, struct iphdr *iph, struct l4 *l4, __be16 remote_port,
					__u64 now)
{
	struct filter_key k = { .nat_addr = fwd->nat_addr, .remote_addr = iph->daddr, .nat_port = fwd->nat_port,
				.remote_port = remote_port, .proto = l4->proto };
	__u64 *seen = bpf_map_lookup_elem(&filters, &k);

	if (seen) {
		if (*seen != now)
			*seen = now;
		return;
	}
	bpf_map_update_elem(&filters, &k, &now, BPF_ANY);
}

/* filter_allows says whether an inbound packet from (saddr, sport) to
 * the mapping (daddr, dport) passes the configured filtering. */
static __always_inline int filter_allows(__be32 saddr, __be16 sport, __be32 daddr, __be16 dport, __u8 proto)
{
	struct filter_key k = { .nat_addr = daddr, .remote_addr = saddr, .nat_port = dport, .remote_port = sport,
				.proto = proto };

	if (!filter_apdf)
		return 1;
	return bpf_map_lookup_elem(&filters, &k) != 0;
}

/* remote_port is the port of the far end in the filter key: the other
 * port of TCP and UDP, none for ICMP echo (the id is the mapping's port). */
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
 * hairpin delivers a subscriber's packet to another subscriber's public
 * address and port (RFC 4787 REQ-9, RFC 5382 REQ-8): the source is mapped
 * as for the internet, the destination as for an inbound packet, so the
 * receiver sees the sender's public address and port.
 */
static __always_inline int hairpin(struct xdp_md *ctx, struct ethhdr *eth, struct iphdr *iph, struct l4 *l4,
				   struct flow_fwd *fwd)
{
	struct bpf_fib_lookup fib;
	struct flow_key rkey = { .addr = iph->daddr, .proto = l4->proto };
	struct l4 in = *l4;
	struct flow_rev *rev;
	__be16 src_port_new = fwd->nat_port;
	int rc;

	if (l4->proto == IPPROTO_ICMP) {
		/* An echo to a pool address has no mapping on the far side. */
		stat_inc(STAT_DROP_NO_MAPPING);
		return XDP_DROP;
	}
	/* The destination port is the word after the source port. */
	in.port = (__be16 *)((void *)l4->port + 2);
	rkey.port = *in.port;
	rev = bpf_map_lookup_elem(&flows_rev, &rkey);
	if (!rev) {
		stat_inc(STAT_DROP_NO_MAPPING);
		return XDP_DROP;
	}
	if (!filter_allows(fwd->nat_addr, src_port_new, iph->daddr, rkey.port, l4->proto)) {
		stat_inc(STAT_DROP_FILTERED);
		return XDP_DROP;
	}
	rewrite(iph, &iph->saddr, l4, fwd->nat_addr, src_port_new);
	rewrite(iph, &iph->daddr, &in, rev->addr, rev->port);
	stat_inc(STAT_HAIRPIN);
	rc = fib_lookup(ctx, iph, bpf_ntohs(iph->tot_len), &fib);
	return forward(eth, iph, &fib, rc);
}

SEC("xdp")
int xdp_inside(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct cursor c = { .pos = data };
	struct bpf_fib_lookup fib;
	struct flow_key fkey = {};
	struct flow_fwd *fwd;
	struct ethhdr *eth;
	struct iphdr *iph;
	struct l4 l4 = {};
	__u32 *role, drop_reason;
	__u64 now;
	__s64 sub;
	__u8 state;
	__u32 dst_host;
	int proto, rc, to_pool;

	if (parse_ethhdr(&c, data_end, &eth) != ETH_P_IP) {
		stat_inc(STAT_PASS_NOT_IPV4);
		return XDP_PASS;
	}
	proto = parse_iphdr(&c, data_end, &iph);
	if (proto < 0) {
		stat_inc(STAT_DROP_MALFORMED);
		return XDP_DROP;
	}
	/* First: nothing below may route, translate or call spoofed what
	 * only the kernel may see, a later fragment of it included. Before
	 * the TTL check too, since link-local multicast (IGMP, OSPF, VRRP)
	 * is sent with TTL 1 and is no "time exceeded" case. */
	dst_host = bpf_ntohl(iph->daddr);
	if (local_service(dst_host, iph->saddr)) {
		stat_inc(STAT_PASS_LOCAL_SERVICE);
		return XDP_PASS;
	}
	if (martian_dst(dst_host)) {
		stat_inc(STAT_DROP_MARTIAN_DST);
		return XDP_DROP;
	}
	if (iph->ttl <= 1) {
		stat_inc(STAT_PASS_TTL);
		return XDP_PASS;
	}

	/* A pool address is another subscriber's: hairpin, whatever the
	 * routing table says about it. */
	to_pool = dst_host >= pool_min && dst_host <= pool_max &&
		  bpf_map_lookup_elem(&pool_index, &iph->daddr) != 0;
	if (!to_pool) {
		rc = fib_lookup(ctx, iph, bpf_ntohs(iph->tot_len), &fib);
		if (rc == BPF_FIB_LKUP_RET_FRAG_NEEDED) {
			if (iph->frag_off & bpf_htons(IP_DF)) {
				/* The kernel answers "fragmentation needed"
				 * to the subscriber, which is only right
				 * untranslated. */
				stat_inc(STAT_PASS_FRAG_NEEDED);
				return XDP_PASS;
			}
			/* Translated below and left to the kernel to fragment. */
			int again = fib_lookup(ctx, iph, 0, &fib);

			if (again != BPF_FIB_LKUP_RET_SUCCESS && again != BPF_FIB_LKUP_RET_NO_NEIGH)
				rc = again;
		}
		if (rc == BPF_FIB_LKUP_RET_NOT_FWDED) {
			stat_inc(STAT_PASS_LOCAL);
			return XDP_PASS;
		}
		if (rc != BPF_FIB_LKUP_RET_SUCCESS && rc != BPF_FIB_LKUP_RET_NO_NEIGH &&
		    rc != BPF_FIB_LKUP_RET_FRAG_NEEDED) {
			/* Unreachable, blackhole, prohibited: the kernel says so. */
			stat_inc(STAT_PASS_FIB);
			return XDP_PASS;
		}
		role = bpf_map_lookup_elem(&iface_roles, &fib.ifindex);
		if (!role || *role != IFACE_OUTSIDE) {
			stat_inc(STAT_PASS_NOT_NAT);
			return XDP_PASS;
		}
		/* An inside address the routes send to the internet has no
		 * subscriber on any inside link (an unassigned one, or a
		 * prefix not routed here): it cannot belong upstream. Inside
		 * addresses routed to an inside link are the kernel's to
		 * forward, above (pass_not_nat). */
		if (in_inside_prefix(iph->daddr)) {
			stat_inc(STAT_DROP_MARTIAN_DST);
			return XDP_DROP;
		}
	}

	/* Before any translation, the established path and later fragments
	 * included: a neighbour's existing mapping must not carry a spoofer's
	 * packets either. */
	if (!source_bound(ctx, eth, iph->saddr)) {
		stat_inc(STAT_DROP_SPOOFED_BINDING);
		return XDP_DROP;
	}

	if (iph->frag_off & bpf_htons(IP_OFFSET)) {
		/* A later fragment carries no port, but the subscriber's
		 * public address does not depend on one: translate it
		 * statelessly, so fragments arriving before the first are
		 * handled the same as those after it. */
		struct subscriber_state *ss;
		__u32 slot, sub_key;
		__be32 *public, from;

		sub = subscriber_of(iph->saddr);
		if (sub < 0) {
			stat_inc(STAT_DROP_SPOOFED);
			return XDP_DROP;
		}
		if (to_pool) {
			stat_inc(STAT_DROP_FRAGMENT);
			return XDP_DROP;
		}
		/* Only under an active block, which has a record: nothing
		 * leaves under a public address that no record names. */
		sub_key = (__u32)sub;
		ss = bpf_map_lookup_elem(&subscribers, &sub_key);
		if (!ss || !ss->active) {
			stat_inc(STAT_DROP_FRAGMENT_INACTIVE);
			return XDP_DROP;
		}
		slot = (__u32)sub / sharing_ratio;
		public = bpf_map_lookup_elem(&pool_addrs, &slot);
		if (!public) {
			stat_inc(STAT_DROP_FLOW_TABLE);
			return XDP_DROP;
		}
		from = iph->saddr;
		iph->saddr = *public;
		iph->check = csum_replace4(iph->check, from, *public);
		stat_inc(STAT_FRAGMENTS);
		stat_inc(STAT_OUT_PACKETS);
		stat_add(STAT_OUT_BYTES, data_end - data);
		return forward(eth, iph, &fib, rc);
	}

	if (iph->frag_off & bpf_htons(IP_MF))
		stat_inc(STAT_FRAGMENTS); /* a first fragment: its L4 header is here */

	switch (parse_l4(&c, data_end, proto, 1, &l4)) {
	case L4_OK:
		break;
	case L4_MALFORMED:
		stat_inc(STAT_DROP_MALFORMED);
		return XDP_DROP;
	default:
		stat_inc(STAT_DROP_UNSUPPORTED);
		return XDP_DROP;
	}

	now = bpf_ktime_get_coarse_ns();
	fkey.addr = iph->saddr;
	fkey.port = *l4.port;
	fkey.proto = l4.proto;
	fwd = bpf_map_lookup_elem(&flows_fwd, &fkey);
	if (fwd) {
		/* A forward entry exists only for a source that passed the
		 * prefix check when it was created, so the established path
		 * skips the LPM lookup. Fields are written only when they
		 * change: the coarse clock ticks per jiffy, so most packets
		 * leave the cache line clean. */
		if (fwd->last_seen_ns != now)
			fwd->last_seen_ns = now;
		if (l4.proto == IPPROTO_TCP)
			tcp_track_out(fwd, iph->daddr, remote_port_of(&l4, 1), l4.tcp_flags);
	} else {
		__be32 peer_addr = 0;
		__be16 peer_port = 0;

		sub = subscriber_of(iph->saddr);
		if (sub < 0) {
			stat_inc(STAT_DROP_SPOOFED);
			return XDP_DROP;
		}
		state = FLOW_STATE_OTHER;
		if (l4.proto == IPPROTO_TCP) {
			state = tcp_initial_state(l4.tcp_flags);
			peer_addr = iph->daddr;
			peer_port = remote_port_of(&l4, 1);
		}
		fwd = flow_create(&fkey, sub, state, peer_addr, peer_port, now, &drop_reason);
		if (!fwd) {
			stat_inc(drop_reason);
			if (drop_reason == STAT_DROP_BLOCK_FULL)
				return block_full_icmp(ctx, sub, now);
			return XDP_DROP;
		}
	}
	if (filter_apdf)
		filter_note(fwd, iph, &l4, remote_port_of(&l4, 1), now);

	stat_inc(STAT_OUT_PACKETS);
	stat_add(STAT_OUT_BYTES, data_end - data);
	if (to_pool)
		return hairpin(ctx, eth, iph, &l4, fwd);
	rewrite(iph, &iph->saddr, &l4, fwd->nat_addr, fwd->nat_port);
	return forward(eth, iph, &fib, rc);
}

/*
 * icmp_error_in translates an ICMP error about a packet the NAT sent out
 * (RFC 5508): the quoted packet's source is a public address and port, so
 * the reverse table names the subscriber. The outer destination must be
 * that same public address, or the error is forged or misrouted.
 */
static __always_inline int icmp_error_in(struct xdp_md *ctx, struct ethhdr *eth, struct iphdr *iph,
					 struct icmphdr *icmph, void *data_end)
{
	struct bpf_fib_lookup fib;
	struct icmp_quote q;
	struct flow_key rkey = {};
	struct flow_rev *rev;
	__be32 from;
	int rc;

	if (parse_icmp_quote((void *)(icmph + 1), data_end, &q) < 0) {
		stat_inc(STAT_DROP_ICMP_ERROR);
		return XDP_DROP;
	}
	if (q.iph->saddr != iph->daddr) {
		stat_inc(STAT_DROP_ICMP_ERROR);
		return XDP_DROP;
	}
	rkey.addr = q.iph->saddr;
	rkey.port = *q.port;
	rkey.proto = q.proto;
	rev = bpf_map_lookup_elem(&flows_rev, &rkey);
	if (!rev) {
		stat_inc(STAT_DROP_ICMP_ERROR);
		return XDP_DROP;
	}
	if (filter_apdf) {
		/* The error may come from any router on the path (RFC 4787
		 * REQ-12a), but it must be about a remote the mapping sent
		 * to: the quoted destination. */
		__be16 remote_port = 0;

		if (q.proto != IPPROTO_ICMP)
			remote_port = *(q.port + 1);
		if (!filter_allows(q.iph->daddr, remote_port, rkey.addr, rkey.port, q.proto)) {
			stat_inc(STAT_DROP_FILTERED);
			return XDP_DROP;
		}
	}
	icmp_quote_rewrite(icmph, &q, rev->addr, rev->port);
	from = iph->daddr;
	iph->daddr = rev->addr;
	iph->check = csum_replace4(iph->check, from, rev->addr);
	stat_inc(STAT_ICMP_ERRORS_IN);
	stat_inc(STAT_IN_PACKETS);
	rc = fib_lookup(ctx, iph, bpf_ntohs(iph->tot_len), &fib);
	return forward(eth, iph, &fib, rc);
}

SEC("xdp")
int xdp_outside(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct cursor c = { .pos = data };
	struct bpf_fib_lookup fib;
	struct flow_key rkey = {};
	struct frag_key frk = {};
	struct flow_rev *rev;
	struct ethhdr *eth;
	struct iphdr *iph;
	struct l4 l4 = {};
	int proto, rc, first_frag;
	__u64 now;

	if (parse_ethhdr(&c, data_end, &eth) != ETH_P_IP) {
		stat_inc(STAT_PASS_NOT_IPV4);
		return XDP_PASS;
	}
	proto = parse_iphdr(&c, data_end, &iph);
	if (proto < 0) {
		stat_inc(STAT_DROP_MALFORMED);
		return XDP_DROP;
	}
	if (!bpf_map_lookup_elem(&pool_index, &iph->daddr)) {
		stat_inc(STAT_PASS_NOT_POOL);
		return XDP_PASS;
	}
	/* Before anything is translated, fragments and ICMP errors included. */
	if (martian_src(iph->saddr)) {
		stat_inc(STAT_DROP_MARTIAN_SRC);
		return XDP_DROP;
	}
	if (iph->ttl <= 1) {
		stat_inc(STAT_PASS_TTL);
		return XDP_PASS;
	}

	frk.saddr = iph->saddr;
	frk.daddr = iph->daddr;
	frk.id = iph->id;
	frk.proto = iph->protocol;
	if (iph->frag_off & bpf_htons(IP_OFFSET)) {
		/* A later fragment: only the first carried the port, so its
		 * translation is looked up by the datagram's identity. */
		struct frag_val *fv = bpf_map_lookup_elem(&frags, &frk);
		__be32 from;

		if (!fv || bpf_ktime_get_coarse_ns() - fv->seen_ns > FRAG_TIMEOUT_NS) {
			stat_inc(STAT_DROP_FRAGMENT);
			return XDP_DROP;
		}
		from = iph->daddr;
		iph->daddr = fv->addr;
		iph->check = csum_replace4(iph->check, from, fv->addr);
		stat_inc(STAT_FRAGMENTS);
		stat_inc(STAT_IN_PACKETS);
		stat_add(STAT_IN_BYTES, data_end - data);
		rc = fib_lookup(ctx, iph, bpf_ntohs(iph->tot_len), &fib);
		return forward(eth, iph, &fib, rc);
	}
	first_frag = (iph->frag_off & bpf_htons(IP_MF)) != 0;

	if (proto == IPPROTO_ICMP && !first_frag) {
		struct icmphdr *icmph = c.pos;

		if ((void *)(icmph + 1) > data_end) {
			stat_inc(STAT_DROP_MALFORMED);
			return XDP_DROP;
		}
		if (icmp_is_error(icmph->type))
			return icmp_error_in(ctx, eth, iph, icmph, data_end);
	}

	switch (parse_l4(&c, data_end, proto, 0, &l4)) {
	case L4_OK:
		break;
	case L4_MALFORMED:
		stat_inc(STAT_DROP_MALFORMED);
		return XDP_DROP;
	default:
		stat_inc(STAT_DROP_UNSUPPORTED);
		return XDP_DROP;
	}

	rkey.addr = iph->daddr;
	rkey.port = *l4.port;
	rkey.proto = l4.proto;
	rev = bpf_map_lookup_elem(&flows_rev, &rkey);
	if (!rev) {
		/* Unsolicited: no state is created for it. */
		stat_inc(STAT_DROP_NO_MAPPING);
		return XDP_DROP;
	}
	if (!filter_allows(iph->saddr, remote_port_of(&l4, 0), iph->daddr, rkey.port, l4.proto)) {
		stat_inc(STAT_DROP_FILTERED);
		return XDP_DROP;
	}
	if ((l4.proto == IPPROTO_TCP && ((l4.tcp_flags & (TF_FIN | TF_RST)) || rev->closing)) ||
	    (l4.proto == IPPROTO_UDP && udp_inbound_refresh)) {
		/* The forward entry holds the state and the clock: a close
		 * from the peer shortens the mapping (and the peer's ACKs
		 * count towards reopening a closing one), and inbound UDP
		 * refreshes it only when configured. Everything else inbound
		 * leaves the forward entry alone. */
		struct flow_key fkey = { .addr = rev->addr, .port = rev->port, .proto = l4.proto };
		struct flow_fwd *fwd = bpf_map_lookup_elem(&flows_fwd, &fkey);

		if (fwd) {
			if (l4.proto != IPPROTO_TCP)
				fwd->last_seen_ns = bpf_ktime_get_coarse_ns();
			else if (fwd->peer_addr == iph->saddr && fwd->peer_port == remote_port_of(&l4, 0))
				tcp_track(fwd, rev, l4.tcp_flags, 0);
		}
	}

	if (first_frag) {
		struct frag_val fv = { .addr = rev->addr };

		now = bpf_ktime_get_coarse_ns();
		fv.seen_ns = now;
		bpf_map_update_elem(&frags, &frk, &fv, BPF_ANY);
		stat_inc(STAT_FRAGMENTS);
	}

	rewrite(iph, &iph->daddr, &l4, rev->addr, rev->port);
	stat_inc(STAT_IN_PACKETS);
	stat_add(STAT_IN_BYTES, data_end - data);
	rc = fib_lookup(ctx, iph, bpf_ntohs(iph->tot_len), &fib);
	return forward(eth, iph, &fib, rc);
}

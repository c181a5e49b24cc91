/* SPDX-License-Identifier: (GPL-2.0-only OR MIT) */
/*
 * The flow step: endpoint-independent mappings (RFC 4787 REQ-1) in the
 * subscriber's deterministic block (RFC 7422), the TCP state that picks a
 * mapping's timeout, and block activation, the only thing ever reported.
 */
#ifndef BLOCKNAT_FLOW_H
#define BLOCKNAT_FLOW_H

#include <linux/bpf.h>
#include <linux/in.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>
#include "config.h"
#include "icmp.h"
#include "maps.h"
#include "pkt.h"
#include "stats.h"
#include "types.h"

#define EEXIST 17
#define EINVAL 22

/* At most one "host unreachable" per subscriber in this interval. */
#define BLOCK_FULL_ICMP_INTERVAL_NS (100ULL * 1000000ULL)

/* Bound on ports tried for a new mapping. Blocks up to this size are
 * searched completely; larger ones are nearly empty when this runs out. */
#define MAX_PORT_PROBES 64

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

/* flow_touch refreshes a mapping's clock when its unit (enum flow_clock)
 * has changed, the resolution the sweeper allows for: most packets of a
 * busy mapping then leave its entry unwritten. */
static __always_inline void flow_touch(struct flow_fwd *fwd, __u64 now)
{
	__u32 unit = now >> FLOW_LAST_SEEN_SHIFT;

	if (fwd->last_seen != unit)
		fwd->last_seen = unit;
}

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

/* report_block reports that sub began to hold [lo, hi] of public at since:
 * the only thing the data plane ever tells user space. A full ring buffer
 * is counted; the reconciler finds the block in the kernel's tables. */
static __always_inline void report_block(__u32 sub, __be32 inside, __be32 public, __u16 lo, __u16 hi, __u64 since)
{
	struct block_event *e = bpf_ringbuf_reserve(&block_events, sizeof(*e), 0);

	if (!e) {
		stat_inc(STAT_RINGBUF_FULL);
		return;
	}
	e->time_ns = since;
	e->subscriber = sub;
	e->inside_addr = inside;
	e->public_addr = public;
	e->port_lo = lo;
	e->port_hi = hi;
	e->epoch = epoch;
	e->kind = BLOCK_EVENT_ACTIVATE;
	bpf_ringbuf_submit(e, 0);
}

/*
 * block_activate marks a subscriber's block active and, for the first flow
 * of an idle block only, reports it. The compare-and-swap makes exactly one
 * CPU report a block that several CPUs touch at once.
 */
static __always_inline void block_activate(__u32 sub, __be32 inside, __be32 public, __u16 base, __u64 now)
{
	struct subscriber_state *s = bpf_map_lookup_elem(&subscribers, &sub);
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
	/* When the event cannot be sent, the reconciler still finds the
	 * block, and when it began: both are in the subscriber's state. */
	report_block(sub, inside, public, base, base + block_size - 1, since);
}

static __always_inline void count_block_full(__u32 sub)
{
	struct subscriber_state *s = bpf_map_lookup_elem(&subscribers, &sub);

	if (s)
		__sync_fetch_and_add(&s->block_full_drops, 1);
}

/* port_probe is try_ports' state, handed to probe_port through bpf_loop:
 * the loop's body is then verified once, not once per iteration and per
 * path into it, which keeps the inside program far below the verifier's
 * limit with 64 probes of the own block and 16 of each overflow block. */
struct port_probe {
	struct flow_key rkey;
	struct flow_rev rev;
	__u32 start, size;
	__u16 base;
	long err;
};

static long probe_port(__u64 i, void *data)
{
	struct port_probe *pp = data;
	__u32 off = pp->start + (__u32)i;

	if (off >= pp->size)
		off -= pp->size;
	pp->rkey.port = bpf_htons(pp->base + off);
	pp->err = bpf_map_update_elem(&flows_rev, &pp->rkey, &pp->rev, BPF_NOEXIST);
	return pp->err == -EEXIST ? 0 : 1; /* 1 ends the loop */
}

/*
 * try_ports claims a free port of the size ports from base on
 * pp->rkey.addr for the flow whose reverse entry is pp->rev: the reverse
 * entry is written with BPF_NOEXIST, which is what makes a port ours. It
 * starts at a random port (RFC 6888 REQ-15) and tries at most probes of
 * them. Returns 0 with pp->rkey.port set, -EEXIST when every port it tried
 * was taken, or the kernel's error. One port_probe serves every call of a
 * packet, so that the stack holds it once.
 */
static __always_inline long try_ports(struct port_probe *pp, __u16 base, __u16 size, __u32 probes)
{
	if (!size)
		return -EEXIST;
	pp->base = base;
	pp->size = size;
	pp->err = -EEXIST;
	pp->start = bpf_get_prandom_u32() % size;
	if (bpf_loop(probes < size ? probes : size, probe_port, pp, 0) < 0)
		return -EINVAL;
	return pp->err;
}

/* overflow_base is the first port of overflow block id, and sets *addr to
 * its address; 0 when id is out of range. */
static __always_inline __u16 overflow_base(__u32 id, __be32 *addr)
{
	__u32 idx = id / ov_per_addr;
	__be32 *a = bpf_map_lookup_elem(&overflow_addrs, &idx);

	if (!a)
		return 0;
	*addr = *a;
	return port_lo + (id % ov_per_addr) * ov_block_size;
}

/* flow_claim is a new flow's search for a port: the probe state, and what
 * the overflow search found. The overflow loops run through bpf_loop, as
 * the probes do, so that the verifier follows each body once rather than
 * every path out of every iteration into the rest of the program. */
struct flow_claim {
	struct port_probe pp;
	__u32 sub;
	__u32 held;     /* the overflow block the port is in */
	__u32 free_key; /* an empty slot of the subscriber's, or OVERFLOW_NONE */
	__u32 start;    /* where the scan for a free block begins */
	__u32 found;    /* the block the scan claimed, or OVERFLOW_NONE */
	long err;
};

#define OVERFLOW_NONE 0xffffffff

/* try_slot looks at the subscriber's slot s: an empty one is noted for a
 * claim; a held block is probed for a free port. 1 ends the loop. */
static long try_slot(__u64 s, void *data)
{
	struct flow_claim *c = data;
	__u32 key = c->sub * OVERFLOW_SLOTS + (__u32)s;
	struct overflow_block *ob;
	__u32 *slot, id;
	__u16 base;

	slot = bpf_map_lookup_elem(&overflow_slots, &key);
	if (!slot)
		return 1;
	if (*slot == 0) {
		if (c->free_key == OVERFLOW_NONE)
			c->free_key = key;
		return 0;
	}
	if (*slot == OVERFLOW_CLAIMING)
		return 0;
	id = *slot - 1;
	ob = bpf_map_lookup_elem(&overflow_blocks, &id);
	if (!ob || ob->owner != c->sub + 1)
		return 0;
	base = overflow_base(id, &c->pp.rkey.addr);
	if (!base)
		return 0;
	c->err = try_ports(&c->pp, base, ov_block_size, OVERFLOW_PROBES);
	if (c->err == -EEXIST)
		return 0;
	c->held = id;
	return 1;
}

/* scan_block claims overflow block start + i if it is free: the
 * compare-and-swap of its owner from 0 is what makes it ours, so a block
 * another subscriber holds is never touched. 1 ends the loop. */
static long scan_block(__u64 i, void *data)
{
	struct flow_claim *c = data;
	__u32 id = c->start + (__u32)i;
	struct overflow_block *ob;

	if (id >= ov_count)
		id -= ov_count;
	ob = bpf_map_lookup_elem(&overflow_blocks, &id);
	if (!ob || ob->owner != 0 || __sync_val_compare_and_swap(&ob->owner, 0, c->sub + 1) != 0)
		return 0;
	c->found = id;
	return 1;
}

/*
 * overflow_ports finds a port for a subscriber whose own block is full: in
 * an overflow block it holds, or else in one it claims, all or nothing.
 * A claim reserves an empty slot of the subscriber's (compare-and-swap to
 * OVERFLOW_CLAIMING, so two CPUs cannot both take the last one), then a
 * free block, looking at no more than OVERFLOW_SCAN of them from a random
 * one. Returns as try_ports does, with c->held the block's id.
 */
static __always_inline long overflow_ports(struct pkt *p, struct flow_claim *c)
{
	struct overflow_block *ob;
	__u32 *slot, id;
	__u16 base;

	c->err = -EEXIST;
	c->free_key = OVERFLOW_NONE;
	if (bpf_loop(ov_max, try_slot, c, 0) < 0)
		return -EINVAL;
	if (c->err != -EEXIST)
		return c->err;
	slot = c->free_key == OVERFLOW_NONE ? 0 : bpf_map_lookup_elem(&overflow_slots, &c->free_key);
	if (!slot || __sync_val_compare_and_swap(slot, 0, OVERFLOW_CLAIMING) != 0) {
		stat_inc(STAT_OVERFLOW_REFUSED_MAX);
		return -EEXIST;
	}
	c->start = bpf_get_prandom_u32() % ov_count;
	c->found = OVERFLOW_NONE;
	if (bpf_loop(ov_count < OVERFLOW_SCAN ? ov_count : OVERFLOW_SCAN, scan_block, c, 0) < 0 ||
	    c->found == OVERFLOW_NONE) {
		*slot = 0;
		stat_inc(STAT_OVERFLOW_REFUSED_POOL);
		return -EEXIST;
	}
	id = c->found;
	ob = bpf_map_lookup_elem(&overflow_blocks, &id);
	if (!ob) {
		*slot = 0;
		return -EINVAL;
	}
	ob->since_ns = bpf_ktime_get_ns();
	ob->last_used_ns = p->now;
	*slot = id + 1;
	stat_inc(STAT_OVERFLOW_CLAIMS);
	base = overflow_base(id, &c->pp.rkey.addr);
	if (!base)
		return -EINVAL;
	/* Recorded like a subscriber's own block; a lost event is found in
	 * overflow_blocks, with the owner and since_ns. */
	report_block(c->sub, c->pp.rev.addr, c->pp.rkey.addr, base, base + ov_block_size - 1, ob->since_ns);
	c->held = id;
	return try_ports(&c->pp, base, ov_block_size, OVERFLOW_PROBES);
}

/*
 * flow_create maps (inside addr, port, proto) to a free port of the
 * subscriber's block, or, when that has none and ports.overflow is on, of
 * an overflow block (overflow_ports). The forward entry follows the
 * reverse one, which is rolled back if that fails; a mapping made in an
 * overflow block that the agent began to release meanwhile is rolled back
 * whole. Returns VERDICT_NEXT with the mapping's public address and port
 * in p, from the value just written (looking the new entry up again would
 * cost a bucket walk), or from another CPU's entry when it mapped the flow
 * first; else the drop reason.
 */
static __always_inline int flow_create(struct pkt *p, struct flow_key *fkey, __u32 sub, __u8 state,
				       __be32 peer_addr, __be16 peer_port)
{
	__u64 now = p->now;
	__u32 pool_slot = sub / sharing_ratio;
	__u16 base = port_lo + (sub % sharing_ratio) * block_size;
	struct flow_claim c = {
		.pp = {
			.rkey = { .proto = fkey->proto },
			.rev = { .addr = fkey->addr, .port = fkey->port, .subscriber = sub,
				 .closing = state == FLOW_STATE_TCP_CLOSING },
		},
		.sub = sub,
	};
	struct overflow_block *ob = 0;
	struct flow_fwd made = {};
	struct flow_fwd *found;
	__be32 *public;
	long err;

	public = bpf_map_lookup_elem(&pool_addrs, &pool_slot);
	if (!public)
		return STAT_DROP_FLOW_TABLE;
	c.pp.rkey.addr = *public;
	err = try_ports(&c.pp, base, block_size, MAX_PORT_PROBES);
	if (err == -EEXIST && overflow_on) {
		err = overflow_ports(p, &c);
		if (err != -EEXIST)
			ob = bpf_map_lookup_elem(&overflow_blocks, &c.held);
	}
	if (err == -EEXIST) {
		count_block_full(sub);
		return STAT_DROP_BLOCK_FULL;
	}
	if (err)
		return STAT_DROP_FLOW_TABLE;

	made.last_seen = now >> FLOW_LAST_SEEN_SHIFT;
	made.nat_addr = c.pp.rkey.addr;
	made.nat_port = c.pp.rkey.port;
	made.state = state;
	made.subscriber = sub;
	made.peer_addr = peer_addr;
	made.peer_port = peer_port;
	err = bpf_map_update_elem(&flows_fwd, fkey, &made, BPF_NOEXIST);
	if (err) {
		bpf_map_delete_elem(&flows_rev, &c.pp.rkey);
		/* Another CPU mapped the same flow first: use its port. */
		found = bpf_map_lookup_elem(&flows_fwd, fkey);
		if (!found)
			return STAT_DROP_FLOW_TABLE;
		p->nat_addr = found->nat_addr;
		p->nat_port = found->nat_port;
		return VERDICT_NEXT;
	}
	if (ob) {
		if (ob->owner != sub + 1) {
			/* Being released: the agent counted no mapping in
			 * it, and none may outlive its record. */
			bpf_map_delete_elem(&flows_fwd, fkey);
			bpf_map_delete_elem(&flows_rev, &c.pp.rkey);
			count_block_full(sub);
			return STAT_DROP_BLOCK_FULL;
		}
		if (ob->last_used_ns != now)
			ob->last_used_ns = now;
	} else {
		block_activate(sub, fkey->addr, c.pp.rkey.addr, base, now);
	}
	stat_inc(STAT_NEW_FLOWS);
	p->nat_addr = c.pp.rkey.addr;
	p->nat_port = c.pp.rkey.port;
	return VERDICT_NEXT;
}

/* block_full_icmp answers a refused new flow with "host unreachable",
 * at most once per interval per subscriber (RFC 6888 REQ-11), from the
 * router's address on the ingress interface; without one, nothing is
 * sent. last_icmp_ns is set by every refusal the interval lets through,
 * sent or not: it is also how the agent tells a block that refuses flows
 * (blocknat status counts it as full). */
static __always_inline int block_full_icmp(struct xdp_md *ctx, __u32 sub, __u64 now)
{
	struct subscriber_state *s = bpf_map_lookup_elem(&subscribers, &sub);
	__u32 ifindex = ctx->ingress_ifindex;
	__be32 *from;

	if (!s || now - s->last_icmp_ns < BLOCK_FULL_ICMP_INTERVAL_NS)
		return XDP_DROP;
	s->last_icmp_ns = now;
	from = bpf_map_lookup_elem(&iface_addrs, &ifindex);
	if (!from || !*from)
		return XDP_DROP;
	if (icmp_host_unreachable(ctx, *from) < 0)
		return XDP_DROP;
	stat_inc(STAT_ICMP_BLOCK_FULL);
	/* Back out of the interface it came in on, through the devmap like
	 * every forwarded frame: on veth, XDP_TX of this frame never reached
	 * the peer in testing, while the redirect does. */
	return bpf_redirect_map(&tx_ports, ctx->ingress_ifindex, XDP_DROP);
}

#endif

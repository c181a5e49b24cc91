/* SPDX-License-Identifier: (GPL-2.0-only OR MIT) */
/*
 * Types shared between the XDP program and Go. bpf2go emits the Go twins of
 * every struct named with -type, so the layouts below are the single source of
 * truth: fixed-width fields only, explicit padding, and a size assertion each.
 */
#ifndef BLOCKNAT_TYPES_H
#define BLOCKNAT_TYPES_H

#include <linux/types.h>
#include <linux/in.h>

/* Kinds of block event. Only activation is reported by the kernel; releases
 * are decided by the agent's sweeper and never cross the ring buffer. */
enum block_event_kind {
	BLOCK_EVENT_ACTIVATE = 1,
	BLOCK_EVENT_CANARY = 2,   /* the agent's self-check (bpf/canary.c); no subscriber */
};

/*
 * block_event is the only thing the data plane ever reports. It names a
 * subscriber's port block and nothing about destinations or flows.
 * time_ns is CLOCK_MONOTONIC (coarse); the agent converts it to wall time.
 */
struct block_event {
	__u64 time_ns;
	__u32 subscriber;
	__be32 inside_addr;
	__be32 public_addr;
	__u16 port_lo;
	__u16 port_hi;
	__u32 epoch;
	__u32 kind;
};
_Static_assert(sizeof(struct block_event) == 32, "block_event layout");

/* The protocols that share the flow tables (flow_key.proto, filter_key.proto):
 * TCP and UDP keyed by port, ICMP echo by identifier. Named here so that Go
 * takes the numbers from bpf2go rather than from a copy. */
enum flow_proto {
	FLOW_PROTO_ICMP = IPPROTO_ICMP,
	FLOW_PROTO_TCP = IPPROTO_TCP,
	FLOW_PROTO_UDP = IPPROTO_UDP,
};

/* flow_key names one endpoint-independent mapping side. For the forward table
 * it is (inside address, inside port); for the reverse table it is (public
 * address, public port). For ICMP echo the port is the identifier. */
struct flow_key {
	__be32 addr;
	__be16 port;
	__u8 proto;
	__u8 pad;
};
_Static_assert(sizeof(struct flow_key) == 8, "flow_key layout");

/* flow_fwd is the forward entry: where a subscriber's (addr, port) is mapped.
 * For TCP it also holds the peer, the remote endpoint of the connection the
 * mapping carries: only packets from and to the peer move the TCP state, so
 * a stranger's RST or FIN cannot shorten the mapping's life. */
struct flow_fwd {
	__u32 last_seen;    /* CLOCK_MONOTONIC_COARSE of the last outbound packet,
			       in units of 1 << FLOW_LAST_SEEN_SHIFT ns: 32 bits
			       of them last 146 years of uptime, and the 4 bytes
			       saved make the entry 24 bytes */
	__be32 nat_addr;
	__be16 nat_port;
	__u8 state;         /* enum flow_state, for the sweeper's timeouts */
	__u8 close_acks;    /* TCP closing: plain ACKs since the last FIN or RST,
			       outbound in bits 0-1 and inbound in bits 2-3 */
	__u32 subscriber;
	__be32 peer_addr;   /* TCP: set when the mapping is made and by every
			       outbound SYN; 0 for UDP and ICMP */
	__be16 peer_port;
	__u16 pad;
};
_Static_assert(sizeof(struct flow_fwd) == 24, "flow_fwd layout");

/* flow_rev is the reverse entry written with the forward one, all or nothing. */
struct flow_rev {
	__be32 addr;        /* inside address */
	__be16 port;        /* inside port or ICMP identifier */
	__u8 closing;       /* TCP: a copy of "state is closing" in the forward
			       entry, so the outside program looks that entry
			       up only for a FIN, an RST or a closing mapping */
	__u8 flags;         /* enum flow_rev_flags */
	__u32 subscriber;
};
_Static_assert(sizeof(struct flow_rev) == 12, "flow_rev layout");

/* Flags of a reverse entry. FLOW_REV_OPEN: a PCP MAP holds the mapping
 * open (RFC 6887 §11), so inbound from any remote reaches it whatever the
 * filtering mode; the agent sets and clears it with the PCP mapping. */
enum flow_rev_flags {
	FLOW_REV_OPEN = 1,
};

/* How finely a mapping's last_seen follows its packets: it holds the clock
 * in units of 2^30 ns (about 1.07 s), and the data plane writes it only
 * when that unit changes, so that a busy mapping's entry stays clean in the
 * cache instead of being written once per jiffy. The sweeper, which looks
 * every intervals.sweep (10 s by default), adds one unit to every timeout,
 * so no mapping expires earlier than its timeout. */
enum flow_clock {
	FLOW_LAST_SEEN_SHIFT = 30,
};

enum flow_state {
	FLOW_STATE_OTHER = 0,       /* UDP and ICMP: one timeout each */
	FLOW_STATE_TCP_TRANS = 1,   /* handshake: SYN seen, not yet an ACK */
	FLOW_STATE_TCP_EST = 2,     /* an ACK after the handshake */
	FLOW_STATE_TCP_CLOSING = 3, /* FIN or RST from or to the peer: the
				       transitory timeout, until a new SYN, or
				       until both sides go on exchanging plain
				       ACKs (then established again) */
};

/* subscriber_state is indexed by subscriber number (configuration order). */
struct subscriber_state {
	__u64 last_active_ns;   /* coarse monotonic time a flow was last created */
	__u64 active_since_ns;  /* monotonic time the block became active, for the
				   reconciler when the ring buffer event was lost */
	__u64 block_full_drops; /* new flows refused because the block was full */
	__u64 last_icmp_ns;     /* last "block full" ICMP sent, for rate limiting */
	__u32 active;           /* 1 while the block is active; the agent resets it */
	__u32 pad;
};
_Static_assert(sizeof(struct subscriber_state) == 40, "subscriber_state layout");

/* frag_key names one IP datagram's fragments (RFC 791): the addresses as
 * they arrive, the protocol and the IP ID. */
struct frag_key {
	__be32 saddr;
	__be32 daddr;
	__be16 id;
	__u8 proto;
	__u8 pad;
};
_Static_assert(sizeof(struct frag_key) == 12, "frag_key layout");

/* frag_val is how the first fragment was translated: the address that
 * replaces the inbound destination. */
struct frag_val {
	__u64 seen_ns;
	__be32 addr;
	__u32 pad;
};
_Static_assert(sizeof(struct frag_val) == 16, "frag_val layout");

/* filter_key records that a mapping sent to a remote endpoint, for
 * address-and-port-dependent filtering (RFC 4787 REQ-8). It lives only in
 * the kernel table; it is never reported or stored. */
struct filter_key {
	__be32 nat_addr;
	__be32 remote_addr;
	__be16 nat_port;
	__be16 remote_port;
	__u8 proto;
	__u8 pad[3];
};
_Static_assert(sizeof(struct filter_key) == 16, "filter_key layout");

/* inside_prefix is the value of the inside LPM trie: a prefix's first
 * subscriber number and its network address in host order, so the
 * subscriber number of an address is first + (addr - network). */
struct inside_prefix {
	__u32 first_subscriber;
	__u32 network;
};
_Static_assert(sizeof(struct inside_prefix) == 8, "inside_prefix layout");

struct lpm_v4_key {
	__u32 prefixlen;
	__be32 addr;
};
_Static_assert(sizeof(struct lpm_v4_key) == 8, "lpm_v4_key layout");

/* How many prefixes nat_exempt and inside.public may each hold. */
enum exempt_limits {
	EXEMPT_PREFIX_LIMIT = 1024,
};

/* src_binding is the MAC an inside address is bound to, by a DHCP lease
 * held now or a static binding (bpf/validate.h). */
struct src_binding {
	__u8 mac[6];
	__u8 pad[2];
};
_Static_assert(sizeof(struct src_binding) == 8, "src_binding layout");

/* iface_source_key is the key of the iface_sources LPM trie: the ingress
 * ifindex (big-endian, so that its 32 bits come first in the prefix) and
 * an inside prefix the interface carries; prefixlen counts both. */
struct iface_source_key {
	__u32 prefixlen;
	__be32 ifindex;
	__be32 addr;
};
_Static_assert(sizeof(struct iface_source_key) == 12, "iface_source_key layout");

/* Flags of an inside interface's source policy, the value of iface_policy. */
enum iface_policy_flags {
	IFACE_CHECK_PREFIXES = 1,  /* only the prefixes iface_sources lists */
	IFACE_REQUIRE_BINDING = 2, /* only bound addresses */
};

/* The per-interface tables (iface_roles, iface_policy) are arrays indexed
 * by ifindex: a lookup the verifier inlines, no hash. The loader refuses an
 * interface whose ifindex is not below this. */
enum iface_limits {
	IFACE_INDEX_LIMIT = 4096,
};

/*
 * overflow_block is one block of the overflow pool (ports.overflow), lent
 * to a subscriber whose own block has no free port. owner is the holder's
 * subscriber number plus one (0: free), with OVERFLOW_RELEASING set while
 * the agent releases it: the data plane then makes no mapping in it, and a
 * mapping it made meanwhile is rolled back.
 */
struct overflow_block {
	__u32 owner;
	__u32 pad;
	__u64 since_ns;     /* CLOCK_MONOTONIC when it was claimed */
	__u64 last_used_ns; /* coarse clock of its last new mapping */
};
_Static_assert(sizeof(struct overflow_block) == 24, "overflow_block layout");

enum overflow_limits {
	OVERFLOW_SLOTS = 4,      /* overflow blocks a subscriber may hold at most */
	OVERFLOW_PROBES = 16,    /* ports tried in each held overflow block */
	OVERFLOW_SCAN = 32,      /* pool entries looked at for a free block */
	OVERFLOW_RELEASING = 0x80000000,
	OVERFLOW_CLAIMING = 0xffffffff, /* a slot a CPU is filling */
};

/*
 * pcp_entry is the PCP state of a mapping a subscriber asked for (PCP or
 * NAT-PMP), kept in a pinned table so that it outlives the agent like the
 * mapping itself. The data plane never reads it: the agent's PCP server
 * writes it, and its sweeper keeps a held mapping however idle.
 */
struct pcp_entry {
	__u64 expires_ns;   /* CLOCK_MONOTONIC end of the lifetime granted */
	__u8 nonce[12];     /* the client's mapping nonce; zero for NAT-PMP */
	__be32 public_addr; /* the mapping's public side when it was granted */
	__be16 public_port;
	__u8 flags;         /* enum pcp_entry_flags */
	__u8 pad;
	__u32 subscriber;
};
_Static_assert(sizeof(struct pcp_entry) == 32, "pcp_entry layout");

enum pcp_entry_flags {
	PCP_ENTRY_NATPMP = 1,  /* asked for by NAT-PMP (no nonce) */
	PCP_ENTRY_OPEN = 2,    /* MAP: open to every remote (FLOW_REV_OPEN) */
	PCP_ENTRY_ADOPTED = 4, /* an implicit mapping existed first: it goes back
				  to the idle timeouts when the PCP mapping ends */
};

/*
 * pcp_op is the PCP server's request to the data plane and its answer
 * (bpf/nat.c, pcp_map): make or adopt the mapping of key for subscriber in
 * its own block, all or nothing, exactly as a packet would.
 */
struct pcp_op {
	struct flow_key key;  /* the internal endpoint */
	__u32 subscriber;
	__be16 suggested;     /* the external port asked for; 0: none */
	__u8 flags;           /* enum pcp_op_flags */
	__u8 adopted;         /* out: the mapping existed already */
	__be32 nat_addr;      /* out */
	__be16 nat_port;      /* out */
	__u16 pad;
	__s32 result;         /* out: enum pcp_op_result */
	__u32 pad2;
};
_Static_assert(sizeof(struct pcp_op) == 32, "pcp_op layout");

enum pcp_op_flags {
	PCP_OP_REQUIRED = 1,  /* the suggested port or nothing (PREFER_FAILURE) */
	PCP_OP_OPEN = 2,      /* set FLOW_REV_OPEN on the mapping */
};

enum pcp_op_result {
	PCP_OP_OK = 0,
	PCP_OP_BAD_REQUEST = 1,  /* not the subscriber's address, or a bad protocol */
	PCP_OP_BLOCK_FULL = 2,
	PCP_OP_TAKEN = 3,        /* PCP_OP_REQUIRED and the suggested port is not free */
	PCP_OP_NOT_OWN_BLOCK = 4, /* the existing mapping is in an overflow block */
	PCP_OP_RACE = 5,         /* another CPU mapped the endpoint meanwhile: ask again */
	PCP_OP_TABLE = 6,        /* a table update failed */
};

/* The PCP server's port (RFC 6887 §19.1), and the one a request to it that
 * fails the inside source validation is sent to instead: the server
 * answers every request there NOT_AUTHORIZED, whatever it asks. */
enum pcp_ports {
	PCP_SERVER_PORT = 5351,
	PCP_SUSPECT_PORT = 5352,
};

/* Interface roles, the value of the iface_roles map. */
enum iface_role {
	IFACE_INSIDE = 1,
	IFACE_OUTSIDE = 2,
};

/* nexthop_key is everything bpf_fib_lookup is asked (bpf/route.h): the
 * cached answer is the fib's own for the same question. */
struct nexthop_key {
	__be32 saddr;
	__be32 daddr;
	__u32 ifindex; /* ingress */
	__u8 tos;
	__u8 proto;
	__u8 pad[2];
};
_Static_assert(sizeof(struct nexthop_key) == 16, "nexthop_key layout");

/* nexthop is a successful fib answer: where to send, under which route
 * generation, and the longest packet the fib let through (the MTU check is
 * the fib's, so a longer one asks again). The key names a destination, so
 * the entry keeps when it was last used (coarse ns, written when it moved
 * by a second) and the agent deletes it once it is idle longer than any
 * mapping that used it can live: the cache holds no destination that no
 * mapping does. */
struct nexthop {
	__u64 gen;
	__u64 used_ns;
	__u32 ifindex; /* egress */
	__u16 max_len;
	__u8 dmac[6];
	__u8 smac[6];
	__u8 pad[6];
};
_Static_assert(sizeof(struct nexthop) == 40, "nexthop layout");

/* route_state is what the agent says of the next-hop cache: the generation
 * it bumps on every route, neighbour or link change it sees, and until
 * when (CLOCK_MONOTONIC ns) it vouches for watching. Past that time (the
 * agent stopped or died) the cache is not used. */
struct route_state {
	__u64 gen;
	__u64 valid_until_ns;
};
_Static_assert(sizeof(struct route_state) == 16, "route_state layout");

#endif

/* SPDX-License-Identifier: (GPL-2.0-only OR MIT) */
/*
 * The stats enum indexes one PERCPU_ARRAY. Every verdict other than a
 * translation has its own counter, so an operator can always tell why a
 * packet was passed to the kernel or dropped. Go names these in
 * loader/stats.go; keep the two in step (a test checks the count).
 */
#ifndef BLOCKNAT_STATS_H
#define BLOCKNAT_STATS_H

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

enum stat_index {
	STAT_OUT_PACKETS = 0,    /* translated inside -> outside */
	STAT_OUT_BYTES,
	STAT_IN_PACKETS,         /* translated outside -> inside */
	STAT_IN_BYTES,
	STAT_NEW_FLOWS,          /* mappings created */
	STAT_BLOCK_ACTIVATIONS,  /* idle blocks made active */
	STAT_PASS_NOT_IPV4,      /* ARP, IPv6, ...: not ours */
	STAT_PASS_LOCAL,         /* to the router itself */
	STAT_PASS_LOCAL_SERVICE, /* inside, to 255.255.255.255 or a multicast group, or from 0.0.0.0
				  * (DHCP, mDNS, routing protocols): the router's own, never translated */
	STAT_PASS_TTL,           /* TTL <= 1: the kernel answers time exceeded */
	STAT_PASS_FIB,           /* no route or no neighbour: the kernel decides */
	STAT_PASS_FRAG_NEEDED,   /* over the egress MTU with DF: the kernel answers */
	STAT_PASS_NOT_POOL,      /* outside traffic not to a pool address */
	STAT_PASS_NOT_NAT,       /* inside traffic that does not leave by an outside interface */
	STAT_DROP_MALFORMED,     /* truncated or inconsistent headers */
	STAT_DROP_SPOOFED,       /* inside source outside every inside prefix */
	STAT_DROP_NO_MAPPING,    /* inbound to an unmapped pool port */
	STAT_DROP_BLOCK_FULL,    /* subscriber's block has no free port */
	STAT_DROP_UNSUPPORTED,   /* protocol or ICMP type this NAT does not translate */
	STAT_DROP_FRAGMENT,      /* fragment with no known translation (its first fragment not seen) */
	STAT_DROP_FLOW_TABLE,    /* flow table full or update failed */
	STAT_RINGBUF_FULL,       /* a block event could not be reserved */
	STAT_HAIRPIN,            /* subscriber to subscriber through a pool address */
	STAT_ICMP_ERRORS_IN,     /* ICMP errors translated back to a subscriber */
	STAT_DROP_ICMP_ERROR,    /* ICMP error matching no mapping, or inconsistent */
	STAT_FRAGMENTS,          /* fragments translated */
	STAT_DROP_FILTERED,      /* inbound refused by address-and-port-dependent filtering */
	STAT_ICMP_BLOCK_FULL,    /* "host unreachable" sent for a full block */
	STAT_DROP_MARTIAN_DST,   /* inside, to 0/8, 127/8, 240/4 (not 255.255.255.255), or to an
				  * inside address the routes send out of an outside interface */
	STAT_DROP_MARTIAN_SRC,   /* outside, to a pool address from 0/8, 127/8, 224/4, 240/4,
				  * 255.255.255.255, a pool address or an inside address */
	STAT_DROP_FRAGMENT_INACTIVE, /* later fragment from a subscriber whose block is not active */
	STAT_DROP_SPOOFED_BINDING, /* inside source not bound to where it came from: another MAC than
				    * its lease or static binding, a prefix its interface does not
				    * carry, or unbound where a binding is required */
	STAT_EXEMPT_OUT,         /* a subscriber's packet to a nat_exempt destination, forwarded
				  * untranslated */
	STAT_PUBLIC_OUT,         /* a packet from an inside.public address, forwarded untouched */
	STAT_OVERFLOW_CLAIMS,    /* overflow blocks claimed for a subscriber whose block was full */
	STAT_OVERFLOW_REFUSED_MAX,  /* no claim: the subscriber holds ports.overflow.max_blocks */
	STAT_OVERFLOW_REFUSED_POOL, /* no claim: no free overflow block among those looked at */
	STAT_PCP_SUSPECT,        /* a request to the PCP server that failed the source
				  * validation, passed to the port the server refuses on */
	STAT_MAX,
};

/* stats: key u32 stat_index, value u64 per CPU. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, STAT_MAX);
	__type(key, __u32);
	__type(value, __u64);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} stats SEC(".maps");

/* The pass reasons are one run of the enum: what finish() passes to the
 * kernel rather than drops. */
_Static_assert(STAT_PASS_NOT_NAT - STAT_PASS_NOT_IPV4 == 7, "pass reasons are contiguous");

static __always_inline int stat_is_pass(int idx)
{
	return idx >= STAT_PASS_NOT_IPV4 && idx <= STAT_PASS_NOT_NAT;
}

static __always_inline void stat_add(__u32 idx, __u64 n)
{
	__u64 *v = bpf_map_lookup_elem(&stats, &idx);

	/* Per-CPU: no other writer, so no atomic is needed. */
	if (v)
		*v += n;
}

static __always_inline void stat_inc(__u32 idx)
{
	stat_add(idx, 1);
}

#endif

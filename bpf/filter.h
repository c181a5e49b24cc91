/* SPDX-License-Identifier: (GPL-2.0-only OR MIT) */
/*
 * The filter step: endpoint-independent filtering by default; with
 * address-and-port-dependent filtering (RFC 4787 REQ-8) the filters table
 * remembers the remote endpoints each mapping sent to, and only they may
 * answer.
 */
#ifndef BLOCKNAT_FILTER_H
#define BLOCKNAT_FILTER_H

#include <linux/bpf.h>
#include <linux/ip.h>
#include <bpf/bpf_helpers.h>
#include "config.h"
#include "maps.h"
#include "pkt.h"
#include "types.h"

/* filter_note remembers that a mapping sent to a remote endpoint; only
 * address-and-port-dependent filtering needs it. */
static __always_inline void filter_note(__be32 nat_addr, __be16 nat_port, struct iphdr *iph, struct l4 *l4,
					__be16 remote_port, __u64 now)
{
	struct filter_key k = { .nat_addr = nat_addr, .remote_addr = iph->daddr, .nat_port = nat_port,
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

#endif

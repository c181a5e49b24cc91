// SPDX-License-Identifier: (GPL-2.0-only OR MIT)
/*
 * Routers for the throughput benchmark that are not NATs.
 *
 * xdp_forward is the throughput benchmark's upper bound: blocknat's
 * forwarding without the NAT. It parses with the NAT's own parsers, asks
 * the fib, lowers the TTL, writes the MACs and redirects through a devmap,
 * exactly as xdp_inside does after translating; what blocknat loses
 * against it is what translation costs.
 *
 * xdp_redirect is no router at all: it sends every frame out of the one
 * interface in tx_ports without reading it. What the bed delivers through
 * it is the floor of the bed itself (generator, veths, sink), against
 * which the time each router adds per packet is read.
 */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/ip.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#include "parse.h"

char LICENSE[] SEC("license") = "Dual MIT/GPL";

#ifndef AF_INET
#define AF_INET 2
#endif

/* tx_ports: key u32 ifindex, value u32 ifindex: redirect targets. */
struct {
	__uint(type, BPF_MAP_TYPE_DEVMAP_HASH);
	__uint(max_entries, 64);
	__type(key, __u32);
	__type(value, __u32);
} tx_ports SEC(".maps");

SEC("xdp")
int xdp_forward(struct xdp_md *ctx)
{
	void *data_end = (void *)(long)ctx->data_end;
	struct cursor c = { .pos = (void *)(long)ctx->data };
	struct bpf_fib_lookup fib = {};
	struct ethhdr *eth;
	struct iphdr *iph;
	__u32 check;

	if (parse_ethhdr(&c, data_end, &eth) != ETH_P_IP)
		return XDP_PASS;
	if (parse_iphdr(&c, data_end, &iph) < 0 || iph->ttl <= 1)
		return XDP_PASS;
	fib.family = AF_INET;
	fib.tos = iph->tos;
	fib.l4_protocol = iph->protocol;
	fib.tot_len = bpf_ntohs(iph->tot_len);
	fib.ipv4_src = iph->saddr;
	fib.ipv4_dst = iph->daddr;
	fib.ifindex = ctx->ingress_ifindex;
	if (bpf_fib_lookup(ctx, &fib, sizeof(fib), 0) != BPF_FIB_LKUP_RET_SUCCESS)
		return XDP_PASS;
	check = iph->check;
	check += bpf_htons(0x0100);
	iph->check = (__sum16)(check + (check >= 0xffff));
	iph->ttl--;
	__builtin_memcpy(eth->h_dest, fib.dmac, ETH_ALEN);
	__builtin_memcpy(eth->h_source, fib.smac, ETH_ALEN);
	return bpf_redirect_map(&tx_ports, fib.ifindex, XDP_PASS);
}

/* The only key of tx_ports that xdp_redirect uses. */
volatile const __u32 redirect_ifindex = 0;

SEC("xdp")
int xdp_redirect(struct xdp_md *ctx)
{
	return bpf_redirect_map(&tx_ports, redirect_ifindex, XDP_DROP);
}

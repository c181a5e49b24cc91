// SPDX-License-Identifier: (GPL-2.0-only OR MIT)
/*
 * Baselines for benchmarks and helpers for test topologies; neither is part
 * of the NAT.
 *
 * xdp_pass does nothing, on purpose: a veth peer only accepts
 * XDP_REDIRECTed frames while it has an XDP program (or GRO), and the cost
 * of running any XDP program at all is the floor every benchmark is read
 * against.
 *
 * xdp_forward is the NAT's forwarding without the NAT: parse, fib lookup,
 * TTL, MACs, redirect. The gap between it and xdp_inside is what
 * translation costs.
 *
 * xdp_redirect does no routing at all: every frame goes to one port, the
 * floor of a router namespace in the throughput benchmarks.
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

/* The only key of tx_ports that xdp_redirect uses. */
volatile const __u32 redirect_ifindex = 0;

SEC("xdp")
int xdp_pass(struct xdp_md *ctx)
{
	return XDP_PASS;
}

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

SEC("xdp")
int xdp_redirect(struct xdp_md *ctx)
{
	return bpf_redirect_map(&tx_ports, redirect_ifindex, XDP_DROP);
}

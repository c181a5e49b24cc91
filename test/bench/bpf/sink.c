// SPDX-License-Identifier: (GPL-2.0-only OR MIT)
/*
 * The benchmarks' sink: an XDP program on the far end of the router's
 * outside veth that counts every frame and drops it, so what is measured is
 * the router and not a receiving stack.
 *
 * xdp_sink counts IPv4 frames, and separately those whose source still lies
 * in the inside prefix: a NAT must leave none, a plain router all. Other
 * frames (a stray IPv6 neighbour solicitation) are counted apart. xdp_sink_flows also
 * records every distinct (source address, source port, protocol) it sees;
 * it is attached only to check that a run really carried the flows it
 * claims, never while a rate is measured.
 */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/ip.h>
#include <linux/udp.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

char LICENSE[] SEC("license") = "Dual MIT/GPL";

enum sink_count {
	SINK_FRAMES = 0,
	SINK_FROM_INSIDE = 1,
	SINK_OTHER = 2,
	SINK_MAX,
};

/* counts: key u32 enum sink_count, value u64 per CPU. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, SINK_MAX);
	__type(key, __u32);
	__type(value, __u64);
} counts SEC(".maps");

struct endpoint {
	__be32 addr;
	__be16 port;
	__u8 proto;
	__u8 pad;
};

/* seen: key endpoint (source of a received frame), value u64 frames. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 262144);
	__type(key, struct endpoint);
	__type(value, __u64);
} seen SEC(".maps");

/* The inside prefix, host order. */
volatile const __u32 inside_net = 0;
volatile const __u32 inside_mask = 0xffffffff;

static __always_inline void count(__u32 idx)
{
	__u64 *v = bpf_map_lookup_elem(&counts, &idx);

	if (v)
		*v += 1;
}

static __always_inline struct iphdr *ipv4(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	struct iphdr *iph = data + sizeof(*eth);

	if ((void *)(iph + 1) > data_end || eth->h_proto != bpf_htons(ETH_P_IP))
		return 0;
	return iph;
}

SEC("xdp")
int xdp_sink(struct xdp_md *ctx)
{
	struct iphdr *iph = ipv4(ctx);

	if (!iph) {
		count(SINK_OTHER);
		return XDP_DROP;
	}
	count(SINK_FRAMES);
	if ((bpf_ntohl(iph->saddr) & inside_mask) == inside_net)
		count(SINK_FROM_INSIDE);
	return XDP_DROP;
}

SEC("xdp")
int xdp_sink_flows(struct xdp_md *ctx)
{
	void *data_end = (void *)(long)ctx->data_end;
	struct iphdr *iph = ipv4(ctx);
	struct endpoint key = {};
	struct udphdr *uh;
	__u64 one = 1, *v;

	if (!iph) {
		count(SINK_OTHER);
		return XDP_DROP;
	}
	count(SINK_FRAMES);
	if (iph->ihl != 5)
		return XDP_DROP;
	if ((bpf_ntohl(iph->saddr) & inside_mask) == inside_net)
		count(SINK_FROM_INSIDE);
	/* TCP and UDP both start with the source port. */
	uh = (void *)(iph + 1);
	if ((void *)(uh + 1) > data_end)
		return XDP_DROP;
	key.addr = iph->saddr;
	key.port = uh->source;
	key.proto = iph->protocol;
	v = bpf_map_lookup_elem(&seen, &key);
	if (v)
		__sync_fetch_and_add(v, 1);
	else
		bpf_map_update_elem(&seen, &key, &one, BPF_NOEXIST);
	return XDP_DROP;
}

// SPDX-License-Identifier: (GPL-2.0-only OR MIT)
/*
 * xdp_trafficgen is the benchmarks' packet generator. Go runs it with
 * BPF_PROG_RUN and BPF_F_TEST_XDP_LIVE_FRAMES, with the generator's veth as
 * the ingress interface: each run fills one frame and XDP_TX sends it out of
 * that veth, so the router under test receives it on its peer as if from a
 * NIC, at a rate no socket could reach.
 *
 * Live frames come from a page pool, and a recycled page may come back as
 * the router or the sink left it (translated, TTL lowered, MACs replaced).
 * Every run therefore writes the whole header again from the constants and
 * the frame's number alone, checksums included; it never reads the packet.
 * The payload, which nobody writes, must be zeros: the checksums assume it.
 *
 * Frame n belongs to flow i = n % flows. Flow i is subscriber s = i %
 * subscribers's k-th flow, k = i / subscribers: it comes from address
 * first_saddr + s, port first_sport + k, and goes to address first_daddr +
 * (s + k) % destinations, so each subscriber talks to several
 * destinations. The flows are distinct (address, port) pairs, sent
 * round-robin: every flow is seen once per `flows` frames.
 */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/tcp.h>
#include <linux/udp.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

char LICENSE[] SEC("license") = "Dual MIT/GPL";

/* Set by Go before loading; addresses are in host order. */
volatile const __u32 flows = 1;
volatile const __u32 subscribers = 1;
volatile const __u32 first_saddr = 0;
volatile const __u32 first_sport = 10000;
volatile const __u32 destinations = 1;
volatile const __u32 first_daddr = 0;
volatile const __u32 dport = 443;
volatile const __u32 proto = IPPROTO_UDP; /* IPPROTO_UDP, or IPPROTO_TCP (a SYN) */
volatile const __u32 ttl = 64;
volatile const __u8 src_mac[ETH_ALEN] = {};
volatile const __u8 dst_mac[ETH_ALEN] = {};

/* seq numbers the frames built; Go reads it to count what was sent. */
__u64 seq = 0;

#define TCP_SEQ 0x10000000
#define TCP_WINDOW 64240

static __always_inline __u16 fold(__u64 sum)
{
	sum = (sum & 0xffffffff) + (sum >> 32);
	sum = (sum & 0xffff) + (sum >> 16);
	sum = (sum & 0xffff) + (sum >> 16);
	sum = (sum & 0xffff) + (sum >> 16);
	return (__u16)sum;
}

/* sum32 adds both 16-bit halves of a host-order word: the ones' complement
 * sum is the same whichever byte order it is taken in, as long as every
 * word is taken the same way. */
static __always_inline __u64 sum32(__u32 v)
{
	return (v >> 16) + (v & 0xffff);
}

SEC("xdp")
int xdp_trafficgen(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	struct iphdr *iph = data + sizeof(*eth);
	void *l4 = data + sizeof(*eth) + sizeof(*iph);
	__u32 flow, saddr, daddr, sport, tot_len, l4_len;
	__u64 n, sum;

	if (l4 + sizeof(struct tcphdr) > data_end)
		return XDP_ABORTED;
	n = __sync_fetch_and_add(&seq, 1);
	flow = (__u32)(n % flows);
	saddr = first_saddr + flow % subscribers;
	sport = first_sport + flow / subscribers;
	daddr = first_daddr + (flow % subscribers + flow / subscribers) % destinations;
	tot_len = (__u32)(data_end - data) - sizeof(*eth);
	l4_len = tot_len - sizeof(*iph);

	/* Byte by byte: memcpy would drop the volatile and let the compiler
	 * copy the zeros the constants are initialised with. */
#pragma unroll
	for (int i = 0; i < ETH_ALEN; i++) {
		eth->h_dest[i] = dst_mac[i];
		eth->h_source[i] = src_mac[i];
	}
	eth->h_proto = bpf_htons(ETH_P_IP);

	iph->version = 4;
	iph->ihl = 5;
	iph->tos = 0;
	iph->tot_len = bpf_htons(tot_len);
	iph->id = 0;
	iph->frag_off = 0;
	iph->ttl = ttl;
	iph->protocol = proto;
	iph->saddr = bpf_htonl(saddr);
	iph->daddr = bpf_htonl(daddr);
	sum = 0x4500 + tot_len + ((ttl << 8) | proto) + sum32(saddr) + sum32(daddr);
	iph->check = bpf_htons((__u16)~fold(sum));

	/* The pseudo-header; the payload adds nothing, being zeros. */
	sum = sum32(saddr) + sum32(daddr) + proto + l4_len + sport + dport;
	if (proto == IPPROTO_TCP) {
		struct tcphdr *th = l4;

		th->source = bpf_htons(sport);
		th->dest = bpf_htons(dport);
		th->seq = bpf_htonl(TCP_SEQ);
		th->ack_seq = 0;
		/* doff 5, SYN: a connection being opened. */
		((__u8 *)th)[12] = 5 << 4;
		((__u8 *)th)[13] = 0x02;
		th->window = bpf_htons(TCP_WINDOW);
		th->urg_ptr = 0;
		sum += sum32(TCP_SEQ) + ((5 << 12) | 0x02) + TCP_WINDOW;
		th->check = bpf_htons((__u16)~fold(sum));
	} else {
		struct udphdr *uh = l4;
		__u16 check;

		uh->source = bpf_htons(sport);
		uh->dest = bpf_htons(dport);
		uh->len = bpf_htons(l4_len);
		sum += l4_len;
		check = ~fold(sum);
		uh->check = bpf_htons(check ? check : 0xffff);
	}
	return XDP_TX;
}

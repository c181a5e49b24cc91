// SPDX-License-Identifier: (GPL-2.0-only OR MIT)
/*
 * The agent's self-check canary: one block_event of kind BLOCK_EVENT_CANARY
 * written into the NAT's own block_events ring buffer, so that the whole
 * record path (kernel -> ring buffer -> Recorder -> store -> lookup) is
 * proven with the very map the NAT reports into, not a stand-in.
 *
 * The agent loads this program with the NAT's pinned ring buffer as a map
 * replacement and runs it with BPF_PROG_TEST_RUN; it is never attached to
 * an interface. The input "packet" is not a packet: its first eight bytes
 * are the canary's sequence number and the agent's epoch (host order).
 * The event names no subscriber and no address: subscriber carries the
 * sequence number, every address and port is zero.
 *
 * Returns XDP_PASS when the event was submitted, XDP_DROP when the input
 * was too short or the ring buffer had no room (the same failure the NAT
 * counts as ringbuf_full, which is what the canary must notice).
 */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

#include "types.h"

char LICENSE[] SEC("license") = "Dual MIT/GPL";

/* BTF anchor: bpf2go emits the kind enum's Go constants from it. */
const enum block_event_kind *unused_block_event_kind __attribute__((unused));

/* block_events: the NAT's ring buffer of struct block_event. The loader
 * always replaces this definition with the NAT's live map; the size here
 * only has to be valid. */
struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 256 * 1024);
} block_events SEC(".maps");

struct canary_input {
	__u32 seq;
	__u32 epoch;
};

SEC("xdp")
int canary(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct canary_input *in = data;
	struct block_event *e;

	if ((void *)(in + 1) > data_end)
		return XDP_DROP;
	e = bpf_ringbuf_reserve(&block_events, sizeof(*e), 0);
	if (!e)
		return XDP_DROP;
	e->time_ns = bpf_ktime_get_ns();
	e->subscriber = in->seq;
	e->inside_addr = 0;
	e->public_addr = 0;
	e->port_lo = 0;
	e->port_hi = 0;
	e->epoch = in->epoch;
	e->kind = BLOCK_EVENT_CANARY;
	bpf_ringbuf_submit(e, 0);
	return XDP_PASS;
}

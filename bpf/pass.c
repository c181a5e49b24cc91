// SPDX-License-Identifier: (GPL-2.0-only OR MIT)
/*
 * xdp_pass does nothing, on purpose. It serves two needs: a veth peer only
 * accepts XDP_REDIRECTed frames while it has an XDP program (or GRO), and
 * benchmarks need the cost floor of running any XDP program at all.
 */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

char LICENSE[] SEC("license") = "Dual MIT/GPL";

SEC("xdp")
int xdp_pass(struct xdp_md *ctx)
{
	return XDP_PASS;
}

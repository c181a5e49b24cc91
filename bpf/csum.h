/* SPDX-License-Identifier: (GPL-2.0-only OR MIT) */
/*
 * Incremental Internet checksum updates (RFC 1624, eqn. 3):
 *     HC' = ~(~HC + ~m + m')
 * The ones' complement sum does not depend on byte order, so values are fed
 * in exactly as they sit in the packet. bpf_csum_diff is avoided on purpose:
 * it is a helper call per update, and these are a few ALU instructions.
 */
#ifndef BLOCKNAT_CSUM_H
#define BLOCKNAT_CSUM_H

#include <linux/types.h>

static __always_inline __u16 csum_fold(__u64 sum)
{
	sum = (sum & 0xffffffff) + (sum >> 32);
	sum = (sum & 0xffff) + (sum >> 16);
	sum = (sum & 0xffff) + (sum >> 16);
	sum = (sum & 0xffff) + (sum >> 16);
	return (__u16)sum;
}

/* csum_replace4 updates a checksum for a 32-bit field changing from -> to. */
static __always_inline __sum16 csum_replace4(__sum16 check, __be32 from, __be32 to)
{
	__u64 sum = (__u16)~check;

	sum += (__u32)~from;
	sum += to;
	return ~csum_fold(sum);
}

/* csum_replace2 updates a checksum for a 16-bit field changing from -> to. */
static __always_inline __sum16 csum_replace2(__sum16 check, __be16 from, __be16 to)
{
	__u64 sum = (__u16)~check;

	sum += (__u16)~from;
	sum += to;
	return ~csum_fold(sum);
}

/*
 * The UDP checksum 0 means "none" and must stay 0 (RFC 768). A computed
 * result of 0 is sent as 0xffff, which is the same value in ones' complement.
 */
static __always_inline __sum16 udp_csum_mangled(__sum16 check)
{
	return check ? check : (__sum16)0xffff;
}

#endif

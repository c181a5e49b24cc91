/* SPDX-License-Identifier: (GPL-2.0-only OR MIT) */
/*
 * The mapping's fixed parameters. They change only with a new epoch, which
 * loads a new program, so they are constants the verifier can see. The
 * loader sets every one (spec.Variables); the defaults only make the object
 * loadable alone.
 */
#ifndef BLOCKNAT_CONFIG_H
#define BLOCKNAT_CONFIG_H

#include <linux/types.h>

volatile const __u16 port_lo = 1024;
volatile const __u16 block_size = 64;
volatile const __u32 sharing_ratio = 1; /* subscribers per public address */
volatile const __u32 subscriber_count = 1;
volatile const __u32 epoch = 0;
/* Address-and-port-dependent filtering instead of endpoint-independent. */
volatile const __u8 filter_apdf = 0;
/* Let inbound UDP keep its mapping alive (RFC 4787 REQ-6). */
volatile const __u8 udp_inbound_refresh = 0;
/* The lowest and highest pool address, host order: outside this range a
 * destination is no pool address, which spares the hash lookup on almost
 * every outbound packet. */
volatile const __u32 pool_min = 0;
volatile const __u32 pool_max = 0xffffffff;
/* The lowest and highest inside address, host order: the same shortcut
 * for the inside prefixes' trie. */
volatile const __u32 inside_min = 0;
volatile const __u32 inside_max = 0xffffffff;
/* Whether nat_exempt and inside_public hold a prefix: without one, the
 * established path pays no lookup for them. */
volatile const __u8 nat_exempt_on = 0;
volatile const __u8 public_inside_on = 0;
/* The lowest and highest address of each (host order): most packets fall
 * outside the range and pay no trie lookup. */
volatile const __u32 exempt_min = 0;
volatile const __u32 exempt_max = 0xffffffff;
volatile const __u32 public_min = 0;
volatile const __u32 public_max = 0xffffffff;
/* Overflow blocks (ports.overflow): ov_count blocks of ov_block_size ports
 * from port_lo, ov_per_addr of them on each overflow address; a subscriber
 * holds at most ov_max (no more than OVERFLOW_SLOTS). */
volatile const __u8 overflow_on = 0;
volatile const __u16 ov_block_size = 1;
volatile const __u32 ov_per_addr = 1;
volatile const __u32 ov_count = 1;
volatile const __u32 ov_max = 0;
/* The PCP server is on (pcp.enabled): requests to it that fail the
 * inside source validation are marked (bpf/nat.c, inside_local). */
volatile const __u8 pcp_on = 0;

#endif

package loader

// The generated objects are committed so that `go build` needs no clang.
// -mcpu=v3 gives the atomics that block activation relies on.
//go:generate go tool bpf2go -target bpfel -cflags "-O2 -g -Wall -Werror -mcpu=v3" -type block_event -type flow_key -type flow_fwd -type flow_rev -type subscriber_state -type inside_prefix -type lpm_v4_key -type stat_index -type frag_key -type frag_val -type filter_key -type src_binding -type iface_source_key -type iface_policy_flags -type block_event_kind -type flow_proto -type flow_state -type iface_role -type iface_limits -type flow_clock -type exempt_limits -type overflow_limits -type overflow_block -type nexthop_key -type nexthop -type route_state -type pcp_op -type pcp_entry -type pcp_op_flags -type pcp_op_result -type pcp_entry_flags -type pcp_ports -type flow_rev_flags nat ../bpf/nat.c -- -I../bpf
//go:generate go tool bpf2go -target bpfel -cflags "-O2 -g -Wall -Werror" baseline ../bpf/baseline.c -- -I../bpf

package loader

import (
	"fmt"

	"github.com/cilium/ebpf"
)

// StatNames names every index of the stats array (enum stat_index in
// bpf/stats.h), in order. A test fails if the two fall out of step.
var StatNames = [...]string{
	natStatIndexSTAT_OUT_PACKETS:            "out_packets",
	natStatIndexSTAT_OUT_BYTES:              "out_bytes",
	natStatIndexSTAT_IN_PACKETS:             "in_packets",
	natStatIndexSTAT_IN_BYTES:               "in_bytes",
	natStatIndexSTAT_NEW_FLOWS:              "new_flows",
	natStatIndexSTAT_BLOCK_ACTIVATIONS:      "block_activations",
	natStatIndexSTAT_PASS_NOT_IPV4:          "pass_not_ipv4",
	natStatIndexSTAT_PASS_LOCAL:             "pass_local",
	natStatIndexSTAT_PASS_LOCAL_SERVICE:     "pass_local_service",
	natStatIndexSTAT_PASS_TTL:               "pass_ttl",
	natStatIndexSTAT_PASS_FIB:               "pass_fib",
	natStatIndexSTAT_PASS_FRAG_NEEDED:       "pass_frag_needed",
	natStatIndexSTAT_PASS_NOT_POOL:          "pass_not_pool",
	natStatIndexSTAT_PASS_NOT_NAT:           "pass_not_nat",
	natStatIndexSTAT_DROP_MALFORMED:         "drop_malformed",
	natStatIndexSTAT_DROP_SPOOFED:           "drop_spoofed",
	natStatIndexSTAT_DROP_NO_MAPPING:        "drop_no_mapping",
	natStatIndexSTAT_DROP_BLOCK_FULL:        "drop_block_full",
	natStatIndexSTAT_DROP_UNSUPPORTED:       "drop_unsupported",
	natStatIndexSTAT_DROP_FRAGMENT:          "drop_fragment",
	natStatIndexSTAT_DROP_FLOW_TABLE:        "drop_flow_table",
	natStatIndexSTAT_RINGBUF_FULL:           "ringbuf_full",
	natStatIndexSTAT_HAIRPIN:                "hairpin",
	natStatIndexSTAT_ICMP_ERRORS_IN:         "icmp_errors_in",
	natStatIndexSTAT_DROP_ICMP_ERROR:        "drop_icmp_error",
	natStatIndexSTAT_FRAGMENTS:              "fragments",
	natStatIndexSTAT_DROP_FILTERED:          "drop_filtered",
	natStatIndexSTAT_ICMP_BLOCK_FULL:        "icmp_block_full",
	natStatIndexSTAT_DROP_MARTIAN_DST:       "drop_martian_dst",
	natStatIndexSTAT_DROP_MARTIAN_SRC:       "drop_martian_src",
	natStatIndexSTAT_DROP_FRAGMENT_INACTIVE: "drop_fragment_inactive",
	natStatIndexSTAT_DROP_SPOOFED_BINDING:   "drop_spoofed_binding",
	natStatIndexSTAT_EXEMPT_OUT:             "exempt_out",
	natStatIndexSTAT_PUBLIC_OUT:             "public_out",
	natStatIndexSTAT_OVERFLOW_CLAIMS:        "overflow_claims",
	natStatIndexSTAT_OVERFLOW_REFUSED_MAX:   "overflow_refused_max",
	natStatIndexSTAT_OVERFLOW_REFUSED_POOL:  "overflow_refused_pool",
	natStatIndexSTAT_PCP_SUSPECT:            "pcp_suspect",
}

// Stats are the data plane's counters summed over all CPUs, by name.
type Stats map[string]uint64

// Stats reads the per-CPU counters and sums them.
func (n *NAT) Stats() (Stats, error) {
	return readStats(n.objs.Stats)
}

func readStats(m *ebpf.Map) (Stats, error) {
	out := make(Stats, len(StatNames))
	var perCPU []uint64
	for i, name := range StatNames {
		key := uint32(i)
		if err := m.Lookup(&key, &perCPU); err != nil {
			return nil, fmt.Errorf("read stat %s: %w", name, err)
		}
		var sum uint64
		for _, v := range perCPU {
			sum += v
		}
		out[name] = sum
	}
	return out, nil
}

// ResetStats zeroes every counter; tests use it between cases.
func (n *NAT) ResetStats() error {
	zero := make([]uint64, ebpf.MustPossibleCPU())
	for i := range StatNames {
		key := uint32(i)
		if err := n.objs.Stats.Update(&key, zero, ebpf.UpdateAny); err != nil {
			return fmt.Errorf("reset stat %s: %w", StatNames[i], err)
		}
	}
	return nil
}

// BaselineSpec is the object of bpf/baseline.c (xdp_pass, xdp_forward,
// xdp_redirect): the floors benchmarks measure blocknat against.
func BaselineSpec() (*ebpf.CollectionSpec, error) { return loadBaseline() }

package loader

import (
	"errors"
	"net/netip"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"github.com/cilium/ebpf"

	"github.com/blocknat/blocknat/userspace/mapping"
)

// processed reads "processed N insns" from a verifier log.
var processed = regexp.MustCompile(`processed (\d+) insns`)

// TestVerifierBudget loads both programs with the features that make the
// inside path longest (overflow blocks with realistic block sizes, NAT
// exemption, address-and-port-dependent filtering) and without, and keeps
// the instructions the verifier processes well below its limit of one
// million, so that a feature added later has room. The counts are logged
// (go test -v -run VerifierBudget) for BENCHMARKS.md.
func TestVerifierBudget(t *testing.T) {
	m, err := mapping.New(prefixesOf(t, []string{"100.64.0.0/16"}), prefixesOf(t, []string{"198.51.100.0/24"}), 1024, 65535, 0)
	if err != nil {
		t.Fatal(err)
	}
	o, err := mapping.NewOverflow(prefixesOf(t, []string{"203.0.113.0/28"}), 1024, 65535, 2016, 4)
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		name string
		p    Params
	}{
		{"plain", Params{Mapping: m}},
		{"overflow", Params{Mapping: m, Overflow: o}},
		{"apdf", Params{Mapping: m, FilterAPDF: true, UDPInboundRefresh: true}},
		{"exempt", Params{Mapping: m, Exempt: []netip.Prefix{netip.MustParsePrefix("192.0.2.53/32")}, PublicInside: []netip.Prefix{netip.MustParsePrefix("192.0.2.128/25")}}},
		{"everything on", Params{Mapping: m, Overflow: o, FilterAPDF: true, UDPInboundRefresh: true, PCP: true,
			Exempt: []netip.Prefix{netip.MustParsePrefix("192.0.2.53/32")}, PublicInside: []netip.Prefix{netip.MustParsePrefix("192.0.2.128/25")}}},
	} {
		spec, err := prepareSpec(c.p)
		if err != nil {
			t.Fatal(err)
		}
		for _, ms := range spec.Maps {
			ms.Pinning = ebpf.PinNone
		}
		coll, err := ebpf.NewCollectionWithOptions(spec, ebpf.CollectionOptions{Programs: ebpf.ProgramOptions{LogLevel: ebpf.LogLevelStats}})
		if err != nil {
			var ve *ebpf.VerifierError
			if errors.As(err, &ve) && len(ve.Log) > 8 {
				t.Errorf("%s: load: %v\n%s", c.name, err, strings.Join(ve.Log[len(ve.Log)-8:], "\n"))
			}
			t.Errorf("%s: load: %v", c.name, err)
			continue
		}
		for _, name := range []string{"xdp_inside", "xdp_outside", "pcp_map"} {
			got := processed.FindStringSubmatch(coll.Programs[name].VerifierLog)
			if got == nil {
				t.Fatalf("%s %s: no instruction count in the verifier log:\n%s", c.name, name, coll.Programs[name].VerifierLog)
			}
			n, _ := strconv.Atoi(got[1])
			t.Logf("%s, %s: %d instructions processed", c.name, name, n)
			if n > 500_000 {
				t.Errorf("%s, %s: the verifier processed %d instructions, over half its limit", c.name, name, n)
			}
		}
		coll.Close()
	}
}

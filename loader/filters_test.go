package loader

import (
	"path/filepath"
	"testing"

	"github.com/blocknat/blocknat/userspace/mapping"
)

// TestFilterTableOnlyWithAPDF: the filter table is sized like the flow
// tables with address-and-port-dependent filtering and holds a single
// unused entry otherwise; a restart in the other mode over the same pins
// loads, with a table of the new size.
func TestFilterTableOnlyWithAPDF(t *testing.T) {
	requirePrivileged(t)
	pinDir := filepath.Join(mountTestBPFFS(t), "blocknat")
	m, err := mapping.New(prefixesOf(t, []string{"100.64.0.0/24"}), prefixesOf(t, []string{"198.51.100.10/31"}), 1024, 65535, 0)
	if err != nil {
		t.Fatal(err)
	}
	full := uint32(m.FlowsNeeded())
	for _, c := range []struct {
		apdf bool
		want uint32
	}{{false, 1}, {true, full}, {false, 1}} {
		nat, err := Load(Params{Mapping: m, Epoch: 1, FilterAPDF: c.apdf}, pinDir)
		if err != nil {
			t.Fatalf("load with apdf=%v over the pins of the other mode: %v", c.apdf, err)
		}
		if got := nat.objs.Filters.MaxEntries(); got != c.want {
			t.Errorf("apdf=%v: filters holds %d entries, want %d", c.apdf, got, c.want)
		}
		if got := nat.objs.FlowsFwd.MaxEntries(); got != full {
			t.Errorf("apdf=%v: flows_fwd holds %d entries, want %d", c.apdf, got, full)
		}
		nat.Close()
	}
	if err := Detach(pinDir); err != nil {
		t.Fatal(err)
	}
}

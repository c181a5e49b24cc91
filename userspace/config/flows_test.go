package config

import (
	"testing"

	"github.com/blocknat/blocknat/loader"
)

// TestFlowsNeededAsLoaded: the configuration checks max_flows with the
// mapping's FlowsNeeded, so that it need not import the loader (and, with
// it, the eBPF library into the CLI); the loader sizes the tables with its
// own. The two must agree.
func TestFlowsNeededAsLoaded(t *testing.T) {
	c, err := Parse([]byte(minimal))
	if err != nil {
		t.Fatal(err)
	}
	m, err := c.Mapping()
	if err != nil {
		t.Fatal(err)
	}
	if got, want := m.FlowsNeeded(), loader.FlowsNeeded(m); got != want || uint64(c.MaxFlows) != want {
		t.Errorf("mapping says %d flows, loader %d, max_flows defaulted to %d", got, want, c.MaxFlows)
	}
	if got, want := m.FlowsExplained(), loader.FlowsExplained(m); got != want {
		t.Errorf("mapping explains %q, loader %q", got, want)
	}
}

package config

import "testing"

// TestMaxFlowsDefaultsToWhatTheMappingNeeds: an absent max_flows becomes
// the mapping's FlowsNeeded, the size the loader checks the tables
// against, so that no subscriber can take another's capacity.
func TestMaxFlowsDefaultsToWhatTheMappingNeeds(t *testing.T) {
	c, err := Parse([]byte(minimal))
	if err != nil {
		t.Fatal(err)
	}
	m, err := c.Mapping()
	if err != nil {
		t.Fatal(err)
	}
	if want := m.FlowsNeeded(); uint64(c.MaxFlows) != want || want == 0 {
		t.Errorf("max_flows defaulted to %d, the mapping needs %d", c.MaxFlows, want)
	}
}

package loader

import (
	"testing"

	"github.com/blocknat/blocknat/userspace/mapping"
)

// TestFlowsPerSubscriber: a forward table larger than one batch is counted
// whole, by subscriber, and agrees with the walk of every mapping.
func TestFlowsPerSubscriber(t *testing.T) {
	requirePrivileged(t)
	m, err := mapping.New(prefixesOf(t, []string{"100.64.0.0/20"}), prefixesOf(t, []string{"198.51.100.10/32"}), 1024, 65535, 4)
	if err != nil {
		t.Fatal(err)
	}
	nat, err := Load(Params{Mapping: m, Epoch: 1}, "")
	if err != nil {
		t.Fatal(err)
	}
	defer nat.Close()
	want := map[uint32]int{}
	port, total := uint16(0), 0
	for sub := uint32(0); sub < 3000; sub++ {
		for range sub % 5 {
			port++
			if err := nat.AddMapping(FlowKey{Addr: sub, Port: port, Proto: ProtoUDP}, FlowFwd{Subscriber: sub, NatPort: port}); err != nil {
				t.Fatal(err)
			}
			want[sub]++
			total++
		}
	}
	if total <= flowBatch {
		t.Fatalf("the table holds %d mappings: not more than one batch of %d", total, flowBatch)
	}
	got, err := nat.FlowsPerSubscriber()
	if err != nil {
		t.Fatal(err)
	}
	walked := map[uint32]int{}
	if err := nat.Flows(func(_ FlowKey, v FlowFwd) error { walked[v.Subscriber]++; return nil }); err != nil {
		t.Fatal(err)
	}
	if len(got) != len(want) || len(walked) != len(want) {
		t.Fatalf("%d subscribers counted, %d walked, want %d", len(got), len(walked), len(want))
	}
	for sub, n := range want {
		if got[sub] != n || walked[sub] != n {
			t.Errorf("subscriber %d: %d counted, %d walked, want %d", sub, got[sub], walked[sub], n)
		}
	}
}

package metrics

import (
	"net/netip"
	"os"
	"testing"
	"time"

	"github.com/blocknat/blocknat/loader"
	"github.com/blocknat/blocknat/userspace/mapping"
)

func requireRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() == 0 {
		return
	}
	if os.Getenv("BLOCKNAT_REQUIRE_PRIVILEGED") == "1" {
		t.Fatal("needs root to create BPF maps, and BLOCKNAT_REQUIRE_PRIVILEGED=1 forbids skipping")
	}
	t.Skip("needs root to create BPF maps")
}

// TestScanBlocks: the NAT's real kernel tables (nothing attached):
// utilisation is the share of a block's ports held by forward mappings,
// only active blocks are counted, and a table larger than one batch is
// read whole (loader's TestFlowsPerSubscriber proves the batches).
func TestScanBlocks(t *testing.T) {
	requireRoot(t)
	const blockSize = 4
	const subs = 3000
	m, err := mapping.New([]netip.Prefix{netip.MustParsePrefix("100.64.0.0/20")}, []netip.Prefix{netip.MustParsePrefix("198.51.100.10/32")}, 1024, 65535, blockSize)
	if err != nil {
		t.Fatal(err)
	}
	nat, err := loader.Load(loader.Params{Mapping: m, Epoch: 1}, "")
	if err != nil {
		t.Fatal(err)
	}
	defer nat.Close()

	// Subscriber i holds i%5 mappings (0..4 of 4 ports; more than the
	// block cannot happen, 4 is full). Every third subscriber is idle,
	// though idle ones may still hold a mapping the sweeper has not
	// expired: those count as flows but not as blocks.
	want := BlockUsage{BlockSize: blockSize, Counts: make([]uint64, len(UtilisationBuckets))}
	now := uint64(10 * time.Minute)
	port := uint16(0)
	for i := uint32(0); i < subs; i++ {
		n := int(i % 5)
		for range n {
			port++
			key := loader.FlowKey{Addr: i, Port: port, Proto: loader.ProtoUDP}
			val := loader.FlowFwd{Subscriber: i, NatPort: port}
			if err := nat.AddMapping(key, val); err != nil {
				t.Fatal(err)
			}
		}
		want.Flows += n
		st := loader.SubscriberState{}
		// Every seventh refused a flow 10 s ago (full, whatever its
		// count says), every eleventh two minutes ago (no longer).
		switch {
		case i%7 == 0:
			st.LastIcmpNs = now - uint64(10*time.Second)
		case i%11 == 0:
			st.LastIcmpNs = now - uint64(2*time.Minute)
		}
		if i%3 != 0 {
			st.Active = 1
			frac := float64(n) / blockSize
			want.ActiveBlocks++
			want.Sum += frac
			if n == blockSize || i%7 == 0 {
				want.Full++
			}
			for b, bound := range UtilisationBuckets {
				if frac <= bound {
					want.Counts[b]++
				}
			}
		}
		if err := nat.SetSubscriber(i, st); err != nil {
			t.Fatal(err)
		}
	}
	got, err := ScanBlocks(nat, blockSize, now)
	if err != nil {
		t.Fatal(err)
	}
	if got.ActiveBlocks != want.ActiveBlocks || got.Flows != want.Flows || got.Full != want.Full || got.Sum != want.Sum {
		t.Errorf("scan: active %d flows %d full %d sum %v; want %d %d %d %v",
			got.ActiveBlocks, got.Flows, got.Full, got.Sum, want.ActiveBlocks, want.Flows, want.Full, want.Sum)
	}
	for b := range UtilisationBuckets {
		if got.Counts[b] != want.Counts[b] {
			t.Errorf("bucket le=%v: %d blocks, want %d", UtilisationBuckets[b], got.Counts[b], want.Counts[b])
		}
	}
	if _, err := ScanBlocks(nat, 0, now); err == nil {
		t.Error("block size 0 accepted")
	}
}

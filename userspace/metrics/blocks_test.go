package metrics

import (
	"encoding/binary"
	"os"
	"testing"

	"github.com/cilium/ebpf"

	"github.com/blocknat/blocknat/loader"
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

// TestScanBlocks: real kernel tables shaped like the NAT's: utilisation is
// the share of a block's ports held by forward mappings, only active
// blocks are counted, and a table larger than one batch is read whole.
func TestScanBlocks(t *testing.T) {
	requireRoot(t)
	const blockSize = 4
	const subs = 3000
	flows, err := ebpf.NewMap(&ebpf.MapSpec{Type: ebpf.Hash, KeySize: uint32(binary.Size(loader.FlowKey{})),
		ValueSize: uint32(binary.Size(loader.FlowFwd{})), MaxEntries: 16384})
	if err != nil {
		t.Fatal(err)
	}
	defer flows.Close()
	subscribers, err := ebpf.NewMap(&ebpf.MapSpec{Type: ebpf.Array, KeySize: 4,
		ValueSize: uint32(binary.Size(loader.SubscriberState{})), MaxEntries: subs})
	if err != nil {
		t.Fatal(err)
	}
	defer subscribers.Close()

	// Subscriber i holds i%5 mappings (0..4 of 4 ports; more than the
	// block cannot happen, 4 is full). Every third subscriber is idle,
	// though idle ones may still hold a mapping the sweeper has not
	// expired: those count as flows but not as blocks.
	want := BlockUsage{BlockSize: blockSize, Counts: make([]uint64, len(UtilisationBuckets))}
	port := uint16(0)
	for i := uint32(0); i < subs; i++ {
		n := int(i % 5)
		for range n {
			port++
			key := loader.FlowKey{Addr: i, Port: port, Proto: 17}
			val := loader.FlowFwd{Subscriber: i, NatPort: port}
			if err := flows.Put(&key, &val); err != nil {
				t.Fatal(err)
			}
		}
		want.Flows += n
		st := loader.SubscriberState{}
		if i%3 != 0 {
			st.Active = 1
			frac := float64(n) / blockSize
			want.ActiveBlocks++
			want.Sum += frac
			if n == blockSize {
				want.Full++
			}
			for b, bound := range UtilisationBuckets {
				if frac <= bound {
					want.Counts[b]++
				}
			}
		}
		if err := subscribers.Put(&i, &st); err != nil {
			t.Fatal(err)
		}
	}
	if want.Flows <= flowBatch {
		t.Fatalf("the table holds %d mappings: not more than one batch of %d", want.Flows, flowBatch)
	}

	got, err := ScanBlocks(flows, subscribers, blockSize)
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
	if _, err := ScanBlocks(flows, subscribers, 0); err == nil {
		t.Error("block size 0 accepted")
	}
}

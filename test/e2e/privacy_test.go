package e2e

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/cilium/ebpf"

	"github.com/blocknat/blocknat/loader"
)

// TestPrivacyPinnedMapsAfterExpiry: with address-and-port-dependent
// filtering the filter table names the servers while their mappings live;
// once every mapping has expired, no pinned map holds a server's address.
func TestPrivacyPinnedMapsAfterExpiry(t *testing.T) {
	e := startEnvWith(t, "bn-e2epmap", "filtering: address-and-port-dependent\n"+
		"timeouts: {udp: 1s, tcp_established: 2s, tcp_transitory: 1s, icmp: 1s, block_idle: 1s}\nintervals: {sweep: 200ms}\n")
	e.browseBothServers(t)
	var needles [][]byte
	for _, a := range e.topo.ServerAddrs {
		b := a.As4()
		needles = append(needles, b[:])
	}
	// While the mappings live, the filter table names the servers: the
	// check below would otherwise prove nothing.
	if found := destinationsInPinnedMaps(t, e.pinDir, needles); found["filters"] == 0 {
		t.Fatalf("filters names no server while the mappings live (found %v)", found)
	}
	deadline := time.Now().Add(15 * time.Second)
	for {
		flows := readPinned(t, e, (*loader.Pinned).Flows)
		found := destinationsInPinnedMaps(t, e.pinDir, needles)
		if len(flows) == 0 && len(found) == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("15s on: %d mappings live, destinations in pinned maps: %v", len(flows), found)
		}
		time.Sleep(200 * time.Millisecond)
	}
	// The pins outlive the agent: after it stops they still name no one.
	if err := e.agent.Stop(); err != nil {
		t.Fatal(err)
	}
	if found := destinationsInPinnedMaps(t, e.pinDir, needles); len(found) != 0 {
		t.Errorf("after expiry and stop, pinned maps hold destinations: %v", found)
	}
}

// destinationsInPinnedMaps counts, per pinned map, the entries whose key
// or value bytes contain one of needles. The ring buffer cannot be read
// as a table; per-CPU values are counters and only their keys are read.
func destinationsInPinnedMaps(t *testing.T, pinDir string, needles [][]byte) map[string]int {
	t.Helper()
	dir := filepath.Join(pinDir, "maps")
	names, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	found := map[string]int{}
	read := 0
	for _, n := range names {
		m, err := ebpf.LoadPinnedMap(filepath.Join(dir, n.Name()), &ebpf.LoadPinOptions{ReadOnly: true})
		if err != nil {
			t.Fatalf("open pinned map %s: %v", n.Name(), err)
		}
		hit := func(b []byte) bool {
			for _, nd := range needles {
				if bytes.Contains(b, nd) {
					return true
				}
			}
			return false
		}
		switch m.Type() {
		case ebpf.RingBuf:
		case ebpf.PerCPUArray, ebpf.PerCPUHash, ebpf.LRUCPUHash:
			key := make([]byte, m.KeySize())
			next := make([]byte, m.KeySize())
			var prev any
			for {
				if err := m.NextKey(prev, &next); err != nil {
					break
				}
				if hit(next) {
					found[n.Name()]++
				}
				copy(key, next)
				prev = key
			}
			read++
		default:
			var k, v []byte
			it := m.Iterate()
			for it.Next(&k, &v) {
				if hit(k) || hit(v) {
					found[n.Name()]++
				}
			}
			if err := it.Err(); err != nil {
				t.Fatalf("read pinned map %s: %v", n.Name(), err)
			}
			read++
		}
		m.Close()
	}
	if read < 5 {
		t.Fatalf("read %d pinned maps: the check proves little", read)
	}
	return found
}

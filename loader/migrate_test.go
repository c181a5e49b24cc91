package loader

import (
	"encoding/binary"
	"errors"
	"net/netip"
	"os"
	"path/filepath"
	"testing"

	"github.com/cilium/ebpf"
)

// flowFwdV1 encodes an entry in the 32-byte layout of earlier releases, by
// its offsets: last_seen_ns u64, nat_addr, nat_port, state, close_acks,
// subscriber, peer_addr, peer_port, 6 bytes of padding.
func flowFwdV1(lastSeenNs uint64, v FlowFwd) []byte {
	b := make([]byte, flowFwdV1Size)
	le := binary.LittleEndian
	le.PutUint64(b[0:], lastSeenNs)
	le.PutUint32(b[8:], v.NatAddr)
	le.PutUint16(b[12:], v.NatPort)
	b[14], b[15] = v.State, v.CloseAcks
	le.PutUint32(b[16:], v.Subscriber)
	le.PutUint32(b[20:], v.PeerAddr)
	le.PutUint16(b[24:], v.PeerPort)
	return b
}

// pinOldFlowTable replaces the pinned flows_fwd with a table of the
// 32-byte layout holding entries, as an agent of an earlier release left
// it, with maxEntries entries of room.
func pinOldFlowTable(t *testing.T, pinDir string, maxEntries uint32, entries map[FlowKey][]byte) {
	t.Helper()
	path := filepath.Join(pinDir, mapsDir, "flows_fwd")
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		t.Fatal(err)
	}
	old, err := ebpf.NewMap(&ebpf.MapSpec{Type: ebpf.Hash, KeySize: 8, ValueSize: flowFwdV1Size, MaxEntries: maxEntries})
	if err != nil {
		t.Fatal(err)
	}
	defer old.Close()
	for k, v := range entries {
		if err := old.Put(&k, v); err != nil {
			t.Fatal(err)
		}
	}
	if err := old.Pin(path); err != nil {
		t.Fatal(err)
	}
}

// TestUpgradeCarriesMappingsToTheNewLayout: an agent of this release,
// started on the pinned flow table of a release with 32-byte entries, keeps
// every mapping: the same flow leaves from the same public port with no new
// mapping made, its fields and clock are carried over, and the next start
// has nothing left to migrate. A table of another capacity is not touched,
// and Load refuses it as a changed configuration.
func TestUpgradeCarriesMappingsToTheNewLayout(t *testing.T) {
	ns := newTestNS(t)
	pinDir := filepath.Join(mountTestBPFFS(t), "blocknat")
	m := newFixtureMapping(t, []string{"100.64.0.0/24"}, []string{"198.51.100.10/31"})
	p := Params{Mapping: m, Epoch: 7}
	load := func() *NAT {
		t.Helper()
		nat, err := Load(p, pinDir)
		if err != nil {
			t.Fatalf("load: %v", err)
		}
		return nat
	}
	flow := udpOut(sub2+":40000", server+":53")

	nat := load()
	f := fixtureOn(t, ns, nat, m)
	mapped := mapOut(flow)(f)
	key := FlowKey{Addr: be32(netip.MustParseAddr(sub2)), Port: htons(40000), Proto: ProtoUDP}
	made, ok, err := nat.LookupFlow(key)
	if err != nil || !ok {
		t.Fatalf("the mapping just made is not in flows_fwd: %v", err)
	}
	made.PeerAddr, made.PeerPort, made.CloseAcks = be32(netip.MustParseAddr(server)), htons(53), 2 // every field distinct
	size := nat.objs.FlowsFwd.MaxEntries()
	nat.Close()

	seen := MonotonicNow()
	pinOldFlowTable(t, pinDir, size, map[FlowKey][]byte{key: flowFwdV1(uint64(seen), made)})
	nat = load()
	if n := nat.MigratedFlows(); n != 1 {
		t.Fatalf("migrated %d mappings, want 1", n)
	}
	got, ok, err := nat.LookupFlow(key)
	if err != nil || !ok {
		t.Fatalf("the mapping is gone after the upgrade: %v", err)
	}
	want := made
	want.LastSeen = LastSeenUnit(uint64(seen))
	if got != want {
		t.Errorf("migrated entry %+v, want %+v", got, want)
	}
	if lag := uint64(seen) - got.LastSeenNs(); lag >= uint64(LastSeenResolution) {
		t.Errorf("last seen moved back by %d ns, more than the resolution %s", lag, LastSeenResolution)
	}
	f = fixtureOn(t, ns, nat, m)
	if err := nat.ResetStats(); err != nil { // the counters are pinned too
		t.Fatal(err)
	}
	act, out := f.outbound(flow.build(t))
	if act != xdpRedirect || decode(t, out).src() != mapped {
		t.Fatalf("after the upgrade the flow left as %s from %s, want XDP_REDIRECT from %s", actionNames[act], decode(t, out).src(), mapped)
	}
	if st := f.stats(); st["new_flows"] != 0 {
		t.Errorf("%d new flows after the upgrade, want 0 (the carried mapping)", st["new_flows"])
	}
	nat.Close()

	nat = load()
	if n := nat.MigratedFlows(); n != 0 {
		t.Errorf("second start migrated %d mappings, want 0", n)
	}
	nat.Close()

	pinOldFlowTable(t, pinDir, size+1, map[FlowKey][]byte{key: flowFwdV1(uint64(seen), made)})
	if nat, err := Load(p, pinDir); !errors.Is(err, ErrConfigChanged) {
		if err == nil {
			nat.Close()
		}
		t.Fatalf("load on a 32-byte table of another size: %v, want ErrConfigChanged", err)
	}
	if err := Detach(pinDir); err != nil {
		t.Fatal(err)
	}
}

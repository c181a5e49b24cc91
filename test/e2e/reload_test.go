package e2e

import (
	"net"
	"net/netip"
	"os"
	"sort"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/blocknat/blocknat/test/harness"
	"github.com/blocknat/blocknat/test/netns"
)

// TestReloadNewEpochKeepsValidMappings: SIGHUP with a changed port range
// starts epoch 2. Subscriber 2's block moves from 2032-2535 to 2022-2520:
// a mapping whose port is in both keeps it, one above 2520 gets a new port
// in the new block; the old record closes and a new one, in epoch 2, opens.
func TestReloadNewEpochKeepsValidMappings(t *testing.T) {
	e := startEnv(t, "bn-e2ereload")
	srv, err := netns.StartUDPEcho(e.topo.Internet, netip.AddrPortFrom(e.topo.ServerAddrs[0], 9000))
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	sub := e.topo.Subscribers[0]
	const mappings = 40
	send := func() []uint16 {
		t.Helper()
		for i := 0; i < mappings; i++ {
			if _, err := netns.UDPRoundTrip(sub.NS, uint16(41000+i), srv.Addr, []byte("x"), 3*time.Second); err != nil {
				t.Fatal(err)
			}
		}
		remotes := srv.Remotes()
		ports := make([]uint16, mappings)
		for i, r := range remotes[len(remotes)-mappings:] {
			ports[i] = r.Port()
		}
		return ports
	}
	before := send()
	beforeReload := time.Now()

	e.reloadWith(t, harness.Config(e.topo, e.stateDir, e.pinDir, "ports: {range: 1024-65000, block_size: 0}\n"))
	after := send()
	kept, moved := 0, 0
	for i := range before {
		switch {
		case before[i] <= 2520:
			kept++
			if after[i] != before[i] {
				t.Errorf("mapping %d: port %d was valid in the new block but became %d", i, before[i], after[i])
			}
		default:
			moved++
			if after[i] < 2022 || after[i] > 2520 {
				t.Errorf("mapping %d: port %d left the block; new port %d not in 2022-2520", i, before[i], after[i])
			}
		}
	}
	t.Logf("%d mappings kept their port, %d moved", kept, moved)

	time.Sleep(200 * time.Millisecond)
	if err := e.agent.Stop(); err != nil {
		t.Fatal(err)
	}
	st := e.openStore(t)
	epochs, err := st.Epochs()
	if err != nil || len(epochs) != 2 || epochs[1].ID != 2 || epochs[1].PortHi != 65000 {
		t.Fatalf("epochs %+v (%v), want epoch 2 for the new range", epochs, err)
	}
	recs, err := st.History(sub.Addr, beforeReload.Add(-time.Minute), time.Now())
	if err != nil {
		t.Fatal(err)
	}
	sort.Slice(recs, func(i, j int) bool { return recs[i].Start.Before(recs[j].Start) })
	if len(recs) != 2 || recs[0].Open() || recs[0].Epoch != 1 || recs[0].PortLo != 2032 ||
		!recs[1].Open() || recs[1].Epoch != 2 || recs[1].PortLo != 2022 || recs[1].PortHi != 2520 {
		t.Fatalf("records %+v: want epoch 1's block closed and epoch 2's open", recs)
	}
	// Lookups answer with the epoch in force at the time asked.
	if got, _ := st.Lookup(netip.MustParseAddr("198.51.100.10"), 2100, beforeReload, 0); len(got) != 1 || got[0].Epoch != 1 {
		t.Errorf("lookup before the reload: %+v", got)
	}
	if got, _ := st.Lookup(netip.MustParseAddr("198.51.100.10"), 2100, time.Now(), 0); len(got) != 1 || got[0].Epoch != 2 {
		t.Errorf("lookup after the reload: %+v", got)
	}
	_ = net.IPv4len
}

// TestReloadRefusesBadConfig: a broken file on SIGHUP is refused, naming
// the field, and the agent goes on translating.
func TestReloadRefusesBadConfig(t *testing.T) {
	e := startEnv(t, "bn-e2ereloadbad")
	if err := os.WriteFile(e.cfgPath, harness.Config(e.topo, e.stateDir, e.pinDir, "ports: {range: 9-1}\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := e.agent.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for !strings.Contains(e.agent.Log(), "reload refused") {
		if time.Now().After(deadline) {
			t.Fatalf("no refusal within 10s:\n%s", e.agent.Log())
		}
		time.Sleep(50 * time.Millisecond)
	}
	if !strings.Contains(e.agent.Log(), "ports.range") {
		t.Errorf("refusal does not name ports.range:\n%s", e.agent.Log())
	}
	srv, err := netns.StartUDPEcho(e.topo.Internet, netip.AddrPortFrom(e.topo.ServerAddrs[0], 9000))
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	if _, err := netns.UDPRoundTrip(e.topo.Subscribers[0].NS, 0, srv.Addr, []byte("x"), 3*time.Second); err != nil {
		t.Fatalf("traffic after a refused reload: %v", err)
	}
}

// TestRestartWithChangedMapping: the same change made while the agent is
// stopped: on start it opens the pinned tables with epoch 1's mapping and
// moves them to epoch 2, keeping the mappings that are still valid.
func TestRestartWithChangedMapping(t *testing.T) {
	e := startEnv(t, "bn-e2erestartmap")
	srv, err := netns.StartUDPEcho(e.topo.Internet, netip.AddrPortFrom(e.topo.ServerAddrs[0], 9000))
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	sub := e.topo.Subscribers[0]
	send := func(n int) []uint16 {
		t.Helper()
		for i := 0; i < n; i++ {
			if _, err := netns.UDPRoundTrip(sub.NS, uint16(42000+i), srv.Addr, []byte("x"), 3*time.Second); err != nil {
				t.Fatal(err)
			}
		}
		remotes := srv.Remotes()
		ports := make([]uint16, n)
		for i, r := range remotes[len(remotes)-n:] {
			ports[i] = r.Port()
		}
		return ports
	}
	before := send(20)
	if err := e.agent.Stop(); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(e.cfgPath, harness.Config(e.topo, e.stateDir, e.pinDir, "ports: {range: 1024-65000, block_size: 0}\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	e.start(t)
	if !strings.Contains(e.agent.Log(), "mapping changed since the last run") {
		t.Errorf("agent did not notice the changed mapping:\n%s", e.agent.Log())
	}
	after := send(20)
	for i := range before {
		if before[i] <= 2520 && after[i] != before[i] {
			t.Errorf("mapping %d: port %d still valid but became %d", i, before[i], after[i])
		}
		if after[i] < 2022 || after[i] > 2520 {
			t.Errorf("mapping %d: port %d outside the new block 2022-2520", i, after[i])
		}
	}
}

// reloadWith writes cfg as the agent's configuration, sends SIGHUP and
// waits until the agent says it reloaded.
func (e *env) reloadWith(t *testing.T, cfg []byte) {
	t.Helper()
	if err := os.WriteFile(e.cfgPath, cfg, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := e.agent.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for !strings.Contains(e.agent.Log(), "configuration reloaded") {
		if time.Now().After(deadline) {
			t.Fatalf("no reload within 10s:\n%s", e.agent.Log())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

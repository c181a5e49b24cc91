package e2e

import (
	"maps"
	"net/netip"
	"strconv"
	"testing"
	"time"

	"github.com/blocknat/blocknat/test/netns"
	"github.com/blocknat/blocknat/userspace/export/exporttest"
	"github.com/blocknat/blocknat/userspace/wire"
)

// agentStatus reads the agent's part of `blocknat status` through the
// real CLI.
func (e *env) agentStatus(t *testing.T) wire.Status {
	t.Helper()
	var st struct {
		Agent wire.Status `json:"agent"`
	}
	e.cli(t, &st, "status", "--json", "--config", e.cfgPath)
	return st.Agent
}

// overflowStatus reads the agent's overflow figures through the real CLI.
func (e *env) overflowStatus(t *testing.T) wire.OverflowStatus {
	t.Helper()
	st := e.agentStatus(t)
	if st.Overflow == nil {
		t.Fatalf("status shows no overflow pool")
	}
	return *st.Overflow
}

// lookupAt asks the real CLI who had public:port at the second t.
func (e *env) lookupAt(t *testing.T, public netip.AddrPort, at time.Time) wire.LookupResponse {
	t.Helper()
	var ans wire.LookupResponse
	e.cli(t, &ans, "lookup", "--config="+e.cfgPath, "--ip", public.Addr().String(), "--port", strconv.Itoa(int(public.Port())),
		"--time", at.UTC().Format(time.RFC3339), "--purpose", "case 2026-0042", "--json")
	return ans
}

func (e *env) waitOverflowInUse(t *testing.T, n int, within time.Duration) {
	t.Helper()
	deadline := time.Now().Add(within)
	for e.overflowStatus(t).InUse != n {
		if time.Now().After(deadline) {
			t.Fatalf("overflow blocks in use: %d after %s, want %d\n%s", e.overflowStatus(t).InUse, within, n, e.agent.Log())
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// TestOverflowBlockEndToEnd: with the real agent, a subscriber that opens
// more flows than its 8-port block gets its next flow from the one
// overflow block, which the server sees as the overflow address; a lookup
// of that address and port names the subscriber; after block_idle the
// block is released, and the other subscriber, past its own block,
// claims it; a lookup at each time names the one that held it then; a
// kill -9 and a restart keep the block, its record, and no second one.
func TestOverflowBlockEndToEnd(t *testing.T) {
	const overflowAddr = "198.51.100.20"
	topo := netns.NewTestTopology(t, "bn-e2eoverflow")
	const syslogAt = "127.0.0.1:5515"
	e := prepareEnvOn(t, topo, "ports: {range: 1024-2047, block_size: 0, overflow: {pool: ["+overflowAddr+"], block_size: 1024}}\n"+
		"timeouts: {udp: 3s, block_idle: 1s}\nintervals: {sweep: 200ms}\n"+
		"export: {syslog: {address: \""+syslogAt+"\", network: udp}}\n")
	var sys *exporttest.SyslogUDP
	if err := topo.Router.Do(func() (err error) { sys, err = exporttest.ListenSyslogUDP(netip.MustParseAddrPort(syslogAt)); return err }); err != nil {
		t.Fatal(err)
	}
	defer sys.Close()
	if out, err := topo.Internet.Exec(t.Context(), "ip", "route", "add", overflowAddr+"/32", "via", topo.RouterOutside.String()); err != nil {
		t.Fatalf("route to the overflow address: %v %s", err, out)
	}
	srv, err := netns.StartUDPEcho(topo.Internet, netip.AddrPortFrom(topo.ServerAddrs[0], 9000))
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	e.start(t)
	if b := e.forward(t, topo.Subscribers[0].Addr); b.PortHi-b.PortLo+1 != 8 {
		t.Fatalf("own block %+v, want 8 ports", b)
	}
	if st := e.overflowStatus(t); st.InUse != 0 || st.Free != 1 || st.MaxBlocks != 1 {
		t.Fatalf("overflow at start %+v, want 1 free block, 1 a subscriber", st)
	}

	// fill has sub make 9 flows: 8 fill its block, the 9th needs the
	// overflow block. It returns the 9th's public side, as the server saw
	// it, and the second in which it was seen.
	fill := func(sub *netns.Subscriber) (netip.AddrPort, time.Time) {
		t.Helper()
		before := len(srv.Remotes())
		for i := range 9 {
			if _, err := netns.UDPRoundTrip(sub.NS, uint16(41000+i), srv.Addr, []byte("x"), 2*time.Second); err != nil {
				t.Fatalf("%s flow %d: %v", sub.Addr, i+1, err)
			}
		}
		at := time.Now()
		seen := srv.Remotes()[before:]
		own := e.forward(t, sub.Addr)
		var over []netip.AddrPort
		for _, r := range seen {
			if r.Addr() == own.Public && r.Port() >= own.PortLo && r.Port() <= own.PortHi {
				continue
			}
			over = append(over, r)
		}
		if len(over) != 1 || over[0].Addr().String() != overflowAddr {
			t.Fatalf("%s's 9 flows reached the server from %v; want 8 from its block %s:%d-%d and one from %s",
				sub.Addr, seen, own.Public, own.PortLo, own.PortHi, overflowAddr)
		}
		return over[0], at
	}
	names := func(ans wire.LookupResponse, want netip.Addr) bool {
		return len(ans.Candidates) == 1 && ans.Candidates[0].Inside == want
	}
	// The record reaches the store a moment after the event that made it.
	lookup := func(public netip.AddrPort, at time.Time, want netip.Addr) wire.LookupResponse {
		t.Helper()
		ans := e.lookupAt(t, public, at)
		for deadline := time.Now().Add(3 * time.Second); !names(ans, want) && time.Now().Before(deadline); {
			time.Sleep(200 * time.Millisecond)
			ans = e.lookupAt(t, public, at)
		}
		return ans
	}

	sub0, sub1 := topo.Subscribers[0], topo.Subscribers[1]
	first, t0 := fill(sub0)
	if st := e.overflowStatus(t); st.InUse != 1 || st.Claims != 1 {
		t.Errorf("after the claim: %+v", st)
	}
	if ans := lookup(first, t0, sub0.Addr); !names(ans, sub0.Addr) {
		t.Fatalf("lookup of %s at %s: %+v, want %s alone", first, t0.Format(time.RFC3339), ans.Candidates, sub0.Addr)
	}

	// Idle: the flows expire (3 s), then the block (1 s more).
	e.waitOverflowInUse(t, 0, 15*time.Second)
	time.Sleep(1100 * time.Millisecond) // the next claim's second is not the release's
	second, t1 := fill(sub1)
	if second.Addr() != first.Addr() {
		t.Fatalf("the second claim left from %s, want the one overflow block's address %s", second, first.Addr())
	}
	if ans := lookup(second, t1, sub1.Addr); !names(ans, sub1.Addr) {
		var h wire.HistoryResponse
		e.cli(t, &h, "history", "--config="+e.cfgPath, "--subscriber", sub1.Addr.String(), "--from", t0.Add(-time.Minute).UTC().Format(time.RFC3339),
			"--to", time.Now().Add(time.Minute).UTC().Format(time.RFC3339), "--purpose", "case 2026-0042", "--json")
		t.Errorf("lookup of %s at %s: %+v, want %s alone; its history %+v", second, t1.Format(time.RFC3339), ans.Candidates, sub1.Addr, h)
	}
	if ans := lookup(first, t0, sub0.Addr); !names(ans, sub0.Addr) {
		t.Errorf("lookup of %s at %s after the handover: %+v, want %s alone", first, t0.Format(time.RFC3339), ans.Candidates, sub0.Addr)
	}

	// The export names the overflow block with its range: sub0's
	// allocation and release, and sub1's allocation.
	exported := func() map[string]int {
		n := map[string]int{}
		for _, line := range sys.Lines() {
			m, err := exporttest.ParseSyslog(line)
			if err != nil {
				t.Fatal(err)
			}
			if p := m.Params; p["postNATSourceIPv4Address"] == overflowAddr && p["portRangeStart"] == "1024" && p["portRangeEnd"] == "2047" {
				n[p["sourceIPv4Address"]+" "+p["natEvent"]]++
			}
		}
		return n
	}
	want := map[string]int{sub0.Addr.String() + " 16": 1, sub0.Addr.String() + " 17": 1, sub1.Addr.String() + " 16": 1}
	for deadline := time.Now().Add(3 * time.Second); !maps.Equal(exported(), want) && time.Now().Before(deadline); {
		time.Sleep(100 * time.Millisecond)
	}
	if got := exported(); !maps.Equal(got, want) {
		t.Errorf("syslog export of the overflow block %s:1024-2047: %v, want %v", overflowAddr, got, want)
	}

	// kill -9 and a restart while sub1 holds it.
	if err := e.agent.Kill(); err != nil {
		t.Fatal(err)
	}
	e.start(t)
	if st := e.overflowStatus(t); st.InUse != 1 {
		t.Errorf("after kill -9 and a restart: %+v, want the block still held", st)
	}
	if ans := e.lookupAt(t, second, time.Now()); !names(ans, sub1.Addr) || ans.Candidates[0].End != nil {
		t.Errorf("lookup now after the restart: %+v, want %s's record, open, alone", ans.Candidates, sub1.Addr)
	}
}

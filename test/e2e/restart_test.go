package e2e

import (
	"errors"
	"io/fs"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/blocknat/blocknat/test/harness"
	"github.com/blocknat/blocknat/test/netns"
	"github.com/blocknat/blocknat/userspace/store"
	"github.com/blocknat/blocknat/userspace/wire"
)

// history asks the running agent, through the CLI, for a subscriber's
// records of the last hour.
func (e *env) history(t *testing.T, sub netip.Addr) []wire.Record {
	t.Helper()
	var ans wire.HistoryResponse
	now := time.Now().UTC()
	e.cli(t, &ans, "history", "--socket", harness.SocketPath(e.stateDir), "--subscriber", sub.String(),
		"--from", now.Add(-time.Hour).Format(time.RFC3339Nano), "--to", now.Add(time.Minute).Format(time.RFC3339Nano),
		"--purpose", "restart test", "--json")
	return ans.Records
}

// lastPort is the source port the UDP echo saw last.
func lastPort(t *testing.T, srv *netns.UDPEcho) netip.AddrPort {
	t.Helper()
	r := srv.Remotes()
	if len(r) == 0 {
		t.Fatal("the UDP echo saw nothing")
	}
	return r[len(r)-1]
}

// TestKill9KeepsTrafficAndRecords: blocknatd is killed with SIGKILL and
// started again while a TCP connection keeps talking and a UDP mapping is
// in use. The connection never sees a reset or a lost message, the UDP
// mapping keeps its public port before, during and after, and every
// subscriber still has exactly the one record it had: none lost, none
// duplicated, none demoted to "recovered".
func TestKill9KeepsTrafficAndRecords(t *testing.T) {
	e := startEnv(t, "bn-e2ekill")
	held := holdTraffic(t, e)
	tcpSrv, udpSrv, tcp, udp, udpPort := held.tcpSrv, held.udpSrv, held.tcp, held.udp, held.udpPort
	tcp.waitEchoes(t, 10, 5*time.Second)
	time.Sleep(200 * time.Millisecond) // both activations are committed within 50 ms
	before := map[netip.Addr][]wire.Record{}
	for _, sub := range e.topo.Subscribers {
		before[sub.Addr] = e.history(t, sub.Addr)
		if len(before[sub.Addr]) != 1 {
			t.Fatalf("subscriber %s: %d records before the restart, want 1: %+v", sub.Addr, len(before[sub.Addr]), before[sub.Addr])
		}
	}

	if err := e.agent.Kill(); err != nil {
		t.Fatal(err)
	}
	// Nothing runs in user space now: the pinned data plane alone carries
	// the connection and the mapping.
	tcp.waitEchoes(t, 20, 5*time.Second)
	if err := udp.roundTrip("while down"); err != nil {
		t.Fatalf("UDP while blocknatd is dead: %v", err)
	}
	if got := lastPort(t, udpSrv); got != udpPort {
		t.Errorf("UDP mapping while the agent is dead: server sees %s, before %s", got, udpPort)
	}

	e.start(t)
	tcp.waitEchoes(t, 20, 5*time.Second)
	if err := udp.roundTrip("after"); err != nil {
		t.Fatalf("UDP after the restart: %v", err)
	}
	if got := lastPort(t, udpSrv); got != udpPort {
		t.Errorf("UDP mapping after the restart: server sees %s, before %s", got, udpPort)
	}
	if err := tcp.Stop(); err != nil {
		t.Errorf("the TCP connection broke across the restart: %v", err)
	}
	if r := tcpSrv.Remotes(); len(r) != 1 {
		t.Errorf("the TCP server saw %d connections (%v), want the one that lived through the restart", len(r), r)
	}

	time.Sleep(300 * time.Millisecond)
	for _, sub := range e.topo.Subscribers {
		after := e.history(t, sub.Addr)
		if len(after) != 1 {
			t.Errorf("subscriber %s: %d records after the restart, want the one from before: %+v", sub.Addr, len(after), after)
			continue
		}
		b, a := before[sub.Addr][0], after[0]
		if !a.Start.Equal(b.Start) || a.End != nil || a.Public != b.Public || a.PortLo != b.PortLo || len(a.Flags) != 0 {
			t.Errorf("subscriber %s: record after %+v, before %+v: want the same open record, not recovered", sub.Addr, a, b)
		}
	}

	// The same, read from the store's files after a clean stop.
	if err := e.agent.Stop(); err != nil {
		t.Fatal(err)
	}
	st := e.openStore(t)
	var all []store.Record
	if err := st.Export(time.Now().Add(-time.Hour), time.Now(), func(r store.Record) error { all = append(all, r); return nil }); err != nil {
		t.Fatal(err)
	}
	if len(all) != len(e.topo.Subscribers) {
		t.Errorf("store holds %d records, want %d: %+v", len(all), len(e.topo.Subscribers), all)
	}
}

// TestCleanStopKeepsDataPlaneDetachRemovesIt: SIGTERM stops the agent and
// leaves translation running (the TCP connection and the UDP mapping go
// on); `blocknatd detach --config` then removes programs, links and maps,
// and with them the translation, but not the guard.
func TestCleanStopKeepsDataPlaneDetachRemovesIt(t *testing.T) {
	e := startEnv(t, "bn-e2estop")
	held := holdTraffic(t, e)
	udpSrv, tcp, udp, udpPort := held.udpSrv, held.tcp, held.udp, held.udpPort
	tcp.waitEchoes(t, 5, 5*time.Second)

	if err := e.agent.Stop(); err != nil {
		t.Fatalf("clean stop: %v\n%s", err, e.agent.Log())
	}
	if !strings.Contains(e.agent.Log(), "the data plane keeps translating") {
		t.Errorf("the agent did not say the data plane stays:\n%s", e.agent.Log())
	}
	if !harness.XDPAttached(t.Context(), e.topo.Router, e.ifaces) {
		t.Fatal("a clean stop detached XDP")
	}
	tcp.waitEchoes(t, 20, 5*time.Second)
	if err := udp.roundTrip("stopped"); err != nil {
		t.Fatalf("UDP after a clean stop: %v", err)
	}
	if got := lastPort(t, udpSrv); got != udpPort {
		t.Errorf("UDP mapping after a clean stop: %s, before %s", got, udpPort)
	}

	out, err := runCmd(t.Context(), bins.Blocknatd, "detach", "--config", e.cfgPath)
	if err != nil || !strings.Contains(string(out), "detached") {
		t.Fatalf("blocknatd detach: %v\n%s", err, out)
	}
	for _, ifc := range e.ifaces {
		if harness.XDPAttached(t.Context(), e.topo.Router, []string{ifc}) {
			t.Errorf("%s still has an XDP program after detach", ifc)
		}
	}
	if _, err := os.Stat(e.pinDir); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("pin directory %s after detach: %v", e.pinDir, err)
	}
	// Untranslated, the subscribers' packets leave with their inside
	// addresses, which the internet has no route back to.
	deadline := time.Now().Add(5 * time.Second)
	for {
		if ended, err := tcp.Ended(); ended {
			if err == nil {
				t.Error("the TCP stream ended without an error")
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the TCP connection still works 5s after detach: translation did not stop")
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err := udp.roundTrip("detached"); err == nil {
		t.Error("a UDP round trip worked after detach")
	}
	if links, _ := filepath.Glob(filepath.Join(e.pinDir, "links", "*")); len(links) != 0 {
		t.Errorf("links left after detach: %v", links)
	}
	// The datagram did not reach the server untranslated: detach removed
	// the NAT, and the nftables guard it keeps drops what the router would
	// forward with an inside address (guard_test.go).
	if got := srvSeen(udpSrv); slices.Contains(got, e.topo.Subscribers[1].Addr) {
		t.Errorf("after detach the server saw the inside address %s (%v): the guard did not stay", e.topo.Subscribers[1].Addr, got)
	}
}

func srvSeen(s *netns.UDPEcho) []netip.Addr {
	var out []netip.Addr
	for _, r := range s.Remotes() {
		out = append(out, r.Addr())
	}
	return out
}

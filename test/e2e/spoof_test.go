package e2e

import (
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/blocknat/blocknat/loader"
	"github.com/blocknat/blocknat/test/harness"
	"github.com/blocknat/blocknat/test/netns"
	"github.com/blocknat/blocknat/userspace/mapping"
	"github.com/blocknat/blocknat/userspace/wire"
)

// floodUDP sends n datagrams from the namespace with whatever source
// address its routes pick, without waiting for answers.
func floodUDP(t *testing.T, ns *netns.NS, src netip.Addr, to netip.AddrPort, n int) {
	t.Helper()
	err := ns.Do(func() error {
		conn, err := net.DialUDP("udp4", net.UDPAddrFromAddrPort(netip.AddrPortFrom(src, 0)), net.UDPAddrFromAddrPort(to))
		if err != nil {
			return err
		}
		defer conn.Close()
		for i := range n {
			if _, err := fmt.Fprintf(conn, "spoofed %d", i); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.Fatalf("flood from %s: %v", src, err)
	}
}

// TestNeighbourCannotFrame is the framing attack of a shared segment: a
// device sends with the address a neighbour leased. blocknat must not
// translate it, so the neighbour's block stays untouched and no record in
// the neighbour's name exists; the neighbour's own traffic still goes out.
func TestNeighbourCannotFrame(t *testing.T) {
	netns.RequireTools(t, "dnsmasq", "dhclient", "ethtool")
	dir := t.TempDir()
	e := startEnvWith(t, "bn-e2eframe", "leases: {spool: "+filepath.Join(dir, "spool")+"}\n")
	devs := wifi(t, e, "02:00:00:00:03:0a", "02:00:00:00:03:0b")
	startDHCPServer(t, e, "dnsmasq", dir, hookWrapper(t, e, "dnsmasq", dir))
	echo, err := netns.StartUDPEcho(e.topo.Internet, netip.AddrPortFrom(e.topo.ServerAddrs[0], 9000))
	if err != nil {
		t.Fatal(err)
	}
	defer echo.Close()

	neighbour, attacker := devs[0], devs[1]
	if got := neighbour.join(t); got != wifiAddr {
		t.Fatalf("neighbour leased %s", got)
	}
	// The binding reaches the data plane with the lease event.
	deadline := time.Now().Add(10 * time.Second)
	for e.boundMAC(t, wifiAddr) != neighbour.mac {
		if time.Now().After(deadline) {
			t.Fatalf("the lease of %s never bound it to %s in the data plane", wifiAddr, neighbour.mac)
		}
		time.Sleep(50 * time.Millisecond)
	}
	// The attacker takes the neighbour's address by hand.
	for _, argv := range [][]string{
		{"ip", "addr", "add", wifiAddr.String() + "/24", "dev", attacker.iface},
		{"ip", "route", "add", "default", "via", "100.64.0.254", "dev", attacker.iface},
	} {
		if out, err := attacker.ns.Exec(t.Context(), argv...); err != nil {
			t.Fatalf("%v: %v\n%s", argv, err, out)
		}
	}
	before := e.stats(t)
	floodUDP(t, attacker.ns, wifiAddr, echo.Addr, 5000)
	time.Sleep(300 * time.Millisecond)
	after := e.stats(t)
	if got := after["drop_spoofed_binding"] - before["drop_spoofed_binding"]; got < 4000 {
		t.Errorf("drop_spoofed_binding rose by %d for 5000 spoofed datagrams", got)
	}
	if n := len(echo.Remotes()); n != 0 {
		t.Fatalf("the internet received %d spoofed datagrams", n)
	}
	m, err := mapping.New([]netip.Prefix{netip.MustParsePrefix("100.64.0.0/24")}, []netip.Prefix{e.topo.Pool}, 1024, 65535, 0)
	if err != nil {
		t.Fatal(err)
	}
	sub, _ := m.SubscriberOf(wifiAddr)
	if slices.Contains(e.activeInKernel(t), sub) {
		t.Fatalf("the neighbour's block %d became active from spoofed traffic", sub)
	}
	// And no record names the neighbour: the police would find nothing
	// against them for that traffic.
	var hist wire.HistoryResponse
	e.cli(t, &hist, "history", "--config", e.cfgPath, "--subscriber", wifiAddr.String(),
		"--from", time.Now().Add(-time.Hour).UTC().Format(time.RFC3339), "--to", time.Now().Add(time.Minute).UTC().Format(time.RFC3339),
		"--purpose", "framing test", "--json")
	if len(hist.Records) != 0 {
		t.Fatalf("spoofed traffic left records in the neighbour's name: %+v", hist.Records)
	}

	// The neighbour itself is translated as ever. The attacker's ARP
	// taught the router its MAC for the address; a real router forgets
	// it once the attacker goes quiet.
	if out, err := attacker.ns.Exec(t.Context(), "ip", "addr", "flush", "dev", attacker.iface); err != nil {
		t.Fatalf("flush: %v\n%s", err, out)
	}
	if out, err := e.topo.Router.Exec(t.Context(), "ip", "neigh", "flush", "dev", e.topo.InsideIfaces[0]); err != nil {
		t.Fatalf("neigh flush: %v\n%s", err, out)
	}
	if _, err := netns.UDPRoundTrip(neighbour.ns, 0, echo.Addr, []byte("mine"), 3*time.Second); err != nil {
		t.Fatalf("the neighbour's own traffic: %v", err)
	}
	if !slices.Contains(e.activeInKernel(t), sub) {
		t.Errorf("the neighbour's traffic activated no block")
	}
}

// boundMAC is the MAC the data plane binds the address to, "" if none.
func (e *env) boundMAC(t *testing.T, a netip.Addr) string {
	t.Helper()
	if mac, ok := readPinned(t, e, (*loader.Pinned).SourceBindings)[a]; ok {
		return mac.String()
	}
	return ""
}

// TestLineCannotSpeakForAnother: with inside.interface_prefixes, a
// subscriber's line carries only its own prefix; a packet it sends with the
// other line's address is dropped and activates nobody's block.
func TestLineCannotSpeakForAnother(t *testing.T) {
	e := prepareEnv(t, "bn-e2eline", "")
	topo := e.topo
	inside := fmt.Sprintf("inside: {interfaces: [%s, %s], prefixes: [%s], interface_prefixes: {%s: [%s/32], %s: [%s/32]}}\n",
		topo.InsideIfaces[0], topo.InsideIfaces[1], topo.InsidePrefix,
		topo.InsideIfaces[0], topo.Subscribers[0].Addr, topo.InsideIfaces[1], topo.Subscribers[1].Addr)
	e.rewriteConfig(t, inside)
	e.start(t)
	echo, err := netns.StartUDPEcho(topo.Internet, netip.AddrPortFrom(topo.ServerAddrs[0], 9000))
	if err != nil {
		t.Fatal(err)
	}
	defer echo.Close()
	victim, attacker := topo.Subscribers[0], topo.Subscribers[1]
	// The attacker's line gains the victim's address as a second one.
	if out, err := attacker.NS.Exec(t.Context(), "ip", "addr", "add", victim.Addr.String()+"/32", "dev", attacker.Iface); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	floodUDP(t, attacker.NS, victim.Addr, echo.Addr, 500)
	time.Sleep(300 * time.Millisecond)
	if n := len(echo.Remotes()); n != 0 {
		t.Fatalf("the internet received %d datagrams sent with another line's address", n)
	}
	if st := e.stats(t); st["drop_spoofed_binding"] < 400 {
		t.Errorf("drop_spoofed_binding = %d for 500 datagrams", st["drop_spoofed_binding"])
	}
	if active := e.activeInKernel(t); len(active) != 0 {
		t.Errorf("blocks %v active after spoofed traffic only", active)
	}
	// Each line's own address still goes out.
	for _, sub := range topo.Subscribers {
		if _, err := netns.UDPRoundTrip(sub.NS, 0, echo.Addr, []byte("mine"), 3*time.Second); err != nil {
			t.Errorf("%s's own traffic: %v", sub.Addr, err)
		}
	}
}

// rewriteConfig renders the test's configuration again with extra lines
// (which may replace the inside section).
func (e *env) rewriteConfig(t *testing.T, extra string) {
	t.Helper()
	if err := os.WriteFile(e.cfgPath, harness.Config(e.topo, e.stateDir, e.pinDir, extra), 0o600); err != nil {
		t.Fatal(err)
	}
}

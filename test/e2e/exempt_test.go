package e2e

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/blocknat/blocknat/test/harness"
	"github.com/blocknat/blocknat/test/netns"
	"github.com/blocknat/blocknat/userspace/config"
)

// curlFrom fetches url in ns (from source when it is valid) and says
// whether the server answered 200.
func curlFrom(t *testing.T, ns *netns.NS, source netip.Addr, url string) bool {
	t.Helper()
	args := []string{"curl", "--noproxy", "*", "-sS", "-m", "2", "-o", "/dev/null", "-w", "%{http_code}"}
	if source.IsValid() {
		args = append(args, "--interface", source.String())
	}
	out, err := ns.Exec(t.Context(), append(args, url)...)
	return err == nil && strings.TrimSpace(string(out)) == "200"
}

func remoteAddrs(s *netns.HTTPServer) []netip.Addr {
	var out []netip.Addr
	for _, r := range s.Remotes() {
		if !slices.Contains(out, r.Addr()) {
			out = append(out, r.Addr())
		}
	}
	return out
}

// TestNATExemptionEndToEnd: with the real agent, curl from a subscriber
// to the nat_exempt server arrives from the subscriber's inside address,
// and to the other server from the pool; the exempt traffic alone
// activates no block. A customer with an address of its own
// (inside.public) reaches the internet from that address, and the
// internet reaches its server on it, untouched both ways. Once the data
// plane is detached, the guard lets exactly the exempt destination through
// and drops the rest.
func TestNATExemptionEndToEnd(t *testing.T) {
	const public = "192.0.2.130" // not the transit /30
	topo := netns.NewTestTopology(t, "bn-e2eexempt")
	exempt, other := topo.ServerAddrs[1], topo.ServerAddrs[0]
	extra := fmt.Sprintf("inside: {interfaces: [%s], prefixes: [%s], public: [192.0.2.128/25]}\nnat_exempt: [%s]\n",
		strings.Join(topo.InsideIfaces, ", "), topo.InsidePrefix, exempt)
	netns.RequireTools(t, "nft")
	e := prepareEnvOn(t, topo, extra)
	sub0, sub1 := topo.Subscribers[0], topo.Subscribers[1]
	// The public customer sits behind subscriber 1's line.
	for _, c := range []struct {
		ns   *netns.NS
		args []string
	}{
		{sub1.NS, []string{"ip", "addr", "add", public + "/32", "dev", sub1.Iface}},
		{topo.Router, []string{"ip", "route", "add", public + "/32", "dev", topo.InsideIfaces[1]}},
		{topo.Internet, []string{"ip", "route", "add", "192.0.2.128/25", "via", topo.RouterOutside.String()}},
		// The ISP's own network routes the inside prefix to the router,
		// as it must for the exempt server's replies.
		{topo.Internet, []string{"ip", "route", "add", topo.InsidePrefix.String(), "via", topo.RouterOutside.String()}},
	} {
		if out, err := c.ns.Exec(t.Context(), c.args...); err != nil {
			t.Fatalf("%s: %v %s", strings.Join(c.args, " "), err, out)
		}
	}
	servers := map[netip.Addr]*netns.HTTPServer{}
	for _, a := range []netip.Addr{exempt, other} {
		s, err := netns.StartHTTPServer(topo.Internet, netip.AddrPortFrom(a, 8080))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { s.Close() })
		servers[a] = s
	}
	home, err := netns.StartHTTPServer(sub1.NS, netip.MustParseAddrPort(public+":8081"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { home.Close() })
	e.start(t)
	url := func(a netip.Addr) string { return "http://" + netip.AddrPortFrom(a, 8080).String() + "/" }

	// Exempt first and alone: no block may become active for it.
	if !curlFrom(t, sub1.NS, netip.Addr{}, url(exempt)) {
		t.Fatal("subscriber 1 could not reach the exempt server")
	}
	if got := remoteAddrs(servers[exempt]); !slices.Equal(got, []netip.Addr{sub1.Addr}) {
		t.Errorf("the exempt server saw %v, want subscriber 1's inside address %s", got, sub1.Addr)
	}
	if active := e.activeInKernel(t); len(active) != 0 {
		t.Errorf("exempt traffic activated blocks %v", active)
	}
	if !curlFrom(t, sub0.NS, netip.Addr{}, url(other)) {
		t.Fatal("subscriber 0 could not reach the other server")
	}
	if got := remoteAddrs(servers[other]); len(got) != 1 || !topo.Pool.Contains(got[0]) {
		t.Errorf("the other server saw %v, want a pool address", got)
	}

	// The public customer, both ways.
	if !curlFrom(t, sub1.NS, netip.MustParseAddr(public), url(other)) {
		t.Fatal("the public customer could not reach the server")
	}
	if got := remoteAddrs(servers[other]); !slices.Contains(got, netip.MustParseAddr(public)) {
		t.Errorf("the server saw %v, want the customer's own %s among them", got, public)
	}
	if !curlFrom(t, topo.Internet, netip.Addr{}, "http://"+public+":8081/") {
		t.Error("the internet could not reach the public customer's server")
	}
	if got := remoteAddrs(home); !slices.Equal(got, []netip.Addr{topo.InternetAddr}) {
		t.Errorf("the customer's server saw %v, want the internet's %s untouched", got, topo.InternetAddr)
	}
	st := e.stats(t)
	if st["exempt_out"] == 0 || st["public_out"] == 0 {
		t.Errorf("counters exempt_out %d, public_out %d; want both above 0", st["exempt_out"], st["public_out"])
	}
	cfg, err := config.Load(e.cfgPath)
	if err != nil {
		t.Fatal(err)
	}
	m, err := cfg.Mapping()
	if err != nil {
		t.Fatal(err)
	}
	n0, _ := m.SubscriberOf(sub0.Addr)
	if active := e.activeInKernel(t); !slices.Equal(active, []uint32{n0}) {
		t.Errorf("active blocks %v, want subscriber 0's (%d) alone", active, n0)
	}

	// Detached, the kernel forwards: the guard decides.
	if err := e.agent.Stop(); err != nil {
		t.Fatalf("stop: %v\n%s", err, e.agent.Log())
	}
	e.agent = nil
	if out, err := runCmd(t.Context(), bins.Blocknatd, "detach", "--config", e.cfgPath); err != nil {
		t.Fatalf("detach: %v\n%s", err, out)
	}
	if harness.XDPAttached(t.Context(), topo.Router, e.ifaces[:1]) {
		t.Fatal("XDP still attached after detach: the test would prove nothing")
	}
	if !curlFrom(t, sub0.NS, netip.Addr{}, url(exempt)) {
		t.Error("detached, the guard stopped a subscriber's request to the exempt server")
	}
	before := len(servers[other].Remotes())
	if curlFrom(t, sub0.NS, netip.Addr{}, url(other)) {
		t.Error("detached, a subscriber reached the other server untranslated")
	}
	if n := len(servers[other].Remotes()); n != before {
		t.Errorf("detached, the other server saw %d more connections", n-before)
	}
}

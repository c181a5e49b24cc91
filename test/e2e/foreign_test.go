package e2e

import (
	"fmt"
	"net/netip"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/blocknat/blocknat/test/harness"
	"github.com/blocknat/blocknat/test/netns"
)

// xdpProgID is the id of the XDP program `ip` shows on an interface, or "".
func xdpProgID(t *testing.T, ns *netns.NS, iface string) string {
	t.Helper()
	out, err := ns.Exec(t.Context(), "ip", "-d", "link", "show", "dev", iface)
	if err != nil {
		t.Fatal(err)
	}
	if m := regexp.MustCompile(`prog/xdp id (\d+)`).FindSubmatch(out); m != nil {
		return string(m[1])
	}
	return ""
}

// TestForeignXDPProgram: an XDP program the operator attached with
// `ip link set dev X xdp obj ...` makes blocknatd refuse to start, naming
// the interface and the program id, touching nothing; `blocknatd
// --replace` takes the interface over and translates; a later plain start
// finds only its own programs and starts.
func TestForeignXDPProgram(t *testing.T) {
	e := prepareEnv(t, "bn-e2eforeign", "")
	root, err := harness.ModuleRoot(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	iface := e.topo.InsideIfaces[0]
	if out, err := e.topo.Router.Exec(t.Context(), "ip", "link", "set", "dev", iface, "xdp", "obj",
		filepath.Join(root, "loader", "baseline_bpfel.o"), "sec", "xdp"); err != nil {
		t.Fatalf("attach a foreign program: %v %s", err, out)
	}
	foreign := xdpProgID(t, e.topo.Router, iface)
	if foreign == "" {
		t.Fatal("ip attached no program")
	}

	out, err := e.topo.Router.Exec(t.Context(), bins.Blocknatd, "--config", e.cfgPath)
	want := fmt.Sprintf("inside interface %s already has XDP program id %s", iface, foreign)
	if err == nil || !strings.Contains(string(out), want) || !strings.Contains(string(out), "--replace") {
		t.Fatalf("blocknatd over a foreign program: err %v, output:\n%s\nwant a refusal containing %q and --replace", err, out, want)
	}
	if got := xdpProgID(t, e.topo.Router, iface); got != foreign {
		t.Errorf("a refused start changed %s's program from %s to %q", iface, foreign, got)
	}
	for _, other := range e.ifaces[1:] {
		if id := xdpProgID(t, e.topo.Router, other); id != "" {
			t.Errorf("a refused start left program %s on %s", id, other)
		}
	}

	d := e.startDaemon(t, bins.Blocknatd, "--replace", "--config", e.cfgPath)
	if got := xdpProgID(t, e.topo.Router, iface); got == "" || got == foreign {
		t.Errorf("after --replace %s runs program %q, the foreign one was %s", iface, got, foreign)
	}
	if !strings.Contains(d.Log(), "replaced an XDP program blocknat did not attach") || !strings.Contains(d.Log(), "program_id="+foreign) {
		t.Errorf("the replacement is not logged with the program id:\n%s", d.Log())
	}
	srv, err := netns.StartUDPEcho(e.topo.Internet, netip.AddrPortFrom(e.topo.ServerAddrs[0], 9000))
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	if _, err := netns.UDPRoundTrip(e.topo.Subscribers[0].NS, 0, srv.Addr, []byte("x"), 3*time.Second); err != nil {
		t.Fatalf("traffic after --replace: %v", err)
	}
	if got := srv.Remotes()[0].Addr(); !e.topo.Pool.Contains(got) {
		t.Errorf("the server saw %s, want a pool address", got)
	}
	d.stop(t)

	// blocknat's own pinned programs are not foreign: a plain start works.
	e.start(t)
	if strings.Contains(e.agent.Log(), "replaced") {
		t.Errorf("a plain restart replaced something:\n%s", e.agent.Log())
	}
}

package e2e

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/blocknat/blocknat/test/harness"
	"github.com/blocknat/blocknat/test/netns"
	"github.com/blocknat/blocknat/userspace/guard"
	"github.com/blocknat/blocknat/userspace/metrics"
	"github.com/blocknat/blocknat/userspace/wire"
)

// guardEnv is a topology whose internet namespace counts every packet that
// arrives from an inside address: the leak the guard exists to stop, seen
// where it would do harm, independently of the router's own counters.
type guardEnv struct {
	*env
	http *netns.HTTPServer
	udp  *netns.UDPEcho
}

func newGuardEnv(t *testing.T, prefix, extra string) *guardEnv {
	t.Helper()
	netns.RequireTools(t, "nft")
	e := prepareEnv(t, prefix, extra)
	g := &guardEnv{env: e}
	var err error
	if g.http, err = netns.StartHTTPServer(e.topo.Internet, netip.AddrPortFrom(e.topo.ServerAddrs[0], 8080)); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { g.http.Close() })
	if g.udp, err = netns.StartUDPEcho(e.topo.Internet, netip.AddrPortFrom(e.topo.ServerAddrs[1], 9000)); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { g.udp.Close() })
	for _, args := range [][]string{
		{"nft", "add", "table", "ip", "bn_witness"},
		{"nft", "add", "counter", "ip", "bn_witness", "leaked"},
		{"nft", "add", "chain", "ip", "bn_witness", "pre", "{ type filter hook prerouting priority -300; }"},
		{"nft", "add", "rule", "ip", "bn_witness", "pre", "ip", "saddr", e.topo.InsidePrefix.String(), "counter", "name", "leaked"},
	} {
		if out, err := e.topo.Internet.Exec(t.Context(), args...); err != nil {
			t.Fatalf("witness in the internet namespace: %v %s", err, out)
		}
	}
	return g
}

// counter reads a named nftables counter's packets in ns.
func nftCounter(t *testing.T, ns *netns.NS, family, table, name string) uint64 {
	t.Helper()
	out, err := ns.Exec(t.Context(), "nft", "-j", "list", "counter", family, table, name)
	if err != nil {
		t.Fatal(err)
	}
	var doc struct {
		Nftables []struct {
			Counter *struct {
				Packets uint64 `json:"packets"`
			} `json:"counter"`
		} `json:"nftables"`
	}
	if err := json.Unmarshal(out, &doc); err != nil {
		t.Fatalf("nft -j list counter: %v\n%s", err, out)
	}
	for _, item := range doc.Nftables {
		if item.Counter != nil {
			return item.Counter.Packets
		}
	}
	t.Fatalf("no counter %s %s %s in %s", family, table, name, out)
	return 0
}

// leaked is how many packets from an inside address reached the internet.
func (g *guardEnv) leaked(t *testing.T) uint64 {
	t.Helper()
	return nftCounter(t, g.topo.Internet, "ip", "bn_witness", "leaked")
}

// guardDropped is the router's guard counter.
func (g *guardEnv) guardDropped(t *testing.T) uint64 {
	t.Helper()
	return nftCounter(t, g.topo.Router, "inet", guard.TableName, guard.CounterName)
}

func (g *guardEnv) guardInstalled(t *testing.T) bool {
	t.Helper()
	_, err := g.topo.Router.Exec(t.Context(), "nft", "list", "table", "inet", guard.TableName)
	return err == nil
}

// talk has every subscriber try an HTTP request and a UDP round trip and
// reports how many of them succeeded.
func (g *guardEnv) talk(t *testing.T) (ok int) {
	t.Helper()
	for i, sub := range g.topo.Subscribers {
		out, err := sub.NS.Exec(t.Context(), "curl", "--noproxy", "*", "-sS", "-m", "2", "-o", "/dev/null", "-w", "%{http_code}",
			"http://"+netip.AddrPortFrom(g.topo.ServerAddrs[0], 8080).String()+"/")
		if err == nil && strings.TrimSpace(string(out)) == "200" {
			ok++
		}
		payload := []byte(fmt.Sprintf("subscriber %d", i))
		if _, err := netns.UDPRoundTrip(sub.NS, 0, g.udp.Addr, payload, time.Second); err == nil {
			ok++
		}
	}
	return ok
}

// insideSeen lists what the servers saw from an inside address.
func (g *guardEnv) insideSeen() []netip.AddrPort {
	var out []netip.AddrPort
	for _, r := range append(g.http.Remotes(), g.udp.Remotes()...) {
		if g.topo.InsidePrefix.Contains(r.Addr()) {
			out = append(out, r)
		}
	}
	return out
}

func (g *guardEnv) blocknatdInRouter(t *testing.T, args ...string) string {
	t.Helper()
	out, err := g.topo.Router.Exec(t.Context(), append([]string{bins.Blocknatd}, append(args, "--config", g.cfgPath)...)...)
	if err != nil {
		t.Fatalf("blocknatd %s: %v", strings.Join(args, " "), err)
	}
	return string(out)
}

// TestGuardKeepsDetachedRouterClosed: with the agent running, traffic is
// translated and the guard is in place (status and /metrics say so); after
// the agent stops and `blocknatd detach`, no subscriber packet reaches the
// internet with its inside address, the guard counts what it stopped; and
// after `detach --remove-guard` the same traffic leaks again, which is what
// the guard was stopping.
func TestGuardKeepsDetachedRouterClosed(t *testing.T) {
	const listen = "127.0.0.1:9477"
	g := newGuardEnv(t, "bn-e2eguard", "metrics: {listen: \""+listen+"\"}\n")
	g.start(t)
	subs := len(g.topo.Subscribers)

	if ok := g.talk(t); ok != 2*subs {
		t.Fatalf("with the agent running, %d of %d exchanges worked", ok, 2*subs)
	}
	if n := g.leaked(t); n != 0 {
		t.Fatalf("with the agent running, %d packets reached the internet from an inside address", n)
	}
	var st struct {
		Agent wire.Status `json:"agent"`
	}
	g.cli(t, &st, "status", "--json", "--config", g.cfgPath)
	if gs := st.Agent.Guard; !gs.Installed || strings.Join(gs.Prefixes, ",") != g.topo.InsidePrefix.String() ||
		strings.Join(gs.Interfaces, ",") != g.topo.OutsideIface {
		t.Errorf("status guard %+v, want installed for %s on %s", gs, g.topo.InsidePrefix, g.topo.OutsideIface)
	}
	text := g.metricsText(t, listen)
	if v := metricValue(t, text, metrics.GuardInstalled); v != 1 {
		t.Errorf("%s = %v with the guard in place", metrics.GuardInstalled, v)
	}
	before := metricValue(t, text, metrics.GuardDroppedTotal)

	if err := g.agent.Stop(); err != nil {
		t.Fatalf("stop: %v\n%s", err, g.agent.Log())
	}
	if !g.guardInstalled(t) {
		t.Fatal("stopping the agent removed the guard")
	}
	out, err := runCmd(t.Context(), bins.Blocknatd, "detach", "--config", g.cfgPath)
	if err != nil || !strings.Contains(string(out), "guard") || !strings.Contains(string(out), "stays") {
		t.Fatalf("blocknatd detach: %v\n%s", err, out)
	}
	if harness.XDPAttached(t.Context(), g.topo.Router, g.ifaces[:1]) {
		t.Fatal("XDP still attached after detach: the test would prove nothing")
	}
	dropped := g.guardDropped(t)
	if ok := g.talk(t); ok != 0 {
		t.Errorf("after detach, %d exchanges worked without translation", ok)
	}
	if n := g.leaked(t); n != 0 {
		t.Errorf("after detach, %d packets reached the internet from an inside address", n)
	}
	if seen := g.insideSeen(); len(seen) != 0 {
		t.Errorf("after detach the servers saw inside addresses %v", seen)
	}
	after := g.guardDropped(t)
	if after <= dropped || float64(after) <= before {
		t.Errorf("guard counter %d after detach and traffic, %d before (metrics %v while running)", after, dropped, before)
	}
	t.Logf("guard dropped %d packets of %d subscribers' curl and UDP after detach", after-dropped, subs)

	out2 := g.blocknatdInRouter(t, "detach", "--remove-guard")
	if !strings.Contains(out2, "guard removed") || g.guardInstalled(t) {
		t.Fatalf("detach --remove-guard: %s", out2)
	}
	g.talk(t)
	if n := g.leaked(t); n == 0 {
		t.Error("without the guard nothing leaked: the test cannot tell a guard from a router that drops anyway")
	}
	if seen := g.insideSeen(); len(seen) == 0 {
		t.Error("without the guard the UDP server saw no inside address")
	}
}

// TestGuardBeforeFirstStart: on a router where blocknatd never ran, the
// kernel forwards subscriber packets with their inside addresses (the
// threat is real); `blocknatd guard install`, as the unit's ExecStartPre
// runs it at boot, stops them with no agent at all; the agent started
// afterwards finds the guard unchanged and translates through it, and the
// guard drops none of the translated traffic.
func TestGuardBeforeFirstStart(t *testing.T) {
	g := newGuardEnv(t, "bn-e2eguard0", "")
	g.talk(t)
	leakedBefore := g.leaked(t)
	if leakedBefore == 0 {
		t.Fatal("a router without blocknat leaked nothing: the test would prove nothing")
	}

	if out := g.blocknatdInRouter(t, "guard", "install"); !strings.Contains(out, "guard created") {
		t.Fatalf("guard install: %s", out)
	}
	udpSeen := len(g.udp.Remotes())
	if ok := g.talk(t); ok != 0 {
		t.Errorf("with only the guard, %d exchanges worked", ok)
	}
	if n := g.leaked(t); n != leakedBefore {
		t.Errorf("with the guard and no agent, %d more packets reached the internet from an inside address", n-leakedBefore)
	}
	if n := len(g.udp.Remotes()); n != udpSeen {
		t.Errorf("with the guard and no agent the UDP server saw %d more datagrams", n-udpSeen)
	}
	dropped := g.guardDropped(t)
	if dropped == 0 {
		t.Error("the guard counted nothing")
	}

	g.start(t)
	if !strings.Contains(g.agent.Log(), "outcome=unchanged") {
		t.Errorf("the agent did not find the installed guard unchanged:\n%s", g.agent.Log())
	}
	if ok := g.talk(t); ok != 2*len(g.topo.Subscribers) {
		t.Errorf("with the agent over the guard, %d of %d exchanges worked", ok, 2*len(g.topo.Subscribers))
	}
	if n := g.guardDropped(t); n != dropped {
		t.Errorf("the guard dropped %d packets of translated traffic", n-dropped)
	}
	if n := g.leaked(t); n != leakedBefore {
		t.Errorf("with the agent, %d more packets from inside addresses", n-leakedBefore)
	}
}

// TestGuardFailedStart: an agent that refuses to start (a foreign XDP
// program on an inside interface) has put the guard in place first, so the
// subscriber behind the foreign XDP_PASS program leaks nothing; an agent
// that cannot install the guard (no CAP_NET_ADMIN) refuses to start,
// naming the guard and the cause, and attaches nothing.
func TestGuardFailedStart(t *testing.T) {
	g := newGuardEnv(t, "bn-e2eguardf", "")
	root, err := harness.ModuleRoot(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	iface := g.topo.InsideIfaces[0]
	if out, err := g.topo.Router.Exec(t.Context(), "ip", "link", "set", "dev", iface, "xdp", "obj",
		filepath.Join(root, "loader", "baseline_bpfel.o"), "sec", "xdp"); err != nil {
		t.Fatalf("attach a foreign program: %v %s", err, out)
	}
	out, err := g.topo.Router.Exec(t.Context(), bins.Blocknatd, "--config", g.cfgPath)
	if err == nil || !strings.Contains(string(out), "already has XDP program") {
		t.Fatalf("blocknatd over a foreign program: %v\n%s", err, out)
	}
	if !g.guardInstalled(t) {
		t.Fatal("a refused start left no guard")
	}
	g.talk(t)
	if n := g.leaked(t); n != 0 {
		t.Errorf("after a refused start, %d packets reached the internet from an inside address", n)
	}
	if g.guardDropped(t) == 0 {
		t.Error("the guard counted nothing after a refused start")
	}

	netns.RequireTools(t, "setpriv")
	if _, err := g.topo.Router.Exec(t.Context(), "ip", "link", "set", "dev", iface, "xdp", "off"); err != nil {
		t.Fatal(err)
	}
	g.blocknatdInRouter(t, "guard", "remove")
	cmd := g.topo.Router.Command(t.Context(), "setpriv", "--bounding-set", "-net_admin", "--inh-caps", "-net_admin",
		bins.Blocknatd, "--config", g.cfgPath)
	out, err = cmd.CombinedOutput()
	var exit *exec.ExitError
	if !errors.As(err, &exit) || !strings.Contains(string(out), "refusing to start without the guard") ||
		!strings.Contains(string(out), "CAP_NET_ADMIN") {
		t.Errorf("blocknatd without CAP_NET_ADMIN: %v\n%s\nwant a refusal naming the guard and CAP_NET_ADMIN", err, out)
	}
	for _, ifc := range g.ifaces {
		if harness.XDPAttached(t.Context(), g.topo.Router, []string{ifc}) {
			t.Errorf("a start refused for the guard left XDP on %s", ifc)
		}
	}
}

// TestGuardRestoredAndFollowsReload: a guard deleted under a running agent
// (as a firewall reload that flushes the ruleset would) is back within the
// agent's check interval, with an error in the log and
// blocknat_guard_missing_total counting it; a SIGHUP that adds an inside
// prefix extends the guard to it.
func TestGuardRestoredAndFollowsReload(t *testing.T) {
	const listen = "127.0.0.1:9477"
	extra := "metrics: {listen: \"" + listen + "\"}\n"
	g := newGuardEnv(t, "bn-e2eguardr", extra)
	g.start(t)

	if out, err := g.topo.Router.Exec(t.Context(), "nft", "delete", "table", "inet", guard.TableName); err != nil {
		t.Fatalf("delete the guard: %v %s", err, out)
	}
	deleted := time.Now()
	for !g.guardInstalled(t) {
		if time.Since(deleted) > 15*time.Second {
			t.Fatalf("the agent did not put the guard back within 15s:\n%s", g.agent.Log())
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Logf("guard back %s after it was deleted", time.Since(deleted).Round(100*time.Millisecond))
	if !strings.Contains(g.agent.Log(), "level=ERROR msg=\"nftables guard was missing or changed: installed again\"") {
		t.Errorf("no error logged for the missing guard:\n%s", g.agent.Log())
	}
	if v := metricValue(t, g.metricsText(t, listen), metrics.GuardMissingTotal); v != 1 {
		t.Errorf("%s = %v, want 1", metrics.GuardMissingTotal, v)
	}

	added := netip.MustParsePrefix("100.64.8.0/24")
	cfg := harness.Config(g.topo, g.stateDir, g.pinDir, extra)
	cfg = []byte(strings.Replace(string(cfg), "prefixes: ["+g.topo.InsidePrefix.String()+"]", "prefixes: ["+g.topo.InsidePrefix.String()+", "+added.String()+"]", 1))
	g.reloadWith(t, cfg)
	// The guard is narrowed to the prefixes in force when reload returns.
	deadline := time.Now().Add(10 * time.Second)
	for {
		out, err := g.topo.Router.Exec(t.Context(), "nft", "list", "set", "inet", guard.TableName, guard.InsideSet)
		if err == nil && strings.Contains(string(out), added.String()) && strings.Contains(string(out), g.topo.InsidePrefix.String()) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the guard does not cover %s after the reload: %s\n%s", added, out, g.agent.Log())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

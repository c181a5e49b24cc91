package netns

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"slices"
	"strings"
	"testing"
	"time"
)

// listNamespaces returns the names `ip netns list` shows that start with prefix.
func listNamespaces(t *testing.T, prefix string) []string {
	t.Helper()
	out, err := runIP(context.Background(), "netns", "list")
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for line := range strings.Lines(string(out)) {
		fields := strings.Fields(line)
		if len(fields) > 0 && strings.HasPrefix(fields[0], prefix+"-") {
			names = append(names, fields[0])
		}
	}
	slices.Sort(names)
	return names
}

// routeInsideFromInternet gives the internet a way back to the subscribers. Only
// the plain-forwarding self-test may do this: behind blocknat the inside prefix
// must stay unreachable from the internet.
func routeInsideFromInternet(t *testing.T, topo *Topology) {
	t.Helper()
	if _, err := topo.Internet.ip(t.Context(), "route", "add", topo.InsidePrefix.String(), "via", topo.RouterOutside.String()); err != nil {
		t.Fatal(err)
	}
}

func TestTopologyForwardsWithoutNAT(t *testing.T) {
	t.Parallel()
	topo := NewTestTopology(t, "bn-nt-fwd")
	if err := topo.RouterHasNoNAT(t.Context()); err != nil {
		t.Fatal(err)
	}

	var echoes []*UDPEcho
	for _, a := range topo.ServerAddrs {
		echo, err := StartUDPEcho(topo.Internet, netip.AddrPortFrom(a, 3478))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { echo.Close() })
		echoes = append(echoes, echo)
	}

	// Before the internet has a route back, a request still arrives, with the
	// subscriber's own source, but the reply cannot: the topology alone does not
	// make the inside prefix reachable.
	sub := topo.Subscribers[0]
	_, err := UDPRoundTrip(sub.NS, 40000, echoes[0].Addr, []byte("no way back"), 300*time.Millisecond)
	if err == nil {
		t.Fatal("round trip succeeded although the internet has no route to the inside prefix")
	}
	if got, want := echoes[0].Remotes(), []netip.AddrPort{netip.AddrPortFrom(sub.Addr, 40000)}; !slices.Equal(got, want) {
		t.Fatalf("echo saw %v before the return route existed, want %v", got, want)
	}

	routeInsideFromInternet(t, topo)
	for i, sub := range topo.Subscribers {
		for j, echo := range echoes {
			port := uint16(41000 + 10*i + j)
			payload := fmt.Appendf(nil, "sub%d to %s", i, echo.Addr)
			reply, err := UDPRoundTrip(sub.NS, port, echo.Addr, payload, 2*time.Second)
			if err != nil {
				t.Fatalf("subscriber %d: %v", i, err)
			}
			if !bytes.Equal(reply, payload) {
				t.Errorf("subscriber %d to %s: reply %q, want %q", i, echo.Addr, reply, payload)
			}
			remotes := echo.Remotes()
			if got, want := remotes[len(remotes)-1], netip.AddrPortFrom(sub.Addr, port); got != want {
				t.Errorf("echo %s recorded %s, want the subscriber's own %s (no NAT here)", echo.Addr, got, want)
			}
		}
	}
}

func TestTopologyServesHTTPToSubscribers(t *testing.T) {
	t.Parallel()
	RequireTools(t, "curl")
	topo := NewTestTopology(t, "bn-nt-http")
	srv, err := StartHTTPServer(topo.Internet, netip.AddrPortFrom(topo.ServerAddrs[0], 8080))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Close() })
	routeInsideFromInternet(t, topo)

	url := fmt.Sprintf("http://%s/", srv.Addr)
	for i, sub := range topo.Subscribers {
		// --noproxy: a proxy variable in the environment must not take the request
		// out of the namespace's own routing.
		out, err := sub.NS.Exec(t.Context(), "curl", "--noproxy", "*", "-sS", "-m", "5",
			"-w", "\n%{http_code}", url)
		if err != nil {
			t.Fatalf("subscriber %d: %v", i, err)
		}
		text := strings.TrimSpace(string(out))
		cut := strings.LastIndexByte(text, '\n')
		if cut < 0 {
			t.Fatalf("subscriber %d: no status line in %q", i, out)
		}
		body, code := strings.TrimSpace(text[:cut]), text[cut+1:]
		if code != "200" {
			t.Fatalf("subscriber %d: status %q, output %q", i, code, out)
		}
		remotes := srv.Remotes()
		if len(remotes) != i+1 {
			t.Fatalf("server recorded %d requests after %d curls: %v", len(remotes), i+1, remotes)
		}
		last := remotes[i]
		if last.Addr() != sub.Addr {
			t.Errorf("server recorded %s for subscriber %d, want its own address %s", last, i, sub.Addr)
		}
		if body != last.String() {
			t.Errorf("subscriber %d was told it is %q, server recorded %s", i, body, last)
		}
	}
}

func TestTopologyLayout(t *testing.T) {
	t.Parallel()
	topo := NewTestTopology(t, "bn-nt-lay")
	ctx := t.Context()

	if got, want := topo.InsideIfaces, []string{"bn-in0", "bn-in1"}; !slices.Equal(got, want) {
		t.Errorf("InsideIfaces %v, want %v", got, want)
	}
	if topo.OutsideIface != "bn-out" {
		t.Errorf("OutsideIface %q, want bn-out", topo.OutsideIface)
	}
	if len(topo.Subscribers) != 2 {
		t.Fatalf("%d subscribers, want 2", len(topo.Subscribers))
	}
	for i, sub := range topo.Subscribers {
		if !topo.InsidePrefix.Contains(sub.Addr) || topo.InsidePrefix.Bits() != 24 || topo.InsidePrefix.Addr() != netip.MustParseAddr("100.64.0.0") {
			t.Errorf("subscriber %d address %s not in inside prefix %s (want 100.64.0.0/24)", i, sub.Addr, topo.InsidePrefix)
		}
		if want := fmt.Sprintf("%s-sub%d", strings.TrimSuffix(topo.Router.Name, "-rtr"), i); sub.NS.Name != want {
			t.Errorf("subscriber %d netns %q, want %q", i, sub.NS.Name, want)
		}
	}
	if topo.Subscribers[0].Addr == topo.Subscribers[1].Addr {
		t.Errorf("both subscribers have %s", topo.Subscribers[0].Addr)
	}

	// Every link: both ends hold a permanent entry with the other end's MAC.
	type end struct {
		ns    *NS
		iface string
		addr  netip.Addr
	}
	var links [][2]end
	for i, sub := range topo.Subscribers {
		links = append(links, [2]end{{topo.Router, topo.InsideIfaces[i], sub.Gateway}, {sub.NS, sub.Iface, sub.Addr}})
	}
	links = append(links, [2]end{{topo.Router, topo.OutsideIface, topo.RouterOutside}, {topo.Internet, topo.InternetIface, topo.InternetAddr}})
	for _, l := range links {
		for i, local := range l {
			remote := l[1-i]
			mac, err := linkMAC(ctx, remote.ns, remote.iface)
			if err != nil {
				t.Fatal(err)
			}
			out, err := local.ns.ip(ctx, "neigh", "show", remote.addr.String(), "dev", local.iface)
			if err != nil {
				t.Fatal(err)
			}
			if s := string(out); !strings.Contains(s, "lladdr "+mac) || !strings.Contains(s, "PERMANENT") {
				t.Errorf("%s %s: neighbour %s is %q, want PERMANENT %s", local.ns.Name, local.iface, remote.addr, strings.TrimSpace(s), mac)
			}
			gro, err := local.ns.Exec(ctx, "ethtool", "-k", local.iface)
			if err != nil {
				t.Fatal(err)
			}
			if !strings.Contains(string(gro), "generic-receive-offload: on") {
				t.Errorf("%s %s: GRO is off", local.ns.Name, local.iface)
			}
		}
	}

	// Subscribers and the router reach the servers through their gateways.
	for i, sub := range topo.Subscribers {
		wantRouteVia(t, sub.NS, topo.ServerAddrs[1], sub.Gateway, sub.Iface)
		wantRouteVia(t, topo.Router, sub.Addr, netip.Addr{}, topo.InsideIfaces[i])
	}
	wantRouteVia(t, topo.Router, topo.ServerAddrs[0], topo.InternetAddr, topo.OutsideIface)
	// The internet sends both pool addresses to the router and nothing else back.
	if topo.Pool != netip.MustParsePrefix("198.51.100.10/31") {
		t.Errorf("Pool %s, want 198.51.100.10/31", topo.Pool)
	}
	for _, a := range []string{"198.51.100.10", "198.51.100.11"} {
		wantRouteVia(t, topo.Internet, netip.MustParseAddr(a), topo.RouterOutside, topo.InternetIface)
	}
	for _, sub := range topo.Subscribers {
		if out, err := topo.Internet.ip(ctx, "route", "get", sub.Addr.String()); err == nil {
			t.Errorf("internet has a route to inside address %s: %s", sub.Addr, out)
		}
	}
	for _, a := range topo.ServerAddrs {
		out, err := topo.Internet.ip(ctx, "-o", "addr", "show", "dev", "lo")
		if err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(string(out), "inet "+a.String()+"/32") {
			t.Errorf("internet lo lacks %s/32: %s", a, out)
		}
	}

	err := topo.Router.Do(func() error {
		files := []string{"ip_forward", "conf/all/rp_filter", "conf/default/rp_filter"}
		for _, iface := range append(slices.Clone(topo.InsideIfaces), topo.OutsideIface) {
			files = append(files, "conf/"+iface+"/rp_filter")
		}
		for _, f := range files {
			b, err := os.ReadFile("/proc/sys/net/ipv4/" + f)
			if err != nil {
				return err
			}
			want := "0"
			if f == "ip_forward" {
				want = "1"
			}
			if got := strings.TrimSpace(string(b)); got != want {
				t.Errorf("router %s = %s, want %s", f, got, want)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}

	for _, ns := range []*NS{topo.Subscribers[0].NS, topo.Subscribers[1].NS, topo.Router, topo.Internet} {
		out, err := ns.ip(ctx, "-o", "link", "show", "lo")
		if err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(string(out), "UP") {
			t.Errorf("%s: lo is not up: %s", ns.Name, out)
		}
	}
}

// wantRouteVia checks what `ip route get dst` picks in ns. An invalid via means
// dst must be directly connected.
func wantRouteVia(t *testing.T, ns *NS, dst, via netip.Addr, dev string) {
	t.Helper()
	out, err := ns.ip(t.Context(), "route", "get", dst.String())
	if err != nil {
		t.Errorf("%s: route to %s: %v", ns.Name, dst, err)
		return
	}
	s := string(out)
	if !strings.Contains(s, " dev "+dev+" ") {
		t.Errorf("%s: route to %s is %q, want dev %s", ns.Name, dst, strings.TrimSpace(s), dev)
	}
	hasVia := strings.Contains(s, " via ")
	if via.IsValid() && !strings.Contains(s, " via "+via.String()+" ") || !via.IsValid() && hasVia {
		t.Errorf("%s: route to %s is %q, want via %v", ns.Name, dst, strings.TrimSpace(s), via)
	}
}

func TestCloseRemovesEveryNamespace(t *testing.T) {
	t.Parallel()
	RequirePrivileged(t)
	RequireTools(t, "ethtool")
	prefix := TestPrefix("bn-nt-close")
	topo, err := NewTopology(t.Context(), TopologyOptions{Prefix: prefix})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { topo.Close() })
	want := []string{prefix + "-inet", prefix + "-rtr", prefix + "-sub0", prefix + "-sub1"}
	if got := listNamespaces(t, prefix); !slices.Equal(got, want) {
		t.Fatalf("namespaces after NewTopology: %v, want %v", got, want)
	}
	if err := topo.Close(); err != nil {
		t.Fatal(err)
	}
	if got := listNamespaces(t, prefix); len(got) != 0 {
		t.Fatalf("namespaces left after Close: %v", got)
	}
	if err := topo.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
}

// TestRemoveTopologyByName is make lab-down's case: another process
// removes a topology by its prefix alone, and again when it is gone.
func TestRemoveTopologyByName(t *testing.T) {
	t.Parallel()
	RequirePrivileged(t)
	RequireTools(t, "ethtool")
	prefix := TestPrefix("bn-nt-rmname")
	topo, err := NewTopology(t.Context(), TopologyOptions{Prefix: prefix})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { topo.Close() })
	names := TopologyNamespaces(prefix)
	slices.Sort(names)
	if got := listNamespaces(t, prefix); !slices.Equal(got, names) {
		t.Fatalf("TopologyNamespaces = %v, NewTopology made %v", names, got)
	}
	for range 2 {
		if err := RemoveTopology(prefix); err != nil {
			t.Fatal(err)
		}
		if got := listNamespaces(t, prefix); len(got) != 0 {
			t.Fatalf("namespaces left after RemoveTopology: %v", got)
		}
	}
}

func TestNewTopologyRemovesHalfBuiltTopology(t *testing.T) {
	t.Parallel()
	RequirePrivileged(t)
	RequireTools(t, "ethtool")
	for _, step := range buildSteps {
		t.Run("after "+step, func(t *testing.T) {
			t.Parallel()
			prefix := TestPrefix("bn-nt-fail-" + step)
			topo, err := NewTopology(t.Context(), TopologyOptions{Prefix: prefix, failAfter: step})
			if topo != nil {
				topo.Close()
				t.Fatal("NewTopology returned a topology despite failing")
			}
			if !errors.Is(err, errInjected) {
				t.Fatalf("NewTopology error %v, want the injected failure", err)
			}
			if got := listNamespaces(t, prefix); len(got) != 0 {
				t.Fatalf("namespaces left after failure: %v", got)
			}
		})
	}

	// A real failure: the last namespace's name is taken. NewTopology must remove
	// what it made and leave the namespace it does not own alone.
	t.Run("name taken", func(t *testing.T) {
		t.Parallel()
		prefix := TestPrefix("bn-nt-fail-taken")
		taken, err := Create(prefix + "-inet")
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { taken.Delete() })
		topo, err := NewTopology(t.Context(), TopologyOptions{Prefix: prefix})
		if topo != nil {
			topo.Close()
			t.Fatal("NewTopology returned a topology despite failing")
		}
		if !errors.Is(err, os.ErrExist) {
			t.Fatalf("NewTopology error %v, want one wrapping os.ErrExist", err)
		}
		if got, want := listNamespaces(t, prefix), []string{taken.Name}; !slices.Equal(got, want) {
			t.Fatalf("namespaces after failure: %v, want only %v", got, want)
		}
	})
}

func TestRouterHasNoNATDetectsNftables(t *testing.T) {
	t.Parallel()
	RequireTools(t, "nft")
	topo := NewTestTopology(t, "bn-nt-nat")
	ctx := t.Context()
	if err := topo.RouterHasNoNAT(ctx); err != nil {
		t.Fatalf("fresh router: %v", err)
	}
	for _, cmd := range [][]string{
		{"nft", "add", "table", "ip", "bntest"},
		{"nft", "add", "chain", "ip", "bntest", "post", "{ type nat hook postrouting priority 100 ; }"},
		{"nft", "add", "rule", "ip", "bntest", "post", "oifname", topo.OutsideIface, "masquerade"},
	} {
		if _, err := topo.Router.Exec(ctx, cmd...); err != nil {
			t.Fatal(err)
		}
	}
	if err := topo.RouterHasNoNAT(ctx); err == nil || !strings.Contains(err.Error(), "masquerade") {
		t.Fatalf("router with a masquerade rule: error %v, want one naming the rule", err)
	}
	if _, err := topo.Router.Exec(ctx, "nft", "delete", "table", "ip", "bntest"); err != nil {
		t.Fatal(err)
	}
	if err := topo.RouterHasNoNAT(ctx); err != nil {
		t.Fatalf("after removing the table: %v", err)
	}
}

func TestRouterHasNoNATDetectsIptables(t *testing.T) {
	t.Parallel()
	RequireTools(t, "iptables", "iptables-save")
	topo := NewTestTopology(t, "bn-nt-ipt")
	ctx := t.Context()
	if err := topo.RouterHasNoNAT(ctx); err != nil {
		t.Fatalf("fresh router: %v", err)
	}
	if _, err := topo.Router.Exec(ctx, "iptables", "-t", "nat", "-A", "POSTROUTING", "-o", topo.OutsideIface, "-j", "MASQUERADE"); err != nil {
		t.Fatal(err)
	}
	// iptables-nft shows the rule through nft too, in lower case.
	if err := topo.RouterHasNoNAT(ctx); err == nil || !strings.Contains(strings.ToLower(err.Error()), "masquerade") {
		t.Fatalf("router with an iptables MASQUERADE rule: error %v, want one naming the rule", err)
	}
	if _, err := topo.Router.Exec(ctx, "iptables", "-t", "nat", "-F"); err != nil {
		t.Fatal(err)
	}
	// Twice: listing the nat table may itself create empty NAT chains.
	for range 2 {
		if err := topo.RouterHasNoNAT(ctx); err != nil {
			t.Fatalf("after flushing: %v", err)
		}
	}
}

func TestNATRuleParsers(t *testing.T) {
	ruleset := `table ip filter {
	chain fwd {
		type filter hook forward priority filter; policy accept;
		icmp type redirect drop
		ct status snat counter accept
	}
}
table ip nat {
	chain post {
		type nat hook postrouting priority srcnat; policy accept;
		oifname "bn-out" snat to 198.51.100.10
	}
	chain pre {
		type nat hook prerouting priority dstnat; policy accept;
		tcp dport 80 redirect to :8080
		meta l4proto udp dnat ip to 203.0.113.9
	}
	chain empty {
		type nat hook output priority -100; policy accept;
	}
}
`
	want := []string{
		`oifname "bn-out" snat to 198.51.100.10`,
		`tcp dport 80 redirect to :8080`,
		`meta l4proto udp dnat ip to 203.0.113.9`,
	}
	if got := nftNATLines([]byte(ruleset)); !slices.Equal(got, want) {
		t.Errorf("nftNATLines = %q, want %q", got, want)
	}
	if got := nftNATLines([]byte("table ip filter {\n\tchain in {\n\t\ttype filter hook input priority 0;\n\t}\n}\n")); len(got) != 0 {
		t.Errorf("filter-only ruleset reported as NAT: %q", got)
	}

	empty := "# Generated by iptables-save\n*nat\n:PREROUTING ACCEPT [0:0]\n:POSTROUTING ACCEPT [0:0]\nCOMMIT\n"
	if got := iptablesRuleLines([]byte(empty)); len(got) != 0 {
		t.Errorf("empty nat table reported rules %q", got)
	}
	withRule := strings.Replace(empty, "COMMIT", "-A POSTROUTING -o bn-out -j MASQUERADE\nCOMMIT", 1)
	if got, want := iptablesRuleLines([]byte(withRule)), []string{"-A POSTROUTING -o bn-out -j MASQUERADE"}; !slices.Equal(got, want) {
		t.Errorf("iptablesRuleLines = %q, want %q", got, want)
	}
}

func TestTopologyOptionsRejectBadNames(t *testing.T) {
	for _, tc := range []struct {
		name      string
		opts      TopologyOptions
		wantField string
	}{
		{"no prefix", TopologyOptions{}, "Prefix"},
		{"prefix with slash", TopologyOptions{Prefix: "a/b"}, "Prefix"},
		{"prefix like a flag", TopologyOptions{Prefix: "-all"}, "Prefix"},
		{"one inside iface", TopologyOptions{Prefix: "p", InsideIfaces: []string{"in0"}}, "InsideIfaces"},
		{"long inside iface", TopologyOptions{Prefix: "p", InsideIfaces: []string{"in0", "sixteen-chars-xx"}}, "InsideIfaces[1]"},
		{"duplicate iface", TopologyOptions{Prefix: "p", InsideIfaces: []string{"x0", "x1"}, OutsideIface: "x0"}, "OutsideIface"},
		{"loopback name", TopologyOptions{Prefix: "p", OutsideIface: "lo"}, "OutsideIface"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := NewTopology(t.Context(), tc.opts)
			if err == nil || !strings.Contains(err.Error(), tc.wantField) {
				t.Fatalf("error %v, want one naming %s", err, tc.wantField)
			}
		})
	}
}

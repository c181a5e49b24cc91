package guard

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/netip"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/blocknat/blocknat/test/netns"
)

// newNS gives the test a network namespace of its own, with nftables empty
// but for what the test adds, and removes it at cleanup.
func newNS(t *testing.T) *netns.NS {
	t.Helper()
	netns.RequirePrivileged(t)
	netns.RequireTools(t, "nft")
	ns, err := netns.Create(netns.TestPrefix("bn-guard") + "-" + strings.ToLower(strings.ReplaceAll(t.Name(), "/", "-"))[:min(20, len(t.Name()))])
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := ns.Delete(); err != nil {
			t.Error(err)
		}
	})
	return ns
}

func nft(t *testing.T, ns *netns.NS, args ...string) string {
	t.Helper()
	out, err := ns.Exec(context.Background(), append([]string{"nft"}, args...)...)
	if err != nil {
		t.Fatal(err)
	}
	return string(out)
}

// nftGuard is what `nft -j list table inet blocknat_guard` says, read
// independently of the library that wrote it.
type nftGuard struct {
	Chains   []map[string]any
	Rules    []map[string]any
	Sets     map[string][]any
	Counters map[string]map[string]any
}

func listGuard(t *testing.T, ns *netns.NS) nftGuard {
	t.Helper()
	var doc struct {
		Nftables []map[string]json.RawMessage `json:"nftables"`
	}
	if err := json.Unmarshal([]byte(nft(t, ns, "-j", "list", "table", "inet", TableName)), &doc); err != nil {
		t.Fatal(err)
	}
	g := nftGuard{Sets: map[string][]any{}, Counters: map[string]map[string]any{}}
	for _, item := range doc.Nftables {
		for kind, raw := range item {
			var v map[string]any
			if err := json.Unmarshal(raw, &v); err != nil {
				t.Fatal(err)
			}
			switch kind {
			case "chain":
				g.Chains = append(g.Chains, v)
			case "rule":
				g.Rules = append(g.Rules, v)
			case "set":
				elems, _ := v["elem"].([]any)
				g.Sets[v["name"].(string)] = elems
			case "counter":
				g.Counters[v["name"].(string)] = v
			}
		}
	}
	return g
}

var (
	inside  = []netip.Prefix{netip.MustParsePrefix("100.64.0.0/10"), netip.MustParsePrefix("10.1.0.0/24")}
	outside = []string{"bn-out", "bn-out2"}
)

// TestInstallReadRemove: the guard nft lists is a filter chain on
// postrouting with one rule that drops IPv4 from the inside prefixes out of
// the outside interfaces through the named counter; State reads the same
// back; a second Install with the same inputs changes nothing, not even the
// counter; Remove takes the table away, and a second Remove is no error.
func TestInstallReadRemove(t *testing.T) {
	ns := newNS(t)
	if err := ns.Do(func() error {
		st, err := State()
		if err != nil || st.Installed {
			t.Fatalf("State before install: %+v, %v", st, err)
		}
		ch, err := Install(inside, outside, nil)
		if err != nil || ch != Created {
			t.Fatalf("Install: %v, %v; want created", ch, err)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}

	text := nft(t, ns, "list", "table", "inet", TableName)
	for _, want := range []string{
		"type filter hook postrouting priority srcnat + 10; policy accept;",
		// nft leaves out the "meta nfproto ipv4" that "ip saddr" implies.
		`oifname @outside_interfaces ip saddr @inside_prefixes ip daddr != @exempt_destinations counter name "dropped" drop comment "` + ruleComment + `"`,
	} {
		if !strings.Contains(text, want) {
			t.Errorf("nft list table lacks %q:\n%s", want, text)
		}
	}
	g := listGuard(t, ns)
	if len(g.Chains) != 1 || g.Chains[0]["hook"] != "postrouting" || g.Chains[0]["type"] != "filter" || len(g.Rules) != 1 {
		t.Errorf("chains %v, rules %v; want one filter chain on postrouting with one rule", g.Chains, g.Rules)
	}
	prefixes, _ := json.Marshal(g.Sets[InsideSet])
	if string(prefixes) != `[{"prefix":{"addr":"10.1.0.0","len":24}},{"prefix":{"addr":"100.64.0.0","len":10}}]` {
		t.Errorf("set %s holds %s", InsideSet, prefixes)
	}
	if ifaces := g.Sets[OutsideSet]; !slices.Equal(ifaces, []any{"bn-out", "bn-out2"}) {
		t.Errorf("set %s holds %v", OutsideSet, ifaces)
	}
	if c, ok := g.Counters[CounterName]; !ok || c["packets"] != 0.0 {
		t.Errorf("counter %s: %v", CounterName, g.Counters)
	}

	if err := ns.Do(func() error {
		st, err := State()
		want := Status{Installed: true, Prefixes: []netip.Prefix{inside[1], inside[0]}, Interfaces: outside}
		if err != nil || !st.Installed || !slices.Equal(st.Prefixes, want.Prefixes) || !slices.Equal(st.Interfaces, want.Interfaces) {
			t.Errorf("State: %+v, %v; want %+v", st, err, want)
		}
		// Another order, the same guard.
		if ch, err := Install([]netip.Prefix{inside[1], inside[0]}, []string{outside[1], outside[0]}, nil); err != nil || ch != Unchanged {
			t.Errorf("second Install: %v, %v; want unchanged", ch, err)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if again := nft(t, ns, "list", "table", "inet", TableName); again != text {
		t.Errorf("an unchanged Install changed the table:\n%s\nwas\n%s", again, text)
	}

	if err := ns.Do(func() error {
		if err := Remove(); err != nil {
			t.Fatalf("Remove: %v", err)
		}
		if st, err := State(); err != nil || st.Installed {
			t.Errorf("State after Remove: %+v, %v", st, err)
		}
		if err := Remove(); err != nil {
			t.Errorf("Remove without a guard: %v", err)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if out := nft(t, ns, "list", "tables"); strings.Contains(out, TableName) {
		t.Errorf("tables after Remove:\n%s", out)
	}
}

// sendFrom sends one UDP datagram from src to dst inside the namespace,
// as a process on the router would. A datagram the guard drops fails the
// send with EPERM, which is the point, so the error is returned, not fatal.
func sendFrom(ns *netns.NS, src, dst netip.AddrPort) error {
	return ns.Do(func() error {
		c, err := net.DialUDP("udp4", net.UDPAddrFromAddrPort(src), net.UDPAddrFromAddrPort(dst))
		if err != nil {
			return err
		}
		defer c.Close()
		_, err = c.Write([]byte("guard"))
		return err
	})
}

// TestInstallReplacesAndKeepsOperatorTables: in a namespace with an
// outside interface, a router process's datagram from an inside address is
// dropped and counted, one from the outside address is not; the operator's
// own tables, one of them on the same postrouting hook, survive Install, a
// replacing Install and Remove unchanged; a changed configuration replaces
// the sets and carries the counter over; a guard whose rule was deleted by
// hand reads as not installed and Install repairs it.
func TestInstallReplacesAndKeepsOperatorTables(t *testing.T) {
	ns := newNS(t)
	ctx := context.Background()
	for _, args := range [][]string{
		{"link", "set", "lo", "up"},
		{"link", "add", "bn-out", "type", "veth", "peer", "name", "bn-peer"},
		{"link", "set", "bn-out", "up"},
		{"link", "set", "bn-peer", "up"},
		{"addr", "add", "192.0.2.1/24", "dev", "bn-out"},
		{"addr", "add", "100.64.0.1/32", "dev", "lo"},
		{"route", "add", "203.0.113.0/24", "dev", "bn-out"},
		{"neigh", "add", "203.0.113.5", "lladdr", "02:00:00:00:00:01", "dev", "bn-out", "nud", "permanent"},
	} {
		if out, err := ns.Exec(ctx, append([]string{"ip"}, args...)...); err != nil {
			t.Fatalf("%v: %s", err, out)
		}
	}
	nft(t, ns, "add", "table", "ip", "operator")
	nft(t, ns, "add", "chain", "ip", "operator", "post", "{ type filter hook postrouting priority 0; policy accept; }")
	nft(t, ns, "add", "rule", "ip", "operator", "post", "ip", "daddr", "203.0.113.0/24", "counter", "accept")
	nft(t, ns, "add", "table", "inet", "blocknat_guard_not")
	operatorTables := func() string {
		// Counters aside: the operator's rule counts the test's datagrams.
		return regexp.MustCompile(`counter packets \d+ bytes \d+`).ReplaceAllString(nft(t, ns, "list", "ruleset"), "counter")
	}
	before := operatorTables()
	inside := netip.MustParseAddrPort("100.64.0.1:4000")
	router := netip.MustParseAddrPort("192.0.2.1:4000")
	server := netip.MustParseAddrPort("203.0.113.5:9")

	if err := sendFrom(ns, inside, server); err != nil {
		t.Fatalf("without a guard, a datagram from %s: %v", inside.Addr(), err)
	}
	if err := ns.Do(func() error { _, err := Install(inside4(), []string{"bn-out"}, nil); return err }); err != nil {
		t.Fatal(err)
	}
	for range 3 {
		if err := sendFrom(ns, inside, server); err == nil {
			t.Errorf("a datagram from %s left by bn-out with the guard installed", inside.Addr())
		}
	}
	if err := sendFrom(ns, router, server); err != nil {
		t.Errorf("the guard stopped the router's own address: %v", err)
	}
	var counted Status
	if err := ns.Do(func() (err error) { counted, err = State(); return err }); err != nil {
		t.Fatal(err)
	}
	if counted.DroppedPackets != 3 || counted.DroppedBytes == 0 {
		t.Errorf("counter after 3 dropped datagrams: %d packets, %d bytes", counted.DroppedPackets, counted.DroppedBytes)
	}

	changed := []netip.Prefix{netip.MustParsePrefix("100.64.0.0/16")}
	if err := ns.Do(func() error {
		ch, err := Install(changed, []string{"bn-out", "bn-out9"}, nil)
		if err != nil || ch != Replaced {
			t.Fatalf("Install with other prefixes: %v, %v; want replaced", ch, err)
		}
		st, err := State()
		if err != nil || !st.Installed || !slices.Equal(st.Prefixes, changed) || !slices.Equal(st.Interfaces, []string{"bn-out", "bn-out9"}) {
			t.Errorf("State after a change: %+v, %v", st, err)
		}
		if st.DroppedPackets != counted.DroppedPackets || st.DroppedBytes != counted.DroppedBytes {
			t.Errorf("counter after a replace: %d/%d, before %d/%d", st.DroppedPackets, st.DroppedBytes, counted.DroppedPackets, counted.DroppedBytes)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if g := listGuard(t, ns); len(g.Sets[InsideSet]) != 1 || len(g.Sets[OutsideSet]) != 2 || len(g.Rules) != 1 {
		t.Errorf("after a change: sets %v, rules %v", g.Sets, g.Rules)
	}

	// Someone deletes the rule by hand: the guard is not installed, and
	// Install repairs it.
	handle := listGuard(t, ns).Rules[0]["handle"].(float64)
	nft(t, ns, "delete", "rule", "inet", TableName, ChainName, "handle", strconv.Itoa(int(handle)))
	if err := sendFrom(ns, inside, server); err != nil {
		t.Errorf("without the rule, a datagram from %s: %v", inside.Addr(), err)
	}
	if err := ns.Do(func() error {
		st, err := State()
		if err != nil || st.Installed || !strings.Contains(st.Problem, "0 rules") {
			t.Errorf("State without the rule: %+v, %v", st, err)
		}
		if ch, err := Install(changed, []string{"bn-out", "bn-out9"}, nil); err != nil || ch != Replaced {
			t.Errorf("Install over a damaged guard: %v, %v", ch, err)
		}
		if st, err := State(); err != nil || !st.Installed {
			t.Errorf("State after repair: %+v, %v", st, err)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if err := sendFrom(ns, inside, server); err == nil {
		t.Error("the repaired guard let a datagram from an inside address out")
	}

	// A nat_exempt destination: exactly it is let through.
	resolver := netip.MustParseAddrPort("203.0.113.53:53")
	exempt := []netip.Prefix{netip.PrefixFrom(resolver.Addr(), 32)}
	if err := ns.Do(func() error {
		if ch, err := Install(changed, []string{"bn-out", "bn-out9"}, exempt); err != nil || ch != Replaced {
			t.Errorf("Install with an exempt destination: %v, %v; want replaced", ch, err)
		}
		if st, err := State(); err != nil || !st.Installed || !slices.Equal(st.Exempt, exempt) {
			t.Errorf("State with an exempt destination: %+v, %v", st, err)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if err := sendFrom(ns, inside, resolver); err != nil {
		t.Errorf("the guard stopped a datagram from %s to the exempt %s: %v", inside.Addr(), resolver, err)
	}
	if err := sendFrom(ns, inside, server); err == nil {
		t.Errorf("with %s exempt, a datagram from %s to %s left", resolver, inside.Addr(), server)
	}
	if g := listGuard(t, ns); len(g.Sets[ExemptSet]) != 1 {
		t.Errorf("nft lists exempt set %v, want the one address", g.Sets[ExemptSet])
	}
	if err := ns.Do(Remove); err != nil {
		t.Fatal(err)
	}
	if after := operatorTables(); after != before {
		t.Errorf("the operator's ruleset changed:\n%s\nwas\n%s", after, before)
	}
}

func inside4() []netip.Prefix { return []netip.Prefix{netip.MustParsePrefix("100.64.0.0/10")} }

// TestRefusesWhatItCannotGuard: no prefix, no interface, an IPv6 prefix or
// an impossible interface name is refused, naming it, before anything is
// written.
func TestRefusesWhatItCannotGuard(t *testing.T) {
	for _, c := range []struct {
		inside  []netip.Prefix
		outside []string
		want    string
	}{
		{nil, outside, "no inside prefix"},
		{inside, nil, "no outside interface"},
		{[]netip.Prefix{netip.MustParsePrefix("2001:db8::/32")}, outside, "2001:db8::/32"},
		{inside, []string{"a-name-longer-than-15"}, "a-name-longer-than-15"},
	} {
		if _, err := Install(c.inside, c.outside, nil); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("Install(%v, %v): %v, want an error naming %q", c.inside, c.outside, err, c.want)
		}
	}
}

// TestRangesPrefixes: ranges read back from the kernel are written as the
// fewest prefixes, and overlapping or adjacent prefixes merge.
func TestRangesPrefixes(t *testing.T) {
	s, err := newSpec([]netip.Prefix{netip.MustParsePrefix("100.64.0.0/25"), netip.MustParsePrefix("100.64.0.128/25"),
		netip.MustParsePrefix("100.64.1.0/24"), netip.MustParsePrefix("100.64.0.7/32"), netip.MustParsePrefix("10.0.0.1/8")}, outside, nil)
	if err != nil {
		t.Fatal(err)
	}
	got := rangesPrefixes(s.ranges)
	want := []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8"), netip.MustParsePrefix("100.64.0.0/23")}
	if !slices.Equal(got, want) {
		t.Errorf("prefixes %v, want %v", got, want)
	}
	odd := rangesPrefixes([]ipRange{{lo: uint64(addrUint(netip.MustParseAddr("10.0.0.1"))), hi: uint64(addrUint(netip.MustParseAddr("10.0.0.4")))}})
	if fmt.Sprint(odd) != "[10.0.0.1/32 10.0.0.2/31]" {
		t.Errorf("10.0.0.1-10.0.0.3 as %v", odd)
	}
	if all := rangesPrefixes([]ipRange{{0, 1 << 32}}); fmt.Sprint(all) != "[0.0.0.0/0]" {
		t.Errorf("the whole space as %v", all)
	}
}

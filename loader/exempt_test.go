package loader

import (
	"net/netip"
	"path/filepath"
	"slices"
	"testing"

	"github.com/google/gopacket/layers"

	"github.com/blocknat/blocknat/userspace/config"
)

const (
	resolver   = "203.0.113.53" // nat_exempt: the ISP's resolver
	publicHost = "192.0.2.130"  // inside.public: a customer with an address of its own
)

var (
	exemptPrefixes = []netip.Prefix{netip.MustParsePrefix(resolver + "/32")}
	publicPrefixes = []netip.Prefix{netip.MustParsePrefix("192.0.2.128/25")}
)

func exemptFixture(t *testing.T) *natFixture {
	t.Helper()
	ns := newTestNS(t)
	m := newFixtureMapping(t, []string{"100.64.0.0/24"}, []string{"198.51.100.10/31"})
	nat, err := Load(Params{Mapping: m, Epoch: 7, Exempt: exemptPrefixes, PublicInside: publicPrefixes}, "")
	if err != nil {
		t.Fatalf("load: %v", err)
	}
	t.Cleanup(func() { nat.Close() })
	return fixtureOn(t, ns, nat, m)
}

// untouched checks that out is in forwarded by the router unchanged: the
// same addresses and ports, the TTL one less, the upstream's MAC.
func untouched(t *testing.T, f *natFixture, act uint32, in, out []byte) {
	t.Helper()
	if act != xdpRedirect {
		t.Fatalf("verdict %s, want XDP_REDIRECT%s", actionNames[act], dump(out))
	}
	din, dout := decode(t, in), decode(t, out)
	if dout.src() != din.src() || dout.dst() != din.dst() {
		t.Errorf("%s -> %s left as %s -> %s, want it untouched", din.src(), din.dst(), dout.src(), dout.dst())
	}
	checkForwarded(t, f, din, dout, "out0", macUpstream)
}

// TestNATExemptAndPublicInside: a subscriber's packet to a nat_exempt
// destination, later fragments included, and any packet from an
// inside.public address leave by the outside interface untranslated, with
// no mapping, no block activity and their own counters; a source from no
// inside prefix is still spoofed to an exempt destination; everything else
// is translated as before; inbound to a public address is the kernel's to
// route (it is no pool address).
func TestNATExemptAndPublicInside(t *testing.T) {
	f := exemptFixture(t)
	noState := func(t *testing.T, st Stats) {
		t.Helper()
		if fwd, rev := f.flowCount(); fwd != 0 || rev != 0 {
			t.Errorf("%d forward and %d reverse mappings, want none", fwd, rev)
		}
		if f.activeSubscribers() != 0 || st["block_activations"] != 0 || st["new_flows"] != 0 || st["out_packets"] != 0 {
			t.Errorf("block or mapping activity: %d active subscribers, stats %v", f.activeSubscribers(), st)
		}
	}
	t.Run("subscriber to an exempt destination", func(t *testing.T) {
		f.reset()
		for _, p := range []pkt{
			udpOut(sub2+":40000", resolver+":53"),
			{proto: layers.IPProtocolTCP, src: sub2 + ":40001", dst: resolver + ":853", tcpFlags: "S"},
			{proto: layers.IPProtocolICMPv4, src: sub2 + ":9", dst: resolver + ":0", icmpType: layers.ICMPv4TypeEchoRequest, payload: []byte("ping")},
		} {
			in := p.build(t)
			act, out := f.outbound(in)
			untouched(t, f, act, in, out)
		}
		st := f.stats()
		if st["exempt_out"] != 3 {
			t.Errorf("exempt_out %d, want 3", st["exempt_out"])
		}
		noState(t, st)
	})
	t.Run("a later fragment to an exempt destination", func(t *testing.T) {
		f.reset()
		in := pkt{proto: layers.IPProtocolUDP, src: sub2 + ":40000", dst: resolver + ":53", fragOffset: 185, raw: true}.build(t)
		act, out := f.outbound(in)
		if act != xdpRedirect {
			t.Fatalf("verdict %s, want XDP_REDIRECT", actionNames[act])
		}
		if d := decode(t, out); d.ip.SrcIP.String() != sub2 || d.ip.DstIP.String() != resolver {
			t.Errorf("fragment left as %s -> %s, want %s -> %s", d.ip.SrcIP, d.ip.DstIP, sub2, resolver)
		}
		st := f.stats()
		if st["exempt_out"] != 1 || st["drop_fragment_inactive"] != 0 || st["fragments"] != 0 {
			t.Errorf("stats %v, want exempt_out 1 and no fragment verdict", st)
		}
		noState(t, st)
	})
	t.Run("no inside source to an exempt destination is spoofed", func(t *testing.T) {
		f.reset()
		act, out := f.outbound(udpOut("10.99.0.7:40000", resolver+":53").build(t))
		if act != xdpDrop {
			t.Fatalf("verdict %s, want XDP_DROP%s", actionNames[act], dump(out))
		}
		if st := f.stats(); st["drop_spoofed"] != 1 || st["exempt_out"] != 0 {
			t.Errorf("stats %v, want drop_spoofed 1", st)
		}
	})
	t.Run("a public address is routed untouched", func(t *testing.T) {
		f.reset()
		for _, dst := range []string{server + ":443", resolver + ":53"} {
			in := udpOut(publicHost+":5000", dst).build(t)
			act, out := f.outbound(in)
			untouched(t, f, act, in, out)
		}
		st := f.stats()
		if st["public_out"] != 2 || st["exempt_out"] != 0 {
			t.Errorf("stats %v, want public_out 2", st)
		}
		noState(t, st)
		in := udpOut(server+":443", publicHost+":5000")
		in.srcMAC, in.dstMAC = macUpstream, nil
		frame := in.build(t)
		act, out := f.inbound(frame)
		if act != xdpPass || string(out[:len(frame)]) != string(frame) {
			t.Errorf("inbound to %s: %s, want XDP_PASS untouched (the kernel routes it)", publicHost, actionNames[act])
		}
		if st := f.stats(); st["pass_not_pool"] != 1 {
			t.Errorf("stats %v, want pass_not_pool 1", st)
		}
	})
	t.Run("everything else is translated", func(t *testing.T) {
		f.reset()
		mapped := mapOut(udpOut(sub2+":40000", server+":53"))(f)
		if mapped.Addr().String() != "198.51.100.10" {
			t.Errorf("mapped to %s, want the pool", mapped)
		}
		if st := f.stats(); st["new_flows"] != 1 || st["exempt_out"] != 0 || st["public_out"] != 0 {
			t.Errorf("stats %v", st)
		}
	})
}

// TestExemptTriesFollowTheConfiguration: a start on pinned tries from a
// run with other exemptions holds exactly this run's, so a prefix removed
// from the configuration is translated again; and the loader's limit is
// the configuration's.
func TestExemptTriesFollowTheConfiguration(t *testing.T) {
	if ExemptPrefixLimit != config.ExemptPrefixLimit {
		t.Fatalf("loader holds %d exempt prefixes, the configuration allows %d", ExemptPrefixLimit, config.ExemptPrefixLimit)
	}
	pinDir := filepath.Join(mountTestBPFFS(t), "blocknat")
	m := newFixtureMapping(t, []string{"100.64.0.0/24"}, []string{"198.51.100.10/31"})
	trie := func(nat *NAT) []netip.Prefix {
		var (
			key natLpmV4Key
			val uint32
			out []netip.Prefix
		)
		it := nat.objs.NatExempt.Iterate()
		for it.Next(&key, &val) {
			out = append(out, netip.PrefixFrom(AddrFromBE32(key.Addr), int(key.Prefixlen)))
		}
		if err := it.Err(); err != nil {
			t.Fatal(err)
		}
		slices.SortFunc(out, func(a, b netip.Prefix) int { return a.Addr().Compare(b.Addr()) })
		return out
	}
	first := []netip.Prefix{netip.MustParsePrefix("203.0.113.53/32"), netip.MustParsePrefix("203.0.113.64/26")}
	nat, err := Load(Params{Mapping: m, Epoch: 7, Exempt: first}, pinDir)
	if err != nil {
		t.Fatal(err)
	}
	if got := trie(nat); !slices.Equal(got, first) {
		t.Errorf("trie %v, want %v", got, first)
	}
	nat.Close()
	second := first[:1]
	nat, err = Load(Params{Mapping: m, Epoch: 7, Exempt: second}, pinDir)
	if err != nil {
		t.Fatal(err)
	}
	if got := trie(nat); !slices.Equal(got, second) {
		t.Errorf("trie after a start with %v: %v", second, got)
	}
	nat.Close()
	if err := Detach(pinDir); err != nil {
		t.Fatal(err)
	}
	many := make([]netip.Prefix, ExemptPrefixLimit+1)
	for i := range many {
		many[i] = netip.PrefixFrom(netip.AddrFrom4([4]byte{10, byte(i >> 8), byte(i), 0}), 24)
	}
	if _, err := Load(Params{Mapping: m, Exempt: many}, ""); err == nil {
		t.Error("load with more exempt prefixes than the trie holds succeeded")
	}
}

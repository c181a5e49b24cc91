package loader

import (
	"net"
	"net/netip"
	"testing"
)

// TestSourceValidation: a packet is translated only if its source is bound
// to where it came from. A neighbour's bound address from another MAC, an
// address its interface does not carry, and an unbound address where a
// binding is required are dropped and counted before any table is
// touched, on the established path too; the bound device itself is
// translated.
func TestSourceValidation(t *testing.T) {
	f := defaultFixture(t)
	const sub3 = "100.64.0.3"
	send := func(src string, mac net.HardwareAddr) uint32 {
		t.Helper()
		p := udpOut(src+":4000", server+":53")
		p.srcMAC = mac
		act, _ := f.outbound(p.build(t))
		return act
	}
	expect := func(name string, act, want uint32, spoofed uint64) {
		t.Helper()
		if act != want {
			t.Errorf("%s: verdict %s, want %s", name, actionNames[act], actionNames[want])
		}
		if got := f.stats()["drop_spoofed_binding"]; got != spoofed {
			t.Errorf("%s: drop_spoofed_binding = %d, want %d", name, got, spoofed)
		}
	}

	// Nothing bound, no policy: as before.
	expect("unbound, no policy", send(sub2, macSender), xdpRedirect, 0)

	// sub2 leases to macSub2: its established mapping must not carry the
	// spoofer's packet either.
	if err := f.nat.SetSourceBindings(map[netip.Addr]net.HardwareAddr{netip.MustParseAddr(sub2): macSub2}); err != nil {
		t.Fatal(err)
	}
	expect("bound, another MAC, established mapping", send(sub2, macSender), xdpDrop, 1)
	expect("bound, its own MAC", send(sub2, macSub2), xdpRedirect, 1)
	f.reset()
	expect("bound, another MAC, new flow", send(sub2, macSender), xdpDrop, 1)
	if fwd, _ := f.flowCount(); fwd != 0 {
		t.Errorf("a spoofed packet created %d mappings", fwd)
	}
	if st := f.stats(); st["block_activations"] != 0 || st["new_flows"] != 0 {
		t.Errorf("a spoofed packet activated a block: %v", st)
	}
	got, err := f.nat.SourceBindings()
	if err != nil || len(got) != 1 || got[netip.MustParseAddr(sub2)].String() != macSub2.String() {
		t.Errorf("bindings read back %v %v", got, err)
	}

	// in0 carries 100.64.0.2/32 only.
	f.reset()
	f.ns.do(t, func() {
		if err := f.nat.SetInterfacePolicies(map[string]InterfacePolicy{"in0": {Prefixes: []netip.Prefix{netip.MustParsePrefix(sub2 + "/32")}}}); err != nil {
			t.Fatal(err)
		}
	})
	expect("prefix the interface carries", send(sub2, macSub2), xdpRedirect, 0)
	expect("prefix the interface does not carry", send(sub3, macSub3), xdpDrop, 1)

	// in0 requires a binding: sub3 gets one, and its prefix too.
	f.reset()
	f.ns.do(t, func() {
		if err := f.nat.SetInterfacePolicies(map[string]InterfacePolicy{"in0": {RequireBinding: true}}); err != nil {
			t.Fatal(err)
		}
	})
	expect("unbound where a binding is required", send(sub3, macSub3), xdpDrop, 1)
	if err := f.nat.SetSourceBindings(map[netip.Addr]net.HardwareAddr{netip.MustParseAddr(sub3): macSub3}); err != nil {
		t.Fatal(err)
	}
	expect("bound where a binding is required", send(sub3, macSub3), xdpRedirect, 1)
	expect("sub2 lost its binding", send(sub2, macSub2), xdpDrop, 2)

	// Clearing the policies and bindings restores the plain check.
	f.reset()
	f.ns.do(t, func() {
		if err := f.nat.SetInterfacePolicies(nil); err != nil {
			t.Fatal(err)
		}
	})
	if err := f.nat.SetSourceBindings(nil); err != nil {
		t.Fatal(err)
	}
	expect("policies and bindings cleared", send(sub3, macSender), xdpRedirect, 0)
}

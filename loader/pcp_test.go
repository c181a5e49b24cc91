package loader

import (
	"errors"
	"net"
	"net/netip"
	"testing"

	"github.com/cilium/ebpf/ringbuf"
	"github.com/google/gopacket/layers"

	"github.com/blocknat/blocknat/userspace/mapping"
)

// sub2's block in the default fixture: subscriber 2 of 128 on
// 198.51.100.10, 504 ports from 1024 + 2*504.
const (
	sub2Public = "198.51.100.10"
	sub2Lo     = 2032
	sub2Hi     = 2535
)

func inSub2Block(t *testing.T, what string, got PCPMapping) {
	t.Helper()
	if got.Public != netip.MustParseAddr(sub2Public) || got.Port < sub2Lo || got.Port > sub2Hi {
		t.Errorf("%s: mapped to %s:%d, outside sub2's block %s:%d-%d", what, got.Public, got.Port, sub2Public, sub2Lo, sub2Hi)
	}
}

func revOf(t *testing.T, f *natFixture, m PCPMapping, proto uint8) (FlowRev, bool) {
	t.Helper()
	rev, ok, err := f.nat.LookupReverse(FlowKey{Addr: be32(m.Public), Port: PortToBE16(m.Port), Proto: proto})
	if err != nil {
		t.Fatal(err)
	}
	return rev, ok
}

// TestPCPMap: the PCP server's mappings are made by the data plane's own
// code: in the subscriber's block only, the suggested port when it is
// free and in the block, the first one activating the block with its
// event, a mapping traffic made taken over as it is, and refusals that
// create nothing.
func TestPCPMap(t *testing.T) {
	f := defaultFixture(t)
	rd, err := ringbuf.NewReader(f.nat.objs.BlockEvents)
	if err != nil {
		t.Fatal(err)
	}
	defer rd.Close()
	inside := netip.MustParseAddr(sub2)
	tcp, udp := uint8(ProtoTCP), uint8(ProtoUDP)

	got, err := f.nat.PCPMap(inside, 8080, tcp, 2, 2100, false, true)
	if err != nil || got.Port != 2100 || got.Adopted {
		t.Fatalf("first map: %+v %v, want port 2100, not adopted", got, err)
	}
	inSub2Block(t, "first map", got)
	evs := readEvents(t, rd)
	if len(evs) != 1 || evs[0].Subscriber != 2 || evs[0].PortLo != sub2Lo || evs[0].PortHi != sub2Hi ||
		AddrFromBE32(evs[0].PublicAddr) != got.Public || AddrFromBE32(evs[0].InsideAddr) != inside {
		t.Errorf("activation events %+v, want one for sub2's block", evs)
	}
	if rev, ok := revOf(t, f, got, tcp); !ok || rev.Flags&FlowRevOpen == 0 || rev.Subscriber != 2 {
		t.Errorf("reverse entry %+v (%v): want it open, subscriber 2", rev, ok)
	}
	if fwd, ok, _ := f.nat.LookupFlow(FlowKey{Addr: be32(inside), Port: PortToBE16(8080), Proto: tcp}); !ok ||
		AddrFromBE32(fwd.NatAddr) != got.Public || PortFromBE16(fwd.NatPort) != 2100 {
		t.Errorf("forward entry %+v (%v)", fwd, ok)
	}

	again, err := f.nat.PCPMap(inside, 8080, tcp, 2, 2200, false, true)
	if err != nil || again.Port != 2100 || !again.Adopted {
		t.Errorf("asked again: %+v %v, want the same port 2100, adopted", again, err)
	}
	if evs := readEvents(t, rd); len(evs) != 0 {
		t.Errorf("a second request on an active block sent %d events", len(evs))
	}

	if _, err := f.nat.PCPMap(inside, 8081, tcp, 2, 2100, true, true); !errors.Is(err, ErrPCPTaken) {
		t.Errorf("suggested port taken, required: %v, want ErrPCPTaken", err)
	}
	other, err := f.nat.PCPMap(inside, 8081, tcp, 2, 2100, false, true)
	if err != nil || other.Port == 2100 {
		t.Errorf("suggested port taken: %+v %v, want another port", other, err)
	}
	inSub2Block(t, "suggested port taken", other)

	// A port of subscriber 0's block is never given, asked for or not.
	outside, err := f.nat.PCPMap(inside, 8082, udp, 2, 1024, false, true)
	if err != nil {
		t.Fatal(err)
	}
	inSub2Block(t, "suggested port in another's block", outside)
	if _, ok := revOf(t, f, PCPMapping{Public: netip.MustParseAddr(sub2Public), Port: 1024}, udp); ok {
		t.Error("a port of another subscriber's block was mapped")
	}
	if _, err := f.nat.PCPMap(inside, 8083, udp, 2, 1024, true, true); !errors.Is(err, ErrPCPTaken) {
		t.Errorf("another's port, required: %v, want ErrPCPTaken", err)
	}

	// A mapping traffic made is taken over with its port.
	implicit := mapOut(udpOut(sub2+":5000", server+":3478"))(f)
	adopted, err := f.nat.PCPMap(inside, 5000, udp, 2, 0, false, true)
	if err != nil || !adopted.Adopted || adopted.Port != implicit.Port() || adopted.Public != implicit.Addr() {
		t.Errorf("took over %+v %v, traffic mapped it to %s", adopted, err, implicit)
	}
	if rev, ok := revOf(t, f, adopted, udp); !ok || rev.Flags&FlowRevOpen == 0 {
		t.Errorf("adopted mapping's reverse entry %+v: not open", rev)
	}

	fwdBefore, _ := f.flowCount()
	for _, c := range []struct {
		name  string
		addr  string
		port  uint16
		proto uint8
		sub   uint32
	}{
		{"another subscriber's address", sub2, 9000, udp, 3},
		{"an address in no inside prefix", "10.9.9.9", 9000, udp, 2},
		{"ICMP", sub2, 9000, ProtoICMP, 2},
		{"internal port 0", sub2, 0, udp, 2},
	} {
		if _, err := f.nat.PCPMap(netip.MustParseAddr(c.addr), c.port, c.proto, c.sub, 0, false, true); !errors.Is(err, ErrPCPBadRequest) {
			t.Errorf("%s: %v, want ErrPCPBadRequest", c.name, err)
		}
	}
	if fwd, _ := f.flowCount(); fwd != fwdBefore {
		t.Errorf("refused requests made %d mappings", fwd-fwdBefore)
	}

	// Ending the hold: without drop the mapping stays, closed; with drop
	// it goes, both sides.
	key := FlowKey{Addr: be32(inside), Port: PortToBE16(5000), Proto: udp}
	if err := f.nat.PCPUnmap(key, adopted.Public, adopted.Port, false); err != nil {
		t.Fatal(err)
	}
	if rev, ok := revOf(t, f, adopted, udp); !ok || rev.Flags&FlowRevOpen != 0 {
		t.Errorf("after the hold ended: reverse entry %+v (%v), want it kept and closed", rev, ok)
	}
	key = FlowKey{Addr: be32(inside), Port: PortToBE16(8080), Proto: tcp}
	if err := f.nat.PCPUnmap(key, got.Public, 2199, true); err != nil {
		t.Fatal(err)
	}
	if _, ok := revOf(t, f, got, tcp); !ok {
		t.Error("a drop naming another public port removed the mapping")
	}
	if err := f.nat.PCPUnmap(key, got.Public, got.Port, true); err != nil {
		t.Fatal(err)
	}
	if _, ok := revOf(t, f, got, tcp); ok {
		t.Error("dropped mapping's reverse entry is still there")
	}
	if _, ok, _ := f.nat.LookupFlow(key); ok {
		t.Error("dropped mapping's forward entry is still there")
	}
}

// TestPCPBlockFull: a full block refuses a PCP mapping as it refuses a
// flow, and never lends an overflow port to one.
func TestPCPBlockFull(t *testing.T) {
	f := overflowFixture(t, 1)
	inside := netip.MustParseAddr("100.64.0.1")
	for i := range uint16(4) {
		if _, err := f.nat.PCPMap(inside, 7000+i, ProtoUDP, 1, 0, false, true); err != nil {
			t.Fatalf("mapping %d of a 4-port block: %v", i, err)
		}
	}
	if _, err := f.nat.PCPMap(inside, 7004, ProtoUDP, 1, 0, false, true); !errors.Is(err, ErrPCPBlockFull) {
		t.Errorf("fifth mapping of a 4-port block: %v, want ErrPCPBlockFull", err)
	}
	// Traffic may claim an overflow block; PCP may not take it over.
	mapped := f.open("100.64.0.1", 40000, 1)
	if len(mapped) != 1 || mapped[0].Addr() != netip.MustParseAddr(overflowAddr) {
		t.Fatalf("the fifth flow left from %v, want the overflow address", mapped)
	}
	if _, err := f.nat.PCPMap(inside, 40000, ProtoUDP, 1, 0, false, true); !errors.Is(err, ErrPCPNotOwnBlock) {
		t.Errorf("taking over an overflow mapping: %v, want ErrPCPNotOwnBlock", err)
	}
}

// TestPCPInboundWhateverTheFiltering: with address-and-port-dependent
// filtering, a mapping a MAP holds open takes inbound from any remote; a
// mapping held without it (PEER), or whose hold ended, filters as before.
func TestPCPInboundWhateverTheFiltering(t *testing.T) {
	f := fixtureWith(t, func(p *Params) { p.FilterAPDF = true })
	inside := netip.MustParseAddr(sub2)
	open, err := f.nat.PCPMap(inside, 8080, ProtoUDP, 2, 0, false, true)
	if err != nil {
		t.Fatal(err)
	}
	closed, err := f.nat.PCPMap(inside, 8081, ProtoUDP, 2, 0, false, false)
	if err != nil {
		t.Fatal(err)
	}
	send := func(to PCPMapping) uint32 {
		in := pkt{proto: layers.IPProtocolUDP, src: "203.0.113.9:5555", dst: netip.AddrPortFrom(to.Public, to.Port).String(),
			payload: []byte("x"), srcMAC: macUpstream}.build(t)
		act, out := f.inbound(in)
		if act == xdpRedirect {
			if d := decode(t, out); d.dst() != netip.AddrPortFrom(inside, 8080) {
				t.Errorf("inbound to the open mapping reached %s, want %s:8080", d.dst(), sub2)
			}
		}
		return act
	}
	if act := send(open); act != xdpRedirect {
		t.Errorf("APDF, open mapping, a remote it never sent to: %s, want XDP_REDIRECT", actionNames[act])
	}
	if act := send(closed); act != xdpDrop {
		t.Errorf("APDF, mapping held without opening: %s, want XDP_DROP", actionNames[act])
	}
	key := FlowKey{Addr: be32(inside), Port: PortToBE16(8080), Proto: ProtoUDP}
	if err := f.nat.PCPUnmap(key, open.Public, open.Port, false); err != nil {
		t.Fatal(err)
	}
	if act := send(open); act != xdpDrop {
		t.Errorf("APDF, after the hold ended: %s, want XDP_DROP", actionNames[act])
	}
	if got := f.stats()["drop_filtered"]; got != 2 {
		t.Errorf("drop_filtered = %d, want 2", got)
	}
}

// TestPCPSuspectSourcesMarked: with pcp on, a request to the PCP server
// from a source that fails the inside validation reaches the kernel on
// PCPSuspectPort, checksum intact; a bound source's, other traffic to the
// router, and everything with pcp off are untouched.
func TestPCPSuspectSourcesMarked(t *testing.T) {
	const router = "100.64.0.254"
	request := func(mac net.HardwareAddr, proto layers.IPProtocol, port uint16) []byte {
		p := pkt{proto: proto, src: sub2 + ":5350", dst: netip.AddrPortFrom(netip.MustParseAddr(router), port).String(),
			payload: make([]byte, 24), srcMAC: mac}
		if proto == layers.IPProtocolTCP {
			p.tcpFlags = "S"
		}
		return p.build(t)
	}
	for _, on := range []bool{true, false} {
		f := fixtureWith(t, func(p *Params) { p.PCP = on })
		f.ns.do(t, func() {
			for ifn, role := range map[string]Role{"lan0": RoleInside} {
				if err := f.nat.register(f.ns.ifs[ifn], role); err != nil {
					t.Fatal(err)
				}
			}
		})
		if err := f.nat.SetSourceBindings(map[netip.Addr]net.HardwareAddr{netip.MustParseAddr(sub2): macSub2}); err != nil {
			t.Fatal(err)
		}
		for _, c := range []struct {
			name     string
			mac      net.HardwareAddr
			proto    layers.IPProtocol
			port     uint16
			wantPort uint16
		}{
			{"the bound device", macSub2, layers.IPProtocolUDP, PCPServerPort, PCPServerPort},
			{"another MAC", macSender, layers.IPProtocolUDP, PCPServerPort, PCPSuspectPort},
			{"another MAC, to another port", macSender, layers.IPProtocolUDP, 53, 53},
			{"another MAC, TCP", macSender, layers.IPProtocolTCP, PCPServerPort, PCPServerPort},
		} {
			if !on {
				c.wantPort = c.port
			}
			act, out := f.outbound(request(c.mac, c.proto, c.port))
			if act != xdpPass {
				t.Errorf("pcp %v, %s: %s, want XDP_PASS", on, c.name, actionNames[act])
				continue
			}
			if got := decode(t, out).dst().Port(); got != c.wantPort {
				t.Errorf("pcp %v, %s: reached port %d, want %d", on, c.name, got, c.wantPort)
			}
		}
		want := uint64(0)
		if on {
			want = 1
		}
		if st := f.stats(); st["pcp_suspect"] != want || st["pass_local"] != 4 {
			t.Errorf("pcp %v: pcp_suspect %d (want %d), pass_local %d (want 4)", on, st["pcp_suspect"], want, st["pass_local"])
		}
		if fwd, _ := f.flowCount(); fwd != 0 {
			t.Errorf("pcp %v: requests to the router made %d mappings", on, fwd)
		}
	}
}

// TestPCPEntriesAndEpoch: the PCP table reads back what was written, and
// the epoch's start is set once.
func TestPCPEntriesAndEpoch(t *testing.T) {
	f := defaultFixture(t)
	key := FlowKey{Addr: be32(netip.MustParseAddr(sub2)), Port: PortToBE16(8080), Proto: ProtoTCP}
	e := PCPEntry{ExpiresNs: 123, Nonce: [12]uint8{1, 2, 3}, PublicAddr: be32(netip.MustParseAddr(sub2Public)),
		PublicPort: PortToBE16(2100), Flags: PCPEntryOpen, Subscriber: 2}
	if err := f.nat.PutPCPEntry(key, e); err != nil {
		t.Fatal(err)
	}
	held, err := f.nat.PCPHeld()
	if err != nil || len(held) != 1 || held[key] != 123 {
		t.Errorf("held %v %v, want the one entry until 123", held, err)
	}
	var read []PCPEntry
	if err := f.nat.PCPEntries(func(k FlowKey, v PCPEntry) error { read = append(read, v); return nil }); err != nil {
		t.Fatal(err)
	}
	if len(read) != 1 || read[0] != e {
		t.Errorf("read back %+v, want %+v", read, e)
	}
	if err := f.nat.DeletePCPEntry(key); err != nil {
		t.Fatal(err)
	}
	if err := f.nat.DeletePCPEntry(key); err != nil {
		t.Errorf("deleting a missing entry: %v", err)
	}
	first, err := f.nat.PCPEpochStart(1000)
	if err != nil || first != 1000 {
		t.Fatalf("epoch start %d %v, want 1000", first, err)
	}
	if again, err := f.nat.PCPEpochStart(5000); err != nil || again != 1000 {
		t.Errorf("epoch start asked again: %d %v, want 1000 kept", again, err)
	}
}

// TestPCPSurvivesReload: a reload that keeps a PCP mapping keeps its PCP
// state, open as before, and the epoch; one that moves the subscriber's
// block drops both the mapping and its state.
func TestPCPSurvivesReload(t *testing.T) {
	f := defaultFixture(t)
	inside := netip.MustParseAddr(sub2)
	got, err := f.nat.PCPMap(inside, 8080, ProtoUDP, 2, 2100, false, true)
	if err != nil {
		t.Fatal(err)
	}
	key := FlowKey{Addr: be32(inside), Port: PortToBE16(8080), Proto: ProtoUDP}
	e := PCPEntry{ExpiresNs: 1 << 50, PublicAddr: be32(got.Public), PublicPort: PortToBE16(got.Port), Flags: PCPEntryOpen, Subscriber: 2}
	if err := f.nat.PutPCPEntry(key, e); err != nil {
		t.Fatal(err)
	}
	start, err := f.nat.PCPEpochStart(4242)
	if err != nil {
		t.Fatal(err)
	}
	p := f.nat.Params()
	p.Epoch++
	next, st, err := f.nat.Reload(p)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { next.Close() })
	f.nat = next
	if st.PCPKept != 1 || st.PCPDropped != 0 {
		t.Errorf("reload kept %d and dropped %d PCP mappings, want 1 and 0", st.PCPKept, st.PCPDropped)
	}
	held, err := next.PCPHeld()
	if err != nil || held[key] != e.ExpiresNs {
		t.Errorf("after the reload: held %v %v", held, err)
	}
	if rev, ok := revOf(t, f, got, ProtoUDP); !ok || rev.Flags&FlowRevOpen == 0 {
		t.Errorf("after the reload: reverse entry %+v (%v), want it open", rev, ok)
	}
	if again, err := next.PCPEpochStart(9999); err != nil || again != start {
		t.Errorf("after the reload: epoch start %d %v, want %d", again, err, start)
	}

	// 256 subscribers over one address instead of two: sub2's block moves.
	m, err := mapping.New(prefixesOf(t, []string{"100.64.0.0/24"}), prefixesOf(t, []string{"198.51.100.10"}), 1024, 65535, 0)
	if err != nil {
		t.Fatal(err)
	}
	p.Mapping, p.Epoch = m, p.Epoch+1
	moved, st, err := next.Reload(p)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { moved.Close() })
	if st.PCPKept != 0 || st.PCPDropped != 1 {
		t.Errorf("moving reload kept %d and dropped %d PCP mappings, want 0 and 1", st.PCPKept, st.PCPDropped)
	}
	if held, err := moved.PCPHeld(); err != nil || len(held) != 0 {
		t.Errorf("after the moving reload: held %v %v, want none", held, err)
	}
}

// TestPCPOrphansClosed: a mapping PCP opened whose entry was never
// written (the agent killed between the two) is closed at the server's
// next start, while one its entry holds stays open and the orphan stays
// mapped under the idle timeouts.
func TestPCPOrphansClosed(t *testing.T) {
	f := defaultFixture(t)
	inside := netip.MustParseAddr(sub2)
	tcp := uint8(ProtoTCP)
	held, err := f.nat.PCPMap(inside, 8080, tcp, 2, 2100, false, true)
	if err != nil {
		t.Fatal(err)
	}
	orphan, err := f.nat.PCPMap(inside, 8081, tcp, 2, 2101, false, true)
	if err != nil {
		t.Fatal(err)
	}
	key := FlowKey{Addr: be32(inside), Port: PortToBE16(8080), Proto: tcp}
	if err := f.nat.PutPCPEntry(key, PCPEntry{ExpiresNs: 1 << 62, PublicAddr: be32(held.Public), PublicPort: PortToBE16(held.Port),
		Flags: PCPEntryOpen, Subscriber: 2}); err != nil {
		t.Fatal(err)
	}
	closed, err := f.nat.ClosePCPOrphans()
	if err != nil || closed != 1 {
		t.Fatalf("closed %d orphans, %v; want 1", closed, err)
	}
	if rev, ok := revOf(t, f, held, tcp); !ok || rev.Flags&FlowRevOpen == 0 {
		t.Errorf("the mapping its entry holds: %+v (%v), want it still open", rev, ok)
	}
	if rev, ok := revOf(t, f, orphan, tcp); !ok || rev.Flags&FlowRevOpen != 0 {
		t.Errorf("the orphan: %+v (%v), want it mapped and no longer open", rev, ok)
	}
	if closed, err := f.nat.ClosePCPOrphans(); err != nil || closed != 0 {
		t.Errorf("a second pass closed %d, %v; want none", closed, err)
	}
}

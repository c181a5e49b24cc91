package loader

import (
	"bytes"
	"net"
	"net/netip"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/google/gopacket"
	"github.com/google/gopacket/layers"

	"github.com/blocknat/blocknat/userspace/mapping"
)

// routerInside is the router's address on in0 (see newTestNS), the source
// of the ICMP errors the data plane sends to subscribers there.
var routerInside = net.ParseIP("100.64.0.254").To4()

// checkHostUnreachable: the frame is an ICMP host unreachable from the
// router's address on in0 to the sender of orig, quoting orig's IP header
// and first 8 bytes, back out of the interface it came in on.
func checkHostUnreachable(t *testing.T, orig, out []byte) {
	t.Helper()
	d := decode(t, out)
	// orig is read by its offsets, not decoded: a fuzzed frame's own
	// checksums may be wrong, and the error quotes it as it came.
	origSrc, origSrcMAC, origDstMAC := net.IP(orig[26:30]), net.HardwareAddr(orig[6:12]), net.HardwareAddr(orig[0:6])
	if d.icmp == nil || d.icmp.TypeCode != layers.CreateICMPv4TypeCode(layers.ICMPv4TypeDestinationUnreachable, layers.ICMPv4CodeHost) {
		t.Fatalf("not a host unreachable:%s", dump(out))
	}
	if !d.ip.DstIP.Equal(origSrc) || !d.ip.SrcIP.Equal(routerInside) {
		t.Errorf("ICMP %s -> %s, want %s (the router) -> %s", d.ip.SrcIP, d.ip.DstIP, routerInside, origSrc)
	}
	if !bytes.Equal(d.eth.DstMAC, origSrcMAC) || !bytes.Equal(d.eth.SrcMAC, origDstMAC) {
		t.Errorf("MACs %s -> %s: want the frame sent back", d.eth.SrcMAC, d.eth.DstMAC)
	}
	if quote := d.icmp.Payload; !bytes.Equal(quote, orig[14:14+28]) {
		t.Errorf("quote\n%s want\n%s", dump(quote), dump(orig[14:14+28]))
	}
	if len(out) != 14+20+8+28 {
		t.Errorf("frame of %d bytes, want 70", len(out))
	}
}

// TestHairpin: subscriber 2 reaches subscriber 3 through 3's public
// address and port; 3 sees 2's public address and port (RFC 4787 REQ-9).
func TestHairpin(t *testing.T) {
	f := defaultFixture(t)
	for _, proto := range []layers.IPProtocol{layers.IPProtocolUDP, layers.IPProtocolTCP} {
		f.reset()
		server := mapOut(pkt{proto: proto, src: "100.64.0.3:3000", dst: "203.0.113.9:3478", tcpFlags: "S"})(f)
		in := pkt{proto: proto, src: sub2 + ":41000", dst: server.String(), tcpFlags: "S", payload: []byte("hi")}.build(t)
		act, out := f.outbound(in)
		if act != xdpRedirect {
			t.Fatalf("%v hairpin: %s%s", proto, actionNames[act], dump(in))
		}
		d := decode(t, out)
		if d.dst() != netip.MustParseAddrPort("100.64.0.3:3000") {
			t.Errorf("%v hairpin delivered to %s, want 100.64.0.3:3000", proto, d.dst())
		}
		block, _ := f.m.Forward(netip.MustParseAddr(sub2))
		if src := d.src(); src.Addr() != block.Public || src.Port() < block.PortLo || src.Port() > block.PortHi {
			t.Errorf("%v receiver sees %s, want subscriber 2's public endpoint in %+v", proto, src, block)
		}
		if !bytes.Equal(d.eth.DstMAC, macSub3) || d.ip.TTL != 63 {
			t.Errorf("%v hairpin: next hop %s TTL %d", proto, d.eth.DstMAC, d.ip.TTL)
		}
		if got := f.stats()["hairpin"]; got != 1 {
			t.Errorf("hairpin counter %d", got)
		}
		// A pool port nobody holds is dropped.
		unused := netip.AddrPortFrom(server.Addr(), server.Port()^1)
		if act, _ := f.outbound(pkt{proto: proto, src: sub2 + ":41001", dst: unused.String(), tcpFlags: "S"}.build(t)); act != xdpDrop {
			t.Errorf("%v hairpin to an unmapped port: %s", proto, actionNames[act])
		}
	}
}

// icmpError builds an ICMP error from `from` to the public endpoint of a
// mapped packet, quoting the packet as the NAT sent it.
func icmpError(t testing.TB, from string, tc layers.ICMPv4TypeCode, translated []byte, quoteLen int) []byte {
	t.Helper()
	quote := translated[14 : 14+quoteLen]
	dst := netip.AddrFrom4([4]byte(translated[26:30]))
	ip := &layers.IPv4{Version: 4, TTL: 64, Protocol: layers.IPProtocolICMPv4, SrcIP: netip.MustParseAddr(from).AsSlice(), DstIP: dst.AsSlice()}
	buf := gopacket.NewSerializeBuffer()
	err := gopacket.SerializeLayers(buf, gopacket.SerializeOptions{FixLengths: true, ComputeChecksums: true},
		&layers.Ethernet{SrcMAC: macUpstream, DstMAC: macSender, EthernetType: layers.EthernetTypeIPv4}, ip,
		&layers.ICMPv4{TypeCode: tc}, gopacket.Payload(quote))
	if err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// TestICMPErrorsIn: errors about mapped flows reach the subscriber with
// the outer and the quoted headers translated and every checksum right
// (RFC 5508); errors about nothing, or with a forged quote, are dropped.
func TestICMPErrorsIn(t *testing.T) {
	f := defaultFixture(t)
	type tcase struct {
		name     string
		orig     pkt
		from     string
		tc       layers.ICMPv4TypeCode
		quoteLen int
	}
	portUnreach := layers.CreateICMPv4TypeCode(layers.ICMPv4TypeDestinationUnreachable, layers.ICMPv4CodePort)
	timeExceeded := layers.CreateICMPv4TypeCode(layers.ICMPv4TypeTimeExceeded, 0)
	fragNeeded := layers.CreateICMPv4TypeCode(layers.ICMPv4TypeDestinationUnreachable, layers.ICMPv4CodeFragmentationNeeded)
	for _, c := range []tcase{
		{"udp port unreachable", udpOut(sub2+":40000", server+":7000"), server, portUnreach, 28 + 14},
		{"udp time exceeded from a router", udpOut(sub2+":40000", server+":7000"), "192.0.2.2", timeExceeded, 28},
		{"tcp frag needed, 8 bytes quoted", pkt{proto: layers.IPProtocolTCP, src: sub2 + ":40001", dst: server + ":443", tcpFlags: "A"}, "192.0.2.2", fragNeeded, 28},
		{"tcp frag needed, whole header quoted", pkt{proto: layers.IPProtocolTCP, src: sub2 + ":40001", dst: server + ":443", tcpFlags: "A"}, "192.0.2.2", fragNeeded, 40},
		{"echo time exceeded", pkt{proto: layers.IPProtocolICMPv4, src: sub2 + ":777", dst: server + ":0", icmpType: layers.ICMPv4TypeEchoRequest}, "192.0.2.2", timeExceeded, 28},
	} {
		t.Run(c.name, func(t *testing.T) {
			f.t = t
			f.reset()
			inFrame := c.orig.build(t)
			act, translated := f.outbound(inFrame)
			if act != xdpRedirect {
				t.Fatalf("setup: %s", actionNames[act])
			}
			errFrame := icmpError(t, c.from, c.tc, translated, c.quoteLen)
			act, out := f.inbound(errFrame)
			if act != xdpRedirect {
				t.Fatalf("error: %s%s", actionNames[act], dump(errFrame))
			}
			d := decode(t, out)
			if d.ip.DstIP.String() != sub2 || !bytes.Equal(d.eth.DstMAC, macSub2) {
				t.Errorf("error delivered to %s via %s, want %s", d.ip.DstIP, d.eth.DstMAC, sub2)
			}
			quote := d.icmp.Payload
			// The quote now reads as the subscriber sent it, checksums
			// included where the quote holds them.
			wantQuote := append([]byte{}, inFrame[14:14+c.quoteLen]...)
			wantQuote[8] = translated[14+8] // the TTL the NAT forwarded with
			fixIPChecksum(wantQuote[:20])
			if !bytes.Equal(quote, wantQuote) {
				t.Errorf("quote\n%swant\n%s", dump(quote), dump(wantQuote))
			}
			if got := f.stats()["icmp_errors_in"]; got != 1 {
				t.Errorf("icmp_errors_in = %d", got)
			}
		})
	}

	t.Run("no mapping", func(t *testing.T) {
		f.t = t
		f.reset()
		translated := udpOut("198.51.100.10:2100", server+":7000").build(t)
		act, _ := f.inbound(icmpError(t, server, portUnreach, translated, 28))
		if act != xdpDrop || f.stats()["drop_icmp_error"] != 1 {
			t.Errorf("%s, drop_icmp_error %d", actionNames[act], f.stats()["drop_icmp_error"])
		}
	})
	t.Run("quote not from the outer destination", func(t *testing.T) {
		f.t = t
		f.reset()
		_, translated := f.outbound(udpOut(sub2+":40000", server+":7000").build(t))
		forged := icmpError(t, server, portUnreach, translated, 28)
		copy(forged[30:34], []byte{198, 51, 100, 11}) // outer destination: the other pool address
		fixIPChecksum(forged[14:34])
		act, _ := f.inbound(forged)
		if act != xdpDrop || f.stats()["drop_icmp_error"] != 1 {
			t.Errorf("%s, drop_icmp_error %d", actionNames[act], f.stats()["drop_icmp_error"])
		}
	})
}

func fixIPChecksum(hdr []byte) {
	hdr[10], hdr[11] = 0, 0
	c := checksum(hdr, 10, nil)
	hdr[10], hdr[11] = byte(c>>8), byte(c)
}

// TestFragments: outbound, every fragment of an active subscriber gets its
// public address, in any order; inbound, later fragments follow their first.
func TestFragments(t *testing.T) {
	f := defaultFixture(t)
	block, _ := f.m.Forward(netip.MustParseAddr(sub2))
	mapOut(udpOut(sub2+":39999", server+":7000"))(f) // the block is active

	// Outbound, the later fragment first.
	later := pkt{proto: layers.IPProtocolUDP, src: sub2 + ":40000", dst: server + ":7000", fragOffset: 185, raw: true}.build(t)
	act, out := f.outbound(later)
	if act != xdpRedirect {
		t.Fatalf("later fragment out: %s", actionNames[act])
	}
	if d := decode(t, out); d.ip.SrcIP.String() != block.Public.String() || d.ip.FragOffset != 185 {
		t.Errorf("later fragment from %s offset %d, want %s", d.ip.SrcIP, d.ip.FragOffset, block.Public)
	}
	first := pkt{proto: layers.IPProtocolUDP, src: sub2 + ":40000", dst: server + ":7000", flags: layers.IPv4MoreFragments, payload: make([]byte, 64)}.build(t)
	act, out = f.outbound(first)
	if act != xdpRedirect {
		t.Fatalf("first fragment out: %s", actionNames[act])
	}
	// gopacket does not decode the L4 header of a fragment: read the port.
	mapped := netip.AddrPortFrom(netip.AddrFrom4([4]byte(out[26:30])), uint16(out[34])<<8|uint16(out[35]))
	if mapped.Addr() != block.Public {
		t.Errorf("first fragment from %s", mapped)
	}

	// Inbound: first, then later.
	firstIn := pkt{proto: layers.IPProtocolUDP, src: server + ":7000", dst: mapped.String(), flags: layers.IPv4MoreFragments,
		payload: make([]byte, 64), srcMAC: macUpstream}.build(t)
	if act, out := f.inbound(firstIn); act != xdpRedirect || netip.AddrFrom4([4]byte(out[30:34])).String() != sub2 || out[36] != 40000>>8 || out[37] != 40000&0xff {
		t.Fatalf("first fragment in: %s%s", actionNames[act], dump(out))
	}
	laterIn := pkt{proto: layers.IPProtocolUDP, src: server + ":7000", dst: mapped.String(), fragOffset: 9, raw: true}.build(t)
	act, out = f.inbound(laterIn)
	if act != xdpRedirect {
		t.Fatalf("later fragment in: %s", actionNames[act])
	}
	if d := decode(t, out); d.ip.DstIP.String() != sub2 || !bytes.Equal(d.eth.DstMAC, macSub2) {
		t.Errorf("later fragment to %s", d.ip.DstIP)
	}
	// Another datagram (other IP ID) has no state: dropped, not misdelivered.
	other := append([]byte{}, laterIn...)
	other[18], other[19] = 0x77, 0x77
	fixIPChecksum(other[14:34])
	if act, _ := f.inbound(other); act != xdpDrop {
		t.Errorf("unknown datagram's fragment: %s", actionNames[act])
	}
}

// TestAddressAndPortDependentFiltering: with APDF, only endpoints the
// mapping sent to may answer; with EIF (the default fixture) anyone may.
func TestAddressAndPortDependentFiltering(t *testing.T) {
	f := fixtureWith(t, func(p *Params) { p.FilterAPDF = true })
	mapped := mapOut(udpOut(sub2+":40000", server+":3478"))(f)
	for _, c := range []struct {
		from string
		want uint32
	}{{server + ":3478", xdpRedirect}, {server + ":3479", xdpDrop}, {"203.0.113.2:3478", xdpDrop}} {
		in := pkt{proto: layers.IPProtocolUDP, src: c.from, dst: mapped.String(), payload: []byte("x")}.build(t)
		if act, _ := f.inbound(in); act != c.want {
			t.Errorf("APDF: from %s: %s, want %s", c.from, actionNames[act], actionNames[c.want])
		}
	}
	if f.stats()["drop_filtered"] != 2 {
		t.Errorf("drop_filtered = %d, want 2", f.stats()["drop_filtered"])
	}

	eif := defaultFixture(t)
	mapped = mapOut(udpOut(sub2+":40000", server+":3478"))(eif)
	in := pkt{proto: layers.IPProtocolUDP, src: "203.0.113.2:9999", dst: mapped.String(), payload: []byte("x")}.build(t)
	if act, _ := eif.inbound(in); act != xdpRedirect {
		t.Errorf("EIF: from an endpoint never sent to: %s, want XDP_REDIRECT", actionNames[act])
	}
}

// TestInboundRefreshAndClose: inbound UDP does not refresh the mapping by
// default; an inbound RST marks a TCP mapping closing.
func TestInboundRefreshAndClose(t *testing.T) {
	f := defaultFixture(t)
	if inboundRefreshesUDP(t, f) {
		t.Error("inbound UDP refreshed the mapping")
	}

	key := FlowKey{Addr: be32(netip.MustParseAddr(sub2)), Port: htons(40000), Proto: ProtoUDP}
	var v FlowFwd
	tcp := pkt{proto: layers.IPProtocolTCP, src: sub2 + ":40001", dst: server + ":443", tcpFlags: "A"}
	mapped := mapOut(tcp)(f)
	rst := reply(tcp)
	frame := rst(f, mapped)
	frame[14+20+13] = 0x04 // RST
	fixTCPChecksum(t, frame)
	if act, _ := f.inbound(frame); act != xdpRedirect {
		t.Fatal(actionNames[act])
	}
	tkey := FlowKey{Addr: key.Addr, Port: htons(40001), Proto: ProtoTCP}
	if err := f.nat.objs.FlowsFwd.Lookup(&tkey, &v); err != nil || v.State != FlowStateTCPClosing {
		t.Errorf("after an inbound RST the state is %d, want closing", v.State)
	}
	_ = ebpf.UpdateAny
}

func fixTCPChecksum(t *testing.T, frame []byte) {
	t.Helper()
	seg := frame[34:]
	pseudo := append(append([]byte{}, frame[26:34]...), 0, 6, byte(len(seg)>>8), byte(len(seg)))
	c := checksum(seg, 16, pseudo)
	seg[16], seg[17] = byte(c>>8), byte(c)
}

// fixtureWith loads the default mapping with options set.
func fixtureWith(t *testing.T, set func(*Params)) *natFixture {
	t.Helper()
	ns := newTestNS(t)
	m, err := mapping.New(prefixesOf(t, []string{"100.64.0.0/24"}), prefixesOf(t, []string{"198.51.100.10/31"}), 1024, 65535, 0)
	if err != nil {
		t.Fatal(err)
	}
	p := Params{Mapping: m, Epoch: 1}
	set(&p)
	nat, err := Load(p, "")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { nat.Close() })
	ns.do(t, func() {
		for ifn, role := range map[string]Role{"in0": RoleInside, "out0": RoleOutside} {
			if err := nat.register(ns.ifs[ifn], role); err != nil {
				t.Fatal(err)
			}
		}
	})
	return &natFixture{t: t, ns: ns, nat: nat, m: m}
}

// TestUDPInboundRefreshOption: with timeouts.udp_inbound_refresh, an
// inbound datagram keeps the mapping alive.
func TestUDPInboundRefreshOption(t *testing.T) {
	f := fixtureWith(t, func(p *Params) { p.UDPInboundRefresh = true })
	if !inboundRefreshesUDP(t, f) {
		t.Error("inbound UDP did not refresh the mapping")
	}
}

// inboundRefreshesUDP maps a UDP flow, ages its last-seen time, sends a
// reply in, and reports whether the reply refreshed the mapping.
func inboundRefreshesUDP(t *testing.T, f *natFixture) bool {
	t.Helper()
	udp := udpOut(sub2+":40000", server+":7000")
	mapped := mapOut(udp)(f)
	key := FlowKey{Addr: be32(netip.MustParseAddr(sub2)), Port: htons(40000), Proto: ProtoUDP}
	var v FlowFwd
	if err := f.nat.objs.FlowsFwd.Lookup(&key, &v); err != nil {
		t.Fatal(err)
	}
	v.LastSeen = 1
	if err := f.nat.objs.FlowsFwd.Put(&key, &v); err != nil {
		t.Fatal(err)
	}
	if act, _ := f.inbound(reply(udp)(f, mapped)); act != xdpRedirect {
		t.Fatal(actionNames[act])
	}
	if err := f.nat.objs.FlowsFwd.Lookup(&key, &v); err != nil {
		t.Fatal(err)
	}
	return v.LastSeen > 1
}

// TestFragmentStateBoundedAndExpiring: the fragment table holds at most
// its size however many datagrams arrive, and a first fragment's state
// stops serving later fragments after the timeout.
func TestFragmentStateBoundedAndExpiring(t *testing.T) {
	f := defaultFixture(t)
	_, out := f.outbound(pkt{proto: layers.IPProtocolUDP, src: sub2 + ":40000", dst: server + ":7000", flags: layers.IPv4MoreFragments, payload: make([]byte, 64)}.build(t))
	mapped := netip.AddrPortFrom(netip.AddrFrom4([4]byte(out[26:30])), uint16(out[34])<<8|uint16(out[35]))
	first := pkt{proto: layers.IPProtocolUDP, src: server + ":7000", dst: mapped.String(), flags: layers.IPv4MoreFragments, payload: make([]byte, 64)}.build(t)
	size := int(f.nat.objs.Frags.MaxEntries())
	for id := 0; id < size+1000; id++ {
		frame := append([]byte{}, first...)
		frame[18], frame[19] = byte(id>>8), byte(id)
		fixIPChecksum(frame[14:34])
		if act, _ := f.inbound(frame); act != xdpRedirect {
			t.Fatalf("first fragment %d: %s", id, actionNames[act])
		}
	}
	n := 0
	var k FragKey
	var v FragVal
	for it := f.nat.objs.Frags.Iterate(); it.Next(&k, &v); {
		n++
	}
	if n > size {
		t.Errorf("fragment table holds %d entries, more than its %d", n, size)
	}
	// Age the newest datagram's state past the timeout.
	last := size + 999
	key := FragKey{Saddr: be32(netip.MustParseAddr(server)), Daddr: be32(mapped.Addr()), Id: htons(uint16(last)), Proto: ProtoUDP}
	if err := f.nat.objs.Frags.Lookup(&key, &v); err != nil {
		t.Fatalf("newest fragment state: %v", err)
	}
	v.SeenNs = 1
	if err := f.nat.objs.Frags.Put(&key, &v); err != nil {
		t.Fatal(err)
	}
	later := pkt{proto: layers.IPProtocolUDP, src: server + ":7000", dst: mapped.String(), fragOffset: 9, raw: true}.build(t)
	later[18], later[19] = byte(last>>8), byte(last)
	fixIPChecksum(later[14:34])
	if act, _ := f.inbound(later); act != xdpDrop {
		t.Errorf("later fragment after its state expired: %s, want XDP_DROP", actionNames[act])
	}
}

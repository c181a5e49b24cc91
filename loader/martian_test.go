package loader

import (
	"net/netip"
	"testing"

	"github.com/google/gopacket/layers"
)

// martianFixture has a second inside prefix, 100.64.1.0/24, that no route
// of the test namespace leads to: its addresses have no subscriber link,
// so the default route would send them upstream.
func martianFixture(t *testing.T) *natFixture {
	return newFixture(t, []string{"100.64.0.0/24", "100.64.1.0/24"}, []string{"198.51.100.10/31"}, 1024, 65535, 0)
}

// TestMartiansTable: packets that cannot belong (RFC 1812 5.3.7, RFC 6890)
// are dropped and counted by name in both directions, before any
// translation, and create no mapping; the router's own services and
// legitimate neighbours of the martian classes still pass.
func TestMartiansTable(t *testing.T) {
	f := martianFixture(t)
	sub2UDP := udpOut(sub2+":40000", server+":7000")
	var cases []natCase
	out := func(name, dst, stat string, action uint32) {
		cases = append(cases, natCase{name: "out " + name, frame: frameOf(udpOut(sub2+":40000", dst)), outbound: true,
			wantAction: action, wantStat: stat, check: map[bool]func(*testing.T, *natFixture, []byte, []byte){true: translatedOut(false)}[stat == "out_packets"],
			wantFlows: map[bool]int{true: 1}[stat == "out_packets"]})
	}
	out("to 0.0.0.0", "0.0.0.0:9", "drop_martian_dst", xdpDrop)
	out("to 0.1.2.3", "0.1.2.3:9", "drop_martian_dst", xdpDrop)
	out("to loopback", "127.0.0.1:53", "drop_martian_dst", xdpDrop)
	out("to 127.255.255.254", "127.255.255.254:53", "drop_martian_dst", xdpDrop)
	out("to 240/4", "240.0.0.1:9", "drop_martian_dst", xdpDrop)
	out("to 255.255.255.254", "255.255.255.254:9", "drop_martian_dst", xdpDrop)
	out("to an inside address routed upstream", "100.64.1.9:9", "drop_martian_dst", xdpDrop)
	// Not martians: the kernel's, or ordinary.
	out("to 255.255.255.255 (DHCP)", "255.255.255.255:67", "pass_local_service", xdpPass)
	out("to a multicast group", "239.1.2.3:9", "pass_local_service", xdpPass)
	out("to another subscriber's inside address on an inside link", "100.64.0.3:9", "pass_not_nat", xdpPass)
	out("to 223.255.255.254", "223.255.255.254:9", "out_packets", xdpRedirect)
	out("to 1.0.0.1", "1.0.0.1:9", "out_packets", xdpRedirect)
	cases = append(cases, natCase{name: "out later fragment to 240/4", outbound: true, wantAction: xdpDrop, wantStat: "drop_martian_dst",
		frame: frameOf(pkt{proto: layers.IPProtocolUDP, src: sub2 + ":40000", dst: "240.1.2.3:9", fragOffset: 100, raw: true})})

	in := func(name, src, stat string, action uint32, fragment bool) {
		cases = append(cases, natCase{name: "in " + name, setup: mapOut(sub2UDP), wantAction: action, wantStat: stat, wantFlows: 1,
			frame: func(f *natFixture, mapped netip.AddrPort) []byte {
				p := pkt{proto: layers.IPProtocolUDP, src: src, dst: mapped.String(), payload: []byte("martian?"), srcMAC: macUpstream}
				if fragment {
					p.fragOffset, p.raw = 9, true
				}
				return p.build(f.t)
			},
			check: map[bool]func(*testing.T, *natFixture, []byte, []byte){true: translatedIn(netip.MustParseAddrPort(sub2+":40000"), false)}[stat == "in_packets"]})
	}
	for _, c := range []struct{ name, src string }{
		{"from loopback", "127.0.0.1:7000"},
		{"from 127.1.2.3", "127.1.2.3:7000"},
		{"from 0.0.0.0", "0.0.0.0:7000"},
		{"from 0.1.2.3", "0.1.2.3:7000"},
		{"from a link-local multicast group", "224.0.0.5:7000"},
		{"from a multicast group", "239.255.255.250:7000"},
		{"from 240/4", "240.0.0.1:7000"},
		{"from 255.255.255.255", "255.255.255.255:7000"},
		{"from the pool address itself", "198.51.100.10:7000"},
		{"from another pool address", "198.51.100.11:7000"},
		{"from a subscriber's inside address", "100.64.0.3:7000"},
		{"from an inside address with no subscriber link", "100.64.1.9:7000"},
	} {
		in(c.name, c.src, "drop_martian_src", xdpDrop, false)
	}
	in("later fragment from loopback", "127.0.0.1:7000", "drop_martian_src", xdpDrop, true)
	in("from the server", server+":7000", "in_packets", xdpRedirect, false)
	in("from 223.255.255.254", "223.255.255.254:7000", "in_packets", xdpRedirect, false)
	cases = append(cases, natCase{name: "in ICMP error from loopback", setup: mapOut(sub2UDP), wantAction: xdpDrop, wantStat: "drop_martian_src", wantFlows: 1,
		frame: func(f *natFixture, mapped netip.AddrPort) []byte {
			_, translated := f.outbound(sub2UDP.build(f.t))
			return icmpError(f.t, "127.0.0.1", layers.CreateICMPv4TypeCode(3, 3), translated, 28)
		}})

	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			st := f.runCase(t, tc)
			if tc.wantAction == xdpDrop {
				names := []string{"out_packets", "new_flows", "block_activations", "fragments"}
				if !tc.outbound {
					names = []string{"in_packets", "icmp_errors_in", "fragments"}
				}
				for _, name := range names {
					if st[name] != 0 {
						t.Errorf("%s = %d for a dropped martian", name, st[name])
					}
				}
			}
		})
	}
}

// TestLaterFragmentNeedsActiveBlock: a later fragment (no L4 header, so no
// mapping to make) from a subscriber whose block is idle is dropped and
// counted, so nothing leaves under a public address that no record names;
// once the subscriber has a mapping, the same fragment is translated.
func TestLaterFragmentNeedsActiveBlock(t *testing.T) {
	f := defaultFixture(t)
	later := pkt{proto: layers.IPProtocolUDP, src: sub2 + ":40000", dst: server + ":7000", fragOffset: 185, raw: true}
	f.runCase(t, natCase{name: "idle", frame: frameOf(later), outbound: true, wantAction: xdpDrop, wantStat: "drop_fragment_inactive"})
	if n := f.activeSubscribers(); n != 0 {
		t.Fatalf("%d active subscribers after an idle subscriber's fragment", n)
	}
	f.runCase(t, natCase{name: "active", setup: mapOut(udpOut(sub2+":40000", server+":7000")), frame: frameOf(later), outbound: true,
		wantAction: xdpRedirect, wantStat: "fragments", wantFlows: 1, check: func(t *testing.T, f *natFixture, in, out []byte) {
			block, _ := f.m.Forward(netip.MustParseAddr(sub2))
			if d := decode(t, out); d.ip.SrcIP.String() != block.Public.String() {
				t.Errorf("later fragment from %s, want %s", d.ip.SrcIP, block.Public)
			}
		}})
	// Another subscriber's active block does not cover this one.
	f.runCase(t, natCase{name: "neighbour active", setup: mapOut(udpOut("100.64.0.3:40000", server+":7000")), frame: frameOf(later), outbound: true,
		wantAction: xdpDrop, wantStat: "drop_fragment_inactive", wantFlows: 1})
}

// TestAPDFICMPErrors: under address-and-port-dependent filtering, an ICMP
// error reaches the subscriber only when it is about a remote the mapping
// sent to (its quoted destination); it may come from any router on the
// path. Under endpoint-independent filtering every error about a mapping
// is delivered.
func TestAPDFICMPErrors(t *testing.T) {
	apdf := fixtureWith(t, func(p *Params) { p.FilterAPDF = true })
	eif := defaultFixture(t)
	unreach := layers.CreateICMPv4TypeCode(layers.ICMPv4TypeDestinationUnreachable, layers.ICMPv4CodePort)
	timeExceeded := layers.CreateICMPv4TypeCode(layers.ICMPv4TypeTimeExceeded, 0)
	udp := udpOut(sub2+":40000", server+":7000")
	tcp := pkt{proto: layers.IPProtocolTCP, src: sub2 + ":40001", dst: server + ":443", tcpFlags: "S"}
	ping := pkt{proto: layers.IPProtocolICMPv4, src: sub2 + ":777", dst: server + ":0", icmpType: layers.ICMPv4TypeEchoRequest}
	// quoteTo rewrites the translated packet's destination, as if the
	// mapping had sent to addr:port instead.
	quoteTo := func(translated []byte, addr string, port int) []byte {
		q := append([]byte{}, translated...)
		a := netip.MustParseAddr(addr).As4()
		copy(q[30:34], a[:])
		if port >= 0 {
			q[36], q[37] = byte(port>>8), byte(port)
		}
		fixIPChecksum(q[14:34])
		return q
	}
	for _, c := range []struct {
		name      string
		orig      pkt
		from      string
		tc        layers.ICMPv4TypeCode
		addr      string
		port      int // -1: leave the quoted destination port
		wantAPDF  uint32
		statAPDF  string
		wantEIF   uint32
		quoteSize int
	}{
		{"udp: from the remote itself", udp, server, unreach, server, -1, xdpRedirect, "icmp_errors_in", xdpRedirect, 28},
		{"udp: from a router, about the remote", udp, "192.0.2.2", timeExceeded, server, -1, xdpRedirect, "icmp_errors_in", xdpRedirect, 28},
		{"udp: about a remote never sent to", udp, "192.0.2.2", unreach, "203.0.113.77", -1, xdpDrop, "drop_filtered", xdpRedirect, 28},
		{"udp: about another port of the remote", udp, server, unreach, server, 7001, xdpDrop, "drop_filtered", xdpRedirect, 28},
		{"tcp: about the remote", tcp, "192.0.2.2", unreach, server, -1, xdpRedirect, "icmp_errors_in", xdpRedirect, 40},
		{"tcp: about a remote never sent to", tcp, "192.0.2.2", unreach, "203.0.113.77", -1, xdpDrop, "drop_filtered", xdpRedirect, 40},
		{"echo: about the remote", ping, "192.0.2.2", timeExceeded, server, -1, xdpRedirect, "icmp_errors_in", xdpRedirect, 28},
		{"echo: about a remote never pinged", ping, "192.0.2.2", timeExceeded, "203.0.113.77", -1, xdpDrop, "drop_filtered", xdpRedirect, 28},
	} {
		for _, fx := range []struct {
			name string
			f    *natFixture
			want uint32
			stat string
		}{{"apdf", apdf, c.wantAPDF, c.statAPDF}, {"eif", eif, c.wantEIF, "icmp_errors_in"}} {
			t.Run(fx.name+" "+c.name, func(t *testing.T) {
				f := fx.f
				f.runCase(t, natCase{outbound: false, wantAction: fx.want, wantStat: fx.stat, wantFlows: 1,
					setup: func(f *natFixture) netip.AddrPort { return mapOut(c.orig)(f) },
					frame: func(f *natFixture, _ netip.AddrPort) []byte {
						_, translated := f.outbound(c.orig.build(f.t))
						return icmpError(f.t, c.from, c.tc, quoteTo(translated, c.addr, c.port), c.quoteSize)
					},
					check: func(t *testing.T, f *natFixture, in, out []byte) {
						if fx.want == xdpRedirect {
							if d := decode(t, out); d.ip.DstIP.String() != sub2 {
								t.Errorf("error delivered to %s", d.ip.DstIP)
							}
						}
					}})
			})
		}
	}
}

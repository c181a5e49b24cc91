package loader

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"net/netip"
	"os/exec"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/ringbuf"
	"github.com/google/gopacket"
	"github.com/google/gopacket/layers"
)

const (
	xdpAborted  = 0
	xdpDrop     = 1
	xdpPass     = 2
	xdpTX       = 3
	xdpRedirect = 4
)

var actionNames = map[uint32]string{0: "XDP_ABORTED", 1: "XDP_DROP", 2: "XDP_PASS", 3: "XDP_TX", 4: "XDP_REDIRECT"}

// The default fixture: 100.64.0.0/24 over 198.51.100.10/31, ports
// 1024-65535: 256 subscribers, 128 per address, 504 ports per block.
func defaultFixture(t testing.TB) *natFixture {
	return newFixture(t, []string{"100.64.0.0/24"}, []string{"198.51.100.10/31"}, 1024, 65535, 0)
}

const (
	sub2   = "100.64.0.2"
	server = "203.0.113.1"
)

type natCase struct {
	name string
	// setup runs first (for example to create the mapping a reply needs);
	// what it returns is handed to frame.
	setup      func(f *natFixture) netip.AddrPort
	outbound   bool // inside program on in0, else outside program on out0
	frame      func(f *natFixture, mapped netip.AddrPort) []byte
	wantAction uint32
	// wantStat must read exactly 1 after the case; "" skips.
	wantStat string
	// check examines the frame the program left; nil means "unchanged".
	check func(t *testing.T, f *natFixture, in, out []byte)
	// wantFlows is the number of mappings after the case.
	wantFlows int
}

func udpOut(src, dst string) pkt {
	return pkt{proto: layers.IPProtocolUDP, src: src, dst: dst, payload: []byte("hello blocknat")}
}

func frameOf(p pkt) func(*natFixture, netip.AddrPort) []byte {
	return func(f *natFixture, _ netip.AddrPort) []byte { return p.build(f.t) }
}

// mapOut creates a mapping by sending p outbound and returns the public
// endpoint it got.
func mapOut(p pkt) func(f *natFixture) netip.AddrPort {
	return func(f *natFixture) netip.AddrPort {
		f.t.Helper()
		act, out := f.outbound(p.build(f.t))
		if act != xdpRedirect {
			f.t.Fatalf("setup: outbound verdict %s, want XDP_REDIRECT", actionNames[act])
		}
		return decode(f.t, out).src()
	}
}

// reply builds the answer to p as it arrives from the internet at the
// public endpoint p was mapped to.
func reply(p pkt) func(*natFixture, netip.AddrPort) []byte {
	return func(f *natFixture, mapped netip.AddrPort) []byte {
		r := p
		r.src, r.dst = p.dst, mapped.String()
		if p.proto == layers.IPProtocolICMPv4 {
			r.icmpType = layers.ICMPv4TypeEchoReply
			// The id travels in the destination slot of a reply.
			r.dst = mapped.String()
		}
		r.srcMAC, r.dstMAC = macUpstream, nil
		r.payload = []byte("reply")
		return r.build(f.t)
	}
}

// translatedOut checks an outbound translation against the deterministic
// block of the sender, everything else left as the kernel would forward it.
func translatedOut(zeroUDP bool) func(t *testing.T, f *natFixture, in, out []byte) {
	return func(t *testing.T, f *natFixture, in, out []byte) {
		t.Helper()
		din, dout := decodeUDP0(t, in, zeroUDP), decodeUDP0(t, out, zeroUDP)
		block, err := f.m.Forward(din.src().Addr())
		if err != nil {
			t.Fatal(err)
		}
		src := dout.src()
		if src.Addr() != block.Public || src.Port() < block.PortLo || src.Port() > block.PortHi {
			t.Errorf("translated source %s, want %s port %d-%d%s", src, block.Public, block.PortLo, block.PortHi, dump(out))
		}
		if dout.dst() != din.dst() {
			t.Errorf("destination changed: %s -> %s", din.dst(), dout.dst())
		}
		checkForwarded(t, f, din, dout, "out0", macUpstream)
	}
}

func translatedIn(want netip.AddrPort, zeroUDP bool) func(t *testing.T, f *natFixture, in, out []byte) {
	return func(t *testing.T, f *natFixture, in, out []byte) {
		t.Helper()
		din, dout := decodeUDP0(t, in, zeroUDP), decodeUDP0(t, out, zeroUDP)
		if dout.dst() != want {
			t.Errorf("translated destination %s, want %s%s", dout.dst(), want, dump(out))
		}
		if dout.src() != din.src() {
			t.Errorf("source changed: %s -> %s", din.src(), dout.src())
		}
		checkForwarded(t, f, din, dout, "in0", macSub2)
	}
}

func checkForwarded(t *testing.T, f *natFixture, din, dout decoded, egress string, nextHop []byte) {
	t.Helper()
	if dout.ip.TTL != din.ip.TTL-1 {
		t.Errorf("TTL %d, want %d", dout.ip.TTL, din.ip.TTL-1)
	}
	if !bytes.Equal(dout.eth.DstMAC, nextHop) || !bytes.Equal(dout.eth.SrcMAC, f.ns.macs[egress]) {
		t.Errorf("MACs %s -> %s, want %s -> %s", dout.eth.SrcMAC, dout.eth.DstMAC, f.ns.macs[egress], nextHop)
	}
	if !bytes.Equal(din.ip.Payload[l4HeaderLen(din):], dout.ip.Payload[l4HeaderLen(dout):]) {
		t.Errorf("payload changed")
	}
	if fmt.Sprint(din.ip.Options) != fmt.Sprint(dout.ip.Options) {
		t.Errorf("IP options changed: %v -> %v", din.ip.Options, dout.ip.Options)
	}
}

func l4HeaderLen(d decoded) int {
	switch {
	case d.tcp != nil:
		return int(d.tcp.DataOffset) * 4
	case d.udp != nil, d.icmp != nil:
		return 8
	}
	return 0
}

func TestNATTable(t *testing.T) {
	f := defaultFixture(t)
	sub2UDP := udpOut(sub2+":40000", server+":7000")
	sub2TCP := pkt{proto: layers.IPProtocolTCP, src: sub2 + ":40001", dst: server + ":443", tcpFlags: "S"}
	sub2Ping := pkt{proto: layers.IPProtocolICMPv4, src: sub2 + ":777", dst: server + ":0", icmpType: layers.ICMPv4TypeEchoRequest, payload: []byte("ping")}
	withOptions := sub2UDP
	withOptions.options = []layers.IPv4Option{{OptionType: 7, OptionLength: 7, OptionData: []byte{4, 0, 0, 0, 0}}, {OptionType: 1}}
	zeroCsum := sub2UDP
	zeroCsum.zeroUDPChecksum = true

	cases := []natCase{
		{name: "udp out", frame: frameOf(sub2UDP), outbound: true, wantAction: xdpRedirect, wantStat: "out_packets", check: translatedOut(false), wantFlows: 1},
		{name: "tcp syn out", frame: frameOf(sub2TCP), outbound: true, wantAction: xdpRedirect, wantStat: "new_flows", check: translatedOut(false), wantFlows: 1},
		{name: "icmp echo out", frame: frameOf(sub2Ping), outbound: true, wantAction: xdpRedirect, wantStat: "block_activations", check: translatedOut(false), wantFlows: 1},
		{name: "ip options out", frame: frameOf(withOptions), outbound: true, wantAction: xdpRedirect, check: translatedOut(false), wantFlows: 1},
		{name: "udp zero checksum out", frame: frameOf(zeroCsum), outbound: true, wantAction: xdpRedirect, check: translatedOut(true), wantFlows: 1},
		{name: "udp in", setup: mapOut(sub2UDP), frame: reply(sub2UDP), wantAction: xdpRedirect, wantStat: "in_packets",
			check: translatedIn(netip.MustParseAddrPort(sub2+":40000"), false), wantFlows: 1},
		{name: "tcp in", setup: mapOut(sub2TCP), frame: reply(sub2TCP), wantAction: xdpRedirect, wantStat: "in_packets",
			check: translatedIn(netip.MustParseAddrPort(sub2+":40001"), false), wantFlows: 1},
		{name: "icmp echo reply in", setup: mapOut(sub2Ping), frame: reply(sub2Ping), wantAction: xdpRedirect, wantStat: "in_packets",
			check: translatedIn(netip.MustParseAddrPort(sub2+":777"), false), wantFlows: 1},
		{name: "udp zero checksum in", setup: mapOut(sub2UDP), frame: func(f *natFixture, m netip.AddrPort) []byte {
			p := sub2UDP
			p.zeroUDPChecksum = true
			return reply(p)(f, m)
		}, wantAction: xdpRedirect, check: translatedIn(netip.MustParseAddrPort(sub2+":40000"), true), wantFlows: 1},
		{name: "in to unmapped port", frame: frameOf(pkt{proto: layers.IPProtocolUDP, src: server + ":7000", dst: "198.51.100.10:2040", srcMAC: macUpstream}),
			wantAction: xdpDrop, wantStat: "drop_no_mapping"},
		{name: "in to unmapped port of a mapped subscriber", setup: mapOut(sub2UDP), frame: func(f *natFixture, m netip.AddrPort) []byte {
			p := pkt{proto: layers.IPProtocolUDP, src: server + ":7000", dst: netip.AddrPortFrom(m.Addr(), m.Port()+1).String()}
			if m.Port() == 2535 {
				p.dst = netip.AddrPortFrom(m.Addr(), m.Port()-1).String()
			}
			return p.build(f.t)
		}, wantAction: xdpDrop, wantStat: "drop_no_mapping", wantFlows: 1},
		{name: "in not to pool", frame: frameOf(pkt{proto: layers.IPProtocolUDP, src: server + ":7000", dst: "192.0.2.1:7000"}),
			wantAction: xdpPass, wantStat: "pass_not_pool"},
		{name: "spoofed inside source", frame: frameOf(udpOut("10.99.0.5:40000", server+":7000")), outbound: true,
			wantAction: xdpDrop, wantStat: "drop_spoofed"},
		{name: "spoofed pool source", frame: frameOf(udpOut("198.51.100.10:2040", server+":7000")), outbound: true,
			wantAction: xdpDrop, wantStat: "drop_spoofed"},
		{name: "ttl 1 out", frame: frameOf(func() pkt { p := sub2UDP; p.ttl = 1; return p }()), outbound: true,
			wantAction: xdpPass, wantStat: "pass_ttl"},
		{name: "to the router itself", frame: frameOf(udpOut(sub2+":40000", "100.64.0.254:7000")), outbound: true,
			wantAction: xdpPass, wantStat: "pass_local"},
		{name: "neighbour unknown: translated, then to the kernel", frame: frameOf(udpOut(sub2+":40000", "198.18.0.5:7000")), outbound: true,
			wantAction: xdpPass, wantStat: "pass_fib", wantFlows: 1, check: func(t *testing.T, f *natFixture, in, out []byte) {
				din, dout := decode(t, in), decode(t, out)
				block, _ := f.m.Forward(din.src().Addr())
				if src := dout.src(); src.Addr() != block.Public || src.Port() < block.PortLo || src.Port() > block.PortHi {
					t.Errorf("passed untranslated (%s): the kernel would forward the inside address", src)
				}
				if dout.ip.TTL != din.ip.TTL {
					t.Errorf("TTL %d: the kernel decrements it when it forwards", dout.ip.TTL)
				}
			}},
		{name: "unreachable: to the kernel untranslated", frame: frameOf(udpOut(sub2+":40000", "198.18.1.5:7000")), outbound: true,
			wantAction: xdpPass, wantStat: "pass_fib"},
		{name: "to a non-NAT network", frame: frameOf(udpOut(sub2+":40000", "10.10.0.5:7000")), outbound: true,
			wantAction: xdpPass, wantStat: "pass_not_nat"},
		{name: "unsupported protocol", frame: func(f *natFixture, _ netip.AddrPort) []byte {
			b := sub2UDP.build(f.t)
			b[14+9] = 47 // GRE; the checksum is wrong now, which must not matter
			return b
		}, outbound: true, wantAction: xdpDrop, wantStat: "drop_unsupported"},
		{name: "icmp non-echo out", frame: frameOf(pkt{proto: layers.IPProtocolICMPv4, src: sub2 + ":0", dst: server + ":0", icmpType: layers.ICMPv4TypeTimestampRequest}),
			outbound: true, wantAction: xdpDrop, wantStat: "drop_unsupported"},
		{name: "first fragment out", frame: frameOf(func() pkt { p := sub2UDP; p.flags = layers.IPv4MoreFragments; return p }()), outbound: true,
			wantAction: xdpRedirect, wantStat: "fragments", wantFlows: 1, check: func(t *testing.T, f *natFixture, in, out []byte) {
				block, _ := f.m.Forward(netip.MustParseAddr(sub2))
				src := netip.AddrPortFrom(netip.AddrFrom4([4]byte(out[26:30])), uint16(out[34])<<8|uint16(out[35]))
				if src.Addr() != block.Public || src.Port() < block.PortLo || src.Port() > block.PortHi {
					t.Errorf("first fragment from %s, want %+v", src, block)
				}
			}},
		{name: "later fragment in before its first", frame: frameOf(pkt{proto: layers.IPProtocolUDP, src: server + ":7000", dst: "198.51.100.10:2040", fragOffset: 100, raw: true}),
			wantAction: xdpDrop, wantStat: "drop_fragment"},
	}
	cases = append(cases, malformedCases(sub2UDP, sub2TCP)...)
	cases = append(cases, notIPv4Cases()...)

	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) { f.runCase(t, tc) })
	}
}

// runCase resets the tables, runs tc's setup and frame, checks the verdict,
// the frame, wantStat and wantFlows, and returns the counters the frame
// left (those of the setup are cleared).
func (f *natFixture) runCase(t *testing.T, tc natCase) Stats {
	t.Helper()
	f.t = t
	f.reset()
	var mapped netip.AddrPort
	if tc.setup != nil {
		mapped = tc.setup(f)
		if err := f.nat.ResetStats(); err != nil {
			t.Fatal(err)
		}
	}
	in := tc.frame(f, mapped)
	var act uint32
	var out []byte
	if tc.outbound {
		act, out = f.outbound(in)
	} else {
		act, out = f.inbound(in)
	}
	if act != tc.wantAction {
		t.Fatalf("verdict %s, want %s%s", actionNames[act], actionNames[tc.wantAction], dump(in))
	}
	if tc.check != nil {
		tc.check(t, f, in, out)
	} else if !bytes.Equal(in, out) {
		t.Errorf("frame changed, want it untouched\nin:%sout:%s", dump(in), dump(out))
	}
	st := f.stats()
	if tc.wantStat != "" && st[tc.wantStat] != 1 {
		t.Errorf("stat %s = %d, want 1 (all: %v)", tc.wantStat, st[tc.wantStat], st)
	}
	if fwd, rev := f.flowCount(); fwd != tc.wantFlows || rev != tc.wantFlows {
		t.Errorf("flows fwd=%d rev=%d, want %d each", fwd, rev, tc.wantFlows)
	}
	return st
}

// malformedCases are frames whose headers lie about themselves. None may be
// aborted, translated, or leave state behind.
func malformedCases(udp, tcp pkt) []natCase {
	mangle := func(p pkt, fn func(b []byte) []byte) func(*natFixture, netip.AddrPort) []byte {
		return func(f *natFixture, _ netip.AddrPort) []byte { return fn(p.build(f.t)) }
	}
	var cases []natCase
	for _, dir := range []struct {
		name     string
		outbound bool
		udp, tcp pkt
	}{
		{"out", true, udp, tcp},
		{"in", false,
			pkt{proto: layers.IPProtocolUDP, src: server + ":7000", dst: "198.51.100.10:2040", payload: []byte("x")},
			pkt{proto: layers.IPProtocolTCP, src: server + ":443", dst: "198.51.100.10:2041", tcpFlags: "A"}},
	} {
		add := func(name string, frame func(*natFixture, netip.AddrPort) []byte) {
			cases = append(cases, natCase{name: "malformed " + dir.name + ": " + name, frame: frame, outbound: dir.outbound,
				wantAction: xdpDrop, wantStat: "drop_malformed"})
		}
		add("ethernet header only", mangle(dir.udp, func(b []byte) []byte { return b[:14] }))
		add("ip header cut short", mangle(dir.udp, func(b []byte) []byte { return b[:14+12] }))
		add("ihl 4", mangle(dir.udp, func(b []byte) []byte { b[14] = 0x44; return b }))
		add("ihl 0", mangle(dir.udp, func(b []byte) []byte { b[14] = 0x40; return b }))
		add("version 6 in an IPv4 frame", mangle(dir.udp, func(b []byte) []byte { b[14] = 0x65; return b }))
		add("ihl past the end", mangle(dir.udp, func(b []byte) []byte { b[14] = 0x4f; return b[:14+40] }))
		add("total length below header", mangle(dir.udp, func(b []byte) []byte { b[16], b[17] = 0, 19; return b }))
		add("udp header cut short", mangle(dir.udp, func(b []byte) []byte { return b[:14+20+5] }))
		add("tcp header cut short", mangle(dir.tcp, func(b []byte) []byte { return b[:14+20+12] }))
		add("tcp data offset 4", mangle(dir.tcp, func(b []byte) []byte { b[14+20+12] = 4 << 4; return b }))
		add("tcp data offset 0", mangle(dir.tcp, func(b []byte) []byte { b[14+20+12] = 0; return b }))
		add("tcp options past the end", mangle(dir.tcp, func(b []byte) []byte { b[14+20+12] = 15 << 4; return b }))
	}
	return cases
}

func notIPv4Cases() []natCase {
	arp := func(f *natFixture, _ netip.AddrPort) []byte {
		buf := gopacket.NewSerializeBuffer()
		err := gopacket.SerializeLayers(buf, gopacket.SerializeOptions{},
			&layers.Ethernet{SrcMAC: macSub2, DstMAC: layers.EthernetBroadcast, EthernetType: layers.EthernetTypeARP},
			&layers.ARP{AddrType: layers.LinkTypeEthernet, Protocol: layers.EthernetTypeIPv4, HwAddressSize: 6, ProtAddressSize: 4,
				Operation: layers.ARPRequest, SourceHwAddress: macSub2, SourceProtAddress: []byte{100, 64, 0, 2},
				DstHwAddress: make([]byte, 6), DstProtAddress: []byte{100, 64, 0, 254}})
		if err != nil {
			f.t.Fatal(err)
		}
		return buf.Bytes()
	}
	ipv6 := func(f *natFixture, _ netip.AddrPort) []byte {
		ip := &layers.IPv6{Version: 6, NextHeader: layers.IPProtocolUDP, HopLimit: 64,
			SrcIP: netip.MustParseAddr("2001:db8::2").AsSlice(), DstIP: netip.MustParseAddr("2001:db8::1").AsSlice()}
		u := &layers.UDP{SrcPort: 40000, DstPort: 53}
		u.SetNetworkLayerForChecksum(ip)
		buf := gopacket.NewSerializeBuffer()
		err := gopacket.SerializeLayers(buf, gopacket.SerializeOptions{FixLengths: true, ComputeChecksums: true},
			&layers.Ethernet{SrcMAC: macSub2, DstMAC: macUpstream, EthernetType: layers.EthernetTypeIPv6}, ip, u, gopacket.Payload("v6"))
		if err != nil {
			f.t.Fatal(err)
		}
		return buf.Bytes()
	}
	var cases []natCase
	for _, outbound := range []bool{true, false} {
		dir := map[bool]string{true: "out", false: "in"}[outbound]
		cases = append(cases,
			natCase{name: "arp " + dir, frame: arp, outbound: outbound, wantAction: xdpPass, wantStat: "pass_not_ipv4"},
			natCase{name: "ipv6 " + dir, frame: ipv6, outbound: outbound, wantAction: xdpPass, wantStat: "pass_not_ipv4"},
		)
	}
	return cases
}

// TestEndpointIndependentMapping: one inside endpoint gets one public
// endpoint whatever the destination (RFC 4787 REQ-1).
func TestEndpointIndependentMapping(t *testing.T) {
	f := defaultFixture(t)
	for _, proto := range []layers.IPProtocol{layers.IPProtocolUDP, layers.IPProtocolTCP} {
		a := pkt{proto: proto, src: sub2 + ":41000", dst: server + ":80", tcpFlags: "S"}
		b := pkt{proto: proto, src: sub2 + ":41000", dst: "203.0.113.77:8080", tcpFlags: "S"}
		first := mapOut(a)(f)
		second := mapOut(b)(f)
		if first != second {
			t.Errorf("%v: mapped to %s for one destination and %s for another", proto, first, second)
		}
	}
	if fwd, _ := f.flowCount(); fwd != 2 {
		t.Errorf("%d forward entries, want one per protocol", fwd)
	}
}

// TestTCPState: the flow's state, which picks its timeout, follows the
// handshake and the close.
func TestTCPState(t *testing.T) {
	f := defaultFixture(t)
	key := FlowKey{Addr: be32(netip.MustParseAddr(sub2)), Port: htons(40001), Proto: ProtoTCP}
	for _, step := range []struct {
		flags string
		want  uint8
	}{{"S", FlowStateTCPTrans}, {"A", FlowStateTCPEst}, {"PA", FlowStateTCPEst}, {"FA", FlowStateTCPClosing},
		{"A", FlowStateTCPClosing}, {"S", FlowStateTCPTrans}, {"A", FlowStateTCPEst}, {"R", FlowStateTCPClosing}} {
		mapOut(pkt{proto: layers.IPProtocolTCP, src: sub2 + ":40001", dst: server + ":443", tcpFlags: step.flags})(f)
		var v FlowFwd
		if err := f.nat.objs.FlowsFwd.Lookup(&key, &v); err != nil {
			t.Fatal(err)
		}
		if v.State != step.want {
			t.Errorf("after %s: state %d, want %d", step.flags, v.State, step.want)
		}
		if v.LastSeen == 0 {
			t.Errorf("after %s: last_seen not set", step.flags)
		}
	}
}

func htons(v uint16) uint16 {
	var b [2]byte
	binary.BigEndian.PutUint16(b[:], v)
	return binary.NativeEndian.Uint16(b[:])
}

// TestBlockFull: with 4 ports a block, subscriber A's fifth flow is dropped
// and counted, B is unaffected, and A's existing flows still work both ways.
func TestBlockFull(t *testing.T) {
	f := newFixture(t, []string{"100.64.0.0/30"}, []string{"198.51.100.10"}, 1024, 1039, 0)
	if f.m.BlockSize != 4 {
		t.Fatalf("fixture block size %d, want 4", f.m.BlockSize)
	}
	var first pkt
	ports := map[uint16]bool{}
	for i := 0; i < 4; i++ {
		p := udpOut(netip.AddrPortFrom(netip.MustParseAddr(sub2), uint16(50000+i)).String(), server+":7000")
		if i == 0 {
			first = p
		}
		ports[mapOut(p)(f).Port()] = true
	}
	if len(ports) != 4 {
		t.Fatalf("4 flows got ports %v, want 4 distinct", ports)
	}
	fifth := udpOut(sub2+":50004", server+":7000").build(t)
	act, out := f.outbound(fifth)
	if act != xdpRedirect {
		t.Fatalf("fifth flow: %s, want host unreachable redirected back", actionNames[act])
	}
	checkHostUnreachable(t, fifth, out)
	// Rate limited: an immediate second refusal is only dropped.
	if act, _ := f.outbound(fifth); act != xdpDrop {
		t.Fatalf("second refusal within the interval: %s, want XDP_DROP", actionNames[act])
	}
	if st := f.stats(); st["drop_block_full"] != 2 || st["icmp_block_full"] != 1 {
		t.Errorf("drop_block_full = %d, icmp_block_full = %d, want 2 and 1", st["drop_block_full"], st["icmp_block_full"])
	}
	var st SubscriberState
	idx := uint32(2)
	if err := f.nat.objs.Subscribers.Lookup(&idx, &st); err != nil {
		t.Fatal(err)
	}
	if st.BlockFullDrops != 2 {
		t.Errorf("subscriber 2 block_full_drops = %d, want 2", st.BlockFullDrops)
	}
	// B (100.64.0.3) still translates.
	mapOut(udpOut("100.64.0.3:50000", server+":7000"))(f)
	// A's first flow still works outbound, on the same port, and inbound.
	again := mapOut(first)(f)
	if !ports[again.Port()] {
		t.Errorf("existing flow moved to port %d", again.Port())
	}
	in := reply(first)(f, again)
	act, out = f.inbound(in)
	if act != xdpRedirect {
		t.Fatalf("reply to existing flow: %s", actionNames[act])
	}
	translatedIn(netip.MustParseAddrPort(first.src), false)(t, f, in, out)
	if fwd, rev := f.flowCount(); fwd != 5 || rev != 5 {
		t.Errorf("flows fwd=%d rev=%d, want 5 (4 of A, 1 of B)", fwd, rev)
	}
}

// TestBlockFullICMPNeedsRouterAddress: the "host unreachable" for a full
// block comes from the router's address on the ingress interface, which
// follows that interface's addresses; with none, the refusal is dropped
// and nothing is sent (never an error from someone else's address).
func TestBlockFullICMPNeedsRouterAddress(t *testing.T) {
	f := newFixture(t, []string{"100.64.0.0/30"}, []string{"198.51.100.10"}, 1024, 1039, 0)
	for i := 0; i < 4; i++ {
		mapOut(udpOut(netip.AddrPortFrom(netip.MustParseAddr(sub2), uint16(50000+i)).String(), server+":7000"))(f)
	}
	refuse := func() (uint32, []byte) {
		t.Helper()
		// The per-subscriber rate limit would hide the second answer.
		idx := uint32(2)
		var st SubscriberState
		if err := f.nat.objs.Subscribers.Lookup(&idx, &st); err != nil {
			t.Fatal(err)
		}
		st.LastIcmpNs = 0
		if err := f.nat.objs.Subscribers.Put(&idx, &st); err != nil {
			t.Fatal(err)
		}
		return f.outbound(udpOut(sub2+":50009", server+":7000").build(t))
	}
	ifindex := f.ns.ifs["in0"]
	f.ns.do(t, func() {
		if out, err := exec.Command("ip", "addr", "flush", "dev", "in0").CombinedOutput(); err != nil {
			t.Fatalf("ip addr flush: %v %s", err, out)
		}
		if err := f.nat.noteAddr(ifindex); err != nil {
			t.Fatal(err)
		}
	})
	if act, out := refuse(); act != xdpDrop {
		t.Fatalf("refusal on an interface without an address: %s, want XDP_DROP%s", actionNames[act], dump(out))
	}
	if st := f.stats(); st["icmp_block_full"] != 0 || st["drop_block_full"] != 1 {
		t.Errorf("stats %v: want the refusal counted and no ICMP", st)
	}
	f.ns.do(t, func() {
		if out, err := exec.Command("ip", "addr", "add", "100.64.0.253/24", "dev", "in0").CombinedOutput(); err != nil {
			t.Fatalf("ip addr add: %v %s", err, out)
		}
		if err := f.nat.noteAddr(ifindex); err != nil {
			t.Fatal(err)
		}
	})
	act, out := refuse()
	if act != xdpRedirect {
		t.Fatalf("refusal: %s, want the host unreachable", actionNames[act])
	}
	if src := decode(t, out).ip.SrcIP.String(); src != "100.64.0.253" {
		t.Errorf("host unreachable from %s, want the router's new address 100.64.0.253", src)
	}
}

// TestPortChoiceUnpredictable: new mappings do not walk the block in order
// (RFC 6888 REQ-15).
func TestPortChoiceUnpredictable(t *testing.T) {
	f := defaultFixture(t)
	block, _ := f.m.Forward(netip.MustParseAddr(sub2))
	inOrder := 0
	var prev uint16
	for i := 0; i < 16; i++ {
		got := mapOut(udpOut(netip.AddrPortFrom(netip.MustParseAddr(sub2), uint16(30000+i)).String(), server+":7000"))(f)
		if got.Port() < block.PortLo || got.Port() > block.PortHi {
			t.Fatalf("port %d outside block %d-%d", got.Port(), block.PortLo, block.PortHi)
		}
		if i > 0 && got.Port() == prev+1 {
			inOrder++
		}
		prev = got.Port()
	}
	// With 504 ports, 15 consecutive successors by chance is impossible in practice.
	if inOrder > 4 {
		t.Errorf("%d of 15 new ports were the previous port + 1: allocation is sequential", inOrder)
	}
}

// TestBlockEvents: the first flow of an idle subscriber sends one event
// naming its block and nothing else; later flows send none.
func TestBlockEvents(t *testing.T) {
	f := defaultFixture(t)
	rd, err := ringbuf.NewReader(f.nat.objs.BlockEvents)
	if err != nil {
		t.Fatal(err)
	}
	defer rd.Close()
	mapOut(udpOut(sub2+":40000", server+":7000"))(f)
	mapOut(udpOut(sub2+":40001", "203.0.113.9:7000"))(f)
	mapOut(pkt{proto: layers.IPProtocolTCP, src: "100.64.0.3:40000", dst: server + ":80", tcpFlags: "S"})(f)

	var events []BlockEvent
	rd.SetDeadline(time.Now().Add(time.Second))
	for {
		rec, err := rd.Read()
		if err != nil {
			break
		}
		if len(rec.RawSample) != int(binary.Size(BlockEvent{})) {
			t.Fatalf("event of %d bytes, want %d", len(rec.RawSample), binary.Size(BlockEvent{}))
		}
		var e BlockEvent
		if _, err := binary.Decode(rec.RawSample, binary.NativeEndian, &e); err != nil {
			t.Fatal(err)
		}
		events = append(events, e)
	}
	if len(events) != 2 {
		t.Fatalf("%d events, want 2 (one per subscriber): %+v", len(events), events)
	}
	for i, sub := range []string{sub2, "100.64.0.3"} {
		e := events[i]
		block, _ := f.m.Forward(netip.MustParseAddr(sub))
		if e.Subscriber != block.Subscriber || AddrFromBE32(e.InsideAddr) != block.Inside || AddrFromBE32(e.PublicAddr) != block.Public ||
			e.PortLo != block.PortLo || e.PortHi != block.PortHi || e.Epoch != 7 || e.Kind != BlockEventActivate {
			t.Errorf("event %+v, want block %+v in epoch 7", e, block)
		}
		if e.TimeNs == 0 {
			t.Error("event without a time")
		}
		var st SubscriberState
		if err := f.nat.objs.Subscribers.Lookup(&e.Subscriber, &st); err != nil {
			t.Fatal(err)
		}
		if st.Active != 1 || st.ActiveSinceNs != e.TimeNs {
			t.Errorf("subscriber %d state %+v: want active since the event's time %d", e.Subscriber, st, e.TimeNs)
		}
	}
	if got := f.stats()["block_activations"]; got != 2 {
		t.Errorf("block_activations = %d, want 2", got)
	}
}

func TestStatNamesMatchEnum(t *testing.T) {
	if len(StatNames) != int(natStatIndexSTAT_MAX) {
		t.Fatalf("%d stat names, enum has %d", len(StatNames), natStatIndexSTAT_MAX)
	}
	for i, n := range StatNames {
		if n == "" {
			t.Errorf("stat %d has no name", i)
		}
	}
	spec, err := loadNat()
	if err != nil {
		t.Fatal(err)
	}
	if spec.Maps["stats"].MaxEntries != uint32(natStatIndexSTAT_MAX) {
		t.Errorf("stats map has %d entries", spec.Maps["stats"].MaxEntries)
	}
	_ = ebpf.UpdateAny
}

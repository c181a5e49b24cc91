package loader

import (
	"bytes"
	"encoding/binary"
	"encoding/hex"
	"net/netip"
	"slices"
	"testing"

	"github.com/google/gopacket/layers"

	"github.com/blocknat/blocknat/userspace/mapping"
)

// FuzzNAT feeds arbitrary frames to both programs and judges each verdict
// against a Go model of the translation. Its seed corpus runs with every
// `go test`; `go test -fuzz FuzzNAT ./loader` explores further.
//
// Invariants:
//   - the verdict is DROP, PASS or REDIRECT, never ABORTED or TX;
//   - a frame is either untouched or translated as the model predicts: only
//     the fields NAT and forwarding own change, the new endpoint lies in the
//     right block (outbound) or is the mapped subscriber (inbound), and every
//     checksum that was valid before is valid after;
//   - inbound frames never create state;
//   - an outbound frame to 255.255.255.255 or a multicast group, or from
//     0.0.0.0, goes to the kernel untouched and creates no state, whatever
//     else it carries (the router's own services: DHCP, mDNS);
//   - any other outbound frame to 0.0.0.0/8, 127.0.0.0/8 or 240.0.0.0/4 is
//     dropped and creates no state; an inbound frame to a pool address from
//     0.0.0.0/8, 127.0.0.0/8, 224.0.0.0/3, a pool or an inside address is
//     dropped (martians, RFC 1812 5.3.7);
//   - a later fragment leaves translated only for a subscriber whose block
//     is active.
func FuzzNAT(f *testing.F) {
	fx := defaultFixture(f)
	seed := udpOut(sub2+":40000", server+":7000")
	for _, p := range []pkt{
		seed,
		{proto: layers.IPProtocolTCP, src: sub2 + ":40001", dst: server + ":443", tcpFlags: "S"},
		{proto: layers.IPProtocolICMPv4, src: sub2 + ":777", dst: server + ":0", icmpType: layers.ICMPv4TypeEchoRequest},
		{proto: layers.IPProtocolUDP, src: "10.1.2.3:1", dst: server + ":7000"},
		{proto: layers.IPProtocolUDP, src: sub2 + ":40000", dst: server + ":7000", options: []layers.IPv4Option{{OptionType: 1}, {OptionType: 1}, {OptionType: 1}, {OptionType: 1}}},
	} {
		f.Add(true, p.build(f))
	}
	fx.t = f
	fx.reset()
	mapped := mapOut(seed)(fx)
	for _, p := range []pkt{
		{proto: layers.IPProtocolUDP, src: server + ":7000", dst: mapped.String(), payload: []byte("reply")},
		{proto: layers.IPProtocolTCP, src: server + ":443", dst: mapped.String(), tcpFlags: "SA"},
		{proto: layers.IPProtocolUDP, src: server + ":7000", dst: "198.51.100.11:3000"},
	} {
		f.Add(false, p.build(f))
	}
	f.Add(true, pkt{proto: layers.IPProtocolUDP, src: sub2 + ":40000", dst: server + ":7000", fragOffset: 185, raw: true}.build(f))
	for _, p := range []pkt{
		{proto: layers.IPProtocolUDP, src: "0.0.0.0:68", dst: "255.255.255.255:67", payload: dhcpPayload(f, layers.DHCPMsgTypeDiscover, nil)},
		{proto: layers.IPProtocolUDP, src: sub2 + ":5353", dst: "224.0.0.251:5353", ttl: 1},
		{proto: layers.IPProtocolUDP, src: sub2 + ":40000", dst: "255.255.255.255:9", fragOffset: 185, raw: true},
	} {
		f.Add(true, p.build(f))
	}
	f.Add(false, pkt{proto: layers.IPProtocolUDP, src: server + ":7000", dst: mapped.String(), fragOffset: 9, raw: true}.build(f))
	for _, dst := range []string{"0.0.0.1:9", "127.0.0.1:53", "240.0.0.1:9", "255.255.255.254:9"} {
		f.Add(true, udpOut(sub2+":40000", dst).build(f))
	}
	f.Add(true, pkt{proto: layers.IPProtocolUDP, src: "100.64.0.3:40000", dst: server + ":7000", fragOffset: 185, raw: true}.build(f))
	for _, src := range []string{"127.0.0.1:7000", "0.0.0.0:7000", "224.0.0.5:7000", "255.255.255.255:7000", "198.51.100.11:7000", "100.64.0.3:7000"} {
		f.Add(false, pkt{proto: layers.IPProtocolUDP, src: src, dst: mapped.String(), payload: []byte("martian")}.build(f))
	}
	f.Add(true, pkt{proto: layers.IPProtocolUDP, src: "100.64.0.3:1000", dst: mapped.String(), payload: []byte("hairpin")}.build(f))
	_, translated := fx.outbound(seed.build(f))
	f.Add(false, icmpError(f, server, layers.CreateICMPv4TypeCode(3, 3), translated, 28))
	for _, c := range malformedCases(seed, pkt{proto: layers.IPProtocolTCP, src: sub2 + ":1", dst: server + ":2", tcpFlags: "A"}) {
		f.Add(c.outbound, c.frame(fx, mapped))
	}

	f.Fuzz(func(t *testing.T, outbound bool, frame []byte) { judgeFrame(t, fx, outbound, frame) })
}

// FuzzNATOverflow is FuzzNAT on a data plane with overflow blocks: 4-port
// own blocks and an overflow pool of four 4-port blocks, two a subscriber.
// Its seeds fill subscriber 2's own block and one overflow block, so the
// fuzzer starts where claims, overflow ports and refusals happen; every
// translated source must lie in the sender's own block or in an overflow
// block the kernel shows it holding.
func FuzzNATOverflow(f *testing.F) {
	fx := overflowFixture(f, 2)
	fx.t = f
	for i := range 10 {
		f.Add(true, udpOut(netip.AddrPortFrom(netip.MustParseAddr(sub2), uint16(40000+i)).String(), server+":7000").build(f))
	}
	f.Add(true, pkt{proto: layers.IPProtocolTCP, src: "100.64.0.3:40001", dst: server + ":443", tcpFlags: "S"}.build(f))
	mapped := fx.open(sub2, 30000, 6)
	for _, m := range mapped {
		if m.IsValid() {
			f.Add(false, pkt{proto: layers.IPProtocolUDP, src: server + ":7000", dst: m.String(), payload: []byte("reply")}.build(f))
		}
	}
	f.Add(false, pkt{proto: layers.IPProtocolUDP, src: server + ":7000", dst: overflowAddr + ":1030"}.build(f))
	f.Add(true, pkt{proto: layers.IPProtocolUDP, src: "100.64.0.1:1000", dst: mapped[5].String(), payload: []byte("hairpin")}.build(f))
	f.Fuzz(func(t *testing.T, outbound bool, frame []byte) { judgeFrame(t, fx, outbound, frame) })
}

// judgeFrame runs frame through the program for its direction and judges
// the verdict and the result against the model (FuzzNAT's invariants).
func judgeFrame(t *testing.T, fx *natFixture, outbound bool, frame []byte) {
	if len(frame) < 14 || len(frame) > 1500 {
		return // BPF_PROG_TEST_RUN refuses runts; jumbo frames add nothing
	}
	fx.t = t
	fwdBefore, _ := fx.flowCount()
	var act uint32
	var out []byte
	if outbound {
		act, out = fx.outbound(frame)
	} else {
		act, out = fx.inbound(frame)
	}
	switch act {
	case xdpDrop, xdpPass, xdpRedirect:
	default:
		t.Fatalf("verdict %s%s", actionNames[act], dump(frame))
	}
	if !outbound {
		if fwd, _ := fx.flowCount(); fwd != fwdBefore {
			t.Fatalf("inbound frame created state%s", dump(frame))
		}
	}
	if outbound && modelLocalService(frame) {
		if act != xdpPass || !bytes.Equal(frame, out) {
			t.Fatalf("router's own traffic: %s, changed %v, want XDP_PASS untouched%s", actionNames[act], !bytes.Equal(frame, out), dump(frame))
		}
		if fwd, _ := fx.flowCount(); fwd != fwdBefore {
			t.Fatalf("router's own traffic created state%s", dump(frame))
		}
		return
	}
	if src, dst, ok := modelIPv4(frame); ok {
		martian := outbound && modelMartianDst(dst)
		if !outbound && isPool(fx, addrOf(dst)) {
			martian = modelMartianSrc(fx, src)
		}
		if martian {
			if act != xdpDrop || !bytes.Equal(frame, out) {
				t.Fatalf("martian %s -> %s: %s, changed %v, want XDP_DROP%s", addrOf(src), addrOf(dst), actionNames[act], !bytes.Equal(frame, out), dump(frame))
			}
			if fwd, _ := fx.flowCount(); fwd != fwdBefore {
				t.Fatalf("martian created state%s", dump(frame))
			}
			return
		}
	}
	if act == xdpDrop || bytes.Equal(frame, out) {
		return
	}
	if outbound && len(out) == 70 && out[23] == 1 && out[34] == 3 && out[35] == 1 {
		// The "host unreachable" for a full block, back to the sender.
		checkHostUnreachable(t, frame, out)
		return
	}
	if judgeFragmentOrError(t, fx, outbound, frame, out) {
		return
	}
	m, ok := modelParse(frame)
	if !ok {
		t.Fatalf("changed a frame the model cannot translate (%s)\nin:%sout:%s", actionNames[act], dump(frame), dump(out))
	}
	o, _ := modelParse(out)
	if outbound && isPool(fx, m.dst.Addr()) {
		// Hairpin: both ends change; the destination by the
		// reverse table, the source into the sender's block.
		block, err := fx.m.Forward(m.src.Addr())
		key := FlowKey{Addr: be32(m.dst.Addr()), Port: htons(m.dst.Port()), Proto: m.proto}
		var rev FlowRev
		if err != nil || fx.nat.objs.FlowsRev.Lookup(&key, &rev) != nil ||
			o.dst != netip.AddrPortFrom(AddrFromBE32(rev.Addr), PortFromBE16(rev.Port)) ||
			!inHeldBlock(t, fx, block, o.src) {
			t.Fatalf("hairpin %s->%s became %s->%s%s", m.src, m.dst, o.src, o.dst, dump(out))
		}
		return
	}
	if outbound {
		block, err := fx.m.Forward(m.src.Addr())
		if err != nil {
			t.Fatalf("translated a source outside the inside prefixes%s", dump(frame))
		}
		if !inHeldBlock(t, fx, block, o.src) || o.dst != m.dst {
			t.Fatalf("translated %s->%s into %s->%s, block %+v%s", m.src, m.dst, o.src, o.dst, block, dump(out))
		}
	} else {
		// The model's flow table is the reverse map itself: the
		// fuzzer's own outbound frames may have added mappings.
		key := FlowKey{Addr: be32(m.dst.Addr()), Port: htons(m.dst.Port()), Proto: m.proto}
		var rev FlowRev
		if err := fx.nat.objs.FlowsRev.Lookup(&key, &rev); err != nil {
			t.Fatalf("inbound %s->%s translated without a mapping%s", m.src, m.dst, dump(frame))
		}
		want := netip.AddrPortFrom(AddrFromBE32(rev.Addr), PortFromBE16(rev.Port))
		if o.dst != want || o.src != m.src {
			t.Fatalf("inbound %s->%s became %s->%s, mapping says %s%s", m.src, m.dst, o.src, o.dst, want, dump(out))
		}
	}
	if diff := unexpectedChanges(frame, out, m); diff != "" {
		t.Fatalf("%s\nin:%sout:%s", diff, dump(frame), dump(out))
	}
	if m.ipValid && !ipChecksumValid(out, m) {
		t.Fatalf("IP checksum broken by translation%s", dump(out))
	}
	if m.l4Valid && !l4ChecksumValid(out, m) {
		t.Fatalf("L4 checksum broken by translation%s", dump(out))
	}
}

// model is the Go reading of a frame the NAT may translate.
type model struct {
	ihl, l4off  int
	proto       byte
	src, dst    netip.AddrPort // ICMP: the echo id in the inside host's slot
	portOff     int            // offset of the translated port (src or dst)
	checkOff    int            // offset of the L4 checksum, -1 for UDP "none"
	ipValid     bool
	l4Valid     bool
	outboundish bool
}

// modelParse accepts exactly the frames the NAT translates in either
// direction: IPv4, IHL >= 5, whole headers, not a later fragment, TCP with data
// offset >= 5, UDP, ICMP echo or echo reply.
func modelParse(b []byte) (model, bool) {
	var m model
	if len(b) < 34 || binary.BigEndian.Uint16(b[12:]) != 0x0800 || b[14]>>4 != 4 {
		return m, false
	}
	m.ihl = int(b[14]&0xf) * 4
	totLen := int(binary.BigEndian.Uint16(b[16:]))
	if m.ihl < 20 || len(b) < 14+m.ihl || totLen < m.ihl {
		return m, false
	}
	if binary.BigEndian.Uint16(b[20:])&0x1fff != 0 {
		return m, false // a later fragment: judgeFragmentOrError's
	}
	m.proto = b[23]
	m.l4off = 14 + m.ihl
	l4 := b[m.l4off:]
	srcIP, dstIP := netip.AddrFrom4([4]byte(b[26:30])), netip.AddrFrom4([4]byte(b[30:34]))
	var sport, dport uint16
	switch m.proto {
	case ProtoTCP:
		if len(l4) < 20 || int(l4[12]>>4)*4 < 20 || len(l4) < int(l4[12]>>4)*4 {
			return m, false
		}
		sport, dport = binary.BigEndian.Uint16(l4), binary.BigEndian.Uint16(l4[2:])
		m.checkOff = m.l4off + 16
	case ProtoUDP:
		if len(l4) < 8 {
			return m, false
		}
		sport, dport = binary.BigEndian.Uint16(l4), binary.BigEndian.Uint16(l4[2:])
		m.checkOff = m.l4off + 6
		if binary.BigEndian.Uint16(l4[6:]) == 0 {
			m.checkOff = -1
		}
	case ProtoICMP:
		if len(l4) < 8 || (l4[0] != 8 && l4[0] != 0) {
			return m, false
		}
		id := binary.BigEndian.Uint16(l4[4:])
		if l4[0] == 8 {
			sport = id
		} else {
			dport = id
		}
		m.checkOff = m.l4off + 2
	default:
		return m, false
	}
	m.src, m.dst = netip.AddrPortFrom(srcIP, sport), netip.AddrPortFrom(dstIP, dport)
	m.ipValid = ipChecksumValid(b, m)
	m.l4Valid = m.checkOff >= 0 && l4ChecksumValid(b, m)
	return m, true
}

// modelIPv4 returns the addresses (host order) of a frame whose IPv4
// header parse_iphdr accepts.
func modelIPv4(b []byte) (src, dst uint32, ok bool) {
	if len(b) < 34 || binary.BigEndian.Uint16(b[12:]) != 0x0800 || b[14]>>4 != 4 {
		return 0, 0, false
	}
	ihl := int(b[14]&0xf) * 4
	if ihl < 20 || len(b) < 14+ihl || int(binary.BigEndian.Uint16(b[16:])) < ihl {
		return 0, 0, false
	}
	return binary.BigEndian.Uint32(b[26:]), binary.BigEndian.Uint32(b[30:]), true
}

// modelLocalService says whether the inside program owes a frame to the
// kernel before any route or prefix check: an IPv4 header parse_iphdr
// accepts, to the limited broadcast address or a multicast group, or from
// 0.0.0.0.
func modelLocalService(b []byte) bool {
	src, dst, ok := modelIPv4(b)
	return ok && (dst&0xf0000000 == 0xe0000000 || dst == 0xffffffff || src == 0)
}

// modelMartianDst: an outbound destination no router forwards, once the
// router's own services are set aside. (The fixture's inside prefix is on
// in0, so no inside destination is routed upstream here.)
func modelMartianDst(dst uint32) bool {
	return !(dst&0xf0000000 == 0xe0000000 || dst == 0xffffffff) && (dst>>24 == 0 || dst>>24 == 127 || dst >= 0xf0000000)
}

// modelMartianSrc: a source that cannot reach a pool address from the
// internet.
func modelMartianSrc(fx *natFixture, src uint32) bool {
	if src>>24 == 0 || src>>24 == 127 || src >= 0xe0000000 || isPool(fx, addrOf(src)) {
		return true
	}
	_, err := fx.m.Forward(addrOf(src))
	return err == nil
}

func addrOf(v uint32) netip.Addr {
	return netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)})
}

func ipChecksumValid(b []byte, m model) bool {
	hdr := b[14 : 14+m.ihl]
	return checksum(hdr, 10, nil) == binary.BigEndian.Uint16(hdr[10:])
}

// l4ChecksumValid checks the L4 checksum over what the IP header claims is
// the segment, when the frame holds it all.
func l4ChecksumValid(b []byte, m model) bool {
	end := 14 + int(binary.BigEndian.Uint16(b[16:]))
	if m.checkOff < 0 || end > len(b) || end < m.checkOff+2 {
		return false
	}
	seg := b[m.l4off:end]
	skip := m.checkOff - m.l4off
	var pseudo []byte
	if m.proto != ProtoICMP {
		pseudo = append(append([]byte{}, b[26:34]...), 0, m.proto, byte(len(seg)>>8), byte(len(seg)))
	}
	want := checksum(seg, skip, pseudo)
	got := binary.BigEndian.Uint16(b[m.checkOff:])
	return got == want || (m.proto == ProtoUDP && want == 0 && got == 0xffff)
}

// unexpectedChanges lists bytes that changed outside what translation and
// forwarding may touch: MACs, TTL, IP checksum, one address, one port (or
// echo id) and the L4 checksum.
func unexpectedChanges(in, out []byte, m model) string {
	allowed := map[int]bool{}
	for i := 0; i < 12; i++ {
		allowed[i] = true
	}
	allowed[22], allowed[24], allowed[25] = true, true, true
	for i := 26; i < 34; i++ {
		allowed[i] = true
	}
	if m.proto == 1 {
		allowed[m.l4off+4], allowed[m.l4off+5] = true, true
	} else {
		for i := 0; i < 4; i++ {
			allowed[m.l4off+i] = true
		}
	}
	if m.checkOff >= 0 {
		allowed[m.checkOff], allowed[m.checkOff+1] = true, true
	}
	for i := range in {
		if in[i] != out[i] && !allowed[i] {
			return "byte " + hex.EncodeToString([]byte{byte(i)}) + " changed though translation does not own it"
		}
	}
	return ""
}

func isPool(fx *natFixture, a netip.Addr) bool {
	return slices.Contains(publicAddrs(fx.nat.params), a)
}

// inHeldBlock says whether src is a port of the subscriber's own block, or
// of an overflow block the kernel shows it holding.
func inHeldBlock(t *testing.T, fx *natFixture, own mapping.Block, src netip.AddrPort) bool {
	if src.Addr() == own.Public && src.Port() >= own.PortLo && src.Port() <= own.PortHi {
		return true
	}
	id, ok := fx.nat.OverflowOf(src.Addr(), src.Port())
	if !ok {
		return false
	}
	held, err := fx.nat.OverflowBlocks()
	if err != nil {
		t.Fatal(err)
	}
	for _, h := range held {
		if h.ID == id && h.Subscriber == own.Subscriber && !h.Releasing {
			return true
		}
	}
	return false
}

// judgeFragmentOrError judges the translations the flat model does not
// cover: later fragments (outbound to the sender's public address, inbound
// by the first fragment's state) and inbound ICMP errors (the outer
// destination by the quote's mapping). It reports whether it judged.
func judgeFragmentOrError(t *testing.T, fx *natFixture, outbound bool, in, out []byte) bool {
	t.Helper()
	if len(in) < 34 || len(out) < 34 || in[12] != 0x08 || in[13] != 0 {
		return false
	}
	ihl := int(in[14]&0xf) * 4
	later := binary.BigEndian.Uint16(in[20:])&0x1fff != 0
	icmpErr := !outbound && in[23] == 1 && len(in) > 14+ihl && (in[14+ihl] == 3 || in[14+ihl] == 11 || in[14+ihl] == 12) &&
		binary.BigEndian.Uint16(in[20:])&0x3fff == 0
	if !later && !icmpErr {
		return false
	}
	src, dst := netip.AddrFrom4([4]byte(in[26:30])), netip.AddrFrom4([4]byte(in[30:34]))
	osrc, odst := netip.AddrFrom4([4]byte(out[26:30])), netip.AddrFrom4([4]byte(out[30:34]))
	switch {
	case later && outbound:
		block, err := fx.m.Forward(src)
		if err != nil || osrc != block.Public || odst != dst {
			t.Fatalf("later fragment %s->%s became %s->%s%s", src, dst, osrc, odst, dump(out))
		}
		var st SubscriberState
		if err := fx.nat.objs.Subscribers.Lookup(&block.Subscriber, &st); err != nil || st.Active == 0 {
			t.Fatalf("later fragment from %s translated while its block is not active%s", src, dump(out))
		}
	case later:
		key := FragKey{Saddr: be32(src), Daddr: be32(dst), Id: binary.NativeEndian.Uint16(in[18:20]), Proto: in[23]}
		var v FragVal
		if err := fx.nat.objs.Frags.Lookup(&key, &v); err != nil || odst != AddrFromBE32(v.Addr) || osrc != src {
			t.Fatalf("later fragment %s->%s became %s->%s without its first%s", src, dst, osrc, odst, dump(out))
		}
	default:
		// The quote's source is the mapping the error is about.
		q := 14 + ihl + 8
		if len(in) < q+28 {
			t.Fatalf("translated an ICMP error with a short quote%s", dump(in))
		}
		qsrc := netip.AddrFrom4([4]byte(in[q+12 : q+16]))
		qihl := int(in[q]&0xf) * 4
		port := binary.BigEndian.Uint16(in[q+qihl:])
		if in[q+9] == 1 {
			port = binary.BigEndian.Uint16(in[q+qihl+4:])
		}
		key := FlowKey{Addr: be32(qsrc), Port: htons(port), Proto: in[q+9]}
		var rev FlowRev
		if qsrc != dst || fx.nat.objs.FlowsRev.Lookup(&key, &rev) != nil || odst != AddrFromBE32(rev.Addr) || osrc != src {
			t.Fatalf("ICMP error to %s became %s->%s, quote from %s%s", dst, osrc, odst, qsrc, dump(out))
		}
	}
	if !ipChecksumValid(out, model{ihl: ihl}) && ipChecksumValid(in, model{ihl: ihl}) {
		t.Fatalf("IP checksum broken%s", dump(out))
	}
	return true
}

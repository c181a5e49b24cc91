package loader

import (
	"encoding/hex"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/google/gopacket"
	"github.com/google/gopacket/layers"
	"github.com/vishvananda/netns"

	"github.com/blocknat/blocknat/userspace/mapping"
)

// The prog.Run tests run in a namespace of their own, because
// bpf_fib_lookup consults the routing table and neighbour cache of the
// namespace of the thread that runs the program:
//
//	in0  100.64.0.254/24   subscribers 100.64.0.2, .3 (permanent neighbours)
//	out0 192.0.2.1/30      upstream 192.0.2.2 (permanent neighbour), default route
//	lan0 10.10.0.1/24      a non-NAT network (inside traffic routed here is not ours)
var (
	macUpstream = net.HardwareAddr{0x02, 0, 0, 0, 0, 0x02}
	macSub2     = net.HardwareAddr{0x02, 0, 0, 0, 1, 0x02}
	macSub3     = net.HardwareAddr{0x02, 0, 0, 0, 1, 0x03}
	macSender   = net.HardwareAddr{0x02, 0, 0, 0, 9, 0x09}
)

var nsCounter atomic.Uint32

// testNS is a network namespace for prog.Run with the topology above.
type testNS struct {
	name   string
	handle netns.NsHandle
	ifs    map[string]int // ifindex by name
	macs   map[string]net.HardwareAddr
}

func requirePrivileged(t testing.TB) {
	t.Helper()
	if os.Geteuid() == 0 {
		return
	}
	if os.Getenv("BLOCKNAT_REQUIRE_PRIVILEGED") == "1" {
		t.Fatal("this test needs root and BLOCKNAT_REQUIRE_PRIVILEGED=1 forbids skipping it")
	}
	t.Skip("needs root (BPF, network namespaces)")
}

func newTestNS(t testing.TB) *testNS {
	t.Helper()
	requirePrivileged(t)
	name := fmt.Sprintf("bnl-%d-%d", os.Getpid(), nsCounter.Add(1))
	run := func(args ...string) {
		t.Helper()
		if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
			t.Fatalf("ip %s: %v: %s", strings.Join(args, " "), err, out)
		}
	}
	run("netns", "add", name)
	t.Cleanup(func() { exec.Command("ip", "netns", "del", name).Run() })
	n := func(args ...string) { run(append([]string{"-n", name}, args...)...) }
	for _, pair := range [][2]string{{"in0", "in0p"}, {"out0", "out0p"}, {"lan0", "lan0p"}} {
		n("link", "add", pair[0], "type", "veth", "peer", "name", pair[1])
		n("link", "set", pair[0], "up")
		n("link", "set", pair[1], "up")
	}
	n("link", "set", "lo", "up")
	n("addr", "add", "100.64.0.254/24", "dev", "in0")
	n("addr", "add", "192.0.2.1/30", "dev", "out0")
	n("addr", "add", "10.10.0.1/24", "dev", "lan0")
	n("route", "add", "default", "via", "192.0.2.2")
	// A directly connected outside network with no neighbour entries (the
	// fib finds the route but not the MAC), and an unreachable one.
	n("route", "add", "198.18.0.0/24", "dev", "out0")
	n("route", "add", "unreachable", "198.18.1.0/24")
	n("neigh", "add", "192.0.2.2", "lladdr", macUpstream.String(), "dev", "out0", "nud", "permanent")
	n("neigh", "add", "100.64.0.2", "lladdr", macSub2.String(), "dev", "in0", "nud", "permanent")
	n("neigh", "add", "100.64.0.3", "lladdr", macSub3.String(), "dev", "in0", "nud", "permanent")
	run("netns", "exec", name, "sysctl", "-qw", "net.ipv4.ip_forward=1")

	h, err := netns.GetFromName(name)
	if err != nil {
		t.Fatalf("open netns %s: %v", name, err)
	}
	t.Cleanup(func() { h.Close() })
	ns := &testNS{name: name, handle: h, ifs: map[string]int{}, macs: map[string]net.HardwareAddr{}}
	ns.do(t, func() {
		for _, ifn := range []string{"in0", "out0", "lan0"} {
			ifc, err := net.InterfaceByName(ifn)
			if err != nil {
				t.Fatalf("interface %s: %v", ifn, err)
			}
			ns.ifs[ifn] = ifc.Index
			ns.macs[ifn] = ifc.HardwareAddr
		}
	})
	return ns
}

// do runs fn on this goroutine's OS thread switched into the namespace.
func (ns *testNS) do(t testing.TB, fn func()) {
	t.Helper()
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	orig, err := netns.Get()
	if err != nil {
		t.Fatalf("get current netns: %v", err)
	}
	defer orig.Close()
	if err := netns.Set(ns.handle); err != nil {
		t.Fatalf("enter netns %s: %v", ns.name, err)
	}
	defer func() {
		if err := netns.Set(orig); err != nil {
			// The thread is unusable; never unlock it back into the pool.
			panic(fmt.Sprintf("return from netns %s: %v", ns.name, err))
		}
	}()
	fn()
}

// natFixture is a NAT loaded for prog.Run with in0 inside and out0, lan0
// registered by role (lan0 as inside: it is not a way out of the NAT).
type natFixture struct {
	t   testing.TB
	ns  *testNS
	nat *NAT
	m   *mapping.Mapping
}

func newFixture(t testing.TB, prefixes, pool []string, lo, hi, blockSize uint16) *natFixture {
	t.Helper()
	ns := newTestNS(t)
	m, err := mapping.New(prefixesOf(t, prefixes), prefixesOf(t, pool), lo, hi, blockSize)
	if err != nil {
		t.Fatalf("mapping: %v", err)
	}
	nat, err := Load(Params{Mapping: m, Epoch: 7}, "")
	if err != nil {
		t.Fatalf("load: %v", err)
	}
	t.Cleanup(func() { nat.Close() })
	return fixtureOn(t, ns, nat, m)
}

// fixtureOn makes a fixture of a NAT already loaded for m: it registers
// the test namespace's interfaces and vouches for the routes.
func fixtureOn(t testing.TB, ns *testNS, nat *NAT, m *mapping.Mapping) *natFixture {
	t.Helper()
	// Devmap entries resolve their ifindex in the writer's namespace.
	ns.do(t, func() {
		for ifn, role := range map[string]Role{"in0": RoleInside, "out0": RoleOutside, "lan0": RoleInside} {
			if err := nat.register(ns.ifs[ifn], role); err != nil {
				t.Fatal(err)
			}
		}
	})
	// The next-hop cache is on, as under a running agent, so every case
	// runs the path production runs; reset empties it.
	if err := nat.VouchRoutes(1, MonotonicNow()+24*time.Hour); err != nil {
		t.Fatal(err)
	}
	return &natFixture{t: t, ns: ns, nat: nat, m: m}
}

func prefixesOf(t testing.TB, ss []string) []netip.Prefix {
	var out []netip.Prefix
	for _, s := range ss {
		if !strings.Contains(s, "/") {
			s += "/32"
		}
		out = append(out, netip.MustParsePrefix(s))
	}
	return out
}

// xdpMD mirrors struct xdp_md for BPF_PROG_TEST_RUN's context.
type xdpMD struct {
	Data, DataEnd, DataMeta, IngressIfindex, RxQueueIndex, EgressIfindex uint32
}

// run feeds one frame to the inside or outside program as if it arrived
// on iface, and returns the verdict and the frame as the program left it.
func (f *natFixture) run(prog *ebpf.Program, iface string, frame []byte) (uint32, []byte) {
	f.t.Helper()
	opts := &ebpf.RunOptions{
		Data:    frame,
		DataOut: make([]byte, len(frame)+256),
		Context: xdpMD{DataEnd: uint32(len(frame)), IngressIfindex: uint32(f.ns.ifs[iface])},
	}
	var ret uint32
	f.ns.do(f.t, func() {
		var err error
		if ret, err = prog.Run(opts); err != nil {
			f.t.Fatalf("prog.Run on %s: %v", iface, err)
		}
	})
	// DataOut is cut to the frame the program left, which may be longer
	// or shorter than the input (an ICMP error built in place).
	return ret, opts.DataOut
}

func (f *natFixture) outbound(frame []byte) (uint32, []byte) {
	return f.run(f.nat.objs.XdpInside, "in0", frame)
}

func (f *natFixture) inbound(frame []byte) (uint32, []byte) {
	return f.run(f.nat.objs.XdpOutside, "out0", frame)
}

func (f *natFixture) stats() Stats {
	f.t.Helper()
	s, err := f.nat.Stats()
	if err != nil {
		f.t.Fatal(err)
	}
	return s
}

// reset empties every table the programs write, between table cases.
func (f *natFixture) reset() {
	f.t.Helper()
	for _, m := range []*ebpf.Map{f.nat.objs.FlowsFwd, f.nat.objs.FlowsRev} {
		var k FlowKey
		for {
			if err := m.NextKey(nil, &k); err != nil {
				break
			}
			if err := m.Delete(&k); err != nil {
				f.t.Fatal(err)
			}
		}
	}
	var nk natNexthopKey
	for f.nat.objs.Nexthops.NextKey(nil, &nk) == nil {
		if err := f.nat.objs.Nexthops.Delete(&nk); err != nil {
			f.t.Fatal(err)
		}
	}
	for i := uint32(0); i < f.m.Subscribers; i++ {
		if err := f.nat.objs.Subscribers.Update(&i, &SubscriberState{}, ebpf.UpdateAny); err != nil {
			f.t.Fatal(err)
		}
	}
	if err := f.nat.ResetStats(); err != nil {
		f.t.Fatal(err)
	}
}

func (f *natFixture) flowCount() (fwd, rev int) {
	count := func(m *ebpf.Map) int {
		var k FlowKey
		n := 0
		it := m.Iterate()
		var v []byte
		for it.Next(&k, &v) {
			n++
		}
		return n
	}
	return count(f.nat.objs.FlowsFwd), count(f.nat.objs.FlowsRev)
}

// pkt describes a test frame; build turns it into bytes with gopacket.
type pkt struct {
	proto           layers.IPProtocol
	src, dst        string // "addr:port"; for ICMP the port is the echo id
	ttl             uint8
	icmpType        uint8
	tcpFlags        string // letters S, A, F, R
	payload         []byte
	srcMAC, dstMAC  net.HardwareAddr
	options         []layers.IPv4Option
	zeroUDPChecksum bool
	flags           layers.IPv4Flag
	fragOffset      uint16
	raw             bool // no L4 header: the payload follows IP (a later fragment)
}

func (p pkt) build(t testing.TB) []byte {
	t.Helper()
	src, dst := netip.MustParseAddrPort(p.src), netip.MustParseAddrPort(p.dst)
	ttl := p.ttl
	if ttl == 0 {
		ttl = 64
	}
	eth := &layers.Ethernet{SrcMAC: p.srcMAC, DstMAC: p.dstMAC, EthernetType: layers.EthernetTypeIPv4}
	if eth.SrcMAC == nil {
		eth.SrcMAC = macSender
	}
	if eth.DstMAC == nil {
		eth.DstMAC = net.HardwareAddr{0x02, 0, 0, 0, 0xee, 0xee}
	}
	ip := &layers.IPv4{Version: 4, TTL: ttl, Protocol: p.proto, SrcIP: src.Addr().AsSlice(), DstIP: dst.Addr().AsSlice(),
		Options: p.options, Flags: p.flags, FragOffset: p.fragOffset, Id: 4242}
	payload := gopacket.Payload(p.payload)
	if p.raw {
		if len(p.payload) == 0 {
			payload = gopacket.Payload("later fragment bytes..")
		}
		buf := gopacket.NewSerializeBuffer()
		if err := gopacket.SerializeLayers(buf, gopacket.SerializeOptions{FixLengths: true, ComputeChecksums: true}, eth, ip, payload); err != nil {
			t.Fatalf("serialize: %v", err)
		}
		return buf.Bytes()
	}
	var l4 gopacket.SerializableLayer
	switch p.proto {
	case layers.IPProtocolUDP:
		u := &layers.UDP{SrcPort: layers.UDPPort(src.Port()), DstPort: layers.UDPPort(dst.Port())}
		u.SetNetworkLayerForChecksum(ip)
		l4 = u
	case layers.IPProtocolTCP:
		tc := &layers.TCP{SrcPort: layers.TCPPort(src.Port()), DstPort: layers.TCPPort(dst.Port()), Seq: 1000, Window: 65535,
			SYN: strings.Contains(p.tcpFlags, "S"), ACK: strings.Contains(p.tcpFlags, "A"),
			FIN: strings.Contains(p.tcpFlags, "F"), RST: strings.Contains(p.tcpFlags, "R")}
		tc.SetNetworkLayerForChecksum(ip)
		l4 = tc
	case layers.IPProtocolICMPv4:
		id := src.Port()
		if p.icmpType == layers.ICMPv4TypeEchoReply {
			id = dst.Port()
		}
		l4 = &layers.ICMPv4{TypeCode: layers.CreateICMPv4TypeCode(p.icmpType, 0), Id: id, Seq: 1}
	}
	buf := gopacket.NewSerializeBuffer()
	if err := gopacket.SerializeLayers(buf, gopacket.SerializeOptions{FixLengths: true, ComputeChecksums: true}, eth, ip, l4, payload); err != nil {
		t.Fatalf("serialize: %v", err)
	}
	b := buf.Bytes()
	if p.zeroUDPChecksum {
		off := 14 + int(ip.IHL)*4 + 6
		b[off], b[off+1] = 0, 0
	}
	return b
}

// decoded is what the tests check of a frame the program left.
type decoded struct {
	eth  *layers.Ethernet
	ip   *layers.IPv4
	udp  *layers.UDP
	tcp  *layers.TCP
	icmp *layers.ICMPv4
}

func (d decoded) src() netip.AddrPort { return d.endpoint(d.ip.SrcIP, true) }
func (d decoded) dst() netip.AddrPort { return d.endpoint(d.ip.DstIP, false) }

func (d decoded) endpoint(ip net.IP, source bool) netip.AddrPort {
	a, _ := netip.AddrFromSlice(ip.To4())
	var port uint16
	switch {
	case d.udp != nil && source:
		port = uint16(d.udp.SrcPort)
	case d.udp != nil:
		port = uint16(d.udp.DstPort)
	case d.tcp != nil && source:
		port = uint16(d.tcp.SrcPort)
	case d.tcp != nil:
		port = uint16(d.tcp.DstPort)
	case d.icmp != nil:
		// The echo id belongs to the inside host's side of the exchange.
		isRequest := d.icmp.TypeCode.Type() == layers.ICMPv4TypeEchoRequest
		if isRequest == source {
			port = d.icmp.Id
		}
	}
	return netip.AddrPortFrom(a, port)
}

// decode parses a frame and checks every checksum in it by recomputing it
// in Go: the program's incremental updates must equal a full computation.
func decode(t testing.TB, frame []byte) decoded {
	t.Helper()
	return decodeUDP0(t, frame, false)
}

// decodeUDP0 is decode for frames whose UDP checksum was sent as 0 ("none"),
// which must stay 0.
func decodeUDP0(t testing.TB, frame []byte, zeroUDP bool) decoded {
	t.Helper()
	p := gopacket.NewPacket(frame, layers.LayerTypeEthernet, gopacket.Default)
	// gopacket guesses an application protocol from a port (2152 is
	// GTP, 53 DNS): a payload it cannot read as that is no fault of the
	// headers under test.
	transport := p.Layer(layers.LayerTypeUDP) != nil || p.Layer(layers.LayerTypeTCP) != nil || p.Layer(layers.LayerTypeICMPv4) != nil
	if el := p.ErrorLayer(); el != nil && !transport {
		t.Fatalf("decode: %v\n%s", el.Error(), hex.Dump(frame))
	}
	var d decoded
	d.eth, _ = p.Layer(layers.LayerTypeEthernet).(*layers.Ethernet)
	d.ip, _ = p.Layer(layers.LayerTypeIPv4).(*layers.IPv4)
	d.udp, _ = p.Layer(layers.LayerTypeUDP).(*layers.UDP)
	d.tcp, _ = p.Layer(layers.LayerTypeTCP).(*layers.TCP)
	d.icmp, _ = p.Layer(layers.LayerTypeICMPv4).(*layers.ICMPv4)
	if d.ip == nil {
		t.Fatalf("no IPv4 layer\n%s", hex.Dump(frame))
	}
	checkChecksums(t, frame, d, zeroUDP)
	return d
}

func checkChecksums(t testing.TB, frame []byte, d decoded, zeroUDP bool) {
	t.Helper()
	ihl := int(d.ip.IHL) * 4
	ipHdr := frame[14 : 14+ihl]
	if got, want := be16(ipHdr[10:]), checksum(ipHdr, 10, nil); got != want {
		t.Errorf("IP checksum %#04x, recomputed %#04x\n%s", got, want, hex.Dump(frame))
	}
	l4 := frame[14+ihl : 14+int(d.ip.Length)]
	pseudo := append(append([]byte{}, ipHdr[12:20]...), 0, byte(d.ip.Protocol), byte(len(l4)>>8), byte(len(l4)))
	switch {
	case d.udp != nil:
		got := be16(l4[6:])
		if zeroUDP || got == 0 {
			if zeroUDP != (got == 0) {
				t.Errorf("UDP checksum %#04x; sent as zero: %v\n%s", got, zeroUDP, hex.Dump(frame))
			}
			return
		}
		want := checksum(l4, 6, pseudo)
		if want == 0 {
			want = 0xffff
		}
		if got != want {
			t.Errorf("UDP checksum %#04x, recomputed %#04x\n%s", got, want, hex.Dump(frame))
		}
	case d.tcp != nil:
		if got, want := be16(l4[16:]), checksum(l4, 16, pseudo); got != want {
			t.Errorf("TCP checksum %#04x, recomputed %#04x\n%s", got, want, hex.Dump(frame))
		}
	case d.icmp != nil:
		if got, want := be16(l4[2:]), checksum(l4, 2, nil); got != want {
			t.Errorf("ICMP checksum %#04x, recomputed %#04x\n%s", got, want, hex.Dump(frame))
		}
	}
}

func be16(b []byte) uint16 { return uint16(b[0])<<8 | uint16(b[1]) }

// checksum is the Internet checksum of pseudo||data with the 16-bit field
// at data[skip:skip+2] taken as zero.
func checksum(data []byte, skip int, pseudo []byte) uint16 {
	var sum uint32
	add := func(b []byte, skipAt int) {
		for i := 0; i < len(b); i += 2 {
			if i == skipAt {
				continue
			}
			w := uint32(b[i]) << 8
			if i+1 < len(b) {
				w |= uint32(b[i+1])
			}
			sum += w
		}
	}
	add(pseudo, -1)
	add(data, skip)
	for sum > 0xffff {
		sum = sum&0xffff + sum>>16
	}
	return ^uint16(sum)
}

func dump(b []byte) string { return "\n" + hex.Dump(b) }

package loader

import (
	"net/netip"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/google/gopacket/layers"
)

// runsPerCall is how often BPF_PROG_TEST_RUN repeats the program on one
// copy of the frame. The frame keeps each run's rewrite and loses one TTL
// per run, so a call starts at TTL 255 and stays well above 1.
const runsPerCall = 200

// BenchmarkXDP measures the per-packet cost of the established-flow path
// against the floor of running any XDP program at all (xdp_pass, loaded in
// the same process).
//
// A repeated run sees the frame as the previous run left it, so a naive
// loop would measure the spoofed-source or no-mapping drop path after the
// first run. Each established case therefore installs a ping-pong pair of
// mappings: A -> B and B -> A (for inbound, two pool endpoints pointing at
// each other), so every run takes the full established path: LPM, flow
// hit, rewrite, checksum updates, fib lookup, TTL and redirect. After the
// loop the benchmark asserts that every run was translated and none took
// a miss or pass path.
func BenchmarkXDP(b *testing.B) {
	f := defaultFixture(b)
	var base baselineObjects
	if err := loadBaselineObjects(&base, nil); err != nil {
		b.Fatal(err)
	}
	defer base.Close()
	f.ns.do(b, func() {
		out0 := uint32(f.ns.ifs["out0"])
		if err := base.FwdPorts.Update(&out0, &out0, ebpf.UpdateAny); err != nil {
			b.Fatal(err)
		}
	})

	b.Run("pass", func(b *testing.B) {
		frame := udpOut(sub2+":40000", server+":7000").build(b)
		benchProg(b, f, base.XdpPass, frame, xdpPass)
	})
	b.Run("forward-only", func(b *testing.B) {
		frame := pkt{proto: layers.IPProtocolUDP, src: sub2 + ":40000", dst: server + ":443", ttl: 255, payload: make([]byte, 18)}.build(b)
		benchProg(b, f, base.XdpForward, frame, xdpRedirect)
	})

	type proto struct {
		name string
		p    layers.IPProtocol
		icmp uint8
	}
	for _, pr := range []proto{{"udp", layers.IPProtocolUDP, 0}, {"tcp", layers.IPProtocolTCP, 0}, {"icmp", layers.IPProtocolICMPv4, layers.ICMPv4TypeEchoRequest}} {
		b.Run("established-"+pr.name+"-out", func(b *testing.B) {
			f.t = b
			f.reset()
			a, c := netip.MustParseAddrPort(sub2+":40000"), netip.MustParseAddrPort("100.64.0.3:40001")
			pingPongFwd(b, f, uint8(pr.p), a, c)
			frame := pkt{proto: pr.p, src: a.String(), dst: server + ":443", ttl: 255, tcpFlags: "A", icmpType: pr.icmp, payload: make([]byte, 18)}.build(b)
			benchProg(b, f, f.nat.objs.XdpInside, frame, xdpRedirect)
			assertOnlyTranslated(b, f, "out_packets")
		})
		b.Run("established-"+pr.name+"-in", func(b *testing.B) {
			f.t = b
			f.reset()
			p, q := netip.MustParseAddrPort("198.51.100.10:2100"), netip.MustParseAddrPort("198.51.100.11:2200")
			pingPongRev(b, f, uint8(pr.p), p, q)
			icmp := pr.icmp
			if icmp != 0 {
				icmp = layers.ICMPv4TypeEchoReply
			}
			frame := pkt{proto: pr.p, src: server + ":443", dst: p.String(), ttl: 255, tcpFlags: "A", icmpType: icmp, payload: make([]byte, 18)}.build(b)
			benchProg(b, f, f.nat.objs.XdpOutside, frame, xdpRedirect)
			assertOnlyTranslated(b, f, "in_packets")
		})
	}
}

// benchProg reports the kernel-measured ns per run, excluding the syscall.
func benchProg(b *testing.B, f *natFixture, prog *ebpf.Program, frame []byte, want uint32) {
	b.Helper()
	var total float64
	calls := 0
	f.ns.do(b, func() {
		b.ResetTimer()
		for i := 0; i < b.N; i++ {
			ret, d, err := prog.Benchmark(frame, runsPerCall, nil)
			if err != nil {
				b.Fatal(err)
			}
			if ret != want {
				b.Fatalf("verdict %s, want %s", actionNames[ret], actionNames[want])
			}
			total += float64(d.Nanoseconds())
			calls++
		}
	})
	b.ReportMetric(total/float64(calls), "ns/pkt")
}

// pingPongFwd maps inside endpoint a to c and c to a, so a frame from a
// becomes a frame from c, whose mapping sends it back to a.
func pingPongFwd(b *testing.B, f *natFixture, proto uint8, a, c netip.AddrPort) {
	b.Helper()
	for _, pair := range [][2]netip.AddrPort{{a, c}, {c, a}} {
		key := FlowKey{Addr: be32(pair[0].Addr()), Port: htons(pair[0].Port()), Proto: proto}
		val := FlowFwd{NatAddr: be32(pair[1].Addr()), NatPort: htons(pair[1].Port()), State: FlowStateTCPEst}
		if err := f.nat.objs.FlowsFwd.Update(&key, &val, ebpf.UpdateAny); err != nil {
			b.Fatal(err)
		}
	}
}

// pingPongRev makes two pool endpoints each other's reverse mapping.
func pingPongRev(b *testing.B, f *natFixture, proto uint8, p, q netip.AddrPort) {
	b.Helper()
	for _, pair := range [][2]netip.AddrPort{{p, q}, {q, p}} {
		key := FlowKey{Addr: be32(pair[0].Addr()), Port: htons(pair[0].Port()), Proto: proto}
		val := FlowRev{Addr: be32(pair[1].Addr()), Port: htons(pair[1].Port())}
		if err := f.nat.objs.FlowsRev.Update(&key, &val, ebpf.UpdateAny); err != nil {
			b.Fatal(err)
		}
	}
}

// assertOnlyTranslated fails the benchmark if any run took another path
// than the one measured.
func assertOnlyTranslated(b *testing.B, f *natFixture, counter string) {
	b.Helper()
	st := f.stats()
	for name, v := range st {
		switch name {
		case counter, "out_bytes", "in_bytes":
			continue
		}
		if v != 0 {
			b.Fatalf("%s = %d during the benchmark: some runs missed the established path (%v)", name, v, st)
		}
	}
	if st[counter] == 0 {
		b.Fatalf("%s = 0: nothing was translated", counter)
	}
}

package loader

import (
	"encoding/binary"
	"net/netip"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/google/gopacket/layers"
)

// runsPerCall is how often BPF_PROG_TEST_RUN repeats the program on one
// copy of the frame. The frame keeps each run's rewrite and loses one TTL
// per run, so a call starts at TTL 255 and stays well above 1.
const runsPerCall = 200

// BenchmarkXDP measures the per-packet cost of every path a packet can
// take through the NAT against the floor of running any XDP program at all
// (xdp_pass, loaded in the same process) and against forwarding without
// translation (xdp_forward).
//
// A repeated run sees the frame as the previous run left it, so a naive
// loop would measure the spoofed-source or no-mapping drop path after the
// first run. Each case therefore makes its path the one every run takes,
// and asserts afterwards, from the stats, that no run took another:
//   - established: a ping-pong pair of mappings, A -> B and B -> A (for
//     inbound, two pool endpoints pointing at each other), so every run
//     takes the full established path;
//   - new flow: a small program in front of the NAT gives each run a fresh
//     source (see newFlowWrapper), and the flow tables are emptied between
//     calls;
//   - drops: a dropped frame is left as it came, so every run repeats the
//     drop.
//
// side-by-side runs pass, forward-only and every established case in turn
// within each iteration (A B C A B C ...), so their ratios come from
// measurements taken moments apart on this shared machine.
func BenchmarkXDP(b *testing.B) {
	f := defaultFixture(b)
	var base baselineObjects
	if err := loadBaselineObjects(&base, nil); err != nil {
		b.Fatal(err)
	}
	defer base.Close()
	f.ns.do(b, func() {
		out0 := uint32(f.ns.ifs["out0"])
		if err := base.TxPorts.Update(&out0, &out0, ebpf.UpdateAny); err != nil {
			b.Fatal(err)
		}
	})

	b.Run("pass", func(b *testing.B) {
		benchProg(b, f, base.XdpPass, passFrame(b), xdpPass)
	})
	b.Run("forward-only", func(b *testing.B) {
		benchProg(b, f, base.XdpForward, forwardFrame(b), xdpRedirect)
	})

	for _, c := range establishedCases() {
		b.Run("established-"+c.name, func(b *testing.B) {
			f.t = b
			f.reset()
			c.setup(b, f)
			benchProg(b, f, c.prog(f), c.frame(b), xdpRedirect)
			assertOnly(b, f, c.counter)
		})
	}

	b.Run("new-flow-out", func(b *testing.B) {
		f.t = b
		f.reset()
		benchNewFlow(b, f, base.XdpPass)
	})

	b.Run("drop-spoofed-out", func(b *testing.B) {
		f.t = b
		f.reset()
		frame := pkt{proto: layers.IPProtocolUDP, src: "10.99.0.1:40000", dst: server + ":443", ttl: 255, payload: make([]byte, 18)}.build(b)
		benchProg(b, f, f.nat.objs.XdpInside, frame, xdpDrop)
		assertOnly(b, f, "drop_spoofed")
	})
	b.Run("drop-no-mapping-in", func(b *testing.B) {
		f.t = b
		f.reset()
		frame := pkt{proto: layers.IPProtocolUDP, src: server + ":443", dst: "198.51.100.10:2100", ttl: 255, payload: make([]byte, 18)}.build(b)
		benchProg(b, f, f.nat.objs.XdpOutside, frame, xdpDrop)
		assertOnly(b, f, "drop_no_mapping")
	})

	b.Run("side-by-side", func(b *testing.B) {
		f.t = b
		f.reset()
		benchSideBySide(b, f, base)
	})
}

func passFrame(b *testing.B) []byte { return udpOut(sub2+":40000", server+":7000").build(b) }

func forwardFrame(b *testing.B) []byte {
	return pkt{proto: layers.IPProtocolUDP, src: sub2 + ":40000", dst: server + ":443", ttl: 255, payload: make([]byte, 18)}.build(b)
}

// establishedCase is one protocol and direction of the established path.
type establishedCase struct {
	name    string
	counter string // the only stat (besides bytes) its runs may raise
	setup   func(b *testing.B, f *natFixture)
	frame   func(b *testing.B) []byte
	prog    func(f *natFixture) *ebpf.Program
}

func establishedCases() []establishedCase {
	type proto struct {
		name string
		p    layers.IPProtocol
		icmp uint8
	}
	a, c := netip.MustParseAddrPort(sub2+":40000"), netip.MustParseAddrPort("100.64.0.3:40001")
	p, q := netip.MustParseAddrPort("198.51.100.10:2100"), netip.MustParseAddrPort("198.51.100.11:2200")
	var cases []establishedCase
	for _, pr := range []proto{{"udp", layers.IPProtocolUDP, 0}, {"tcp", layers.IPProtocolTCP, 0}, {"icmp", layers.IPProtocolICMPv4, layers.ICMPv4TypeEchoRequest}} {
		cases = append(cases, establishedCase{
			name:    pr.name + "-out",
			counter: "out_packets",
			setup:   func(b *testing.B, f *natFixture) { pingPongFwd(b, f, uint8(pr.p), a, c) },
			frame: func(b *testing.B) []byte {
				return pkt{proto: pr.p, src: a.String(), dst: server + ":443", ttl: 255, tcpFlags: "A", icmpType: pr.icmp, payload: make([]byte, 18)}.build(b)
			},
			prog: func(f *natFixture) *ebpf.Program { return f.nat.objs.XdpInside },
		})
		icmp := pr.icmp
		if icmp != 0 {
			icmp = layers.ICMPv4TypeEchoReply
		}
		cases = append(cases, establishedCase{
			name:    pr.name + "-in",
			counter: "in_packets",
			setup:   func(b *testing.B, f *natFixture) { pingPongRev(b, f, uint8(pr.p), p, q) },
			frame: func(b *testing.B) []byte {
				return pkt{proto: pr.p, src: server + ":443", dst: p.String(), ttl: 255, tcpFlags: "A", icmpType: icmp, payload: make([]byte, 18)}.build(b)
			},
			prog: func(f *natFixture) *ebpf.Program { return f.nat.objs.XdpOutside },
		})
	}
	return cases
}

// benchProg reports the kernel-measured ns per run, excluding the syscall.
func benchProg(b *testing.B, f *natFixture, prog *ebpf.Program, frame []byte, want uint32) {
	b.Helper()
	var total float64
	calls := 0
	f.ns.do(b, func() {
		b.ResetTimer()
		for i := 0; i < b.N; i++ {
			total += runCall(b, prog, frame, want)
			calls++
		}
	})
	b.ReportMetric(total/float64(calls), "ns/pkt")
}

// runCall runs prog runsPerCall times on one copy of frame, checks the
// verdict of the last run, and returns the kernel's ns per run.
func runCall(b *testing.B, prog *ebpf.Program, frame []byte, want uint32) float64 {
	b.Helper()
	ret, d, err := prog.Benchmark(frame, runsPerCall, nil)
	if err != nil {
		b.Fatal(err)
	}
	if ret != want {
		b.Fatalf("verdict %s, want %s", actionNames[ret], actionNames[want])
	}
	return float64(d.Nanoseconds())
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

// assertOnly fails the benchmark if any run took another path than the
// one measured: every counter but the named ones (and byte counts) must be
// zero, and the first named one must have moved.
func assertOnly(b *testing.B, f *natFixture, counters ...string) {
	b.Helper()
	st := f.stats()
	allowed := map[string]bool{"out_bytes": true, "in_bytes": true}
	for _, c := range counters {
		allowed[c] = true
	}
	for name, v := range st {
		if !allowed[name] && v != 0 {
			b.Fatalf("%s = %d during the benchmark: some runs missed the measured path (%v)", name, v, st)
		}
	}
	if st[counters[0]] == 0 {
		b.Fatalf("%s = 0: no run took the measured path", counters[0])
	}
}

// newFlowSubscribers is how many subscribers the new-flow case spreads its
// runs over; with one new flow per subscriber per call, the first port
// probed is free, as it is for a subscriber with a few flows open.
const newFlowSubscribers = 200

// newFlowWrapper returns an XDP program that gives each run's frame a new
// source, then tail-calls the program in slot 0 of progs. Run n's frame
// comes from subscriber address first + n % subscribers and port
// 1024 + (n / subscribers) % 60000, with n counted in counter. It writes
// only the address and port the NAT reads; the checksums it leaves stale
// are never verified on this path, only updated.
func newFlowWrapper(b *testing.B, progs, counter *ebpf.Map, first netip.Addr) *ebpf.Program {
	b.Helper()
	firstHost := binary.BigEndian.Uint32(first.AsSlice())
	const (
		ethLen    = 14
		saddrOff  = ethLen + 12
		sportOff  = ethLen + 20
		needBytes = sportOff + 4
	)
	insns := asm.Instructions{
		asm.Mov.Reg(asm.R6, asm.R1),
		asm.LoadMem(asm.R7, asm.R1, 0, asm.Word), // data
		asm.LoadMem(asm.R3, asm.R1, 4, asm.Word), // data_end
		asm.Mov.Reg(asm.R4, asm.R7),
		asm.Add.Imm(asm.R4, needBytes),
		asm.JGT.Reg(asm.R4, asm.R3, "abort"),
		asm.StoreImm(asm.RFP, -4, 0, asm.Word),
		asm.Mov.Reg(asm.R2, asm.RFP),
		asm.Add.Imm(asm.R2, -4),
		asm.LoadMapPtr(asm.R1, counter.FD()),
		asm.FnMapLookupElem.Call(),
		asm.JEq.Imm(asm.R0, 0, "abort"),
		asm.LoadMem(asm.R8, asm.R0, 0, asm.Word),
		asm.Mov.Reg(asm.R9, asm.R8),
		asm.Add.Imm(asm.R9, 1),
		asm.StoreMem(asm.R0, 0, asm.R9, asm.Word),
		asm.Mov.Reg32(asm.R1, asm.R8),
		asm.Mod.Imm32(asm.R1, newFlowSubscribers),
		asm.Add.Imm32(asm.R1, int32(firstHost)),
		asm.HostTo(asm.BE, asm.R1, asm.Word),
		asm.StoreMem(asm.R7, saddrOff, asm.R1, asm.Word),
		asm.Mov.Reg32(asm.R2, asm.R8),
		asm.Div.Imm32(asm.R2, newFlowSubscribers),
		asm.Mod.Imm32(asm.R2, 60000),
		asm.Add.Imm32(asm.R2, 1024),
		asm.HostTo(asm.BE, asm.R2, asm.Half),
		asm.StoreMem(asm.R7, sportOff, asm.R2, asm.Half),
		asm.Mov.Reg(asm.R1, asm.R6),
		asm.LoadMapPtr(asm.R2, progs.FD()),
		asm.Mov.Imm(asm.R3, 0),
		asm.FnTailCall.Call(),
		asm.Mov.Imm(asm.R0, xdpAborted).WithSymbol("abort"),
		asm.Return(),
	}
	// The kernel lets a program array hold only programs of its owner's
	// attach type, and the NAT's programs are loaded as BPF_XDP.
	prog, err := ebpf.NewProgram(&ebpf.ProgramSpec{Name: "new_flow_wrap", Type: ebpf.XDP, AttachType: ebpf.AttachXDP, Instructions: insns, License: "Dual MIT/GPL"})
	if err != nil {
		b.Fatalf("load new-flow wrapper: %+v", err)
	}
	return prog
}

// benchNewFlow measures the new-flow path of an active subscriber's block:
// prefix lookup, random start, reverse entry claimed with BPF_NOEXIST,
// forward entry, then translation and forwarding. Each iteration runs the
// wrapper in front of the NAT, and then in front of xdp_pass, so the
// wrapper's own cost is measured alongside and taken out:
// ns/pkt = wrapped NAT - wrapped pass + pass.
func benchNewFlow(b *testing.B, f *natFixture, pass *ebpf.Program) {
	progs, err := ebpf.NewMap(&ebpf.MapSpec{Type: ebpf.ProgramArray, KeySize: 4, ValueSize: 4, MaxEntries: 1})
	if err != nil {
		b.Fatal(err)
	}
	defer progs.Close()
	counter, err := ebpf.NewMap(&ebpf.MapSpec{Type: ebpf.Array, KeySize: 4, ValueSize: 4, MaxEntries: 1})
	if err != nil {
		b.Fatal(err)
	}
	defer counter.Close()
	wrapper := newFlowWrapper(b, progs, counter, netip.MustParseAddr("100.64.0.10"))
	defer wrapper.Close()
	setSlot := func(p *ebpf.Program) {
		if err := progs.Update(uint32(0), p, ebpf.UpdateAny); err != nil {
			b.Fatalf("prog array: %v", err)
		}
	}
	frame := forwardFrame(b)
	var nat, wrappedPass, direct float64
	calls := 0
	f.ns.do(b, func() {
		// The first call activates every subscriber's block; from then
		// on every run is a new flow in an active block.
		setSlot(f.nat.objs.XdpInside)
		runCall(b, wrapper, frame, xdpRedirect)
		clearFlows(b, f)
		if err := f.nat.ResetStats(); err != nil {
			b.Fatal(err)
		}
		b.ResetTimer()
		for i := 0; i < b.N; i++ {
			setSlot(f.nat.objs.XdpInside)
			nat += runCall(b, wrapper, frame, xdpRedirect)
			b.StopTimer()
			clearFlows(b, f)
			b.StartTimer()
			setSlot(pass)
			wrappedPass += runCall(b, wrapper, frame, xdpPass)
			direct += runCall(b, pass, frame, xdpPass)
			calls++
		}
	})
	n := float64(calls)
	b.ReportMetric((nat-wrappedPass+direct)/n, "ns/pkt")
	b.ReportMetric(nat/n, "wrapped-ns/pkt")
	b.ReportMetric(wrappedPass/n, "wrapper-ns/pkt")
	st := f.stats()
	if st["new_flows"] != st["out_packets"] {
		b.Fatalf("%d new flows for %d translated packets: some runs found an existing mapping (%v)", st["new_flows"], st["out_packets"], st)
	}
	assertOnly(b, f, "out_packets", "new_flows")
}

// clearFlows empties both flow tables (but not the subscribers' state).
func clearFlows(b *testing.B, f *natFixture) {
	b.Helper()
	for _, m := range []*ebpf.Map{f.nat.objs.FlowsFwd, f.nat.objs.FlowsRev} {
		var keys []FlowKey
		var k FlowKey
		it := m.Iterate()
		var v []byte
		for it.Next(&k, &v) {
			keys = append(keys, k)
		}
		if err := it.Err(); err != nil {
			b.Fatal(err)
		}
		if len(keys) == 0 {
			continue
		}
		if _, err := m.BatchDelete(keys, nil); err != nil {
			b.Fatalf("clear flows: %v", err)
		}
	}
}

// benchSideBySide runs pass, forward-only and every established case once
// per iteration, interleaved, and reports each one's ns per packet and the
// worst established case's ratio to pass and to forward-only.
func benchSideBySide(b *testing.B, f *natFixture, base baselineObjects) {
	type entry struct {
		name  string
		prog  *ebpf.Program
		frame []byte
		want  uint32
		total float64
	}
	entries := []*entry{
		{name: "pass", prog: base.XdpPass, frame: passFrame(b), want: xdpPass},
		{name: "fwd", prog: base.XdpForward, frame: forwardFrame(b), want: xdpRedirect},
	}
	for _, c := range establishedCases() {
		c.setup(b, f)
		entries = append(entries, &entry{name: c.name, prog: c.prog(f), frame: c.frame(b), want: xdpRedirect})
	}
	calls := 0
	f.ns.do(b, func() {
		b.ResetTimer()
		for i := 0; i < b.N; i++ {
			for _, e := range entries {
				e.total += runCall(b, e.prog, e.frame, e.want)
			}
			calls++
		}
	})
	var pass, fwd, worst float64
	for _, e := range entries {
		ns := e.total / float64(calls)
		b.ReportMetric(ns, e.name+"-ns/pkt")
		switch e.name {
		case "pass":
			pass = ns
		case "fwd":
			fwd = ns
		default:
			worst = max(worst, ns)
		}
	}
	b.ReportMetric(worst/pass, "worst-established/pass")
	b.ReportMetric(worst/fwd, "worst-established/fwd")
	assertOnly(b, f, "out_packets", "in_packets")
	if st := f.stats(); st["in_packets"] == 0 {
		b.Fatalf("in_packets = 0: no inbound run was translated (%v)", st)
	}
}

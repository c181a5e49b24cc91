package loader

import (
	"net/netip"
	"testing"
)

// BenchmarkOverflow prices overflow blocks side by side, within each
// iteration, one run of the inside program per case (the flow tables are
// put back between runs, outside the measured time): a new flow in the
// subscriber's own block; a new flow that claims an overflow block (its own
// block full, none held); a new flow in an overflow block it holds; and an
// established flow. Each run is timed by the kernel alone.
func BenchmarkOverflow(b *testing.B) {
	f := overflowFixture(b, 2)
	f.t = b
	frame := func(port uint16) []byte {
		return udpOut(netip.AddrPortFrom(netip.MustParseAddr(sub2), port).String(), server+":7000").build(b)
	}
	frames := make([][]byte, 6)
	for i := range frames {
		frames[i] = frame(uint16(40000 + i))
	}
	once := func(fr []byte) float64 {
		b.Helper()
		ret, d, err := f.nat.objs.XdpInside.Benchmark(fr, 1, nil)
		if err != nil || ret != xdpRedirect {
			b.Fatalf("run: %s, %v", actionNames[ret], err)
		}
		return float64(d.Nanoseconds())
	}
	reset := func() {
		b.Helper()
		clearFlows(b, f)
		held, err := f.nat.OverflowBlocks()
		if err != nil {
			b.Fatal(err)
		}
		for _, h := range held {
			if err := f.nat.FreeOverflow(h.ID, h.Subscriber); err != nil {
				b.Fatal(err)
			}
		}
	}
	var own, claim, inHeld, established float64
	f.ns.do(b, func() {
		b.ResetTimer()
		for i := 0; i < b.N; i++ {
			b.StopTimer()
			reset()
			b.StartTimer()
			own += once(frames[0])
			established += once(frames[0])
			b.StopTimer()
			for _, fr := range frames[1:4] { // the own block's other three ports
				once(fr)
			}
			b.StartTimer()
			claim += once(frames[4])
			inHeld += once(frames[5])
		}
	})
	n := float64(b.N)
	b.ReportMetric(own/n, "new-own-ns/pkt")
	b.ReportMetric(claim/n, "new-claim-ns/pkt")
	b.ReportMetric(inHeld/n, "new-in-held-ns/pkt")
	b.ReportMetric(established/n, "established-ns/pkt")
	b.ReportMetric(claim/own, "claim/new-own")
	b.ReportMetric(claim/established, "claim/established")
	if st := f.stats(); st["overflow_claims"] < uint64(b.N) {
		b.Fatalf("%d claims in %d iterations: a case did not take its path (%v)", st["overflow_claims"], b.N, st)
	}
}

package loader

import (
	"testing"

	"github.com/google/gopacket/layers"
)

// BenchmarkExempt prices NAT exemption side by side, within each
// iteration: the established outbound UDP path of a NAT without
// exemptions and of one with a nat_exempt destination and an inside.public
// prefix configured (what the exempt step costs every translated packet),
// a subscriber's packet to the exempt destination, and a packet from a
// public address. Both NATs run in one namespace, on the same interfaces.
func BenchmarkExempt(b *testing.B) {
	plain := defaultFixture(b)
	nat, err := Load(Params{Mapping: plain.m, Epoch: 7, Exempt: exemptPrefixes, PublicInside: publicPrefixes}, "")
	if err != nil {
		b.Fatal(err)
	}
	defer nat.Close()
	exempting := fixtureOn(b, plain.ns, nat, plain.m)

	udp := establishedCases()[0]
	if udp.name != "udp-out" {
		b.Fatalf("first established case is %s, want udp-out", udp.name)
	}
	type entry struct {
		name  string
		f     *natFixture
		frame []byte
		total float64
	}
	entries := []*entry{
		{name: "established-udp-out", f: plain, frame: udp.frame(b)},
		{name: "established-udp-out-exemptions-on", f: exempting, frame: udp.frame(b)},
		{name: "exempt-out", f: exempting,
			frame: pkt{proto: layers.IPProtocolUDP, src: sub2 + ":40000", dst: resolver + ":53", ttl: 255, payload: make([]byte, 18)}.build(b)},
		{name: "public-out", f: exempting,
			frame: pkt{proto: layers.IPProtocolUDP, src: publicHost + ":40000", dst: server + ":443", ttl: 255, payload: make([]byte, 18)}.build(b)},
	}
	for _, f := range []*natFixture{plain, exempting} {
		f.t = b
		f.reset()
		udp.setup(b, f)
	}
	calls := 0
	plain.ns.do(b, func() {
		b.ResetTimer()
		for i := 0; i < b.N; i++ {
			for _, e := range entries {
				e.total += runCall(b, e.f.nat.objs.XdpInside, e.frame, xdpRedirect)
			}
			calls++
		}
	})
	ns := map[string]float64{}
	for _, e := range entries {
		ns[e.name] = e.total / float64(calls)
		b.ReportMetric(ns[e.name], e.name+"-ns/pkt")
	}
	b.ReportMetric(ns["exempt-out"]/ns["established-udp-out"], "exempt/established")
	b.ReportMetric(ns["established-udp-out-exemptions-on"]/ns["established-udp-out"], "established-exemptions-on/off")
	assertOnly(b, plain, "out_packets")
	if st := exempting.stats(); st["exempt_out"] == 0 || st["public_out"] == 0 || st["out_packets"] == 0 {
		b.Fatalf("the exempting NAT's counters %v: a case did not take its path", st)
	}
}

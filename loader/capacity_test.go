package loader

import (
	"net/netip"
	"testing"

	"github.com/google/gopacket/layers"

	"github.com/blocknat/blocknat/userspace/mapping"
)

// TestQuietSubscriberKeepsItsCapacity: the flow tables are sized from the
// mapping, so with every other subscriber's block full in TCP, UDP and ICMP
// (the table as full as they can make it), a quiet subscriber still gets
// new TCP, UDP and ICMP mappings, up to its whole block in each; and the
// tables then hold exactly FlowsNeeded entries, none refused.
func TestQuietSubscriberKeepsItsCapacity(t *testing.T) {
	// 8 subscribers on one address, 8 ports each.
	f := newFixture(t, []string{"100.64.0.0/29"}, []string{"198.51.100.10"}, 1024, 1087, 0)
	if f.m.Subscribers != 8 || f.m.BlockSize != 8 {
		t.Fatalf("fixture: %d subscribers, %d ports a block; want 8 and 8", f.m.Subscribers, f.m.BlockSize)
	}
	need := f.m.FlowsNeeded()
	if got := f.nat.objs.FlowsFwd.MaxEntries(); uint64(got) != need || need != 8*8*3 {
		t.Fatalf("flows_fwd holds %d, want %d (8 subscribers × 8 ports × 3 protocols)", got, need)
	}
	quiet := netip.MustParseAddr("100.64.0.5")
	open := func(inside netip.Addr, proto layers.IPProtocol, port uint16) uint32 {
		p := pkt{proto: proto, src: netip.AddrPortFrom(inside, port).String(), dst: server + ":443", tcpFlags: "S"}
		if proto == layers.IPProtocolICMPv4 {
			p.icmpType, p.dst = layers.ICMPv4TypeEchoRequest, server+":0"
		}
		act, _ := f.outbound(p.build(t))
		return act
	}
	protos := []layers.IPProtocol{layers.IPProtocolTCP, layers.IPProtocolUDP, layers.IPProtocolICMPv4}
	for sub := 0; sub < 8; sub++ {
		inside := netip.AddrFrom4([4]byte{100, 64, 0, byte(sub)})
		if inside == quiet {
			continue
		}
		for _, proto := range protos {
			// Twice the block: the second half is refused by the block,
			// never by the table.
			for i := 0; i < 16; i++ {
				act := open(inside, proto, uint16(30000+i))
				if want := map[bool]uint32{true: xdpRedirect, false: xdpDrop}[i < 8]; act != want && !(i == 8 && act == xdpRedirect) {
					t.Fatalf("%s %v flow %d: %s", inside, proto, i, actionNames[act])
				}
			}
		}
	}
	st := f.stats()
	if st["drop_flow_table"] != 0 || st["new_flows"] != 7*8*3 {
		t.Fatalf("after the others filled their blocks: new_flows %d, drop_flow_table %d; want %d and 0", st["new_flows"], st["drop_flow_table"], 7*8*3)
	}
	for _, proto := range protos {
		for i := 0; i < 8; i++ {
			if act := open(quiet, proto, uint16(40000+i)); act != xdpRedirect {
				t.Fatalf("quiet subscriber's %v flow %d with the others' blocks full: %s (stats %v)", proto, i+1, actionNames[act], f.stats())
			}
		}
	}
	if fwd, rev := f.flowCount(); uint64(fwd) != need || uint64(rev) != need {
		t.Errorf("tables hold fwd=%d rev=%d, want both full at %d", fwd, rev, need)
	}
	if got := f.stats()["drop_flow_table"]; got != 0 {
		t.Errorf("drop_flow_table = %d: the table refused a flow a block had room for", got)
	}
}

// TestMaxFlowsTooSmallRefused: a table that the mapping could fill is
// refused at load, naming the numbers.
func TestMaxFlowsTooSmallRefused(t *testing.T) {
	requirePrivileged(t)
	m := newFixtureMapping(t, []string{"100.64.0.0/24"}, []string{"198.51.100.10/31"})
	_, err := Load(Params{Mapping: m, MaxFlows: 262144}, "")
	if err == nil || err.Error() != "max_flows: 262144 cannot hold 256 subscribers × 504 ports × 3 protocols = 387072" {
		t.Fatalf("Load with max_flows 262144: %v", err)
	}
	nat, err := Load(Params{Mapping: m, MaxFlows: 387072}, "")
	if err != nil {
		t.Fatalf("Load with exactly enough: %v", err)
	}
	nat.Close()
}

func newFixtureMapping(t *testing.T, prefixes, pool []string) *mapping.Mapping {
	t.Helper()
	m, err := mapping.New(prefixesOf(t, prefixes), prefixesOf(t, pool), 1024, 65535, 0)
	if err != nil {
		t.Fatal(err)
	}
	return m
}

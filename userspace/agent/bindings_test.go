package agent

import (
	"net"
	"net/netip"
	"testing"

	"github.com/blocknat/blocknat/userspace/store"
)

func TestSourceBindings(t *testing.T) {
	a, b, c := netip.MustParseAddr("100.64.0.10"), netip.MustParseAddr("100.64.0.11"), netip.MustParseAddr("100.64.0.12")
	staticMAC := net.HardwareAddr{2, 0, 0, 0, 0, 1}
	leaseMAC := net.HardwareAddr{2, 0, 0, 0, 0, 2}
	table, conflicts := sourceBindings(map[netip.Addr]net.HardwareAddr{a: staticMAC}, []store.Lease{
		{Inside: a, MAC: leaseMAC}, // a lease of a statically bound address to someone else
		{Inside: b, MAC: leaseMAC},
		{Inside: c, MAC: net.HardwareAddr{1, 2, 3, 4, 5, 6, 7, 8}}, // not Ethernet
	})
	if conflicts != 1 || len(table) != 2 || table[a].String() != staticMAC.String() || table[b].String() != leaseMAC.String() {
		t.Errorf("table %v, %d conflicts", table, conflicts)
	}
}

package agent

import (
	"log/slog"
	"net"
	"net/netip"
	"sync"

	"github.com/blocknat/blocknat/userspace/logattr"
	"github.com/blocknat/blocknat/userspace/store"
)

// sourceBindings is the data plane's address→MAC table: the configuration's
// static bindings and the DHCP leases held now. A static binding wins over a
// lease of the same address (the DHCP server was told to hand out an
// address someone owns), and the conflict is counted for the log.
func sourceBindings(static map[netip.Addr]net.HardwareAddr, leases []store.Lease) (table map[netip.Addr]net.HardwareAddr, conflicts int) {
	table = make(map[netip.Addr]net.HardwareAddr, len(static)+len(leases))
	for a, mac := range static {
		table[a] = mac
	}
	for _, l := range leases {
		if len(l.MAC) != 6 {
			// Only Ethernet frames carry a source MAC the data plane can
			// compare; leasehook refuses other hardware types.
			continue
		}
		if mac, ok := static[l.Inside]; ok {
			if mac.String() != l.MAC.String() {
				conflicts++
			}
			continue
		}
		table[l.Inside] = l.MAC
	}
	return table, conflicts
}

// binder keeps the data plane's bindings in step with the lease history:
// after every lease request, and on the maintenance tick for leases that
// expired without a release.
type binder struct {
	mu     sync.Mutex
	static map[netip.Addr]net.HardwareAddr
	leases func() ([]store.Lease, error)
	set    func(map[netip.Addr]net.HardwareAddr) error
	log    *slog.Logger
	// failing is the last error, so that a persistent one is logged once.
	failing string
}

// sync replaces the data plane's table. It never names an address in the
// log: the bindings are lease history.
func (b *binder) sync() {
	b.mu.Lock()
	defer b.mu.Unlock()
	leases, err := b.leases()
	if err == nil {
		table, conflicts := sourceBindings(b.static, leases)
		if conflicts > 0 {
			b.log.Warn("leases of statically bound addresses to other MACs ignored", logattr.Count, conflicts)
		}
		err = b.set(table)
	}
	if err != nil {
		if err.Error() != b.failing {
			b.log.Error("source bindings not updated; the data plane keeps the previous ones", logattr.Err, err)
		}
		b.failing = err.Error()
		return
	}
	b.failing = ""
}

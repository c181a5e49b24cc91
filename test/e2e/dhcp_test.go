package e2e

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"testing"
	"time"

	"github.com/blocknat/blocknat/test/netns"
	"github.com/blocknat/blocknat/test/testutil"
)

// The DHCP server's range: inside the inside prefix and clear of the
// topology's static subscriber addresses.
var (
	dhcpRangeLo = netip.MustParseAddr("100.64.0.100")
	dhcpRangeHi = netip.MustParseAddr("100.64.0.150")
)

// TestDHCPServedWithNATAttached: a router serving DHCP on an inside
// interface still hands out leases while blocknat is attached. The real
// client's DHCPDISCOVER and DHCPREQUEST come from 0.0.0.0 to
// 255.255.255.255; the route for that destination points out of the
// outside interface, yet they must reach the router's own server, be
// counted as local service rather than spoofing, and create no mapping and
// no block record.
func TestDHCPServedWithNATAttached(t *testing.T) {
	netns.RequireTools(t, "dnsmasq", "dhclient")
	e := startEnv(t, "bn-e2edhcp")
	ctx := t.Context()
	sub := e.topo.Subscribers[0]
	// A client as it boots, with no address: nothing it sends can pass
	// for a subscriber's traffic.
	if _, err := sub.NS.Exec(ctx, "ip", "addr", "flush", "dev", sub.Iface); err != nil {
		t.Fatal(err)
	}

	dir := t.TempDir()
	startDnsmasq(t, e, dir)

	leases := filepath.Join(dir, "dhclient.leases")
	lease, log := runDhclient(t, sub, dir, leases, 30*time.Second)
	if !lease.IsValid() {
		t.Fatalf("dhclient wrote no lease to %s; its log:\n%s", leases, log)
	}
	if lease.Less(dhcpRangeLo) || dhcpRangeHi.Less(lease) {
		t.Errorf("leased %s, want an address in %s-%s", lease, dhcpRangeLo, dhcpRangeHi)
	}

	st := e.stats(t)
	t.Logf("leased %s; pass_local_service = %d", lease, st["pass_local_service"])
	// At least the DHCPDISCOVER and the DHCPREQUEST.
	if st["pass_local_service"] < 2 {
		t.Errorf("pass_local_service = %d, want >= 2 (%v)", st["pass_local_service"], st)
	}
	for _, name := range []string{"drop_spoofed", "new_flows", "block_activations", "out_packets"} {
		if st[name] != 0 {
			t.Errorf("%s = %d after a DHCP exchange, want 0 (%v)", name, st[name], st)
		}
	}
	if active := e.activeInKernel(t); len(active) != 0 {
		t.Errorf("subscribers %v active in the kernel after a DHCP exchange", active)
	}
	if err := e.agent.Stop(); err != nil {
		t.Fatalf("stop blocknatd: %v\n%s", err, e.agent.Log())
	}
	open, err := e.openStore(t).OpenRecords()
	if err != nil {
		t.Fatal(err)
	}
	if len(open) != 0 {
		t.Errorf("DHCP exchange left block records: %+v", open)
	}
}

// startDnsmasq runs dnsmasq as the router's DHCP server on the first
// subscriber's link, DHCP only, and waits until it serves.
func startDnsmasq(t *testing.T, e *env, dir string) {
	t.Helper()
	// The router's side of the link is a /32 with a peer, so the range
	// names its netmask: dnsmasq would find none on the interface.
	startDaemonLogged(t, e, "dnsmasq", nil, "DHCP, IP range",
		"dnsmasq", "--keep-in-foreground", "--conf-file=/dev/null", "--port=0", "--log-facility=-", "--log-dhcp",
		"--interface="+e.topo.InsideIfaces[0], "--bind-interfaces",
		fmt.Sprintf("--dhcp-range=%s,%s,255.255.255.0,2m", dhcpRangeLo, dhcpRangeHi),
		"--dhcp-authoritative",
		"--dhcp-leasefile="+filepath.Join(dir, "dnsmasq.leases"),
		"--pid-file="+filepath.Join(dir, "dnsmasq.pid"))
}

var leasedAddr = regexp.MustCompile(`fixed-address\s+([0-9.]+);`)

// runDhclient runs ISC dhclient on the subscriber's interface until it has
// written a lease, and returns the leased address (invalid if none came
// within timeout) and its log. -sf /bin/true keeps the lease from
// configuring anything: the test reads it from the lease file.
func runDhclient(t *testing.T, sub *netns.Subscriber, dir, leases string, timeout time.Duration) (netip.Addr, string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), timeout)
	defer cancel()
	log := &testutil.Buffer{}
	// -d: stay in the foreground once bound, so the test owns the only
	// process and ends it; -1: give up rather than retry for ever.
	cmd := sub.NS.Command(ctx, "dhclient", "-4", "-1", "-d", "-v", "-cf", "/dev/null", "-sf", "/bin/true",
		"-lf", leases, "-pf", filepath.Join(dir, "dhclient.pid"), sub.Iface)
	cmd.Stdout, cmd.Stderr = log, log
	if err := cmd.Start(); err != nil {
		t.Fatalf("start dhclient: %v", err)
	}
	done := make(chan struct{})
	go func() {
		cmd.Wait()
		close(done)
	}()
	defer func() {
		cmd.Process.Kill()
		<-done
	}()
	for {
		if b, err := os.ReadFile(leases); err == nil {
			if m := leasedAddr.FindSubmatch(b); m != nil {
				a, err := netip.ParseAddr(string(m[1]))
				if err != nil {
					t.Fatalf("lease file: %v\n%s", err, b)
				}
				return a, log.String()
			}
		}
		select {
		case <-done:
			return netip.Addr{}, log.String()
		case <-ctx.Done():
			return netip.Addr{}, log.String()
		case <-time.After(50 * time.Millisecond):
		}
	}
}

package e2e

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"net/netip"
	"regexp"
	"strconv"
	"testing"
	"time"

	"github.com/blocknat/blocknat/test/netns"
	"github.com/blocknat/blocknat/userspace/wire"
)

// pcpStatus reads the agent's PCP figures through the real CLI.
func (e *env) pcpStatus(t *testing.T) wire.PCPStatus {
	t.Helper()
	st := e.agentStatus(t)
	if st.PCP == nil {
		t.Fatalf("status shows no PCP server")
	}
	return *st.PCP
}

var (
	natpmpcPublic = regexp.MustCompile(`Public IP address : ([0-9.]+)`)
	// natpmpc has spelt "lifetime" "liftime" for years.
	natpmpcMapped = regexp.MustCompile(`Mapped public port (\d+) protocol (\w+) to local port (\d+) lif(?:e)?time (\d+)`)
)

// natpmpc runs Debian's NAT-PMP client in the subscriber's namespace,
// against the router's address on its link.
func natpmpc(t *testing.T, sub *netns.Subscriber, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	out, err := sub.NS.Exec(ctx, append([]string{"natpmpc", "-g", sub.Gateway.String()}, args...)...)
	if err != nil {
		t.Fatalf("natpmpc %v: %v\n%s", args, err, out)
	}
	return string(out)
}

// natpmpcMap asks for a mapping and returns the public port granted and
// the lifetime.
func natpmpcMap(t *testing.T, sub *netns.Subscriber, public, private uint16, proto string, lifetime int) (uint16, int) {
	t.Helper()
	out := natpmpc(t, sub, "-a", strconv.Itoa(int(public)), strconv.Itoa(int(private)), proto, strconv.Itoa(lifetime))
	m := natpmpcMapped.FindStringSubmatch(out)
	if m == nil {
		t.Fatalf("natpmpc -a %d %d %s %d: no mapping in its output:\n%s", public, private, proto, lifetime, out)
	}
	port, _ := strconv.Atoi(m[1])
	life, _ := strconv.Atoi(m[4])
	if local, _ := strconv.Atoi(m[3]); local != int(private) {
		t.Fatalf("natpmpc: mapped to local port %d, asked %d:\n%s", local, private, out)
	}
	return uint16(port), life
}

// tcpEchoFrom dials to from the namespace and says whether a line came
// back.
func tcpEchoFrom(ns *netns.NS, to netip.AddrPort, timeout time.Duration) error {
	return ns.Do(func() error {
		c, err := net.DialTimeout("tcp4", to.String(), timeout)
		if err != nil {
			return err
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(timeout))
		if _, err := fmt.Fprintln(c, "hello through a PCP mapping"); err != nil {
			return err
		}
		line, err := bufio.NewReader(c).ReadString('\n')
		if err != nil {
			return err
		}
		if line != "hello through a PCP mapping\n" {
			return fmt.Errorf("echo %q", line)
		}
		return nil
	})
}

// TestPCPWithNatpmpc: Debian's natpmpc, from a subscriber, learns the
// subscriber's own public address, maps a TCP and a UDP port (the
// suggested TCP port honoured, both inside the subscriber's block), and a
// client in the internet namespace reaches the servers behind them. The
// mapping activated the block, so a lookup of the public port names the
// subscriber; status counts the mappings; a deletion closes the port.
func TestPCPWithNatpmpc(t *testing.T) {
	netns.RequireTools(t, "natpmpc")
	e := startEnvWith(t, "bn-e2epcpnat", "pcp: {enabled: true, max_lifetime: 1h}\n")
	sub := e.topo.Subscribers[0]
	block := e.forward(t, sub.Addr)

	out := natpmpc(t, sub)
	if m := natpmpcPublic.FindStringSubmatch(out); m == nil || m[1] != block.Public.String() {
		t.Fatalf("natpmpc public address: want %s, got:\n%s", block.Public, out)
	}

	tcpSrv := startTCPEcho(t, sub.NS, netip.AddrPortFrom(sub.Addr, 8080))
	udpSrv, err := netns.StartUDPEcho(sub.NS, netip.AddrPortFrom(sub.Addr, 9000))
	if err != nil {
		t.Fatal(err)
	}
	defer udpSrv.Close()

	asked := block.PortLo + 5
	before := time.Now().Truncate(time.Second)
	tcpPort, life := natpmpcMap(t, sub, asked, 8080, "tcp", 7200)
	if tcpPort != asked || life != 3600 {
		t.Errorf("TCP mapping: public port %d for %d lifetime %d; want the suggested port, lifetime capped at 3600", tcpPort, asked, life)
	}
	udpPort, _ := natpmpcMap(t, sub, 0, 9000, "udp", 600)
	for _, p := range []uint16{tcpPort, udpPort} {
		if p < block.PortLo || p > block.PortHi {
			t.Fatalf("mapped public port %d outside the subscriber's block %d-%d", p, block.PortLo, block.PortHi)
		}
	}

	tcpPublic := netip.AddrPortFrom(block.Public, tcpPort)
	if err := tcpEchoFrom(e.topo.Internet, tcpPublic, 3*time.Second); err != nil {
		t.Fatalf("internet to %s (TCP, mapped to %s:8080): %v", tcpPublic, sub.Addr, err)
	}
	if r := tcpSrv.Remotes(); len(r) != 1 || r[0].Addr() != e.topo.InternetAddr {
		t.Errorf("the subscriber's TCP server saw %v, want one connection from %s", r, e.topo.InternetAddr)
	}
	udpPublic := netip.AddrPortFrom(block.Public, udpPort)
	if _, err := netns.UDPRoundTrip(e.topo.Internet, 0, udpPublic, []byte("ping"), 3*time.Second); err != nil {
		t.Fatalf("internet to %s (UDP, mapped to %s:9000): %v", udpPublic, sub.Addr, err)
	}

	// No traffic of the subscriber's made the block active: the mapping
	// did, and the record names it.
	ans := e.lookupAt(t, tcpPublic, before.Add(time.Second))
	for deadline := time.Now().Add(3 * time.Second); (len(ans.Candidates) != 1 || ans.Candidates[0].Inside != sub.Addr) && time.Now().Before(deadline); {
		time.Sleep(200 * time.Millisecond)
		ans = e.lookupAt(t, tcpPublic, before.Add(time.Second))
	}
	if len(ans.Candidates) != 1 || ans.Candidates[0].Inside != sub.Addr {
		t.Errorf("lookup of %s: %+v, want %s", tcpPublic, ans.Candidates, sub.Addr)
	}

	if st := e.pcpStatus(t); st.Mappings["tcp"] != 1 || st.Mappings["udp"] != 1 {
		t.Errorf("status: %+v, want one TCP and one UDP mapping", st)
	}

	// Deleting the TCP mapping closes the port; the UDP one stays.
	if port, life := natpmpcMap(t, sub, tcpPort, 8080, "tcp", 0); life != 0 || port != tcpPort {
		t.Errorf("deletion answered port %d lifetime %d, want %d and 0", port, life, tcpPort)
	}
	if err := tcpEchoFrom(e.topo.Internet, tcpPublic, time.Second); err == nil {
		t.Errorf("internet to %s still reached the subscriber after the mapping was deleted", tcpPublic)
	}
	if _, err := netns.UDPRoundTrip(e.topo.Internet, 0, udpPublic, []byte("ping"), 3*time.Second); err != nil {
		t.Errorf("the UDP mapping went with the TCP one: %v", err)
	}
	if st := e.pcpStatus(t); st.Mappings["tcp"] != 0 || st.Mappings["udp"] != 1 {
		t.Errorf("status after the deletion: %+v, want only the UDP mapping", st)
	}
}

package e2e

import (
	"bytes"
	"encoding/binary"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cilium/ebpf"

	"github.com/blocknat/blocknat/test/harness"
	"github.com/blocknat/blocknat/test/netns"
)

// arrival is one of the stream's packets as the internet's side caught it.
type arrival struct {
	seq   uint64
	iface string
	dmac  string
	at    time.Time
}

// nexthopCapture records the stream's packets on the internet side's links.
type nexthopCapture struct {
	mu       sync.Mutex
	arrivals []arrival
}

func (c *nexthopCapture) listen(t *testing.T, ns *netns.NS, iface string) {
	t.Helper()
	p, err := netns.OpenPacketSocket(ns, iface, func(frame []byte, _ bool) {
		at := time.Now()
		i := bytes.Index(frame, nexthopMarker)
		if i < 0 || i+len(nexthopMarker)+8 > len(frame) {
			return
		}
		a := arrival{seq: binary.BigEndian.Uint64(frame[i+len(nexthopMarker):]), iface: iface,
			dmac: net.HardwareAddr(frame[:6]).String(), at: at}
		c.mu.Lock()
		c.arrivals = append(c.arrivals, a)
		c.mu.Unlock()
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.Close)
}

func (c *nexthopCapture) snapshot() []arrival {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]arrival(nil), c.arrivals...)
}

var nexthopMarker = []byte("blocknat-nexthop-seq:")

// nexthopStream sends numbered UDP datagrams from a subscriber and notes
// when each send began.
type nexthopStream struct {
	mu    sync.Mutex
	sent  []time.Time // by seq
	stop  chan struct{}
	ended chan struct{}
}

func startNexthopStream(t *testing.T, ns *netns.NS, dst netip.AddrPort, every time.Duration) *nexthopStream {
	t.Helper()
	var conn *net.UDPConn
	if err := ns.Do(func() (err error) {
		conn, err = net.DialUDP("udp4", nil, net.UDPAddrFromAddrPort(dst))
		return err
	}); err != nil {
		t.Fatal(err)
	}
	s := &nexthopStream{stop: make(chan struct{}), ended: make(chan struct{})}
	go func() {
		defer close(s.ended)
		payload := make([]byte, len(nexthopMarker)+8+32)
		copy(payload, nexthopMarker)
		tick := time.NewTicker(every)
		defer tick.Stop()
		for seq := uint64(0); ; seq++ {
			select {
			case <-s.stop:
				return
			case <-tick.C:
			}
			binary.BigEndian.PutUint64(payload[len(nexthopMarker):], seq)
			s.mu.Lock()
			s.sent = append(s.sent, time.Now())
			s.mu.Unlock()
			conn.Write(payload) // an ICMP error from the far side may fail a write; the capture decides
		}
	}()
	t.Cleanup(func() { s.halt(); conn.Close() })
	return s
}

func (s *nexthopStream) halt() {
	select {
	case <-s.stop:
	default:
		close(s.stop)
	}
	<-s.ended
}

// sentAfter is the first seq whose send began after at.
func (s *nexthopStream) sentAfter(at time.Time) uint64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	for i, ts := range s.sent {
		if ts.After(at) {
			return uint64(i)
		}
	}
	return uint64(len(s.sent))
}

func (s *nexthopStream) count() uint64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return uint64(len(s.sent))
}

// routeGeneration reads the generation the running agent last wrote.
func routeGeneration(t *testing.T, m *ebpf.Map) (gen, validUntil uint64) {
	t.Helper()
	var zero uint32
	var v [2]uint64
	if err := m.Lookup(&zero, &v); err != nil {
		t.Fatal(err)
	}
	return v[0], v[1]
}

// TestNextHopCacheFollowsChanges: while a subscriber's stream flows through
// the established path (and its next-hop cache), the next hop's MAC is
// replaced, the default route moves to a second outside link, and that
// link goes down. After each change, once the agent has bumped the route
// generation, no packet goes to the old next hop: every packet sent after
// the bump was seen arrives on the new path, with the new MAC. The time
// from each change to the bump and to the first packet on the new path is
// logged.
func TestNextHopCacheFollowsChanges(t *testing.T) {
	e := prepareEnv(t, "nh", "")
	ctx := t.Context()
	topo := e.topo
	r, inet := topo.Router, topo.Internet

	// A second outside link: bn-out2 192.0.2.5/30 <-> eth1 192.0.2.6/30,
	// set up as the topology sets up its own.
	steps := []struct {
		ns   *netns.NS
		argv []string
	}{
		{r, []string{"ip", "link", "add", "name", "bn-out2", "type", "veth", "peer", "name", "eth1", "netns", inet.Name}},
		{r, []string{"ip", "addr", "add", "192.0.2.5/30", "dev", "bn-out2"}},
		{inet, []string{"ip", "addr", "add", "192.0.2.6/30", "dev", "eth1"}},
		{r, []string{"ip", "link", "set", "bn-out2", "up"}},
		{inet, []string{"ip", "link", "set", "eth1", "up"}},
		{r, []string{"ethtool", "-K", "bn-out2", "gro", "on"}},
		{inet, []string{"ethtool", "-K", "eth1", "gro", "on", "tx", "off"}},
	}
	for _, s := range steps {
		if out, err := s.ns.Exec(ctx, s.argv...); err != nil {
			t.Fatalf("%s: %v\n%s", strings.Join(s.argv, " "), err, out)
		}
	}
	mac := func(ns *netns.NS, iface string) string { return ifaceMAC(t, ns, iface).String() }
	inet1, rtr2 := mac(inet, "eth1"), mac(r, "bn-out2")
	for _, s := range [][]string{
		{"ip", "neigh", "replace", "192.0.2.6", "lladdr", inet1, "dev", "bn-out2", "nud", "permanent"},
		// The fallback the link-down step returns to.
		{"ip", "route", "add", "default", "via", topo.InternetAddr.String(), "dev", topo.OutsideIface, "metric", "100"},
	} {
		if out, err := r.Exec(ctx, s...); err != nil {
			t.Fatalf("%s: %v\n%s", strings.Join(s, " "), err, out)
		}
	}
	if out, err := inet.Exec(ctx, "ip", "neigh", "replace", "192.0.2.5", "lladdr", rtr2, "dev", "eth1", "nud", "permanent"); err != nil {
		t.Fatalf("internet neighbour: %v\n%s", err, out)
	}
	cfg := harness.Config(topo, e.stateDir, e.pinDir, "")
	cfg = bytes.Replace(cfg, []byte("interfaces: ["+topo.OutsideIface+"]"), []byte("interfaces: ["+topo.OutsideIface+", bn-out2]"), 1)
	if err := os.WriteFile(e.cfgPath, cfg, 0o600); err != nil {
		t.Fatal(err)
	}
	e.ifaces = append(e.ifaces, "bn-out2")
	e.start(t)

	gens, err := ebpf.LoadPinnedMap(filepath.Join(e.pinDir, "maps", "route_gen"), &ebpf.LoadPinOptions{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	defer gens.Close()
	if _, until := routeGeneration(t, gens); until == 0 {
		t.Fatal("the agent does not vouch for the next-hop cache")
	}

	var capture nexthopCapture
	capture.listen(t, inet, topo.InternetIface)
	capture.listen(t, inet, "eth1")
	stream := startNexthopStream(t, topo.Subscribers[0].NS, netip.AddrPortFrom(topo.ServerAddrs[0], 9), 500*time.Microsecond)
	time.Sleep(300 * time.Millisecond)
	before := e.stats(t)

	newMAC := "02:00:00:00:aa:01"
	changes := []struct {
		name       string
		argv       []string
		iface, mac string // the new path
	}{
		{"neighbour MAC replaced", []string{"ip", "neigh", "replace", topo.InternetAddr.String(), "lladdr", newMAC,
			"dev", topo.OutsideIface, "nud", "permanent"}, topo.InternetIface, newMAC},
		{"route moved", []string{"ip", "route", "replace", "default", "via", "192.0.2.6", "dev", "bn-out2"}, "eth1", inet1},
		{"link down", []string{"ip", "link", "set", "bn-out2", "down"}, topo.InternetIface, newMAC},
	}

	for _, c := range changes {
		gen, _ := routeGeneration(t, gens)
		changed := time.Now()
		if out, err := r.Exec(ctx, c.argv...); err != nil {
			t.Fatalf("%s: %v\n%s", c.name, err, out)
		}
		applied := time.Now() // ip has returned: the change is made
		var seen time.Time
		for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(100 * time.Microsecond) {
			if g, _ := routeGeneration(t, gens); g != gen {
				seen = time.Now()
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s: the agent did not bump the route generation within 5s", c.name)
			}
		}
		// Let packets sent well after the bump arrive.
		time.Sleep(300 * time.Millisecond)
		firstAfter, last := stream.sentAfter(seen), stream.count()-20
		arrived := map[uint64]arrival{}
		var firstNew time.Time
		for _, a := range capture.snapshot() {
			onNew := a.iface == c.iface && a.dmac == c.mac
			if onNew && a.at.After(changed) && (firstNew.IsZero() || a.at.Before(firstNew)) {
				firstNew = a.at
			}
			if a.seq >= firstAfter {
				if !onNew {
					t.Errorf("%s: packet %d (sent after the agent saw the change) went out on %s to %s, want %s to %s",
						c.name, a.seq, a.iface, a.dmac, c.iface, c.mac)
				}
				arrived[a.seq] = a
			}
		}
		lost := 0
		for seq := firstAfter; seq < last; seq++ {
			if _, ok := arrived[seq]; !ok {
				lost++
			}
		}
		if lost > 0 {
			t.Errorf("%s: %d of the %d packets sent after the agent saw the change did not arrive", c.name, lost, last-firstAfter)
		}
		if firstNew.IsZero() {
			t.Fatalf("%s: no packet on the new path", c.name)
		}
		t.Logf("%s: ip ran for %v; after it returned, the agent's bump was seen in %v (polled every 100µs) and the first packet on the new path came in %v",
			c.name, applied.Sub(changed).Round(time.Microsecond), seen.Sub(applied).Round(time.Microsecond), firstNew.Sub(applied).Round(time.Microsecond))
	}
	stream.halt()
	after := e.stats(t)
	// The stream was translated by XDP throughout, not left to the kernel.
	if d := after["out_packets"] - before["out_packets"]; d < stream.count()/2 {
		t.Errorf("out_packets grew by %d for %d packets sent: the stream did not take the XDP path", d, stream.count())
	}
	t.Logf("pass_fib %d -> %d over the changes", before["pass_fib"], after["pass_fib"])
	cache, err := ebpf.LoadPinnedMap(filepath.Join(e.pinDir, "maps", "nexthops"), &ebpf.LoadPinOptions{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	defer cache.Close()
	key := make([]byte, cache.KeySize())
	if err := cache.NextKey(nil, &key); err != nil {
		t.Errorf("the next-hop cache is empty after the stream: %v", err)
	}

}

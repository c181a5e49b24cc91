package e2e

import (
	"bytes"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"sort"
	"testing"
	"time"

	"github.com/blocknat/blocknat/loader"
	"github.com/blocknat/blocknat/test/netns"
	"github.com/blocknat/blocknat/userspace/metrics"
	"github.com/blocknat/blocknat/userspace/store"
)

// openStore opens the agent's record store; the agent must be stopped.
func (e *env) openStore(t *testing.T) *store.Store {
	t.Helper()
	st, err := store.Open(filepath.Join(e.stateDir, "records"), store.Options{Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	return st
}

// activeInKernel lists the subscribers the pinned subscribers map shows
// as active.
func (e *env) activeInKernel(t *testing.T) []uint32 {
	t.Helper()
	return readPinned(t, e, (*loader.Pinned).ActiveSubscribers)
}

// sendFrom sends one UDP datagram from each address in the namespace, with
// gap between them, and does not wait for answers.
func sendFrom(ns *netns.NS, addrs []netip.Addr, dst netip.AddrPort, gap time.Duration) error {
	return ns.Do(func() error {
		for _, a := range addrs {
			c, err := net.ListenUDP("udp4", net.UDPAddrFromAddrPort(netip.AddrPortFrom(a, 0)))
			if err != nil {
				return fmt.Errorf("bind %s: %w", a, err)
			}
			_, err = c.WriteToUDPAddrPort([]byte("activate"), dst)
			c.Close()
			if err != nil {
				return fmt.Errorf("send from %s: %w", a, err)
			}
			time.Sleep(gap)
		}
		return nil
	})
}

// TestRecordsOfTraffic: traffic makes one open record per subscriber, with
// its deterministic block, the epoch, and a start inside the test's span.
func TestRecordsOfTraffic(t *testing.T) {
	e := startEnv(t, "bn-e2erec")
	before := time.Now()
	srv, err := netns.StartUDPEcho(e.topo.Internet, netip.AddrPortFrom(e.topo.ServerAddrs[0], 9000))
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	for _, sub := range e.topo.Subscribers {
		if _, err := netns.UDPRoundTrip(sub.NS, 0, srv.Addr, []byte("x"), 3*time.Second); err != nil {
			t.Fatal(err)
		}
	}
	e.waitMetric(t, metricsListen, metrics.StoreOpenRecords, float64(len(e.topo.Subscribers)), 5*time.Second)
	if err := e.agent.Stop(); err != nil {
		t.Fatal(err)
	}
	after := time.Now()
	st := e.openStore(t)
	open, err := st.OpenRecords()
	if err != nil {
		t.Fatal(err)
	}
	if len(open) != len(e.topo.Subscribers) {
		t.Fatalf("%d open records, want %d: %+v", len(open), len(e.topo.Subscribers), open)
	}
	sort.Slice(open, func(i, j int) bool { return open[i].Subscriber < open[j].Subscriber })
	for i, sub := range e.topo.Subscribers {
		r, block := open[i], e.forward(t, sub.Addr)
		if r.Inside != sub.Addr || r.Subscriber != block.Subscriber || r.Public != block.Public || r.PortLo != block.PortLo ||
			r.PortHi != block.PortHi || r.Epoch != 1 || r.Flags != 0 {
			t.Errorf("record %+v, want block %+v in epoch 1, announced by the ring buffer", r, block)
		}
		// The store keeps times to the millisecond, Start rounded down.
		if r.Start.Before(before.Truncate(time.Millisecond)) || r.Start.After(after) {
			t.Errorf("record start %v outside the test's span %v..%v", r.Start, before, after)
		}
	}
	epochs, err := st.Epochs()
	if err != nil || len(epochs) != 1 || epochs[0].ID != 1 {
		t.Errorf("epochs %+v (%v), want epoch 1", epochs, err)
	}
}

// TestCrashLosesNothing: blocknatd is killed with SIGKILL while 200
// subscribers activate their blocks. After a restart, every block the kernel
// shows as active has exactly one open record.
func TestCrashLosesNothing(t *testing.T) {
	e := startEnv(t, "bn-e2ecrash")
	var addrs []netip.Addr
	for i := 10; i < 210; i++ {
		addrs = append(addrs, netip.AddrFrom4([4]byte{100, 64, 0, byte(i)}))
	}
	if err := e.topo.AddSubscriberAddrs(t.Context(), 0, addrs); err != nil {
		t.Fatal(err)
	}
	srv, err := netns.StartUDPEcho(e.topo.Internet, netip.AddrPortFrom(e.topo.ServerAddrs[0], 9000))
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()

	sent := make(chan error, 1)
	go func() { sent <- sendFrom(e.topo.Subscribers[0].NS, addrs, srv.Addr, 3*time.Millisecond) }()
	time.Sleep(250 * time.Millisecond)
	if err := e.agent.Kill(); err != nil {
		t.Fatal(err)
	}
	if err := <-sent; err != nil {
		t.Fatal(err)
	}
	active := e.activeInKernel(t)
	if len(active) != len(addrs) {
		t.Fatalf("kernel shows %d active blocks, want %d: traffic must keep flowing while the agent is down", len(active), len(addrs))
	}

	e.start(t)
	time.Sleep(300 * time.Millisecond)
	if err := e.agent.Stop(); err != nil {
		t.Fatal(err)
	}
	st := e.openStore(t)
	open, err := st.OpenRecords()
	if err != nil {
		t.Fatal(err)
	}
	perSub := map[uint32]int{}
	recovered := 0
	for _, r := range open {
		perSub[r.Subscriber]++
		if r.Flags&store.FlagRecovered != 0 {
			recovered++
		}
	}
	for _, sub := range active {
		if perSub[sub] != 1 {
			t.Errorf("subscriber %d is active in the kernel and has %d open records, want 1", sub, perSub[sub])
		}
	}
	if len(open) != len(active) {
		t.Errorf("%d open records for %d active blocks", len(open), len(active))
	}
	// Every activation while the agent was down was still in the pinned
	// ring buffer, so none needed recovering; duplicates would show above.
	t.Logf("%d blocks, %d recovered by reconciliation", len(open), recovered)
	if t.Failed() {
		t.Logf("agent log:\n%s", e.agent.Log())
	}
}

// TestPrivacyNoDestination: after traffic, no server address appears in
// any file under state_dir, in the agent's log or in its metrics.
func TestPrivacyNoDestination(t *testing.T) {
	e := startEnv(t, "bn-e2epriv")
	e.browseBothServers(t)
	time.Sleep(200 * time.Millisecond)
	metrics, err := e.topo.Router.Exec(t.Context(), "curl", "--noproxy", "*", "-sS", "-m", "5", "http://127.0.0.1:9477/metrics")
	if err != nil || !bytes.Contains(metrics, []byte("blocknat_packets_total")) {
		t.Fatalf("metrics: %v\n%s", err, metrics)
	}
	if err := e.agent.Stop(); err != nil {
		t.Fatal(err)
	}
	var needles [][]byte
	for _, a := range e.topo.ServerAddrs {
		b := a.As4()
		needles = append(needles, []byte(a.String()), b[:])
	}
	for _, n := range needles {
		if bytes.Contains([]byte(e.agent.Log()), n) {
			t.Errorf("agent log contains destination %q", n)
		}
		if bytes.Contains(metrics, n) {
			t.Errorf("metrics contain destination %q", n)
		}
	}
	files := 0
	err = filepath.WalkDir(e.stateDir, func(path string, d fs.DirEntry, err error) error {
		if err != nil || !d.Type().IsRegular() {
			return err // directories, the API socket
		}
		data, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		files++
		for _, n := range needles {
			if bytes.Contains(data, n) {
				t.Errorf("%s contains destination %q", path, n)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if files == 0 {
		t.Fatal("state_dir holds no files: the check proves nothing")
	}
}

// TestIdleBlockReleased: with short timeouts, a subscriber's mapping
// expires, its block is released and its record closed; new traffic opens
// a new record.
func TestIdleBlockReleased(t *testing.T) {
	e := startEnvWith(t, "bn-e2eidle", "timeouts: {udp: 1s, block_idle: 1s}\nintervals: {sweep: 200ms}\n")
	srv, err := netns.StartUDPEcho(e.topo.Internet, netip.AddrPortFrom(e.topo.ServerAddrs[0], 9000))
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	sub := e.topo.Subscribers[0]
	// The mapping's last use is the reply, some time after this and
	// before the round trip returns: the record cannot close earlier than
	// a second after it.
	firstSent := time.Now()
	if _, err := netns.UDPRoundTrip(sub.NS, 0, srv.Addr, []byte("x"), 3*time.Second); err != nil {
		t.Fatal(err)
	}
	firstDone := time.Now()
	deadline := time.Now().Add(10 * time.Second)
	for len(e.activeInKernel(t)) != 0 {
		if time.Now().After(deadline) {
			t.Fatalf("block still active 10s after its last packet:\n%s", e.agent.Log())
		}
		time.Sleep(100 * time.Millisecond)
	}
	released := time.Now()
	if _, err := netns.UDPRoundTrip(sub.NS, 0, srv.Addr, []byte("y"), 3*time.Second); err != nil {
		t.Fatal(err)
	}
	e.waitMetric(t, metricsListen, metrics.StoreOpenRecords, 1, 5*time.Second) // the new block's record
	if err := e.agent.Stop(); err != nil {
		t.Fatal(err)
	}
	st := e.openStore(t)
	recs, err := st.History(sub.Addr, firstDone.Add(-time.Minute), time.Now())
	if err != nil {
		t.Fatal(err)
	}
	if len(recs) != 2 {
		t.Fatalf("history %+v, want a closed record and a new open one", recs)
	}
	sort.Slice(recs, func(i, j int) bool { return recs[i].Start.Before(recs[j].Start) })
	closed, reopened := recs[0], recs[1]
	// End is rounded up to the millisecond.
	if closed.Open() || closed.End.Before(firstSent.Add(time.Second)) || closed.End.After(released.Add(time.Millisecond)) {
		t.Errorf("first record %+v: want it closed between %v and %v", closed, firstSent.Add(time.Second), released)
	}
	// Start is rounded down to the millisecond.
	if !reopened.Open() || reopened.Start.Before(released.Truncate(time.Millisecond)) {
		t.Errorf("second record %+v: want it open from after %v", reopened, released)
	}
}

// browseBothServers has every subscriber fetch a page from the first
// server address and exchange a datagram with the second, so that both
// destinations have passed the NAT.
func (e *env) browseBothServers(t *testing.T) {
	t.Helper()
	httpSrv, err := netns.StartHTTPServer(e.topo.Internet, netip.AddrPortFrom(e.topo.ServerAddrs[0], 8080))
	if err != nil {
		t.Fatal(err)
	}
	defer httpSrv.Close()
	udpSrv, err := netns.StartUDPEcho(e.topo.Internet, netip.AddrPortFrom(e.topo.ServerAddrs[1], 9000))
	if err != nil {
		t.Fatal(err)
	}
	defer udpSrv.Close()
	for _, sub := range e.topo.Subscribers {
		if out, err := sub.NS.Exec(t.Context(), "curl", "--noproxy", "*", "-sS", "-m", "5", "http://"+httpSrv.Addr.String()+"/"); err != nil {
			t.Fatalf("curl: %v %s", err, out)
		}
		if _, err := netns.UDPRoundTrip(sub.NS, 0, udpSrv.Addr, []byte("x"), 3*time.Second); err != nil {
			t.Fatal(err)
		}
	}
}

package pcpserver

import (
	"context"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"testing"
	"time"

	"github.com/blocknat/blocknat/test/testutil"
	"github.com/blocknat/blocknat/userspace/mapping"
)

// The test layout: 127.0.0.0/29 are eight subscribers over four public
// addresses, two to an address, with blocks of 8 ports in 1024-1039. So
// 127.0.0.2 has 203.0.113.1 ports 1024-1031, 127.0.0.3 has 203.0.113.1
// ports 1032-1039, 127.0.0.4 has 203.0.113.2 ports 1024-1031, and
// 127.0.0.9 is no subscriber. The server listens on lo, where every
// 127/8 address is local, so the clients can send from each of them.
var (
	serverAddr = netip.MustParseAddr("127.0.0.1")
	client2    = netip.MustParseAddr("127.0.0.2")
	client3    = netip.MustParseAddr("127.0.0.3")
	client4    = netip.MustParseAddr("127.0.0.4")
	client5    = netip.MustParseAddr("127.0.0.5")
	stranger   = netip.MustParseAddr("127.0.0.9")
	public1    = netip.MustParseAddr("203.0.113.1")
	public2    = netip.MustParseAddr("203.0.113.2")
)

const (
	testMinLifetime = 120
	testMaxLifetime = 600
	// testEpochAt is where the fake clock starts: 100 s after the fake
	// plane's epoch start.
	testEpochStart = uint64(5 * time.Second)
	testEpochAt    = 100
)

func testMapping(t *testing.T) *mapping.Mapping {
	t.Helper()
	m, err := mapping.New([]netip.Prefix{netip.MustParsePrefix("127.0.0.0/29")}, []netip.Prefix{netip.MustParsePrefix("203.0.113.0/30")}, 1024, 1039, 8)
	if err != nil {
		t.Fatalf("mapping: %v", err)
	}
	return m
}

// requireRoot skips, or fails under BLOCKNAT_REQUIRE_PRIVILEGED=1:
// SO_BINDTODEVICE needs CAP_NET_RAW.
func requireRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() == 0 {
		return
	}
	if os.Getenv("BLOCKNAT_REQUIRE_PRIVILEGED") == "1" {
		t.Fatal("needs root to bind sockets to a device, and BLOCKNAT_REQUIRE_PRIVILEGED=1 forbids skipping")
	}
	t.Skip("needs root to bind sockets to a device")
}

// freePort is a UDP port nothing listens on now.
func freePort(t *testing.T) uint16 {
	t.Helper()
	c, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4zero})
	if err != nil {
		t.Fatalf("free port: %v", err)
	}
	defer c.Close()
	return uint16(c.LocalAddr().(*net.UDPAddr).Port)
}

type harness struct {
	t     *testing.T
	srv   *Server
	plane *fakePlane
	clock *testutil.Clock
	cfg   Config
	stop  func() error
}

// testConfig is the configuration the tests start from.
func testConfig(t *testing.T, plane *fakePlane, clock *testutil.Clock) Config {
	return Config{
		Interfaces:   []string{"lo"},
		Mapping:      plane.m,
		Plane:        plane,
		Clock:        clock,
		MinLifetime:  testMinLifetime * time.Second,
		MaxLifetime:  testMaxLifetime * time.Second,
		MaxMappings:  4,
		Rate:         1000,
		Burst:        1000,
		Logger:       slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug})),
		Port:         freePort(t),
		SuspectPort:  freePort(t),
		AnnouncePort: freePort(t),
	}
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(b []byte) (int, error) {
	w.t.Log(string(b))
	return len(b), nil
}

// startServer runs a server over plane with cfg and stops it at cleanup.
func startServer(t *testing.T, cfg Config, tune func(*Server)) *harness {
	t.Helper()
	requireRoot(t)
	srv, err := New(cfg)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	srv.expiryTick = 20 * time.Millisecond
	if tune != nil {
		tune(srv)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Run(ctx) }()
	select {
	case <-srv.Listening():
	case err := <-done:
		cancel()
		t.Fatalf("Run: %v", err)
	case <-time.After(5 * time.Second):
		cancel()
		t.Fatal("the server did not open its sockets within 5s")
	}
	stopped := false
	stop := func() error {
		if stopped {
			return nil
		}
		stopped = true
		cancel()
		select {
		case err := <-done:
			return err
		case <-time.After(5 * time.Second):
			t.Error("Run did not return within 5s of its context ending")
			return nil
		}
	}
	t.Cleanup(func() {
		if err := stop(); err != nil {
			t.Errorf("Run: %v", err)
		}
	})
	return &harness{t: t, srv: srv, plane: cfg.Plane.(*fakePlane), clock: cfg.Clock.(*testutil.Clock), cfg: cfg, stop: stop}
}

// newHarness is a server over a fresh fake plane with the test config,
// changed by edit.
func newHarness(t *testing.T, edit func(*Config)) *harness {
	t.Helper()
	requireRoot(t)
	plane := newFakePlane(testMapping(t), testEpochStart)
	clock := testutil.NewClock(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC), time.Duration(testEpochStart)+testEpochAt*time.Second)
	cfg := testConfig(t, plane, clock)
	if edit != nil {
		edit(&cfg)
	}
	return startServer(t, cfg, nil)
}

// client is a UDP socket at one loopback address.
type client struct {
	t    *testing.T
	conn *net.UDPConn
	addr netip.Addr
}

func newClient(t *testing.T, addr netip.Addr) *client {
	t.Helper()
	c, err := net.ListenUDP("udp4", net.UDPAddrFromAddrPort(netip.AddrPortFrom(addr, 0)))
	if err != nil {
		t.Fatalf("client at %s: %v", addr, err)
	}
	t.Cleanup(func() { c.Close() })
	return &client{t: t, conn: c, addr: addr}
}

func (c *client) send(b []byte, to netip.AddrPort) {
	c.t.Helper()
	if _, err := c.conn.WriteToUDPAddrPort(b, to); err != nil {
		c.t.Fatalf("send: %v", err)
	}
}

// recv waits up to timeout for a datagram; ok is false when none came.
func (c *client) recv(timeout time.Duration) (b []byte, from netip.AddrPort, ok bool) {
	buf := make([]byte, 2048)
	c.conn.SetReadDeadline(time.Now().Add(timeout))
	n, from, err := c.conn.ReadFromUDPAddrPort(buf)
	if err != nil {
		return nil, netip.AddrPort{}, false
	}
	return buf[:n], netip.AddrPortFrom(from.Addr().Unmap(), from.Port()), true
}

// ask sends b to the server's port and returns the decoded answer,
// failing the test when none comes within a second.
func (h *harness) ask(c *client, b []byte) response {
	h.t.Helper()
	r, ok := h.tryAsk(c, b, netip.AddrPortFrom(serverAddr, h.cfg.Port))
	if !ok {
		h.t.Fatalf("no answer from the server to % x", b)
	}
	return r
}

func (h *harness) tryAsk(c *client, b []byte, to netip.AddrPort) (response, bool) {
	h.t.Helper()
	c.send(b, to)
	raw, _, ok := c.recv(time.Second)
	if !ok {
		return response{}, false
	}
	r, err := decodeResponse(raw)
	if err != nil {
		h.t.Fatalf("answer % x: %v", raw, err)
	}
	return r, true
}

func listenUDP(at netip.AddrPort) (*net.UDPConn, error) {
	return net.ListenUDP("udp4", net.UDPAddrFromAddrPort(at))
}

package e2e

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/blocknat/blocknat/loader"
	"github.com/blocknat/blocknat/test/netns"
)

// stun runs Debian's STUN client from a subscriber against stund in the
// internet namespace, which listens on both server addresses.
func stun(t *testing.T, e *env) string {
	t.Helper()
	netns.RequireTools(t, "stun", "stund")
	srv := e.topo.Internet.Command(context.WithoutCancel(t.Context()), "stund", "-h", e.topo.ServerAddrs[0].String(), "-a", e.topo.ServerAddrs[1].String())
	var srvOut bytes.Buffer
	srv.Stdout, srv.Stderr = &srvOut, &srvOut
	if err := srv.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { srv.Process.Kill(); srv.Wait() }()
	time.Sleep(300 * time.Millisecond)
	out, _ := e.topo.Subscribers[0].NS.Exec(t.Context(), "stun", e.topo.ServerAddrs[0].String())
	t.Logf("stun client:\n%s", out)
	return string(out)
}

// TestSTUNDefaultIsIndependent: RFC 4787 REQ-1 and REQ-8 (default):
// endpoint-independent mapping and filtering, as a STUN client sees them.
func TestSTUNDefaultIsIndependent(t *testing.T) {
	e := startEnv(t, "bn-e2estun")
	out := stun(t, e)
	if !strings.Contains(out, "Independent Mapping") || !strings.Contains(out, "Independent Filter") {
		t.Errorf("STUN client does not report independent mapping and filtering:\n%s", out)
	}
}

// TestSTUNAddressAndPortDependentFiltering: with the option, the STUN
// client sees port-dependent filtering and still independent mapping.
func TestSTUNAddressAndPortDependentFiltering(t *testing.T) {
	e := startEnvWith(t, "bn-e2eapdf", "filtering: address-and-port-dependent\n")
	out := stun(t, e)
	if !strings.Contains(out, "Independent Mapping") || !strings.Contains(out, "Port Dependent Filter") {
		t.Errorf("STUN client does not report port-dependent filtering:\n%s", out)
	}
}

// reusePort lets a listener and an outbound connection share a local port,
// as a peer-to-peer application does to learn its public endpoint.
func reusePort(_, _ string, c syscall.RawConn) error {
	var serr error
	err := c.Control(func(fd uintptr) {
		serr = errors.Join(unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_REUSEADDR, 1),
			unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_REUSEPORT, 1))
	})
	return errors.Join(err, serr)
}

// TestHairpinCurl: subscriber 0 reaches an HTTP server in subscriber 1
// through 1's public address and port; the server sees 0's public address
// (RFC 4787 REQ-9, RFC 5382 REQ-8).
func TestHairpinCurl(t *testing.T) {
	e := startEnv(t, "bn-e2ehair")
	ctx := t.Context()
	inet, err := netns.StartHTTPServer(e.topo.Internet, netip.AddrPortFrom(e.topo.ServerAddrs[0], 8080))
	if err != nil {
		t.Fatal(err)
	}
	defer inet.Close()

	sub1 := e.topo.Subscribers[1]
	local := netip.AddrPortFrom(sub1.Addr, 8080)
	var mu sync.Mutex
	var seenBySub1 []string
	var ln net.Listener
	err = sub1.NS.Do(func() error {
		lc := net.ListenConfig{Control: reusePort}
		var err error
		ln, err = lc.Listen(context.Background(), "tcp4", local.String())
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		seenBySub1 = append(seenBySub1, r.RemoteAddr)
		mu.Unlock()
		fmt.Fprintln(w, "hello from subscriber 1")
	})}
	go srv.Serve(ln)
	defer srv.Close()

	// Subscriber 1 learns its public endpoint by connecting out from the
	// port it serves on; the internet server's log shows it.
	err = sub1.NS.Do(func() error {
		d := net.Dialer{LocalAddr: net.TCPAddrFromAddrPort(local), Control: reusePort, Timeout: 3 * time.Second}
		c, err := d.Dial("tcp4", inet.Addr.String())
		if err != nil {
			return err
		}
		defer c.Close()
		_, err = fmt.Fprintf(c, "GET / HTTP/1.0\r\n\r\n")
		if err == nil {
			_, err = c.Read(make([]byte, 1))
		}
		return err
	})
	if err != nil {
		t.Fatalf("subscriber 1 connecting out from :8080: %v", err)
	}
	public := inet.Remotes()[0]

	out, err := e.topo.Subscribers[0].NS.Exec(ctx, "curl", "--noproxy", "*", "-sS", "-m", "5", "http://"+public.String()+"/")
	if err != nil || !strings.Contains(string(out), "hello from subscriber 1") {
		t.Fatalf("curl from subscriber 0 to %s: %v %s", public, err, out)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(seenBySub1) != 1 {
		t.Fatalf("subscriber 1's server saw %v", seenBySub1)
	}
	seen := netip.MustParseAddrPort(seenBySub1[0])
	block := e.forward(t, e.topo.Subscribers[0].Addr)
	if seen.Addr() != block.Public || seen.Port() < block.PortLo || seen.Port() > block.PortHi {
		t.Errorf("subscriber 1 saw %s, want subscriber 0's public address in %+v", seen, block)
	}
	if st := e.stats(t); st["hairpin"] == 0 {
		t.Errorf("hairpin counter is 0: the packets went the long way round (%v)", st)
	}
}

// TestTraceroute: UDP and ICMP traceroute from a subscriber show both hops:
// the router (its own time exceeded) and the server (its port unreachable or
// echo reply, translated back through the NAT, RFC 5508).
func TestTraceroute(t *testing.T) {
	netns.RequireTools(t, "traceroute")
	e := startEnv(t, "bn-e2etrace")
	target := e.topo.ServerAddrs[0].String()
	for _, mode := range [][]string{{}, {"-I"}} {
		args := append([]string{"traceroute", "-n", "-q", "1", "-w", "2", "-m", "5"}, mode...)
		args = append(args, target)
		out, err := e.topo.Subscribers[0].NS.Exec(t.Context(), args...)
		if err != nil {
			t.Fatalf("%v: %v\n%s", args, err, out)
		}
		lines := strings.Split(strings.TrimSpace(string(out)), "\n")
		if len(lines) != 3 || !strings.Contains(lines[1], "100.64.0.254") || !strings.Contains(lines[2], target) {
			t.Errorf("%v: want hop 1 the router and hop 2 %s:\n%s", args, target, out)
		}
	}
	if st := e.stats(t); st["icmp_errors_in"] == 0 {
		t.Errorf("no ICMP error was translated (%v)", st)
	}
}

// TestFragmentedUDPEcho: a 4000-byte datagram through a 1500-byte MTU
// arrives whole and comes back whole (RFC 4787 REQ-14).
func TestFragmentedUDPEcho(t *testing.T) {
	e := startEnv(t, "bn-e2efrag")
	srv, err := netns.StartUDPEcho(e.topo.Internet, netip.AddrPortFrom(e.topo.ServerAddrs[0], 9000))
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	for _, size := range []int{4000, 8000} {
		payload := bytes.Repeat([]byte("0123456789abcdef"), size/16)
		got, err := netns.UDPRoundTrip(e.topo.Subscribers[0].NS, 0, srv.Addr, payload, 3*time.Second)
		if err != nil {
			t.Fatalf("%d bytes: %v", size, err)
		}
		if !bytes.Equal(got, payload) {
			t.Fatalf("%d bytes: echo of %d bytes differs", size, len(got))
		}
	}
	if st := e.stats(t); st["fragments"] < 6 {
		t.Errorf("fragments counter %d: the datagrams were not fragmented (%v)", st["fragments"], st)
	}
}

// flowState finds the state of subscriber 0's mapping from an inside port.
func (e *env) flowState(t *testing.T, port uint16) (uint8, bool) {
	t.Helper()
	p, err := loader.OpenPinned(e.pinDir)
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	flows, err := p.Flows()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range flows {
		if f.Key.Proto == loader.ProtoTCP && loader.AddrFromBE32(f.Key.Addr) == e.topo.Subscribers[0].Addr && loader.PortFromBE16(f.Key.Port) == port {
			return f.Value.State, true
		}
	}
	return 0, false
}

// TestTCPTimeouts: with short timeouts, a half-open connection's mapping
// expires at the transitory timeout and an idle established one does not
// (RFC 5382 REQ-5).
func TestTCPTimeouts(t *testing.T) {
	netns.RequireTools(t, "nft")
	e := startEnvWith(t, "bn-e2etcp", "timeouts: {tcp_transitory: 2s, tcp_established: 60s}\nintervals: {sweep: 200ms}\n")
	srv, err := netns.StartHTTPServer(e.topo.Internet, netip.AddrPortFrom(e.topo.ServerAddrs[0], 8080))
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	// The far end swallows SYNs to port 9999: a half-open connection.
	for _, rule := range [][]string{
		{"nft", "add", "table", "inet", "bnt"},
		{"nft", "add", "chain", "inet", "bnt", "in", "{ type filter hook input priority 0; }"},
		{"nft", "add", "rule", "inet", "bnt", "in", "tcp", "dport", "9999", "drop"},
	} {
		if out, err := e.topo.Internet.Exec(t.Context(), rule...); err != nil {
			t.Fatalf("%v: %v %s", rule, err, out)
		}
	}
	sub := e.topo.Subscribers[0]
	var established net.Conn
	err = sub.NS.Do(func() error {
		d := net.Dialer{LocalAddr: &net.TCPAddr{IP: sub.Addr.AsSlice(), Port: 45002}, Timeout: 3 * time.Second}
		var err error
		if established, err = d.Dial("tcp4", srv.Addr.String()); err != nil {
			return err
		}
		half := net.Dialer{LocalAddr: &net.TCPAddr{IP: sub.Addr.AsSlice(), Port: 45001}, Timeout: 300 * time.Millisecond}
		if c, err := half.Dial("tcp4", netip.AddrPortFrom(e.topo.ServerAddrs[0], 9999).String()); err == nil {
			c.Close()
			return errors.New("the half-open connection was answered")
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	defer established.Close()
	if st, ok := e.flowState(t, 45001); !ok || st != loader.FlowStateTCPTrans {
		t.Fatalf("half-open mapping: state %d present %v, want transitory", st, ok)
	}
	if st, ok := e.flowState(t, 45002); !ok || st != loader.FlowStateTCPEst {
		t.Fatalf("established mapping: state %d present %v, want established", st, ok)
	}
	time.Sleep(3500 * time.Millisecond)
	if _, ok := e.flowState(t, 45001); ok {
		t.Error("half-open mapping still there after the 2 s transitory timeout")
	}
	if _, ok := e.flowState(t, 45002); !ok {
		t.Error("idle established mapping expired at the transitory timeout")
	}
}

// TestBlockFullSignal: with 8-port blocks, a subscriber's ninth connection
// fails at once with "no route to host" (ICMP host unreachable, RFC 6888
// REQ-11), its open connections keep working, and others are unaffected.
func TestBlockFullSignal(t *testing.T) {
	e := startEnvWith(t, "bn-e2efull", "ports: {range: 1024-2047, block_size: 0}\n")
	if b := e.forward(t, e.topo.Subscribers[0].Addr); b.PortHi-b.PortLo+1 != 8 {
		t.Fatalf("block %+v, want 8 ports", b)
	}
	srv, err := netns.StartHTTPServer(e.topo.Internet, netip.AddrPortFrom(e.topo.ServerAddrs[0], 8080))
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	sub := e.topo.Subscribers[0]
	var conns []net.Conn
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	var ninth error
	var took time.Duration
	err = sub.NS.Do(func() error {
		for i := 0; i < 8; i++ {
			c, err := net.DialTimeout("tcp4", srv.Addr.String(), 3*time.Second)
			if err != nil {
				return fmt.Errorf("connection %d: %w", i+1, err)
			}
			conns = append(conns, c)
		}
		start := time.Now()
		c, err := net.DialTimeout("tcp4", srv.Addr.String(), 5*time.Second)
		took = time.Since(start)
		if err == nil {
			c.Close()
		}
		ninth = err
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if !errors.Is(ninth, syscall.EHOSTUNREACH) || took > 2*time.Second {
		t.Fatalf("ninth connection: %v after %s, want EHOSTUNREACH at once", ninth, took)
	}
	// An existing connection still carries a request.
	if _, err := fmt.Fprintf(conns[0], "GET / HTTP/1.0\r\n\r\n"); err != nil {
		t.Fatal(err)
	}
	conns[0].SetReadDeadline(time.Now().Add(3 * time.Second))
	if n, err := conns[0].Read(make([]byte, 64)); err != nil || n == 0 {
		t.Errorf("existing connection after the refusal: %v", err)
	}
	if out, err := e.topo.Subscribers[1].NS.Exec(t.Context(), "curl", "--noproxy", "*", "-sS", "-m", "5", "http://"+srv.Addr.String()+"/"); err != nil {
		t.Errorf("subscriber 1 affected: %v %s", err, out)
	}
	if st := e.stats(t); st["icmp_block_full"] == 0 {
		t.Errorf("no host unreachable counted (%v)", st)
	}
}

// TestOversizedDF: a packet over the outside MTU with DF set goes to the
// kernel, whose "fragmentation needed" reaches the subscriber.
func TestOversizedDF(t *testing.T) {
	netns.RequireTools(t, "ping")
	e := startEnv(t, "bn-e2emtu")
	for _, c := range []struct {
		ns    *netns.NS
		iface string
	}{{e.topo.Router, e.topo.OutsideIface}, {e.topo.Internet, e.topo.InternetIface}} {
		if out, err := c.ns.Exec(t.Context(), "ip", "link", "set", "dev", c.iface, "mtu", "1400"); err != nil {
			t.Fatalf("set mtu: %v %s", err, out)
		}
	}
	out, _ := e.topo.Subscribers[0].NS.Exec(t.Context(), "ping", "-n", "-M", "do", "-s", "1450", "-c", "1", "-W", "2", e.topo.ServerAddrs[0].String())
	if !strings.Contains(string(out), "mtu = 1400") && !strings.Contains(string(out), "mtu=1400") {
		t.Fatalf("ping with DF over the MTU did not learn mtu 1400:\n%s", out)
	}
	// And a packet that fits still goes through translated.
	if out, err := e.topo.Subscribers[0].NS.Exec(t.Context(), "ping", "-n", "-M", "do", "-s", "1300", "-c", "1", "-W", "2", e.topo.ServerAddrs[0].String()); err != nil {
		t.Fatalf("ping that fits: %v\n%s", err, out)
	}
	if st := e.stats(t); st["pass_frag_needed"] == 0 {
		t.Errorf("pass_frag_needed is 0 (%v)", st)
	}
	_ = exec.ErrNotFound
}

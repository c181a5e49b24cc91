package e2e

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/google/gopacket"
	"github.com/google/gopacket/layers"
	"golang.org/x/sys/unix"

	"github.com/blocknat/blocknat/loader"
	"github.com/blocknat/blocknat/test/netns"
)

// rawSender sends hand-made IPv4 packets, any source address, from a
// namespace: what a stranger on the internet can put on the wire.
type rawSender struct {
	fd int
}

func newRawSender(t *testing.T, ns *netns.NS) *rawSender {
	t.Helper()
	s := &rawSender{fd: -1}
	if err := ns.Do(func() (err error) {
		s.fd, err = unix.Socket(unix.AF_INET, unix.SOCK_RAW, unix.IPPROTO_RAW)
		return err
	}); err != nil {
		t.Fatalf("raw socket in %s: %v", ns.Name, err)
	}
	t.Cleanup(func() { unix.Close(s.fd) })
	return s
}

// send serialises ip and the layers after it and sends them to ip's
// destination.
func (s *rawSender) send(t *testing.T, ip *layers.IPv4, rest ...gopacket.SerializableLayer) {
	t.Helper()
	if ip.Version == 0 {
		ip.Version, ip.IHL, ip.TTL = 4, 5, 64
	}
	for _, l := range rest {
		switch l := l.(type) {
		case *layers.TCP:
			l.SetNetworkLayerForChecksum(ip)
		case *layers.UDP:
			l.SetNetworkLayerForChecksum(ip)
		}
	}
	buf := gopacket.NewSerializeBuffer()
	if err := gopacket.SerializeLayers(buf, gopacket.SerializeOptions{FixLengths: true, ComputeChecksums: true},
		append([]gopacket.SerializableLayer{ip}, rest...)...); err != nil {
		t.Fatalf("serialize: %v", err)
	}
	dst := unix.SockaddrInet4{Addr: [4]byte(ip.DstIP.To4())}
	if err := unix.Sendto(s.fd, buf.Bytes(), 0, &dst); err != nil {
		t.Fatalf("send %s -> %s: %v", ip.SrcIP, ip.DstIP, err)
	}
}

// tcpAcceptor accepts connections in a namespace and hands each one over.
type tcpAcceptor struct {
	ln    net.Listener
	conns chan net.Conn
}

func startAcceptor(t *testing.T, ns *netns.NS, addr netip.AddrPort) *tcpAcceptor {
	t.Helper()
	a := &tcpAcceptor{conns: make(chan net.Conn, 64)}
	if err := ns.Do(func() (err error) {
		a.ln, err = net.Listen("tcp4", addr.String())
		return err
	}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { a.ln.Close() })
	go func() {
		for {
			c, err := a.ln.Accept()
			if err != nil {
				close(a.conns)
				return
			}
			a.conns <- c
		}
	}()
	return a
}

// connPair is one TCP connection seen from both ends.
type connPair struct {
	local  uint16 // the subscriber's port
	client net.Conn
	server net.Conn
	public netip.AddrPort // what the server sees
}

// openConns opens n connections from subscriber 0 from ports base.. to the
// acceptor and pairs each with its accepted side.
func openConns(t *testing.T, e *env, a *tcpAcceptor, n int, base uint16) []*connPair {
	t.Helper()
	sub := e.topo.Subscribers[0]
	var pairs []*connPair
	for i := 0; i < n; i++ {
		p := &connPair{local: base + uint16(i)}
		err := sub.NS.Do(func() (err error) {
			d := net.Dialer{LocalAddr: &net.TCPAddr{IP: sub.Addr.AsSlice(), Port: int(p.local)}, Timeout: 3 * time.Second}
			p.client, err = d.Dial("tcp4", a.ln.Addr().String())
			return err
		})
		if err != nil {
			t.Fatalf("connection %d: %v", i, err)
		}
		select {
		case p.server = <-a.conns:
		case <-time.After(3 * time.Second):
			t.Fatalf("connection %d: not accepted", i)
		}
		p.public = p.server.RemoteAddr().(*net.TCPAddr).AddrPort()
		t.Cleanup(func() { p.client.Close(); p.server.Close() })
		pairs = append(pairs, p)
	}
	return pairs
}

// alive reports whether the connection still carries data both ways,
// the server speaking first: a mapping that expired would drop its words.
func (p *connPair) alive() error {
	deadline := time.Now().Add(2 * time.Second)
	p.client.SetDeadline(deadline)
	p.server.SetDeadline(deadline)
	hello := []byte(fmt.Sprintf("still there, %d?", p.local))
	if _, err := p.server.Write(hello); err != nil {
		return fmt.Errorf("server write: %w", err)
	}
	got := make([]byte, len(hello))
	if _, err := io.ReadFull(p.client, got); err != nil || !bytes.Equal(got, hello) {
		return fmt.Errorf("subscriber read %q: %v", got, err)
	}
	if _, err := p.client.Write(got); err != nil {
		return fmt.Errorf("subscriber write: %w", err)
	}
	back := make([]byte, len(hello))
	if _, err := io.ReadFull(p.server, back); err != nil || !bytes.Equal(back, hello) {
		return fmt.Errorf("server read %q: %v", back, err)
	}
	return nil
}

// strangerAddr is a random internet address that is no martian: one of
// 198.18.0.0/15, which the internet namespace does not route back.
func strangerAddr(r *rand.Rand) net.IP {
	return net.IPv4(198, 18+byte(r.IntN(2)), byte(r.IntN(256)), byte(1+r.IntN(254)))
}

// TestHostileRSTsAndFINs: idle TCP connections survive a flood of RSTs and
// FINs from random remote addresses to their public ports, with a 2 s
// transitory timeout that would expire any mapping the flood moved to
// closing; a real close by the peer still moves its mapping to closing,
// and it expires at the transitory timeout.
func TestHostileRSTsAndFINs(t *testing.T) {
	e := startEnvWith(t, "bn-e2erst", "timeouts: {tcp_transitory: 2s, tcp_established: 60s}\nintervals: {sweep: 200ms}\n")
	acc := startAcceptor(t, e.topo.Internet, netip.AddrPortFrom(e.topo.ServerAddrs[0], 8443))
	const n = 10
	pairs := openConns(t, e, acc, n+1, 47000)
	victims, closer := pairs[:n], pairs[n]
	for _, p := range pairs {
		if err := p.alive(); err != nil {
			t.Fatalf("connection from port %d before the flood: %v", p.local, err)
		}
		if st, ok := e.flowState(t, p.local); !ok || st != loader.FlowStateTCPEst {
			t.Fatalf("port %d: state %d present %v, want established", p.local, st, ok)
		}
	}

	before := e.stats(t)
	raw := newRawSender(t, e.topo.Internet)
	r := rand.New(rand.NewPCG(10, 5))
	const perConn = 100
	for _, p := range victims {
		for i := 0; i < perConn; i++ {
			tcp := &layers.TCP{SrcPort: layers.TCPPort(1 + r.IntN(65535)), DstPort: layers.TCPPort(p.public.Port()),
				Seq: r.Uint32(), Ack: r.Uint32(), Window: 512}
			if i%2 == 0 {
				tcp.RST = true
			} else {
				tcp.FIN, tcp.ACK = true, true
			}
			raw.send(t, &layers.IPv4{Protocol: layers.IPProtocolTCP, SrcIP: strangerAddr(r), DstIP: p.public.Addr().AsSlice()}, tcp)
		}
	}
	// Every forged segment reached the data plane and went on to the
	// subscriber: endpoint-independent filtering lets strangers in, so
	// only the state machine stands between them and the mapping.
	if !within(5*time.Second, func() bool { return e.stats(t)["in_packets"]-before["in_packets"] >= n*perConn }) {
		t.Fatalf("in_packets grew by %d, want the %d forged segments", e.stats(t)["in_packets"]-before["in_packets"], n*perConn)
	}

	for _, p := range victims {
		if st, ok := e.flowState(t, p.local); !ok || st != loader.FlowStateTCPEst {
			t.Errorf("port %d right after the flood: state %d present %v, want established", p.local, st, ok)
		}
	}
	// The real peer closes one connection.
	closer.server.Close()
	closer.client.SetReadDeadline(time.Now().Add(2 * time.Second))
	if _, err := closer.client.Read(make([]byte, 1)); !errors.Is(err, io.EOF) {
		t.Fatalf("the peer's close: read %v, want EOF", err)
	}
	if st, ok := e.flowState(t, closer.local); !ok || st != loader.FlowStateTCPClosing {
		t.Errorf("after the peer's FIN: state %d present %v, want closing", st, ok)
	}
	closer.client.Close()

	// Past the transitory timeout and several sweeps.
	time.Sleep(3500 * time.Millisecond)
	cut := 0
	for _, p := range victims {
		if err := p.alive(); err != nil {
			cut++
			t.Errorf("connection from port %d cut by strangers: %v", p.local, err)
		}
	}
	t.Logf("%d of %d idle connections cut by %d forged RSTs and FINs from random addresses", cut, n, n*perConn)
	if _, ok := e.flowState(t, closer.local); ok {
		t.Error("the mapping the peer closed is still there after the transitory timeout")
	}
}

// within polls cond until it holds or d has passed.
func within(d time.Duration, cond func() bool) bool {
	for end := time.Now().Add(d); ; time.Sleep(50 * time.Millisecond) {
		if cond() {
			return true
		}
		if time.Now().After(end) {
			return false
		}
	}
}

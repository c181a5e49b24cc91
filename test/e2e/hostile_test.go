package e2e

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/netip"
	"sync"
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

// linkSocket sends and captures Ethernet frames on one interface of a
// namespace, below routing and every firewall: a capture sees a frame
// that arrived even when the namespace's kernel would drop it.
type linkSocket struct {
	*netns.PacketSocket

	mu     sync.Mutex
	frames [][]byte
}

func openLink(t *testing.T, ns *netns.NS, iface string) *linkSocket {
	t.Helper()
	l := &linkSocket{}
	var err error
	l.PacketSocket, err = netns.OpenPacketSocket(ns, iface, func(frame []byte, outgoing bool) {
		if outgoing {
			return // what this namespace sent itself
		}
		l.mu.Lock()
		l.frames = append(l.frames, bytes.Clone(frame))
		l.mu.Unlock()
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(l.Close)
	return l
}

// sendUDP sends one IPv4/UDP frame from this interface to dstMAC.
func (l *linkSocket) sendUDP(t *testing.T, dstMAC net.HardwareAddr, src, dst netip.AddrPort, payload []byte) {
	t.Helper()
	eth := &layers.Ethernet{SrcMAC: l.MAC, DstMAC: dstMAC, EthernetType: layers.EthernetTypeIPv4}
	ip := &layers.IPv4{Version: 4, IHL: 5, TTL: 64, Protocol: layers.IPProtocolUDP, SrcIP: src.Addr().AsSlice(), DstIP: dst.Addr().AsSlice()}
	udp := &layers.UDP{SrcPort: layers.UDPPort(src.Port()), DstPort: layers.UDPPort(dst.Port())}
	udp.SetNetworkLayerForChecksum(ip)
	buf := gopacket.NewSerializeBuffer()
	if err := gopacket.SerializeLayers(buf, gopacket.SerializeOptions{FixLengths: true, ComputeChecksums: true},
		eth, ip, udp, gopacket.Payload(payload)); err != nil {
		t.Fatal(err)
	}
	if err := l.SendIPv4(buf.Bytes()); err != nil {
		t.Fatalf("send %s -> %s: %v", src, dst, err)
	}
}

// seen counts captured frames that carry marker.
func (l *linkSocket) seen(marker []byte) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	n := 0
	for _, f := range l.frames {
		if bytes.Contains(f, marker) {
			n++
		}
	}
	return n
}

func ifaceMAC(t *testing.T, ns *netns.NS, iface string) net.HardwareAddr {
	t.Helper()
	var mac net.HardwareAddr
	if err := ns.Do(func() error {
		ifc, err := net.InterfaceByName(iface)
		if err == nil {
			mac = ifc.HardwareAddr
		}
		return err
	}); err != nil {
		t.Fatal(err)
	}
	return mac
}

// TestHostileMartians: a subscriber's packets to 0.0.0.0/8, loopback,
// 240/4, the limited broadcast address, multicast groups and an inside
// address with no subscriber link never reach the internet namespace, and
// packets from the internet to a subscriber's live public port with
// loopback, 0.0.0.0, multicast, broadcast, 240/4, pool or inside sources
// never reach the subscriber. Frames are captured on the far link itself,
// below the receiving kernel's own martian checks, and a control packet
// each way proves the capture sees what does pass.
func TestHostileMartians(t *testing.T) {
	e := startEnv(t, "bn-e2emart")
	sub := e.topo.Subscribers[0]
	const perClass = 5
	echo, err := netns.StartUDPEcho(e.topo.Internet, netip.AddrPortFrom(e.topo.ServerAddrs[1], 9000))
	if err != nil {
		t.Fatal(err)
	}
	defer echo.Close()
	if _, err := netns.UDPRoundTrip(sub.NS, 48000, echo.Addr, []byte("map me"), 2*time.Second); err != nil {
		t.Fatal(err)
	}
	public := echo.Remotes()[0]
	before := e.stats(t)

	subLink := openLink(t, sub.NS, sub.Iface)
	inetLink := openLink(t, e.topo.Internet, e.topo.InternetIface)
	routerIn := ifaceMAC(t, e.topo.Router, e.topo.InsideIfaces[0])
	routerOut := ifaceMAC(t, e.topo.Router, e.topo.OutsideIface)

	type class struct{ name, addr string }
	outbound := []class{
		{"0.0.0.0/8", "0.1.2.3"}, {"0.0.0.0", "0.0.0.0"}, {"loopback", "127.0.0.1"}, {"240/4", "240.0.0.1"},
		{"255.255.255.254", "255.255.255.254"}, {"limited broadcast", "255.255.255.255"},
		{"mdns group", "224.0.0.251"}, {"multicast group", "239.1.2.3"},
		{"inside address with no subscriber link", "100.64.0.9"},
	}
	inbound := []class{
		{"loopback", "127.0.0.1"}, {"0.0.0.0", "0.0.0.0"}, {"0.0.0.0/8", "0.9.9.9"}, {"multicast", "224.0.0.1"},
		{"broadcast", "255.255.255.255"}, {"240/4", "240.0.0.1"}, {"pool", "198.51.100.11"},
		{"own pool address", public.Addr().String()}, {"inside", "100.64.0.3"},
	}
	marker := func(dir, name string) []byte { return []byte("bn-martian " + dir + " " + name) }
	for i := 0; i < perClass; i++ {
		for _, c := range outbound {
			subLink.sendUDP(t, routerIn, netip.AddrPortFrom(sub.Addr, 48001), netip.MustParseAddrPort(c.addr+":9"), marker("out", c.name))
		}
		subLink.sendUDP(t, routerIn, netip.AddrPortFrom(sub.Addr, 48002), echo.Addr, marker("out", "control"))
		for _, c := range inbound {
			inetLink.sendUDP(t, routerOut, netip.MustParseAddrPort(c.addr+":9000"), public, marker("in", c.name))
		}
		inetLink.sendUDP(t, routerOut, echo.Addr, public, marker("in", "control"))
	}
	if !within(5*time.Second, func() bool {
		return inetLink.seen(marker("out", "control")) >= perClass && subLink.seen(marker("in", "control")) >= perClass
	}) {
		t.Fatalf("control packets seen: %d of %d upstream, %d of %d at the subscriber: the capture cannot judge",
			inetLink.seen(marker("out", "control")), perClass, subLink.seen(marker("in", "control")), perClass)
	}
	time.Sleep(300 * time.Millisecond) // anything slower than the control would show by now
	for _, c := range outbound {
		if n := inetLink.seen(marker("out", c.name)); n != 0 {
			t.Errorf("subscriber to %s (%s): %d of %d reached the internet", c.name, c.addr, n, perClass)
		}
	}
	for _, c := range inbound {
		if n := subLink.seen(marker("in", c.name)); n != 0 {
			t.Errorf("internet from %s (%s): %d of %d reached the subscriber", c.name, c.addr, n, perClass)
		}
	}
	after := e.stats(t)
	// 0/8 (twice), loopback, 240/4, 255.255.255.254 and the unlinked inside
	// address are the data plane's martians; broadcast and multicast are
	// the router's own (pass_local_service), which never forwards them.
	if got, want := after["drop_martian_dst"]-before["drop_martian_dst"], uint64(6*perClass); got != want {
		t.Errorf("drop_martian_dst grew by %d, want %d", got, want)
	}
	if got, want := after["drop_martian_src"]-before["drop_martian_src"], uint64(len(inbound)*perClass); got != want {
		t.Errorf("drop_martian_src grew by %d, want %d", got, want)
	}
}

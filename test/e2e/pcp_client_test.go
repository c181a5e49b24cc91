package e2e

// A PCP client written here from RFC 6887's byte layouts (§7 header and
// options, §11.1 MAP, §12.1 PEER, §14.1 ANNOUNCE), on purpose without
// userspace/pcp: the server's own codec cannot then agree with itself and
// hide a bug in what the agent puts on the wire.

import (
	"bytes"
	"crypto/rand"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/blocknat/blocknat/loader"
	"github.com/blocknat/blocknat/test/netns"
	"github.com/blocknat/blocknat/test/testutil"
	"github.com/blocknat/blocknat/userspace/config"
	"github.com/blocknat/blocknat/userspace/mapping"
)

// RFC 6887 values the tests speak.
const (
	pcpVersion       = 2
	pcpServerPort    = 5351 // §19.1
	pcpClientPort    = 5350 // §19.1, where ANNOUNCE goes
	pcpOpAnnounce    = 0
	pcpOpMap         = 1
	pcpOpPeer        = 2
	pcpResponseBit   = 0x80
	pcpHeaderLen     = 24
	pcpMapBodyLen    = 36
	pcpPeerBodyLen   = 56
	pcpMaxMessage    = 1100
	pcpOptPreferFail = 2

	pcpSuccess               = 0
	pcpUnsuppVersion         = 1
	pcpNotAuthorized         = 2
	pcpMalformedRequest      = 3
	pcpUnsuppOpcode          = 4
	pcpUnsuppOption          = 5
	pcpNoResources           = 8
	pcpUnsuppProtocol        = 9
	pcpUserExQuota           = 10
	pcpCannotProvideExternal = 11
	pcpAddressMismatch       = 12

	ipProtoICMP = 1
	ipProtoTCP  = 6
	ipProtoUDP  = 17
)

type pcpNonce [12]byte

func newNonce(t *testing.T) pcpNonce {
	t.Helper()
	var n pcpNonce
	if _, err := rand.Read(n[:]); err != nil {
		t.Fatal(err)
	}
	return n
}

// pcpOption is one option as §7.3 lays it out: code, reserved, length,
// data padded to 4 octets.
type pcpOption struct {
	Code uint8
	Data []byte
}

// pcpRequest is a request as a client fills it in. Version 0 means PCP's
// 2; the tests never send NAT-PMP this way.
type pcpRequest struct {
	Version      uint8
	Opcode       uint8
	Lifetime     uint32
	Client       netip.Addr
	Nonce        pcpNonce
	Protocol     uint8
	InternalPort uint16
	ExternalPort uint16
	ExternalIP   netip.Addr // zero: the all-zeros address of §5
	PeerPort     uint16
	PeerIP       netip.Addr
	Options      []pcpOption
	// Trailer is appended after everything, to make a bad length.
	Trailer []byte
}

// pcpAddr16 is an address as PCP carries it: IPv4 mapped into IPv6, and
// an absent one as ::ffff:0.0.0.0 (§5).
func pcpAddr16(a netip.Addr) [16]byte {
	if !a.IsValid() {
		a = netip.IPv4Unspecified()
	}
	return a.As16()
}

func (r pcpRequest) encode() []byte {
	version := r.Version
	if version == 0 {
		version = pcpVersion
	}
	b := []byte{version, r.Opcode, 0, 0}
	b = binary.BigEndian.AppendUint32(b, r.Lifetime)
	client := pcpAddr16(r.Client)
	b = append(b, client[:]...)
	if r.Opcode == pcpOpMap || r.Opcode == pcpOpPeer {
		b = append(b, r.Nonce[:]...)
		b = append(b, r.Protocol, 0, 0, 0)
		b = binary.BigEndian.AppendUint16(b, r.InternalPort)
		b = binary.BigEndian.AppendUint16(b, r.ExternalPort)
		ext := pcpAddr16(r.ExternalIP)
		b = append(b, ext[:]...)
		if r.Opcode == pcpOpPeer {
			b = binary.BigEndian.AppendUint16(b, r.PeerPort)
			b = append(b, 0, 0)
			peer := pcpAddr16(r.PeerIP)
			b = append(b, peer[:]...)
		}
	}
	for _, o := range r.Options {
		b = append(b, o.Code, 0)
		b = binary.BigEndian.AppendUint16(b, uint16(len(o.Data)))
		b = append(b, o.Data...)
		for len(b)%4 != 0 {
			b = append(b, 0)
		}
	}
	return append(b, r.Trailer...)
}

// pcpResponse is a response decoded from §7.2 (header), §11.1 and §12.1
// (bodies) and §7.3 (options).
type pcpResponse struct {
	From     netip.AddrPort
	Raw      []byte
	Version  uint8
	Opcode   uint8 // without the R bit
	Result   uint8
	Lifetime uint32
	Epoch    uint32
	Reserved [12]byte
	// HasBody is false for an error response with no opcode body.
	HasBody      bool
	Nonce        pcpNonce
	Protocol     uint8
	InternalPort uint16
	ExternalPort uint16
	ExternalIP   netip.Addr
	PeerPort     uint16
	PeerIP       netip.Addr
	Options      []pcpOption
}

func (r *pcpResponse) String() string {
	return fmt.Sprintf("v%d op %d result %d lifetime %d epoch %d nonce %x proto %d internal %d external %s:%d from %s (% x)",
		r.Version, r.Opcode, r.Result, r.Lifetime, r.Epoch, r.Nonce[:], r.Protocol, r.InternalPort, r.ExternalIP, r.ExternalPort, r.From, r.Raw)
}

func addrFrom16(b []byte) netip.Addr {
	return netip.AddrFrom16([16]byte(b)).Unmap()
}

// decodePCPResponse reads a PCP response and refuses what §7 and §8
// forbid a server to send.
func decodePCPResponse(b []byte) (*pcpResponse, error) {
	if len(b) < pcpHeaderLen || len(b) > pcpMaxMessage || len(b)%4 != 0 {
		return nil, fmt.Errorf("response of %d octets: want a multiple of 4 from %d to %d", len(b), pcpHeaderLen, pcpMaxMessage)
	}
	if b[1]&pcpResponseBit == 0 {
		return nil, fmt.Errorf("R bit clear in opcode octet 0x%02x", b[1])
	}
	if b[2] != 0 {
		return nil, fmt.Errorf("reserved octet 2 is 0x%02x, must be sent as 0", b[2])
	}
	r := &pcpResponse{
		Raw:      append([]byte(nil), b...),
		Version:  b[0],
		Opcode:   b[1] &^ pcpResponseBit,
		Result:   b[3],
		Lifetime: binary.BigEndian.Uint32(b[4:]),
		Epoch:    binary.BigEndian.Uint32(b[8:]),
	}
	copy(r.Reserved[:], b[12:24])
	rest := b[pcpHeaderLen:]
	var size int
	switch r.Opcode {
	case pcpOpAnnounce:
	case pcpOpMap:
		size = pcpMapBodyLen
	case pcpOpPeer:
		size = pcpPeerBodyLen
	default:
		// An opcode the server does not know has no body it could copy.
		if len(rest) != 0 {
			return nil, fmt.Errorf("opcode %d answered with %d octets after the header", r.Opcode, len(rest))
		}
		return r, nil
	}
	if len(rest) < size {
		if r.Result != pcpSuccess && len(rest) == 0 {
			return r, nil // an error to a request too short to copy
		}
		return nil, fmt.Errorf("opcode %d response has %d octets after the header, its body needs %d", r.Opcode, len(rest), size)
	}
	if size > 0 {
		r.HasBody = true
		body := rest[:size]
		copy(r.Nonce[:], body[0:12])
		r.Protocol = body[12]
		if body[13] != 0 || body[14] != 0 || body[15] != 0 {
			return nil, fmt.Errorf("reserved octets after the protocol are % x", body[13:16])
		}
		r.InternalPort = binary.BigEndian.Uint16(body[16:])
		r.ExternalPort = binary.BigEndian.Uint16(body[18:])
		r.ExternalIP = addrFrom16(body[20:36])
		if size == pcpPeerBodyLen {
			r.PeerPort = binary.BigEndian.Uint16(body[36:])
			if body[38] != 0 || body[39] != 0 {
				return nil, fmt.Errorf("reserved octets after the remote peer port are % x", body[38:40])
			}
			r.PeerIP = addrFrom16(body[40:56])
		}
	}
	for rest = rest[size:]; len(rest) > 0; {
		if len(rest) < 4 {
			return nil, fmt.Errorf("%d octets left, less than an option header", len(rest))
		}
		length := int(binary.BigEndian.Uint16(rest[2:]))
		padded := 4 + (length+3)/4*4
		if padded > len(rest) {
			return nil, fmt.Errorf("option %d of length %d overruns the message", rest[0], length)
		}
		r.Options = append(r.Options, pcpOption{Code: rest[0], Data: append([]byte(nil), rest[4:4+length]...)})
		rest = rest[padded:]
	}
	return r, nil
}

// pcpClient is one UDP socket in a namespace, not connected, so that it
// sees the source of every answer.
type pcpClient struct {
	conn   *net.UDPConn
	server netip.AddrPort
}

func newPCPClient(t *testing.T, ns *netns.NS, local, server netip.AddrPort) *pcpClient {
	t.Helper()
	c := &pcpClient{server: server}
	if err := ns.Do(func() (err error) {
		c.conn, err = net.ListenUDP("udp4", net.UDPAddrFromAddrPort(local))
		return err
	}); err != nil {
		t.Fatalf("pcp client on %s: %v", local, err)
	}
	t.Cleanup(func() { c.conn.Close() })
	return c
}

// send writes one raw datagram to the server.
func (c *pcpClient) send(t *testing.T, b []byte) {
	t.Helper()
	if _, err := c.conn.WriteToUDPAddrPort(b, c.server); err != nil {
		t.Fatalf("send to %s: %v", c.server, err)
	}
}

// receive waits up to timeout for a datagram; nil if none came.
func (c *pcpClient) receive(t *testing.T, timeout time.Duration) *pcpResponse {
	t.Helper()
	buf := make([]byte, 2048)
	c.conn.SetReadDeadline(time.Now().Add(timeout))
	n, from, err := c.conn.ReadFromUDPAddrPort(buf)
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return nil
	}
	if err != nil {
		t.Fatalf("receive: %v", err)
	}
	r, err := decodePCPResponse(buf[:n])
	if err != nil {
		t.Fatalf("undecodable answer from %s: %v\n% x", from, err, buf[:n])
	}
	r.From = netip.AddrPortFrom(from.Addr().Unmap(), from.Port())
	return r
}

// exchange sends req and returns its answer, which must come from the
// server's address and port.
func (c *pcpClient) exchange(t *testing.T, req []byte) *pcpResponse {
	t.Helper()
	c.send(t, req)
	r := c.receive(t, 3*time.Second)
	if r == nil {
		t.Fatalf("no answer from %s within 3s to % x", c.server, req)
	}
	if r.From != c.server {
		t.Errorf("answer came from %s, want the address and port asked, %s: %v", r.From, c.server, r)
	}
	if r.Version != pcpVersion {
		t.Errorf("answer version %d, want %d: %v", r.Version, pcpVersion, r)
	}
	return r
}

// silent sends b and expects no answer.
func (c *pcpClient) silent(t *testing.T, b []byte, what string) {
	t.Helper()
	c.send(t, b)
	if r := c.receive(t, 700*time.Millisecond); r != nil {
		t.Errorf("%s: answered %v, want no answer", what, r)
	}
}

// mapReq is a MAP request of the client at client.
func mapReq(client netip.Addr, nonce pcpNonce, proto uint8, internal, suggested uint16, lifetime uint32) pcpRequest {
	return pcpRequest{Opcode: pcpOpMap, Lifetime: lifetime, Client: client, Nonce: nonce, Protocol: proto,
		InternalPort: internal, ExternalPort: suggested}
}

// wantMapped checks a successful MAP or PEER answer against its request.
func wantMapped(t *testing.T, what string, r *pcpResponse, req pcpRequest, block mapping.Block, lifetime uint32) {
	t.Helper()
	switch {
	case r.Result != pcpSuccess:
		t.Fatalf("%s: result %d, want SUCCESS: %v", what, r.Result, r)
	case r.Opcode != req.Opcode || !r.HasBody:
		t.Fatalf("%s: opcode %d (body %v), want %d with a body: %v", what, r.Opcode, r.HasBody, req.Opcode, r)
	case r.Nonce != req.Nonce || r.Protocol != req.Protocol || r.InternalPort != req.InternalPort:
		t.Errorf("%s: nonce, protocol or internal port not the request's: %v", what, r)
	case r.Reserved != [12]byte{}:
		t.Errorf("%s: reserved header bits % x in a success, must be 0", what, r.Reserved[:])
	}
	if r.ExternalIP != block.Public || r.ExternalPort < block.PortLo || r.ExternalPort > block.PortHi {
		t.Errorf("%s: external %s:%d, want %s ports %d-%d: %v", what, r.ExternalIP, r.ExternalPort, block.Public, block.PortLo, block.PortHi, r)
	}
	if r.Lifetime != lifetime {
		t.Errorf("%s: lifetime %d, want %d: %v", what, r.Lifetime, lifetime, r)
	}
}

// wantResult checks an error answer's result and that it copies what the
// request said where it has a body (§8.3).
func wantResult(t *testing.T, what string, r *pcpResponse, req pcpRequest, result uint8) {
	t.Helper()
	if r.Result != result {
		t.Errorf("%s: result %d, want %d: %v", what, r.Result, result, r)
		return
	}
	if r.Opcode != req.Opcode {
		t.Errorf("%s: opcode %d, want %d: %v", what, r.Opcode, req.Opcode, r)
	}
	if result != pcpSuccess && r.Lifetime == 0 {
		t.Errorf("%s: error with lifetime 0; §7.4 says how long to wait before retrying: %v", what, r)
	}
	if r.HasBody && (r.Nonce != req.Nonce || r.InternalPort != req.InternalPort || r.Protocol != req.Protocol) {
		t.Errorf("%s: error body does not copy the request's nonce, protocol and port: %v", what, r)
	}
}

// udpListener is a UDP socket in a subscriber namespace that keeps what
// arrives.
type udpListener struct {
	conn *net.UDPConn
	mu   sync.Mutex
	got  []udpArrival
}

type udpArrival struct {
	from netip.AddrPort
	data []byte
	at   time.Time
}

func listenUDP(t *testing.T, ns *netns.NS, at netip.AddrPort) *udpListener {
	t.Helper()
	l := &udpListener{}
	if err := ns.Do(func() (err error) {
		l.conn, err = net.ListenUDP("udp4", net.UDPAddrFromAddrPort(at))
		return err
	}); err != nil {
		t.Fatalf("listen on %s: %v", at, err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		buf := make([]byte, 2048)
		for {
			n, from, err := l.conn.ReadFromUDPAddrPort(buf)
			if err != nil {
				return
			}
			l.mu.Lock()
			l.got = append(l.got, udpArrival{from: netip.AddrPortFrom(from.Addr().Unmap(), from.Port()), data: bytes.Clone(buf[:n]), at: time.Now()})
			l.mu.Unlock()
		}
	}()
	t.Cleanup(func() { l.conn.Close(); <-done })
	return l
}

func (l *udpListener) arrivals() []udpArrival {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]udpArrival(nil), l.got...)
}

// sendUDPFrom sends one datagram from the namespace, from any port.
func sendUDPFrom(t *testing.T, ns *netns.NS, to netip.AddrPort, payload []byte) {
	t.Helper()
	if err := ns.Do(func() error {
		c, err := net.DialUDP("udp4", nil, net.UDPAddrFromAddrPort(to))
		if err != nil {
			return err
		}
		defer c.Close()
		_, err = c.Write(payload)
		return err
	}); err != nil {
		t.Fatalf("send to %s: %v", to, err)
	}
}

// TestPCPClient: a client speaking RFC 6887 from a subscriber namespace
// maps a TCP port (the suggested port of its block, its own public
// address, the lifetime clamped to max_lifetime and min_lifetime, a
// sane epoch); a renewal under the same nonce keeps the port and one
// under another nonce is NOT_AUTHORIZED without harm to the mapping;
// ANNOUNCE is answered; PEER names the public port an outbound UDP flow
// already has; a deletion under the nonce closes the port. Every answer
// comes from the gateway's port 5351. Run under both filtering modes: with
// address-and-port-dependent filtering the internet reaches the MAPped
// server although the subscriber never sent to it, while a stranger
// still cannot reach the PEER's flow.
func TestPCPClient(t *testing.T) {
	for _, mode := range []struct{ name, filtering, prefix string }{
		{"endpoint-independent", config.FilteringEndpointIndependent, "bn-e2epcpcli"},
		{"address-and-port-dependent", config.FilteringAddressPort, "bn-e2epcpclia"},
	} {
		t.Run(mode.name, func(t *testing.T) { testPCPClient(t, mode.prefix, mode.filtering) })
	}
}

func testPCPClient(t *testing.T, prefix, filtering string) {
	started := time.Now()
	e := startEnvWith(t, prefix, "filtering: "+filtering+"\npcp: {enabled: true, max_lifetime: 1h, min_lifetime: 2m}\n")
	apdf := filtering == config.FilteringAddressPort
	sub := e.topo.Subscribers[0]
	block := e.forward(t, sub.Addr)
	server := netip.AddrPortFrom(sub.Gateway, pcpServerPort)
	tcpSrv := startTCPEcho(t, sub.NS, netip.AddrPortFrom(sub.Addr, 8080))

	// MAP from the client port, for a port of the block and more than
	// max_lifetime.
	fromClientPort := newPCPClient(t, sub.NS, netip.AddrPortFrom(sub.Addr, pcpClientPort), server)
	nonce := newNonce(t)
	suggested := block.PortLo + 7
	req := mapReq(sub.Addr, nonce, ipProtoTCP, 8080, suggested, 7200)
	r := fromClientPort.exchange(t, req.encode())
	wantMapped(t, "MAP", r, req, block, 3600)
	if r.ExternalPort != suggested {
		t.Errorf("MAP: external port %d, want the suggested %d, free in the block", r.ExternalPort, suggested)
	}
	if limit := uint32(time.Since(started)/time.Second) + 2; r.Epoch > limit {
		t.Errorf("MAP: epoch %d, but the PCP state is at most %ds old", r.Epoch, limit)
	}
	epoch := r.Epoch
	public := netip.AddrPortFrom(r.ExternalIP, r.ExternalPort)

	// The subscriber has sent nothing to anyone: under APDF only the MAP
	// lets the internet in.
	if err := tcpEchoFrom(e.topo.Internet, public, 3*time.Second); err != nil {
		t.Fatalf("internet to %s (MAPped to %s:8080): %v", public, sub.Addr, err)
	}
	if rem := tcpSrv.Remotes(); len(rem) != 1 || rem[0].Addr() != e.topo.InternetAddr {
		t.Errorf("the subscriber's server saw %v, want one connection from %s", rem, e.topo.InternetAddr)
	}
	if st := e.pcpStatus(t); st.Mappings["tcp"] != 1 {
		t.Errorf("status after the MAP: %+v, want one TCP mapping", st)
	}

	// Renewals from another port: the same nonce keeps the port, with
	// the lifetime raised to min_lifetime; another nonce is refused.
	c := newPCPClient(t, sub.NS, netip.AddrPortFrom(sub.Addr, 0), server)
	renew := mapReq(sub.Addr, nonce, ipProtoTCP, 8080, 0, 30)
	r = c.exchange(t, renew.encode())
	wantMapped(t, "renewal", r, renew, block, 120)
	if got := netip.AddrPortFrom(r.ExternalIP, r.ExternalPort); got != public {
		t.Errorf("renewal moved the mapping from %s to %s", public, got)
	}
	if r.Epoch < epoch {
		t.Errorf("epoch went back from %d to %d", epoch, r.Epoch)
	}
	epoch = r.Epoch
	stranger := mapReq(sub.Addr, newNonce(t), ipProtoTCP, 8080, 0, 600)
	r = c.exchange(t, stranger.encode())
	wantResult(t, "renewal with another nonce", r, stranger, pcpNotAuthorized)
	if err := tcpEchoFrom(e.topo.Internet, public, 3*time.Second); err != nil {
		t.Errorf("the mapping broke after a renewal under another nonce: %v", err)
	}

	// ANNOUNCE asks for nothing and gets SUCCESS with lifetime 0.
	announce := pcpRequest{Opcode: pcpOpAnnounce, Client: sub.Addr}
	r = c.exchange(t, announce.encode())
	if r.Opcode != pcpOpAnnounce || r.Result != pcpSuccess || r.Lifetime != 0 || len(r.Raw) != pcpHeaderLen || r.Epoch < epoch {
		t.Errorf("ANNOUNCE: %v, want SUCCESS, lifetime 0, a bare header and an epoch from %d", r, epoch)
	}

	// PEER for a flow the subscriber made names its public port.
	echo, err := netns.StartUDPEcho(e.topo.Internet, netip.AddrPortFrom(e.topo.ServerAddrs[0], 9000))
	if err != nil {
		t.Fatal(err)
	}
	defer echo.Close()
	flow := listenUDP(t, sub.NS, netip.AddrPortFrom(sub.Addr, 40000))
	if _, err := flow.conn.WriteToUDPAddrPort([]byte("out"), echo.Addr); err != nil {
		t.Fatal(err)
	}
	testutil.Eventually(t, 3*time.Second, func() bool { return len(flow.arrivals()) == 1 }, "the echo of the subscriber's datagram")
	seen := lastPort(t, echo)
	peerNonce := newNonce(t)
	peer := pcpRequest{Opcode: pcpOpPeer, Lifetime: 600, Client: sub.Addr, Nonce: peerNonce, Protocol: ipProtoUDP,
		InternalPort: 40000, PeerPort: echo.Addr.Port(), PeerIP: echo.Addr.Addr()}
	r = c.exchange(t, peer.encode())
	wantMapped(t, "PEER", r, peer, block, 600)
	if got := netip.AddrPortFrom(r.ExternalIP, r.ExternalPort); got != seen {
		t.Errorf("PEER: external %s, the echo server saw the flow as %s", got, seen)
	}
	if r.PeerPort != echo.Addr.Port() || r.PeerIP != echo.Addr.Addr() {
		t.Errorf("PEER: remote peer %s:%d, want the request's %s", r.PeerIP, r.PeerPort, echo.Addr)
	}
	if st := e.pcpStatus(t); st.Mappings["tcp"] != 1 || st.Mappings["udp"] != 1 {
		t.Errorf("status after the PEER: %+v, want one TCP and one UDP mapping", st)
	}
	// A PEER opens nothing: under APDF a remote the subscriber never sent
	// to stays out, and under EIF it comes in. Either way the filtering
	// mode is in force, so the MAP's inbound above means something.
	sendUDPFrom(t, e.topo.Internet, seen, []byte("stranger"))
	strangerIn := testutil.Poll(time.Second, func() bool { return len(flow.arrivals()) > 1 })
	if apdf && strangerIn {
		t.Errorf("APDF: a stranger reached the subscriber through the PEER's flow %s", seen)
	}
	if !apdf && !strangerIn {
		t.Errorf("EIF: a stranger did not reach the subscriber through its flow %s", seen)
	}

	// Deletion under the nonce: SUCCESS with lifetime 0, and the port is
	// closed.
	del := mapReq(sub.Addr, nonce, ipProtoTCP, 8080, 0, 0)
	r = c.exchange(t, del.encode())
	if r.Result != pcpSuccess || r.Lifetime != 0 || r.Nonce != nonce || r.InternalPort != 8080 {
		t.Errorf("deletion: %v, want SUCCESS with lifetime 0", r)
	}
	if err := tcpEchoFrom(e.topo.Internet, public, time.Second); err == nil {
		t.Errorf("the internet still reaches %s after the deletion", public)
	}
	// Deleting the PEER gives the flow back to the NAT: it still carries
	// the subscriber's traffic on the same port.
	delPeer := peer
	delPeer.Lifetime = 0
	r = c.exchange(t, delPeer.encode())
	if r.Result != pcpSuccess || r.Lifetime != 0 {
		t.Errorf("PEER deletion: %v, want SUCCESS with lifetime 0", r)
	}
	before := len(flow.arrivals())
	if _, err := flow.conn.WriteToUDPAddrPort([]byte("again"), echo.Addr); err != nil {
		t.Fatal(err)
	}
	testutil.Eventually(t, 3*time.Second, func() bool { return len(flow.arrivals()) > before }, "the echo after the PEER's deletion")
	if got := lastPort(t, echo); got != seen {
		t.Errorf("after the PEER's deletion the flow left as %s, before %s", got, seen)
	}
	if st := e.pcpStatus(t); st.Mappings["tcp"] != 0 || st.Mappings["udp"] != 0 {
		t.Errorf("status after the deletions: %+v, want no mapping", st)
	}
}

// flowsOf lists the kernel's forward entries of one inside address.
func flowsOf(t *testing.T, e *env, inside netip.Addr) []loader.Flow {
	t.Helper()
	var out []loader.Flow
	for _, f := range readPinned(t, e, (*loader.Pinned).Flows) {
		if loader.AddrFromBE32(f.Key.Addr) == inside {
			out = append(out, f)
		}
	}
	return out
}

// publicPortTaken says whether any flow holds public:port.
func publicPortTaken(t *testing.T, e *env, public netip.Addr, port uint16) bool {
	t.Helper()
	for _, f := range readPinned(t, e, (*loader.Pinned).Flows) {
		if loader.AddrFromBE32(f.Value.NatAddr) == public && loader.PortFromBE16(f.Value.NatPort) == port {
			return true
		}
	}
	return false
}

// udpSocketDrops sums the drops the kernel counted on the namespace's UDP
// sockets bound to port: datagrams that found the receive buffer full.
func udpSocketDrops(t *testing.T, ns *netns.NS, port uint16) uint64 {
	t.Helper()
	out, err := ns.Exec(t.Context(), "cat", "/proc/net/udp")
	if err != nil {
		t.Fatalf("read /proc/net/udp: %v\n%s", err, out)
	}
	var drops uint64
	local := fmt.Sprintf(":%04X", port)
	for _, line := range strings.Split(string(out), "\n")[1:] {
		fields := strings.Fields(line)
		if len(fields) < 13 || !strings.HasSuffix(fields[1], local) {
			continue
		}
		n, err := strconv.ParseUint(fields[len(fields)-1], 10, 64)
		if err != nil {
			t.Fatalf("/proc/net/udp drops %q: %v", fields[len(fields)-1], err)
		}
		drops += n
	}
	return drops
}

// linkDrops is what an interface dropped on its way in and out: a veth
// whose peer's ring is full drops there, before any socket.
func linkDrops(t *testing.T, ns *netns.NS, iface string) uint64 {
	t.Helper()
	out, err := ns.Exec(t.Context(), "ip", "-j", "-s", "link", "show", "dev", iface)
	if err != nil {
		t.Fatalf("ip -s link show %s: %v\n%s", iface, err, out)
	}
	var links []struct {
		Stats struct {
			RX struct{ Dropped uint64 } `json:"rx"`
			TX struct{ Dropped uint64 } `json:"tx"`
		} `json:"stats64"`
	}
	if err := json.Unmarshal(out, &links); err != nil || len(links) != 1 {
		t.Fatalf("ip -s link show %s: %v\n%s", iface, err, out)
	}
	return links[0].Stats.RX.Dropped + links[0].Stats.TX.Dropped
}

// TestPCPHostileRequests: what a hostile or broken client sends the PCP
// server. PREFER_FAILURE for a port of another subscriber's block is
// CANNOT_PROVIDE_EXTERNAL, and without it the client gets a port of its
// own; the other's port is never mapped. A request from an address bound
// to another MAC is diverted by XDP and refused NOT_AUTHORIZED, counted as
// suspect; a source that is no subscriber is refused NOT_AUTHORIZED; both
// create nothing. A flood of 2000 MAPs leaves the agent up, at most
// max_mappings mappings, the rest counted as rate limited, and another
// subscriber is served at once. Malformed requests get the result codes
// of RFC 6887 §8.3 (or silence for one octet) and create nothing.
func TestPCPHostileRequests(t *testing.T) {
	topo := netns.NewTestTopology(t, "bn-e2epcphost")
	owner, victim := topo.Subscribers[0], topo.Subscribers[1]
	// Further subscribers on the owner's line, each with its own block,
	// bucket and quota: one floods, one sends garbage.
	flooder, garbler := netip.MustParseAddr("100.64.0.20"), netip.MustParseAddr("100.64.0.21")
	if err := topo.AddSubscriberAddrs(t.Context(), 0, []netip.Addr{flooder, garbler}); err != nil {
		t.Fatal(err)
	}
	// An address outside the inside prefixes on the owner's line, routed
	// back to it by the router.
	outsider := netip.MustParseAddr("10.99.0.5")
	ownerMAC := ifaceMAC(t, owner.NS, owner.Iface)
	for _, step := range []struct {
		ns   *netns.NS
		argv []string
	}{
		{owner.NS, []string{"ip", "addr", "add", outsider.String() + "/32", "dev", owner.Iface}},
		{topo.Router, []string{"ip", "route", "add", outsider.String() + "/32", "dev", topo.InsideIfaces[0]}},
		{topo.Router, []string{"ip", "neigh", "replace", outsider.String(), "lladdr", ownerMAC.String(), "dev", topo.InsideIfaces[0], "nud", "permanent"}},
	} {
		if out, err := step.ns.Exec(t.Context(), step.argv...); err != nil {
			t.Fatalf("%v: %v\n%s", step.argv, err, out)
		}
	}
	// The victim's address is bound to a MAC that is not its line's.
	wrongMAC := "02:00:00:00:00:99"
	if ifaceMAC(t, victim.NS, victim.Iface).String() == wrongMAC {
		wrongMAC = "02:00:00:00:00:98"
	}
	const burst, maxMappings = 10, 4
	extra := fmt.Sprintf("inside: {interfaces: [%s, %s], prefixes: [%s], static_bindings: [{address: %s, mac: %q}]}\n",
		topo.InsideIfaces[0], topo.InsideIfaces[1], topo.InsidePrefix, victim.Addr, wrongMAC) +
		fmt.Sprintf("pcp: {enabled: true, max_mappings: %d, rate: 5, burst: %d}\n", maxMappings, burst) +
		"metrics: {listen: \"" + metricsListen + "\"}\n"
	e := prepareEnvOn(t, topo, extra)
	e.start(t)
	metric := func(t *testing.T, sample string) float64 {
		t.Helper()
		return metricValue(t, e.metricsText(t, metricsListen), sample)
	}
	const suspectSample = "blocknat_pcp_suspect_requests_total"
	const rateLimitedSample = `blocknat_pcp_dropped_total{reason="rate_limited"}`

	t.Run("spoofed and foreign sources", func(t *testing.T) {
		beforeStats, beforeMetric := e.stats(t)["pcp_suspect"], metric(t, suspectSample)
		c := newPCPClient(t, victim.NS, netip.AddrPortFrom(victim.Addr, 0), netip.AddrPortFrom(victim.Gateway, pcpServerPort))
		req := mapReq(victim.Addr, newNonce(t), ipProtoTCP, 8080, 0, 600)
		wantResult(t, "MAP from a source bound to another MAC", c.exchange(t, req.encode()), req, pcpNotAuthorized)
		if got := e.stats(t)["pcp_suspect"] - beforeStats; got != 1 {
			t.Errorf("pcp_suspect rose by %d, want 1", got)
		}
		if got := metric(t, suspectSample) - beforeMetric; got != 1 {
			t.Errorf("%s rose by %v, want 1", suspectSample, got)
		}
		if f := flowsOf(t, e, victim.Addr); len(f) != 0 {
			t.Errorf("the spoofed request left flows %+v", f)
		}

		// handle.go refuses a source that is no subscriber (within the
		// shared refusal bucket) rather than falling silent.
		c = newPCPClient(t, owner.NS, netip.AddrPortFrom(outsider, 0), netip.AddrPortFrom(owner.Gateway, pcpServerPort))
		req = mapReq(outsider, newNonce(t), ipProtoTCP, 8080, 0, 600)
		wantResult(t, "MAP from an address no subscriber has", c.exchange(t, req.encode()), req, pcpNotAuthorized)
		if f := flowsOf(t, e, outsider); len(f) != 0 {
			t.Errorf("the foreign request left flows %+v", f)
		}
		if st := e.pcpStatus(t); st.Mappings["tcp"] != 0 || st.Mappings["udp"] != 0 {
			t.Errorf("status: %+v, want no mapping", st)
		}
	})

	t.Run("another subscriber's port", func(t *testing.T) {
		own, other := e.forward(t, owner.Addr), e.forward(t, victim.Addr)
		theirs := other.PortLo + 3
		srv := startTCPEcho(t, owner.NS, netip.AddrPortFrom(owner.Addr, 7001))
		c := newPCPClient(t, owner.NS, netip.AddrPortFrom(owner.Addr, 0), netip.AddrPortFrom(owner.Gateway, pcpServerPort))
		nonce := newNonce(t)
		preferFailure := []pcpOption{{Code: pcpOptPreferFail}}
		for _, ip := range []netip.Addr{{}, other.Public} {
			req := mapReq(owner.Addr, nonce, ipProtoTCP, 7001, theirs, 600)
			req.ExternalIP, req.Options = ip, preferFailure
			r := c.exchange(t, req.encode())
			wantResult(t, fmt.Sprintf("PREFER_FAILURE for %s:%d of another block", ip, theirs), r, req, pcpCannotProvideExternal)
			if len(r.Options) != 1 || r.Options[0].Code != pcpOptPreferFail {
				t.Errorf("PREFER_FAILURE not repeated in the answer (§13.2): %v", r.Options)
			}
		}
		if f := flowsOf(t, e, owner.Addr); len(f) != 0 {
			t.Errorf("a refused MAP left flows %+v", f)
		}
		req := mapReq(owner.Addr, nonce, ipProtoTCP, 7001, theirs, 600)
		req.ExternalIP = other.Public
		r := c.exchange(t, req.encode())
		wantMapped(t, "MAP for another block's port without PREFER_FAILURE", r, req, own, 600)
		if publicPortTaken(t, e, other.Public, theirs) {
			t.Errorf("%s:%d, the other subscriber's, is mapped", other.Public, theirs)
		}
		if f := flowsOf(t, e, owner.Addr); len(f) != 1 || loader.PortFromBE16(f[0].Value.NatPort) != r.ExternalPort {
			t.Errorf("kernel flows of %s: %+v, want the one at port %d", owner.Addr, f, r.ExternalPort)
		}
		if err := tcpEchoFrom(e.topo.Internet, netip.AddrPortFrom(r.ExternalIP, r.ExternalPort), 3*time.Second); err != nil {
			t.Errorf("internet to the port granted: %v", err)
		}
		if err := tcpEchoFrom(e.topo.Internet, netip.AddrPortFrom(other.Public, theirs), time.Second); err == nil {
			t.Errorf("internet reached %s:%d, the other subscriber's port", other.Public, theirs)
		}
		if n := len(srv.Remotes()); n != 1 {
			t.Errorf("the owner's server saw %d connections, want the one to its own port", n)
		}
	})

	t.Run("flood", func(t *testing.T) {
		beforeDropped := metric(t, rateLimitedSample)
		beforeStatus := e.pcpStatus(t)
		beforeSocket := udpSocketDrops(t, e.topo.Router, pcpServerPort)
		floodLinkDrops := func() uint64 {
			return linkDrops(t, owner.NS, owner.Iface) + linkDrops(t, e.topo.Router, e.topo.InsideIfaces[0])
		}
		beforeLink := floodLinkDrops()
		c := newPCPClient(t, owner.NS, netip.AddrPortFrom(flooder, 0), netip.AddrPortFrom(owner.Gateway, pcpServerPort))
		results := map[uint8]int{}
		var mu sync.Mutex
		done := make(chan struct{})
		go func() {
			defer close(done)
			buf := make([]byte, 2048)
			for {
				c.conn.SetReadDeadline(time.Now().Add(1500 * time.Millisecond))
				n, _, err := c.conn.ReadFromUDPAddrPort(buf)
				if err != nil {
					return
				}
				r, err := decodePCPResponse(buf[:n])
				mu.Lock()
				if err != nil {
					results[255]++
				} else {
					results[r.Result]++
				}
				mu.Unlock()
			}
		}()
		nonce := newNonce(t)
		const flood = 2000
		floodStart := time.Now()
		for i := range flood {
			req := mapReq(flooder, nonce, ipProtoTCP, uint16(20000+i), 0, 600)
			if _, err := c.conn.WriteToUDPAddrPort(req.encode(), c.server); err != nil {
				t.Fatalf("flood request %d: %v", i, err)
			}
		}
		took := time.Since(floodStart)
		<-done
		answered := 0
		for code, n := range results {
			answered += n
			if code != pcpSuccess && code != pcpUserExQuota && code != pcpNoResources {
				t.Errorf("%d answers with result %d (255: undecodable), want only SUCCESS, USER_EX_QUOTA and NO_RESOURCES", n, code)
			}
		}
		t.Logf("flood of %d in %v: answers by result %v", flood, took, results)
		// The bucket holds the burst and refills at 5 a second while the
		// flood lasts; beyond it one NO_RESOURCES a second.
		refill := int(took.Seconds()*5) + 1
		if results[pcpSuccess] != maxMappings {
			t.Errorf("flood: %d SUCCESS, want max_mappings, %d", results[pcpSuccess], maxMappings)
		}
		if q := results[pcpUserExQuota]; q < burst-maxMappings || q > burst-maxMappings+refill {
			t.Errorf("flood: %d USER_EX_QUOTA, want the rest of the burst of %d (and %d refilled)", q, burst, refill)
		}
		if n := results[pcpNoResources]; n < 1 || n > int(took.Seconds())+2 {
			t.Errorf("flood: %d NO_RESOURCES in %v, want one a second", n, took)
		}
		if exited, err := e.agent.Exited(); exited {
			t.Fatalf("the agent exited under the flood: %v", err)
		}
		st := e.pcpStatus(t)
		if got := st.Mappings["tcp"] - beforeStatus.Mappings["tcp"]; got != results[pcpSuccess] {
			t.Errorf("status counts %d new TCP mappings, the flood was granted %d", got, results[pcpSuccess])
		}
		if f := flowsOf(t, e, flooder); len(f) != results[pcpSuccess] {
			t.Errorf("the flooder holds %d kernel flows, it was granted %d mappings", len(f), results[pcpSuccess])
		}
		dropped := metric(t, rateLimitedSample) - beforeDropped
		socketDrops := udpSocketDrops(t, e.topo.Router, pcpServerPort) - beforeSocket
		lost := floodLinkDrops() - beforeLink
		t.Logf("flood: %v dropped as rate limited, %d by a full socket, %d on the link", dropped, socketDrops, lost)
		// Every request is accounted for: answered, dropped by the
		// server's bucket, or lost before the server read it.
		if dropped < 1 || int(dropped)+answered+int(socketDrops+lost) != flood {
			t.Errorf("%s rose by %v; with %d answered, %d dropped by the socket and %d on the link that is not the %d sent",
				rateLimitedSample, dropped, answered, socketDrops, lost, flood)
		}
		if st.DroppedBy["rate_limited"] < uint64(dropped) {
			t.Errorf("status counts %d rate-limited drops, the metric %v", st.DroppedBy["rate_limited"], dropped)
		}
		// Another subscriber is served at once.
		o := newPCPClient(t, owner.NS, netip.AddrPortFrom(owner.Addr, 0), netip.AddrPortFrom(owner.Gateway, pcpServerPort))
		req := mapReq(owner.Addr, newNonce(t), ipProtoUDP, 7002, 0, 600)
		wantMapped(t, "another subscriber's MAP right after the flood", o.exchange(t, req.encode()), req, e.forward(t, owner.Addr), 600)
	})

	t.Run("malformed", func(t *testing.T) {
		c := newPCPClient(t, owner.NS, netip.AddrPortFrom(garbler, 0), netip.AddrPortFrom(owner.Gateway, pcpServerPort))
		beforeStatus := e.pcpStatus(t)
		c.silent(t, []byte{pcpVersion}, "one octet")
		nonce := newNonce(t)
		good := func(port uint16) pcpRequest { return mapReq(garbler, nonce, ipProtoTCP, port, 0, 600) }

		v1 := good(30001)
		v1.Version = 1
		r := c.exchange(t, v1.encode())
		if r.Result != pcpUnsuppVersion || r.Version != pcpVersion {
			t.Errorf("version 1: %v, want UNSUPP_VERSION in a version %d answer", r, pcpVersion)
		}
		for _, tc := range []struct {
			name   string
			req    pcpRequest
			result uint8
		}{
			{"length not a multiple of 4", func() pcpRequest { q := good(30002); q.Trailer = []byte{0, 0}; return q }(), pcpMalformedRequest},
			{"opcode 9", pcpRequest{Opcode: 9, Lifetime: 600, Client: garbler}, pcpUnsuppOpcode},
			{"client IP not the source", func() pcpRequest { q := good(30003); q.Client = netip.MustParseAddr("100.64.0.99"); return q }(), pcpAddressMismatch},
			{"unknown mandatory option 100", func() pcpRequest { q := good(30004); q.Options = []pcpOption{{Code: 100}}; return q }(), pcpUnsuppOption},
			{"protocol ICMP", func() pcpRequest { q := good(30005); q.Protocol = ipProtoICMP; return q }(), pcpUnsuppProtocol},
		} {
			wantResult(t, tc.name, c.exchange(t, tc.req.encode()), tc.req, tc.result)
		}
		if f := flowsOf(t, e, garbler); len(f) != 0 {
			t.Errorf("malformed requests left flows %+v", f)
		}
		if st := e.pcpStatus(t); st.Mappings["tcp"] != beforeStatus.Mappings["tcp"] || st.DroppedBy["malformed"] != beforeStatus.DroppedBy["malformed"]+1 {
			t.Errorf("status after the malformed requests: %+v, before %+v: want the same mappings and one more malformed drop", st, beforeStatus)
		}
		req := good(30006)
		r = c.exchange(t, req.encode())
		wantMapped(t, "a good MAP after the malformed ones", r, req, e.forward(t, garbler), 600)
		if f := flowsOf(t, e, garbler); len(f) != 1 || loader.PortFromBE16(f[0].Key.Port) != 30006 {
			t.Errorf("kernel flows of %s: %+v, want only the good request's", garbler, f)
		}
	})
}

// TestPCPMappingsSurviveRestart: a PCP TCP mapping and a NAT-PMP UDP one
// keep working for the internet while the agent is dead (kill -9) and
// after it starts again; the restarted server announces itself to the
// client on its port 5350 (ANNOUNCE, and to the NAT-PMP client its public
// address) and to the all-hosts group of every inside link, renews under the same nonce at the same port with an epoch
// that did not go back, and status counts both. Then, with lifetimes of 2
// to 3 seconds, a mapping works at once and is gone on time.
func TestPCPMappingsSurviveRestart(t *testing.T) {
	netns.RequireTools(t, "natpmpc")
	e := startEnvWith(t, "bn-e2epcprest", "pcp: {enabled: true, max_lifetime: 1h}\n")
	sub := e.topo.Subscribers[0]
	block := e.forward(t, sub.Addr)
	server := netip.AddrPortFrom(sub.Gateway, pcpServerPort)
	startTCPEcho(t, sub.NS, netip.AddrPortFrom(sub.Addr, 8080))
	udpSrv, err := netns.StartUDPEcho(sub.NS, netip.AddrPortFrom(sub.Addr, 9000))
	if err != nil {
		t.Fatal(err)
	}
	defer udpSrv.Close()
	announcements := listenUDP(t, sub.NS, netip.AddrPortFrom(sub.Addr, pcpClientPort))
	// A second subscriber holds no mapping, so nothing is sent to it by
	// unicast: what reaches its port 5350, bound to no address, is the
	// ANNOUNCE sent to the all-hosts group on its link (RFC 6887 §14.1.3).
	if len(e.topo.Subscribers) < 2 {
		t.Fatal("the topology has one subscriber; the multicast ANNOUNCE needs a second")
	}
	other := e.topo.Subscribers[1]
	multicast := listenUDP(t, other.NS, netip.AddrPortFrom(netip.IPv4Unspecified(), pcpClientPort))

	c := newPCPClient(t, sub.NS, netip.AddrPortFrom(sub.Addr, 0), server)
	nonce := newNonce(t)
	req := mapReq(sub.Addr, nonce, ipProtoTCP, 8080, 0, 3600)
	r := c.exchange(t, req.encode())
	wantMapped(t, "MAP", r, req, block, 3600)
	tcpPublic, epoch := netip.AddrPortFrom(r.ExternalIP, r.ExternalPort), r.Epoch
	udpPort, _ := natpmpcMap(t, sub, 0, 9000, "udp", 3600)
	udpPublic := netip.AddrPortFrom(block.Public, udpPort)
	reachable := func(when string) {
		t.Helper()
		if err := tcpEchoFrom(e.topo.Internet, tcpPublic, 3*time.Second); err != nil {
			t.Fatalf("%s: internet to %s (TCP): %v", when, tcpPublic, err)
		}
		if _, err := netns.UDPRoundTrip(e.topo.Internet, 0, udpPublic, []byte("ping"), 3*time.Second); err != nil {
			t.Fatalf("%s: internet to %s (UDP): %v", when, udpPublic, err)
		}
	}
	reachable("before the kill")

	if err := e.agent.Kill(); err != nil {
		t.Fatal(err)
	}
	killed := time.Now()
	reachable("while the agent is dead")
	if n := len(announcements.arrivals()); n != 0 {
		t.Fatalf("%d datagrams on port %d before the restart", n, pcpClientPort)
	}

	e.start(t)
	var pcpAnnounce, natpmpAnnounce *udpArrival
	testutil.Eventually(t, 5*time.Second, func() bool {
		for _, a := range announcements.arrivals() {
			switch {
			case pcpAnnounce == nil && len(a.data) > 0 && a.data[0] == pcpVersion:
				pcpAnnounce = &a
			case natpmpAnnounce == nil && len(a.data) > 0 && a.data[0] == 0:
				natpmpAnnounce = &a
			}
		}
		return pcpAnnounce != nil && natpmpAnnounce != nil
	}, "a PCP ANNOUNCE and a NAT-PMP public address announcement on %s:%d", sub.Addr, pcpClientPort)
	t.Logf("first announcements %v and %v after the kill", pcpAnnounce.at.Sub(killed), natpmpAnnounce.at.Sub(killed))
	if pcpAnnounce.from != server {
		t.Errorf("ANNOUNCE came from %s, want %s", pcpAnnounce.from, server)
	}
	a, err := decodePCPResponse(pcpAnnounce.data)
	if err != nil {
		t.Fatalf("ANNOUNCE: %v\n% x", err, pcpAnnounce.data)
	}
	if a.Opcode != pcpOpAnnounce || a.Result != pcpSuccess || a.Lifetime != 0 || len(a.Raw) != pcpHeaderLen || a.Epoch < epoch {
		t.Errorf("ANNOUNCE %v: want opcode 0x80, SUCCESS, lifetime 0, a bare header, epoch from %d", a, epoch)
	}
	// RFC 6886 §3.2: version 0, opcode 128, result 0, epoch, public address.
	if d := natpmpAnnounce.data; natpmpAnnounce.from != server || len(d) != 12 || d[1] != 128 || binary.BigEndian.Uint16(d[2:]) != 0 ||
		netip.AddrFrom4([4]byte(d[8:12])) != block.Public {
		t.Errorf("NAT-PMP announcement from %s: % x, want the public address %s from %s", natpmpAnnounce.from, d, block.Public, server)
	}

	var group *udpArrival
	testutil.Eventually(t, 5*time.Second, func() bool {
		for _, a := range multicast.arrivals() {
			if len(a.data) > 0 && a.data[0] == pcpVersion {
				group = &a
				return true
			}
		}
		return false
	}, "a PCP ANNOUNCE to the all-hosts group on %s's link", other.Addr)
	if ga, err := decodePCPResponse(group.data); err != nil || ga.Opcode != pcpOpAnnounce || ga.Result != pcpSuccess || ga.Lifetime != 0 ||
		group.from != netip.AddrPortFrom(other.Gateway, pcpServerPort) {
		t.Errorf("ANNOUNCE to the group: %v %v from %s, want opcode 0x80, SUCCESS, lifetime 0, from %s:%d",
			ga, err, group.from, other.Gateway, pcpServerPort)
	}

	reachable("after the restart")
	r = c.exchange(t, req.encode())
	wantMapped(t, "renewal after the restart", r, req, block, 3600)
	if got := netip.AddrPortFrom(r.ExternalIP, r.ExternalPort); got != tcpPublic {
		t.Errorf("renewal after the restart moved %s to %s", tcpPublic, got)
	}
	if r.Epoch < epoch {
		t.Errorf("epoch went back across the restart: %d, before the kill %d", r.Epoch, epoch)
	}
	if st := e.pcpStatus(t); st.Mappings["tcp"] != 1 || st.Mappings["udp"] != 1 || st.Announcements == 0 {
		t.Errorf("status after the restart: %+v, want one TCP and one UDP mapping and announcements sent", st)
	}

	// Expiry on time, under short lifetimes.
	del := mapReq(sub.Addr, nonce, ipProtoTCP, 8080, 0, 0)
	if r := c.exchange(t, del.encode()); r.Result != pcpSuccess || r.Lifetime != 0 {
		t.Fatalf("deletion: %v", r)
	}
	if _, life := natpmpcMap(t, sub, udpPort, 9000, "udp", 0); life != 0 {
		t.Fatalf("NAT-PMP deletion answered lifetime %d", life)
	}
	if err := e.agent.Stop(); err != nil {
		t.Fatal(err)
	}
	e.rewriteConfig(t, "pcp: {enabled: true, min_lifetime: 2s, max_lifetime: 3s}\n")
	e.start(t)
	startTCPEcho(t, sub.NS, netip.AddrPortFrom(sub.Addr, 8081))
	short := mapReq(sub.Addr, newNonce(t), ipProtoTCP, 8081, 0, 3)
	sent := time.Now()
	r = c.exchange(t, short.encode())
	granted := time.Now()
	wantMapped(t, "short MAP", r, short, block, 3)
	shortPublic := netip.AddrPortFrom(r.ExternalIP, r.ExternalPort)
	if err := tcpEchoFrom(e.topo.Internet, shortPublic, time.Second); err != nil {
		t.Fatalf("internet to the short mapping %s at once: %v", shortPublic, err)
	}
	// Probe until a connection fails: the mapping went between the start
	// of the last probe that worked and the start of the one that failed.
	var lastWorked, failed time.Time
	for failed.IsZero() {
		if time.Since(sent) > 6*time.Second {
			t.Fatalf("the 3s mapping %s still works %v after it was granted", shortPublic, time.Since(sent))
		}
		probe := time.Now()
		if err := tcpEchoFrom(e.topo.Internet, shortPublic, 300*time.Millisecond); err != nil {
			failed = probe
			break
		}
		lastWorked = probe
		time.Sleep(100 * time.Millisecond)
	}
	t.Logf("the 3s mapping worked %v and failed %v after it was granted", lastWorked.Sub(granted), failed.Sub(granted))
	if failed.Sub(granted) < 2500*time.Millisecond {
		t.Errorf("the 3s mapping stopped working after %v", failed.Sub(granted))
	}
	if failed.Sub(sent) > 4500*time.Millisecond {
		t.Errorf("the 3s mapping still worked %v after the request", lastWorked.Sub(sent))
	}
	testutil.Eventually(t, time.Second, func() bool {
		st := e.pcpStatus(t)
		return st.Mappings["tcp"] == 0 && st.Mappings["udp"] == 0
	}, "status to count no mapping after the expiry")
}

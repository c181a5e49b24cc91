package netns

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"sync"
	"time"
)

// remoteLog is the record of who a server saw; it is what a NAT test inspects.
type remoteLog struct {
	mu      sync.Mutex
	remotes []netip.AddrPort
}

func (l *remoteLog) add(ap netip.AddrPort) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.remotes = append(l.remotes, netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port()))
}

func (l *remoteLog) snapshot() []netip.AddrPort {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]netip.AddrPort(nil), l.remotes...)
}

// HTTPServer answers every request with 200 and the client's address as it saw
// it, and records that address. It listens inside a namespace and is served from
// an ordinary goroutine.
type HTTPServer struct {
	// Addr is the bound address (the real port if 0 was asked for).
	Addr netip.AddrPort

	log       remoteLog
	srv       *http.Server
	served    chan error
	closeOnce sync.Once
	closeErr  error
}

// StartHTTPServer listens on addr inside ns.
func StartHTTPServer(ns *NS, addr netip.AddrPort) (*HTTPServer, error) {
	var ln net.Listener
	if err := ns.Do(func() (err error) {
		ln, err = net.Listen("tcp", addr.String())
		return err
	}); err != nil {
		return nil, fmt.Errorf("http server in netns %s on %s: %w", ns.Name, addr, err)
	}
	s := &HTTPServer{
		Addr:   unmapped(ln.Addr().(*net.TCPAddr).AddrPort()),
		served: make(chan error, 1),
	}
	s.srv = &http.Server{
		Handler:           http.HandlerFunc(s.serveHTTP),
		ReadHeaderTimeout: 10 * time.Second,
	}
	go func() { s.served <- s.srv.Serve(ln) }()
	return s, nil
}

func (s *HTTPServer) serveHTTP(w http.ResponseWriter, r *http.Request) {
	remote, err := netip.ParseAddrPort(r.RemoteAddr)
	if err != nil {
		http.Error(w, "unparsable remote address", http.StatusInternalServerError)
		return
	}
	s.log.add(remote)
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	fmt.Fprintf(w, "%s\n", unmapped(remote))
}

// Remotes returns the remote address of every request answered so far, in order.
func (s *HTTPServer) Remotes() []netip.AddrPort { return s.log.snapshot() }

// Close stops the server and waits for it. It is idempotent.
func (s *HTTPServer) Close() error {
	s.closeOnce.Do(func() {
		err := s.srv.Close()
		if serveErr := <-s.served; !errors.Is(serveErr, http.ErrServerClosed) {
			err = errors.Join(err, serveErr)
		}
		if err != nil {
			s.closeErr = fmt.Errorf("http server %s: close: %w", s.Addr, err)
		}
	})
	return s.closeErr
}

// UDPEcho sends every datagram back to its source and records that source.
type UDPEcho struct {
	// Addr is the bound address (the real port if 0 was asked for).
	Addr netip.AddrPort

	log       remoteLog
	conn      *net.UDPConn
	done      chan struct{}
	closeOnce sync.Once
	closeErr  error
}

// StartUDPEcho listens on addr inside ns.
func StartUDPEcho(ns *NS, addr netip.AddrPort) (*UDPEcho, error) {
	var conn *net.UDPConn
	if err := ns.Do(func() (err error) {
		conn, err = net.ListenUDP(udpNetwork(addr.Addr()), net.UDPAddrFromAddrPort(addr))
		return err
	}); err != nil {
		return nil, fmt.Errorf("udp echo in netns %s on %s: %w", ns.Name, addr, err)
	}
	s := &UDPEcho{
		Addr: unmapped(conn.LocalAddr().(*net.UDPAddr).AddrPort()),
		conn: conn,
		done: make(chan struct{}),
	}
	go s.serve()
	return s, nil
}

func (s *UDPEcho) serve() {
	defer close(s.done)
	buf := make([]byte, 64<<10)
	for {
		n, from, err := s.conn.ReadFromUDPAddrPort(buf)
		if errors.Is(err, net.ErrClosed) {
			return
		}
		if err != nil {
			continue
		}
		// Recorded before replying, so whoever gets the reply also finds the record.
		s.log.add(from)
		// A reply that cannot be routed is not the echo's failure: tests send to it
		// from addresses the internet deliberately has no route back to.
		_, _ = s.conn.WriteToUDPAddrPort(buf[:n], from)
	}
}

// Remotes returns the source of every datagram received so far, in order.
func (s *UDPEcho) Remotes() []netip.AddrPort { return s.log.snapshot() }

// Close stops the echo and waits for it. It is idempotent.
func (s *UDPEcho) Close() error {
	s.closeOnce.Do(func() {
		if err := s.conn.Close(); err != nil {
			s.closeErr = fmt.Errorf("udp echo %s: close: %w", s.Addr, err)
		}
		<-s.done
	})
	return s.closeErr
}

// UDPRoundTrip sends payload from ns to dst, from localPort (0 = any), and
// returns the first reply, waiting at most timeout. The socket is connected, so
// only a reply from dst itself counts.
func UDPRoundTrip(ns *NS, localPort uint16, dst netip.AddrPort, payload []byte, timeout time.Duration) ([]byte, error) {
	var conn *net.UDPConn
	var laddr *net.UDPAddr
	if localPort != 0 {
		laddr = &net.UDPAddr{Port: int(localPort)}
	}
	if err := ns.Do(func() (err error) {
		conn, err = net.DialUDP(udpNetwork(dst.Addr()), laddr, net.UDPAddrFromAddrPort(dst))
		return err
	}); err != nil {
		return nil, fmt.Errorf("udp round trip from netns %s port %d to %s: dial: %w", ns.Name, localPort, dst, err)
	}
	defer conn.Close()
	fail := func(step string, err error) ([]byte, error) {
		return nil, fmt.Errorf("udp round trip from netns %s %s to %s: %s: %w", ns.Name, conn.LocalAddr(), dst, step, err)
	}
	if err := conn.SetDeadline(time.Now().Add(timeout)); err != nil {
		return fail("set deadline", err)
	}
	if _, err := conn.Write(payload); err != nil {
		return fail("send", err)
	}
	buf := make([]byte, 64<<10)
	n, err := conn.Read(buf)
	if err != nil {
		return fail("receive", err)
	}
	// Copied so the caller does not keep the whole receive buffer alive.
	return bytes.Clone(buf[:n]), nil
}

func udpNetwork(a netip.Addr) string {
	if a.Is4() {
		return "udp4"
	}
	return "udp"
}

func unmapped(ap netip.AddrPort) netip.AddrPort {
	return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
}

package netns

import (
	"io"
	"net"
	"net/netip"
	"sync"
)

// TCPEcho echoes every byte back, in a namespace, and knows where its
// connections came from: through a NAT, their public endpoints.
type TCPEcho struct {
	Addr netip.AddrPort

	ln    net.Listener
	wg    sync.WaitGroup
	mu    sync.Mutex
	seen  []netip.AddrPort
	conns map[net.Conn]bool
}

// StartTCPEcho listens on addr in ns.
func StartTCPEcho(ns *NS, addr netip.AddrPort) (*TCPEcho, error) {
	s := &TCPEcho{Addr: addr, conns: map[net.Conn]bool{}}
	if err := ns.Do(func() (err error) {
		s.ln, err = net.Listen("tcp4", addr.String())
		return err
	}); err != nil {
		return nil, err
	}
	s.wg.Add(1)
	go s.accept()
	return s, nil
}

func (s *TCPEcho) accept() {
	defer s.wg.Done()
	for {
		c, err := s.ln.Accept()
		if err != nil {
			return
		}
		s.mu.Lock()
		s.seen = append(s.seen, c.RemoteAddr().(*net.TCPAddr).AddrPort())
		s.conns[c] = true
		s.mu.Unlock()
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			io.Copy(c, c)
			c.Close()
			s.mu.Lock()
			delete(s.conns, c)
			s.mu.Unlock()
		}()
	}
}

// Remotes are the sources of every connection accepted, in order.
func (s *TCPEcho) Remotes() []netip.AddrPort {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]netip.AddrPort(nil), s.seen...)
}

// Live are the sources of the connections open now.
func (s *TCPEcho) Live() []netip.AddrPort {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []netip.AddrPort
	for c := range s.conns {
		out = append(out, c.RemoteAddr().(*net.TCPAddr).AddrPort())
	}
	return out
}

// Close stops listening and closes the connections too: one whose client
// vanished (after a detach, its FIN never arrives) would hold its echo
// forever.
func (s *TCPEcho) Close() error {
	err := s.ln.Close()
	s.mu.Lock()
	for c := range s.conns {
		c.Close()
	}
	s.mu.Unlock()
	s.wg.Wait()
	return err
}

package netns

import (
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"net/netip"
	"sync/atomic"
	"time"
)

// Stream is one long-lived TCP connection that sends a numbered message
// every interval and checks that the same number comes back: through a
// NAT, a reset, a lost message or a rewritten byte ends it, and the error
// is kept. The end-to-end tests and the soak watch connections live
// through restarts and reloads with it.
type Stream struct {
	conn   net.Conn
	echoed atomic.Uint64
	stopc  chan struct{}
	done   chan struct{}
	err    error
}

// StartStream dials to from ns, from the address from (any when it is the
// zero Addr), and starts talking. Each message must be echoed within
// timeout.
func StartStream(ns *NS, from netip.Addr, to netip.AddrPort, interval, timeout time.Duration) (*Stream, error) {
	s := &Stream{stopc: make(chan struct{}), done: make(chan struct{})}
	if err := ns.Do(func() (err error) {
		d := net.Dialer{Timeout: 5 * time.Second}
		if from.IsValid() {
			d.LocalAddr = net.TCPAddrFromAddrPort(netip.AddrPortFrom(from, 0))
		}
		s.conn, err = d.Dial("tcp4", to.String())
		return err
	}); err != nil {
		return nil, fmt.Errorf("dial %s from %s: %w", to, ns.Name, err)
	}
	go s.talk(interval, timeout)
	return s, nil
}

func (s *Stream) talk(interval, timeout time.Duration) {
	defer close(s.done)
	defer s.conn.Close()
	out, in := make([]byte, 8), make([]byte, 8)
	tick := time.NewTicker(interval)
	defer tick.Stop()
	for n := uint64(1); ; n++ {
		select {
		case <-s.stopc:
			return
		case <-tick.C:
		}
		binary.BigEndian.PutUint64(out, n)
		s.conn.SetDeadline(time.Now().Add(timeout))
		if _, err := s.conn.Write(out); err != nil {
			s.err = fmt.Errorf("message %d: write: %w", n, err)
			return
		}
		if _, err := io.ReadFull(s.conn, in); err != nil {
			s.err = fmt.Errorf("message %d: read echo: %w", n, err)
			return
		}
		if got := binary.BigEndian.Uint64(in); got != n {
			s.err = fmt.Errorf("message %d: echo %d", n, got)
			return
		}
		s.echoed.Store(n)
	}
}

// Echoed is how many messages have come back.
func (s *Stream) Echoed() uint64 { return s.echoed.Load() }

// Ended reports whether the stream stopped on its own, and why.
func (s *Stream) Ended() (bool, error) {
	select {
	case <-s.done:
		return true, s.err
	default:
		return false, nil
	}
}

// Stop ends the stream and returns the error that ended it earlier, if
// any.
func (s *Stream) Stop() error {
	select {
	case <-s.stopc:
	default:
		close(s.stopc)
	}
	<-s.done
	return s.err
}

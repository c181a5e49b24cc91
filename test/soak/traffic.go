package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"time"

	"github.com/blocknat/blocknat/test/netns"
)

// subscriberAddrs are the inside addresses the soak gives out, none of
// them a topology namespace's own (.2, .3) or the gateway (.254), and none
// a /24's .0 or .255, which some stacks treat as broadcast.
func subscriberAddrs() []netip.Addr {
	var out []netip.Addr
	for third := 0; third < 4; third++ {
		for fourth := 10; fourth <= 250; fourth++ {
			out = append(out, netip.AddrFrom4([4]byte{100, 64, byte(third), byte(fourth)}))
		}
	}
	return out
}

// fresh hands out inside addresses that have never sent, each in the
// subscriber namespace that holds it.
type fresh struct {
	mu    sync.Mutex
	addrs []netip.Addr
	home  map[netip.Addr]*netns.NS
}

func (f *fresh) take() (netip.Addr, *netns.NS, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(f.addrs) == 0 {
		return netip.Addr{}, nil, false
	}
	a := f.addrs[0]
	f.addrs = f.addrs[1:]
	return a, f.home[a], true
}

func (f *fresh) left() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.addrs)
}

// activations is everything the soak activated, and what it could not.
type activations struct {
	mu         sync.Mutex
	done       []activation
	unanswered []string
}

func (a *activations) add(act activation) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.done = append(a.done, act)
}

func (a *activations) fail(msg string) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.unanswered = append(a.unanswered, msg)
}

func (a *activations) snapshot() ([]activation, []string) {
	a.mu.Lock()
	defer a.mu.Unlock()
	return append([]activation(nil), a.done...), append([]string(nil), a.unanswered...)
}

func (a *activations) count(phase string) int {
	a.mu.Lock()
	defer a.mu.Unlock()
	n := 0
	for _, act := range a.done {
		if act.Phase == phase {
			n++
		}
	}
	return n
}

// activate sends a subscriber's first datagram to the echo and waits for
// the answer, trying a few times: the data plane translates while the
// agent is dead, so an unanswered activation is lost traffic.
func activate(ns *netns.NS, inside netip.Addr, echo netip.AddrPort, phase string) (activation, error) {
	act := activation{Inside: inside, Phase: phase}
	var conn *net.UDPConn
	if err := ns.Do(func() (err error) {
		conn, err = net.ListenUDP("udp4", net.UDPAddrFromAddrPort(netip.AddrPortFrom(inside, 0)))
		return err
	}); err != nil {
		return act, fmt.Errorf("bind %s: %w", inside, err)
	}
	defer conn.Close()
	buf := make([]byte, 64)
	payload := []byte("soak " + inside.String())
	act.Sent = time.Now()
	var lastErr error
	for try := 0; try < 3; try++ {
		if _, err := conn.WriteToUDPAddrPort(payload, echo); err != nil {
			return act, fmt.Errorf("send from %s: %w", inside, err)
		}
		conn.SetReadDeadline(time.Now().Add(time.Second))
		n, _, err := conn.ReadFromUDPAddrPort(buf)
		if err == nil && string(buf[:n]) == string(payload) {
			act.Answered = time.Now()
			return act, nil
		}
		lastErr = err
	}
	return act, fmt.Errorf("%s: no echo in 3 tries: %v", inside, lastErr)
}

// activator makes fresh subscribers send for the first time, one every
// interval, until stopped or max are done.
type activator struct {
	stop     chan struct{}
	done     chan struct{}
	stopOnce sync.Once
}

func startActivator(f *fresh, acts *activations, echo netip.AddrPort, phase string, every time.Duration, max int) *activator {
	a := &activator{stop: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(a.done)
		tick := time.NewTicker(every)
		defer tick.Stop()
		for n := 0; n < max; n++ {
			select {
			case <-a.stop:
				return
			case <-tick.C:
			}
			inside, ns, ok := f.take()
			if !ok {
				return
			}
			act, err := activate(ns, inside, echo, phase)
			if err != nil {
				acts.fail(phase + ": " + err.Error())
				continue
			}
			acts.add(act)
		}
	}()
	return a
}

// halt stops the activator and waits for it; it may be called again.
func (a *activator) halt() {
	a.stopOnce.Do(func() { close(a.stop) })
	<-a.done
}

// stream is one long-lived TCP connection through the NAT (a
// netns.Stream) and the subscriber address it is from.
type stream struct {
	inside netip.Addr
	*netns.Stream
}

func dialStream(ns *netns.NS, inside netip.Addr, to netip.AddrPort, interval time.Duration) (*stream, error) {
	s, err := netns.StartStream(ns, inside, to, interval, 5*time.Second)
	if err != nil {
		return nil, err
	}
	return &stream{inside: inside, Stream: s}, nil
}

// streams keeps a number of long-lived connections open: one that breaks
// is counted, with its reason, and replaced from a fresh subscriber so
// that the NAT keeps carrying as many.
type streams struct {
	ns       []*netns.NS
	to       netip.AddrPort
	interval time.Duration

	mu     sync.Mutex
	live   []*stream
	resets []string
	opened int
}

func (ss *streams) open(f *fresh, acts *activations, phase string) error {
	inside, ns, ok := f.take()
	if !ok {
		return errors.New("no fresh subscriber address left for a TCP connection")
	}
	sent := time.Now()
	s, err := dialStream(ns, inside, ss.to, ss.interval)
	if err != nil {
		return err
	}
	acts.add(activation{Inside: inside, Phase: phase, Sent: sent, Answered: time.Now()})
	ss.mu.Lock()
	ss.live = append(ss.live, s)
	ss.opened++
	ss.mu.Unlock()
	return nil
}

// check counts and replaces the connections that broke since the last
// check, naming the phase they broke in. It returns how many broke.
func (ss *streams) check(f *fresh, acts *activations, phase string) int {
	ss.mu.Lock()
	var keep, broken []*stream
	for _, s := range ss.live {
		if ended, _ := s.Ended(); ended {
			broken = append(broken, s)
		} else {
			keep = append(keep, s)
		}
	}
	ss.live = keep
	for _, s := range broken {
		_, err := s.Ended()
		ss.resets = append(ss.resets, fmt.Sprintf("%s: connection from %s after %d echoes: %v", phase, s.inside, s.Echoed(), err))
	}
	ss.mu.Unlock()
	for range broken {
		if err := ss.open(f, acts, phase); err != nil {
			logf("%s: could not replace a broken connection: %v", phase, err)
		}
	}
	return len(broken)
}

// progress is each live connection's echoes so far, for waitTalked.
func (ss *streams) progress() map[*stream]uint64 {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	out := map[*stream]uint64{}
	for _, s := range ss.live {
		out[s] = s.Echoed()
	}
	return out
}

// waitTalked waits until every connection live at since has had n more
// echoes, or has ended (which check then counts).
func (ss *streams) waitTalked(ctx context.Context, since map[*stream]uint64, n uint64, within time.Duration) error {
	deadline := time.Now().Add(within)
	for {
		slow := 0
		for s, was := range since {
			if ended, _ := s.Ended(); !ended && s.Echoed() < was+n {
				slow++
			}
		}
		if slow == 0 {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%d of %d TCP connections did not talk %d times within %s", slow, len(since), n, within)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
	}
}

func (ss *streams) resetList() []string {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	return append([]string(nil), ss.resets...)
}

func (ss *streams) closeAll() {
	ss.mu.Lock()
	live := ss.live
	ss.live = nil
	ss.mu.Unlock()
	for _, s := range live {
		s.Stop()
	}
}

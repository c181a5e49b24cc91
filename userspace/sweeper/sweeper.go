// Package sweeper expires idle mappings from the kernel's flow tables and
// releases blocks that have had no mapping for their idle time, which
// closes their records.
//
// The data plane never evicts a mapping (RFC 6888 REQ-11), so this is the
// only place mappings end. Timeouts follow RFC 4787 REQ-5 (UDP), RFC 5382
// REQ-5 (TCP established and transitory) and RFC 5508 (ICMP query).
package sweeper

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/cilium/ebpf"

	"github.com/blocknat/blocknat/loader"
	"github.com/blocknat/blocknat/userspace/events"
	"github.com/blocknat/blocknat/userspace/logattr"
	"github.com/blocknat/blocknat/userspace/mapping"
	"github.com/blocknat/blocknat/userspace/store"
)

// Timeouts by mapping kind.
type Timeouts struct {
	UDP, TCPEstablished, TCPTransitory, ICMP time.Duration
	// BlockIdle is how long a block with no mapping left stays active.
	BlockIdle time.Duration
}

// Maps are the kernel tables the sweeper works on. Filters, the remote
// endpoints each mapping sent to, may be nil (nothing to prune).
type Maps struct {
	FlowsFwd, FlowsRev, Subscribers, Filters *ebpf.Map
}

// Submitter writes record changes in order with the ring buffer's events
// (*events.Recorder).
type Submitter interface {
	Submit(ctx context.Context, ops []store.Op) error
}

// Sweeper runs one sweep at a time.
type Sweeper struct {
	Maps     Maps
	Timeouts Timeouts
	Mapping  *mapping.Mapping
	Clock    events.Clock
	Records  Submitter
	Logger   *slog.Logger
}

// Result counts what one sweep did.
type Result struct {
	Flows        int // mappings alive after the sweep
	Expired      int // mappings removed
	Forgotten    int // remote endpoints removed with their mappings
	ActiveBlocks int // blocks active after the sweep
	Released     int // blocks released
}

func (s *Sweeper) timeout(key loader.FlowKey, v loader.FlowFwd) time.Duration {
	switch loader.TimeoutClassOf(key, v) {
	case loader.TimeoutTCPEstablished:
		return s.Timeouts.TCPEstablished
	case loader.TimeoutTCPTransitory:
		// Closing only after a FIN or RST from or to the peer, so a
		// stranger's RST cannot put a mapping on this short clock.
		return s.Timeouts.TCPTransitory
	case loader.TimeoutICMP:
		return s.Timeouts.ICMP
	}
	return s.Timeouts.UDP
}

// Sweep expires idle mappings, then releases idle blocks.
func (s *Sweeper) Sweep(ctx context.Context) (Result, error) {
	var res Result
	now := s.Clock.MonoNow()
	flows, expired, err := s.scanFlows(now)
	if err != nil {
		return res, err
	}
	gone := map[loader.MappingEnd]uint64{}
	for _, fl := range expired {
		removed, val, err := s.expire(fl.key, now)
		if err != nil {
			return res, err
		}
		if removed {
			res.Expired++
			gone[loader.MappingEnd{Addr: val.NatAddr, Port: val.NatPort, Proto: fl.key.Proto}] = val.LastSeenNs
		} else {
			flows[fl.subscriber]++ // refreshed while we looked
		}
	}
	if s.Maps.Filters != nil {
		// The remote endpoints a mapping sent to go with it: the filter
		// table names a destination only while its mapping lives.
		if res.Forgotten, err = loader.PruneFilters(s.Maps.Filters, s.Maps.FlowsRev, gone); err != nil {
			return res, err
		}
	}
	for _, n := range flows {
		res.Flows += n
	}

	released, active, err := s.releaseIdle(ctx, flows, now)
	res.Released, res.ActiveBlocks = released, active
	return res, err
}

type flowRef struct {
	key        loader.FlowKey
	subscriber uint32
}

// scanFlows counts live mappings per subscriber and lists expired ones.
func (s *Sweeper) scanFlows(now uint64) (map[uint32]int, []flowRef, error) {
	live := map[uint32]int{}
	var expired []flowRef
	var key loader.FlowKey
	var val loader.FlowFwd
	it := s.Maps.FlowsFwd.Iterate()
	for it.Next(&key, &val) {
		if age(now, val.LastSeenNs) > s.timeout(key, val) {
			expired = append(expired, flowRef{key, val.Subscriber})
			continue
		}
		live[val.Subscriber]++
	}
	if err := it.Err(); err != nil {
		return nil, nil, fmt.Errorf("scan flows_fwd: %w", err)
	}
	return live, expired, nil
}

func age(now, then uint64) time.Duration {
	if then >= now {
		return 0
	}
	return time.Duration(now - then)
}

// expire removes one mapping if it is still idle, and returns it. The
// forward entry goes first: an outbound packet arriving meanwhile then
// makes a fresh mapping instead of refreshing one that is about to lose its
// reverse side.
func (s *Sweeper) expire(key loader.FlowKey, now uint64) (bool, loader.FlowFwd, error) {
	var val loader.FlowFwd
	if err := s.Maps.FlowsFwd.Lookup(&key, &val); err != nil {
		if errors.Is(err, ebpf.ErrKeyNotExist) {
			return false, val, nil
		}
		return false, val, fmt.Errorf("read flows_fwd: %w", err)
	}
	if age(now, val.LastSeenNs) <= s.timeout(key, val) {
		return false, val, nil
	}
	if err := s.Maps.FlowsFwd.Delete(&key); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		return false, val, fmt.Errorf("delete from flows_fwd: %w", err)
	}
	rkey := loader.FlowKey{Addr: val.NatAddr, Port: val.NatPort, Proto: key.Proto}
	var rev loader.FlowRev
	if err := s.Maps.FlowsRev.Lookup(&rkey, &rev); err == nil && rev.Addr == key.Addr && rev.Port == key.Port {
		if err := s.Maps.FlowsRev.Delete(&rkey); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			return true, val, fmt.Errorf("delete from flows_rev: %w", err)
		}
	}
	return true, val, nil
}

// releaseIdle releases blocks with no mapping for BlockIdle. A block is
// marked idle in the kernel first and its mappings counted again; only a
// block still idle and still unused after that is released. A flow the
// data plane makes after the mark re-activates the block through the ring
// buffer, and the Recorder orders that activation after this release.
func (s *Sweeper) releaseIdle(ctx context.Context, flows map[uint32]int, now uint64) (released, active int, err error) {
	var candidates []uint32
	var idx uint32
	var st loader.SubscriberState
	it := s.Maps.Subscribers.Iterate()
	for it.Next(&idx, &st) {
		if st.Active == 0 {
			continue
		}
		active++
		if flows[idx] == 0 && age(now, st.LastActiveNs) > s.Timeouts.BlockIdle {
			candidates = append(candidates, idx)
		}
	}
	if err := it.Err(); err != nil {
		return 0, active, fmt.Errorf("scan subscribers: %w", err)
	}
	if len(candidates) == 0 {
		return 0, active, nil
	}
	for _, sub := range candidates {
		if err := s.setActive(sub, 0); err != nil {
			return 0, active, err
		}
	}
	again, _, err := s.scanFlows(s.Clock.MonoNow())
	if err != nil {
		return 0, active, err
	}
	end := s.Clock.Wall(s.Clock.MonoNow())
	var ops []store.Op
	for _, sub := range candidates {
		if again[sub] > 0 {
			// Used again in between: the block stays active and its
			// record open.
			if err := s.setActive(sub, 1); err != nil {
				return 0, active, err
			}
			continue
		}
		if err := s.Maps.Subscribers.Lookup(&sub, &st); err != nil {
			return 0, active, fmt.Errorf("read subscribers[%d]: %w", sub, err)
		}
		if st.Active != 0 {
			continue // re-activated by the data plane: a new event is on its way
		}
		block, err := s.Mapping.Block(sub)
		if err != nil {
			return 0, active, err
		}
		ops = append(ops, store.Op{Kind: store.OpRelease, Record: store.Record{
			Subscriber: sub, Inside: block.Inside, Public: block.Public, PortLo: block.PortLo, PortHi: block.PortHi, End: end}})
	}
	if len(ops) == 0 {
		return 0, active, nil
	}
	if err := s.Records.Submit(ctx, ops); err != nil {
		return 0, active, fmt.Errorf("release %d idle blocks: %w", len(ops), err)
	}
	if s.Logger != nil {
		s.Logger.Debug("released idle blocks", logattr.Count, len(ops))
	}
	return len(ops), active - len(ops), nil
}

func (s *Sweeper) setActive(sub uint32, active uint32) error {
	var st loader.SubscriberState
	if err := s.Maps.Subscribers.Lookup(&sub, &st); err != nil {
		return fmt.Errorf("read subscribers[%d]: %w", sub, err)
	}
	st.Active = active
	if err := s.Maps.Subscribers.Update(&sub, &st, ebpf.UpdateExist); err != nil {
		return fmt.Errorf("write subscribers[%d]: %w", sub, err)
	}
	return nil
}

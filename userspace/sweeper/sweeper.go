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
	"fmt"
	"log/slog"
	"time"

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

// Tables are the kernel tables a sweep works on (*loader.NAT).
type Tables interface {
	Flows(func(loader.FlowKey, loader.FlowFwd) error) error
	ExpireFlow(loader.FlowKey, func(loader.FlowFwd) bool) (loader.FlowFwd, bool, error)
	PruneFilters(expired map[loader.MappingEnd]uint64) (int, error)
	ActiveBlocks() ([]loader.ActiveBlock, error)
	ReleaseBlock(subscriber uint32) error
	KeepBlock(subscriber uint32) error
	BlockActive(subscriber uint32) (bool, error)
	// PCPHeld is the end of each PCP lifetime by internal endpoint.
	PCPHeld() (map[loader.FlowKey]uint64, error)
}

// Plane is what a sweep works on: the data plane's tables, the mapping
// they serve and the timeouts in force. A reload replaces it whole.
type Plane struct {
	Tables   Tables
	Mapping  *mapping.Mapping
	Timeouts Timeouts
	// Overflow is the overflow pool's layout, and OverflowTables its
	// kernel tables; both nil when ports.overflow is off.
	Overflow       *mapping.Overflow
	OverflowTables OverflowTables
}

// Submitter writes record changes in order with the ring buffer's events
// (*events.Recorder).
type Submitter interface {
	Submit(ctx context.Context, ops []store.Op) error
}

// Sweeper runs one sweep at a time.
type Sweeper struct {
	// Plane returns the data plane in force; a sweep reads it once, at
	// its start.
	Plane   func() Plane
	Clock   events.Clock
	Records Submitter
	Logger  *slog.Logger
}

// Result counts what one sweep did.
type Result struct {
	Flows        int // mappings alive after the sweep
	Expired      int // mappings removed
	Forgotten    int // remote endpoints removed with their mappings
	ActiveBlocks int // blocks active after the sweep
	Released     int // blocks released
	// OverflowReleased are the overflow blocks released.
	OverflowReleased int
}

func (t Timeouts) of(key loader.FlowKey, v loader.FlowFwd) time.Duration {
	switch loader.TimeoutClassOf(key, v) {
	case loader.TimeoutTCPEstablished:
		return t.TCPEstablished
	case loader.TimeoutTCPTransitory:
		// Closing only after a FIN or RST from or to the peer, so a
		// stranger's RST cannot put a mapping on this short clock.
		return t.TCPTransitory
	case loader.TimeoutICMP:
		return t.ICMP
	}
	return t.UDP
}

// idle says whether the mapping key, v has outlived its timeout at now.
// The kernel's last-seen time may lag the last packet by its resolution;
// adding that keeps a mapping at least its full timeout.
func (t Timeouts) idle(now uint64, key loader.FlowKey, v loader.FlowFwd) bool {
	return age(now, v.LastSeenNs()) > t.of(key, v)+loader.LastSeenResolution
}

// expirable says whether the mapping key, v may go at now: it is idle,
// and no PCP lifetime holds it. A subscriber's server behind a PCP mapping
// may be silent for hours, and its mapping must stay for as long as the
// client asked (RFC 6887 §15); when the lifetime ends, the PCP server ends
// the hold.
func (t Timeouts) expirable(held map[loader.FlowKey]uint64, now uint64, key loader.FlowKey, v loader.FlowFwd) bool {
	if until, ok := held[key]; ok && until > now {
		return false
	}
	return t.idle(now, key, v)
}

// Sweep expires idle mappings, then releases idle blocks.
func (s *Sweeper) Sweep(ctx context.Context) (Result, error) {
	var res Result
	p := s.Plane()
	now := s.Clock.MonoNow()
	held, err := p.Tables.PCPHeld()
	if err != nil {
		return res, fmt.Errorf("read PCP lifetimes: %w", err)
	}
	flows, overflow, expired, err := scanFlows(p, held, now)
	if err != nil {
		return res, err
	}
	gone := map[loader.MappingEnd]uint64{}
	for _, fl := range expired {
		// Idle when looked at again: a packet may have refreshed it
		// since the scan.
		val, removed, err := p.Tables.ExpireFlow(fl.key, func(v loader.FlowFwd) bool { return p.Timeouts.expirable(held, now, fl.key, v) })
		if err != nil {
			return res, err
		}
		if removed {
			res.Expired++
			gone[loader.MappingEnd{Addr: val.NatAddr, Port: val.NatPort, Proto: fl.key.Proto}] = val.LastSeenNs()
		} else {
			flows[fl.subscriber]++ // refreshed while we looked
			if id, ok := overflowID(p, val); ok {
				overflow[id]++
			}
		}
	}
	// The remote endpoints a mapping sent to go with it: the filter
	// table names a destination only while its mapping lives.
	if res.Forgotten, err = p.Tables.PruneFilters(gone); err != nil {
		return res, err
	}
	for _, n := range flows {
		res.Flows += n
	}

	released, active, err := s.releaseIdle(ctx, p, held, flows, now)
	res.Released, res.ActiveBlocks = released, active
	if err != nil {
		return res, err
	}
	res.OverflowReleased, err = s.releaseIdleOverflow(ctx, p, overflow, now)
	return res, err
}

type flowRef struct {
	key        loader.FlowKey
	subscriber uint32
}

// scanFlows counts live mappings per subscriber and per overflow block
// (one walk of the table serves both), and lists expired ones.
func scanFlows(p Plane, held map[loader.FlowKey]uint64, now uint64) (live, overflow map[uint32]int, expired []flowRef, err error) {
	live, overflow = map[uint32]int{}, map[uint32]int{}
	err = p.Tables.Flows(func(key loader.FlowKey, val loader.FlowFwd) error {
		if p.Timeouts.expirable(held, now, key, val) {
			expired = append(expired, flowRef{key, val.Subscriber})
			return nil
		}
		live[val.Subscriber]++
		if id, ok := overflowID(p, val); ok {
			overflow[id]++
		}
		return nil
	})
	if err != nil {
		return nil, nil, nil, fmt.Errorf("scan flows: %w", err)
	}
	return live, overflow, expired, nil
}

// overflowID is the overflow block a mapping's public side lies in.
func overflowID(p Plane, v loader.FlowFwd) (uint32, bool) {
	return p.Overflow.ID(loader.AddrFromBE32(v.NatAddr), loader.PortFromBE16(v.NatPort))
}

func age(now, then uint64) time.Duration {
	if then >= now {
		return 0
	}
	return time.Duration(now - then)
}

// releaseIdle releases blocks with no mapping for BlockIdle. A block is
// marked idle in the kernel first and its mappings counted again; only a
// block still idle and still unused after that is released. A flow the
// data plane makes after the mark re-activates the block through the ring
// buffer, and the Recorder orders that activation after this release.
func (s *Sweeper) releaseIdle(ctx context.Context, p Plane, held map[loader.FlowKey]uint64, flows map[uint32]int, now uint64) (released, active int, err error) {
	blocks, err := p.Tables.ActiveBlocks()
	if err != nil {
		return 0, 0, fmt.Errorf("scan subscribers: %w", err)
	}
	active = len(blocks)
	var candidates []uint32
	for _, b := range blocks {
		if flows[b.Subscriber] == 0 && age(now, b.LastActiveNs) > p.Timeouts.BlockIdle {
			candidates = append(candidates, b.Subscriber)
		}
	}
	if len(candidates) == 0 {
		return 0, active, nil
	}
	for _, sub := range candidates {
		if err := p.Tables.ReleaseBlock(sub); err != nil {
			return 0, active, err
		}
	}
	again, _, _, err := scanFlows(p, held, s.Clock.MonoNow())
	if err != nil {
		return 0, active, err
	}
	end := s.Clock.Wall(s.Clock.MonoNow())
	var ops []store.Op
	for _, sub := range candidates {
		if again[sub] > 0 {
			// Used again in between: the block stays active and its
			// record open.
			if err := p.Tables.KeepBlock(sub); err != nil {
				return 0, active, err
			}
			continue
		}
		if reactivated, err := p.Tables.BlockActive(sub); err != nil {
			return 0, active, err
		} else if reactivated {
			continue // re-activated by the data plane: a new event is on its way
		}
		block, err := p.Mapping.Block(sub)
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

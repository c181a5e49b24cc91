package sweeper

import (
	"context"
	"fmt"

	"github.com/blocknat/blocknat/loader"
	"github.com/blocknat/blocknat/userspace/logattr"
	"github.com/blocknat/blocknat/userspace/store"
)

// OverflowTables are the kernel tables of the overflow pool (*loader.NAT).
type OverflowTables interface {
	OverflowBlocks() ([]loader.OverflowBlock, error)
	MarkOverflowReleasing(id, sub uint32) error
	KeepOverflow(id, sub uint32) error
	FreeOverflow(id, sub uint32) error
}

// overflowUse counts every mapping in each overflow block, idle or not:
// after the mark, a block goes only when nothing at all is left in it.
func overflowUse(p Plane) (map[uint32]int, error) {
	used := map[uint32]int{}
	err := p.Tables.Flows(func(_ loader.FlowKey, v loader.FlowFwd) error {
		if id, ok := overflowID(p, v); ok {
			used[id]++
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("scan flows: %w", err)
	}
	return used, nil
}

// releaseIdleOverflow releases the overflow blocks that have had no mapping
// for BlockIdle (used counts each block's live mappings, from the sweep's
// walk of the flow table), as releaseIdle does a subscriber's own: the block is
// marked releasing in the kernel (no new mapping goes there from then on,
// and one made meanwhile is rolled back), its mappings are counted again,
// and only a block still unused is released: its record is closed first,
// then it leaves the subscriber's slots and becomes free for anyone, so
// the next holder's activation is recorded after this release. A block
// found releasing (an agent that stopped half way) is taken up again.
func (s *Sweeper) releaseIdleOverflow(ctx context.Context, p Plane, used map[uint32]int, now uint64) (int, error) {
	if p.Overflow == nil || p.OverflowTables == nil {
		return 0, nil
	}
	held, err := p.OverflowTables.OverflowBlocks()
	if err != nil {
		return 0, err
	}
	var idle []loader.OverflowBlock
	for _, h := range held {
		if h.Releasing || age(now, h.LastUsedNs) > p.Timeouts.BlockIdle {
			idle = append(idle, h)
		}
	}
	if len(idle) == 0 {
		return 0, nil
	}
	var candidates []loader.OverflowBlock
	for _, h := range idle {
		if used[h.ID] > 0 {
			if h.Releasing {
				if err := p.OverflowTables.KeepOverflow(h.ID, h.Subscriber); err != nil {
					return 0, err
				}
			}
			continue
		}
		if !h.Releasing {
			if err := p.OverflowTables.MarkOverflowReleasing(h.ID, h.Subscriber); err != nil {
				return 0, err
			}
		}
		candidates = append(candidates, h)
	}
	if len(candidates) == 0 {
		return 0, nil
	}
	again, err := overflowUse(p)
	if err != nil {
		return 0, err
	}
	end := s.Clock.Wall(s.Clock.MonoNow())
	var (
		ops      []store.Op
		released []loader.OverflowBlock
	)
	for _, h := range candidates {
		if again[h.ID] > 0 {
			if err := p.OverflowTables.KeepOverflow(h.ID, h.Subscriber); err != nil {
				return 0, err
			}
			continue
		}
		public, lo, hi, err := p.Overflow.Block(h.ID)
		if err != nil {
			return 0, err
		}
		own, err := p.Mapping.Block(h.Subscriber)
		if err != nil {
			return 0, err
		}
		ops = append(ops, store.Op{Kind: store.OpRelease, Record: store.Record{
			Subscriber: h.Subscriber, Inside: own.Inside, Public: public, PortLo: lo, PortHi: hi, End: end}})
		released = append(released, h)
	}
	if len(ops) == 0 {
		return 0, nil
	}
	if err := s.Records.Submit(ctx, ops); err != nil {
		return 0, fmt.Errorf("release %d idle overflow blocks: %w", len(ops), err)
	}
	for _, h := range released {
		if err := p.OverflowTables.FreeOverflow(h.ID, h.Subscriber); err != nil {
			return 0, err
		}
	}
	if s.Logger != nil {
		s.Logger.Debug("released idle overflow blocks", logattr.Count, len(released))
	}
	return len(released), nil
}

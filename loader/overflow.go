package loader

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"

	"github.com/cilium/ebpf"
)

// Limits of the overflow tables (enum overflow_limits in bpf/types.h).
const (
	OverflowSlots     = uint32(natOverflowLimitsOVERFLOW_SLOTS)
	overflowReleasing = uint32(natOverflowLimitsOVERFLOW_RELEASING)
	overflowClaiming  = uint32(natOverflowLimitsOVERFLOW_CLAIMING)
)

// OverflowBlock is an overflow block a subscriber holds, as the kernel
// shows it.
type OverflowBlock struct {
	ID         uint32
	Subscriber uint32
	// Releasing is set while the agent releases the block.
	Releasing bool
	// SinceNs is the monotonic time the block was claimed.
	SinceNs uint64
	// LastUsedNs is the monotonic time of its last new mapping.
	LastUsedNs uint64
}

// overflowVars are the constants and table sizes of the overflow pool;
// with it off, one entry each and nothing to claim.
func overflowVars(p Params) (map[string]any, map[string]uint32) {
	o := p.Overflow
	if o == nil {
		return map[string]any{"overflow_on": uint8(0)}, map[string]uint32{"overflow_addrs": 1, "overflow_blocks": 1, "overflow_slots": 1}
	}
	return map[string]any{
			"overflow_on":   uint8(1),
			"ov_block_size": o.BlockSize,
			"ov_per_addr":   o.PerAddr,
			"ov_count":      o.Count(),
			"ov_max":        o.MaxBlocks,
		}, map[string]uint32{
			"overflow_addrs":  uint32(len(o.Pool)),
			"overflow_blocks": o.Count(),
			"overflow_slots":  p.Mapping.Subscribers * OverflowSlots,
		}
}

func checkOverflow(p Params) error {
	o := p.Overflow
	if o == nil {
		return nil
	}
	switch {
	case o.Count() == 0:
		return errors.New("ports.overflow: no block fits")
	case o.MaxBlocks == 0 || o.MaxBlocks > OverflowSlots:
		return fmt.Errorf("ports.overflow.max_blocks: %d, want 1 to %d", o.MaxBlocks, OverflowSlots)
	case o.PortLo != p.Mapping.PortLo:
		return fmt.Errorf("ports.overflow: its blocks start at port %d, the data plane's at %d", o.PortLo, p.Mapping.PortLo)
	}
	for _, a := range o.Pool {
		if slices.Contains(p.Mapping.Pool, a) {
			return fmt.Errorf("ports.overflow.pool: %s is also in outside.pool", a)
		}
	}
	return nil
}

// fillOverflow writes the overflow addresses, and makes them pool
// addresses for the outside program (pool_index), so that replies to an
// overflow port are translated back. A pinned table of an earlier run that
// names other addresses would give its held blocks to the wrong address:
// that is a changed configuration.
func (n *NAT) fillOverflow() error {
	o := n.params.Overflow
	if o == nil {
		return nil
	}
	for i, a := range o.Pool {
		idx, addr := uint32(i), be32(a)
		var was uint32
		if err := n.objs.OverflowAddrs.Lookup(&idx, &was); err != nil {
			return fmt.Errorf("read overflow_addrs: %w", err)
		}
		if was != 0 && was != addr {
			return fmt.Errorf("ports.overflow.pool[%d] is %s, the pinned tables' %s: %w; run 'blocknatd detach' to start afresh",
				i, a, AddrFromBE32(was), ErrConfigChanged)
		}
		if err := n.objs.OverflowAddrs.Update(&idx, &addr, ebpf.UpdateAny); err != nil {
			return fmt.Errorf("ports.overflow.pool address %s: write to map: %w", a, err)
		}
		// Marked apart from the pool's own indexes; only its presence
		// is read.
		mark := uint32(1<<31) | idx
		if err := n.objs.PoolIndex.Update(&addr, &mark, ebpf.UpdateAny); err != nil {
			return fmt.Errorf("ports.overflow.pool address %s: write to map: %w", a, err)
		}
	}
	return nil
}

// OverflowBlocks lists the overflow blocks subscribers hold.
func (n *NAT) OverflowBlocks() ([]OverflowBlock, error) {
	if n.params.Overflow == nil {
		return nil, nil
	}
	var (
		id  uint32
		v   natOverflowBlock
		out []OverflowBlock
	)
	it := n.objs.OverflowBlocks.Iterate()
	for it.Next(&id, &v) {
		if v.Owner == 0 {
			continue
		}
		out = append(out, OverflowBlock{ID: id, Subscriber: v.Owner&^overflowReleasing - 1, Releasing: v.Owner&overflowReleasing != 0,
			SinceNs: v.SinceNs, LastUsedNs: v.LastUsedNs})
	}
	if err := it.Err(); err != nil {
		return nil, fmt.Errorf("read overflow_blocks: %w", err)
	}
	return out, nil
}

// SetOverflowBlock writes block b.ID's state as the data plane would have
// left it, for the reconciler's tests and tools that restore a table.
func (n *NAT) SetOverflowBlock(b OverflowBlock) error {
	v := natOverflowBlock{Owner: b.Subscriber + 1, SinceNs: b.SinceNs, LastUsedNs: b.LastUsedNs}
	if b.Releasing {
		v.Owner |= overflowReleasing
	}
	if err := n.objs.OverflowBlocks.Update(&b.ID, &v, ebpf.UpdateExist); err != nil {
		return fmt.Errorf("write overflow_blocks[%d]: %w", b.ID, err)
	}
	return nil
}

// setOverflowOwner writes block id's owner if it is held by sub (released
// or not); false when it is not.
func (n *NAT) setOverflowOwner(id, sub, owner uint32) (bool, error) {
	var v natOverflowBlock
	if err := n.objs.OverflowBlocks.Lookup(&id, &v); err != nil {
		return false, fmt.Errorf("read overflow_blocks[%d]: %w", id, err)
	}
	if v.Owner&^overflowReleasing != sub+1 {
		return false, nil
	}
	v.Owner = owner
	if err := n.objs.OverflowBlocks.Update(&id, &v, ebpf.UpdateExist); err != nil {
		return false, fmt.Errorf("write overflow_blocks[%d]: %w", id, err)
	}
	return true, nil
}

// MarkOverflowReleasing begins the release of sub's overflow block id: the
// data plane makes no new mapping in it from now on, and rolls back one it
// makes meanwhile. Count its mappings after this; KeepOverflow undoes it.
func (n *NAT) MarkOverflowReleasing(id, sub uint32) error {
	if ok, err := n.setOverflowOwner(id, sub, (sub+1)|overflowReleasing); err != nil || !ok {
		return errors.Join(err, notHeld(id, sub, ok))
	}
	return nil
}

// KeepOverflow gives block id back to sub after a release found it used.
func (n *NAT) KeepOverflow(id, sub uint32) error {
	if ok, err := n.setOverflowOwner(id, sub, sub+1); err != nil || !ok {
		return errors.Join(err, notHeld(id, sub, ok))
	}
	return nil
}

// FreeOverflow ends sub's hold of block id: it leaves the subscriber's
// slots first, so no CPU finds it there, then becomes free for anyone.
// Call it once the release is recorded.
func (n *NAT) FreeOverflow(id, sub uint32) error {
	for s := range OverflowSlots {
		key := sub*OverflowSlots + s
		var v uint32
		if err := n.objs.OverflowSlots.Lookup(&key, &v); err != nil {
			return fmt.Errorf("read overflow_slots[%d]: %w", key, err)
		}
		if v != id+1 {
			continue
		}
		zero := uint32(0)
		if err := n.objs.OverflowSlots.Update(&key, &zero, ebpf.UpdateExist); err != nil {
			return fmt.Errorf("write overflow_slots[%d]: %w", key, err)
		}
	}
	if ok, err := n.setOverflowOwner(id, sub, 0); err != nil || !ok {
		return errors.Join(err, notHeld(id, sub, ok))
	}
	return nil
}

func notHeld(id, sub uint32, ok bool) error {
	if ok {
		return nil
	}
	return fmt.Errorf("overflow block %d is not held by subscriber %d", id, sub)
}

// OverflowSlotsOf lists the overflow blocks sub's slots name (for tests
// and the status).
func (n *NAT) OverflowSlotsOf(sub uint32) ([]uint32, error) {
	var out []uint32
	for s := range OverflowSlots {
		key := sub*OverflowSlots + s
		var v uint32
		if err := n.objs.OverflowSlots.Lookup(&key, &v); err != nil {
			return nil, fmt.Errorf("read overflow_slots[%d]: %w", key, err)
		}
		if v != 0 && v != overflowClaiming {
			out = append(out, v-1)
		}
	}
	return out, nil
}

// copyOverflow carries the overflow blocks, their slots and their mappings
// over a reload that changes neither the mapping nor the overflow layout
// (the subscribers' numbers and the blocks' places are the same), and
// reports how many mappings it copied. Any other reload drops them: the
// reconciler then closes their records, since no block holds them.
func copyOverflow(from, to *NAT) (int, error) {
	fo, tp := from.params.Overflow, to.params.Overflow
	if fo == nil || tp == nil || !fo.SameBlocks(tp) || from.params.Mapping.Hash() != to.params.Mapping.Hash() {
		return 0, nil
	}
	held := map[uint32]bool{}
	var (
		id uint32
		v  natOverflowBlock
	)
	it := from.objs.OverflowBlocks.Iterate()
	for it.Next(&id, &v) {
		if v.Owner == 0 {
			continue
		}
		if err := to.objs.OverflowBlocks.Update(&id, &v, ebpf.UpdateAny); err != nil {
			return 0, fmt.Errorf("reload: copy overflow block %d: %w", id, err)
		}
		held[id] = true
	}
	if err := it.Err(); err != nil {
		return 0, fmt.Errorf("reload: read overflow_blocks: %w", err)
	}
	var key, slot uint32
	sit := from.objs.OverflowSlots.Iterate()
	for sit.Next(&key, &slot) {
		if slot == 0 || slot == overflowClaiming {
			continue
		}
		if err := to.objs.OverflowSlots.Update(&key, &slot, ebpf.UpdateAny); err != nil {
			return 0, fmt.Errorf("reload: copy overflow slot: %w", err)
		}
	}
	if err := sit.Err(); err != nil {
		return 0, fmt.Errorf("reload: read overflow_slots: %w", err)
	}
	copied := 0
	err := from.Flows(func(key FlowKey, fwd FlowFwd) error {
		id, ok := tp.ID(AddrFromBE32(fwd.NatAddr), PortFromBE16(fwd.NatPort))
		if !ok || !held[id] {
			return nil
		}
		if err := to.AddMapping(key, fwd); err != nil {
			return fmt.Errorf("reload: copy overflow mapping: %w", err)
		}
		copied++
		return nil
	})
	return copied, err
}

// OverflowOf names the overflow block holding public:port under the layout
// in force; false when there is none or overflow is off.
func (n *NAT) OverflowOf(public netip.Addr, port uint16) (uint32, bool) {
	return n.params.Overflow.ID(public, port)
}

// Package reconcile makes the record store agree with the kernel: every
// block the data plane shows as active has an open record, and every open
// record belongs to a block that is still active. It runs at start (after a
// crash, the ring buffer's events may be gone) and periodically (a full
// ring buffer or a failing disk may have lost some).
package reconcile

import (
	"context"
	"fmt"
	"time"

	"github.com/blocknat/blocknat/loader"
	"github.com/blocknat/blocknat/userspace/events"
	"github.com/blocknat/blocknat/userspace/mapping"
	"github.com/blocknat/blocknat/userspace/store"
)

// OpenLister lists the store's open records (*store.Store).
type OpenLister interface {
	OpenRecords() ([]store.Record, error)
}

// Submitter writes record changes in order with the ring buffer's events.
type Submitter interface {
	Submit(ctx context.Context, ops []store.Op) error
}

// Tables lists the blocks the kernel shows as active, a subscriber's own
// and the overflow blocks subscribers hold (*loader.NAT).
type Tables interface {
	ActiveBlocks() ([]loader.ActiveBlock, error)
	OverflowBlocks() ([]loader.OverflowBlock, error)
}

// Plane is the data plane in force: its tables, the mapping they serve,
// the overflow pool's layout (nil when off) and its epoch. A reload
// replaces it whole.
type Plane struct {
	Tables   Tables
	Mapping  *mapping.Mapping
	Overflow *mapping.Overflow
	Epoch    uint32
}

// Reconciler compares the kernel's subscriber table with the open records.
type Reconciler struct {
	// Plane returns the data plane in force; a pass reads it once.
	Plane   func() Plane
	Store   OpenLister
	Records Submitter
	Clock   events.Clock
	// Grace skips blocks activated this recently, whose ring buffer event
	// is probably still on its way. The agent uses 0: a recovered record
	// starts at the time the kernel noted, so it is exact either way, and
	// the event, when it comes, clears the recovered mark. Skipping a block
	// whose event died with a crashed agent would leave it unrecorded until
	// the next pass.
	Grace time.Duration
}

// Result counts the repairs of one pass.
type Result struct {
	Active    int // blocks active in the kernel
	Recovered int // open records created for active blocks that had none
	Closed    int // open records closed because their block is not active
}

type blockID struct {
	subscriber uint32
	public     [4]byte
	portLo     uint16
}

func idOf(sub uint32, b mapping.Block) blockID {
	return blockID{sub, b.Public.As4(), b.PortLo}
}

// heldBlock is a block the kernel shows held: a subscriber's own while
// active, or an overflow block it holds.
type heldBlock struct {
	subscriber uint32
	block      mapping.Block
	sinceNs    uint64
}

// held lists the active own blocks and the held overflow blocks (a block
// being released is held until its release is recorded).
func (r *Reconciler) held(p Plane, blocks []loader.ActiveBlock) ([]heldBlock, error) {
	out := make([]heldBlock, 0, len(blocks))
	for _, b := range blocks {
		block, err := p.Mapping.Block(b.Subscriber)
		if err != nil {
			return nil, fmt.Errorf("subscriber %d is active in the kernel but not in the mapping: %w", b.Subscriber, err)
		}
		out = append(out, heldBlock{b.Subscriber, block, b.ActiveSinceNs})
	}
	if p.Overflow == nil {
		return out, nil
	}
	over, err := p.Tables.OverflowBlocks()
	if err != nil {
		return nil, fmt.Errorf("scan overflow blocks: %w", err)
	}
	for _, o := range over {
		own, err := p.Mapping.Block(o.Subscriber)
		if err != nil {
			return nil, fmt.Errorf("overflow block %d is held by subscriber %d, who is not in the mapping: %w", o.ID, o.Subscriber, err)
		}
		public, lo, hi, err := p.Overflow.Block(o.ID)
		if err != nil {
			return nil, err
		}
		out = append(out, heldBlock{o.Subscriber, mapping.Block{Subscriber: o.Subscriber, Inside: own.Inside, Public: public, PortLo: lo, PortHi: hi}, o.SinceNs})
	}
	return out, nil
}

// Once runs one pass.
func (r *Reconciler) Once(ctx context.Context) (Result, error) {
	var res Result
	p := r.Plane()
	nowMono := r.Clock.MonoNow()
	now := r.Clock.Wall(nowMono)

	open, err := r.Store.OpenRecords()
	if err != nil {
		return res, fmt.Errorf("list open records: %w", err)
	}
	openByID := make(map[blockID]store.Record, len(open))
	for _, rec := range open {
		openByID[blockID{rec.Subscriber, rec.Public.As4(), rec.PortLo}] = rec
	}

	blocks, err := p.Tables.ActiveBlocks()
	if err != nil {
		return res, fmt.Errorf("scan subscribers: %w", err)
	}
	held, err := r.held(p, blocks)
	if err != nil {
		return res, err
	}
	var ops []store.Op
	active := map[blockID]bool{}
	for _, h := range held {
		res.Active++
		id := idOf(h.subscriber, h.block)
		active[id] = true
		if _, ok := openByID[id]; ok {
			continue
		}
		start := now
		if h.sinceNs != 0 {
			if nowMono-h.sinceNs < uint64(r.Grace) {
				continue
			}
			// The data plane noted when the block became active, so a
			// recovered record starts when the block really did.
			start = r.Clock.Wall(h.sinceNs)
		}
		b := h.block
		ops = append(ops, store.Op{Kind: store.OpActivate, Record: store.Record{
			Subscriber: h.subscriber, Inside: b.Inside, Public: b.Public, PortLo: b.PortLo, PortHi: b.PortHi,
			Start: start, Epoch: p.Epoch, Flags: store.FlagRecovered}})
		res.Recovered++
	}
	for id, rec := range openByID {
		if active[id] {
			continue
		}
		rec.End = now
		ops = append(ops, store.Op{Kind: store.OpRelease, Record: rec})
		res.Closed++
	}
	if len(ops) == 0 {
		return res, nil
	}
	if err := r.Records.Submit(ctx, ops); err != nil {
		return res, fmt.Errorf("write %d reconciled records: %w", len(ops), err)
	}
	return res, nil
}

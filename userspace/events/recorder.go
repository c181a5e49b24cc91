// Package events turns the data plane's block events into block records.
//
// The Recorder is the only writer of records. Activations come from the
// ring buffer; releases (from the sweeper) and recoveries (from the
// reconciler) are handed to it, so every change to a subscriber's record
// passes through one ordered stream. That ordering is what keeps a block in
// use from ever being without an open record: see Release.
//
// The agent's self-check canaries (loader.BlockEventCanary) arrive on the
// same ring buffer and are written in the same batches, into the store's
// canary keyspace: finding one proves that records reach the disk.
package events

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/blocknat/blocknat/loader"
	"github.com/blocknat/blocknat/userspace/logattr"
	"github.com/blocknat/blocknat/userspace/store"
)

// Sink is where records go; *store.Store is one.
type Sink interface {
	Apply(ops []store.Op) error
}

// Options tune batching. Zero values take the defaults.
type Options struct {
	// BatchSize is the most ops one Sync commit carries (default 1024).
	BatchSize int
	// FlushInterval bounds how long an event waits for its batch to fill
	// (default 50ms): records reach the disk promptly, and a burst of
	// activations still costs one fsync.
	FlushInterval time.Duration
	// MaxPending bounds what is kept in memory while the store refuses
	// writes (default 1<<20 ops). Beyond it the oldest activations are
	// dropped; the reconciler recovers them from the kernel.
	MaxPending int
	Clock      Clock
	Logger     *slog.Logger
	// Observers see every batch after it is on disk, in order, on the
	// Recorder's goroutine (exporters: IPFIX, syslog). They must not block
	// for long: a slow observer delays the next batch. They never see the
	// self-check's canaries: those are not block records.
	Observers []func(ops []store.Op)
}

// Recorder batches block events into the store.
type Recorder struct {
	sink Sink
	opts Options
	log  *slog.Logger

	requests chan request

	// lastActivation is the latest activation seen per block (a
	// subscriber's own, or an overflow block it holds); only the run loop
	// touches it.
	lastActivation map[blockKey]store.Record

	written    atomic.Uint64
	dropped    atomic.Uint64
	failing    atomic.Bool
	lastErrMu  sync.Mutex
	lastErr    error
	lastWrite  atomic.Int64 // unix ns of the last successful commit
	eventsSeen atomic.Uint64
	canaries   atomic.Uint64
}

type request struct {
	ops  []store.Op
	done chan error
}

// NewRecorder makes a Recorder writing to sink.
func NewRecorder(sink Sink, opts Options) *Recorder {
	if opts.BatchSize <= 0 {
		opts.BatchSize = 1024
	}
	if opts.FlushInterval <= 0 {
		opts.FlushInterval = 50 * time.Millisecond
	}
	if opts.MaxPending <= 0 {
		opts.MaxPending = 1 << 20
	}
	if opts.Clock == nil {
		opts.Clock = &SystemClock{}
	}
	log := opts.Logger
	if log == nil {
		log = slog.Default()
	}
	return &Recorder{sink: sink, opts: opts, log: log, requests: make(chan request), lastActivation: map[blockKey]store.Record{}}
}

// Record turns a kernel block event into the record it opens.
func Record(e loader.BlockEvent, clock Clock) store.Record {
	return store.Record{
		Subscriber: e.Subscriber,
		Inside:     loader.AddrFromBE32(e.InsideAddr),
		Public:     loader.AddrFromBE32(e.PublicAddr),
		PortLo:     e.PortLo,
		PortHi:     e.PortHi,
		Start:      clock.Wall(e.TimeNs),
		Epoch:      e.Epoch,
	}
}

// Canary turns the self-check's kernel event into the canary record it
// writes. The event's subscriber field carries the check's sequence number.
func Canary(e loader.BlockEvent, clock Clock) store.Canary {
	return store.Canary{Seq: e.Subscriber, Time: clock.Wall(e.TimeNs), Epoch: e.Epoch}
}

// Source is the ring buffer reader (*loader.EventReader); Close must make
// a blocked Read return loader.ErrEventsClosed.
type Source interface {
	Read() (loader.BlockEvent, error)
	Close() error
}

// Run reads rd until ctx ends, writing activations in Sync batches, and
// serves Release and Recover calls in the same order. On return every
// event read has been written, or logged as lost if the store refused it.
func (r *Recorder) Run(ctx context.Context, rd Source) error {
	raw := make(chan loader.BlockEvent, r.opts.BatchSize)
	readErr := make(chan error, 1)
	go func() {
		readErr <- r.read(rd, raw)
		close(raw)
	}()
	go func() {
		// Closing the reader is how it is stopped: Read returns ErrClosed.
		<-ctx.Done()
		rd.Close()
	}()

	var pending []store.Op
	tick := time.NewTicker(r.opts.FlushInterval)
	defer tick.Stop()
	flush := func() {
		if len(pending) == 0 {
			return
		}
		if err := r.apply(pending); err != nil {
			pending = r.trim(pending)
			return
		}
		pending = pending[:0]
	}
	for {
		select {
		case e, ok := <-raw:
			if !ok {
				flush()
				if len(pending) > 0 {
					r.log.Error("records lost at shutdown: the store refused them; the reconciler recovers open blocks at the next start",
						logattr.Count, len(pending))
				}
				return <-readErr
			}
			if e.Kind == loader.BlockEventCanary {
				// Batched like any activation: the canary proves the
				// path records take, so it must take the same one.
				r.canaries.Add(1)
				pending = append(pending, store.Op{Kind: store.OpCanary, Canary: Canary(e, r.opts.Clock)})
				if len(pending) >= r.opts.BatchSize {
					flush()
				}
				continue
			}
			r.eventsSeen.Add(1)
			if e.Kind != loader.BlockEventActivate {
				r.log.Warn("unknown block event kind ignored", "kind", e.Kind)
				continue
			}
			rec := Record(e, r.opts.Clock)
			if prev, ok := r.lastActivation[keyOf(rec)]; !ok || rec.Start.After(prev.Start) {
				r.lastActivation[keyOf(rec)] = rec
			}
			pending = append(pending, store.Op{Kind: store.OpActivate, Record: rec})
			if len(pending) >= r.opts.BatchSize {
				flush()
			}
		case req := <-r.requests:
			// Events already read go first, so a release never
			// overtakes an activation the kernel reported before it.
			flush()
			ops := r.order(req.ops)
			err := r.apply(ops)
			if err != nil {
				pending = append(pending, ops...)
				pending = r.trim(pending)
			}
			req.done <- err
		case <-tick.C:
			flush()
		}
	}
}

func (r *Recorder) read(rd Source, out chan<- loader.BlockEvent) error {
	for {
		e, err := rd.Read()
		switch {
		case errors.Is(err, loader.ErrEventsClosed):
			return nil
		case errors.Is(err, loader.ErrMalformedEvent):
			r.log.Error("malformed block event skipped", logattr.Err, err.Error())
			continue
		case err != nil:
			return fmt.Errorf("read block events: %w", err)
		}
		out <- e
	}
}

// blockKey names a held block: its holder, address and first port. A
// subscriber may hold its own block and overflow blocks at once, each with
// its record.
type blockKey struct {
	subscriber uint32
	public     [4]byte
	portLo     uint16
}

func keyOf(r store.Record) blockKey { return blockKey{r.Subscriber, r.Public.As4(), r.PortLo} }

// order makes a release safe against an activation the kernel reported
// after the sweeper decided to release: the store keeps one open record per
// block, so that activation merged into the record being closed. The
// subscriber uses the block again from that activation on, so a new record
// is opened at its time.
func (r *Recorder) order(ops []store.Op) []store.Op {
	out := make([]store.Op, 0, len(ops))
	for _, op := range ops {
		out = append(out, op)
		if op.Kind != store.OpRelease {
			continue
		}
		if act, ok := r.lastActivation[keyOf(op.Record)]; ok && act.Start.After(op.Record.End) {
			out = append(out, store.Op{Kind: store.OpActivate, Record: act})
		}
	}
	return out
}

func (r *Recorder) apply(ops []store.Op) error {
	if err := r.sink.Apply(ops); err != nil {
		// The error is stored before the flag, so whoever sees the
		// failure also sees why.
		r.lastErrMu.Lock()
		r.lastErr = err
		r.lastErrMu.Unlock()
		if !r.failing.Swap(true) {
			r.log.Error("cannot write block records; the data plane keeps forwarding and writes are retried", logattr.Err, err.Error())
		}
		return err
	}
	if r.failing.Swap(false) {
		r.log.Info("block records are written again")
	}
	records := withoutCanaries(ops)
	r.written.Add(uint64(len(records)))
	r.lastWrite.Store(time.Now().UnixNano())
	if len(records) > 0 {
		for _, o := range r.opts.Observers {
			o(records)
		}
	}
	return nil
}

// withoutCanaries returns ops without the self-check's canaries, reusing
// ops when it holds none (the common case).
func withoutCanaries(ops []store.Op) []store.Op {
	n := 0
	for _, op := range ops {
		if op.Kind == store.OpCanary {
			n++
		}
	}
	if n == 0 {
		return ops
	}
	out := make([]store.Op, 0, len(ops)-n)
	for _, op := range ops {
		if op.Kind != store.OpCanary {
			out = append(out, op)
		}
	}
	return out
}

// trim keeps pending within MaxPending by dropping the oldest activations:
// the kernel still shows those blocks active, so the reconciler can
// recover them, which it cannot do for a release.
func (r *Recorder) trim(pending []store.Op) []store.Op {
	over := len(pending) - r.opts.MaxPending
	if over <= 0 {
		return pending
	}
	kept := pending[:0]
	for _, op := range pending {
		if over > 0 && op.Kind == store.OpActivate {
			over--
			r.dropped.Add(1)
			continue
		}
		kept = append(kept, op)
	}
	return kept
}

// Submit writes ops in order with everything read before it, and returns
// once they are on disk (or the store refused them; they are then retried
// with later batches).
func (r *Recorder) Submit(ctx context.Context, ops []store.Op) error {
	req := request{ops: ops, done: make(chan error, 1)}
	select {
	case r.requests <- req:
	case <-ctx.Done():
		return ctx.Err()
	}
	select {
	case err := <-req.done:
		return err
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Health is the Recorder's state for status and alarms.
type Health struct {
	EventsRead     uint64 // block events; canaries are counted apart
	CanariesRead   uint64
	RecordsWritten uint64
	Dropped        uint64 // activations dropped while the store refused writes
	Failing        bool   // the last write failed: records are not being written
	LastError      string
	LastWrite      time.Time
}

// Health reports whether records are being written.
func (r *Recorder) Health() Health {
	h := Health{EventsRead: r.eventsSeen.Load(), CanariesRead: r.canaries.Load(), RecordsWritten: r.written.Load(), Dropped: r.dropped.Load(), Failing: r.failing.Load()}
	if ns := r.lastWrite.Load(); ns != 0 {
		h.LastWrite = time.Unix(0, ns)
	}
	r.lastErrMu.Lock()
	if r.lastErr != nil && h.Failing {
		h.LastError = r.lastErr.Error()
	}
	r.lastErrMu.Unlock()
	return h
}

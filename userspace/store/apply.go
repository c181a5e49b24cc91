package store

import (
	"encoding/binary"
	"errors"
	"fmt"
	"sync/atomic"
	"time"

	"github.com/cockroachdb/pebble/v2"
)

// OpKind says what an Op does.
type OpKind uint8

const (
	// OpActivate writes an open record (Record.End must be zero). Activating a
	// block the same subscriber already holds open keeps the earlier Start, so
	// the ring buffer and the reconciler may both report a block.
	OpActivate OpKind = iota + 1
	// OpRelease closes the open record of Record.Subscriber for the block
	// (Record.Public, Record.PortLo) at Record.End, and adds Record.Flags.
	// Other fields come from the open record. A release that matches no open
	// record is logged, counted in Stats.UnmatchedReleases and skipped.
	OpRelease
	// OpCanary writes Op.Canary, the agent's self-check record, in a
	// keyspace of its own that no lookup, history, export or open-record
	// scan reads; canaries older than canaryKeep are deleted with it.
	OpCanary
)

func (k OpKind) String() string {
	switch k {
	case OpActivate:
		return "activate"
	case OpRelease:
		return "release"
	case OpCanary:
		return "canary"
	}
	return fmt.Sprintf("OpKind(%d)", uint8(k))
}

// Op is one change given to Apply.
type Op struct {
	Kind   OpKind
	Record Record
	Canary Canary // OpCanary only
}

// Apply writes a batch of activations and releases as one Pebble batch
// committed with pebble.Sync: when Apply returns nil, every op is on stable
// storage, and a crash leaves either all of them or none. If any op is
// invalid nothing is written. Addresses must be IPv4, and times after 1970
// and at most maxClockSkew (24h) after the store's clock.
func (s *Store) Apply(ops []Op) error {
	if len(ops) == 0 {
		return nil
	}
	done, err := s.startWrite("apply %d ops", len(ops))
	if err != nil {
		return err
	}
	defer done()
	w, err := s.newRecordBatch()
	if err != nil {
		return fmt.Errorf("apply: %w", err)
	}
	defer w.b.Close()
	for i := range ops {
		if err := w.apply(i, &ops[i]); err != nil {
			return err
		}
	}
	if err := w.writeOpen(); err != nil {
		return fmt.Errorf("apply: open records: %w", err)
	}
	if err := w.raiseWidth(); err != nil {
		return fmt.Errorf("apply: batch set width: %w", err)
	}
	if err := w.out.finish(); err != nil {
		return fmt.Errorf("apply: %w", err)
	}
	if err := w.commit(); err != nil {
		return fmt.Errorf("apply: commit %d ops: %w", len(ops), err)
	}
	return nil
}

// recordBatch collects one Apply call: the Pebble batch and this batch's
// changes to the open records (nil: released), applied to the Store's map
// only when the commit succeeds.
type recordBatch struct {
	s         *Store
	b         *pebble.Batch
	now       time.Time
	swept     uint32
	width     uint32 // widest block stored once the batch commits
	pending   map[openID]*Record
	unmatched uint64
	out       *outboxWriter // nil: no outbox
}

func (s *Store) newRecordBatch() (*recordBatch, error) {
	w := &recordBatch{s: s, b: s.db.NewBatch(), now: s.now(), swept: s.swept.Load(), width: s.maxWidth.Load(),
		pending: make(map[openID]*Record)}
	var err error
	if w.out, err = s.outboxFor(w.b, w.now); err != nil {
		w.b.Close()
		return nil, err
	}
	return w, nil
}

func (w *recordBatch) current(oid openID) (Record, bool) { return pendingGet(w.pending, w.s.open, oid) }

// apply adds op, the i-th of the batch; its errors name the op by i.
func (w *recordBatch) apply(i int, op *Op) error {
	switch op.Kind {
	case OpActivate:
		return w.activate(i, op.Record)
	case OpRelease:
		return w.release(i, op.Record)
	case OpCanary:
		if err := putCanary(w.b, op.Canary, w.now); err != nil {
			return fmt.Errorf("apply op %d (canary %d): %w", i, op.Canary.Seq, err)
		}
		return nil
	}
	return fmt.Errorf("apply op %d: kind %v: %w", i, op.Kind, ErrInvalid)
}

// activate adds an OpActivate; see OpActivate for the rules.
func (w *recordBatch) activate(i int, r Record) error {
	rec, id, _, err := checkActivate(r, w.now)
	if err != nil {
		return fmt.Errorf("apply op %d (activate subscriber %d): %w", i, r.Subscriber, err)
	}
	oid := id.open()
	if cur, ok := w.current(oid); ok {
		confirms := rec.Start.Equal(cur.Start) && cur.Flags&FlagRecovered != 0 && rec.Flags&FlagRecovered == 0
		if !rec.Start.Before(cur.Start) && !confirms {
			return nil // the block is already recorded as open from an earlier time
		}
		// Either a later report with an earlier start (the ring
		// buffer's event after the reconciler found the block
		// without knowing its start) widens the record to the true
		// start, or the ring buffer's event for exactly the
		// activation the reconciler recovered confirms it, and the
		// record is no longer marked recovered.
	}
	// The open keys are written by writeOpen once the batch is read
	// whole, so that a block released in the same batch never has any.
	w.pending[oid] = &rec
	w.width = max(w.width, uint32(rec.PortHi-rec.PortLo)+1)
	if w.out != nil {
		if err := w.out.record(OutboxOpen, &rec); err != nil {
			return fmt.Errorf("apply op %d: %w", i, err)
		}
	}
	return nil
}

// release adds an OpRelease; see OpRelease for the rules.
func (w *recordBatch) release(i int, r Record) error {
	oid, endNS, err := checkRelease(r, w.now)
	if err != nil {
		return fmt.Errorf("apply op %d (release subscriber %d): %w", i, r.Subscriber, err)
	}
	cur, ok := w.current(oid)
	if !ok {
		w.unmatched++
		w.s.log.Warn("release matches no open record", logKeySubscriber, r.Subscriber,
			logKeyPublic, r.Public, logKeyPortLo, r.PortLo, logKeyEnd, r.End)
		return nil
	}
	id, inside := idOf(&cur)
	if endNS < id.start {
		return fmt.Errorf("apply op %d (release subscriber %d): end %s before the open record's start %s: %w",
			i, r.Subscriber, r.End.UTC().Format(time.RFC3339Nano), cur.Start.Format(time.RFC3339Nano), ErrInvalid)
	}
	closed := cur
	closed.End = time.Unix(0, endNS).UTC()
	closed.Flags |= r.Flags
	// The lazy carry: one copy per day the interval touched, from
	// the oldest retained day on, and in each of those days the
	// inside address's index entry for the block (written again by
	// every record of the block that day; Pebble keeps one).
	v := encodeClosedValue(nil, &closed, inside)
	for day := max(dayOf(id.start), w.swept); day <= dayOf(endNS); day++ {
		if err := errors.Join(w.b.Set(recordKey(day, id), v, nil), w.b.Set(insideKey(day, inside, id.insideEntry()), nil, nil)); err != nil {
			return fmt.Errorf("apply op %d: batch set: %w", i, err)
		}
	}
	w.pending[oid] = nil
	if w.out != nil {
		if err := w.out.record(OutboxClose, &closed); err != nil {
			return fmt.Errorf("apply op %d: %w", i, err)
		}
	}
	return nil
}

// writeOpen brings the o and p keys from the store's open records to the
// batch's: it deletes those of a record the batch released or replaced and
// writes those of a record it opened or changed. A block activated and
// released in the same batch costs no open keys at all.
func (w *recordBatch) writeOpen() error {
	for oid, rec := range w.pending {
		was, had := w.s.open[oid]
		var newID recordID
		var newInside [4]byte
		if rec != nil {
			newID, newInside = idOf(rec)
		}
		sameKeys := false
		if had {
			wasID, wasInside := idOf(&was)
			sameKeys = rec != nil && newID == wasID && newInside == wasInside
			if !sameKeys {
				if err := errors.Join(w.b.Delete(openKey(wasID), nil), w.b.Delete(openInsideKey(wasInside, wasID), nil)); err != nil {
					return fmt.Errorf("batch delete: %w", err)
				}
			}
		}
		if rec == nil {
			continue
		}
		if err := w.b.Set(openKey(newID), encodeOpenValue(nil, rec, newInside), nil); err != nil {
			return fmt.Errorf("batch set: %w", err)
		}
		if !sameKeys {
			if err := w.b.Set(openInsideKey(newInside, newID), nil, nil); err != nil {
				return fmt.Errorf("batch set: %w", err)
			}
		}
	}
	return nil
}

// raiseWidth records a wider block than the store has seen. The new width
// is used at once: a width larger than stored only widens scans.
func (w *recordBatch) raiseWidth() error {
	if w.width <= w.s.maxWidth.Load() {
		return nil
	}
	if err := w.b.Set(metaWidth, binary.BigEndian.AppendUint32(nil, w.width), nil); err != nil {
		return err
	}
	w.s.maxWidth.Store(w.width)
	return nil
}

// commit writes the batch with pebble.Sync and, once it is on stable
// storage, makes its open records the store's.
func (w *recordBatch) commit() error {
	w.s.unmatched.Add(w.unmatched)
	if err := commitPending(w.b, w.pending, w.s.open, &w.s.openCount); err != nil {
		return err
	}
	w.s.committed(w.out)
	return nil
}

// pendingGet reads key through a batch's pending changes (nil: deleted)
// to the store's map m.
func pendingGet[K comparable, V any](pending map[K]*V, m map[K]V, key K) (V, bool) {
	if v, ok := pending[key]; ok {
		if v == nil {
			var zero V
			return zero, false
		}
		return *v, true
	}
	v, ok := m[key]
	return v, ok
}

// commitPending commits b with pebble.Sync and, once it is on stable
// storage, applies the batch's pending changes to the store's map m and
// stores m's size in count. An empty batch commits nothing.
func commitPending[K comparable, V any](b *pebble.Batch, pending map[K]*V, m map[K]V, count *atomic.Int64) error {
	if b.Empty() {
		return nil
	}
	if err := b.Commit(pebble.Sync); err != nil {
		return err
	}
	for k, v := range pending {
		if v == nil {
			delete(m, k)
		} else {
			m[k] = *v
		}
	}
	count.Store(int64(len(m)))
	return nil
}

// checkActivate validates an activation and returns it normalised to UTC.
func checkActivate(r Record, now time.Time) (Record, recordID, [4]byte, error) {
	var id recordID
	public, err := addr4(r.Public, "public")
	if err != nil {
		return r, id, [4]byte{}, err
	}
	inside, err := addr4(r.Inside, "inside")
	if err != nil {
		return r, id, [4]byte{}, err
	}
	if r.PortLo > r.PortHi {
		return r, id, inside, fmt.Errorf("port_lo %d above port_hi %d: %w", r.PortLo, r.PortHi, ErrInvalid)
	}
	startNS, err := checkTime(r.Start, "start", now)
	if err != nil {
		return r, id, inside, err
	}
	if !r.End.IsZero() {
		return r, id, inside, fmt.Errorf("end: set on an activation (activations are open): %w", ErrInvalid)
	}
	r.Public, r.Inside = addrFrom4(public), addrFrom4(inside)
	// Rounded down at once, so that the open record answers as its
	// closed copies will, and a second report of the same activation
	// (the reconciler's, the ring buffer's) finds the same Start.
	startNS = floorStep(startNS)
	r.Start = time.Unix(0, startNS).UTC()
	return r, recordID{public: public, portLo: r.PortLo, start: startNS, sub: r.Subscriber}, inside, nil
}

func checkRelease(r Record, now time.Time) (openID, int64, error) {
	public, err := addr4(r.Public, "public")
	if err != nil {
		return openID{}, 0, err
	}
	endNS, err := checkTime(r.End, "end", now)
	if err != nil {
		return openID{}, 0, err
	}
	if endNS > maxRecordNS {
		return openID{}, 0, fmt.Errorf("end: %s is past the last time a record holds: %w", r.End.UTC().Format(time.RFC3339Nano), ErrInvalid)
	}
	// Rounded up, so that the stored interval contains the true one.
	return openID{sub: r.Subscriber, public: public, portLo: r.PortLo}, ceilStep(endNS), nil
}

// idOf returns the identity and inside address of a normalised record.
func idOf(r *Record) (recordID, [4]byte) {
	return recordID{public: r.Public.As4(), portLo: r.PortLo, start: r.Start.UnixNano(), sub: r.Subscriber}, r.Inside.As4()
}

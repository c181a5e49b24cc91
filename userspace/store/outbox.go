package store

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"time"

	"github.com/cockroachdb/pebble/v2"
)

// OutboxKind says what an OutboxEvent reports.
type OutboxKind uint8

const (
	// OutboxOpen: an activation was recorded; Record is the open record
	// as stored (End zero). An Open for a subscriber and block that
	// already has an open record replaces it (an earlier Start, or the
	// reconciler's recovered record confirmed by the ring buffer).
	OutboxOpen OutboxKind = 1 + iota
	// OutboxClose: a release closed the open record of Record's
	// subscriber and block; Record is the closed record, times as
	// stored (rounded outward).
	OutboxClose
	// OutboxLeaseHeld: Lease is now the current lease of Lease.Inside
	// (Ended false; End its expiry, zero for an infinite lease). It
	// replaces any current lease of that address.
	OutboxLeaseHeld
	// OutboxLeaseEnded: Lease is a final lease as the L keyspace stores
	// it (Ended true). When the current lease of its address has the same
	// MAC and Start, it was that lease, and the address has none after it;
	// otherwise it is a late report of an earlier device's lease.
	OutboxLeaseEnded
	// OutboxEpoch: Epoch was written by PutEpoch (also each daily
	// re-write, which replaces the copy of the same ID and Start).
	OutboxEpoch
)

func (k OutboxKind) String() string {
	switch k {
	case OutboxOpen:
		return "open"
	case OutboxClose:
		return "close"
	case OutboxLeaseHeld:
		return "lease_held"
	case OutboxLeaseEnded:
		return "lease_ended"
	case OutboxEpoch:
		return "epoch"
	}
	return fmt.Sprintf("OutboxKind(%d)", uint8(k))
}

// OutboxEvent is one change of the store, kept for replication.
type OutboxEvent struct {
	Seq      uint64    // 1, 2, 3 … with no gap, assigned in commit order
	Enqueued time.Time // the store's clock when the batch was written
	Kind     OutboxKind
	Record   Record // OutboxOpen, OutboxClose
	Lease    Lease  // OutboxLeaseHeld, OutboxLeaseEnded
	Epoch    Epoch  // OutboxEpoch
}

// OutboxState is where the outbox stands.
type OutboxState struct {
	Last  uint64 // the seq of the newest event; 0 before the first
	Acked uint64 // every event up to this one was acknowledged and deleted
	Depth uint64 // events waiting: Last - Acked
	// Oldest is when the first unacknowledged event was enqueued; zero
	// when none waits.
	Oldest time.Time
}

// Outbox meta keys.
var (
	metaOutboxLast  = []byte("m outbox last")  // u64: seq of the newest event
	metaOutboxAcked = []byte("m outbox acked") // u64: highest seq acknowledged
	// metaOutboxOn says that the outbox holds every change since the
	// store began or since a completed backfill. Its absence, when the
	// outbox is on, starts a backfill.
	metaOutboxOn = []byte("m outbox on")
	// metaOutboxBackfill is the first seq of a backfill under way (u64);
	// a crash leaves it, and the next Open deletes the events from it on
	// and starts the backfill again.
	metaOutboxBackfill = []byte("m outbox backfill")
)

const (
	outboxKeyLen        = 1 + 8
	valueVersionOutbox  = 1
	outboxBackfillEvery = 5 * time.Second // progress log interval
)

// outboxBackfillBatch is how many events a backfill commits per Sync
// batch: large enough that the sync is cheap beside the writes, small
// enough that a batch of a year's records stays a few MB. A variable so
// that tests can make a small store take many batches.
var outboxBackfillBatch = 10_000

func outboxKey(seq uint64) []byte {
	return binary.BigEndian.AppendUint64(append(make([]byte, 0, outboxKeyLen), prefixOutbox), seq)
}

// outboxWriter adds a write's events to its batch. A nil *outboxWriter
// is the outbox turned off; the callers test for it, so that a store
// without an outbox pays nothing.
type outboxWriter struct {
	b        *pebble.Batch
	first    uint64 // seq of the batch's first event
	next     uint64 // seq of the next event
	enqueued int64
	buf      []byte
}

// outboxFor returns the writer of a batch written at now, nil when the
// outbox is off. With the outbox off on a store that kept one, the batch
// also deletes metaOutboxOn: the outbox no longer holds every change, so
// turning it on again must backfill. The caller holds writeMu.
func (s *Store) outboxFor(b *pebble.Batch, now time.Time) (*outboxWriter, error) {
	if !s.outbox {
		if s.outboxForget {
			if err := b.Delete(metaOutboxOn, nil); err != nil {
				return nil, fmt.Errorf("batch delete outbox mark: %w", err)
			}
		}
		return nil, nil
	}
	return newOutboxWriter(b, s.outboxLast.Load()+1, now), nil
}

func newOutboxWriter(b *pebble.Batch, first uint64, now time.Time) *outboxWriter {
	return &outboxWriter{b: b, first: first, next: first, enqueued: ClampNS(now)}
}

// add appends one event whose payload encode writes.
func (o *outboxWriter) add(kind OutboxKind, encode func([]byte) ([]byte, error)) error {
	v := append(o.buf[:0], valueVersionOutbox)
	v = binary.BigEndian.AppendUint64(v, uint64(o.enqueued))
	v = append(v, byte(kind))
	v, err := encode(v)
	if err != nil {
		return err
	}
	o.buf = v
	if err := o.b.Set(outboxKey(o.next), v, nil); err != nil {
		return fmt.Errorf("batch set outbox %d: %w", o.next, err)
	}
	o.next++
	return nil
}

func (o *outboxWriter) record(kind OutboxKind, r *Record) error {
	return o.add(kind, func(v []byte) ([]byte, error) { return appendOutboxRecord(v, r), nil })
}

func (o *outboxWriter) leaseHeld(inside [4]byte, h *heldLease) error {
	return o.add(OutboxLeaseHeld, func(v []byte) ([]byte, error) {
		return append(append(v, inside[:]...), encodeHeld(h)...), nil
	})
}

func (o *outboxWriter) leaseEnded(inside [4]byte, h *heldLease, endNS int64) error {
	return o.add(OutboxLeaseEnded, func(v []byte) ([]byte, error) {
		v = append(v, inside[:]...)
		v = binary.BigEndian.AppendUint64(v, uint64(h.start))
		v = binary.BigEndian.AppendUint64(v, uint64(endNS))
		for _, str := range []string{h.mac, h.clientID, h.hostname, h.source} {
			v = appendString(v, str)
		}
		return v, nil
	})
}

func (o *outboxWriter) epoch(key, val []byte) error {
	return o.add(OutboxEpoch, func(v []byte) ([]byte, error) {
		v = binary.AppendUvarint(v, uint64(len(key)))
		return append(append(v, key...), val...), nil
	})
}

// finish writes the new last seq into the batch, when it holds events.
func (o *outboxWriter) finish() error {
	if o == nil || o.next == o.first {
		return nil
	}
	if err := o.b.Set(metaOutboxLast, binary.BigEndian.AppendUint64(nil, o.next-1), nil); err != nil {
		return fmt.Errorf("batch set outbox last: %w", err)
	}
	return nil
}

// committed makes the batch's events the store's once it is on stable
// storage. The caller holds writeMu.
func (s *Store) committed(o *outboxWriter) {
	if o == nil {
		s.outboxForget = false
		return
	}
	s.outboxLast.Store(o.next - 1)
}

// appendOutboxRecord writes a record: subscriber u32, inside 4B, public
// 4B, port_lo u16, port_hi u16, then uvarints for the start in timeSteps,
// the end (0: open, else End-Start in timeSteps plus 1), the epoch and the
// flags. A record's times are timeSteps as stored; the uvarints take
// about 10 bytes off each event beside u64 nanoseconds.
func appendOutboxRecord(v []byte, r *Record) []byte {
	v = binary.BigEndian.AppendUint32(v, r.Subscriber)
	in, pub := r.Inside.As4(), r.Public.As4()
	v = append(append(v, in[:]...), pub[:]...)
	v = binary.BigEndian.AppendUint16(v, r.PortLo)
	v = binary.BigEndian.AppendUint16(v, r.PortHi)
	startNS := floorStep(r.Start.UnixNano())
	v = binary.AppendUvarint(v, uint64(startNS/timeStep))
	var end uint64
	if !r.End.IsZero() {
		end = uint64((ceilStep(r.End.UnixNano())-startNS)/timeStep) + 1
	}
	v = binary.AppendUvarint(v, end)
	v = binary.AppendUvarint(v, uint64(r.Epoch))
	return binary.AppendUvarint(v, uint64(r.Flags))
}

// decodeOutboxRecord reads what appendOutboxRecord wrote.
func decodeOutboxRecord(p []byte) (Record, bool) {
	const fixed = 4 + 4 + 4 + 2 + 2
	if len(p) < fixed {
		return Record{}, false
	}
	r := Record{
		Subscriber: binary.BigEndian.Uint32(p),
		Inside:     addrFrom4([4]byte(p[4:8])),
		Public:     addrFrom4([4]byte(p[8:12])),
		PortLo:     binary.BigEndian.Uint16(p[12:]),
		PortHi:     binary.BigEndian.Uint16(p[14:]),
	}
	rest := p[fixed:]
	var fields [4]uint64 // start, end, epoch, flags
	for i := range fields {
		x, n := binary.Uvarint(rest)
		if n <= 0 {
			return Record{}, false
		}
		fields[i], rest = x, rest[n:]
	}
	maxSteps := uint64(maxRecordNS / timeStep)
	if len(rest) != 0 || fields[0] > maxSteps || fields[1] > maxSteps-fields[0]+1 ||
		fields[2] > math.MaxUint32 || fields[3] > math.MaxUint32 {
		return Record{}, false
	}
	startNS := int64(fields[0]) * timeStep
	r.Start = time.Unix(0, startNS).UTC()
	if fields[1] != 0 {
		r.End = time.Unix(0, startNS+int64(fields[1]-1)*timeStep).UTC()
	}
	r.Epoch, r.Flags = uint32(fields[2]), Flags(fields[3])
	return r, true
}

func decodeOutbox(k, v []byte) (OutboxEvent, error) {
	var ev OutboxEvent
	if len(k) != outboxKeyLen || k[0] != prefixOutbox {
		return ev, fmt.Errorf("outbox key %x: bad length or prefix: %w", k, ErrCorrupt)
	}
	ev.Seq = binary.BigEndian.Uint64(k[1:])
	bad := func(what string) (OutboxEvent, error) {
		return OutboxEvent{}, fmt.Errorf("outbox event %d value %x: %s: %w", ev.Seq, v, what, ErrCorrupt)
	}
	if len(v) < 1+8+1 {
		return bad("short")
	}
	if v[0] != valueVersionOutbox {
		return bad("unknown version")
	}
	ev.Enqueued = time.Unix(0, int64(binary.BigEndian.Uint64(v[1:]))).UTC()
	ev.Kind = OutboxKind(v[9])
	p := v[10:]
	switch ev.Kind {
	case OutboxOpen, OutboxClose:
		r, ok := decodeOutboxRecord(p)
		if !ok {
			return bad("record")
		}
		ev.Record = r
	case OutboxLeaseHeld:
		if len(p) < 4 {
			return bad("lease")
		}
		h, err := decodeHeld(p[4:])
		if err != nil {
			return bad(err.Error())
		}
		l := h.lease([4]byte(p[:4]), 0)
		l.Ended = false
		ev.Lease = l
	case OutboxLeaseEnded:
		if len(p) < 4+8+8 {
			return bad("lease")
		}
		l := Lease{
			Inside: addrFrom4([4]byte(p[:4])),
			Start:  time.Unix(0, int64(binary.BigEndian.Uint64(p[4:]))).UTC(),
			End:    time.Unix(0, int64(binary.BigEndian.Uint64(p[12:]))).UTC(),
			Ended:  true,
		}
		rest := p[20:]
		var mac, clientID string
		for _, dst := range []*string{&mac, &clientID, &l.Hostname, &l.Source} {
			var ok bool
			if *dst, rest, ok = readString(rest); !ok {
				return bad("lease strings")
			}
		}
		if len(rest) != 0 || mac == "" {
			return bad("lease trailing bytes or mac")
		}
		l.MAC, l.ClientID = []byte(mac), bytesOrNil(clientID)
		ev.Lease = l
	case OutboxEpoch:
		n, w := binary.Uvarint(p)
		if w <= 0 || n > uint64(len(p)-w) {
			return bad("epoch key")
		}
		e, err := decodeEpoch(p[w:w+int(n)], p[w+int(n):])
		if err != nil {
			return bad(err.Error())
		}
		ev.Epoch = e
	default:
		return bad("unknown kind")
	}
	return ev, nil
}

// Outbox returns up to limit events with Seq > after, in order of Seq.
// Events up to the acknowledged seq are gone; after below it starts at
// the first one kept.
func (s *Store) Outbox(after uint64, limit int) ([]OutboxEvent, error) {
	if limit <= 0 {
		return nil, fmt.Errorf("outbox: limit %d: must be positive: %w", limit, ErrInvalid)
	}
	if after == math.MaxUint64 {
		return nil, nil
	}
	var out []OutboxEvent
	err := s.read("outbox", func(v *view) error {
		v.it.SetBounds(outboxKey(after+1), []byte{prefixOutbox + 1})
		for ok := v.it.First(); ok && len(out) < limit; ok = v.it.Next() {
			val, err := v.it.ValueAndErr()
			if err != nil {
				return err
			}
			ev, err := decodeOutbox(v.it.Key(), val)
			if err != nil {
				return err
			}
			out = append(out, ev)
		}
		return v.it.Error()
	})
	if err != nil {
		return nil, fmt.Errorf("outbox after %d: %w", after, err)
	}
	return out, nil
}

// AckOutbox deletes the events up to through, which the replica now
// holds, with one range delete and the new acknowledged seq in one Sync
// batch. Acknowledging a seq already acknowledged does nothing; one past
// the last event is an error.
func (s *Store) AckOutbox(through uint64) error {
	done, err := s.startWrite("ack outbox through %d", through)
	if err != nil {
		return err
	}
	defer done()
	if last := s.outboxLast.Load(); through > last {
		return fmt.Errorf("ack outbox through %d: the last event is %d: %w", through, last, ErrInvalid)
	}
	if through <= s.outboxAcked.Load() {
		return nil
	}
	b := s.db.NewBatch()
	defer b.Close()
	if err := errors.Join(
		b.DeleteRange([]byte{prefixOutbox}, outboxKey(through+1), nil),
		b.Set(metaOutboxAcked, binary.BigEndian.AppendUint64(nil, through), nil),
	); err != nil {
		return fmt.Errorf("ack outbox through %d: batch: %w", through, err)
	}
	if err := b.Commit(pebble.Sync); err != nil {
		return fmt.Errorf("ack outbox through %d: commit: %w", through, err)
	}
	s.outboxAcked.Store(through)
	return nil
}

// OutboxState returns the last and acknowledged seqs and when the oldest
// waiting event was enqueued.
func (s *Store) OutboxState() (OutboxState, error) {
	// Loaded before the view exists: last moves only after its events
	// commit, so the view holds every event up to it, and the first one
	// after acked unless an acknowledgement meanwhile deleted it (then
	// Oldest is that of a later event, or zero).
	var st OutboxState
	st.Acked = s.outboxAcked.Load()
	st.Last = s.outboxLast.Load()
	st.Depth = st.Last - min(st.Acked, st.Last)
	if st.Depth == 0 {
		return st, nil
	}
	err := s.read("outbox state", func(v *view) error {
		v.it.SetBounds(outboxKey(st.Acked+1), []byte{prefixOutbox + 1})
		if !v.it.First() {
			return v.it.Error()
		}
		val, err := v.it.ValueAndErr()
		if err != nil {
			return err
		}
		ev, err := decodeOutbox(v.it.Key(), val)
		if err != nil {
			return err
		}
		st.Oldest = ev.Enqueued
		return nil
	})
	if err != nil {
		return OutboxState{}, fmt.Errorf("outbox state: %w", err)
	}
	return st, nil
}

// openOutbox reads the outbox meta and, when the outbox is on and does
// not hold every change yet, backfills it. It runs in Open, after the
// upgrade and before the store is handed out.
func (s *Store) openOutbox(on bool) error {
	var last, acked, from uint64
	var hasFrom bool
	for _, m := range []struct {
		key []byte
		dst *uint64
		ok  *bool
	}{{metaOutboxLast, &last, nil}, {metaOutboxAcked, &acked, nil}, {metaOutboxBackfill, &from, &hasFrom}} {
		ok, err := s.getU64(m.key, m.dst)
		if err != nil {
			return err
		}
		if m.ok != nil {
			*m.ok = ok
		}
	}
	_, closer, err := s.db.Get(metaOutboxOn)
	marked := err == nil
	if marked {
		closer.Close()
	} else if !errors.Is(err, pebble.ErrNotFound) {
		return fmt.Errorf("open store: read meta %q: %w", metaOutboxOn, err)
	}
	s.outboxLast.Store(last)
	s.outboxAcked.Store(acked)
	if !on {
		s.outboxForget = marked
		return nil
	}
	if !marked {
		if !hasFrom {
			from = last + 1
		}
		if err := s.backfillOutbox(from, hasFrom); err != nil {
			return fmt.Errorf("open store: outbox backfill: %w", err)
		}
	}
	s.outbox = true
	return nil
}

func (s *Store) getU64(key []byte, dst *uint64) (bool, error) {
	v, closer, err := s.db.Get(key)
	if errors.Is(err, pebble.ErrNotFound) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("open store: read meta %q: %w", key, err)
	}
	defer closer.Close()
	if len(v) != 8 {
		return false, fmt.Errorf("open store: meta %q: length %d: %w", key, len(v), ErrCorrupt)
	}
	*dst = binary.BigEndian.Uint64(v)
	return true, nil
}

// backfill enqueues what the store holds, in Sync batches of
// outboxBackfillBatch events.
type backfill struct {
	s       *Store
	o       *outboxWriter
	events  int
	began   time.Time
	logged  time.Time
	current string // what is being enqueued, for the progress log
}

// backfillOutbox enqueues, from seq from on, the store's contents as
// events: the epochs, the closed records (once each, from the copy in
// their end day), the open records, the closed leases (likewise) and the
// current leases, so that a replica built from nothing by the events
// holds what the store holds. Resuming, it first deletes what a crashed
// backfill enqueued from from on: nobody can have read those events, as
// Open never returned. The last batch marks the outbox on.
func (s *Store) backfillOutbox(from uint64, resuming bool) error {
	if err := s.mayWrite(); err != nil {
		return err
	}
	b := s.db.NewBatch()
	if resuming {
		s.log.Info("store outbox backfill restarts", logKeySeq, from)
		if err := b.DeleteRange(outboxKey(from), []byte{prefixOutbox + 1}, nil); err != nil {
			return errors.Join(err, b.Close())
		}
	}
	if err := errors.Join(
		b.Set(metaOutboxBackfill, binary.BigEndian.AppendUint64(nil, from), nil),
		b.Set(metaOutboxLast, binary.BigEndian.AppendUint64(nil, from-1), nil),
		b.Commit(pebble.Sync),
		b.Close(),
	); err != nil {
		return fmt.Errorf("start: %w", err)
	}
	s.outboxLast.Store(from - 1)

	it, err := s.db.NewIter(nil)
	if err != nil {
		return fmt.Errorf("new iterator: %w", err)
	}
	defer it.Close()
	now := time.Now()
	bf := &backfill{s: s, began: now, logged: now}
	bf.start()
	defer func() {
		if bf.o != nil {
			bf.o.b.Close()
		}
	}()
	s.log.Info("store outbox backfill", logKeySeq, from)
	steps := []struct {
		what         string
		lower, upper byte
		fn           func(k, v []byte) error
	}{
		{"epochs", prefixEpoch, prefixEpoch + 1, bf.epoch},
		{"records", prefixRecord, prefixRecord + 1, bf.closedRecord},
		{"open records", prefixOpen, prefixOpen + 1, bf.openRecord},
		{"leases", prefixLease, prefixLease + 1, bf.closedLease},
		{"current leases", prefixLeaseHeld, prefixLeaseHeld + 1, bf.heldLease},
	}
	v := &view{db: s.db, it: it}
	for _, st := range steps {
		bf.current = st.what
		if err := v.scan([]byte{st.lower}, []byte{st.upper}, st.fn); err != nil {
			return fmt.Errorf("%s: %w", st.what, err)
		}
	}
	if err := errors.Join(
		bf.o.b.Set(metaOutboxOn, nil, nil),
		bf.o.b.Delete(metaOutboxBackfill, nil),
	); err != nil {
		return fmt.Errorf("finish: %w", err)
	}
	if err := bf.commit(); err != nil {
		return fmt.Errorf("finish: %w", err)
	}
	s.log.Info("store outbox backfilled", logKeyEvents, bf.events, logKeySeq, s.outboxLast.Load(),
		logKeyDuration, time.Since(bf.began))
	return nil
}

func (bf *backfill) start() {
	bf.o = newOutboxWriter(bf.s.db.NewBatch(), bf.s.outboxLast.Load()+1, bf.s.now())
}

// commit writes the current batch with its last seq and closes it.
func (bf *backfill) commit() error {
	err := errors.Join(bf.o.finish(), bf.o.b.Commit(pebble.Sync))
	bf.o.b.Close()
	if err == nil {
		bf.s.committed(bf.o)
	}
	bf.o = nil
	return err
}

// added counts one event and commits the batch when it is full.
func (bf *backfill) added(err error) error {
	if err != nil {
		return err
	}
	bf.events++
	if bf.o.next-bf.o.first < uint64(outboxBackfillBatch) {
		return nil
	}
	if err := bf.s.mayWrite(); err != nil {
		return err
	}
	if err := bf.commit(); err != nil {
		return err
	}
	bf.start()
	if time.Since(bf.logged) >= outboxBackfillEvery {
		bf.logged = time.Now()
		bf.s.log.Info("store outbox backfill progress", logKeyEvents, bf.events, logKeyKind, bf.current)
	}
	return nil
}

func (bf *backfill) epoch(k, v []byte) error {
	if _, err := decodeEpoch(k, v); err != nil {
		return err
	}
	return bf.added(bf.o.epoch(k, v))
}

func (bf *backfill) closedRecord(k, v []byte) error {
	day, id, err := parseRecordKey(k)
	if err != nil {
		return err
	}
	r, err := decodeValue(v, id, true)
	if err != nil {
		return err
	}
	// Every copy of a record ends in its end day's partition, the one
	// copy retention keeps to the last.
	if dayOf(r.End.UnixNano()) != day {
		return nil
	}
	return bf.added(bf.o.record(OutboxClose, &r))
}

func (bf *backfill) openRecord(k, v []byte) error {
	id, err := parseOpenKey(k)
	if err != nil {
		return err
	}
	r, err := decodeValue(v, id, false)
	if err != nil {
		return err
	}
	return bf.added(bf.o.record(OutboxOpen, &r))
}

func (bf *backfill) closedLease(k, v []byte) error {
	day, id, err := parseLeaseKey(k)
	if err != nil {
		return err
	}
	l, err := decodeLease(v, id)
	if err != nil {
		return err
	}
	endNS := l.End.UnixNano()
	if dayOf(endNS) != day {
		return nil
	}
	h := heldLease{start: id.start, mac: id.mac, clientID: string(l.ClientID), hostname: l.Hostname, source: l.Source}
	return bf.added(bf.o.leaseEnded(id.inside, &h, endNS))
}

func (bf *backfill) heldLease(k, v []byte) error {
	inside, err := parseHeldKey(k)
	if err != nil {
		return err
	}
	h, err := decodeHeld(v)
	if err != nil {
		return err
	}
	return bf.added(bf.o.leaseHeld(inside, &h))
}

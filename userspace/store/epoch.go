package store

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"net/netip"
	"time"

	"github.com/cockroachdb/pebble/v2"
)

// Epoch is one mapping configuration and the time it took effect (RFC 7422 §3).
type Epoch struct {
	ID                        uint32
	Start                     time.Time // took effect
	Recorded                  time.Time // when this copy was written; epochs are re-written daily
	Prefixes                  []netip.Prefix
	Pool                      []netip.Addr
	PortLo, PortHi, BlockSize uint16
	Ratio                     uint32
	Hash                      [32]byte
	// Clock is the clock's state as the agent read it when it wrote this
	// copy, so that an answer resting on the epoch can say how far the
	// router's clock could be trusted then; nil in copies written before
	// epochs carried it.
	Clock *EpochClock
	// Router is the router whose epoch it is, in a fleet's answer; a
	// router's own store leaves it empty.
	Router string
}

// EpochClock is the kernel's clock-synchronisation state (adjtimex) as the
// agent read it.
type EpochClock struct {
	// Unreadable is true when adjtimex failed; the other fields but ReadAt
	// are then zero.
	Unreadable   bool
	Synchronised bool
	// EstimatedError and MaxError are kept to the microsecond, the
	// kernel's own unit.
	EstimatedError, MaxError time.Duration
	ReadAt                   time.Time
}

// The trailing clock field of an epoch value. Values written before it
// end after the pool; a reader meets a version it does not know as no
// clock, so a later field can follow without making this version's stores
// unreadable to it.
const (
	epochClockVersion      = 1
	epochClockSynchronised = 1 << 0
	epochClockUnreadable   = 1 << 1
)

// PutEpoch writes an epoch and syncs. Writing the same ID and Start again
// replaces the copy, which is how the daily re-write refreshes Recorded. A
// zero Recorded is set to the store's clock.
func (s *Store) PutEpoch(e Epoch) error {
	done, err := s.startWrite("put epoch %d", e.ID)
	if err != nil {
		return err
	}
	defer done()
	now := s.now()
	if e.Recorded.IsZero() {
		e.Recorded = now
	}
	key, val, err := encodeEpoch(&e, now)
	if err != nil {
		return fmt.Errorf("put epoch %d: %w", e.ID, err)
	}
	if !s.outbox && !s.outboxForget {
		if err := s.db.Set(key, val, pebble.Sync); err != nil {
			return fmt.Errorf("put epoch %d: %w", e.ID, err)
		}
		return nil
	}
	b := s.db.NewBatch()
	defer b.Close()
	out, err := s.outboxFor(b, now)
	if err == nil {
		err = b.Set(key, val, nil)
	}
	if err == nil && out != nil {
		err = errors.Join(out.epoch(key, val), out.finish())
	}
	if err == nil {
		err = b.Commit(pebble.Sync)
	}
	if err != nil {
		return fmt.Errorf("put epoch %d: %w", e.ID, err)
	}
	s.committed(out)
	return nil
}

// EpochAt returns the epoch in force at t: the one with the latest Start not
// after t (the highest ID if several share that Start).
func (s *Store) EpochAt(t time.Time) (Epoch, error) {
	var e Epoch
	found := false
	ns := ClampNS(t)
	if ns < 0 {
		return e, fmt.Errorf("epoch at %s: %w", t, ErrNotFound)
	}
	err := s.read("epoch at", func(v *view) error {
		upper := []byte{prefixEpoch}
		if ns == int64(^uint64(0)>>1) {
			upper = []byte{prefixEpoch + 1}
		} else {
			upper = binary.BigEndian.AppendUint64(upper, uint64(ns+1))
		}
		v.it.SetBounds([]byte{prefixEpoch}, upper)
		if !v.it.Last() {
			return v.it.Error()
		}
		val, err := v.it.ValueAndErr()
		if err != nil {
			return err
		}
		e, err = decodeEpoch(v.it.Key(), val)
		found = err == nil
		return err
	})
	if err != nil {
		return Epoch{}, fmt.Errorf("epoch at %s: %w", t, err)
	}
	if !found {
		return Epoch{}, fmt.Errorf("epoch at %s: %w", t.UTC().Format(time.RFC3339Nano), ErrNotFound)
	}
	return e, nil
}

// Epochs returns every stored epoch, ordered by Start then ID.
func (s *Store) Epochs() ([]Epoch, error) {
	var out []Epoch
	err := s.read("epochs", func(v *view) error {
		var err error
		out, err = v.epochs()
		return err
	})
	return out, err
}

func (v *view) epochs() ([]Epoch, error) {
	var out []Epoch
	err := v.scan([]byte{prefixEpoch}, []byte{prefixEpoch + 1}, func(k, val []byte) error {
		e, err := decodeEpoch(k, val)
		if err == nil {
			out = append(out, e)
		}
		return err
	})
	return out, err
}

// encodeEpoch returns the key and value of an epoch:
//
//	version, recorded u64, port_lo u16, port_hi u16, block_size u16,
//	ratio u32, hash [32], uvarint n, n × (addr 4B, bits 1B), uvarint m, m × addr 4B,
//	and, optionally, the clock: clock_version 1B (1), flags 1B
//	(synchronised, unreadable), uvarint esterror µs, uvarint maxerror µs,
//	read_at u64 (unix ns)
func encodeEpoch(e *Epoch, now time.Time) (key, val []byte, err error) {
	startNS, err := checkTime(e.Start, "start", now)
	if err != nil {
		return nil, nil, err
	}
	recordedNS, err := checkTime(e.Recorded, "recorded", now)
	if err != nil {
		return nil, nil, err
	}
	if e.PortLo > e.PortHi {
		return nil, nil, fmt.Errorf("port_lo %d above port_hi %d: %w", e.PortLo, e.PortHi, ErrInvalid)
	}
	val = append(val, valueVersionEpoch)
	val = binary.BigEndian.AppendUint64(val, uint64(recordedNS))
	val = binary.BigEndian.AppendUint16(val, e.PortLo)
	val = binary.BigEndian.AppendUint16(val, e.PortHi)
	val = binary.BigEndian.AppendUint16(val, e.BlockSize)
	val = binary.BigEndian.AppendUint32(val, e.Ratio)
	val = append(val, e.Hash[:]...)
	val = binary.AppendUvarint(val, uint64(len(e.Prefixes)))
	for i, p := range e.Prefixes {
		a, err := addr4(p.Addr(), fmt.Sprintf("prefixes[%d]", i))
		if err != nil {
			return nil, nil, err
		}
		if !p.IsValid() || p.Bits() > 32 {
			return nil, nil, fmt.Errorf("prefixes[%d]: %v is not a valid IPv4 prefix: %w", i, p, ErrInvalid)
		}
		val = append(val, a[:]...)
		val = append(val, byte(p.Bits()))
	}
	val = binary.AppendUvarint(val, uint64(len(e.Pool)))
	for i, p := range e.Pool {
		a, err := addr4(p, fmt.Sprintf("pool[%d]", i))
		if err != nil {
			return nil, nil, err
		}
		val = append(val, a[:]...)
	}
	if c := e.Clock; c != nil {
		readNS, err := checkTime(c.ReadAt, "clock read_at", now)
		if err != nil {
			return nil, nil, err
		}
		if c.EstimatedError < 0 || c.MaxError < 0 {
			return nil, nil, fmt.Errorf("clock error %s/%s is negative: %w", c.EstimatedError, c.MaxError, ErrInvalid)
		}
		var flags byte
		if c.Synchronised {
			flags |= epochClockSynchronised
		}
		if c.Unreadable {
			flags |= epochClockUnreadable
		}
		val = append(val, epochClockVersion, flags)
		val = binary.AppendUvarint(val, uint64(c.EstimatedError.Microseconds()))
		val = binary.AppendUvarint(val, uint64(c.MaxError.Microseconds()))
		val = binary.BigEndian.AppendUint64(val, uint64(readNS))
	}
	return epochKey(startNS, e.ID), val, nil
}

func decodeEpoch(k, v []byte) (Epoch, error) {
	var e Epoch
	if len(k) != epochKeyLen || k[0] != prefixEpoch {
		return e, fmt.Errorf("epoch key %x: bad length or prefix: %w", k, ErrCorrupt)
	}
	e.Start = time.Unix(0, int64(binary.BigEndian.Uint64(k[1:]))).UTC()
	e.ID = binary.BigEndian.Uint32(k[9:])
	bad := func(what string) (Epoch, error) {
		return Epoch{}, fmt.Errorf("epoch %d value: %s: %w", e.ID, what, ErrCorrupt)
	}
	const fixed = 1 + 8 + 2 + 2 + 2 + 4 + 32
	if len(v) < fixed {
		return bad("short")
	}
	if v[0] != valueVersionEpoch {
		return bad("unknown version")
	}
	e.Recorded = time.Unix(0, int64(binary.BigEndian.Uint64(v[1:]))).UTC()
	e.PortLo = binary.BigEndian.Uint16(v[9:])
	e.PortHi = binary.BigEndian.Uint16(v[11:])
	e.BlockSize = binary.BigEndian.Uint16(v[13:])
	e.Ratio = binary.BigEndian.Uint32(v[15:])
	copy(e.Hash[:], v[19:51])
	rest := v[fixed:]
	n, w := binary.Uvarint(rest)
	if w <= 0 || n > uint64(len(rest))/5 {
		return bad("prefix count")
	}
	rest = rest[w:]
	for range n {
		if len(rest) < 5 || rest[4] > 32 {
			return bad("prefix")
		}
		e.Prefixes = append(e.Prefixes, netip.PrefixFrom(addrFrom4([4]byte(rest[:4])), int(rest[4])))
		rest = rest[5:]
	}
	m, w := binary.Uvarint(rest)
	if w <= 0 || m > uint64(len(rest)-w)/4 {
		return bad("pool")
	}
	rest = rest[w:]
	for range m {
		e.Pool = append(e.Pool, addrFrom4([4]byte(rest[:4])))
		rest = rest[4:]
	}
	if len(rest) == 0 || rest[0] != epochClockVersion {
		// Written before epochs carried the clock, or by a later
		// version with a field this one does not know.
		return e, nil
	}
	c, ok := decodeEpochClock(rest[1:])
	if !ok {
		return bad("clock")
	}
	e.Clock = &c
	return e, nil
}

func decodeEpochClock(b []byte) (EpochClock, bool) {
	var c EpochClock
	if len(b) < 1 {
		return c, false
	}
	flags := b[0]
	b = b[1:]
	est, w := binary.Uvarint(b)
	if w <= 0 || est > uint64(math.MaxInt64/int64(time.Microsecond)) {
		return c, false
	}
	b = b[w:]
	maxe, w := binary.Uvarint(b)
	if w <= 0 || maxe > uint64(math.MaxInt64/int64(time.Microsecond)) {
		return c, false
	}
	b = b[w:]
	if len(b) < 8 {
		return c, false
	}
	c.Synchronised = flags&epochClockSynchronised != 0
	c.Unreadable = flags&epochClockUnreadable != 0
	c.EstimatedError = time.Duration(est) * time.Microsecond
	c.MaxError = time.Duration(maxe) * time.Microsecond
	c.ReadAt = time.Unix(0, int64(binary.BigEndian.Uint64(b))).UTC()
	return c, true
}

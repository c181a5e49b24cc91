package store

import (
	"cmp"
	"encoding/binary"
	"fmt"
	"math"
	"net/netip"
	"slices"
	"time"

	"github.com/cockroachdb/pebble/v2"
)

// Stats summarise the store for status and metrics. They cost a few seeks,
// never a scan of the records.
type Stats struct {
	OpenRecords       int
	Epochs            int
	Partitions        int       // day partitions holding records
	OldestPartition   time.Time // start of the oldest day partition holding records; zero if none
	OldestRetained    time.Time // start of the oldest day answered in full since the last Sweep; zero before the first
	UnmatchedReleases uint64    // releases that found no open record, since Open
	DiskBytes         uint64    // every file of the store, including WAL and not yet deleted files
	RecordBytes       uint64    // estimated bytes of the r keyspace
	IndexBytes        uint64    // estimated bytes of the s keyspace
	OpenBytes         uint64    // estimated bytes of the o and p keyspaces
	// LeaseOpen counts the current leases (one per address), including
	// those whose expiry has passed since the last Sweep: reads answer
	// those as ended, and Sweep moves them to the day partitions.
	LeaseOpen              int
	LeaseBytes             uint64 // estimated bytes of the L, M, N and O keyspaces
	UnmatchedLeaseReleases uint64 // lease releases skipped since Open: no current lease of that device, or late
}

// view is one consistent read of the store: a single Pebble iterator, which
// reads at the sequence number it was created with, moved between ranges by
// SetBounds.
type view struct {
	db    *pebble.DB
	it    *pebble.Iterator
	swept uint32
	width uint32
	now   int64
}

// read runs fn on a fresh view. swept and width are loaded after the
// iterator exists, so they are at least as new as the data it sees.
func (s *Store) read(what string, fn func(v *view) error) error {
	s.dbMu.RLock()
	defer s.dbMu.RUnlock()
	if s.db == nil {
		return ErrClosed
	}
	it, err := s.db.NewIter(nil)
	if err != nil {
		return fmt.Errorf("%s: new iterator: %w", what, err)
	}
	v := &view{db: s.db, it: it, swept: s.swept.Load(), width: s.maxWidth.Load(), now: ClampNS(s.now())}
	err = fn(v)
	if cerr := it.Close(); cerr != nil && err == nil {
		err = fmt.Errorf("%s: close iterator: %w", what, cerr)
	}
	return err
}

// scan calls fn for every key in [lower, upper). The key and value are only
// valid during the call.
func (v *view) scan(lower, upper []byte, fn func(k, val []byte) error) error {
	v.it.SetBounds(lower, upper)
	for ok := v.it.First(); ok; ok = v.it.Next() {
		val, err := v.it.ValueAndErr()
		if err != nil {
			return err
		}
		if err := fn(v.it.Key(), val); err != nil {
			return err
		}
	}
	return v.it.Error()
}

// get returns key's value, valid until the view moves.
func (v *view) get(key []byte) ([]byte, bool, error) {
	v.it.SetBounds(key, append(key[:len(key):len(key)], 0))
	if !v.it.First() {
		return nil, false, v.it.Error()
	}
	val, err := v.it.ValueAndErr()
	return val, err == nil, err
}

// forEachDay calls fn for each day partition of keyspace p in [from, to] that
// holds at least one key, skipping absent days with one seek.
func (v *view) forEachDay(p byte, from, to uint32, fn func(day uint32) error) error {
	to = min(to, maxDay)
	if from == to {
		return fn(from)
	}
	for day := from; day <= to; {
		v.it.SetBounds(dayPrefix(p, day), dayPrefix(p, to+1))
		if !v.it.First() {
			return v.it.Error()
		}
		found := binary.BigEndian.Uint32(v.it.Key()[1:5])
		if err := fn(found); err != nil {
			return err
		}
		day = found + 1
	}
	return nil
}

// days returns the day partitions that hold every record meeting [lo, hi]:
// days older than the oldest retained one are answered by it, because a
// record that outlived the cutoff has a copy there.
func (v *view) days(lo, hi int64) (from, to uint32, ok bool) {
	if hi < 0 {
		return 0, 0, false
	}
	from, to = dayOf(max(lo, 0)), dayOf(hi)
	return max(from, v.swept), max(to, v.swept), true
}

// overlaps reports whether r's interval meets [lo, hi]; an open record ends now.
func overlaps(r *Record, lo, hi, now int64) bool {
	end := now
	if !r.End.IsZero() {
		end = r.End.UnixNano()
	}
	return r.Start.UnixNano() <= hi && end >= lo
}

func compareRecords(a, b Record) int {
	return cmp.Or(
		a.Start.Compare(b.Start),
		a.Public.Compare(b.Public),
		cmp.Compare(a.PortLo, b.PortLo),
		cmp.Compare(a.Subscriber, b.Subscriber),
	)
}

// Lookup returns the records of the block holding ip:port whose interval
// meets [t-tolerance, t+tolerance], ordered by start. Each day partition the
// window touches costs one bounded seek, plus one in the open records.
func (s *Store) Lookup(ip netip.Addr, port uint16, t time.Time, tolerance time.Duration) ([]Record, error) {
	public, err := addr4(ip, "lookup ip")
	if err != nil {
		return nil, err
	}
	if t.IsZero() {
		return nil, fmt.Errorf("lookup time: missing: %w", ErrInvalid)
	}
	if tolerance < 0 {
		return nil, fmt.Errorf("lookup tolerance: %s is negative: %w", tolerance, ErrInvalid)
	}
	out, err := s.lookup(public, port, ClampNS(t.Add(-tolerance)), ClampNS(t.Add(tolerance)))
	if err != nil {
		return nil, fmt.Errorf("lookup %s:%d: %w", ip, port, err)
	}
	return out, nil
}

// LookupInterval returns the records of the block holding ip:port whose
// interval meets [from, to] (both inclusive), ordered by start. It costs
// what Lookup costs for the same window.
func (s *Store) LookupInterval(ip netip.Addr, port uint16, from, to time.Time) ([]Record, error) {
	public, err := addr4(ip, "lookup ip")
	if err != nil {
		return nil, err
	}
	lo, hi, err := CheckRange("lookup", from, to)
	if err != nil {
		return nil, err
	}
	out, err := s.lookup(public, port, lo, hi)
	if err != nil {
		return nil, fmt.Errorf("lookup %s:%d: %w", ip, port, err)
	}
	return out, nil
}

// lookup is Lookup and LookupInterval over [lo, hi] in Unix nanoseconds.
func (s *Store) lookup(public [4]byte, port uint16, lo, hi int64) ([]Record, error) {
	var out []Record
	err := s.read("lookup", func(v *view) error {
		if v.width == 0 {
			return nil // nothing was ever activated
		}
		floor := uint16(max(int(port)-int(v.width)+1, 0))
		seen := make(map[recordID]struct{})
		keep := func(val []byte, id recordID, closed bool) error {
			if _, dup := seen[id]; dup {
				return nil
			}
			rec, err := decodeValue(val, id, closed)
			if err != nil {
				return err
			}
			if rec.PortHi < port || !overlaps(&rec, lo, hi, v.now) {
				return nil
			}
			seen[id] = struct{}{}
			out = append(out, rec)
			return nil
		}
		if from, to, ok := v.days(lo, hi); ok {
			err := v.forEachDay(prefixRecord, from, to, func(day uint32) error {
				return v.scan(blockPrefix(day, public, floor), keyAfter(blockPrefix(day, public, port)), func(k, val []byte) error {
					_, id, err := parseRecordKey(k)
					if err != nil {
						return err
					}
					return keep(val, id, true)
				})
			})
			if err != nil {
				return err
			}
		}
		return v.scan(openBlockPrefix(public, floor), keyAfter(openBlockPrefix(public, port)), func(k, val []byte) error {
			id, err := parseOpenKey(k)
			if err != nil {
				return err
			}
			return keep(val, id, false)
		})
	})
	if err != nil {
		return nil, err
	}
	slices.SortFunc(out, compareRecords)
	return out, nil
}

// History returns the records of the subscriber with the inside address
// whose interval meets [from, to], ordered by start.
func (s *Store) History(inside netip.Addr, from, to time.Time) ([]Record, error) {
	in, err := addr4(inside, "history inside")
	if err != nil {
		return nil, err
	}
	if from.IsZero() || to.IsZero() || to.Before(from) {
		return nil, fmt.Errorf("history range: [%s, %s]: %w", from, to, ErrInvalid)
	}
	lo, hi := ClampNS(from), ClampNS(to)
	var out []Record
	err = s.read("history", func(v *view) error {
		type hit struct {
			day   uint32
			entry insideEntry
		}
		var hits []hit
		if dFrom, dTo, ok := v.days(lo, hi); ok {
			err := v.forEachDay(prefixInside, dFrom, dTo, func(day uint32) error {
				p := insidePrefix(day, in)
				return v.scan(p, keyAfter(p), func(k, _ []byte) error {
					_, e, err := parseInsideKey(k)
					if err == nil {
						hits = append(hits, hit{day, e})
					}
					return err
				})
			})
			if err != nil {
				return err
			}
		}
		var open []recordID
		p := append([]byte{prefixOpenInside}, in[:]...)
		err := v.scan(p, keyAfter(p), func(k, _ []byte) error {
			id, err := parseOpenInsideKey(k)
			if err == nil && id.start <= hi {
				open = append(open, id)
			}
			return err
		})
		if err != nil {
			return err
		}
		// An index entry names a subscriber's block of one day; its
		// records are in r, read through the same view so both sides
		// agree. A record copied into several days is taken once.
		seen := make(map[recordID]struct{})
		for _, h := range hits {
			p := subscriberBlockPrefix(h.day, h.entry.public, h.entry.portLo, h.entry.sub)
			found := false
			err := v.scan(p, keyAfter(p), func(k, val []byte) error {
				_, id, err := parseRecordKey(k)
				if err != nil {
					return err
				}
				rec, err := decodeValue(val, id, true)
				if err != nil || rec.Inside.As4() != in {
					return err
				}
				found = true
				if _, dup := seen[id]; dup || !overlaps(&rec, lo, hi, v.now) {
					return nil
				}
				seen[id] = struct{}{}
				out = append(out, rec)
				return nil
			})
			if err == nil && !found {
				err = fmt.Errorf("index entry without record %x: %w", insideKey(h.day, in, h.entry), ErrCorrupt)
			}
			if err != nil {
				return err
			}
		}
		for _, id := range open {
			key := openKey(id)
			val, ok, err := v.get(key)
			if err != nil || !ok {
				if err == nil {
					err = fmt.Errorf("index entry without record %x: %w", key, ErrCorrupt)
				}
				return err
			}
			rec, err := decodeValue(val, id, false)
			if err != nil {
				return err
			}
			if overlaps(&rec, lo, hi, v.now) {
				out = append(out, rec)
			}
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("history %s: %w", inside, err)
	}
	slices.SortFunc(out, compareRecords)
	return out, nil
}

// Export calls fn for every record whose interval meets [from, to], in order
// of start, reading one consistent view. fn must not call the Store. An error
// from fn stops the export and is returned.
func (s *Store) Export(from, to time.Time, fn func(Record) error) error {
	if from.IsZero() || to.IsZero() || to.Before(from) {
		return fmt.Errorf("export range: [%s, %s]: %w", from, to, ErrInvalid)
	}
	lo, hi := ClampNS(from), ClampNS(to)
	err := s.read("export", func(v *view) error { return v.export(lo, hi, fn) })
	if err != nil {
		return fmt.Errorf("export: %w", err)
	}
	return nil
}

// export is Export on a view: every record meeting [lo, hi] in order of
// start.
func (v *view) export(lo, hi int64, fn func(Record) error) error {
	var open []Record
	err := v.scan([]byte{prefixOpen}, []byte{prefixOpen + 1}, func(k, val []byte) error {
		id, err := parseOpenKey(k)
		if err != nil {
			return err
		}
		rec, err := decodeValue(val, id, false)
		if err == nil && overlaps(&rec, lo, hi, v.now) {
			open = append(open, rec)
		}
		return err
	})
	if err != nil {
		return err
	}
	dFrom, dTo, ok := v.days(lo, hi)
	m := newDayMerge(open, dFrom, func(r *Record) time.Time { return r.Start }, compareRecords, fn)
	if ok {
		err := v.scan(dayPrefix(prefixRecord, dFrom), dayPrefix(prefixRecord, min(dTo, maxDay)+1), func(k, val []byte) error {
			day, id, err := parseRecordKey(k)
			if err != nil {
				return err
			}
			if err := m.enter(day); err != nil {
				return err
			}
			rec, err := decodeValue(val, id, true)
			if err != nil {
				return err
			}
			if overlaps(&rec, lo, hi, v.now) {
				m.keep(day, rec)
			}
			return nil
		})
		if err != nil {
			return err
		}
	}
	return m.end()
}

// dayMerge hands an export's items to fn in order of start: the current
// ones (open records, held leases), which sit in no day partition, merged
// with those a scan of the day partitions finds, where an item has a copy
// in every day it touched. An item is emitted from the first scanned
// partition it is in: its start day, or the first day of the scan if it
// began earlier. All items emitted from one day start before any emitted
// from a later day, so sorting each day's group keeps global start order.
type dayMerge[T any] struct {
	current []T // not yet emitted, sorted
	from    uint32
	start   func(*T) time.Time
	compare func(a, b T) int
	fn      func(T) error
	group   []T
	day     uint32 // the partition being scanned, once have
	have    bool
}

func newDayMerge[T any](current []T, from uint32, start func(*T) time.Time, compare func(a, b T) int, fn func(T) error) *dayMerge[T] {
	slices.SortFunc(current, compare)
	return &dayMerge[T]{current: current, from: from, start: start, compare: compare, fn: fn}
}

func (m *dayMerge[T]) emitDay(x *T) uint32 { return max(dayOf(m.start(x).UnixNano()), m.from) }

// enter is called for each key of the scan, before its value is read: a
// new day emits the previous day's group.
func (m *dayMerge[T]) enter(day uint32) error {
	if m.have && day != m.day {
		if err := m.flush(m.day); err != nil {
			return err
		}
	}
	m.day, m.have = day, true
	return nil
}

// keep takes x, found in day's partition and meeting the export's
// interval, unless it is emitted from an earlier day.
func (m *dayMerge[T]) keep(day uint32, x T) {
	if m.emitDay(&x) == day {
		m.group = append(m.group, x)
	}
}

// flush emits day's group with the current items that belong before it.
func (m *dayMerge[T]) flush(day uint32) error {
	for len(m.current) > 0 && m.emitDay(&m.current[0]) <= day {
		m.group = append(m.group, m.current[0])
		m.current = m.current[1:]
	}
	slices.SortFunc(m.group, m.compare)
	for _, x := range m.group {
		if err := m.fn(x); err != nil {
			return err
		}
	}
	m.group = m.group[:0]
	return nil
}

// end emits what is left once the scan is done.
func (m *dayMerge[T]) end() error { return m.flush(math.MaxUint32) }

// OpenRecords returns every open record, ordered by public address and port.
func (s *Store) OpenRecords() ([]Record, error) {
	var out []Record
	err := s.read("open records", func(v *view) error {
		return v.scan([]byte{prefixOpen}, []byte{prefixOpen + 1}, func(k, val []byte) error {
			id, err := parseOpenKey(k)
			if err != nil {
				return err
			}
			rec, err := decodeValue(val, id, false)
			if err == nil {
				out = append(out, rec)
			}
			return err
		})
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}

// Stats returns counts and sizes for status and metrics.
func (s *Store) Stats() (Stats, error) {
	st := Stats{
		OpenRecords: int(s.openCount.Load()), UnmatchedReleases: s.unmatched.Load(),
		LeaseOpen: int(s.leaseHeld.Load()), UnmatchedLeaseReleases: s.leaseUnmatched.Load(),
	}
	err := s.read("stats", func(v *view) error {
		if v.swept > 0 {
			st.OldestRetained = dayStart(v.swept)
		}
		err := v.forEachDay(prefixRecord, 0, maxDay, func(day uint32) error {
			if st.Partitions == 0 {
				st.OldestPartition = dayStart(day)
			}
			st.Partitions++
			return nil
		})
		if err != nil {
			return err
		}
		err = v.scan([]byte{prefixEpoch}, []byte{prefixEpoch + 1}, func(_, _ []byte) error {
			st.Epochs++
			return nil
		})
		if err != nil {
			return err
		}
		st.DiskBytes = v.db.Metrics().DiskSpaceUsage()
		for _, r := range []struct {
			lo, hi byte
			dst    *uint64
		}{
			{prefixRecord, prefixRecord + 1, &st.RecordBytes},
			{prefixInside, prefixInside + 1, &st.IndexBytes},
			{prefixOpen, prefixOpenInside + 1, &st.OpenBytes},
			{prefixLease, prefixLeaseHeldMAC + 1, &st.LeaseBytes},
		} {
			n, err := v.db.EstimateDiskUsage([]byte{r.lo}, []byte{r.hi})
			if err != nil {
				return fmt.Errorf("estimate disk usage of %q: %w", r.lo, err)
			}
			*r.dst = n
		}
		return nil
	})
	return st, err
}

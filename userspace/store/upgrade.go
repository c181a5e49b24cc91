package store

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"slices"
	"time"

	"github.com/cockroachdb/pebble/v2"
)

// The layout of the closed records, kept in meta "m layout" (u32).
//
// Layout 1 (no meta key) stored each closed record twice in a day
// partition: by block in r (r <day> <public> <port_lo> <start> <subscriber>,
// value version 1) and by inside address in s (s <day> <inside> <start>
// <public> <port_lo> <subscriber>). Layout 2 stored it once, in r ordered
// by subscriber within a block (r <day> <public> <port_lo> <subscriber>
// <start>, value version 2), and s names only the subscriber's block.
// Times were Unix nanoseconds in both. Layout 3 is layout 2 with the times
// of r in timeSteps, rounded outward: the start a 48-bit count in the key,
// End-Start a count in the value (version 3). The s keys are those of
// layout 2; the o and p keys keep nanoseconds, rounded down in layout 3.
// Every other keyspace is the same in all three.
//
// Open upgrades a layout 1 or 2 store in place, one day partition per Sync
// batch: the batch range-deletes the day's r and s keys and writes them
// again in layout 3, so a crash leaves every day whole in one layout or
// the other. A day whose first value is already version 3 was upgraded
// before the crash and is skipped. The open records' starts are then
// rounded down in one batch (again harmless if a crash repeats it), and
// "m layout" is written once everything is done.
const layoutCurrent = 3

var metaLayout = []byte("m layout")

const (
	recordKeyLenV1  = 1 + 4 + 4 + 2 + 8 + 4
	recordKeyLenV2  = 1 + 4 + 4 + 2 + 4 + 8
	upgradeLogEvery = 5 * time.Second
)

// upgrade brings the store to layoutCurrent; see above. It runs in Open,
// before anything reads the records.
func (s *Store) upgrade() error {
	v, closer, err := s.db.Get(metaLayout)
	from := uint32(1) // no meta key
	switch {
	case err == nil:
		from = 0
		if len(v) == 4 {
			from = binary.BigEndian.Uint32(v)
		}
		closer.Close()
		if from == layoutCurrent {
			return nil
		}
		if from != 2 {
			return fmt.Errorf("open store: layout %x: this version reads layouts 1 to %d: %w", v, layoutCurrent, ErrCorrupt)
		}
	case !errors.Is(err, pebble.ErrNotFound):
		return fmt.Errorf("open store: read meta %q: %w", metaLayout, err)
	}
	days, err := s.upgradeDays()
	if err != nil {
		return err
	}
	if err := s.mayWrite(); err != nil {
		if len(days) == 0 {
			// Nothing to rewrite but the open records, which read
			// the same unrounded; the layout is written at a later
			// Open.
			return nil
		}
		return fmt.Errorf("open store: upgrade to layout %d: %w", layoutCurrent, err)
	}
	began, logged, records := time.Now(), time.Now(), 0
	if len(days) > 0 {
		s.log.Info("store layout upgrade", logKeyLayout, layoutCurrent, logKeyFromLayout, from, logKeyPartitions, len(days))
	}
	for i, day := range days {
		n, err := s.upgradeDay(day)
		if err != nil {
			return fmt.Errorf("open store: upgrade day %s to layout %d: %w", dayStart(day).Format(time.DateOnly), layoutCurrent, err)
		}
		records += n
		if time.Since(logged) >= upgradeLogEvery {
			logged = time.Now()
			s.log.Info("store layout upgrade progress", logKeyDone, i+1, logKeyPartitions, len(days), logKeyRecords, records)
		}
	}
	if err := s.upgradeOpen(); err != nil {
		return fmt.Errorf("open store: upgrade open records to layout %d: %w", layoutCurrent, err)
	}
	if err := s.db.Set(metaLayout, binary.BigEndian.AppendUint32(nil, layoutCurrent), pebble.Sync); err != nil {
		return fmt.Errorf("open store: write layout: %w", err)
	}
	if len(days) > 0 {
		s.log.Info("store layout upgraded", logKeyLayout, layoutCurrent, logKeyFromLayout, from, logKeyPartitions, len(days),
			logKeyRecords, records, logKeyDuration, time.Since(began))
	}
	return nil
}

// upgradeDays returns the day partitions of r not yet in layout 3: those
// whose first value is not version 3.
func (s *Store) upgradeDays() ([]uint32, error) {
	it, err := s.db.NewIter(nil)
	if err != nil {
		return nil, fmt.Errorf("open store: new iterator: %w", err)
	}
	v := &view{db: s.db, it: it}
	var days []uint32
	err = v.forEachDay(prefixRecord, 0, maxDay, func(day uint32) error {
		val, err := v.it.ValueAndErr()
		if err != nil {
			return err
		}
		if len(val) == 0 || val[0] != valueVersionClosed {
			days = append(days, day)
		}
		return nil
	})
	if err = errors.Join(err, it.Close()); err != nil {
		return nil, fmt.Errorf("open store: find partitions to upgrade: %w", err)
	}
	return days, nil
}

// upgradeDay rewrites one layout 1 or 2 day partition in layout 3, in one
// Sync batch, and returns how many records it held.
//
// Rounding can give two records of one subscriber and block that began
// within one timeStep the same key. They are merged into one record from
// the rounded start to the later end with both records' flags: it holds
// both intervals, as Apply's later release of such a pair does. Such
// records are next to each other in either older order (by subscriber,
// then start, in layout 2; by start in layout 1), so only the records of
// one block and rounded start are held at a time.
func (s *Store) upgradeDay(day uint32) (int, error) {
	it, err := s.db.NewIter(&pebble.IterOptions{LowerBound: dayPrefix(prefixRecord, day), UpperBound: dayPrefix(prefixRecord, day+1)})
	if err != nil {
		return 0, err
	}
	b := s.db.NewBatch()
	defer b.Close()
	if err := errors.Join(
		b.DeleteRange(dayPrefix(prefixRecord, day), dayPrefix(prefixRecord, day+1), nil),
		b.DeleteRange(dayPrefix(prefixInside, day), dayPrefix(prefixInside, day+1), nil),
	); err != nil {
		return 0, errors.Join(err, it.Close())
	}
	var group []Record // one block's records of one rounded start
	flush := func() error {
		for _, rec := range group {
			id, inside := idOf(&rec)
			if err := errors.Join(
				b.Set(recordKey(day, id), encodeClosedValue(nil, &rec, inside), nil),
				b.Set(insideKey(day, inside, id.insideEntry()), nil, nil),
			); err != nil {
				return err
			}
		}
		group = group[:0]
		return nil
	}
	n := 0
	for ok := it.First(); ok; ok = it.Next() {
		val, err := it.ValueAndErr()
		if err != nil {
			return 0, errors.Join(err, it.Close())
		}
		rec, err := decodeOlderClosed(it.Key(), val)
		if err != nil {
			return 0, errors.Join(err, it.Close())
		}
		rec.Start = time.Unix(0, floorStep(rec.Start.UnixNano())).UTC()
		rec.End = time.Unix(0, ceilStep(rec.End.UnixNano())).UTC()
		n++
		if len(group) > 0 && (group[0].Public != rec.Public || group[0].PortLo != rec.PortLo || !group[0].Start.Equal(rec.Start)) {
			if err := flush(); err != nil {
				return 0, errors.Join(err, it.Close())
			}
		}
		i := slices.IndexFunc(group, func(g Record) bool { return g.Subscriber == rec.Subscriber })
		if i < 0 {
			group = append(group, rec)
			continue
		}
		if rec.End.After(group[i].End) {
			rec.Flags |= group[i].Flags
			group[i] = rec
		} else {
			group[i].Flags |= rec.Flags
		}
	}
	if err := errors.Join(it.Error(), it.Close(), flush()); err != nil {
		return 0, err
	}
	return n, b.Commit(pebble.Sync)
}

// decodeOlderClosed reads a closed record of layout 1 or 2, told apart by
// the version of its value.
func decodeOlderClosed(k, val []byte) (Record, error) {
	if len(val) == 0 {
		return Record{}, fmt.Errorf("record %x: empty value: %w", k, ErrCorrupt)
	}
	switch val[0] {
	case valueVersionRecord:
		id, err := parseRecordKeyV1(k)
		if err != nil {
			return Record{}, err
		}
		return decodeClosedValueV1(val, id)
	case valueVersionClosedV2:
		id, err := parseRecordKeyV2(k)
		if err != nil {
			return Record{}, err
		}
		return decodeClosedValueV2(val, id)
	}
	return Record{}, fmt.Errorf("record %x: value version %d in a partition not in layout %d: %w", k, val[0], layoutCurrent, ErrCorrupt)
}

// upgradeOpen rounds the open records' starts down to timeSteps, in one
// Sync batch: layout 3 rounds them at activation.
func (s *Store) upgradeOpen() error {
	it, err := s.db.NewIter(&pebble.IterOptions{LowerBound: []byte{prefixOpen}, UpperBound: []byte{prefixOpen + 1}})
	if err != nil {
		return err
	}
	b := s.db.NewBatch()
	defer b.Close()
	for ok := it.First(); ok; ok = it.Next() {
		id, err := parseOpenKey(it.Key())
		if err != nil {
			return errors.Join(err, it.Close())
		}
		if floorStep(id.start) == id.start {
			continue
		}
		val, err := it.ValueAndErr()
		if err != nil {
			return errors.Join(err, it.Close())
		}
		rec, err := decodeValue(val, id, false)
		if err != nil {
			return errors.Join(err, it.Close())
		}
		inside := rec.Inside.As4()
		rounded := id
		rounded.start = floorStep(id.start)
		if err := errors.Join(
			b.Delete(openKey(id), nil),
			b.Delete(openInsideKey(inside, id), nil),
			b.Set(openKey(rounded), val, nil),
			b.Set(openInsideKey(inside, rounded), nil, nil),
		); err != nil {
			return errors.Join(err, it.Close())
		}
	}
	if err := errors.Join(it.Error(), it.Close()); err != nil {
		return err
	}
	if b.Empty() {
		return nil
	}
	return b.Commit(pebble.Sync)
}

// parseRecordKeyV2 reads a layout 2 r key: r <day> <public> <port_lo>
// <subscriber> <start ns>.
func parseRecordKeyV2(k []byte) (id recordID, err error) {
	if len(k) != recordKeyLenV2 || k[0] != prefixRecord {
		return id, fmt.Errorf("layout 2 record key %x: bad length or prefix: %w", k, ErrCorrupt)
	}
	copy(id.public[:], k[5:9])
	id.portLo = binary.BigEndian.Uint16(k[9:])
	id.sub = binary.BigEndian.Uint32(k[11:])
	id.start = int64(binary.BigEndian.Uint64(k[15:]))
	return id, nil
}

// decodeClosedValueV2 reads a layout 2 r value: version 2, the inside
// address, port_hi, then uvarints for the epoch, the flags and End-Start
// in nanoseconds. It is the open record's value with End-Start appended.
func decodeClosedValueV2(v []byte, id recordID) (Record, error) {
	if len(v) < 7 || v[0] != valueVersionClosedV2 {
		return Record{}, fmt.Errorf("layout 2 record value %x: short or unknown version: %w", v, ErrCorrupt)
	}
	rest := v[7:]
	for range 2 { // epoch, flags
		_, m := binary.Uvarint(rest)
		if m <= 0 {
			return Record{}, fmt.Errorf("layout 2 record value %x: %w", v, ErrCorrupt)
		}
		rest = rest[m:]
	}
	d, m := binary.Uvarint(rest)
	if m <= 0 || m != len(rest) || d > uint64(math.MaxInt64-id.start) {
		return Record{}, fmt.Errorf("layout 2 record value %x: end: %w", v, ErrCorrupt)
	}
	open := append([]byte{valueVersionRecord}, v[1:len(v)-m]...)
	r, err := decodeValue(open, id, false)
	if err != nil {
		return Record{}, fmt.Errorf("layout 2 record: %w", err)
	}
	r.End = time.Unix(0, id.start+int64(d)).UTC()
	return r, nil
}

// parseRecordKeyV1 reads a layout 1 r key: r <day> <public> <port_lo>
// <start> <subscriber>.
func parseRecordKeyV1(k []byte) (id recordID, err error) {
	if len(k) != recordKeyLenV1 || k[0] != prefixRecord {
		return id, fmt.Errorf("layout 1 record key %x: bad length or prefix: %w", k, ErrCorrupt)
	}
	copy(id.public[:], k[5:9])
	id.portLo = binary.BigEndian.Uint16(k[9:])
	id.start = int64(binary.BigEndian.Uint64(k[11:]))
	id.sub = binary.BigEndian.Uint32(k[19:])
	return id, nil
}

// decodeClosedValueV1 reads a layout 1 r value: version 1, the inside
// address, port_hi, then uvarints for End-Start, the epoch and the flags.
// It is the open record's value with End-Start inserted, so it is read as
// one once that is taken out.
func decodeClosedValueV1(v []byte, id recordID) (Record, error) {
	if len(v) < 7 || v[0] != valueVersionRecord {
		return Record{}, fmt.Errorf("layout 1 record value %x: short or unknown version: %w", v, ErrCorrupt)
	}
	d, n := binary.Uvarint(v[7:])
	if n <= 0 {
		return Record{}, fmt.Errorf("layout 1 record value %x: end: %w", v, ErrCorrupt)
	}
	open := append(append([]byte(nil), v[:7]...), v[7+n:]...)
	r, err := decodeValue(open, id, false)
	if err != nil {
		return Record{}, fmt.Errorf("layout 1 record: %w", err)
	}
	r.End = time.Unix(0, id.start+int64(d)).UTC()
	return r, nil
}

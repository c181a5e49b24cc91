package store

import (
	"encoding/binary"
	"errors"
	"fmt"
	"time"

	"github.com/cockroachdb/pebble/v2"
)

// The layout of the closed records, kept in meta "m layout" (u32).
//
// Layout 1 (no meta key) stored each closed record twice in a day
// partition: by block in r (r <day> <public> <port_lo> <start> <subscriber>,
// value version 1) and by inside address in s (s <day> <inside> <start>
// <public> <port_lo> <subscriber>). Layout 2 stores it once, in r ordered by
// subscriber within a block, and s names only the subscriber's block (see
// the package documentation). The o, p and every other keyspace are the
// same in both.
//
// Open upgrades a layout 1 store in place, one day partition per Sync
// batch: the batch range-deletes the day's r and s keys and writes them
// again in layout 2, so a crash leaves every day whole in one layout or
// the other. A day whose first value is already version 2 was upgraded
// before the crash and is skipped. "m layout" is written once every day is
// done.
const layoutCurrent = 2

var metaLayout = []byte("m layout")

const (
	recordKeyLenV1  = 1 + 4 + 4 + 2 + 8 + 4
	upgradeLogEvery = 5 * time.Second
)

// upgrade brings the store to layoutCurrent; see above. It runs in Open,
// before anything reads the records.
func (s *Store) upgrade() error {
	v, closer, err := s.db.Get(metaLayout)
	switch {
	case err == nil:
		layout := uint32(0)
		if len(v) == 4 {
			layout = binary.BigEndian.Uint32(v)
		}
		closer.Close()
		if layout != layoutCurrent {
			return fmt.Errorf("open store: layout %x: this version reads layout %d: %w", v, layoutCurrent, ErrCorrupt)
		}
		return nil
	case !errors.Is(err, pebble.ErrNotFound):
		return fmt.Errorf("open store: read meta %q: %w", metaLayout, err)
	}
	days, err := s.upgradeDays()
	if err != nil {
		return err
	}
	if err := s.mayWrite(); err != nil {
		if len(days) == 0 {
			return nil // nothing to upgrade; the layout is written at a later Open
		}
		return fmt.Errorf("open store: upgrade to layout %d: %w", layoutCurrent, err)
	}
	began, logged, records := time.Now(), time.Now(), 0
	if len(days) > 0 {
		s.log.Info("store layout upgrade", logKeyLayout, layoutCurrent, logKeyPartitions, len(days))
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
	if err := s.db.Set(metaLayout, binary.BigEndian.AppendUint32(nil, layoutCurrent), pebble.Sync); err != nil {
		return fmt.Errorf("open store: write layout: %w", err)
	}
	if len(days) > 0 {
		s.log.Info("store layout upgraded", logKeyLayout, layoutCurrent, logKeyPartitions, len(days),
			logKeyRecords, records, logKeyDuration, time.Since(began))
	}
	return nil
}

// upgradeDays returns the day partitions of r still in layout 1: those
// whose first value is version 1.
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
		return nil, fmt.Errorf("open store: find layout 1 partitions: %w", err)
	}
	return days, nil
}

// upgradeDay rewrites one layout 1 day partition in layout 2, in one Sync
// batch, and returns how many records it held.
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
	n := 0
	for ok := it.First(); ok; ok = it.Next() {
		id, err := parseRecordKeyV1(it.Key())
		if err != nil {
			return 0, errors.Join(err, it.Close())
		}
		val, err := it.ValueAndErr()
		if err != nil {
			return 0, errors.Join(err, it.Close())
		}
		rec, err := decodeClosedValueV1(val, id)
		if err != nil {
			return 0, errors.Join(err, it.Close())
		}
		inside := rec.Inside.As4()
		if err := errors.Join(
			b.Set(recordKey(day, id), encodeClosedValue(nil, &rec, inside), nil),
			b.Set(insideKey(day, inside, id.insideEntry()), nil, nil),
		); err != nil {
			return 0, errors.Join(err, it.Close())
		}
		n++
	}
	if err := errors.Join(it.Error(), it.Close()); err != nil {
		return 0, err
	}
	return n, b.Commit(pebble.Sync)
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

package store

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"time"
)

// errStopDays ends a walk over day partitions early; it never leaves the
// package.
var errStopDays = errors.New("stop day walk")

// forEachDayBack is forEachDay from to down to from: each day partition of
// keyspace p that holds at least one key, newest first, skipping absent days
// with one seek. fn returns errStopDays to end the walk.
func (v *view) forEachDayBack(p byte, from, to uint32, fn func(day uint32) error) error {
	to = min(to, maxDay)
	for day := to; day >= from; {
		v.it.SetBounds(dayPrefix(p, from), dayPrefix(p, day+1))
		if !v.it.Last() {
			return v.it.Error()
		}
		found := binary.BigEndian.Uint32(v.it.Key()[1:5])
		if err := fn(found); err != nil {
			if errors.Is(err, errStopDays) {
				return nil
			}
			return err
		}
		if found == from {
			return nil
		}
		day = found - 1
	}
	return nil
}

// NearestRecords returns, for the block (public, portLo) held by subscriber
// sub, the latest record that ended before from and the earliest that
// started after to (nil when none within the retained data). Records meeting
// [from, to] are not considered.
//
// A record is in the partition of every day it touched, so the latest end
// before from is in the newest partition, at or before from's day, that
// holds any such record of the block: the walk goes back one bounded seek
// per day and stops there, or at the oldest retained day. Likewise the
// earliest start after to is in the first partition from to's day on that
// holds one, or among the open records.
func (s *Store) NearestRecords(sub uint32, public netip.Addr, portLo uint16, from, to time.Time) (before, after *Record, err error) {
	pub, err := addr4(public, "nearest records public")
	if err != nil {
		return nil, nil, err
	}
	lo, hi, err := CheckRange("nearest records", from, to)
	if err != nil {
		return nil, nil, err
	}
	err = s.read("nearest records", func(v *view) error {
		decode := func(k, val []byte) (Record, bool, error) {
			_, id, err := parseRecordKey(k)
			if err != nil || id.sub != sub {
				return Record{}, false, err
			}
			rec, err := decodeValue(val, id, true)
			return rec, err == nil, err
		}
		if lo > 0 && dayOf(lo) >= v.swept {
			err := v.forEachDayBack(prefixRecord, v.swept, dayOf(lo), func(day uint32) error {
				p := subscriberBlockPrefix(day, pub, portLo, sub)
				// Only starts before from can have ended before it.
				err := v.scan(p, recordStartBound(p, lo-1), func(k, val []byte) error {
					rec, ok, err := decode(k, val)
					if ok && rec.End.UnixNano() < lo && (before == nil || rec.End.After(before.End)) {
						before = &rec
					}
					return err
				})
				if err == nil && before != nil {
					err = errStopDays
				}
				return err
			})
			if err != nil {
				return err
			}
		}
		if hi == 1<<63-1 {
			return nil // nothing starts after the end of time
		}
		err := v.forEachDay(prefixRecord, max(dayOf(hi), v.swept), maxDay, func(day uint32) error {
			p := subscriberBlockPrefix(day, pub, portLo, sub)
			// A subscriber's keys are ordered by start, so the first
			// after to is the earliest in this partition.
			err := v.scan(recordStartBound(p, hi), keyAfter(p), func(k, val []byte) error {
				if after != nil {
					return nil
				}
				rec, ok, err := decode(k, val)
				if ok {
					after = &rec
				}
				return err
			})
			if err == nil && after != nil {
				err = errStopDays
			}
			return err
		})
		if err != nil && !errors.Is(err, errStopDays) {
			return err
		}
		p := openBlockPrefix(pub, portLo)
		return v.scan(startBound(p, hi), keyAfter(p), func(k, val []byte) error {
			id, err := parseOpenKey(k)
			if err != nil || id.sub != sub || (after != nil && id.start >= after.Start.UnixNano()) {
				return err
			}
			rec, err := decodeValue(val, id, false)
			if err == nil {
				after = &rec
			}
			return err
		})
	})
	if err != nil {
		return nil, nil, fmt.Errorf("nearest records of subscriber %d at %s:%d: %w", sub, public, portLo, err)
	}
	return before, after, nil
}

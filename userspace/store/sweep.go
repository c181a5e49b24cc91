package store

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"time"

	"github.com/cockroachdb/pebble/v2"
)

// SweepStats report what a Sweep removed.
type SweepStats struct {
	Cutoff          time.Time     // now - retention
	OldestRetained  time.Time     // start of the oldest day partition kept
	Partitions      int           // record day partitions deleted whole (the lease partitions of those days go too)
	ExpiredRecords  int           // records deleted (each counted once)
	ExpiredEpochs   int           // epochs deleted
	EndedLeases     int           // current leases ended at their expiry first (EndExpiredLeases)
	ExpiredLeases   int           // leases deleted (each counted once)
	DiskBytesBefore uint64        // every file of the store, before
	DiskBytesAfter  uint64        // and after
	Duration        time.Duration // wall time taken
}

// Sweep deletes every record that ended before now-retention and every epoch
// recorded before then that no retained record needs, then compacts and
// reopens the database so that the deleted bytes are in no file of the store
// directory when it returns (see the package documentation, Retention).
// Records still open, or that ended after the cutoff, are kept whatever their
// start, and keep answering for their whole interval. The epoch in force at
// the cutoff and every epoch named by a record that began before the cutoff
// and is kept are kept too. DHCP leases are treated as records: current
// leases whose expiry passed are ended first (EndExpiredLeases), then every
// lease that ended before the cutoff is deleted.
//
// Sweep blocks Apply and PutEpoch while it runs, and reads while it reopens.
func (s *Store) Sweep(retention time.Duration) (SweepStats, error) {
	if retention <= 0 {
		return SweepStats{}, fmt.Errorf("sweep: retention %s: must be positive: %w", retention, ErrInvalid)
	}
	began := time.Now()
	s.writeMu.Lock()
	defer s.writeMu.Unlock()
	cutoff := s.now().Add(-retention).UTC()
	st := SweepStats{Cutoff: cutoff}
	ended, err := s.endExpiredLeasesLocked()
	if err != nil {
		return st, fmt.Errorf("sweep: %w", err)
	}
	st.EndedLeases = ended
	cutoffNS := ClampNS(cutoff)
	if cutoffNS < 0 {
		return st, nil // the cutoff is before anything the store can hold
	}
	if err := s.sweepData(cutoffNS, &st); err != nil {
		return st, err
	}
	s.dbMu.Lock()
	err = s.rotateLocked()
	if err == nil {
		st.DiskBytesAfter = s.db.Metrics().DiskSpaceUsage()
	}
	s.dbMu.Unlock()
	if err != nil {
		return st, err
	}
	st.Duration = time.Since(began)
	s.log.Info("retention sweep", logKeyCutoff, st.Cutoff, logKeyOldestDay, st.OldestRetained,
		logKeyPartitions, st.Partitions, logKeyRecords, st.ExpiredRecords, logKeyEpochs, st.ExpiredEpochs,
		logKeyLeases, st.ExpiredLeases, logKeyDuration, st.Duration)
	return st, nil
}

// sweepData deletes, commits, flushes and compacts. The caller holds writeMu;
// reads go on meanwhile.
func (s *Store) sweepData(cutoffNS int64, st *SweepStats) error {
	s.dbMu.RLock()
	defer s.dbMu.RUnlock()
	db := s.db
	if db == nil {
		return ErrClosed
	}
	st.DiskBytesBefore = db.Metrics().DiskSpaceUsage()
	oldSwept := s.swept.Load()
	newSwept := max(oldSwept, dayOf(cutoffNS))
	st.OldestRetained = dayStart(newSwept)

	b := db.NewBatch()
	defer b.Close()
	referenced, err := sweepRecords(db, b, s.open, oldSwept, newSwept, cutoffNS, st)
	if err != nil {
		return err
	}
	if err := sweepLeases(db, b, oldSwept, newSwept, cutoffNS, st); err != nil {
		return err
	}
	if newSwept > 0 {
		if err := errors.Join(
			b.DeleteRange(dayPrefix(prefixRecord, 0), dayPrefix(prefixRecord, newSwept), nil),
			b.DeleteRange(dayPrefix(prefixInside, 0), dayPrefix(prefixInside, newSwept), nil),
			b.DeleteRange(dayPrefix(prefixLease, 0), dayPrefix(prefixLease, newSwept), nil),
			b.DeleteRange(dayPrefix(prefixLeaseMAC, 0), dayPrefix(prefixLeaseMAC, newSwept), nil),
		); err != nil {
			return fmt.Errorf("sweep: batch delete range: %w", err)
		}
	}

	if err := sweepEpochs(db, b, cutoffNS, referenced, st); err != nil {
		return err
	}

	if err := b.Set(metaSwept, binary.BigEndian.AppendUint32(nil, newSwept), nil); err != nil {
		return fmt.Errorf("sweep: batch set swept: %w", err)
	}
	s.swept.Store(newSwept)
	if err := b.Commit(pebble.Sync); err != nil {
		s.swept.Store(oldSwept)
		return fmt.Errorf("sweep: commit: %w", err)
	}

	return compactSwept(db, newSwept, s.outboxAcked.Load())
}

// sweepRecords walks the record partitions about to go and the one that
// stays, counts the expired records and point-deletes those of the staying
// day that ended before the cutoff. It returns the epochs that records kept
// past the cutoff name, open ones included.
func sweepRecords(db *pebble.DB, b *pebble.Batch, open map[openID]Record, oldSwept, newSwept uint32, cutoffNS int64, st *SweepStats) (map[uint32]bool, error) {
	referenced := make(map[uint32]bool)
	for _, r := range open {
		if r.Start.UnixNano() < cutoffNS {
			referenced[r.Epoch] = true
		}
	}
	// Walk the partitions about to go, and the one that stays but holds
	// records that ended before the cutoff.
	it, err := db.NewIter(&pebble.IterOptions{
		LowerBound: dayPrefix(prefixRecord, oldSwept),
		UpperBound: dayPrefix(prefixRecord, newSwept+1),
	})
	if err != nil {
		return nil, fmt.Errorf("sweep: iterate partitions: %w", err)
	}
	lastDay, haveDay := uint32(0), false
	// The staying day's index entries: true once a kept record needs one.
	// An entry goes only with the last record of its block it names.
	index := make(map[string]bool)
	for ok := it.First(); ok; ok = it.Next() {
		day, id, err := parseRecordKey(it.Key())
		if err != nil {
			return nil, errors.Join(fmt.Errorf("sweep: %w", err), it.Close())
		}
		if day < newSwept && (!haveDay || day != lastDay) {
			st.Partitions++
		}
		lastDay, haveDay = day, true
		val, err := it.ValueAndErr()
		if err != nil {
			return nil, errors.Join(fmt.Errorf("sweep: read %x: %w", it.Key(), err), it.Close())
		}
		rec, err := decodeValue(val, id, true)
		if err != nil {
			return nil, errors.Join(fmt.Errorf("sweep: %w", err), it.Close())
		}
		endNS := rec.End.UnixNano()
		switch {
		case endNS < cutoffNS:
			if dayOf(endNS) == day {
				st.ExpiredRecords++ // a record's last copy is in its end day
			}
			if day == newSwept {
				if err := b.Delete(recordKey(day, id), nil); err != nil {
					return nil, errors.Join(fmt.Errorf("sweep: batch delete: %w", err), it.Close())
				}
				k := string(insideKey(day, rec.Inside.As4(), id.insideEntry()))
				if _, ok := index[k]; !ok {
					index[k] = false
				}
			}
		case day == newSwept:
			index[string(insideKey(day, rec.Inside.As4(), id.insideEntry()))] = true
			if id.start < cutoffNS {
				referenced[rec.Epoch] = true
			}
		}
	}
	if err := errors.Join(it.Error(), it.Close()); err != nil {
		return nil, fmt.Errorf("sweep: iterate partitions: %w", err)
	}
	for k, kept := range index {
		if !kept {
			if err := b.Delete([]byte(k), nil); err != nil {
				return nil, fmt.Errorf("sweep: batch delete: %w", err)
			}
		}
	}
	return referenced, nil
}

// sweepEpochs deletes the epochs no kept record can name: it keeps the one
// in force at the cutoff (records after it may name it), every later one,
// and every one a kept record names.
func sweepEpochs(db *pebble.DB, b *pebble.Batch, cutoffNS int64, referenced map[uint32]bool, st *SweepStats) error {
	ev, err := db.NewIter(&pebble.IterOptions{LowerBound: []byte{prefixEpoch}, UpperBound: []byte{prefixEpoch + 1}})
	if err != nil {
		return fmt.Errorf("sweep: iterate epochs: %w", err)
	}
	v := &view{db: db, it: ev}
	epochs, err := v.epochs()
	if err = errors.Join(err, ev.Close()); err != nil {
		return fmt.Errorf("sweep: read epochs: %w", err)
	}
	inForce := -1
	for i := range epochs {
		if epochs[i].Start.UnixNano() <= cutoffNS {
			inForce = i
		}
	}
	for i := range epochs {
		e := &epochs[i]
		if i == inForce || e.Start.UnixNano() > cutoffNS || e.Recorded.UnixNano() >= cutoffNS || referenced[e.ID] {
			continue
		}
		if err := b.Delete(epochKey(e.Start.UnixNano(), e.ID), nil); err != nil {
			return fmt.Errorf("sweep: batch delete epoch %d: %w", e.ID, err)
		}
		st.ExpiredEpochs++
	}
	return nil
}

// compactSwept flushes and compacts the keyspaces a sweep deleted from,
// and the outbox events acknowledged up to acked (0: none).
func compactSwept(db *pebble.DB, newSwept uint32, acked uint64) error {
	// Flushing makes the WAL that held the deleted records obsolete; the
	// compactions rewrite every SSTable holding them (or the tombstones,
	// whose keys name inside addresses) down to the bottom level, where
	// Pebble drops both. The o, p and e keyspaces are small but hold the
	// release tombstones of records now expired, so they are compacted too;
	// so are N and O, which hold old versions of current leases (a renewal
	// rewrites N) and the tombstones of ended ones.
	if err := db.Flush(); err != nil {
		return fmt.Errorf("sweep: flush: %w", err)
	}
	spans := [][2][]byte{
		{dayPrefix(prefixRecord, 0), dayPrefix(prefixRecord, newSwept+1)},
		{dayPrefix(prefixInside, 0), dayPrefix(prefixInside, newSwept+1)},
		{[]byte{prefixEpoch}, []byte{prefixOpenInside + 1}}, // e, m, o, p
		{dayPrefix(prefixLease, 0), dayPrefix(prefixLease, newSwept+1)},
		{dayPrefix(prefixLeaseMAC, 0), dayPrefix(prefixLeaseMAC, newSwept+1)},
		{[]byte{prefixLeaseHeld}, []byte{prefixLeaseHeldMAC + 1}}, // N, O
	}
	if acked > 0 {
		// Sweep deletes no event, but the acknowledged ones, deleted by
		// AckOutbox, hold records and leases like the keyspaces above.
		spans = append(spans, [2][]byte{{prefixOutbox}, outboxKey(acked + 1)})
	}
	for _, sp := range spans {
		if err := db.Compact(context.Background(), sp[0], sp[1], true); err != nil {
			return fmt.Errorf("sweep: compact [%x, %x): %w", sp[0], sp[1], err)
		}
	}
	return nil
}

// sweepLeases walks the lease partitions about to go and the one that
// stays, counts the expired leases and point-deletes those of the staying
// day that ended before the cutoff, as sweepRecords does for records.
func sweepLeases(db *pebble.DB, b *pebble.Batch, oldSwept, newSwept uint32, cutoffNS int64, st *SweepStats) error {
	it, err := db.NewIter(&pebble.IterOptions{
		LowerBound: dayPrefix(prefixLease, oldSwept),
		UpperBound: dayPrefix(prefixLease, newSwept+1),
	})
	if err != nil {
		return fmt.Errorf("sweep: iterate lease partitions: %w", err)
	}
	for ok := it.First(); ok; ok = it.Next() {
		day, id, err := parseLeaseKey(it.Key())
		if err != nil {
			return errors.Join(fmt.Errorf("sweep: %w", err), it.Close())
		}
		val, err := it.ValueAndErr()
		if err != nil {
			return errors.Join(fmt.Errorf("sweep: read %x: %w", it.Key(), err), it.Close())
		}
		l, err := decodeLease(val, id)
		if err != nil {
			return errors.Join(fmt.Errorf("sweep: %w", err), it.Close())
		}
		endNS := l.End.UnixNano()
		if endNS >= cutoffNS {
			continue
		}
		if dayOf(endNS) == day {
			st.ExpiredLeases++ // a lease's last copy is in its end day
		}
		if day == newSwept {
			if err := errors.Join(b.Delete(leaseKey(day, id), nil), b.Delete(leaseMACKey(day, id), nil)); err != nil {
				return errors.Join(fmt.Errorf("sweep: batch delete: %w", err), it.Close())
			}
		}
	}
	if err := errors.Join(it.Error(), it.Close()); err != nil {
		return fmt.Errorf("sweep: iterate lease partitions: %w", err)
	}
	return nil
}

// rotateLocked closes and reopens Pebble twice, each time followed by a
// flushed write. A reopen deletes every obsolete and recycled WAL; the first
// version edit after it starts a new MANIFEST holding only a snapshot of the
// live files. Pebble keeps one previous MANIFEST, so the second round is what
// deletes the one that described the files before the sweep's compactions.
// The caller holds writeMu and dbMu exclusively. On failure the store is
// left closed.
func (s *Store) rotateLocked() error {
	for round := 1; round <= 2; round++ {
		if s.db == nil {
			return ErrClosed
		}
		err := s.db.Close()
		s.db = nil
		if err != nil {
			s.log.Error("sweep rotation failed; store closed", logKeyError, err)
			return fmt.Errorf("sweep: rotation %d: close pebble: %w", round, err)
		}
		db, err := pebble.Open(s.dir, s.pebbleOptions())
		if err != nil {
			s.log.Error("sweep rotation failed; store closed", logKeyError, err)
			return fmt.Errorf("sweep: rotation %d: reopen pebble at %s: %w", round, s.dir, err)
		}
		s.db = db
		s.rotations++
		if err := db.Set(metaRotation, binary.BigEndian.AppendUint64(nil, s.rotations), pebble.Sync); err != nil {
			return fmt.Errorf("sweep: rotation %d: write: %w", round, err)
		}
		if err := db.Flush(); err != nil {
			return fmt.Errorf("sweep: rotation %d: flush: %w", round, err)
		}
	}
	return nil
}

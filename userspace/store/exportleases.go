package store

import (
	"fmt"
	"time"
)

// ExportWithLeases is Export with, for each record, the leases that held
// its inside address during the part of its interval that lies in
// [from, to]. The leases are read through a second iterator opened with the
// records' one, so fn still must not call the Store, and a long export
// needs no lease history in memory.
func (s *Store) ExportWithLeases(from, to time.Time, fn func(Record, []Lease) error) error {
	if from.IsZero() || to.IsZero() || to.Before(from) {
		return fmt.Errorf("export range: [%s, %s]: %w", from, to, ErrInvalid)
	}
	lo, hi := ClampNS(from), ClampNS(to)
	return s.read("export with leases", func(v *view) error {
		it, err := v.db.NewIter(nil)
		if err != nil {
			return fmt.Errorf("export with leases: new iterator: %w", err)
		}
		defer it.Close()
		leases := &view{db: v.db, it: it, swept: v.swept, width: v.width, now: v.now}
		return v.export(lo, hi, func(r Record) error {
			rlo, rhi := max(r.Start.UnixNano(), lo), hi
			if !r.Open() {
				rhi = min(r.End.UnixNano(), hi)
			}
			in, err := addr4(r.Inside, "record inside")
			if err != nil {
				return err
			}
			ls, err := leases.leasesOf(in, rlo, max(rhi, rlo))
			if err != nil {
				return fmt.Errorf("leases of %s: %w", r.Inside, err)
			}
			return fn(r, ls)
		})
	})
}

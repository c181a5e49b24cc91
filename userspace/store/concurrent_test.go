package store

import (
	"net/netip"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// TestReadsDuringWritesAndSweeps runs lookups and histories against records
// that must always answer while other goroutines apply batches and sweep
// (which deletes, compacts and reopens the database underneath them).
func TestReadsDuringWritesAndSweeps(t *testing.T) {
	day := 24 * time.Hour
	begin := time.Date(2025, 6, 1, 0, 0, 0, 0, time.UTC)
	c := newClock(begin)
	s, _ := openMem(t, c)
	// Always there: an open record from day 0, and a record from day 1 to
	// day 50 (released before the sweeps begin).
	mustApply(t, s,
		activate(1, "100.99.0.1", "203.0.113.1", 1024, 2047, begin, 1),
		activate(2, "100.99.0.2", "203.0.113.1", 2048, 3071, begin.Add(day), 1))
	c.Set(begin.Add(50 * day))
	mustApply(t, s, release(2, "203.0.113.1", 2048, begin.Add(50*day)))

	var stop atomic.Bool
	var reads atomic.Int64
	var wg sync.WaitGroup
	errs := make(chan string, 8)
	for g := range 2 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for !stop.Load() {
				got, err := s.Lookup(netip.MustParseAddr("203.0.113.1"), 1500, begin.Add(time.Hour), 0)
				if err != nil || len(got) != 1 || got[0].Subscriber != 1 {
					errs <- "lookup of the open record: " + errString(err) + " " + joinRecs(got)
					return
				}
				got, err = s.Lookup(netip.MustParseAddr("203.0.113.1"), 2500, begin.Add(time.Duration(2+g)*day), 0)
				if err != nil || len(got) != 1 || got[0].Subscriber != 2 {
					errs <- "lookup of the long record: " + errString(err) + " " + joinRecs(got)
					return
				}
				h, err := s.History(netip.MustParseAddr("100.99.0.2"), begin, begin.Add(60*day))
				if err != nil || len(h) != 1 {
					errs <- "history of the long record: " + errString(err) + " " + joinRecs(h)
					return
				}
				reads.Add(1)
			}
		}()
	}
	// Writers: churn on other blocks, and sweeps with a retention that moves
	// the oldest retained day across the long record's life.
	w := newCrashWorkload(3, newClock(begin.Add(51*day)))
	for i := range 40 {
		c.Set(begin.Add(time.Duration(52+i) * day))
		if err := s.Apply(w.batch()); err != nil {
			t.Fatal(err)
		}
		if i%4 == 3 {
			if _, err := s.Sweep(50 * day); err != nil { // cutoff: day 2+i, inside the long record
				t.Fatal(err)
			}
		}
	}
	stop.Store(true)
	wg.Wait()
	close(errs)
	for e := range errs {
		t.Fatal(e)
	}
	if reads.Load() < 10 {
		t.Fatalf("only %d read rounds ran", reads.Load())
	}
	t.Logf("%d read rounds", reads.Load())
}

func errString(err error) string {
	if err == nil {
		return "<nil>"
	}
	return err.Error()
}

func joinRecs(rs []Record) string {
	out := ""
	for _, r := range rs {
		out += "[" + recString(r) + "]"
	}
	return out
}

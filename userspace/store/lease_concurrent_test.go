package store

import (
	"fmt"
	"net/netip"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// TestLeaseReadsDuringWritesAndSweeps: leases that must always answer keep
// answering while lease batches are applied and sweeps delete, compact and
// reopen the database underneath the reads.
func TestLeaseReadsDuringWritesAndSweeps(t *testing.T) {
	day := 24 * time.Hour
	begin := time.Date(2025, 6, 1, 0, 0, 0, 0, time.UTC)
	c := newClock(begin)
	s, _ := openMem(t, c)
	// Always there: an infinite lease from day 0, and a lease from day 1
	// to day 50 (released before the sweeps begin).
	mustApplyLeases(t, s,
		leaseEv(LeaseAdd, begin, ipA, macA, time.Time{}),
		leaseEv(LeaseAdd, begin.Add(day), "100.64.7.2", macB, begin.Add(60*day)))
	c.Set(begin.Add(50 * day))
	mustApplyLeases(t, s, leaseEv(LeaseRelease, begin.Add(50*day), "100.64.7.2", macB, time.Time{}))

	var stop atomic.Bool
	var reads atomic.Int64
	var wg sync.WaitGroup
	errs := make(chan string, 8)
	for g := range 2 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for !stop.Load() {
				at := begin.Add(time.Duration(2+g) * day)
				if got, err := s.LeasesOf(netip.MustParseAddr(ipA), at, at); err != nil || len(got) != 1 {
					errs <- fmt.Sprintf("leases of the infinite lease: %v %v", err, leaseStrings(got))
					return
				}
				if got, err := s.LeasesByMAC(mac(macB), at, at); err != nil || len(got) != 1 {
					errs <- fmt.Sprintf("leases of the long lease: %v %v", err, leaseStrings(got))
					return
				}
				reads.Add(1)
			}
		}()
	}
	g := newLeaseGen(5, begin.Add(51*day))
	for i := range 40 {
		c.Set(begin.Add(time.Duration(52+i) * day))
		g.clock = c.Now()
		if err := s.ApplyLeases(g.events(30)); err != nil {
			t.Fatal(err)
		}
		if i%4 == 3 {
			if _, err := s.Sweep(50 * day); err != nil { // cutoff: day 2+i, inside the long lease
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
}

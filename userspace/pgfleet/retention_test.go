package pgfleet_test

import (
	"context"
	"reflect"
	"slices"
	"sync/atomic"
	"testing"
	"time"

	"github.com/blocknat/blocknat/userspace/pgfleet"
	"github.com/blocknat/blocknat/userspace/store"
)

// DropExpired drops exactly the day partitions that ended before each
// kind's cutoff, lookups inside retention still answer and one before it
// does not, and later ingests never recreate a dropped day.
func TestDropExpired(t *testing.T) {
	ctx := context.Background()
	f := newFleet(t)
	owner := f.database(t, "fleet", 0)
	r1 := f.router(t, "r1", "fleet")
	early := record(1, t0.Add(-50*time.Hour), t0.Add(-49*time.Hour)).AsStored() // 03-08 only
	span := record(2, t0.Add(-30*time.Hour), t0.Add(3*time.Hour)).AsStored()    // 03-09 .. 03-11
	late := record(3, t0.Add(5*time.Hour), t0.Add(6*time.Hour)).AsStored()      // 03-11
	oldLease := store.Lease{Inside: inside(1), MAC: mac(1), Start: t0.Add(-50 * time.Hour), End: t0.Add(-49 * time.Hour), Ended: true}
	newLease := store.Lease{Inside: inside(2), MAC: mac(2), Start: t0.Add(-10 * time.Hour), End: t0.Add(5 * time.Hour), Ended: true}
	ingestAll(t, r1, "r1", []store.OutboxEvent{
		{Seq: 1, Kind: store.OutboxClose, Record: early},
		{Seq: 2, Kind: store.OutboxClose, Record: span},
		{Seq: 3, Kind: store.OutboxClose, Record: late},
		{Seq: 4, Kind: store.OutboxLeaseEnded, Lease: oldLease},
		{Seq: 5, Kind: store.OutboxLeaseEnded, Lease: newLease},
	}, 5)
	es := auditEntries(t, 6) // t0+7h … t0+42h: 03-11 .. 03-12
	if _, err := r1.IngestAudit(ctx, "r1", es); err != nil {
		t.Fatal(err)
	}
	rd := owner.Reader(pgfleet.ReaderOptions{Now: func() time.Time { return t0.Add(30 * time.Hour) }})
	lookup := func(r store.Record, at time.Time) []store.Record {
		t.Helper()
		got, err := rd.LookupInterval(pub, r.PortLo, at, at)
		if err != nil {
			t.Fatal(err)
		}
		return got
	}
	if n := len(lookup(early, early.Start.Add(time.Minute))); n != 1 {
		t.Fatalf("before the drop: %d records of the early one", n)
	}
	records := f.partitionNames(t, "fleet", "records")
	if !reflect.DeepEqual(records, []string{"records_20260308", "records_20260309", "records_20260310", "records_20260311"}) {
		t.Fatalf("records partitions before: %v", records)
	}
	leasesBefore := f.partitionNames(t, "fleet", "leases")
	auditBefore := f.partitionNames(t, "fleet", "audit")

	if _, err := owner.DropExpired(ctx, pgfleet.Retention{Records: 0, Audit: time.Hour}, t0); err == nil {
		t.Error("DropExpired with no record retention: no error")
	}
	now := t0.Add(30 * time.Hour) // 03-12 04:00
	dropped, err := owner.DropExpired(ctx, pgfleet.Retention{
		Records: 50 * time.Hour, // cutoff 03-10 02:00: 03-08 and 03-09 go
		Leases:  70 * time.Hour, // cutoff 03-09 06:00: 03-08 goes
		Audit:   10 * time.Hour, // cutoff 03-11 18:00: nothing before 03-11 exists
	}, now)
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"blocknat.records_20260308", "blocknat.records_20260309", "blocknat.leases_20260308"}
	slices.Sort(dropped)
	slices.Sort(want)
	if !reflect.DeepEqual(dropped, want) {
		t.Errorf("dropped %v, want %v", dropped, want)
	}
	if got := f.partitionNames(t, "fleet", "records"); !reflect.DeepEqual(got, []string{"records_20260310", "records_20260311"}) {
		t.Errorf("records partitions after: %v", got)
	}
	if got, want := f.partitionNames(t, "fleet", "leases"), leasesBefore[1:]; !reflect.DeepEqual(got, want) {
		t.Errorf("lease partitions after: %v, want %v (from %v)", got, want, leasesBefore)
	}
	if got := f.partitionNames(t, "fleet", "audit"); !reflect.DeepEqual(got, auditBefore) {
		t.Errorf("audit partitions after: %v, want %v", got, auditBefore)
	}

	if got := lookup(early, early.Start.Add(time.Minute)); len(got) != 0 {
		t.Errorf("a record of a dropped day still answers: %+v", got)
	}
	// The spanning record outlived the cutoff: a question in its dropped
	// first day is answered from the oldest retained day's copy.
	if got := lookup(span, span.Start.Add(time.Hour)); len(got) != 1 || !got[0].End.Equal(span.End) {
		t.Errorf("spanning record in a dropped day: %+v", got)
	}
	if got := lookup(late, late.Start.Add(time.Minute)); len(got) != 1 {
		t.Errorf("a record inside retention: %+v", got)
	}
	if ls, err := rd.LeasesOf(inside(1), oldLease.Start, oldLease.End); err != nil || len(ls) != 0 {
		t.Errorf("a lease of a dropped day: %+v, %v", ls, err)
	}
	if ls, err := rd.LeasesOf(inside(2), newLease.Start, newLease.End); err != nil || len(ls) != 1 {
		t.Errorf("a lease inside retention: %+v, %v", ls, err)
	}
	st, err := rd.Stats()
	if err != nil || !st.OldestRetained.Equal(time.Date(2026, 3, 10, 0, 0, 0, 0, time.UTC)) || st.Partitions != 2 {
		t.Errorf("stats after the drop: %+v, %v", st, err)
	}

	// Late copies of dropped days land in the oldest retained day, and a
	// record wholly before it is counted as taken but not kept.
	straddle := record(4, t0.Add(-50*time.Hour), t0.Add(-20*time.Hour)).AsStored() // 03-08 .. 03-10
	gone := record(5, t0.Add(-40*time.Hour), t0.Add(-39*time.Hour)).AsStored()     // 03-09
	if last, err := r1.Ingest(ctx, "r1", []store.OutboxEvent{
		{Seq: 6, Kind: store.OutboxClose, Record: straddle},
		{Seq: 7, Kind: store.OutboxClose, Record: gone},
		{Seq: 8, Kind: store.OutboxLeaseEnded, Lease: store.Lease{Inside: inside(3), MAC: mac(3),
			Start: t0.Add(-60 * time.Hour), End: t0.Add(-59 * time.Hour), Ended: true}},
	}); err != nil || last != 8 {
		t.Fatalf("ingest after the drop: %d, %v", last, err)
	}
	if got := f.partitionNames(t, "fleet", "records"); !reflect.DeepEqual(got, []string{"records_20260310", "records_20260311"}) {
		t.Errorf("records partitions after a late ingest: %v", got)
	}
	if got, want := f.partitionNames(t, "fleet", "leases"), leasesBefore[1:]; !reflect.DeepEqual(got, want) {
		t.Errorf("lease partitions after a late ingest: %v, want %v", got, want)
	}
	if got := lookup(straddle, straddle.Start.Add(time.Hour)); len(got) != 1 {
		t.Errorf("straddling record after the drop: %+v", got)
	}
	if got := lookup(gone, gone.Start.Add(time.Minute)); len(got) != 0 {
		t.Errorf("a record wholly in a dropped day was kept: %+v", got)
	}
	if n := f.strings(t, "fleet", "SELECT day::text FROM blocknat.records WHERE subscriber = 4"); !reflect.DeepEqual(n, []string{"20522"}) {
		t.Errorf("straddling record's copies in days %v, want only 20522 (03-10)", n)
	}
	// Dropping again at the same time drops nothing.
	if again, err := owner.DropExpired(ctx, pgfleet.Retention{Records: 50 * time.Hour, Leases: 70 * time.Hour, Audit: 10 * time.Hour}, now); err != nil || len(again) != 0 {
		t.Errorf("second drop: %v, %v", again, err)
	}
}

// kill -9 of the postmaster in the middle of a router's ingest, then a
// restart: resending from Progress gives every row exactly once, the
// database equal to one that took the events without a crash.
func TestKill9MidIngest(t *testing.T) {
	const total, batch = 3000, 40
	var evs []store.OutboxEvent
	for i := range total {
		st := t0.Add(time.Duration(i) * 37 * time.Second)
		evs = append(evs, store.OutboxEvent{Seq: uint64(i + 1), Kind: store.OutboxClose,
			Record: record(i%50, st, st.Add(time.Duration(i%7)*5*time.Hour)).AsStored()})
	}
	f := newFleet(t)
	f.database(t, "fleet", 0)
	f.database(t, "ref", 0)
	r1 := f.router(t, "r1", "fleet")

	var sent atomic.Uint64
	failures := 0
	done := make(chan error, 1)
	go func() {
		deadline := time.Now().Add(2 * time.Minute)
		for time.Now().Before(deadline) {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			p, err := r1.Progress(ctx, "r1")
			if err == nil && p.Store == total {
				cancel()
				done <- nil
				return
			}
			if err == nil {
				_, err = r1.Ingest(ctx, "r1", evs[p.Store:min(p.Store+batch, total)])
			}
			cancel()
			if err != nil {
				failures++
				time.Sleep(20 * time.Millisecond)
				continue
			}
			sent.Store(p.Store)
		}
		done <- context.DeadlineExceeded
	}()
	for sent.Load() < total/3 {
		time.Sleep(5 * time.Millisecond)
	}
	f.srv.Kill9(t)
	f.srv.Restart(t)
	if err := <-done; err != nil {
		t.Fatalf("ingest after the restart: %v", err)
	}
	if failures == 0 {
		t.Error("no ingest failed: the kill missed the ingest")
	}
	ingestAll(t, f.router(t, "r1", "ref"), "r1", evs, 500)
	if a, b := f.dump(t, "fleet"), f.dump(t, "ref"); a != b {
		t.Errorf("after kill -9 and resending from Progress, the database differs from one without a crash")
	}
	if n := f.count(t, "fleet", "blocknat.records"); n < total {
		t.Errorf("%d record rows for %d records", n, total)
	}
	// The export reads its cursor in batches: every record once, in order.
	rd := connect(t, f.srv.DSN(ownerRole, "fleet")).Reader(pgfleet.ReaderOptions{})
	var exported []store.Record
	if err := rd.ExportWithLeases(t0, t0.Add(100*time.Hour), func(r store.Record, _ []store.Lease) error {
		exported = append(exported, r)
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if len(exported) != total {
		t.Errorf("export: %d records, want %d", len(exported), total)
	}
	for i := 1; i < len(exported); i++ {
		if exported[i].Start.Before(exported[i-1].Start) {
			t.Fatalf("export: record %d starts %s, before record %d's %s", i, exported[i].Start, i-1, exported[i-1].Start)
		}
	}
}

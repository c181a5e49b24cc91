package pgfleet_test

import (
	"bytes"
	"errors"
	"fmt"
	"reflect"
	"testing"
	"time"

	"github.com/blocknat/blocknat/test/testutil"
	"github.com/blocknat/blocknat/userspace/pgfleet"
	"github.com/blocknat/blocknat/userspace/store"
)

// scenario feeds a router's store records over several days (open ones,
// one spanning four days, handovers of a block, sub-millisecond times),
// leases (lapsed, renewed, released, superseded, infinite, late, a
// hostname that is not UTF-8) and epochs with a daily re-write, and
// returns the store with its outbox.
func scenario(t testing.TB) (*store.Store, *testutil.Clock) {
	t.Helper()
	clock := testutil.NewClock(t0.Add(-60*time.Hour), 0)
	s := routerStore(t, clock)
	put := func(e store.Epoch) {
		t.Helper()
		if err := s.PutEpoch(e); err != nil {
			t.Fatalf("put epoch: %v", err)
		}
	}
	leases := func(evs ...store.LeaseEvent) {
		t.Helper()
		if err := s.ApplyLeases(evs); err != nil {
			t.Fatalf("apply leases: %v", err)
		}
	}
	lease := func(kind store.LeaseEventKind, at time.Time, in, dev int, expires time.Time) store.LeaseEvent {
		return store.LeaseEvent{Kind: kind, Time: at, Inside: inside(in), MAC: mac(dev), Expires: expires,
			Hostname: fmt.Sprintf("host-%d", dev), Source: "kea"}
	}
	put(epoch(1, t0.Add(-55*time.Hour)))

	clock.Set(t0.Add(-20 * time.Hour))
	handover := record(8, t0.Add(-20*time.Hour), t0.Add(-19*time.Hour))
	handover.PortLo, handover.PortHi = block(1)
	apply(t, s,
		activate(record(1, t0.Add(-30*time.Hour), time.Time{})),
		activate(record(3, t0.Add(-50*time.Hour), time.Time{})))
	apply(t, s, release(record(1, t0.Add(-30*time.Hour), t0.Add(-29*time.Hour))))
	// Activated and released in one batch: only the closed record.
	apply(t, s, activate(handover), release(handover))
	leases(lease(store.LeaseAdd, t0.Add(-30*time.Hour), 1, 1, t0.Add(-29*time.Hour)))
	leases(lease(store.LeaseAdd, t0.Add(-21*time.Hour), 1, 2, t0.Add(40*time.Hour)))

	clock.Set(t0.Add(2 * time.Hour))
	put(epoch(2, t0.Add(time.Hour)))
	e1 := epoch(1, t0.Add(-55*time.Hour))
	e1.Clock = &store.EpochClock{Synchronised: true, EstimatedError: 1500 * time.Microsecond, MaxError: 20 * time.Millisecond, ReadAt: t0}
	put(e1) // the daily re-write
	apply(t, s,
		activate(record(2, t0.Add(-time.Hour), time.Time{})),
		activate(record(4, t0.Add(-5*time.Hour), time.Time{})),
		activate(record(6, t0, time.Time{})),
		activate(record(7, t0.Add(123456789), time.Time{})))
	apply(t, s,
		release(record(6, t0, t0.Add(10*time.Minute))),
		activate(record(6, t0.Add(20*time.Minute), time.Time{})),
		release(record(7, t0.Add(123456789), t0.Add(time.Hour+987654321))))
	apply(t, s, release(record(6, t0.Add(20*time.Minute), t0.Add(30*time.Minute))))
	apply(t, s, activate(record(6, t0.Add(40*time.Minute), time.Time{})))
	odd := lease(store.LeaseAdd, t0.Add(-2*time.Hour), 2, 3, t0.Add(time.Hour))
	odd.Hostname, odd.ClientID = "\xff\x00odd", []byte{1, 0, 0xfe}
	leases(odd)
	leases(lease(store.LeaseRenew, t0, 2, 3, t0.Add(5*time.Hour)))
	leases(lease(store.LeaseAdd, t0.Add(-time.Hour), 3, 4, time.Time{}))
	leases(lease(store.LeaseAdd, t0, 4, 5, t0.Add(time.Hour)))

	clock.Set(t0.Add(28 * time.Hour))
	apply(t, s,
		release(record(2, time.Time{}, t0.Add(3*time.Hour))),
		release(record(3, time.Time{}, t0.Add(26*time.Hour))),
		activate(record(5, t0.Add(time.Hour), time.Time{})))
	leases(lease(store.LeaseRelease, t0.Add(2*time.Hour), 2, 3, time.Time{}))
	// Late: another device held address 2 before the released lease.
	leases(lease(store.LeaseAdd, t0.Add(-5*time.Hour), 2, 7, t0.Add(-3*time.Hour)))
	if _, err := s.EndExpiredLeases(); err != nil {
		t.Fatalf("end expired leases: %v", err)
	}
	clock.Set(t0.Add(29 * time.Hour))
	leases(lease(store.LeaseAdd, t0.Add(28*time.Hour+30*time.Minute), 5, 6, t0.Add(28*time.Hour+50*time.Minute)))
	clock.Set(t0.Add(30 * time.Hour)) // lease 5 has lapsed, not yet ended
	return s, clock
}

// stripRouter checks that every answer names router and clears it, so
// that the rest compares with the router's store.
func stripRouter[T any](t *testing.T, router string, what string, xs []T, get func(*T) *string) []T {
	t.Helper()
	for i := range xs {
		if r := get(&xs[i]); *r != router {
			t.Errorf("%s: answer %d names router %q, want %q", what, i, *r, router)
		} else {
			*r = ""
		}
	}
	return xs
}

func recRouter(r *store.Record) *string  { return &r.Router }
func leaseRouter(l *store.Lease) *string { return &l.Router }
func epRouter(e *store.Epoch) *string    { return &e.Router }

func same[T any](t *testing.T, what string, got, want []T) {
	t.Helper()
	if len(got) == 0 && len(want) == 0 {
		return
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("%s:\nfleet %+v\nstore %+v", what, got, want)
	}
}

// The fleet's answers from a router's replicated outbox are the answers
// of the router's own store, for every read api.Store has.
func TestReaderAnswersAsTheStore(t *testing.T) {
	s, clock := scenario(t)
	evs := outbox(t, s)
	f := newFleet(t)
	f.database(t, "fleet", 0)
	owner := connect(t, f.srv.DSN(ownerRole, "fleet"))
	r1 := f.router(t, "r1", "fleet")
	ingestAll(t, r1, "r1", evs, 7)
	rd := owner.Reader(pgfleet.ReaderOptions{Now: clock.Now})

	var windows [][2]time.Time
	for at := t0.Add(-56 * time.Hour); at.Before(t0.Add(32 * time.Hour)); at = at.Add(97 * time.Minute) {
		windows = append(windows, [2]time.Time{at, at}, [2]time.Time{at.Add(-time.Minute), at.Add(time.Minute)},
			[2]time.Time{at, at.Add(7 * time.Hour)})
	}
	windows = append(windows,
		[2]time.Time{t0.Add(-60 * time.Hour), t0.Add(40 * time.Hour)},
		[2]time.Time{t0.Add(123456789), t0.Add(123456789)},
		[2]time.Time{t0.Add(10 * time.Minute), t0.Add(10*time.Minute + 1)},
		[2]time.Time{time.Unix(0, 0), t0.Add(-48 * time.Hour)},
		[2]time.Time{t0.Add(31 * time.Hour), t0.Add(1000 * time.Hour)})
	lookups := 0
	for _, w := range windows {
		for sub := 0; sub <= 9; sub++ {
			lo, _ := block(sub)
			for _, port := range []uint16{lo, lo + 100} {
				want, err := s.LookupInterval(pub, port, w[0], w[1])
				if err != nil {
					t.Fatal(err)
				}
				got, err := rd.LookupInterval(pub, port, w[0], w[1])
				if err != nil {
					t.Fatal(err)
				}
				lookups += len(want)
				same(t, fmt.Sprintf("lookup %d %v", port, w), stripRouter(t, "r1", "lookup", got, recRouter), want)
			}
			want, err := s.History(inside(sub), w[0], w[1])
			if err != nil {
				t.Fatal(err)
			}
			got, err := rd.History(inside(sub), w[0], w[1])
			if err != nil {
				t.Fatal(err)
			}
			same(t, fmt.Sprintf("history %d %v", sub, w), stripRouter(t, "r1", "history", got, recRouter), want)
			for _, blk := range []int{sub, 1} {
				lo, _ := block(blk)
				wb, wa, err := s.NearestRecords(uint32(sub), pub, lo, w[0], w[1])
				if err != nil {
					t.Fatal(err)
				}
				gb, ga, err := rd.NearestRecords(uint32(sub), pub, lo, w[0], w[1])
				if err != nil {
					t.Fatal(err)
				}
				for _, p := range []struct {
					name      string
					got, want *store.Record
				}{{"before", gb, wb}, {"after", ga, wa}} {
					if p.got != nil {
						stripRouter(t, "r1", "nearest", []*store.Record{p.got}, func(r **store.Record) *string { return &(*r).Router })
					}
					if !reflect.DeepEqual(p.got, p.want) {
						t.Errorf("nearest %s of %d block %d %v: fleet %+v, store %+v", p.name, sub, blk, w, p.got, p.want)
					}
				}
			}
			for _, dev := range []int{sub, sub + 1} {
				want, err := s.LeasesByMAC(mac(dev), w[0], w[1])
				if err != nil {
					t.Fatal(err)
				}
				got, err := rd.LeasesByMAC(mac(dev), w[0], w[1])
				if err != nil {
					t.Fatal(err)
				}
				same(t, fmt.Sprintf("leases by mac %d %v", dev, w), stripRouter(t, "r1", "leases by mac", got, leaseRouter), want)
			}
			wantL, err := s.LeasesOf(inside(sub), w[0], w[1])
			if err != nil {
				t.Fatal(err)
			}
			gotL, err := rd.LeasesOf(inside(sub), w[0], w[1])
			if err != nil {
				t.Fatal(err)
			}
			same(t, fmt.Sprintf("leases of %d %v", sub, w), stripRouter(t, "r1", "leases of", gotL, leaseRouter), wantL)
		}
		type withLeases struct {
			R store.Record
			L []store.Lease
		}
		var want, got []withLeases
		if err := s.ExportWithLeases(w[0], w[1], func(r store.Record, ls []store.Lease) error {
			want = append(want, withLeases{r, ls})
			return nil
		}); err != nil {
			t.Fatal(err)
		}
		if err := rd.ExportWithLeases(w[0], w[1], func(r store.Record, ls []store.Lease) error {
			got = append(got, withLeases{r, stripRouter(t, "r1", "export leases", ls, leaseRouter)})
			return nil
		}); err != nil {
			t.Fatal(err)
		}
		same(t, fmt.Sprintf("export with leases %v", w), stripRouter(t, "r1", "export", got, func(x *withLeases) *string { return &x.R.Router }), want)
		var wantE, gotE []store.Record
		if err := s.Export(w[0], w[1], func(r store.Record) error { wantE = append(wantE, r); return nil }); err != nil {
			t.Fatal(err)
		}
		if err := rd.Export(w[0], w[1], func(r store.Record) error { gotE = append(gotE, r); return nil }); err != nil {
			t.Fatal(err)
		}
		same(t, fmt.Sprintf("export %v", w), stripRouter(t, "r1", "export", gotE, recRouter), wantE)

		wantEp, werr := s.EpochAt(w[0])
		gotEp, gerr := rd.RouterEpochAt("r1", w[0])
		anyEp, aerr := rd.EpochAt(w[0])
		if (werr == nil) != (gerr == nil) || (werr == nil) != (aerr == nil) {
			t.Errorf("epoch at %s: store %v, fleet %v / %v", w[0], werr, gerr, aerr)
		} else if werr == nil {
			gotEp.Router, anyEp.Router = "", ""
			if !reflect.DeepEqual(gotEp, wantEp) || !reflect.DeepEqual(anyEp, wantEp) {
				t.Errorf("epoch at %s:\nfleet %+v\nstore %+v", w[0], gotEp, wantEp)
			}
		}
	}
	if lookups < 100 {
		t.Errorf("the lookups found %d records: the scenario tests too little", lookups)
	}
	wantEps, err := s.Epochs()
	if err != nil {
		t.Fatal(err)
	}
	gotEps, err := rd.Epochs()
	if err != nil {
		t.Fatal(err)
	}
	same(t, "epochs", stripRouter(t, "r1", "epochs", gotEps, epRouter), wantEps)
	if len(wantEps) != 2 || wantEps[0].Clock == nil {
		t.Errorf("store epochs %+v: want 2, the first re-written with a clock", wantEps)
	}

	want, err := s.Stats()
	if err != nil {
		t.Fatal(err)
	}
	got, err := rd.Stats()
	if err != nil {
		t.Fatal(err)
	}
	if got.OpenRecords != want.OpenRecords || got.Epochs != want.Epochs || got.LeaseOpen != want.LeaseOpen ||
		got.Partitions != want.Partitions || !got.OldestPartition.Equal(want.OldestPartition) {
		t.Errorf("stats: fleet %+v\nstore %+v", got, want)
	}
	if err := rd.ApplyLeases([]store.LeaseEvent{{}}); err == nil {
		t.Error("ApplyLeases on the fleet: no error")
	}
	if _, err := rd.LookupInterval(pub, 80, t0, t0.Add(-time.Second)); err == nil {
		t.Error("lookup with to before from: no error")
	}
}

// Answers across routers name each router; epochs are each router's own;
// an exported record carries the leases of its own router only, as
// inside addresses are each router's.
func TestAcrossRouters(t *testing.T) {
	f := newFleet(t)
	owner := f.database(t, "fleet", 0)
	ep := func(id uint32, start time.Time) store.Epoch {
		e := epoch(id, start)
		e.Recorded = start
		return e
	}
	rec := record(1, t0, t0.Add(time.Hour)).AsStored()
	lease := func(dev int) store.Lease {
		return store.Lease{Inside: inside(1), MAC: mac(dev), Start: t0.Add(-time.Hour), End: t0.Add(2 * time.Hour), Ended: true}
	}
	for i, name := range []string{"east", "west"} {
		db := f.router(t, name, "fleet")
		later := rec
		later.Start, later.End = rec.Start.Add(3*time.Hour), rec.End.Add(3*time.Hour)
		evs := []store.OutboxEvent{
			{Seq: 1, Kind: store.OutboxEpoch, Epoch: ep(7, t0.Add(time.Duration(i-10)*time.Hour))},
			{Seq: 2, Kind: store.OutboxEpoch, Epoch: ep(uint32(8+i), t0.Add(time.Duration(i)*time.Hour))},
			{Seq: 3, Kind: store.OutboxClose, Record: rec},
			{Seq: 4, Kind: store.OutboxLeaseEnded, Lease: lease(10 + i)},
		}
		if i == 1 {
			evs = append(evs, store.OutboxEvent{Seq: 5, Kind: store.OutboxClose, Record: later})
		}
		ingestAll(t, db, name, evs, len(evs))
	}
	rd := owner.Reader(pgfleet.ReaderOptions{Now: func() time.Time { return t0.Add(10 * time.Hour) }})

	got, err := rd.LookupInterval(pub, rec.PortLo, t0, t0)
	if err != nil || len(got) != 2 || got[0].Router != "east" || got[1].Router != "west" {
		t.Errorf("lookup across routers: %+v, %v; want east's then west's", got, err)
	}
	eps, err := rd.Epochs()
	var order []string
	for _, e := range eps {
		order = append(order, fmt.Sprintf("%s/%d", e.Router, e.ID))
	}
	if err != nil || !reflect.DeepEqual(order, []string{"east/7", "west/7", "east/8", "west/9"}) {
		t.Errorf("epochs %v, %v; want by start, then router", order, err)
	}
	if e, err := rd.EpochAt(t0.Add(2 * time.Hour)); err != nil || e.Router != "west" || e.ID != 9 {
		t.Errorf("epoch at t0+2h: %s/%d, %v; want west/9, the latest to start", e.Router, e.ID, err)
	}
	if e, err := rd.RouterEpochAt("east", t0.Add(2*time.Hour)); err != nil || e.Router != "east" || e.ID != 8 {
		t.Errorf("east's epoch at t0+2h: %s/%d, %v; want east/8", e.Router, e.ID, err)
	}
	if _, err := rd.RouterEpochAt("east", t0.Add(-20*time.Hour)); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("east's epoch before its first: %v, want ErrNotFound", err)
	}
	_, after, err := rd.NearestRecords(1, pub, rec.PortLo, rec.End.Add(time.Minute), rec.End.Add(time.Minute))
	if err != nil || after == nil || after.Router != "west" {
		t.Errorf("nearest after across routers: %+v, %v; want west's later record", after, err)
	}
	ls, err := rd.LeasesOf(inside(1), t0, t0)
	if err != nil || len(ls) != 2 || ls[0].Router != "east" || ls[1].Router != "west" {
		t.Errorf("leases of across routers: %+v, %v", ls, err)
	}
	n := 0
	err = rd.ExportWithLeases(t0, t0.Add(time.Minute), func(r store.Record, ls []store.Lease) error {
		n++
		if len(ls) != 1 || ls[0].Router != r.Router || !bytes.Equal(ls[0].MAC, mac(map[string]int{"east": 10, "west": 11}[r.Router])) {
			t.Errorf("export: record of %s with leases %+v; want its router's one", r.Router, ls)
		}
		return nil
	})
	if err != nil || n != 2 {
		t.Errorf("export with leases: %d records, %v", n, err)
	}
	stop := errors.New("stop")
	if err := rd.Export(t0, t0, func(store.Record) error { return stop }); !errors.Is(err, stop) {
		t.Errorf("export whose fn fails: %v, want its error", err)
	}
}

package reconcile

import (
	"context"
	"net/netip"
	"os"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2/vfs"

	"github.com/blocknat/blocknat/loader"
	"github.com/blocknat/blocknat/test/testutil"
	"github.com/blocknat/blocknat/userspace/mapping"
	"github.com/blocknat/blocknat/userspace/store"
)

type direct struct{ st *store.Store }

// tables loads the kernel maps for p (nothing attached) and opens a store
// in memory on a test clock; both are closed at cleanup.
func tables(t *testing.T, p loader.Params) (*loader.NAT, *testutil.Clock, *store.Store) {
	t.Helper()
	nat, err := loader.Load(p, "")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { nat.Close() })
	clock := testutil.NewClock(time.Date(2026, 11, 20, 12, 0, 0, 0, time.UTC), 10*time.Hour)
	st, err := store.Open("records", store.Options{FS: vfs.NewMem(), Now: clock.Now})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	return nat, clock, st
}

// testMapping is 100.64.0.0/24 on 198.51.100.10/31; the kernel maps the
// tests load need root.
func testMapping(t *testing.T) *mapping.Mapping {
	t.Helper()
	if os.Geteuid() != 0 {
		if os.Getenv("BLOCKNAT_REQUIRE_PRIVILEGED") == "1" {
			t.Fatal("needs root for kernel maps")
		}
		t.Skip("needs root for kernel maps")
	}
	m, err := mapping.New([]netip.Prefix{netip.MustParsePrefix("100.64.0.0/24")}, []netip.Prefix{netip.MustParsePrefix("198.51.100.10/31")}, 1024, 65535, 0)
	if err != nil {
		t.Fatal(err)
	}
	return m
}

func (d direct) Submit(_ context.Context, ops []store.Op) error { return d.st.Apply(ops) }

// TestReconcile: the kernel shows subscribers 2, 3 and 4 active; the store
// has open records for 3 (matching) and 5 (no longer active). Afterwards
// 2 and 4 have recovered records starting when the kernel says their
// blocks began, 3 is untouched, 5 is closed.
func TestReconcile(t *testing.T) {
	m := testMapping(t)
	nat, clock, st := tables(t, loader.Params{Mapping: m, Epoch: 4})

	now := clock.MonoNow()
	since := map[uint32]uint64{2: now - uint64(time.Hour), 3: now - uint64(2*time.Hour), 4: 0}
	for sub, s := range since {
		state := loader.SubscriberState{Active: 1, ActiveSinceNs: s, LastActiveNs: now}
		if err := nat.SetSubscriber(sub, state); err != nil {
			t.Fatal(err)
		}
	}
	var ops []store.Op
	for _, sub := range []uint32{3, 5} {
		b, _ := m.Block(sub)
		ops = append(ops, store.Op{Kind: store.OpActivate, Record: store.Record{Subscriber: sub, Inside: b.Inside, Public: b.Public,
			PortLo: b.PortLo, PortHi: b.PortHi, Start: clock.Wall(now - uint64(2*time.Hour)), Epoch: 4}})
	}
	if err := st.Apply(ops); err != nil {
		t.Fatal(err)
	}

	plane := func() Plane { return Plane{Tables: nat, Mapping: m, Epoch: 4} }
	r := &Reconciler{Plane: plane, Store: st, Records: direct{st}, Clock: clock, Grace: time.Second}
	res, err := r.Once(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if res != (Result{Active: 3, Recovered: 2, Closed: 1}) {
		t.Errorf("result %+v", res)
	}
	open, _ := st.OpenRecords()
	bySub := map[uint32]store.Record{}
	for _, rec := range open {
		bySub[rec.Subscriber] = rec
	}
	if len(open) != 3 {
		t.Fatalf("open records %+v, want subscribers 2, 3, 4", open)
	}
	if r2 := bySub[2]; r2.Flags&store.FlagRecovered == 0 || !r2.Start.Equal(clock.Wall(since[2])) || r2.Epoch != 4 {
		t.Errorf("subscriber 2: %+v, want recovered from %v", r2, clock.Wall(since[2]))
	}
	if r4 := bySub[4]; r4.Flags&store.FlagRecovered == 0 || !r4.Start.Equal(clock.Now()) {
		t.Errorf("subscriber 4 (no start in the kernel): %+v, want recovered from now", r4)
	}
	if r3 := bySub[3]; r3.Flags != 0 {
		t.Errorf("subscriber 3 was rewritten: %+v", r3)
	}
	b5, _ := m.Block(5)
	closed, _ := st.Lookup(b5.Public, b5.PortLo, clock.Now(), 0)
	if len(closed) != 1 || closed[0].Open() {
		t.Errorf("subscriber 5: %+v, want its record closed now", closed)
	}
	// A second pass finds nothing to do.
	if res, _ := r.Once(context.Background()); res.Recovered != 0 || res.Closed != 0 {
		t.Errorf("second pass %+v", res)
	}
}

// TestReconcileOverflow: an overflow block the kernel shows held, whose
// event was lost, gets a recovered record naming the overflow address and
// ports from the time the data plane claimed it; an open overflow record
// whose block nobody holds any more is closed; a subscriber's own block
// and its overflow block are told apart.
func TestReconcileOverflow(t *testing.T) {
	m := testMapping(t)
	o, err := mapping.NewOverflow([]netip.Prefix{netip.MustParsePrefix("198.51.100.20/32")}, 1024, 65535, 2016, 2)
	if err != nil {
		t.Fatal(err)
	}
	nat, clock, st := tables(t, loader.Params{Mapping: m, Epoch: 4, Overflow: o})
	now := clock.MonoNow()
	const sub = 7
	own, _ := m.Block(sub)
	// Its own block is active and recorded; overflow block 3 is held with
	// no record; block 5's record is open but nobody holds it.
	if err := nat.SetSubscriber(sub, loader.SubscriberState{Active: 1, ActiveSinceNs: now - uint64(time.Hour), LastActiveNs: now}); err != nil {
		t.Fatal(err)
	}
	claimed := now - uint64(30*time.Minute)
	if err := nat.SetOverflowBlock(loader.OverflowBlock{ID: 3, Subscriber: sub, SinceNs: claimed, LastUsedNs: now}); err != nil {
		t.Fatal(err)
	}
	p5, lo5, hi5, _ := o.Block(5)
	if err := st.Apply([]store.Op{
		{Kind: store.OpActivate, Record: store.Record{Subscriber: sub, Inside: own.Inside, Public: own.Public, PortLo: own.PortLo, PortHi: own.PortHi,
			Start: clock.Wall(now - uint64(time.Hour)), Epoch: 4}},
		{Kind: store.OpActivate, Record: store.Record{Subscriber: 9, Inside: netip.MustParseAddr("100.64.0.9"), Public: p5, PortLo: lo5, PortHi: hi5,
			Start: clock.Wall(now - uint64(2*time.Hour)), Epoch: 4}},
	}); err != nil {
		t.Fatal(err)
	}
	plane := func() Plane { return Plane{Tables: nat, Mapping: m, Overflow: o, Epoch: 4} }
	r := &Reconciler{Plane: plane, Store: st, Records: direct{st}, Clock: clock}
	res, err := r.Once(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if res != (Result{Active: 2, Recovered: 1, Closed: 1}) {
		t.Errorf("result %+v, want 2 active (own and overflow), 1 recovered, 1 closed", res)
	}
	open, err := st.OpenRecords()
	if err != nil {
		t.Fatal(err)
	}
	p3, lo3, hi3, _ := o.Block(3)
	var gotOwn, gotOverflow bool
	for _, rec := range open {
		switch {
		case rec.Public == own.Public && rec.PortLo == own.PortLo:
			gotOwn = rec.Subscriber == sub && rec.Flags&store.FlagRecovered == 0
		case rec.Public == p3 && rec.PortLo == lo3:
			gotOverflow = rec.Subscriber == sub && rec.Inside == own.Inside && rec.PortHi == hi3 && rec.Flags&store.FlagRecovered != 0 &&
				rec.Start.Equal(clock.Wall(claimed).Truncate(time.Millisecond))
			if !gotOverflow {
				t.Errorf("recovered overflow record %+v, want subscriber %d on %s:%d-%d from %s", rec, sub, p3, lo3, hi3, clock.Wall(claimed))
			}
		default:
			t.Errorf("open record %+v should not be", rec)
		}
	}
	if !gotOwn || !gotOverflow {
		t.Errorf("open records %+v: own block kept %v, overflow block recovered %v", open, gotOwn, gotOverflow)
	}
	// Once recovered, the next pass changes nothing.
	if res, err := r.Once(context.Background()); err != nil || res.Recovered+res.Closed != 0 {
		t.Errorf("second pass %+v, %v", res, err)
	}
}

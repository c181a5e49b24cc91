package events

import (
	"context"
	"encoding/binary"
	"errors"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2/vfs"

	"github.com/blocknat/blocknat/loader"
	"github.com/blocknat/blocknat/test/testutil"
	"github.com/blocknat/blocknat/userspace/store"
)

// fakeRing stands in for the ring buffer: the kernel side is proven by the
// loader and end-to-end tests; here the Recorder's batching and ordering
// are the subject.
type fakeRing struct {
	ch     chan []byte
	closed chan struct{}
	once   sync.Once
}

func newFakeRing() *fakeRing {
	return &fakeRing{ch: make(chan []byte, 64), closed: make(chan struct{})}
}

func (f *fakeRing) Read() (loader.BlockEvent, error) {
	var e loader.BlockEvent
	select {
	case b := <-f.ch:
		_, err := binary.Decode(b, binary.NativeEndian, &e)
		return e, err
	case <-f.closed:
		return e, loader.ErrEventsClosed
	}
}

func (f *fakeRing) Close() error { f.once.Do(func() { close(f.closed) }); return nil }

func (f *fakeRing) send(t *testing.T, e loader.BlockEvent) {
	t.Helper()
	b, err := binary.Append(nil, binary.NativeEndian, e)
	if err != nil {
		t.Fatal(err)
	}
	f.ch <- b
}

func be32(a string) uint32 {
	b := netip.MustParseAddr(a).As4()
	return binary.NativeEndian.Uint32(b[:])
}

func event(sub uint32, inside string, mono uint64) loader.BlockEvent {
	return loader.BlockEvent{TimeNs: mono, Subscriber: sub, InsideAddr: be32(inside), PublicAddr: be32("198.51.100.10"),
		PortLo: 2032, PortHi: 2535, Epoch: 3, Kind: loader.BlockEventActivate}
}

type flakySink struct {
	mu   sync.Mutex
	fail bool
	st   *store.Store
}

func (f *flakySink) Apply(ops []store.Op) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.fail {
		return errors.New("disk full")
	}
	return f.st.Apply(ops)
}

func setup(t *testing.T) (*Recorder, *fakeRing, *flakySink, *testutil.Clock, func()) {
	t.Helper()
	clock := testutil.NewClock(time.Date(2026, 11, 20, 12, 0, 0, 0, time.UTC), time.Hour)
	st, err := store.Open("records", store.Options{FS: vfs.NewMem(), Now: clock.Now})
	if err != nil {
		t.Fatal(err)
	}
	sink := &flakySink{st: st}
	rec := NewRecorder(sink, Options{Clock: clock, FlushInterval: 5 * time.Millisecond})
	ring := newFakeRing()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- rec.Run(ctx, ring) }()
	stop := func() {
		cancel()
		if err := <-done; err != nil {
			t.Error(err)
		}
		st.Close()
	}
	return rec, ring, sink, clock, stop
}

// TestEventsBecomeRecords: an activation event becomes an open record
// with the event's time converted to wall time and its epoch.
func TestEventsBecomeRecords(t *testing.T) {
	rec, ring, sink, clock, stop := setup(t)
	defer stop()
	mono := clock.MonoNow() - uint64(time.Second)
	ring.send(t, event(2, "100.64.0.2", mono))
	testutil.Eventually(t, 5*time.Second, func() bool { return rec.Health().RecordsWritten == 1 }, "record")
	got, err := sink.st.Lookup(netip.MustParseAddr("198.51.100.10"), 2100, clock.Now(), 0)
	if err != nil || len(got) != 1 {
		t.Fatalf("lookup: %v %+v", err, got)
	}
	r := got[0]
	if r.Subscriber != 2 || r.Inside != netip.MustParseAddr("100.64.0.2") || !r.Start.Equal(clock.Wall(mono)) || r.Epoch != 3 || !r.Open() {
		t.Errorf("record %+v", r)
	}
}

// TestReleaseAfterLaterActivation: the sweeper released a block at T, but
// the kernel re-activated it after T and that event was read first. The
// block is in use again, so a new record must be open from the event.
func TestReleaseAfterLaterActivation(t *testing.T) {
	rec, ring, sink, clock, stop := setup(t)
	defer stop()
	first := clock.MonoNow()
	ring.send(t, event(2, "100.64.0.2", first))
	testutil.Eventually(t, 5*time.Second, func() bool { return rec.Health().RecordsWritten == 1 }, "first record")
	clock.Advance(10 * time.Minute)
	releaseAt := clock.Now()
	clock.Advance(time.Second)
	again := clock.MonoNow()
	ring.send(t, event(2, "100.64.0.2", again))
	testutil.Eventually(t, 5*time.Second, func() bool { return rec.Health().EventsRead == 2 }, "second event")
	r := store.Record{Subscriber: 2, Public: netip.MustParseAddr("198.51.100.10"), PortLo: 2032, End: releaseAt}
	if err := rec.Submit(context.Background(), []store.Op{{Kind: store.OpRelease, Record: r}}); err != nil {
		t.Fatal(err)
	}
	open, err := sink.st.OpenRecords()
	if err != nil || len(open) != 1 || !open[0].Start.Equal(clock.Wall(again)) {
		t.Fatalf("open records %+v (%v), want one from the second activation at %v", open, err, clock.Wall(again))
	}
	old, _ := sink.st.Lookup(netip.MustParseAddr("198.51.100.10"), 2032, clock.Wall(first).Add(time.Minute), 0)
	if len(old) != 1 || !old[0].End.Equal(releaseAt) {
		t.Errorf("first record %+v, want it closed at %v", old, releaseAt)
	}
}

// TestStoreFailureIsRetried: while the store refuses writes, the Recorder
// reports it and keeps the records; they are written when it recovers.
func TestStoreFailureIsRetried(t *testing.T) {
	rec, ring, sink, clock, stop := setup(t)
	defer stop()
	sink.mu.Lock()
	sink.fail = true
	sink.mu.Unlock()
	ring.send(t, event(2, "100.64.0.2", clock.MonoNow()))
	testutil.Eventually(t, 5*time.Second, func() bool { return rec.Health().Failing }, "failure")
	if h := rec.Health(); h.LastError == "" || h.RecordsWritten != 0 {
		t.Errorf("health while failing: %+v", h)
	}
	sink.mu.Lock()
	sink.fail = false
	sink.mu.Unlock()
	testutil.Eventually(t, 5*time.Second, func() bool { return rec.Health().RecordsWritten == 1 && !rec.Health().Failing }, "recovery")
	if open, _ := sink.st.OpenRecords(); len(open) != 1 {
		t.Errorf("after recovery %d open records, want 1", len(open))
	}
}

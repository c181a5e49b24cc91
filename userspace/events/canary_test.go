package events

import (
	"context"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2/vfs"

	"github.com/blocknat/blocknat/loader"
	"github.com/blocknat/blocknat/test/testutil"
	"github.com/blocknat/blocknat/userspace/store"
)

func canaryEvent(seq uint32, mono uint64) loader.BlockEvent {
	return loader.BlockEvent{TimeNs: mono, Subscriber: seq, Epoch: 3, Kind: loader.BlockEventCanary}
}

// TestCanaryWrittenApartFromRecords: a canary event becomes a canary in
// the store, found by its sequence number at the event's time; it opens no
// record, is not counted as one, and exporters never see it, while a
// block event in the same batch reaches them as usual.
func TestCanaryWrittenApartFromRecords(t *testing.T) {
	clock := testutil.NewClock(time.Date(2026, 11, 20, 12, 0, 0, 0, time.UTC), time.Hour)
	st, err := store.Open("records", store.Options{FS: vfs.NewMem(), Now: clock.Now})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	var mu sync.Mutex
	var observed []store.Op
	rec := NewRecorder(st, Options{Clock: clock, FlushInterval: time.Hour, BatchSize: 2, Observers: []func([]store.Op){
		func(ops []store.Op) { mu.Lock(); observed = append(observed, ops...); mu.Unlock() },
	}})
	ring := newFakeRing()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- rec.Run(ctx, ring) }()

	mono := clock.MonoNow()
	// BatchSize 2 and no timer: the two events are committed together.
	ring.send(t, canaryEvent(77, mono))
	ring.send(t, event(2, "100.64.0.2", mono))
	testutil.Eventually(t, 5*time.Second, func() bool { return rec.Health().RecordsWritten == 1 }, "batch")
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}

	c, err := st.Canary(77, clock.Wall(mono))
	if err != nil {
		t.Fatalf("canary 77 not in the store: %v", err)
	}
	if !c.Time.Equal(clock.Wall(mono)) || c.Epoch != 3 {
		t.Errorf("canary %+v, want time %v epoch 3", c, clock.Wall(mono))
	}
	open, err := st.OpenRecords()
	if err != nil || len(open) != 1 || open[0].Subscriber != 2 {
		t.Errorf("open records %+v (%v), want subscriber 2's only", open, err)
	}
	h := rec.Health()
	if h.RecordsWritten != 1 || h.EventsRead != 1 || h.CanariesRead != 1 {
		t.Errorf("health %+v: want 1 record, 1 block event and 1 canary", h)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(observed) != 1 || observed[0].Kind != store.OpActivate || observed[0].Record.Inside != netip.MustParseAddr("100.64.0.2") {
		t.Errorf("observers saw %+v, want only subscriber 2's activation", observed)
	}
}

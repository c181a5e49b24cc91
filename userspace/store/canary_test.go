package store

import (
	"errors"
	"net/netip"
	"testing"
	"time"
)

// TestCanaryFoundAndNeverASubscriber: a canary written with block records
// in one batch is found by its sequence number, and no read that answers
// about subscribers (lookup, history, export, open records, stats) ever
// returns or counts it.
func TestCanaryFoundAndNeverASubscriber(t *testing.T) {
	t0 := time.Date(2026, 11, 20, 12, 0, 0, 0, time.UTC)
	c := newClock(t0.Add(time.Minute))
	s, _ := openMem(t, c)
	mustApply(t, s,
		activate(5, "100.64.0.7", "198.51.100.10", 2032, 2535, t0, 3),
		Op{Kind: OpCanary, Canary: Canary{Seq: 41, Time: t0.Add(time.Second), Epoch: 3}},
		Op{Kind: OpCanary, Canary: Canary{Seq: 0, Time: t0.Add(2 * time.Second), Epoch: 3}},
	)

	got, err := s.Canary(41, t0)
	if err != nil {
		t.Fatal(err)
	}
	if got != (Canary{Seq: 41, Time: t0.Add(time.Second), Epoch: 3}) {
		t.Errorf("canary %+v", got)
	}
	if _, err := s.Canary(42, t0); !errors.Is(err, ErrNotFound) {
		t.Errorf("canary 42 never written: err %v, want ErrNotFound", err)
	}
	if _, err := s.Canary(41, t0.Add(1500*time.Millisecond)); !errors.Is(err, ErrNotFound) {
		t.Errorf("canary 41 asked for after its time: err %v, want ErrNotFound", err)
	}

	open, err := s.OpenRecords()
	if err != nil || len(open) != 1 || open[0].Subscriber != 5 {
		t.Errorf("open records %v (%v), want only subscriber 5's", recStrings(open), err)
	}
	if all := exportAll(t, s); len(all) != 1 || all[0].Subscriber != 5 {
		t.Errorf("export %v, want only subscriber 5's record", recStrings(all))
	}
	// A canary's addresses and ports are zero: the only place a lookup
	// could confuse it with a subscriber.
	zero := netip.AddrFrom4([4]byte{})
	for _, port := range []uint16{0, 41} {
		if recs, err := s.Lookup(zero, port, t0.Add(time.Second), time.Hour); err != nil || len(recs) != 0 {
			t.Errorf("lookup 0.0.0.0:%d = %v (%v), want nothing", port, recStrings(recs), err)
		}
	}
	if recs, err := s.History(zero, t0.Add(-time.Hour), t0.Add(time.Hour)); err != nil || len(recs) != 0 {
		t.Errorf("history of 0.0.0.0 = %v (%v), want nothing", recStrings(recs), err)
	}
	if st, err := s.Stats(); err != nil || st.OpenRecords != 1 || st.Partitions != 0 {
		t.Errorf("stats %+v (%v): canaries counted as records", st, err)
	}
	if recs, err := s.Lookup(netip.MustParseAddr("198.51.100.10"), 2100, t0.Add(time.Second), 0); err != nil || len(recs) != 1 {
		t.Errorf("lookup of the real block = %v (%v), want subscriber 5", recStrings(recs), err)
	}
}

// TestCanaryOldOnesDeleted: a canary write removes canaries more than
// canaryKeep older than itself, and keeps the recent ones.
func TestCanaryOldOnesDeleted(t *testing.T) {
	t0 := time.Date(2026, 11, 20, 12, 0, 0, 0, time.UTC)
	c := newClock(t0)
	s, _ := openMem(t, c)
	for i, at := range []time.Duration{0, time.Minute, canaryKeep + 30*time.Second} {
		c.Set(t0.Add(at))
		mustApply(t, s, Op{Kind: OpCanary, Canary: Canary{Seq: uint32(i + 1), Time: t0.Add(at), Epoch: 1}})
	}
	if _, err := s.Canary(1, time.Time{}); !errors.Is(err, ErrNotFound) {
		t.Errorf("canary 1 is %s older than the newest: err %v, want it deleted", canaryKeep+30*time.Second, err)
	}
	for _, seq := range []uint32{2, 3} {
		if _, err := s.Canary(seq, time.Time{}); err != nil {
			t.Errorf("canary %d: %v, want it kept", seq, err)
		}
	}
}

// TestCanaryRefusesBadTime: a canary from a broken clock fails the whole
// batch, like any invalid op.
func TestCanaryRefusesBadTime(t *testing.T) {
	t0 := time.Date(2026, 11, 20, 12, 0, 0, 0, time.UTC)
	s, _ := openMem(t, newClock(t0))
	err := s.Apply([]Op{
		activate(5, "100.64.0.7", "198.51.100.10", 2032, 2535, t0, 3),
		{Kind: OpCanary, Canary: Canary{Seq: 1}},
	})
	if !errors.Is(err, ErrInvalid) {
		t.Fatalf("canary without a time: err %v, want ErrInvalid", err)
	}
	if open, _ := s.OpenRecords(); len(open) != 0 {
		t.Errorf("a refused batch wrote %v", recStrings(open))
	}
}

package store

import (
	"errors"
	"net/netip"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2/vfs"
)

var t0 = time.Date(2026, 11, 20, 12, 0, 0, 0, time.UTC)

func lookup(t *testing.T, s *Store, ip string, port uint16, at time.Time, tol time.Duration) []Record {
	t.Helper()
	got, err := s.Lookup(netip.MustParseAddr(ip), port, at, tol)
	if err != nil {
		t.Fatalf("Lookup(%s:%d at %s ±%s): %v", ip, port, at.Format(time.RFC3339Nano), tol, err)
	}
	return got
}

func TestLookupBoundaries(t *testing.T) {
	c := newClock(t0.Add(time.Hour))
	s, _ := openMem(t, c)
	start, end := t0, t0.Add(10*time.Minute)
	mustApply(t, s, activate(7, "100.64.0.7", "198.51.100.7", 15000, 15999, start, 1))
	mustApply(t, s, release(7, "198.51.100.7", 15000, end))

	want := recString(Record{Subscriber: 7, Inside: netip.MustParseAddr("100.64.0.7"), Public: netip.MustParseAddr("198.51.100.7"),
		PortLo: 15000, PortHi: 15999, Start: start, End: end, Epoch: 1})
	for _, tc := range []struct {
		name  string
		port  uint16
		at    time.Time
		found bool
	}{
		{"at start", 15123, start, true},
		{"at end", 15123, end, true},
		{"inside", 15123, start.Add(5 * time.Minute), true},
		{"end+1ms", 15123, end.Add(time.Millisecond), false},
		{"start-1ms", 15123, start.Add(-time.Millisecond), false},
		{"port_lo", 15000, start, true},
		{"port_hi", 15999, start, true},
		{"port_lo-1", 14999, start, false},
		{"port_hi+1", 16000, start, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := lookup(t, s, "198.51.100.7", tc.port, tc.at, 0)
			if !tc.found {
				if len(got) != 0 {
					t.Fatalf("want nothing, got %v", recStrings(got))
				}
				return
			}
			if len(got) != 1 || recString(got[0]) != want {
				t.Fatalf("want [%s], got %v", want, recStrings(got))
			}
		})
	}
	if got := lookup(t, s, "198.51.100.8", 15123, start, 0); len(got) != 0 {
		t.Fatalf("other address: got %v", recStrings(got))
	}
}

// Two subscribers use the same block one after the other, as after a
// reassignment; each side of the boundary names one subscriber, and a
// tolerance across it names both with their intervals.
func TestReassignmentAndTolerance(t *testing.T) {
	c := newClock(t0.Add(24 * time.Hour))
	s, _ := openMem(t, c)
	aEnd := t0.Add(time.Hour)
	bStart := aEnd.Add(500 * time.Millisecond)
	bEnd := bStart.Add(time.Hour)
	mustApply(t, s,
		activate(1, "100.64.0.1", "198.51.100.1", 2048, 3071, t0, 1),
		release(1, "198.51.100.1", 2048, aEnd),
		activate(2, "100.64.0.2", "198.51.100.1", 2048, 3071, bStart, 2),
	)
	mustApply(t, s, release(2, "198.51.100.1", 2048, bEnd))

	subs := func(rs []Record) []uint32 {
		var out []uint32
		for _, r := range rs {
			out = append(out, r.Subscriber)
		}
		return out
	}
	check := func(at time.Time, tol time.Duration, want ...uint32) {
		t.Helper()
		got := lookup(t, s, "198.51.100.1", 2500, at, tol)
		if g := subs(got); len(g) != len(want) || (len(g) > 0 && !equalU32(g, want)) {
			t.Fatalf("at %s ±%s: got subscribers %v (%v), want %v", at.Format(time.RFC3339Nano), tol, g, recStrings(got), want)
		}
	}
	check(aEnd, 0, 1)
	check(aEnd.Add(time.Millisecond), 0)
	check(bStart, 0, 2)
	check(bStart.Add(-time.Millisecond), 0)
	check(aEnd.Add(250*time.Millisecond), 0)
	check(aEnd.Add(250*time.Millisecond), 250*time.Millisecond, 1, 2)
	check(aEnd.Add(250*time.Millisecond), 249*time.Millisecond)
	got := lookup(t, s, "198.51.100.1", 2500, aEnd.Add(250*time.Millisecond), time.Second)
	if len(got) != 2 || !got[0].End.Equal(aEnd) || !got[1].Start.Equal(bStart) || !got[1].End.Equal(bEnd) {
		t.Fatalf("candidates must carry their intervals: %v", recStrings(got))
	}
}

func equalU32(a, b []uint32) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

func TestOpenRecordAnswersUntilNow(t *testing.T) {
	c := newClock(t0.Add(3 * 24 * time.Hour))
	s, _ := openMem(t, c)
	mustApply(t, s, activate(3, "100.64.0.3", "198.51.100.3", 1024, 2047, t0, 4))
	for _, at := range []time.Time{t0, t0.Add(36 * time.Hour), c.Now()} {
		got := lookup(t, s, "198.51.100.3", 1500, at, 0)
		if len(got) != 1 || !got[0].Open() || got[0].Subscriber != 3 {
			t.Fatalf("at %s: got %v", at, recStrings(got))
		}
	}
	if got := lookup(t, s, "198.51.100.3", 1500, c.Now().Add(time.Millisecond), 0); len(got) != 0 {
		t.Fatalf("after now: got %v", recStrings(got))
	}
	open, err := s.OpenRecords()
	if err != nil || len(open) != 1 || open[0].Subscriber != 3 {
		t.Fatalf("Open() = %v, %v", recStrings(open), err)
	}
	end := c.Now()
	mustApply(t, s, release(3, "198.51.100.3", 1024, end))
	if open, _ := s.OpenRecords(); len(open) != 0 {
		t.Fatalf("Open() after release = %v", recStrings(open))
	}
	// The released record was carried into every day it covered.
	for at := t0; !at.After(end); at = at.Add(12 * time.Hour) {
		got := lookup(t, s, "198.51.100.3", 1500, at, 0)
		if len(got) != 1 || !got[0].End.Equal(end) {
			t.Fatalf("after release, at %s: got %v", at, recStrings(got))
		}
	}
	// A window spanning all days still returns the record once.
	if got := lookup(t, s, "198.51.100.3", 1500, t0.Add(36*time.Hour), 48*time.Hour); len(got) != 1 {
		t.Fatalf("wide window: got %v", recStrings(got))
	}
}

func TestActivateTwiceKeepsEarliestStart(t *testing.T) {
	c := newClock(t0.Add(time.Hour))
	s, _ := openMem(t, c)
	recovered := activate(5, "100.64.0.5", "198.51.100.5", 4096, 5119, t0.Add(10*time.Minute), 1)
	recovered.Record.Flags = FlagRecovered
	mustApply(t, s, recovered)
	mustApply(t, s, activate(5, "100.64.0.5", "198.51.100.5", 4096, 5119, t0.Add(20*time.Minute), 1)) // later: ignored
	open, _ := s.OpenRecords()
	if len(open) != 1 || !open[0].Start.Equal(t0.Add(10*time.Minute)) || open[0].Flags != FlagRecovered {
		t.Fatalf("after later duplicate: %v", recStrings(open))
	}
	mustApply(t, s, activate(5, "100.64.0.5", "198.51.100.5", 4096, 5119, t0, 1)) // earlier: replaces
	open, _ = s.OpenRecords()
	if len(open) != 1 || !open[0].Start.Equal(t0) || open[0].Flags != 0 {
		t.Fatalf("after earlier report: %v", recStrings(open))
	}
	hist, err := s.History(netip.MustParseAddr("100.64.0.5"), t0.Add(-time.Hour), c.Now())
	if err != nil || len(hist) != 1 {
		t.Fatalf("History = %v, %v", recStrings(hist), err)
	}
}

func TestUnmatchedReleaseIsCountedAndSkipped(t *testing.T) {
	c := newClock(t0.Add(time.Hour))
	s, _ := openMem(t, c)
	mustApply(t, s,
		release(9, "198.51.100.9", 1024, t0),
		activate(8, "100.64.0.8", "198.51.100.9", 1024, 2047, t0, 1),
	)
	st, err := s.Stats()
	if err != nil {
		t.Fatal(err)
	}
	if st.UnmatchedReleases != 1 || st.OpenRecords != 1 {
		t.Fatalf("stats = %+v", st)
	}
}

func TestInvalidBatchWritesNothing(t *testing.T) {
	c := newClock(t0.Add(time.Hour))
	s, _ := openMem(t, c)
	good := activate(1, "100.64.0.1", "198.51.100.1", 1024, 2047, t0, 1)
	for name, bad := range map[string]Op{
		"ipv6 public":          activate(2, "100.64.0.2", "2001:db8::1", 1024, 2047, t0, 1),
		"ipv6 inside":          activate(2, "fd00::2", "198.51.100.1", 1024, 2047, t0, 1),
		"ports reversed":       activate(2, "100.64.0.2", "198.51.100.1", 2047, 1024, t0, 1),
		"no start":             activate(2, "100.64.0.2", "198.51.100.1", 1024, 2047, time.Time{}, 1),
		"future start":         activate(2, "100.64.0.2", "198.51.100.1", 1024, 2047, c.Now().Add(25*time.Hour), 1),
		"before 1970":          activate(2, "100.64.0.2", "198.51.100.1", 1024, 2047, time.Unix(-5, 0), 1),
		"release before start": release(1, "198.51.100.1", 1024, t0.Add(-time.Second)),
		"unknown kind":         {Kind: 9, Record: good.Record},
	} {
		t.Run(name, func(t *testing.T) {
			err := s.Apply([]Op{good, bad})
			if !errors.Is(err, ErrInvalid) {
				t.Fatalf("Apply = %v, want ErrInvalid", err)
			}
			if got := lookup(t, s, "198.51.100.1", 1500, t0, time.Hour); len(got) != 0 {
				t.Fatalf("rejected batch left %v", recStrings(got))
			}
		})
	}
}

func TestHistory(t *testing.T) {
	c := newClock(t0.Add(5 * 24 * time.Hour))
	s, _ := openMem(t, c)
	in := "100.64.0.4"
	day := 24 * time.Hour
	mustApply(t, s,
		activate(4, in, "198.51.100.1", 1024, 2047, t0, 1),
		release(4, "198.51.100.1", 1024, t0.Add(2*time.Hour)),
		activate(4, in, "198.51.100.2", 3072, 4095, t0.Add(day), 2),
		release(4, "198.51.100.2", 3072, t0.Add(2*day+time.Hour)),
		activate(4, in, "198.51.100.2", 3072, 4095, t0.Add(3*day), 2),
		activate(6, "100.64.0.6", "198.51.100.1", 1024, 2047, t0.Add(3*time.Hour), 1),
	)
	starts := func(rs []Record) []time.Time {
		var out []time.Time
		for _, r := range rs {
			if r.Subscriber != 4 {
				t.Fatalf("history of %s returned subscriber %d", in, r.Subscriber)
			}
			out = append(out, r.Start)
		}
		return out
	}
	for _, tc := range []struct {
		from, to time.Time
		want     []time.Time
	}{
		{t0, c.Now(), []time.Time{t0, t0.Add(day), t0.Add(3 * day)}},
		{t0.Add(2*time.Hour + 1), t0.Add(day - 1), nil},
		{t0.Add(2 * time.Hour), t0.Add(2 * time.Hour), []time.Time{t0}},
		{t0.Add(2 * day), t0.Add(2 * day), []time.Time{t0.Add(day)}},
		{t0.Add(3 * day), t0.Add(4 * day), []time.Time{t0.Add(3 * day)}},
	} {
		got, err := s.History(netip.MustParseAddr(in), tc.from, tc.to)
		if err != nil {
			t.Fatal(err)
		}
		g := starts(got)
		if len(g) != len(tc.want) {
			t.Fatalf("[%s, %s]: got %v, want starts %v", tc.from, tc.to, recStrings(got), tc.want)
		}
		for i := range g {
			if !g[i].Equal(tc.want[i]) {
				t.Fatalf("[%s, %s]: got %v, want starts %v", tc.from, tc.to, recStrings(got), tc.want)
			}
		}
	}
}

func TestEpochs(t *testing.T) {
	c := newClock(t0.Add(10 * 24 * time.Hour))
	s, _ := openMem(t, c)
	if _, err := s.EpochAt(t0); !errors.Is(err, ErrNotFound) {
		t.Fatalf("EpochAt on empty store = %v, want ErrNotFound", err)
	}
	e1 := Epoch{ID: 1, Start: t0, Recorded: t0, PortLo: 1024, PortHi: 65535, BlockSize: 1008, Ratio: 64,
		Prefixes: []netip.Prefix{netip.MustParsePrefix("100.64.0.0/22")},
		Pool:     []netip.Addr{netip.MustParseAddr("198.51.100.1"), netip.MustParseAddr("198.51.100.2")}}
	e1.Hash[0], e1.Hash[31] = 0xab, 0xcd
	e2 := e1
	e2.ID, e2.Start, e2.Recorded, e2.BlockSize, e2.Ratio = 2, t0.Add(48*time.Hour), t0.Add(48*time.Hour), 504, 128
	for _, e := range []Epoch{e2, e1} {
		if err := s.PutEpoch(e); err != nil {
			t.Fatal(err)
		}
	}
	for _, tc := range []struct {
		at   time.Time
		want uint32
	}{{t0, 1}, {t0.Add(48*time.Hour - 1), 1}, {t0.Add(48 * time.Hour), 2}, {c.Now(), 2}} {
		got, err := s.EpochAt(tc.at)
		if err != nil || got.ID != tc.want {
			t.Fatalf("EpochAt(%s) = %d, %v; want %d", tc.at, got.ID, err, tc.want)
		}
	}
	if _, err := s.EpochAt(t0.Add(-1)); !errors.Is(err, ErrNotFound) {
		t.Fatalf("EpochAt before first = %v", err)
	}
	got, _ := s.EpochAt(t0)
	if got.Ratio != 64 || got.BlockSize != 1008 || got.Hash != e1.Hash || len(got.Pool) != 2 ||
		got.Pool[1] != e1.Pool[1] || got.Prefixes[0] != e1.Prefixes[0] || !got.Recorded.Equal(t0) {
		t.Fatalf("epoch 1 round trip: %+v", got)
	}
	// The daily re-write replaces the copy.
	e1.Recorded = t0.Add(24 * time.Hour)
	if err := s.PutEpoch(e1); err != nil {
		t.Fatal(err)
	}
	all, err := s.Epochs()
	if err != nil || len(all) != 2 || all[0].ID != 1 || !all[0].Recorded.Equal(e1.Recorded) {
		t.Fatalf("Epochs = %+v, %v", all, err)
	}
	bad := e1
	bad.Pool = []netip.Addr{netip.MustParseAddr("2001:db8::1")}
	if err := s.PutEpoch(bad); !errors.Is(err, ErrInvalid) {
		t.Fatalf("PutEpoch with IPv6 pool = %v", err)
	}
}

// An open record that began 400 days ago is not expired by a 365-day
// retention, answers for its whole interval, and after its release keeps
// answering for times before the oldest retained partition.
func TestOpenRecordOlderThanRetentionSurvivesSweep(t *testing.T) {
	day := 24 * time.Hour
	begin := time.Date(2025, 1, 1, 8, 0, 0, 0, time.UTC)
	c := newClock(begin)
	s, _ := openMem(t, c)
	mustApply(t, s,
		activate(1, "100.64.0.1", "198.51.100.1", 1024, 2047, begin, 1), // stays open
		activate(2, "100.64.0.2", "198.51.100.1", 2048, 3071, begin, 1), // closes long ago
		activate(3, "100.64.0.3", "198.51.100.1", 3072, 4095, begin, 1), // closes after the cutoff
		activate(4, "100.64.0.4", "198.51.100.1", 4096, 5119, begin, 1), // open through the sweep, released later
	)
	c.Set(begin.Add(3 * day))
	mustApply(t, s, release(2, "198.51.100.1", 2048, begin.Add(3*day)))
	c.Set(begin.Add(100 * day))
	mustApply(t, s, release(3, "198.51.100.1", 3072, begin.Add(100*day)))
	c.Set(begin.Add(400 * day))
	st, err := s.Sweep(365 * day)
	if err != nil {
		t.Fatal(err)
	}
	if st.ExpiredRecords != 1 {
		t.Fatalf("sweep stats %+v, want 1 expired record", st)
	}
	at := begin.Add(10 * day) // before the cutoff
	if got := lookup(t, s, "198.51.100.1", 1500, at, 0); len(got) != 1 || !got[0].Open() {
		t.Fatalf("open record at %s: %v", at, recStrings(got))
	}
	if got := lookup(t, s, "198.51.100.1", 1500, c.Now(), 0); len(got) != 1 {
		t.Fatalf("open record now: %v", recStrings(got))
	}
	if got := lookup(t, s, "198.51.100.1", 2500, begin.Add(day), 0); len(got) != 0 {
		t.Fatalf("expired record still answers: %v", recStrings(got))
	}
	if got := lookup(t, s, "198.51.100.1", 3500, at, 0); len(got) != 1 || got[0].Subscriber != 3 {
		t.Fatalf("record ending after cutoff, at %s: %v", at, recStrings(got))
	}
	c.Set(begin.Add(401 * day))
	mustApply(t, s, release(4, "198.51.100.1", 4096, c.Now()))
	for _, at := range []time.Time{begin, at, begin.Add(200 * day), c.Now()} {
		if got := lookup(t, s, "198.51.100.1", 4500, at, 0); len(got) != 1 || got[0].Subscriber != 4 || got[0].Open() {
			t.Fatalf("record released after sweep, at %s: %v", at, recStrings(got))
		}
	}
	hist, err := s.History(netip.MustParseAddr("100.64.0.1"), begin, begin.Add(time.Hour))
	if err != nil || len(hist) != 1 {
		t.Fatalf("History of the old open record = %v, %v", recStrings(hist), err)
	}
}

func TestEpochRetention(t *testing.T) {
	day := 24 * time.Hour
	begin := time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)
	c := newClock(begin.Add(100 * day))
	s, _ := openMem(t, c)
	put := func(id uint32, start, recorded time.Time) {
		t.Helper()
		if err := s.PutEpoch(Epoch{ID: id, Start: start, Recorded: recorded, PortLo: 1024, PortHi: 65535}); err != nil {
			t.Fatal(err)
		}
	}
	put(1, begin, begin)                         // named by an open record: kept
	put(2, begin.Add(10*day), begin.Add(10*day)) // superseded, unnamed: deleted
	put(3, begin.Add(20*day), begin.Add(20*day)) // named by a record that outlives the cutoff: kept
	put(4, begin.Add(30*day), begin.Add(30*day)) // named only by an expired record: deleted
	put(5, begin.Add(40*day), begin.Add(60*day)) // recorded after the cutoff: kept
	put(6, begin.Add(45*day), begin.Add(45*day)) // in force at the cutoff: kept
	put(7, begin.Add(70*day), begin.Add(70*day)) // after the cutoff: kept
	c.Set(begin.Add(32 * day))
	mustApply(t, s,
		activate(1, "100.64.0.1", "198.51.100.1", 1024, 2047, begin.Add(time.Hour), 1),
		activate(3, "100.64.0.3", "198.51.100.1", 3072, 4095, begin.Add(21*day), 3),
		activate(4, "100.64.0.4", "198.51.100.1", 4096, 5119, begin.Add(31*day), 4),
	)
	mustApply(t, s, release(4, "198.51.100.1", 4096, begin.Add(32*day)))
	c.Set(begin.Add(80 * day))
	mustApply(t, s, release(3, "198.51.100.1", 3072, begin.Add(79*day)))
	st, err := s.Sweep(30 * day) // cutoff: day 50
	if err != nil {
		t.Fatal(err)
	}
	all, err := s.Epochs()
	if err != nil {
		t.Fatal(err)
	}
	var ids []uint32
	for _, e := range all {
		ids = append(ids, e.ID)
	}
	if !equalU32(ids, []uint32{1, 3, 5, 6, 7}) || st.ExpiredEpochs != 2 {
		t.Fatalf("epochs after sweep: %v (stats %+v), want [1 3 5 6 7]", ids, st)
	}
}

func TestReopenKeepsState(t *testing.T) {
	c := newClock(t0.Add(2 * 24 * time.Hour))
	fs := vfs.NewMem()
	s, err := Open("db", Options{FS: fs, Now: c.Now, Logger: quietLogger()})
	if err != nil {
		t.Fatal(err)
	}
	mustApply(t, s,
		activate(1, "100.64.0.1", "198.51.100.1", 1024, 9999, t0, 1),
		activate(2, "100.64.0.2", "198.51.100.1", 10000, 10099, t0, 1),
		release(2, "198.51.100.1", 10000, t0.Add(time.Hour)),
	)
	before := recStrings(exportAll(t, s))
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Lookup(netip.MustParseAddr("198.51.100.1"), 1024, t0, 0); !errors.Is(err, ErrClosed) {
		t.Fatalf("Lookup after Close = %v", err)
	}
	s, err = Open("db", Options{FS: fs, Now: c.Now, Logger: quietLogger()})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if d := diffLists(recStrings(exportAll(t, s)), before); d != "" {
		t.Fatal(d)
	}
	// The widest block (8976 ports) must still bound the lookup after reopen.
	if got := lookup(t, s, "198.51.100.1", 9999, t0, 0); len(got) != 1 || got[0].Subscriber != 1 {
		t.Fatalf("after reopen: %v", recStrings(got))
	}
	// And the open set: releasing works against the reloaded record.
	mustApply(t, s, release(1, "198.51.100.1", 1024, t0.Add(time.Minute)))
	if open, _ := s.OpenRecords(); len(open) != 0 {
		t.Fatalf("open after release: %v", recStrings(open))
	}
}

// TestRingBufferConfirmsRecovered: the reconciler recovered a block with
// the start the kernel noted; the ring buffer's event for that activation
// arrives afterwards and clears the recovered mark, keeping one record.
func TestRingBufferConfirmsRecovered(t *testing.T) {
	start := time.Date(2026, 11, 20, 10, 0, 0, 0, time.UTC)
	s, _ := openMem(t, newClock(start.Add(time.Hour)))
	rec := Record{Subscriber: 2, Inside: netip.MustParseAddr("100.64.0.2"), Public: netip.MustParseAddr("198.51.100.10"),
		PortLo: 2032, PortHi: 2535, Start: start, Epoch: 1, Flags: FlagRecovered}
	if err := s.Apply([]Op{{Kind: OpActivate, Record: rec}}); err != nil {
		t.Fatal(err)
	}
	later := rec
	later.Start = start.Add(time.Second)
	later.Flags = 0
	confirm := rec
	confirm.Flags = 0
	// A later start does not confirm; the same start does.
	for i, op := range []Record{later, confirm} {
		if err := s.Apply([]Op{{Kind: OpActivate, Record: op}}); err != nil {
			t.Fatal(err)
		}
		open, err := s.OpenRecords()
		if err != nil || len(open) != 1 || !open[0].Start.Equal(start) {
			t.Fatalf("step %d: open %+v (%v), want one record from %v", i, open, err, start)
		}
		wantRecovered := i == 0
		if got := open[0].Flags&FlagRecovered != 0; got != wantRecovered {
			t.Errorf("step %d: recovered=%v, want %v", i, got, wantRecovered)
		}
	}
}

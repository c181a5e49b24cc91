package store

import (
	"errors"
	"math/rand/v2"
	"net/netip"
	"testing"
	"time"
)

func TestLookupInterval(t *testing.T) {
	c := newClock(t0.Add(6 * time.Hour))
	s, _ := openMem(t, c)
	pub := "198.51.100.1"
	mustApply(t, s,
		activate(1, "100.64.0.1", pub, 2048, 3071, t0, 1),
		release(1, pub, 2048, t0.Add(time.Hour)),
		activate(2, "100.64.0.2", pub, 2048, 3071, t0.Add(time.Hour+500*time.Millisecond), 1),
		release(2, pub, 2048, t0.Add(2*time.Hour)),
		activate(3, "100.64.0.3", pub, 2048, 3071, t0.Add(3*time.Hour), 1),
	)
	subs := func(from, to time.Time) []uint32 {
		t.Helper()
		got, err := s.LookupInterval(netip.MustParseAddr(pub), 2500, from, to)
		if err != nil {
			t.Fatalf("LookupInterval [%s, %s]: %v", from, to, err)
		}
		var out []uint32
		for _, r := range got {
			out = append(out, r.Subscriber)
		}
		return out
	}
	for _, tc := range []struct {
		name     string
		from, to time.Duration
		want     []uint32
	}{
		{"one second inside", 30 * time.Minute, 30*time.Minute + time.Second, []uint32{1}},
		{"across the reassignment", 59 * time.Minute, time.Hour + time.Second, []uint32{1, 2}},
		{"in the gap", time.Hour + time.Millisecond, time.Hour + 400*time.Millisecond, nil},
		{"end is inclusive", time.Hour, time.Hour, []uint32{1}},
		{"start is inclusive", 3 * time.Hour, 3 * time.Hour, []uint32{3}},
		{"open record until now", 5 * time.Hour, 6 * time.Hour, []uint32{3}},
		{"everything", -time.Hour, 7 * time.Hour, []uint32{1, 2, 3}},
	} {
		if got := subs(t0.Add(tc.from), t0.Add(tc.to)); !equalU32(got, tc.want) {
			t.Errorf("%s: got %v, want %v", tc.name, got, tc.want)
		}
	}
	for _, r := range [][2]time.Time{{t0, t0.Add(-1)}, {time.Time{}, t0}, {t0, time.Time{}}} {
		if _, err := s.LookupInterval(netip.MustParseAddr(pub), 2500, r[0], r[1]); !errors.Is(err, ErrInvalid) {
			t.Errorf("LookupInterval [%s, %s] = %v, want ErrInvalid", r[0], r[1], err)
		}
	}
}

// TestLookupIsLookupInterval: Lookup(T, d) answers what LookupInterval
// answers for [T-d, T+d], over records spanning days.
func TestLookupIsLookupInterval(t *testing.T) {
	begin := time.Date(2026, 4, 1, 0, 0, 0, 0, time.UTC)
	c := newClock(begin.Add(3 * 24 * time.Hour))
	s, _ := openMem(t, c)
	rng := rand.New(rand.NewPCG(21, 22))
	for d := range 3 {
		applyChunks(t, s, dayOps(rng, 128, 6, begin.Add(time.Duration(d)*24*time.Hour)), 500)
	}
	for range 300 {
		at := begin.Add(time.Duration(rng.Int64N(int64(3 * 24 * time.Hour))))
		tol := []time.Duration{0, time.Second, 30 * time.Minute, 20 * time.Hour}[rng.IntN(4)]
		ip := netip.AddrFrom4([4]byte{198, 51, 100, byte(rng.IntN(2))})
		port := uint16(1024 + rng.IntN(64*1008))
		a, err := s.Lookup(ip, port, at, tol)
		if err != nil {
			t.Fatal(err)
		}
		b, err := s.LookupInterval(ip, port, at.Add(-tol), at.Add(tol))
		if err != nil {
			t.Fatal(err)
		}
		if d := diffLists(recStrings(b), recStrings(a)); d != "" {
			t.Fatalf("%s:%d at %s ±%s:\n%s", ip, port, at, tol, d)
		}
	}
}

func TestNearestRecords(t *testing.T) {
	day := 24 * time.Hour
	begin := time.Date(2026, 5, 1, 0, 0, 0, 0, time.UTC)
	at := func(d int, h time.Duration) time.Time { return begin.Add(time.Duration(d)*day + h) }
	c := newClock(at(8, 0))
	s, _ := openMem(t, c)
	const pub, in = "198.51.100.9", "100.64.0.7"
	rec := func(start, end time.Time) *Record {
		return &Record{Subscriber: 7, Inside: netip.MustParseAddr(in), Public: netip.MustParseAddr(pub),
			PortLo: 4096, PortHi: 5119, Start: start, End: end, Epoch: 1}
	}
	r1 := rec(at(0, 10*time.Hour), at(0, 11*time.Hour))
	r2 := rec(at(0, 20*time.Hour), at(2, 3*time.Hour)) // over three days
	r3 := rec(at(5, 8*time.Hour), at(5, 9*time.Hour))
	r4 := rec(at(6, 12*time.Hour), time.Time{}) // still open
	for _, r := range []*Record{r1, r2, r3} {
		mustApply(t, s, activate(7, in, pub, 4096, 5119, r.Start, 1), release(7, pub, 4096, r.End))
	}
	mustApply(t, s,
		// Another subscriber on the block, and subscriber 7 on another
		// block, between r2 and r3: neither is a neighbour of r2 or r3.
		activate(8, "100.64.0.8", pub, 4096, 5119, at(3, time.Hour), 1),
		release(8, pub, 4096, at(3, 2*time.Hour)),
		activate(7, in, pub, 5120, 6143, at(4, time.Hour), 1),
		release(7, pub, 5120, at(4, 2*time.Hour)),
		activate(7, in, pub, 4096, 5119, r4.Start, 1),
	)
	str := func(r *Record) string {
		if r == nil {
			return "none"
		}
		return recString(*r)
	}
	check := func(when string, from, to time.Time, wantBefore, wantAfter *Record) {
		t.Helper()
		before, after, err := s.NearestRecords(7, netip.MustParseAddr(pub), 4096, from, to)
		if err != nil {
			t.Fatalf("%s: NearestRecords: %v", when, err)
		}
		if str(before) != str(wantBefore) || str(after) != str(wantAfter) {
			t.Fatalf("%s: [%s, %s]:\nbefore %s\n  want %s\nafter  %s\n  want %s", when, from, to,
				str(before), str(wantBefore), str(after), str(wantAfter))
		}
	}
	for _, tc := range []struct {
		name          string
		from, to      time.Time
		before, after *Record
	}{
		{"in the gap between r2 and r3", at(3, 5*time.Hour), at(3, 6*time.Hour), r2, r3},
		{"meeting r1", at(0, 10*time.Hour+30*time.Minute), at(0, 10*time.Hour+40*time.Minute), nil, r2},
		{"meeting r2 on its middle day", at(1, 0), at(1, time.Hour), r1, r3},
		{"from at r1's end meets it", r1.End, r1.End, nil, r2},
		{"a nanosecond after r1's end", r1.End.Add(1), r1.End.Add(1), r1, r2},
		{"to a nanosecond before r3", at(4, 0), r3.Start.Add(-1), r2, r3},
		{"after r3: the open record is next", at(5, 10*time.Hour), at(5, 11*time.Hour), r3, r4},
		{"meeting the open record", at(7, 0), at(7, time.Hour), r3, nil},
		{"before everything", at(-1, 0), at(-1, time.Hour), nil, r1},
		{"meeting everything", at(-1, 0), at(8, 0), nil, nil},
	} {
		check(tc.name, tc.from, tc.to, tc.before, tc.after)
	}
	if b, a, err := s.NearestRecords(9, netip.MustParseAddr(pub), 4096, at(3, 0), at(3, 0)); err != nil || b != nil || a != nil {
		t.Fatalf("a subscriber that never held the block: %s, %s, %v", str(b), str(a), err)
	}
	if _, _, err := s.NearestRecords(7, netip.MustParseAddr(pub), 4096, at(3, 0), at(2, 0)); !errors.Is(err, ErrInvalid) {
		t.Fatalf("reversed range: %v", err)
	}

	// Retention: r1 and r2 ended before the cutoff and are gone, so
	// nothing is before; r3 is still there.
	if _, err := s.Sweep(8*day - 4*day); err != nil {
		t.Fatal(err)
	}
	check("after sweep", at(4, 12*time.Hour), at(4, 13*time.Hour), nil, r3)
	check("after sweep, a range before the cutoff", at(1, 0), at(1, time.Hour), nil, r3)
	check("after sweep, after r3", at(6, 0), at(6, time.Hour), r3, r4)
}

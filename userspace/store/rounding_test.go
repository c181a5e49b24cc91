package store

import (
	"net/netip"
	"slices"
	"testing"
	"time"
)

// TestRoundingIsConservative hands one block from subscriber 1 to
// subscriber 2 inside one timeStep, on a store on disk, once in the middle
// of a day and once across midnight (where rounding End up moves it into
// the next day's partition). The stored intervals contain the true ones
// and are at most a step wider; a lookup at the handover answers both
// holders (the true one is among them whichever it is); a lookup more than
// a step outside a holder's true interval does not answer it.
func TestRoundingIsConservative(t *testing.T) {
	step := time.Duration(timeStep)
	pub := netip.MustParseAddr("198.51.100.9")
	const port = 1500
	for _, tc := range []struct {
		name     string
		handover time.Time // the step in which 1 releases and 2 activates
	}{
		{"midday", time.Date(2026, 6, 1, 12, 0, 0, 0, time.UTC)},
		{"midnight", time.Date(2026, 6, 1, 23, 59, 59, 999_000_000, time.UTC)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			// Times with nanoseconds, as the kernel gives them.
			start1 := tc.handover.Add(-3*time.Hour + 123_457)
			end1 := tc.handover.Add(400_001)   // 0.4 ms into the step
			start2 := tc.handover.Add(700_003) // 0.7 ms into it
			end2 := tc.handover.Add(2*time.Hour + 876_543)
			dir := t.TempDir()
			c := newClock(end2.Add(time.Hour))
			s, err := Open(dir, Options{Now: c.Now, Logger: quietLogger()})
			if err != nil {
				t.Fatal(err)
			}
			mustApply(t, s,
				activate(1, "100.64.0.1", pub.String(), 1024, 2031, start1, 1),
				release(1, pub.String(), 1024, end1))
			mustApply(t, s, activate(2, "100.64.0.2", pub.String(), 1024, 2031, start2, 1))
			mustApply(t, s, release(2, pub.String(), 1024, end2))
			if err := s.Close(); err != nil {
				t.Fatal(err)
			}
			if s, err = Open(dir, Options{Now: c.Now, Logger: quietLogger()}); err != nil {
				t.Fatal(err)
			}
			defer s.Close()

			subs := func(at time.Time) []uint32 {
				t.Helper()
				got, err := s.Lookup(pub, port, at, 0)
				if err != nil {
					t.Fatalf("Lookup at %s: %v", at.Format(time.RFC3339Nano), err)
				}
				var out []uint32
				for _, r := range got {
					out = append(out, r.Subscriber)
				}
				return out
			}
			want := func(at time.Time, subscribers ...uint32) {
				t.Helper()
				if got := subs(at); !slices.Equal(got, subscribers) {
					t.Errorf("Lookup at %s = subscribers %v, want %v", at.Format(time.RFC3339Nano), got, subscribers)
				}
			}

			got, err := s.LookupInterval(pub, port, start1.Add(-time.Hour), end2.Add(time.Hour))
			if err != nil || len(got) != 2 {
				t.Fatalf("LookupInterval = %v, %v; want both records", recStrings(got), err)
			}
			for i, exact := range [][2]time.Time{{start1, end1}, {start2, end2}} {
				r := got[i]
				if r.Start.After(exact[0]) || r.End.Before(exact[1]) {
					t.Errorf("subscriber %d stored [%s, %s], which does not contain its true [%s, %s]", r.Subscriber,
						r.Start.Format(time.RFC3339Nano), r.End.Format(time.RFC3339Nano), exact[0].Format(time.RFC3339Nano), exact[1].Format(time.RFC3339Nano))
				}
				if exact[0].Sub(r.Start) >= step || r.End.Sub(exact[1]) >= step {
					t.Errorf("subscriber %d stored [%s, %s], a step or more wider than its true [%s, %s]", r.Subscriber,
						r.Start.Format(time.RFC3339Nano), r.End.Format(time.RFC3339Nano), exact[0].Format(time.RFC3339Nano), exact[1].Format(time.RFC3339Nano))
				}
			}

			// At the handover, and at each true end of it: both.
			want(tc.handover, 1, 2)
			want(end1, 1, 2)
			want(start2, 1, 2)
			want(tc.handover.Add(step-1), 1, 2)
			// Inside each true interval, away from the handover: one.
			want(start1, 1)
			want(end2, 2)
			want(tc.handover.Add(-time.Hour), 1)
			want(tc.handover.Add(time.Hour), 2)
			// More than a step outside a true interval: not that holder.
			want(start1.Add(-step - 1))
			want(end2.Add(step + 1))
			want(tc.handover.Add(-step-1), 1)
			want(tc.handover.Add(2*step+1), 2)

			// History of the outgoing subscriber right after the
			// handover still names it, from the day partition End
			// was rounded into.
			h, err := s.History(netip.MustParseAddr("100.64.0.1"), tc.handover.Add(step), tc.handover.Add(step))
			if err != nil || len(h) != 1 || h[0].Subscriber != 1 {
				t.Errorf("History of subscriber 1 at the end of its rounded interval = %v, %v; want its record", recStrings(h), err)
			}
		})
	}
}

package audit

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

func TestScan(t *testing.T) {
	tl := openTest(t, Options{CheckpointInterval: -1})
	at := map[uint64]time.Time{}
	appendAt := func(when time.Time) {
		t.Helper()
		tl.clock.Advance(when.Sub(tl.clock.Now()))
		e := tl.appendN(t, 1)[0]
		at[e.Seq] = e.Time
	}
	// Three entries on each of 1-3 March, a minute apart.
	for day := range 3 {
		for i := range 3 {
			appendAt(day0.Add(time.Duration(day)*24*time.Hour + time.Duration(i)*time.Minute))
		}
	}
	// Just after midnight on 4 March, then the clock steps back into 3 March:
	// entry 11 has a 3 March time but sits in the 4 March segment.
	mar4 := time.Date(2026, 3, 4, 0, 0, 30, 0, time.UTC)
	appendAt(mar4)
	appendAt(mar4.Add(-40 * time.Second))
	appendAt(mar4.Add(time.Hour))
	if segs := segments(t, tl.dir); len(segs) != 4 {
		t.Fatalf("segments %v, want 4 days", segs)
	}

	scan := func(from, to time.Time) []uint64 {
		t.Helper()
		var seqs []uint64
		err := tl.Scan(from, to, func(e Entry) error {
			seqs = append(seqs, e.Seq)
			return nil
		})
		if err != nil {
			t.Fatalf("Scan(%v, %v): %v", from, to, err)
		}
		return seqs
	}
	lateMar3 := time.Date(2026, 3, 3, 23, 0, 0, 0, time.UTC)
	mar2 := time.Date(2026, 3, 2, 0, 0, 0, 0, time.UTC)
	cases := []struct {
		name     string
		from, to time.Time
		want     []uint64
	}{
		{"everything", time.Time{}, mar4.Add(24 * time.Hour), []uint64{1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12}},
		{"one day", mar2, mar2.Add(24*time.Hour - time.Nanosecond), []uint64{4, 5, 6}},
		{"bounds are inclusive", at[5], at[7], []uint64{5, 6, 7}},
		{"one instant", at[8], at[8], []uint64{8}},
		{"across a day boundary", at[3], at[4], []uint64{3, 4}},
		{"an entry in a later day's segment", lateMar3, mar4.Add(-time.Nanosecond), []uint64{11}},
		{"seq order, not time order", lateMar3, mar4, []uint64{10, 11}},
		{"before the log", day0.Add(-48 * time.Hour), day0.Add(-time.Nanosecond), nil},
		{"after the log", mar4.Add(2 * time.Hour), mar4.Add(48 * time.Hour), nil},
		{"from after to", at[9], at[1], nil},
	}
	run := func(t *testing.T) {
		for _, tc := range cases {
			if got := scan(tc.from, tc.to); !slices.Equal(got, tc.want) {
				t.Errorf("%s: Scan(%v, %v) = %v, want %v", tc.name, tc.from, tc.to, got, tc.want)
			}
		}
	}
	run(t)
	// Open rebuilds what Scan uses from the files.
	tl.Close()
	tl.reopen(t)
	run(t)

	stop := errors.New("enough")
	var n int
	err := tl.Scan(time.Time{}, mar4.Add(24*time.Hour), func(Entry) error {
		n++
		if n == 2 {
			return stop
		}
		return nil
	})
	if err != stop || n != 2 {
		t.Fatalf("Scan after fn failed: %d calls, %v; want 2 and fn's error", n, err)
	}

	// The segments of other days are not read: garble 1 March's (same size,
	// so that only reading it can tell) and scan the other days.
	seg1 := filepath.Join(tl.dir, segments(t, tl.dir)[0])
	data, err := os.ReadFile(seg1)
	if err != nil {
		t.Fatal(err)
	}
	garbled := bytes.Repeat([]byte("x"), len(data))
	for i := range garbled {
		if data[i] == '\n' {
			garbled[i] = '\n'
		}
	}
	if err := os.WriteFile(seg1, garbled, 0o600); err != nil {
		t.Fatal(err)
	}
	if got := scan(mar2, mar4); !slices.Equal(got, []uint64{4, 5, 6, 7, 8, 9, 10, 11}) {
		t.Fatalf("Scan of 2-4 March with 1 March garbled: %v", got)
	}
	if err := tl.Scan(day0, day0, func(Entry) error { return nil }); err == nil || !strings.Contains(err.Error(), "audit-20260301.jsonl:1") {
		t.Fatalf("Scan of the garbled day: %v; want an error naming its line", err)
	}
	os.WriteFile(seg1, data, 0o600)

	tl.Close()
	if err := tl.Scan(time.Time{}, mar4, func(Entry) error { return nil }); err != ErrClosed {
		t.Fatalf("Scan after Close: %v", err)
	}
}

// Scan leaves out what Sweep removed, also when it runs between segments.
func TestScanDuringSweep(t *testing.T) {
	tl := openTest(t, Options{Retention: 24 * time.Hour, CheckpointInterval: -1})
	for range 3 {
		tl.appendN(t, 2)
		tl.clock.Advance(24 * time.Hour)
	}
	var seqs []uint64
	swept := false
	err := tl.Scan(time.Time{}, day0.Add(72*time.Hour), func(e Entry) error {
		seqs = append(seqs, e.Seq)
		if !swept {
			swept = true
			// 4 March noon: 1 and 2 March are past retention, 3 March not.
			if n, err := tl.Sweep(); err != nil || n != 4 {
				t.Errorf("Sweep from inside fn: %d, %v", n, err)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if want := []uint64{1, 2, 5, 6}; !slices.Equal(seqs, want) {
		t.Fatalf("Scan with a Sweep under way: %v, want %v", seqs, want)
	}
}

package store

import (
	"testing"
	"time"
)

// TestSameBatchReleaseWritesNoOpenKeys: a block activated and released in
// one batch goes straight to its closed record; released in a later batch,
// its open keys are written by the first and deleted by the second.
var batchBegin = time.Date(2026, 5, 1, 0, 0, 0, 0, time.UTC)

func TestSameBatchReleaseWritesNoOpenKeys(t *testing.T) {
	c := newClock(batchBegin.Add(time.Hour))
	s, _ := openMem(t, c)
	openKeyOps := func(ops ...Op) (n int) {
		t.Helper()
		w, err := s.newRecordBatch()
		if err != nil {
			t.Fatal(err)
		}
		defer w.b.Close()
		for i := range ops {
			if err := w.apply(i, &ops[i]); err != nil {
				t.Fatal(err)
			}
		}
		if err := w.writeOpen(); err != nil {
			t.Fatal(err)
		}
		for r := w.b.Reader(); ; {
			_, k, _, ok, err := r.Next()
			if err != nil {
				t.Fatal(err)
			}
			if !ok {
				break
			}
			if k[0] == prefixOpen || k[0] == prefixOpenInside {
				n++
			}
		}
		if err := w.commit(); err != nil {
			t.Fatal(err)
		}
		return n
	}
	a := activate(1, "100.64.0.1", "198.51.100.7", 1024, 2031, batchBegin, 1)
	r := release(1, "198.51.100.7", 1024, batchBegin.Add(time.Minute))
	if n := openKeyOps(a, r); n != 0 {
		t.Fatalf("activation and release in one batch: %d open-key operations, want 0", n)
	}
	a.Record.Start = batchBegin.Add(2 * time.Minute)
	r.Record.End = batchBegin.Add(3 * time.Minute)
	if n := openKeyOps(a); n != 2 {
		t.Fatalf("activation alone: %d open-key operations, want 2 (o and p)", n)
	}
	if n := openKeyOps(r); n != 2 {
		t.Fatalf("its release: %d open-key operations, want 2 (o and p deleted)", n)
	}
	if got := exportAll(t, s); len(got) != 2 || s.openCount.Load() != 0 {
		t.Fatalf("export %v with %d open, want the 2 closed records", recStrings(got), s.openCount.Load())
	}
}

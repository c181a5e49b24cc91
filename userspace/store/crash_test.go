package store

import (
	"fmt"
	"math/rand/v2"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2/vfs"

	"github.com/blocknat/blocknat/test/testutil"
)

// crashWorkload makes batches of activations and releases over a fixed set of
// blocks, tracking the expected store contents after each batch.
type crashWorkload struct {
	rng   *rand.Rand
	clock *testutil.Clock
	m     model
	open  map[int]Record
	next  time.Time
}

func newCrashWorkload(seed uint64, c *testutil.Clock) *crashWorkload {
	return &crashWorkload{rng: rand.New(rand.NewPCG(seed, 7)), clock: c, open: map[int]Record{}, next: c.Now()}
}

func (w *crashWorkload) batch() []Op {
	n := 1 + w.rng.IntN(40)
	ops := make([]Op, 0, n)
	for range n {
		w.next = w.next.Add(time.Duration(1+w.rng.IntN(90_000)) * time.Millisecond)
		sub := w.rng.IntN(200)
		if rec, ok := w.open[sub]; ok {
			ops = append(ops, Op{Kind: OpRelease, Record: Record{Subscriber: rec.Subscriber, Public: rec.Public, PortLo: rec.PortLo, End: w.next}})
			delete(w.open, sub)
			continue
		}
		lo := uint16(1024 + (sub%64)*1008)
		rec := Record{Subscriber: uint32(sub), Inside: netip.AddrFrom4([4]byte{100, 64, byte(sub >> 8), byte(sub)}),
			Public: netip.AddrFrom4([4]byte{198, 51, 100, byte(1 + sub/64)}), PortLo: lo, PortHi: lo + 1007,
			Start: w.next, Epoch: 1}
		ops = append(ops, Op{Kind: OpActivate, Record: rec})
		w.open[sub] = rec
	}
	return ops
}

// state is the canonical form of everything a store holds.
func storeState(t testing.TB, s *Store) string {
	t.Helper()
	open, err := s.OpenRecords()
	if err != nil {
		t.Fatalf("Open(): %v", err)
	}
	return strings.Join(recStrings(exportAll(t, s)), "\n") + "\n--open--\n" + strings.Join(sortedStrings(open), "\n")
}

func modelState(m *model, now time.Time) string {
	var open []Record
	for _, r := range m.recs {
		if r.Open() {
			open = append(open, r)
		}
	}
	return strings.Join(recStrings(m.export(time.Unix(0, 0), time.Date(2200, 1, 1, 0, 0, 0, 0, time.UTC), now)), "\n") +
		"\n--open--\n" + strings.Join(sortedStrings(open), "\n")
}

// TestCrashKeepsAcknowledgedBatches applies batches on a crashable file
// system and, at intervals, takes the state a crash would leave (with a
// random share of the unsynced data surviving). Reopened, every
// acknowledged batch must be there.
func TestCrashKeepsAcknowledgedBatches(t *testing.T) {
	for _, seed := range []uint64{1, 2, 3} {
		t.Run(fmt.Sprintf("seed=%d", seed), func(t *testing.T) {
			c := newClock(t0.Add(30 * 24 * time.Hour))
			fs := vfs.NewCrashableMem()
			s, err := Open("db", Options{FS: fs, Now: c.Now, Logger: quietLogger()})
			if err != nil {
				t.Fatal(err)
			}
			defer s.Close()
			w := newCrashWorkload(seed, newClock(t0))
			crashes := 0
			for i := range 60 {
				ops := w.batch()
				if err := s.Apply(ops); err != nil {
					t.Fatalf("Apply: %v", err)
				}
				for _, op := range ops {
					w.m.apply(op)
				}
				if i%6 != 5 {
					continue
				}
				crashes++
				rng := rand.New(rand.NewPCG(seed, uint64(i)))
				clone := fs.CrashClone(vfs.CrashCloneCfg{UnsyncedDataPercent: rng.IntN(101), RNG: rng})
				s2, err := Open("db", Options{FS: clone, Now: c.Now, Logger: quietLogger()})
				if err != nil {
					t.Fatalf("reopen after crash %d: %v", crashes, err)
				}
				got, want := storeState(t, s2), modelState(&w.m, c.Now())
				s2.Close()
				if got != want {
					t.Fatalf("after crash %d (batch %d):\n%s", crashes, i, diffLists(strings.Split(got, "\n"), strings.Split(want, "\n")))
				}
			}
		})
	}
}

// TestCrashDuringApply crashes while another goroutine is committing: the
// clone must hold every batch acknowledged before the crash, and each batch
// either whole or not at all.
func TestCrashDuringApply(t *testing.T) {
	c := newClock(t0.Add(30 * 24 * time.Hour))
	fs := vfs.NewCrashableMem()
	s, err := Open("db", Options{FS: fs, Now: c.Now, Logger: quietLogger()})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	w := newCrashWorkload(11, newClock(t0))
	const batches = 150
	// states[k] is the expected state after k acknowledged batches.
	states := make([]string, 0, batches+1)
	states = append(states, modelState(&w.m, c.Now()))
	var all [][]Op
	for range batches {
		ops := w.batch()
		for _, op := range ops {
			w.m.apply(op)
		}
		all = append(all, ops)
		states = append(states, modelState(&w.m, c.Now()))
	}
	var acked atomic.Int64
	var wg sync.WaitGroup
	errc := make(chan error, 1)
	wg.Add(1)
	go func() {
		defer wg.Done()
		pace := rand.New(rand.NewPCG(11, 13))
		for _, ops := range all {
			time.Sleep(time.Duration(pace.IntN(400)) * time.Microsecond)
			if err := s.Apply(ops); err != nil {
				errc <- err
				return
			}
			acked.Add(1)
		}
	}()
	rng := rand.New(rand.NewPCG(11, 12))
	checked := 0
	for acked.Load() < batches && checked < 25 {
		time.Sleep(time.Duration(rng.IntN(2000)) * time.Microsecond)
		before := acked.Load()
		clone := fs.CrashClone(vfs.CrashCloneCfg{UnsyncedDataPercent: rng.IntN(101), RNG: rng})
		after := acked.Load()
		s2, err := Open("db", Options{FS: clone, Now: c.Now, Logger: quietLogger()})
		if err != nil {
			t.Fatalf("reopen clone: %v", err)
		}
		got := storeState(t, s2)
		s2.Close()
		match := -1
		for k := before; k <= min(after+1, batches); k++ {
			if states[k] == got {
				match = int(k)
				break
			}
		}
		if match < 0 {
			t.Fatalf("crash with %d..%d batches acknowledged: state matches no prefix in [%d, %d]", before, after, before, after+1)
		}
		checked++
	}
	wg.Wait()
	select {
	case err := <-errc:
		t.Fatalf("Apply: %v", err)
	default:
	}
	if checked < 5 {
		t.Fatalf("only %d crashes taken", checked)
	}
	t.Logf("%d crash clones checked", checked)
}

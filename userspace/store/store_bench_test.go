package store

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"os"
	"slices"
	"sync"
	"testing"
	"time"
)

func TestMain(m *testing.M) {
	code := m.Run()
	if fixture.s != nil {
		fixture.s.Close()
		os.RemoveAll(fixture.dir)
	}
	os.Exit(code)
}

var benchBegin = time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)

// churn produces a steady stream of events: once `target` blocks are open,
// it alternates releasing the oldest open block and activating a new one, so
// the open set keeps its size and every op is a real write.
type churn struct {
	subs   int
	target int
	next   int // next subscriber to activate
	open   []Op
	clock  time.Time
}

func (c *churn) ops(n int) []Op {
	out := make([]Op, 0, n)
	for len(out) < n {
		c.clock = c.clock.Add(time.Millisecond)
		if len(c.open) >= c.target {
			a := c.open[0]
			c.open = c.open[1:]
			out = append(out, Op{Kind: OpRelease, Record: Record{Subscriber: a.Record.Subscriber, Public: a.Record.Public, PortLo: a.Record.PortLo, End: c.clock}})
			continue
		}
		i := c.next % c.subs
		c.next++
		lo := uint16(1024 + (i%64)*1008)
		a := Op{Kind: OpActivate, Record: Record{Subscriber: uint32(i),
			Inside: netip.AddrFrom4([4]byte{100, 64 + byte(i>>16), byte(i >> 8), byte(i)}),
			Public: netip.AddrFrom4([4]byte{198, 51, byte(100 + i/64/256), byte(i / 64 % 256)}),
			PortLo: lo, PortHi: lo + 1007, Start: c.clock, Epoch: 1}}
		c.open = append(c.open, a)
		out = append(out, a)
	}
	return out
}

func benchApply(b *testing.B, batch int) {
	dir := b.TempDir()
	ch := &churn{subs: 100_000, target: 20_000, clock: benchBegin}
	s, err := Open(dir, Options{Now: func() time.Time { return ch.clock }, Logger: quietLogger()})
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	for range ch.target / 1000 { // warm up: the open set reaches its steady size
		if err := s.Apply(ch.ops(1000)); err != nil {
			b.Fatal(err)
		}
	}
	batches := make([][]Op, 64)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if i%len(batches) == 0 {
			b.StopTimer()
			for j := range batches {
				batches[j] = ch.ops(batch)
			}
			b.StartTimer()
		}
		if err := s.Apply(batches[i%len(batches)]); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.N*batch)/b.Elapsed().Seconds(), "records/s")
}

// BenchmarkApplyBatch: 1000 events (half activations, half releases) per
// Sync commit, on a real directory.
func BenchmarkApplyBatch(b *testing.B) { benchApply(b, 1000) }

// BenchmarkApplyPerRecordSync: one event per Sync commit.
func BenchmarkApplyPerRecordSync(b *testing.B) { benchApply(b, 1) }

const (
	fixtureSubs   = 10_000
	fixtureDays   = 30
	fixturePerDay = 5
)

// fixture is a store of fixtureSubs subscribers × fixtureDays days ×
// fixturePerDay closed records each, built once for the read benchmarks.
var fixture struct {
	once    sync.Once
	err     error
	dir     string
	s       *Store
	queries []Record // a sample of the stored records
}

func readFixture(b *testing.B) *Store {
	fixture.once.Do(func() {
		began := time.Now()
		fixture.dir, fixture.err = os.MkdirTemp("", "blocknat-store-bench-")
		if fixture.err != nil {
			return
		}
		now := benchBegin.Add((fixtureDays + 1) * 24 * time.Hour)
		fixture.s, fixture.err = Open(fixture.dir, Options{Now: func() time.Time { return now }, Logger: quietLogger()})
		if fixture.err != nil {
			return
		}
		rng := rand.New(rand.NewPCG(3, 4))
		for d := range fixtureDays {
			ops := dayOps(rng, fixtureSubs, fixturePerDay, benchBegin.Add(time.Duration(d)*24*time.Hour))
			for i := 0; i+1 < len(ops); i += 2 * 97 { // sample about 1 in 97 records
				r := ops[i].Record
				r.End = ops[i+1].Record.End
				fixture.queries = append(fixture.queries, r)
			}
			for len(ops) > 0 {
				k := min(10_000, len(ops))
				if fixture.err = fixture.s.Apply(ops[:k]); fixture.err != nil {
					return
				}
				ops = ops[k:]
			}
		}
		// Settle the LSM as a store that has run for a while would be, so
		// that background compactions of the build do not share the CPU
		// with the measured reads.
		if fixture.err = fixture.s.db.Compact(context.Background(), []byte{0}, []byte{0xff}, true); fixture.err != nil {
			return
		}
		st, err := fixture.s.Stats()
		if err != nil {
			fixture.err = err
			return
		}
		records := fixtureSubs * fixtureDays * fixturePerDay
		fmt.Fprintf(os.Stderr, "read fixture: %d records in %s; %d B on disk (%.1f B/record incl. WAL)\n",
			records, time.Since(began).Round(time.Millisecond), st.DiskBytes, float64(st.DiskBytes)/float64(records))
	})
	if fixture.err != nil {
		b.Fatalf("build read fixture: %v", fixture.err)
	}
	return fixture.s
}

// BenchmarkLookup asks (ip, port, T) for T inside a stored record, so every
// answer has at least that record.
func BenchmarkLookup(b *testing.B) {
	for _, tol := range []time.Duration{0, 30 * time.Second} {
		b.Run(fmt.Sprintf("tolerance=%s", tol), func(b *testing.B) {
			s := readFixture(b)
			rng := rand.New(rand.NewPCG(5, 6))
			lat := latencies{}
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				r := fixture.queries[rng.IntN(len(fixture.queries))]
				at := r.Start.Add(time.Duration(rng.Int64N(int64(r.End.Sub(r.Start)) + 1)))
				port := r.PortLo + uint16(rng.IntN(int(r.PortHi-r.PortLo)+1))
				t0 := time.Now()
				got, err := s.Lookup(r.Public, port, at, tol)
				lat.add(time.Since(t0))
				if err != nil || len(got) == 0 {
					b.Fatalf("Lookup(%s:%d at %s) = %d records, %v", r.Public, port, at, len(got), err)
				}
			}
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "lookups/s")
			lat.report(b)
		})
	}
}

// BenchmarkHistory asks for one subscriber's records over one day.
func BenchmarkHistory(b *testing.B) {
	s := readFixture(b)
	rng := rand.New(rand.NewPCG(7, 8))
	lat := latencies{}
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		r := fixture.queries[rng.IntN(len(fixture.queries))]
		t0 := time.Now()
		got, err := s.History(r.Inside, r.Start.Add(-12*time.Hour), r.Start.Add(12*time.Hour))
		lat.add(time.Since(t0))
		if err != nil || len(got) == 0 {
			b.Fatalf("History(%s) = %d records, %v", r.Inside, len(got), err)
		}
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "queries/s")
	lat.report(b)
}

// latencies collects per-operation times so a benchmark can report the
// tail, which a mean hides.
type latencies []time.Duration

func (l *latencies) add(d time.Duration) { *l = append(*l, d) }

func (l latencies) report(b *testing.B) {
	if len(l) == 0 {
		return
	}
	slices.Sort(l)
	b.ReportMetric(float64(l[len(l)/2].Nanoseconds()), "p50-ns")
	b.ReportMetric(float64(l[len(l)*99/100].Nanoseconds()), "p99-ns")
}

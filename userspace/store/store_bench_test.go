package store

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"os"
	"slices"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/blocknat/blocknat/test/testutil"
)

func TestMain(m *testing.M) {
	code := m.Run()
	if fixture.s != nil {
		fixture.s.Close()
		os.RemoveAll(fixture.dir)
	}
	if year.s != nil {
		year.s.Close()
	}
	if year.dir != "" {
		os.RemoveAll(year.dir)
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

func benchApply(b *testing.B, batch int, outbox bool) {
	dir := b.TempDir()
	ch := &churn{subs: 100_000, target: 20_000, clock: benchBegin}
	s, err := Open(dir, Options{Now: func() time.Time { return ch.clock }, Logger: quietLogger(), Outbox: outbox})
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
	// The replicator sends and acknowledges about every second; the
	// agent commits a batch about every 100 ms under load.
	const ackEvery = 10
	walBefore := s.db.Metrics().WAL.BytesIn
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if outbox && i%ackEvery == 0 {
			// The replicator keeps up: its acknowledgement is part of
			// the outbox's cost.
			st, err := s.OutboxState()
			if err == nil {
				err = s.AckOutbox(st.Last)
			}
			if err != nil {
				b.Fatal(err)
			}
		}
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
	// Bytes logged per event: what the outbox adds to every write,
	// independent of how busy the machine is.
	b.ReportMetric(float64(s.db.Metrics().WAL.BytesIn-walBefore)/float64(b.N*batch), "WAL-B/event")
}

// BenchmarkApplyBatch: 1000 events (half activations, half releases) per
// Sync commit, on a real directory.
func BenchmarkApplyBatch(b *testing.B) { benchApply(b, 1000, false) }

// BenchmarkApplyPerRecordSync: one event per Sync commit.
func BenchmarkApplyPerRecordSync(b *testing.B) { benchApply(b, 1, false) }

// BenchmarkApplyBatchOutbox is BenchmarkApplyBatch with Options.Outbox:
// an outbox event per activation and release in the same batch, and an
// acknowledgement of everything every 10 batches.
func BenchmarkApplyBatchOutbox(b *testing.B) { benchApply(b, 1000, true) }

// BenchmarkApplyPerRecordSyncOutbox is BenchmarkApplyPerRecordSync with
// Options.Outbox.
func BenchmarkApplyPerRecordSyncOutbox(b *testing.B) { benchApply(b, 1, true) }

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

// storedStart is the Start the store keeps for r: rounded down to timeStep.
func storedStart(r Record) time.Time { return r.Start.Truncate(time.Duration(timeStep)) }

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

// The synthetic year: yearSubs subscribers, each activating and releasing
// yearPerDay blocks a day, every day of a year, written through Apply.
const (
	yearSubs   = 10_000
	yearPerDay = 5
	// yearDaysEnv shortens the year, for a smoke run of the benchmarks.
	yearDaysEnv = "BLOCKNAT_BENCH_YEAR_DAYS"
)

// year is the year-scale store, built once by yearFixture. Its clock
// stays an hour past the last day written; the benchmarks that write
// move it on.
var year struct {
	once    sync.Once
	err     error
	dir     string
	s       *Store
	clock   *testutil.Clock
	rng     *rand.Rand
	days    int // days written so far
	span    int // days the fixture was built with: the retention period
	queries []Record
}

func yearDays() (int, error) {
	v := os.Getenv(yearDaysEnv)
	if v == "" {
		return 365, nil
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < 2 {
		return 0, fmt.Errorf("%s=%q: want a number of days, at least 2", yearDaysEnv, v)
	}
	return n, nil
}

// writeYearDay writes day d of the synthetic year in batches of 10 000
// events, one Sync each, moving the clock to an hour past that day. It
// keeps a sample of the day's records as lookup queries when sample is
// set.
func writeYearDay(d int, sample bool) (events int, err error) {
	dayBegin := benchBegin.Add(time.Duration(d) * 24 * time.Hour)
	year.clock.Set(dayBegin.Add(25 * time.Hour))
	ops := dayOps(year.rng, yearSubs, yearPerDay, dayBegin)
	if sample {
		for i := 0; i+1 < len(ops); i += 2 * 997 { // about 1 in 997 records
			r := ops[i].Record
			r.End = ops[i+1].Record.End
			year.queries = append(year.queries, r)
		}
	}
	events = len(ops)
	for len(ops) > 0 {
		k := min(10_000, len(ops))
		if err := year.s.Apply(ops[:k]); err != nil {
			return 0, err
		}
		ops = ops[k:]
	}
	year.days = d + 1
	return events, nil
}

// yearFixture builds the year once and logs what it took: the ingest rate
// at scale, the size on disk and the bytes per subscriber-day.
func yearFixture(b *testing.B) *Store {
	year.once.Do(func() {
		days, err := yearDays()
		if err != nil {
			year.err = err
			return
		}
		year.span = days
		if year.dir, year.err = os.MkdirTemp("", "blocknat-store-year-"); year.err != nil {
			return
		}
		year.clock = newClock(benchBegin)
		year.rng = rand.New(rand.NewPCG(11, 12))
		if year.s, year.err = Open(year.dir, Options{Now: year.clock.Now, Logger: quietLogger()}); year.err != nil {
			return
		}
		began := time.Now()
		events := 0
		for d := range days {
			// Queries come from the later days only, which no
			// retention benchmark reaches.
			n, err := writeYearDay(d, d >= days/2)
			if err != nil {
				year.err = err
				return
			}
			events += n
		}
		ingest := time.Since(began)
		// A store that has run for a year has had its compactions.
		began = time.Now()
		if year.err = year.s.db.Compact(context.Background(), []byte{0}, []byte{0xff}, true); year.err != nil {
			return
		}
		compact := time.Since(began)
		// Right after the compaction, the disk still holds what Pebble
		// is about to delete (the tables the compaction replaced) and
		// what background compactions are writing, anywhere from none
		// to a sixth of the store; that is the compaction's passing
		// cost, not the records'. The size counted is the store's once
		// those are gone, and the first reading is logged beside it.
		atCompact := year.s.db.Metrics().DiskSpaceUsage()
		for deadline := time.Now().Add(time.Minute); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
			m := year.s.db.Metrics()
			if m.Compact.NumInProgress == 0 && m.Table.Local.ObsoleteSize == 0 && m.Table.Local.ZombieSize == 0 && m.WAL.ObsoletePhysicalSize == 0 {
				break
			}
		}
		m := year.s.db.Metrics()
		var tables int64
		for _, l := range m.Levels {
			tables += l.TablesSize
		}
		st, err := year.s.Stats()
		if err != nil {
			year.err = err
			return
		}
		records := events / 2
		// Logged, not printed: go test prints a benchmark's log after
		// its result line, where it cannot split that line in two.
		b.Logf("year fixture: days=%d subscribers=%d records=%d ingest=%s records/s=%.0f events/s=%.0f compact=%s disk-bytes=%d bytes/record=%.1f bytes/subscriber-day=%.1f (sstables=%d wal=%d; right after the compaction disk-bytes=%d bytes/subscriber-day=%.1f)",
			days, yearSubs, records, ingest.Round(time.Millisecond), float64(records)/ingest.Seconds(), float64(events)/ingest.Seconds(),
			compact.Round(time.Millisecond), st.DiskBytes, float64(st.DiskBytes)/float64(records),
			float64(st.DiskBytes)/float64(yearSubs*days), tables, m.WAL.PhysicalSize, atCompact, float64(atCompact)/float64(yearSubs*days))
	})
	if year.err != nil {
		b.Fatalf("build year fixture: %v", year.err)
	}
	return year.s
}

// BenchmarkYear works on a store holding a year of records (see year):
// lookups by (ip, port, T) and by subscriber, with their p50/p99; one more
// day written at that scale; and the daily retention sweep of one day with
// its compaction.
func BenchmarkYear(b *testing.B) {
	b.Run("lookup", func(b *testing.B) {
		s := yearFixture(b)
		rng := rand.New(rand.NewPCG(13, 14))
		lat := latencies{}
		b.ResetTimer()
		for i := 0; i < b.N; i++ {
			r := year.queries[rng.IntN(len(year.queries))]
			at := r.Start.Add(time.Duration(rng.Int64N(int64(r.End.Sub(r.Start)) + 1)))
			port := r.PortLo + uint16(rng.IntN(int(r.PortHi-r.PortLo)+1))
			t0 := time.Now()
			got, err := s.Lookup(r.Public, port, at, 0)
			lat.add(time.Since(t0))
			if err != nil || !slices.ContainsFunc(got, func(g Record) bool { return g.Subscriber == r.Subscriber && g.Start.Equal(storedStart(r)) }) {
				b.Fatalf("Lookup(%s:%d at %s) = %v, %v; want subscriber %d's record", r.Public, port, at, got, err, r.Subscriber)
			}
		}
		b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "lookups/s")
		lat.report(b)
	})
	b.Run("history", func(b *testing.B) {
		s := yearFixture(b)
		rng := rand.New(rand.NewPCG(15, 16))
		lat := latencies{}
		b.ResetTimer()
		for i := 0; i < b.N; i++ {
			r := year.queries[rng.IntN(len(year.queries))]
			t0 := time.Now()
			got, err := s.History(r.Inside, r.Start.Add(-12*time.Hour), r.Start.Add(12*time.Hour))
			lat.add(time.Since(t0))
			if err != nil || !slices.ContainsFunc(got, func(g Record) bool { return g.Start.Equal(storedStart(r)) && g.Public == r.Public }) {
				b.Fatalf("History(%s) = %d records, %v; want the record that started at %s among them", r.Inside, len(got), err, r.Start)
			}
		}
		b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "queries/s")
		lat.report(b)
	})
	b.Run("ingest-day", func(b *testing.B) {
		yearFixture(b)
		events := 0
		b.ResetTimer()
		for i := 0; i < b.N; i++ {
			n, err := writeYearDay(year.days, false)
			if err != nil {
				b.Fatal(err)
			}
			events += n
		}
		b.ReportMetric(float64(events/2)/b.Elapsed().Seconds(), "records/s")
	})
	b.Run("sweep-day", func(b *testing.B) {
		s := yearFixture(b)
		retention := time.Duration(year.span) * 24 * time.Hour
		// Catch up with whatever ingest-day added, so each timed sweep
		// removes exactly one day.
		if _, err := s.Sweep(retention); err != nil {
			b.Fatal(err)
		}
		var bytesBefore, bytesAfter, records float64
		b.ResetTimer()
		for i := 0; i < b.N; i++ {
			// The daily cycle: a new day is written, the oldest expires.
			b.StopTimer()
			if _, err := writeYearDay(year.days, false); err != nil {
				b.Fatal(err)
			}
			b.StartTimer()
			st, err := s.Sweep(retention)
			if err != nil {
				b.Fatal(err)
			}
			if st.Partitions != 1 {
				b.Fatalf("sweep deleted %d day partitions, want 1 (%+v)", st.Partitions, st)
			}
			bytesBefore += float64(st.DiskBytesBefore)
			bytesAfter += float64(st.DiskBytesAfter)
			records += float64(st.ExpiredRecords)
		}
		b.ReportMetric(records/float64(b.N), "records-deleted/op")
		b.ReportMetric((bytesBefore-bytesAfter)/float64(b.N), "bytes-freed/op")
	})
}

// yearLeasesPerDay is how many DHCP leases each inside address of the
// synthetic year goes through a day.
const yearLeasesPerDay = 3

// yearLeases adds the lease history to the year store, once: every retained
// day of the year gets yearLeasesPerDay leases for each subscriber's inside
// address. It is written after the year's records rather than with them so
// that BenchmarkYear keeps measuring a store of records alone.
var yearLeases struct {
	once    sync.Once
	err     error
	queries []Record // year.queries still retained
}

func yearLeaseFixture(b *testing.B) *Store {
	s := yearFixture(b)
	yearLeases.once.Do(func() {
		began := time.Now()
		rng := rand.New(rand.NewPCG(17, 18))
		events := 0
		for d := max(year.days-year.span, 0); d < year.days; d++ {
			evs := dayLeases(rng, yearSubs, yearLeasesPerDay, benchBegin.Add(time.Duration(d)*24*time.Hour))
			events += len(evs)
			for len(evs) > 0 {
				k := min(10_000, len(evs))
				if yearLeases.err = s.ApplyLeases(evs[:k]); yearLeases.err != nil {
					return
				}
				evs = evs[k:]
			}
		}
		ingest := time.Since(began)
		began = time.Now()
		if yearLeases.err = s.db.Compact(context.Background(), []byte{prefixLease}, []byte{prefixLeaseHeldMAC + 1}, true); yearLeases.err != nil {
			return
		}
		st, err := s.Stats()
		if err != nil {
			yearLeases.err = err
			return
		}
		// BenchmarkYear's sweeps may have expired the year's own sample
		// (a shortened year is swept past it at once); sample the newest
		// retained days again then.
		oldest := st.OldestRetained
		for _, r := range year.queries {
			if r.Start.After(oldest) {
				yearLeases.queries = append(yearLeases.queries, r)
			}
		}
		if len(yearLeases.queries) < 100 {
			last := benchBegin.Add(time.Duration(year.days) * 24 * time.Hour)
			n := 0
			yearLeases.err = s.Export(last.Add(-48*time.Hour), last, func(r Record) error {
				if n++; n%997 == 0 && !r.Start.Before(last.Add(-48*time.Hour)) && !r.Open() {
					yearLeases.queries = append(yearLeases.queries, r)
				}
				return nil
			})
			if yearLeases.err != nil {
				return
			}
		}
		leases := events / 2
		b.Logf("year leases: days=%d addresses=%d leases=%d ingest=%s events/s=%.0f compact=%s lease-bytes=%d bytes/lease=%.1f",
			year.span, yearSubs, leases, ingest.Round(time.Millisecond), float64(events)/ingest.Seconds(),
			time.Since(began).Round(time.Millisecond), st.LeaseBytes, float64(st.LeaseBytes)/float64(leases))
	})
	if yearLeases.err != nil {
		b.Fatalf("build year lease fixture: %v", yearLeases.err)
	}
	return s
}

// BenchmarkLookupWithLeases is an investigator's query on a Wi-Fi network
// where an inside address names a device only for its lease: the records
// of (ip, port) over one second, then the leases of each candidate's inside
// address over that candidate's interval, on the year store with its lease
// history (10 000 subscribers, 5 records and 3 leases each a day). One op
// is the whole answer; its p50/p99 are reported.
func BenchmarkLookupWithLeases(b *testing.B) {
	s := yearLeaseFixture(b)
	rng := rand.New(rand.NewPCG(19, 20))
	lat := latencies{}
	leases := 0
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		r := yearLeases.queries[rng.IntN(len(yearLeases.queries))]
		at := r.Start.Add(time.Duration(rng.Int64N(int64(r.End.Sub(r.Start)) + 1)))
		port := r.PortLo + uint16(rng.IntN(int(r.PortHi-r.PortLo)+1))
		t0 := time.Now()
		got, err := s.LookupInterval(r.Public, port, at, at.Add(time.Second))
		if err != nil || !slices.ContainsFunc(got, func(g Record) bool { return g.Subscriber == r.Subscriber && g.Start.Equal(storedStart(r)) }) {
			b.Fatalf("LookupInterval(%s:%d, %s + 1s) = %v, %v; want subscriber %d's record", r.Public, port, at, got, err, r.Subscriber)
		}
		for _, c := range got {
			ls, err := s.LeasesOf(c.Inside, c.Start, c.End)
			if err != nil {
				b.Fatalf("LeasesOf(%s): %v", c.Inside, err)
			}
			leases += len(ls)
		}
		lat.add(time.Since(t0))
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "queries/s")
	b.ReportMetric(float64(leases)/float64(b.N), "leases/op")
	lat.report(b)
}

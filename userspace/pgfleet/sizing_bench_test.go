package pgfleet_test

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/blocknat/blocknat/userspace/pgfleet"
	"github.com/blocknat/blocknat/userspace/store"
)

// The fleet's synthetic year, the router store's (userspace/store,
// BenchmarkYear) on several routers: each router has fleetSubs()
// subscribers, 32 to a public address (blocks of 2016 ports), each
// activating its block five times a day for 50 minutes. Each router has
// its own pool.
const (
	fleetPerAddress  = 32
	fleetBlock       = 2016
	fleetActivations = 5
	fleetHold        = 50 * time.Minute
	fleetBatch       = 1000 // replicate.batch's default
	fleetRouters     = 10
)

// fleetSubsEnv and fleetDaysEnv shrink the fixture (make bench-quick);
// the defaults are the sizing table's 10 000 subscribers a router.
const (
	fleetSubsEnv = "BLOCKNAT_BENCH_FLEET_SUBS"
	fleetDaysEnv = "BLOCKNAT_BENCH_FLEET_DAYS"
)

func envInt(b *testing.B, name string, def int) int {
	v := os.Getenv(name)
	if v == "" {
		return def
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < 1 {
		b.Fatalf("%s=%q: want a positive integer", name, v)
	}
	return n
}

// fleetYearStart is the first day of the synthetic year.
var fleetYearStart = time.Date(2025, 12, 1, 0, 0, 0, 0, time.UTC)

// fleetRecord is subscriber s's k-th record of day d on router r.
func fleetRecord(r, s, d, k int) store.Record {
	a := s / fleetPerAddress
	lo := uint16(1024 + (s%fleetPerAddress)*fleetBlock)
	// Spread the starts over the day, each subscriber shifted by its
	// number so that the day's activations do not all start together.
	start := fleetYearStart.AddDate(0, 0, d).Add(time.Duration(k)*(24*time.Hour/fleetActivations) +
		time.Duration(s%997)*time.Second*3).Truncate(time.Millisecond)
	return store.Record{Subscriber: uint32(s), Inside: netip.AddrFrom4([4]byte{100, 64 + byte(s>>16), byte(s >> 8), byte(s)}),
		Public: netip.AddrFrom4([4]byte{203, byte(r), byte(a >> 8), byte(a)}), PortLo: lo, PortHi: lo + fleetBlock - 1,
		Start: start, End: start.Add(fleetHold), Epoch: 1}
}

// fleetDay is router r's changes of day d: each record's activation and
// release, in time order.
func fleetDay(r, subs, d int) []store.Op {
	ops := make([]store.Op, 0, 2*subs*fleetActivations)
	for k := range fleetActivations {
		for s := range subs {
			rec := fleetRecord(r, s, d, k)
			open := rec
			open.End = time.Time{}
			ops = append(ops, store.Op{Kind: store.OpActivate, Record: open}, store.Op{Kind: store.OpRelease, Record: rec})
		}
	}
	return ops
}

// BenchmarkFleetYear measures, in one run and side by side, what
// docs/scale-out.md's sizing table and BENCHMARKS.md quote:
//
//   - replication throughput: the same changes written into a router's own
//     store (Apply with its outbox, 1000-change batches, as the Recorder
//     commits) and into PostgreSQL (Ingest, replicate.batch 1000, fsync
//     on), in changes a second;
//   - the database's rows and bytes a router-day (tables and indexes, from
//     pg_total_relation_size), from which the year at 1, 10 and 100
//     routers follows: day partitions are independent, so a year is 365
//     such days;
//   - a lookup's p50 and p99 (a port at a time, one second either side) in
//     the router's own store and in the fleet of fleetRouters routers, in
//     a database holding a year of day partitions.
//
// The days of the year outside the sample are partitions without rows: a
// lookup for T reads T's partition only, whose size is the day's whatever
// the rest of the year holds, and the planner still prunes among 365.
func BenchmarkFleetYear(b *testing.B) {
	subs := envInt(b, fleetSubsEnv, 10000)
	days := envInt(b, fleetDaysEnv, 2)
	ctx := context.Background()
	f := newFleet(b)
	owner := f.database(b, "fleet", 0)
	local, err := store.Open(filepath.Join(b.TempDir(), "store"), store.Options{Outbox: true, Logger: quiet,
		Now: func() time.Time { return fleetYearStart.AddDate(0, 0, days+1) }})
	if err != nil {
		b.Fatal(err)
	}
	defer local.Close()

	// A year of day partitions, as the fleet holds after a year.
	for d := range 365 {
		day := int(fleetYearStart.AddDate(0, 0, d).Unix() / 86400)
		f.srv.ExecIn(b, "fleet", fmt.Sprintf("SELECT blocknat.ensure_partition('records', %d)", day))
	}

	var localTime, pgTime time.Duration
	var localEvents, pgEvents int
	for r := range fleetRouters {
		name := fmt.Sprintf("r%02d", r)
		db := f.router(b, name, "fleet")
		seq := uint64(1)
		for d := range days {
			ops := fleetDay(r, subs, d)
			if r == 0 {
				// The router's own store takes the same changes.
				t := time.Now()
				for i := 0; i < len(ops); i += fleetBatch {
					if err := local.Apply(ops[i:min(i+fleetBatch, len(ops))]); err != nil {
						b.Fatal(err)
					}
				}
				localTime += time.Since(t)
				localEvents += len(ops)
			}
			evs := make([]store.OutboxEvent, len(ops))
			for i, op := range ops {
				kind := store.OutboxOpen
				if op.Kind == store.OpRelease {
					kind = store.OutboxClose
				}
				evs[i] = store.OutboxEvent{Seq: seq, Kind: kind, Record: op.Record.AsStored()}
				seq++
			}
			t := time.Now()
			for i := 0; i < len(evs); i += fleetBatch {
				if _, err := db.Ingest(ctx, name, evs[i:min(i+fleetBatch, len(evs))]); err != nil {
					b.Fatal(err)
				}
			}
			pgTime += time.Since(t)
			pgEvents += len(evs)
		}
	}
	f.srv.ExecIn(b, "fleet", "VACUUM ANALYZE")

	rows, bytes := fleetSize(b, f)
	routerDays := int64(fleetRouters * days)
	rowsPerDay, bytesPerDay := float64(rows)/float64(routerDays), float64(bytes)/float64(routerDays)
	// Scaled to the sizing table's 10 000 subscribers a router.
	scale := 10000 / float64(subs)

	rd := owner.Reader(pgfleet.ReaderOptions{Now: func() time.Time { return fleetYearStart.AddDate(0, 0, days+1) }})
	lookup := func(router int, rng *rand.Rand, fn func(ip netip.Addr, port uint16, from, to time.Time) ([]store.Record, error)) (time.Duration, error) {
		rec := fleetRecord(router, rng.IntN(subs), rng.IntN(days), rng.IntN(fleetActivations))
		at := rec.Start.Add(time.Duration(rng.Int64N(int64(fleetHold))))
		t := time.Now()
		got, err := fn(rec.Public, rec.PortLo+uint16(rng.IntN(fleetBlock)), at.Add(-time.Second), at.Add(time.Second))
		d := time.Since(t)
		if err == nil && len(got) != 1 {
			err = fmt.Errorf("lookup of subscriber %d at %s: %d records, want 1", rec.Subscriber, at, len(got))
		}
		return d, err
	}
	var localLat, fleetLat []time.Duration
	rngL, rngF := rand.New(rand.NewPCG(1, 2)), rand.New(rand.NewPCG(3, 4))
	b.ResetTimer()
	for b.Loop() {
		// Side by side, one of each per op, so that the machine's noise
		// falls on both alike.
		d, err := lookup(0, rngL, local.LookupInterval)
		if err != nil {
			b.Fatal(err)
		}
		localLat = append(localLat, d)
		d, err = lookup(rngF.IntN(fleetRouters), rngF, rd.LookupInterval)
		if err != nil {
			b.Fatal(err)
		}
		fleetLat = append(fleetLat, d)
	}
	b.StopTimer()
	us := func(ds []time.Duration, q float64) float64 {
		slices.Sort(ds)
		return float64(ds[int(q*float64(len(ds)-1))]) / 1e3
	}
	localRate, pgRate := float64(localEvents)/localTime.Seconds(), float64(pgEvents)/pgTime.Seconds()
	b.ReportMetric(localRate, "local-changes/s")
	b.ReportMetric(pgRate, "pg-changes/s")
	b.ReportMetric(pgRate/localRate, "pg/local")
	b.ReportMetric(rowsPerDay*scale, "rows/router-day")
	b.ReportMetric(bytesPerDay*scale, "db-bytes/router-day")
	b.ReportMetric(us(localLat, 0.5), "local-p50-µs")
	b.ReportMetric(us(localLat, 0.99), "local-p99-µs")
	b.ReportMetric(us(fleetLat, 0.5), "fleet-p50-µs")
	b.ReportMetric(us(fleetLat, 0.99), "fleet-p99-µs")
	b.Logf("fleet year: %d routers × %d subscribers × %d days sampled in 365 day partitions; rows/router-day %.0f, db bytes/router-day %.0f (scaled to 10 000 subscribers)",
		fleetRouters, subs, days, rowsPerDay*scale, bytesPerDay*scale)
	for _, n := range []int{1, 10, 100} {
		b.Logf("sizing: %3d routers × 10 000 subscribers: %.0f rows a day, %.1f GB a year", n,
			rowsPerDay*scale*float64(n), bytesPerDay*scale*float64(n)*365/1e9)
	}
}

// fleetSize is the rows the records take and their bytes on disk: the
// table, indexes and TOAST of every day partition holding rows, and the
// open records'. The year's partitions without rows are left out: their
// few pages each are the fleet's, not a router-day's.
func fleetSize(b *testing.B, f *fleet) (rows, bytes int64) {
	b.Helper()
	f.query(b, "fleet", func(c *pgx.Conn) error {
		return c.QueryRow(context.Background(), `
			SELECT (SELECT count(*) FROM blocknat.records) + (SELECT count(*) FROM blocknat.open_records),
			       (SELECT coalesce(sum(pg_total_relation_size(i.inhrelid)), 0) FROM pg_inherits i
			         JOIN pg_class c ON c.oid = i.inhrelid
			         WHERE i.inhparent = 'blocknat.records'::regclass AND c.reltuples > 0)
			       + pg_total_relation_size('blocknat.open_records')`).Scan(&rows, &bytes)
	})
	return rows, bytes
}

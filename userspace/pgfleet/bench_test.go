package pgfleet_test

import (
	"context"
	"fmt"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/blocknat/blocknat/userspace/pgfleet"
	"github.com/blocknat/blocknat/userspace/store"
)

// benchStep is the time between two activations in benchEvents: 20 000
// records a day, each block of 200 taken about a hundred times.
const benchStep = 4 * time.Second

// benchEvents returns n outbox events from seq first on: activations and
// releases of blocks, a record closing for every one opened.
func benchEvents(first uint64, n int) []store.OutboxEvent {
	evs := make([]store.OutboxEvent, 0, n)
	for i := range n {
		seq := first + uint64(i)
		sub := int(seq/2) % 4000
		st := t0.Add(time.Duration(seq/2) * benchStep)
		r := record(sub%200, st, st.Add(17*time.Minute)).AsStored()
		r.Subscriber, r.Inside = uint32(sub), inside(sub)
		kind := store.OutboxClose
		if seq%2 == 1 {
			kind, r.End = store.OutboxOpen, time.Time{}
		}
		evs = append(evs, store.OutboxEvent{Seq: seq, Kind: kind, Record: r})
	}
	return evs
}

// BenchmarkIngest is a router's replication into PostgreSQL: batches of
// 500 outbox events, each one call and one commit (fsync on).
func BenchmarkIngest(b *testing.B) {
	const batch = 500
	f := newFleet(b)
	f.database(b, "fleet", 0)
	r1 := f.router(b, "r1", "fleet")
	ctx := context.Background()
	seq := uint64(1)
	b.ResetTimer()
	start := time.Now()
	for b.Loop() {
		evs := benchEvents(seq, batch)
		if _, err := r1.Ingest(ctx, "r1", evs); err != nil {
			b.Fatal(err)
		}
		seq += batch
	}
	b.ReportMetric(float64(seq-1)/time.Since(start).Seconds(), "events/s")
}

// BenchmarkFleetLookup is an investigator's lookup (a port at a time, a
// minute either side) in a fleet of N routers' records, each router with
// 20 000 records over a day in the same pool.
func BenchmarkFleetLookup(b *testing.B) {
	for _, routers := range []int{1, 8} {
		b.Run(fmt.Sprintf("routers=%d", routers), func(b *testing.B) {
			const perRouter = 20000
			f := newFleet(b)
			owner := f.database(b, "fleet", 0)
			for i := range routers {
				name := fmt.Sprintf("r%d", i)
				db := f.router(b, name, "fleet")
				for seq := uint64(1); seq <= 2*perRouter; seq += 2000 {
					if _, err := db.Ingest(context.Background(), name, benchEvents(seq, 2000)); err != nil {
						b.Fatal(err)
					}
				}
			}
			f.srv.ExecIn(b, "fleet", "VACUUM ANALYZE") // hint bits set, as on a database that has been running
			rd := owner.Reader(pgfleet.ReaderOptions{Now: func() time.Time { return t0.Add(48 * time.Hour) }})
			rng := rand.New(rand.NewPCG(1, 2))
			found := 0
			b.ResetTimer()
			for b.Loop() {
				lo, _ := block(rng.IntN(200))
				at := t0.Add(time.Duration(rng.Int64N(int64(perRouter * benchStep))))
				got, err := rd.LookupInterval(pub, lo+uint16(rng.IntN(256)), at.Add(-time.Minute), at.Add(time.Minute))
				if err != nil {
					b.Fatal(err)
				}
				found += len(got)
			}
			b.ReportMetric(float64(found)/float64(b.N), "records/lookup")
		})
	}
}

package metrics

import (
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/blocknat/blocknat/userspace/events"
	"github.com/blocknat/blocknat/userspace/store"
)

// Writes times the record store's commits. The Recorder writes through it
// (it is an events.Sink), so every batch of records, canaries included, is
// measured where it meets the disk.
type Writes struct {
	next    events.Sink
	seconds prometheus.Histogram

	count, errors atomic.Uint64
	totalNS       atomic.Int64
	lastNS        atomic.Int64
	maxNS         atomic.Int64
}

// WriteStats summarise the commits since the agent started.
type WriteStats struct {
	Count  uint64        // commits attempted
	Errors uint64        // commits that failed
	Mean   time.Duration // of all commits
	Last   time.Duration
	Max    time.Duration
}

// NewWrites wraps next.
func NewWrites(next events.Sink) *Writes {
	return &Writes{
		next: next,
		seconds: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: StoreWriteSeconds,
			Help: "Time one record store commit (a Sync batch) took, failed ones included.",
			// 250µs to about 8s: an fsync on a healthy SSD is well under a
			// millisecond, and anything in seconds is a disk in trouble.
			Buckets: prometheus.ExponentialBuckets(0.00025, 2, 16),
		}),
	}
}

// Apply commits ops through the wrapped sink and times it.
func (w *Writes) Apply(ops []store.Op) error {
	start := time.Now()
	err := w.next.Apply(ops)
	d := time.Since(start)
	w.seconds.Observe(d.Seconds())
	w.count.Add(1)
	if err != nil {
		w.errors.Add(1)
	}
	w.totalNS.Add(int64(d))
	w.lastNS.Store(int64(d))
	for {
		m := w.maxNS.Load()
		if int64(d) <= m || w.maxNS.CompareAndSwap(m, int64(d)) {
			break
		}
	}
	return err
}

// Stats returns the commits' summary.
func (w *Writes) Stats() WriteStats {
	st := WriteStats{Count: w.count.Load(), Errors: w.errors.Load(), Last: time.Duration(w.lastNS.Load()), Max: time.Duration(w.maxNS.Load())}
	if st.Count > 0 {
		st.Mean = time.Duration(w.totalNS.Load() / int64(st.Count))
	}
	return st
}

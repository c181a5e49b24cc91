package agent

import (
	"context"
	"log/slog"
	"sync"
	"time"

	"github.com/blocknat/blocknat/userspace/clockstate"
	"github.com/blocknat/blocknat/userspace/config"
	"github.com/blocknat/blocknat/userspace/logattr"
	"github.com/blocknat/blocknat/userspace/metrics"
	"github.com/blocknat/blocknat/userspace/store"
	"github.com/blocknat/blocknat/userspace/wire"
)

// clockWatch reads the kernel's clock-synchronisation state: at start,
// every selfcheck.interval, and whenever the agent records an epoch or
// answers a lookup, which then state the clock they rest on. The last
// read is what the metrics, the alarm and `blocknat status` show.
type clockWatch struct {
	reader clockstate.Reader
	log    *slog.Logger

	mu   sync.Mutex
	last metrics.ClockFigures
}

func newClockWatch(reader clockstate.Reader, bound time.Duration, log *slog.Logger) *clockWatch {
	return &clockWatch{reader: reader, log: log, last: metrics.ClockFigures{Bound: bound}}
}

// clockInterval is how often the clock is read when nothing else reads it:
// with the self-check, or every default interval when the self-check is
// off, since a clock that loses its time source is its own alarm.
func clockInterval(cfg *config.Config) time.Duration {
	if iv := time.Duration(cfg.SelfCheck.Interval); iv > 0 {
		return iv
	}
	return config.DefaultSelfCheckInterval
}

// run reads the clock at once, then every interval, until ctx ends.
func (w *clockWatch) run(ctx context.Context, interval time.Duration) {
	tick := time.NewTicker(interval)
	defer tick.Stop()
	for {
		w.read()
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
	}
}

// setBound applies a reloaded selfcheck.clock_max_error.
func (w *clockWatch) setBound(bound time.Duration) {
	if w == nil {
		return
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	w.last.Bound = bound
}

// read asks the kernel, keeps the state as the last one, and logs when
// the clock starts or stops raising the alarm.
func (w *clockWatch) read() metrics.ClockFigures {
	if w == nil {
		return metrics.ClockFigures{}
	}
	st, err := w.reader.Read()
	w.mu.Lock()
	defer w.mu.Unlock()
	was := w.last.Problem()
	w.last.State, w.last.Err = st, ""
	if err != nil {
		w.last.Err = err.Error()
	}
	switch now := w.last.Problem(); {
	case now != "" && now != was:
		w.log.Error("the clock records and answers rest on cannot be vouched for", logattr.Problem, now)
	case now == "" && was != "":
		w.log.Info("the clock is synchronised again", "estimated_error", st.EstimatedError.String())
	}
	return w.last
}

// figures is the last read, for a snapshot.
func (w *clockWatch) figures() metrics.ClockFigures {
	if w == nil {
		return metrics.ClockFigures{}
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.last
}

// forEpoch reads the clock for an epoch about to be recorded.
func (w *clockWatch) forEpoch() *store.EpochClock {
	if w == nil {
		return nil
	}
	f := w.read()
	if f.Err != "" {
		return &store.EpochClock{Unreadable: true, ReadAt: f.State.ReadAt}
	}
	s := f.State
	// The store keeps microseconds, as the kernel does.
	return &store.EpochClock{Synchronised: s.Synchronised, EstimatedError: s.EstimatedError, MaxError: s.MaxError, ReadAt: s.ReadAt}
}

// forAnswer reads the clock for a lookup's answer.
func (w *clockWatch) forAnswer() *wire.ClockState {
	if w == nil {
		return nil
	}
	c := clockStateOf(w.read())
	return &c
}

func clockStateOf(f metrics.ClockFigures) wire.ClockState {
	if f.Err != "" {
		return wire.ClockState{ReadAt: f.State.ReadAt.UTC(), Error: f.Err}
	}
	if f.State.ReadAt.IsZero() {
		return wire.ClockState{}
	}
	s := f.State
	return wire.ClockState{Synchronised: s.Synchronised, EstimatedError: s.EstimatedError.String(), MaxError: s.MaxError.String(),
		ReadAt: s.ReadAt.UTC()}
}

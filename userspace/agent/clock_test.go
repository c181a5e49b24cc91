package agent

import (
	"bytes"
	"errors"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/blocknat/blocknat/userspace/clockstate"
	"github.com/blocknat/blocknat/userspace/metrics"
)

// fakeClock is a clockstate.Reader that reports what the test sets.
type fakeClock struct {
	state clockstate.State
	err   error
}

func (f *fakeClock) Read() (clockstate.State, error) {
	s := f.state
	s.ReadAt = time.Now()
	return s, f.err
}

// TestClockWatchAlarm: a synchronised clock within the bound raises no
// alarm; one over the bound, unsynchronised or unreadable does, with a
// sentence saying which and one error logged when it starts; the next good
// read clears it; and the epoch and answer copies say what was read.
func TestClockWatchAlarm(t *testing.T) {
	var logs bytes.Buffer
	reader := &fakeClock{state: clockstate.State{Synchronised: true, EstimatedError: 12 * time.Millisecond, MaxError: 30 * time.Millisecond}}
	w := newClockWatch(reader, 100*time.Millisecond, slog.New(slog.NewTextHandler(&logs, nil)))
	alarm := func() string { return strings.Join(metrics.Snapshot{Clock: w.figures()}.Alarms(), "; ") }
	noAlarm := func(what string) {
		t.Helper()
		if a := (metrics.Snapshot{Clock: w.figures()}).Alarms(); len(a) != 0 {
			t.Errorf("%s: alarm %q", what, a)
		}
	}

	noAlarm("before the first read")
	w.read()
	noAlarm("synchronised within 12ms")
	if e := w.forEpoch(); e == nil || !e.Synchronised || e.EstimatedError != 12*time.Millisecond || e.MaxError != 30*time.Millisecond || e.ReadAt.IsZero() {
		t.Errorf("epoch clock %+v", e)
	}
	if a := w.forAnswer(); a == nil || a.Sentence() != "synchronised within 12 ms" {
		t.Errorf("answer clock %+v", a)
	}

	reader.state.EstimatedError = 250 * time.Millisecond
	w.read()
	if a := alarm(); !strings.Contains(a, "250 ms is above selfcheck.clock_max_error 100 ms") {
		t.Errorf("over the bound: alarm %q", a)
	}
	w.read() // still over: not logged again
	if n := strings.Count(logs.String(), "level=ERROR"); n != 1 {
		t.Errorf("%d errors logged for one stretch over the bound:\n%s", n, logs.String())
	}
	w.setBound(time.Second)
	noAlarm("250ms within a reloaded bound of 1s")

	reader.state.Synchronised = false
	w.read()
	if a := alarm(); !strings.Contains(a, "not synchronised") {
		t.Errorf("unsynchronised: alarm %q", a)
	}
	if e := w.forEpoch(); e.Synchronised || e.Unreadable {
		t.Errorf("epoch clock of an unsynchronised clock %+v", e)
	}
	w.setBound(0)
	noAlarm("unsynchronised with clock_max_error 0")
	w.setBound(time.Second)

	reader.err = errors.New("adjtimex: operation not permitted")
	w.read()
	if a := alarm(); !strings.Contains(a, "unreadable") {
		t.Errorf("unreadable: alarm %q", a)
	}
	if e := w.forEpoch(); !e.Unreadable {
		t.Errorf("epoch clock of an unreadable clock %+v", e)
	}
	if a := w.forAnswer(); a.Error == "" || !strings.Contains(a.Sentence(), "unknown") {
		t.Errorf("answer clock of an unreadable clock %+v", a)
	}

	reader.err, reader.state.Synchronised, reader.state.EstimatedError = nil, true, time.Millisecond
	w.read()
	noAlarm("synchronised again")
	if !strings.Contains(logs.String(), "the clock is synchronised again") {
		t.Errorf("recovery not logged:\n%s", logs.String())
	}
}

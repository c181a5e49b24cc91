package main

import (
	"bytes"
	"strings"
	"testing"
	"time"

	"github.com/blocknat/blocknat/userspace/wire"
)

// TestClockShown: status shows the clock's state, its bound and when it was
// read; a lookup says in a sentence how far the clock could be trusted
// when the answer was given and when the record's epoch was recorded, once
// per epoch. (TestClockHealth sees an unsynchronised clock for real; a
// synchronised one is set here.)
func TestClockShown(t *testing.T) {
	at := time.Date(2026, 11, 20, 12, 0, 0, 0, time.UTC)
	synced := wire.ClockState{Synchronised: true, EstimatedError: "12.4ms", MaxError: "40ms", ReadAt: at}
	for _, c := range []struct {
		clock wire.ClockStatus
		want  []string
	}{
		{wire.ClockStatus{ClockState: synced, Bound: "100ms"},
			[]string{"clock\n  state                synchronised, estimated error 12.4ms (maximum 40ms)\n  bound                100ms (selfcheck.clock_max_error)\n  read                 2026-11-20T12:00:00.000Z"}},
		{wire.ClockStatus{ClockState: wire.ClockState{EstimatedError: "16s", MaxError: "16s", ReadAt: at}, Bound: "0s"},
			[]string{"state                NOT SYNCHRONISED", "bound                none (selfcheck.clock_max_error: 0)"}},
		{wire.ClockStatus{ClockState: wire.ClockState{ReadAt: at, Error: "adjtimex: operation not permitted"}, Bound: "100ms"},
			[]string{"state                UNREADABLE: adjtimex: operation not permitted"}},
	} {
		var out bytes.Buffer
		if err := printStatus(&out, &wire.StatusResponse{Agent: &wire.Status{Clock: c.clock}}); err != nil {
			t.Fatal(err)
		}
		for _, w := range c.want {
			if !strings.Contains(out.String(), w) {
				t.Errorf("status lacks %q:\n%s", w, out.String())
			}
		}
	}

	epoch := &wire.EpochSummary{ID: 3, Start: at.Add(-time.Hour), Clock: &wire.ClockState{Synchronised: true, EstimatedError: "2ms", ReadAt: at.Add(-time.Hour)}}
	end := at.Add(time.Minute)
	ans := &wire.LookupResponse{
		Query:      wire.LookupQuery{Precision: "1s", Tolerance: "0s", From: at, To: at.Add(time.Second)},
		Candidates: []wire.Record{{Epoch: 3, EpochInForce: epoch, Start: at, End: &end, Flags: []string{}}},
		Owners:     []wire.Owner{{Epoch: *epoch, From: at, To: at.Add(time.Second), Mapped: true, Active: true}},
		Clock:      &synced,
	}
	var out bytes.Buffer
	printLookup(&out, "2026-11-20T12:00:00Z", ans)
	s := out.String()
	for _, w := range []string{
		"    the router's clock was synchronised within 2 ms when epoch 3 was recorded (2026-11-20T11:00:00.000Z)\n",
		"the router's clock was synchronised within 12 ms when this answer was given\naudit entry",
	} {
		if !strings.Contains(s, w) {
			t.Errorf("lookup lacks %q:\n%s", w, s)
		}
	}
	if n := strings.Count(s, "when epoch 3 was recorded"); n != 1 {
		t.Errorf("epoch 3's clock said %d times, want once:\n%s", n, s)
	}
}

package wire

import (
	"testing"
	"time"
)

// TestClockSentence: what `blocknat lookup` says after "the router's clock
// was".
func TestClockSentence(t *testing.T) {
	at := time.Unix(1_800_000_000, 0)
	for _, c := range []struct {
		state ClockState
		want  string
	}{
		{ClockState{Synchronised: true, EstimatedError: "12.345ms", MaxError: "40ms", ReadAt: at}, "synchronised within 12 ms"},
		{ClockState{Synchronised: true, EstimatedError: "850µs", ReadAt: at}, "synchronised within 850 µs"},
		{ClockState{EstimatedError: "16s", MaxError: "16s", ReadAt: at}, "not synchronised (no time source disciplined it; the kernel bounded its error at 16.0 s)"},
		{ClockState{ReadAt: at, Error: "adjtimex: operation not permitted"}, "of unknown state (adjtimex: operation not permitted)"},
		{ClockState{}, "not yet read"},
	} {
		if got := c.state.Sentence(); got != c.want {
			t.Errorf("%+v: %q, want %q", c.state, got, c.want)
		}
	}
}

package wire

import (
	"fmt"
	"time"
)

// ClockState is the router's clock as the agent read it from the kernel
// (adjtimex): every record and answer is only as good as this clock, and
// the police compare its times with theirs (RFC 6302).
type ClockState struct {
	// Synchronised is false while no time source disciplines the clock
	// (the kernel's STA_UNSYNC is set); the errors then mean nothing.
	Synchronised bool `json:"synchronised"`
	// EstimatedError is the kernel's estimate of the clock's error and
	// MaxError its bound, Go durations ("12ms"); empty when unread.
	EstimatedError string `json:"estimated_error,omitempty"`
	MaxError       string `json:"max_error,omitempty"`
	// ReadAt is when the agent read it.
	ReadAt time.Time `json:"read_at,omitzero"`
	// Error says why the state could not be read.
	Error string `json:"error,omitempty"`
}

// ClockStatus is the clock in `blocknat status`: the last state the agent
// read, and the bound it holds the clock to.
type ClockStatus struct {
	ClockState
	// Bound is selfcheck.clock_max_error, a Go duration; "0s" when the
	// clock raises no alarm.
	Bound string `json:"bound"`
}

// Sentence says what the state means for a time the router gave, to
// follow "the router's clock was": "synchronised within 12 ms",
// "not synchronised (no time source disciplined it; the kernel estimated
// its error at 16 s)", or "of unknown state (adjtimex: ...)".
func (c ClockState) Sentence() string {
	switch {
	case c.Error != "":
		return "of unknown state (" + c.Error + ")"
	case c.ReadAt.IsZero():
		return "not yet read"
	case !c.Synchronised:
		s := "not synchronised (no time source disciplined it"
		if d, err := time.ParseDuration(c.MaxError); err == nil {
			s += "; the kernel bounded its error at " + ClockErrorText(d)
		}
		return s + ")"
	}
	d, err := time.ParseDuration(c.EstimatedError)
	if err != nil {
		return "synchronised"
	}
	return "synchronised within " + ClockErrorText(d)
}

// ClockErrorText writes a clock's error estimate as people read one:
// "850 µs", "12 ms", "1.5 s". The agent's messages use it too, so a log
// line and an answer put one error the same way.
func ClockErrorText(d time.Duration) string {
	us := d.Microseconds()
	switch {
	case us >= 1_000_000:
		return fmt.Sprintf("%.1f s", float64(us)/1e6)
	case us >= 1000:
		return fmt.Sprintf("%d ms", us/1000)
	}
	return fmt.Sprintf("%d µs", us)
}

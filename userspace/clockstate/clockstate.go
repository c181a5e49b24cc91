// Package clockstate reads the kernel's clock-synchronisation state
// (adjtimex(2), read-only): whether an NTP client has disciplined the clock
// and the error it estimates. Every block record and every lookup answer is
// only as good as the router's clock (RFC 6302 asks for accurate,
// synchronised timestamps, and the police compare ours with theirs), so the
// start-up checks, the agent's self-check, its epoch records and its
// answers all read the clock through this one reader.
package clockstate

import (
	"fmt"
	"time"

	"golang.org/x/sys/unix"

	"github.com/blocknat/blocknat/userspace/wire"
)

// State is the clock's state as the kernel reported it at ReadAt.
type State struct {
	// Synchronised is false while the kernel's STA_UNSYNC is set, or
	// adjtimex returns TIME_ERROR: no time source disciplines the clock,
	// and the error estimates mean nothing.
	Synchronised bool
	// EstimatedError is the kernel's estimate of the clock's error
	// (timex.esterror), which the NTP client keeps up to date; MaxError is
	// its bound (timex.maxerror), which grows by 500 ppm while no client
	// updates it.
	EstimatedError, MaxError time.Duration
	// Status is the kernel's STA_* bits, kept for whoever needs more than
	// the flag above (STA_PLL, STA_NANO, ...).
	Status int32
	// ReadAt is when the state was read (wall clock).
	ReadAt time.Time
}

// Reader reads the clock's state. Kernel is the real one; tests of what
// follows from a state (the agent's alarm) give their own.
type Reader interface {
	Read() (State, error)
}

// Kernel reads the running kernel's state with adjtimex.
type Kernel struct{}

// Read calls Read.
func (Kernel) Read() (State, error) { return Read() }

// Read asks the kernel for its clock-synchronisation state. It changes
// nothing: the timex passed has no modes set.
func Read() (State, error) {
	var tx unix.Timex
	state, err := unix.Adjtimex(&tx)
	now := time.Now()
	if err != nil {
		return State{ReadAt: now}, fmt.Errorf("adjtimex: %w", err)
	}
	return State{
		Synchronised:   state != unix.TIME_ERROR && tx.Status&unix.STA_UNSYNC == 0,
		EstimatedError: time.Duration(tx.Esterror) * time.Microsecond,
		MaxError:       time.Duration(tx.Maxerror) * time.Microsecond,
		Status:         tx.Status,
		ReadAt:         now,
	}, nil
}

// Within is true when the clock is synchronised and its estimated error is
// at most bound.
func (s State) Within(bound time.Duration) bool {
	return s.Synchronised && s.EstimatedError <= bound
}

// FormatError writes an error estimate as people read one: "850 µs",
// "12 ms", "1.5 s" (wire.ClockErrorText, which answers use).
func FormatError(d time.Duration) string { return wire.ClockErrorText(d) }

// Package testclock is the former home of the tests' settable clock, now
// internal/testutil's Clock; it remains for the tests that still import it.
package testclock

import (
	"time"

	"github.com/blocknat/blocknat/internal/testutil"
)

// Clock is testutil.Clock.
type Clock = testutil.Clock

// New starts at mono = start; see testutil.NewClock.
func New(base time.Time, start time.Duration) *Clock { return testutil.NewClock(base, start) }

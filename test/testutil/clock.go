package testutil

import (
	"sync"
	"time"
)

// Clock is a settable clock, safe for concurrent use. Now is its wall time.
// For code that reads the kernel's monotonic time and converts it to wall
// time, MonoNow and Wall count monotonic nanoseconds n from base: n is the
// wall time base + n.
type Clock struct {
	mu   sync.Mutex
	base time.Time
	now  time.Time
}

// NewClock returns a clock at base + start, which is monotonic time start.
// Tests that need only wall time pass start 0.
func NewClock(base time.Time, start time.Duration) *Clock {
	return &Clock{base: base, now: base.Add(start)}
}

// Now is the wall time now.
func (c *Clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

// MonoNow is the monotonic time now.
func (c *Clock) MonoNow() uint64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	return uint64(c.now.Sub(c.base))
}

// Wall converts a monotonic time to wall time.
func (c *Clock) Wall(mono uint64) time.Time { return c.base.Add(time.Duration(mono)).UTC() }

// Advance moves the clock by d, backwards when d is negative, and returns
// the new wall time.
func (c *Clock) Advance(d time.Duration) time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
	return c.now
}

// Set moves the clock to the wall time t.
func (c *Clock) Set(t time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = t
}

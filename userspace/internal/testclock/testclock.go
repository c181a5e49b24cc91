// Package testclock is a settable clock for tests of code that reads the
// kernel's monotonic time and converts it to wall time.
package testclock

import (
	"sync"
	"time"
)

// Clock maps monotonic nanoseconds n to Base + n.
type Clock struct {
	mu   sync.Mutex
	Base time.Time
	mono uint64
}

// New starts at mono = start.
func New(base time.Time, start time.Duration) *Clock {
	return &Clock{Base: base, mono: uint64(start)}
}

// MonoNow is the current monotonic time.
func (c *Clock) MonoNow() uint64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.mono
}

// Wall converts a monotonic time.
func (c *Clock) Wall(mono uint64) time.Time { return c.Base.Add(time.Duration(mono)).UTC() }

// Advance moves the clock forward.
func (c *Clock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.mono += uint64(d)
}

// Now is the wall time now.
func (c *Clock) Now() time.Time { return c.Wall(c.MonoNow()) }

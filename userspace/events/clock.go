package events

import (
	"time"

	"golang.org/x/sys/unix"
)

// Clock converts the kernel's monotonic nanoseconds (bpf_ktime_get_ns and
// the coarse clock share the CLOCK_MONOTONIC base) into wall time.
type Clock interface {
	Wall(monoNS uint64) time.Time
	MonoNow() uint64
}

// SystemClock reads the real clocks. The conversion takes the wall clock
// now and subtracts how long ago the event happened on the monotonic clock,
// so a wall-clock step after the event does not move it.
type SystemClock struct{}

// MonoNow is CLOCK_MONOTONIC in nanoseconds.
func (SystemClock) MonoNow() uint64 {
	var ts unix.Timespec
	_ = unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts)
	return uint64(ts.Nano())
}

// Wall converts a monotonic timestamp to UTC wall time.
func (c SystemClock) Wall(monoNS uint64) time.Time {
	now := time.Now()
	ago := int64(c.MonoNow()) - int64(monoNS)
	return now.Add(-time.Duration(ago)).UTC()
}

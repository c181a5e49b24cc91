package events

import (
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// Clock converts the kernel's monotonic nanoseconds (bpf_ktime_get_ns and
// the coarse clock share the CLOCK_MONOTONIC base) into wall time.
type Clock interface {
	Wall(monoNS uint64) time.Time
	MonoNow() uint64
}

// offsetTTL is how long one wall-minus-monotonic offset is used before it
// is read again, to follow NTP's slewing of the wall clock.
const offsetTTL = time.Minute

// SystemClock reads the real clocks. It converts with an offset (wall minus
// monotonic) that it refreshes every minute, so the same monotonic time
// converts to the same wall time whichever part of the agent asks: the ring
// buffer's event and the reconciler's reading of the same activation agree
// to the nanosecond. Use it by pointer.
type SystemClock struct {
	mu     sync.Mutex
	offset int64
	readAt uint64
}

// MonoNow is CLOCK_MONOTONIC in nanoseconds.
func (*SystemClock) MonoNow() uint64 {
	var ts unix.Timespec
	_ = unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts)
	return uint64(ts.Nano())
}

// Wall converts a monotonic timestamp to UTC wall time.
func (c *SystemClock) Wall(monoNS uint64) time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	if now := c.MonoNow(); c.readAt == 0 || now-c.readAt > uint64(offsetTTL) {
		c.offset = time.Now().UnixNano() - int64(c.MonoNow())
		c.readAt = now
	}
	return time.Unix(0, int64(monoNS)+c.offset).UTC()
}

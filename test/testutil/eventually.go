package testutil

import (
	"fmt"
	"testing"
	"time"
)

// PollInterval is how long Poll and Eventually wait between two calls of
// their condition.
const PollInterval = 10 * time.Millisecond

// Poll calls cond until it holds or timeout has passed, and reports whether
// it held. A condition that holds at once costs no wait. Use it where the
// caller explains a failure itself; otherwise use Eventually.
func Poll(timeout time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(PollInterval)
	}
	return true
}

// Eventually fails tb unless cond holds within timeout. The message, made
// with fmt.Sprintf(format, args...), names what was awaited.
func Eventually(tb testing.TB, timeout time.Duration, cond func() bool, format string, args ...any) {
	tb.Helper()
	if !Poll(timeout, cond) {
		tb.Fatalf("after %v still waiting for %s", timeout, fmt.Sprintf(format, args...))
	}
}

// Package testutil holds the helpers blocknat's tests share: Clock, a
// settable clock; Buffer, a buffer that one goroutine or a child process
// writes while the test reads it; and Eventually, a poll for a condition
// where a test would otherwise sleep and hope. It lives under test/, not
// under userspace/internal, so that test/harness and test/e2e may import it
// as well as the packages' own tests.
package testutil

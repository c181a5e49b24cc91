package testutil

import (
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"
)

func TestClock(t *testing.T) {
	base := time.Date(2026, 11, 20, 12, 0, 0, 0, time.UTC)
	c := NewClock(base, time.Hour)
	if got := c.MonoNow(); got != uint64(time.Hour) {
		t.Errorf("MonoNow = %d, want %d", got, uint64(time.Hour))
	}
	if got, want := c.Now(), base.Add(time.Hour); !got.Equal(want) {
		t.Errorf("Now = %v, want %v", got, want)
	}
	if got, want := c.Advance(-30*time.Minute), base.Add(30*time.Minute); !got.Equal(want) {
		t.Errorf("Advance(-30m) = %v, want %v", got, want)
	}
	if got, want := c.Wall(c.MonoNow()), c.Now(); !got.Equal(want) {
		t.Errorf("Wall(MonoNow) = %v, Now = %v", got, want)
	}
	far := time.Date(2260, 1, 1, 0, 0, 0, 0, time.UTC)
	c.Set(far)
	if got := c.Now(); !got.Equal(far) {
		t.Errorf("after Set, Now = %v, want %v", got, far)
	}
}

func TestBufferConcurrent(t *testing.T) {
	var b Buffer
	var wg sync.WaitGroup
	for i := range 8 {
		wg.Go(func() {
			for range 100 {
				fmt.Fprintf(&b, "%d\n", i)
				_ = b.String()
			}
		})
	}
	wg.Wait()
	if n := strings.Count(b.String(), "\n"); n != 800 {
		t.Errorf("%d lines, want 800", n)
	}
}

// recorder is a testing.TB that keeps what Fatalf said instead of stopping.
type recorder struct {
	testing.TB
	fatal string
}

func (r *recorder) Helper() {}

func (r *recorder) Fatalf(format string, args ...any) { r.fatal = fmt.Sprintf(format, args...) }

func TestEventually(t *testing.T) {
	calls := 0
	Eventually(t, time.Second, func() bool { calls++; return calls == 3 }, "the third call")
	if calls != 3 {
		t.Errorf("cond called %d times, want 3", calls)
	}
	r := &recorder{TB: t}
	start := time.Now()
	Eventually(r, 50*time.Millisecond, func() bool { return false }, "%s", "nothing")
	if elapsed := time.Since(start); elapsed < 50*time.Millisecond {
		t.Errorf("gave up after %v, before the timeout", elapsed)
	}
	if want := "after 50ms still waiting for nothing"; r.fatal != want {
		t.Errorf("failure %q, want %q", r.fatal, want)
	}
}

package pcpserver

import (
	"container/heap"
	"context"
	"time"

	"github.com/blocknat/blocknat/userspace/logattr"
)

// expiryRetry is how long a mapping whose release failed waits before the
// next attempt, so that a broken plane costs a log line per mapping every
// so often rather than every tick.
const expiryRetry = 10 * time.Second

// limiterPruneInterval is how often the expiry loop forgets refilled
// rate buckets.
const limiterPruneInterval = time.Minute

// expiryItem says that key is due at (CLOCK_MONOTONIC ns). A renewal
// pushes a new item and leaves the old one to be skipped: checking the
// index when an item comes up is cheaper than finding it in the heap.
type expiryItem struct {
	at  uint64
	key Key
}

type expiryHeap []expiryItem

func (h expiryHeap) Len() int           { return len(h) }
func (h expiryHeap) Less(i, j int) bool { return h[i].at < h[j].at }
func (h expiryHeap) Swap(i, j int)      { h[i], h[j] = h[j], h[i] }
func (h *expiryHeap) Push(x any)        { *h = append(*h, x.(expiryItem)) }
func (h *expiryHeap) Pop() any {
	old := *h
	it := old[len(old)-1]
	*h = old[:len(old)-1]
	return it
}

func (h *expiryHeap) push(at uint64, k Key) { heap.Push(h, expiryItem{at: at, key: k}) }

// expireLoop removes mappings when they expire. It sleeps until the next
// is due but never longer than expiryTick, so that a clock that jumps (a
// test's, or a suspended machine's) is caught up with within a tick.
func (s *Server) expireLoop(ctx context.Context) {
	timer := time.NewTimer(0)
	defer timer.Stop()
	lastPrune := time.Now()
	for {
		select {
		case <-ctx.Done():
			return
		case <-timer.C:
		}
		wait := s.expireDue()
		if now := time.Now(); now.Sub(lastPrune) >= limiterPruneInterval {
			s.mu.Lock()
			s.pruneLimiters(now)
			s.mu.Unlock()
			lastPrune = now
		}
		timer.Reset(wait)
	}
}

// expireDue releases every mapping due by now and says how long to
// sleep.
func (s *Server) expireDue() time.Duration {
	s.mu.Lock()
	defer s.mu.Unlock()
	now := s.cfg.Clock.MonoNow()
	expired := 0
	for len(s.expiries) > 0 && s.expiries[0].at <= now {
		it := heap.Pop(&s.expiries).(expiryItem)
		e, ok := s.entries[it.key]
		if !ok || e.Expires > now {
			continue // deleted or renewed since
		}
		if err := s.release(e); err != nil {
			s.expiries.push(now+uint64(expiryRetry), e.Key)
			continue
		}
		expired++
	}
	if expired > 0 {
		s.log.Debug("pcp mappings expired", logattr.Count, expired)
	}
	wait := s.expiryTick
	if len(s.expiries) > 0 {
		wait = min(wait, time.Duration(s.expiries[0].at-now))
	}
	return max(wait, time.Millisecond)
}

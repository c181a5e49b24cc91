package api

import (
	"fmt"
	"math"
	"net/http"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/blocknat/blocknat/userspace/audit"
	"github.com/blocknat/blocknat/userspace/logattr"
	"github.com/blocknat/blocknat/userspace/wire"
)

// The budget of audit entries for the refusals of an operator without any
// role: a token bucket per operator of RefusalBurst entries, refilled at
// RefusalsPerMinute. Past it a refusal is answered 429 with Retry-After,
// counted and not appended; the count goes into one entry "N refused from
// OPERATOR" (action wire.ActionRefusals), written when the operator's next
// refusal is allowed, by the periodic flush once a token is back, or when
// the server stops. So no operator without a role can make the log grow by
// more than RefusalBurst + RefusalsPerMinute × minutes entries, plus one at
// shutdown, each at most audit.MaxEntryBytes.
const (
	RefusalsPerMinute = 10
	RefusalBurst      = 20
)

// refusalRefill is the time one token takes to come back.
const refusalRefill = time.Minute / RefusalsPerMinute

// refusalFlushEvery is how often serve writes the summaries of operators
// that stopped asking and have a token back.
const refusalFlushEvery = 10 * time.Second

type refusalBucket struct {
	tokens  float64
	last    time.Time
	counted uint64 // refusals past the budget, not in the log yet
}

// refusalLimiter is the per-operator budget above.
type refusalLimiter struct {
	mu      sync.Mutex
	buckets map[string]*refusalBucket
	// summarised counts every refusal answered 429, for /metrics; the
	// counts in the buckets go to zero as summaries are written.
	summarised atomic.Uint64
}

func (l *refusalLimiter) bucket(op string, now time.Time) *refusalBucket {
	if l.buckets == nil {
		l.buckets = map[string]*refusalBucket{}
	}
	b := l.buckets[op]
	if b == nil {
		b = &refusalBucket{tokens: RefusalBurst, last: now}
		l.buckets[op] = b
	}
	if now.After(b.last) {
		b.tokens = math.Min(RefusalBurst, b.tokens+float64(now.Sub(b.last))/float64(refusalRefill))
		b.last = now
	}
	return b
}

// allow takes a token for one refusal of op. When it returns true the
// refusal is appended, together with earlier, the refusals counted since
// the last entry; when false it is counted and retryAfter says when the
// next token is back.
func (l *refusalLimiter) allow(op string, now time.Time) (ok bool, earlier uint64, retryAfter time.Duration) {
	l.mu.Lock()
	defer l.mu.Unlock()
	b := l.bucket(op, now)
	if b.tokens >= 1 {
		b.tokens--
		earlier, b.counted = b.counted, 0
		return true, earlier, 0
	}
	b.counted++
	l.summarised.Add(1)
	return false, 0, time.Duration((1 - b.tokens) * float64(refusalRefill))
}

// giveBack returns counted refusals whose summary could not be appended.
func (l *refusalLimiter) giveBack(op string, n uint64) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if b := l.buckets[op]; b != nil {
		b.counted += n
	}
}

// due takes the counts that may be written now: every count when all (the
// server stops), else those of operators with a token back, which the
// summary spends. Full buckets with nothing counted are forgotten.
func (l *refusalLimiter) due(now time.Time, all bool) map[string]uint64 {
	l.mu.Lock()
	defer l.mu.Unlock()
	out := map[string]uint64{}
	for op := range l.buckets {
		b := l.bucket(op, now)
		switch {
		case b.counted > 0 && (all || b.tokens >= 1):
			if !all {
				b.tokens--
			}
			out[op], b.counted = b.counted, 0
		case b.counted == 0 && b.tokens >= RefusalBurst:
			delete(l.buckets, op)
		}
	}
	return out
}

func refusalSummary(n uint64, op string) audit.Entry {
	return audit.Entry{
		Operator: op,
		Action:   wire.ActionRefusals,
		Outcome:  audit.OutcomeRefused,
		Detail: fmt.Sprintf("%d refused from %s (operator without a role, past the budget of %d entries a minute, burst %d)",
			n, op, RefusalsPerMinute, RefusalBurst),
	}
}

// flushRefusals appends the summaries that are due (all of them when all).
func (s *Server) flushRefusals(all bool) {
	for op, n := range s.refusals.due(s.now(), all) {
		if _, _, err := s.audit.AppendProved(refusalSummary(n, op)); err != nil {
			s.refusals.giveBack(op, n)
			s.log.Error("audit append of refusal summary failed", logattr.Operator, op, logattr.Count, n, logattr.Err, err)
		}
	}
}

// writeRateLimited answers a refusal past the budget: no data and no audit
// seq, since the entry that will count it does not exist yet.
func writeRateLimited(w http.ResponseWriter, retryAfter time.Duration) {
	secs := int(math.Ceil(retryAfter.Seconds()))
	writeJSON(w, http.StatusTooManyRequests, http.Header{"Retry-After": {strconv.Itoa(max(secs, 1))}}, wire.ErrorResponse{
		Error: fmt.Sprintf("refused: the operator has no role, and past %d refusals a minute (burst %d) refusals are counted and summarised in the audit log",
			RefusalsPerMinute, RefusalBurst),
		Outcome: string(audit.OutcomeRefused),
	})
}

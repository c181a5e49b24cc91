// Package replicate copies a router's changes to the site's PostgreSQL log
// server: the store's outbox (block records, leases and epochs, written in
// the same batch as the change itself, see userspace/store) and the audit
// log, which is its own outbox since its entries are durable and numbered.
//
// # Delivery
//
// Each stream is sent in order, a batch per transaction. The database keeps,
// per router and stream, the highest sequence number it holds with none
// missing below it; it skips what it already has, so a batch sent twice (the
// router died between the commit and its own acknowledgement) is stored
// once, and it refuses a batch that would leave a hole (ErrGap). Only after
// the database's commit does the router delete the outbox entries it
// covered, so a router that cannot reach the database keeps them, on its
// own disk, until it can: at-least-once delivery, made exactly-once by the
// database. At start, and after every failure, the replicator asks the
// database where each stream stands rather than trusting its own
// acknowledgement, which may be older (a crash after the commit) or newer
// (a database restored from an older backup: then the router cannot send
// again what it deleted, and the stream stops with the alarm saying so).
//
// # Lag
//
// The lag is the age of the oldest change not yet in the database: the
// enqueue time of the first outbox entry, or the time of the first audit
// entry, not yet delivered. A lag above the bound raises the agent's alarm
// (reason replication), whatever the cause: the database unreachable, a
// refused batch, or a router producing changes faster than the database
// takes them.
package replicate

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/blocknat/blocknat/userspace/audit"
	"github.com/blocknat/blocknat/userspace/logattr"
	"github.com/blocknat/blocknat/userspace/store"
)

// Streams, as the database and the metrics name them.
const (
	StreamStore = "store"
	StreamAudit = "audit"
)

// ErrGap is wrapped by a Sink's error when the database refused a batch
// because it does not follow what the database holds.
var ErrGap = errors.New("sequence gap")

// Progress is, per stream, the highest sequence number the database holds
// with none missing below it.
type Progress struct {
	Store, Audit uint64
}

// Sink is the database (userspace/pgfleet through the agent's adapter).
type Sink interface {
	Progress(ctx context.Context, router string) (Progress, error)
	// Ingest stores the events and returns the highest sequence number the
	// database now holds for the stream.
	Ingest(ctx context.Context, router string, evs []store.OutboxEvent) (uint64, error)
	IngestAudit(ctx context.Context, router string, es []audit.Entry) (uint64, error)
	// SkipAudit records that audit entries have+1 to first-1 are gone
	// from the router's log and returns the database's audit progress.
	SkipAudit(ctx context.Context, router string, have, first uint64) (uint64, error)
}

// Outbox is the store's outbox (*store.Store).
type Outbox interface {
	Outbox(after uint64, limit int) ([]store.OutboxEvent, error)
	AckOutbox(through uint64) error
	OutboxState() (store.OutboxState, error)
}

// AuditLog is the audit chain (*audit.Log).
type AuditLog interface {
	Entries(fromSeq uint64, limit int) ([]audit.Entry, error)
	Len() uint64
}

// Config is what a Replicator copies, and where.
type Config struct {
	// Router names this router in the database.
	Router string
	// Connect opens the database; it is called again after a failure.
	Connect func(ctx context.Context) (Sink, error)
	// Close, if set, is called with a Sink that failed, before the next
	// Connect.
	Close func(Sink)
	// Store is the store's outbox; nil replicates the audit log only (a
	// fleet service's own log).
	Store Outbox
	// Audit is the audit log; nil replicates the store only.
	Audit AuditLog
	// Batch is how many changes a transaction carries.
	Batch int
	// MaxLag is the lag above which State reports Behind.
	MaxLag time.Duration
	Log    *slog.Logger
	// Poll is how often an idle replicator looks for new changes (250 ms
	// when zero); Backoff the first wait after a failure, doubling to 30 s
	// (1 s when zero).
	Poll, Backoff time.Duration
	// Now is the clock (time.Now when nil).
	Now func() time.Time
}

// State is what the replicator reports to the metrics, the status and
// the alarm.
type State struct {
	Router string
	// Connected is true while the last exchange with the database
	// succeeded.
	Connected bool
	// StoreSent and AuditSent are the highest sequence numbers the
	// database holds; StoreLast and AuditLast the router's newest.
	StoreSent, StoreLast, AuditSent, AuditLast uint64
	// OutboxDepth is the outbox entries not yet acknowledged (they are
	// on the router's disk), AuditPending the audit entries not yet sent.
	OutboxDepth, AuditPending uint64
	// Lag is the age of the oldest change not yet in the database; zero
	// when none is waiting.
	Lag    time.Duration
	MaxLag time.Duration
	// Sent counts the changes the database took, by stream, since start.
	Sent map[string]uint64
	// LastSuccess is when the database last took a batch or said it had
	// everything; LastError the last failure, and LastErrorAt its time.
	LastSuccess time.Time
	LastError   string
	LastErrorAt time.Time
	// Stopped says why a stream can no longer be replicated without the
	// operator (the database lacks changes the router has deleted); ""
	// while both run.
	Stopped string
	// AuditSkipped counts the audit entries the router's own retention
	// removed before they reached the database (recorded there as a
	// hole), since start.
	AuditSkipped uint64
}

// Behind reports why the alarm should hold, "" when it should not.
func (s State) Behind() string {
	switch {
	case s.Stopped != "":
		return "replication to PostgreSQL stopped: " + s.Stopped
	case s.MaxLag > 0 && s.Lag > s.MaxLag:
		msg := fmt.Sprintf("replication to PostgreSQL is %s behind (replicate.max_lag %s); %d changes wait in the outbox and %d audit entries",
			s.Lag.Round(time.Second), s.MaxLag, s.OutboxDepth, s.AuditPending)
		if s.LastError != "" {
			msg += "; last error: " + s.LastError
		}
		return msg
	}
	return ""
}

// Replicator sends a router's changes to the database.
type Replicator struct {
	cfg Config
	log *slog.Logger
	now func() time.Time

	mu           sync.Mutex
	state        State
	auditOldest  time.Time // time of the first audit entry not yet sent
	auditOldestN uint64    // its seq
	wake         chan struct{}
}

// New makes a Replicator; Run starts it.
func New(cfg Config) *Replicator {
	if cfg.Batch <= 0 {
		cfg.Batch = 1000
	}
	if cfg.Poll <= 0 {
		cfg.Poll = 250 * time.Millisecond
	}
	if cfg.Backoff <= 0 {
		cfg.Backoff = time.Second
	}
	r := &Replicator{cfg: cfg, log: cfg.Log, now: cfg.Now, wake: make(chan struct{}, 1)}
	if r.log == nil {
		r.log = slog.Default()
	}
	if r.now == nil {
		r.now = time.Now
	}
	r.state = State{Router: cfg.Router, MaxLag: cfg.MaxLag, Sent: map[string]uint64{}}
	if cfg.Store != nil {
		r.state.Sent[StreamStore] = 0
	}
	if cfg.Audit != nil {
		r.state.Sent[StreamAudit] = 0
	}
	return r
}

// Wake makes an idle replicator look for changes now rather than at its
// next poll.
func (r *Replicator) Wake() {
	select {
	case r.wake <- struct{}{}:
	default:
	}
}

// maxBackoff bounds the wait between attempts, so that a database that
// comes back is used within half a minute.
const maxBackoff = 30 * time.Second

// Run replicates until ctx ends; it returns nil then. Failures are
// retried with backoff and reported through State, never returned: the
// router keeps translating and recording whatever the database does.
func (r *Replicator) Run(ctx context.Context) error {
	var sink Sink
	backoff := r.cfg.Backoff
	synced := false
	var sent Progress
	for ctx.Err() == nil {
		if sink == nil {
			s, err := r.cfg.Connect(ctx)
			if err != nil {
				r.failed("connect", err)
				if !sleep(ctx, backoff) {
					break
				}
				backoff = min(2*backoff, maxBackoff)
				continue
			}
			sink, synced = s, false
		}
		if !synced {
			p, err := r.sync(ctx, sink)
			if err != nil {
				r.failed("read progress", err)
				sink = r.drop(sink)
				if !sleep(ctx, backoff) {
					break
				}
				backoff = min(2*backoff, maxBackoff)
				continue
			}
			sent, synced = p, true
		}
		moved, err := r.once(ctx, sink, &sent)
		if err != nil {
			if ctx.Err() != nil {
				break
			}
			r.failed("send", err)
			// Ask again where the database stands: a batch that failed
			// may have committed.
			synced = false
			if !errors.Is(err, ErrGap) {
				sink = r.drop(sink)
			}
			if !sleep(ctx, backoff) {
				break
			}
			backoff = min(2*backoff, maxBackoff)
			continue
		}
		backoff = r.cfg.Backoff
		r.succeeded()
		if moved {
			continue
		}
		select {
		case <-ctx.Done():
		case <-r.wake:
		case <-time.After(r.cfg.Poll):
		}
	}
	if sink != nil {
		r.drop(sink)
	}
	return nil
}

func (r *Replicator) drop(s Sink) Sink {
	if r.cfg.Close != nil && s != nil {
		r.cfg.Close(s)
	}
	return nil
}

// sync reads where the database stands and brings the outbox in line: an
// acknowledgement lost to a crash after the commit is made now, and a
// database that lacks what the router already deleted stops the store
// stream.
func (r *Replicator) sync(ctx context.Context, sink Sink) (Progress, error) {
	p, err := sink.Progress(ctx, r.cfg.Router)
	if err != nil {
		return p, err
	}
	if r.cfg.Store != nil {
		st, err := r.cfg.Store.OutboxState()
		if err != nil {
			return p, fmt.Errorf("outbox: %w", err)
		}
		switch {
		case p.Store < st.Acked:
			r.mu.Lock()
			r.state.Stopped = fmt.Sprintf("the database holds this router's changes up to %d, but the router had delivered them up to %d and deleted them from its outbox "+
				"(was the database restored from an older backup?); changes %d to %d are on the router's own store only",
				p.Store, st.Acked, p.Store+1, st.Acked)
			r.mu.Unlock()
		case p.Store > st.Acked:
			if p.Store > st.Last {
				return p, fmt.Errorf("the database holds changes up to %d from router %q, but this router has only written %d: is another router using the name %q?",
					p.Store, r.cfg.Router, st.Last, r.cfg.Router)
			}
			if err := r.cfg.Store.AckOutbox(p.Store); err != nil {
				return p, fmt.Errorf("outbox: %w", err)
			}
		}
	}
	if r.cfg.Audit != nil && p.Audit > r.cfg.Audit.Len() {
		return p, fmt.Errorf("the database holds audit entries up to %d from router %q, but this router's audit log ends at %d: is another router using the name %q?",
			p.Audit, r.cfg.Router, r.cfg.Audit.Len(), r.cfg.Router)
	}
	r.mu.Lock()
	r.state.StoreSent, r.state.AuditSent = p.Store, p.Audit
	r.mu.Unlock()
	return p, nil
}

// once sends at most one batch of each stream; moved reports whether
// either sent anything, so the caller goes on at once.
func (r *Replicator) once(ctx context.Context, sink Sink, sent *Progress) (moved bool, err error) {
	r.mu.Lock()
	stopped := r.state.Stopped != ""
	r.mu.Unlock()
	if r.cfg.Store != nil && !stopped {
		evs, err := r.cfg.Store.Outbox(sent.Store, r.cfg.Batch)
		if err != nil {
			return false, fmt.Errorf("read outbox: %w", err)
		}
		if len(evs) > 0 {
			last, err := sink.Ingest(ctx, r.cfg.Router, evs)
			if err != nil {
				return false, fmt.Errorf("%s stream, changes %d to %d: %w", StreamStore, evs[0].Seq, evs[len(evs)-1].Seq, err)
			}
			if err := r.cfg.Store.AckOutbox(last); err != nil {
				return false, fmt.Errorf("acknowledge outbox through %d: %w", last, err)
			}
			r.mu.Lock()
			r.state.Sent[StreamStore] += last - sent.Store
			r.state.StoreSent = last
			r.mu.Unlock()
			sent.Store, moved = last, true
		}
	}
	if r.cfg.Audit != nil && r.cfg.Audit.Len() > sent.Audit {
		es, err := r.cfg.Audit.Entries(sent.Audit+1, r.cfg.Batch)
		if err != nil {
			return moved, fmt.Errorf("read audit log: %w", err)
		}
		if len(es) > 0 && es[0].Seq > sent.Audit+1 {
			// Retention removed the entries in between before they
			// reached the database: the first start of replication on
			// a log older than audit retention, or an outage as long.
			have, err := sink.SkipAudit(ctx, r.cfg.Router, sent.Audit, es[0].Seq)
			if err != nil {
				return moved, fmt.Errorf("%s stream, record entries %d to %d as removed by retention: %w", StreamAudit, sent.Audit+1, es[0].Seq-1, err)
			}
			if have == es[0].Seq-1 {
				r.log.Warn("audit entries removed by this router's retention before they reached the database; the database records the hole",
					"router", r.cfg.Router, "from_seq", sent.Audit+1, "to_seq", es[0].Seq-1)
				r.mu.Lock()
				r.state.AuditSkipped += es[0].Seq - 1 - sent.Audit
				r.mu.Unlock()
			}
			r.mu.Lock()
			r.state.AuditSent = have
			r.mu.Unlock()
			sent.Audit = have
			return true, nil
		}
		if len(es) > 0 {
			last, err := sink.IngestAudit(ctx, r.cfg.Router, es)
			if err != nil {
				return moved, fmt.Errorf("%s stream, entries %d to %d: %w", StreamAudit, es[0].Seq, es[len(es)-1].Seq, err)
			}
			r.mu.Lock()
			r.state.Sent[StreamAudit] += last - sent.Audit
			r.state.AuditSent = last
			r.mu.Unlock()
			sent.Audit, moved = last, true
		}
	}
	return moved, nil
}

func (r *Replicator) failed(what string, err error) {
	r.mu.Lock()
	first := r.state.Connected || r.state.LastError == ""
	r.state.Connected = false
	r.state.LastError, r.state.LastErrorAt = what+": "+err.Error(), r.now()
	r.mu.Unlock()
	// Logged once per outage, not every retry: the status and the alarm
	// carry the rest.
	if first {
		r.log.Error("replication to PostgreSQL failed; changes stay in the outbox and are sent when it works again",
			logattr.Err, what+": "+err.Error(), "router", r.cfg.Router)
	}
}

func (r *Replicator) succeeded() {
	r.mu.Lock()
	back := !r.state.Connected && r.state.LastError != ""
	r.state.Connected, r.state.LastSuccess = true, r.now()
	r.mu.Unlock()
	if back {
		r.log.Info("replication to PostgreSQL works again", "router", r.cfg.Router)
	}
}

// State reads the figures; it reads the outbox's state and, when audit
// entries wait, the time of the first.
func (r *Replicator) State() State {
	r.mu.Lock()
	s := r.state
	s.Sent = make(map[string]uint64, len(r.state.Sent))
	for k, v := range r.state.Sent {
		s.Sent[k] = v
	}
	r.mu.Unlock()
	now := r.now()
	if r.cfg.Store != nil {
		if st, err := r.cfg.Store.OutboxState(); err != nil {
			s.LastError = "outbox: " + err.Error()
		} else {
			s.StoreLast, s.OutboxDepth = st.Last, st.Depth
			if st.Depth > 0 && !st.Oldest.IsZero() {
				s.Lag = max(s.Lag, now.Sub(st.Oldest))
			}
		}
	}
	if r.cfg.Audit != nil {
		s.AuditLast = r.cfg.Audit.Len()
		if s.AuditLast > s.AuditSent {
			s.AuditPending = s.AuditLast - s.AuditSent
			if t := r.oldestAudit(s.AuditSent + 1); !t.IsZero() {
				s.Lag = max(s.Lag, now.Sub(t))
			}
		}
	}
	return s
}

// oldestAudit returns the time of audit entry seq (or the first after it
// that retention left), read once per seq.
func (r *Replicator) oldestAudit(seq uint64) time.Time {
	r.mu.Lock()
	if r.auditOldestN == seq {
		t := r.auditOldest
		r.mu.Unlock()
		return t
	}
	r.mu.Unlock()
	es, err := r.cfg.Audit.Entries(seq, 1)
	if err != nil || len(es) == 0 {
		return time.Time{}
	}
	r.mu.Lock()
	r.auditOldestN, r.auditOldest = seq, es[0].Time
	r.mu.Unlock()
	return es[0].Time
}

func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}

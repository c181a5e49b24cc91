package replicate_test

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net/netip"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/blocknat/blocknat/test/testutil/pgtest"
	"github.com/blocknat/blocknat/userspace/audit"
	"github.com/blocknat/blocknat/userspace/pgfleet"
	"github.com/blocknat/blocknat/userspace/replicate"
	"github.com/blocknat/blocknat/userspace/store"
)

var quiet = slog.New(slog.NewTextHandler(io.Discard, nil))

const owner = "blocknat_owner"

// site is a real PostgreSQL with the fleet schema and one router role.
type site struct {
	srv *pgtest.Server
	db  string
}

func newSite(t *testing.T, db string) *site {
	t.Helper()
	srv := pgtest.Start(t)
	srv.CreateRole(t, owner, "LOGIN", "CREATEROLE")
	s := &site{srv: srv, db: db}
	s.database(t, db)
	srv.CreateRole(t, "router_a", "LOGIN", "IN ROLE blocknat_router")
	return s
}

// database creates and migrates db.
func (s *site) database(t *testing.T, db string) {
	t.Helper()
	s.srv.CreateDB(t, db, owner)
	o, err := pgfleet.Connect(context.Background(), s.srv.DSN(owner, db))
	if err != nil {
		t.Fatal(err)
	}
	defer o.Close()
	if _, _, err := o.Migrate(context.Background(), quiet); err != nil {
		t.Fatalf("migrate: %v", err)
	}
}

// count returns the rows of sql (a SELECT count(*)), as superuser.
func (s *site) count(t *testing.T, sql string) int {
	t.Helper()
	ctx := context.Background()
	c, err := pgx.Connect(ctx, s.srv.DSN(pgtest.Superuser, s.db))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close(ctx)
	var n int
	if err := c.QueryRow(ctx, sql).Scan(&n); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
	return n
}

// router is a router's store with its outbox and its audit log, on disk.
type router struct {
	st  *store.Store
	log *audit.Log
}

func newRouter(t *testing.T) *router {
	t.Helper()
	dir := t.TempDir()
	st, err := store.Open(filepath.Join(dir, "records"), store.Options{Outbox: true, Logger: quiet})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	l, err := audit.Open(filepath.Join(dir, "audit"), audit.Options{KeyPath: filepath.Join(dir, "audit.key"), Logger: quiet})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	return &router{st: st, log: l}
}

var base = time.Now().Add(-time.Hour).Truncate(time.Second).UTC()

// activity activates and releases n subscribers' blocks and writes an
// audit entry for each: 2n store changes and n audit entries.
func (r *router) activity(t *testing.T, from, n int) {
	t.Helper()
	for i := from; i < from+n; i++ {
		rec := store.Record{Subscriber: uint32(i), Inside: netip.AddrFrom4([4]byte{100, 64, byte(i >> 8), byte(i)}),
			Public: netip.MustParseAddr("198.51.100.1"), PortLo: uint16(1024 + 64*(i%900)), PortHi: uint16(1024 + 64*(i%900) + 63),
			Start: base.Add(time.Duration(i) * time.Second), Epoch: 1}
		if err := r.st.Apply([]store.Op{{Kind: store.OpActivate, Record: rec}}); err != nil {
			t.Fatal(err)
		}
		rec.End = rec.Start.Add(30 * time.Second)
		if err := r.st.Apply([]store.Op{{Kind: store.OpRelease, Record: rec}}); err != nil {
			t.Fatal(err)
		}
		if _, err := r.log.Append(audit.Entry{Operator: "uid:0(root)", Role: "investigator", Action: "lookup", Outcome: audit.OutcomeAnswered, Purpose: "case 17"}); err != nil {
			t.Fatal(err)
		}
	}
}

// replicator starts a Replicator of r to the site as router_a, with sink
// wrapping the real one when given; it stops at the test's end.
func (s *site) replicator(t *testing.T, r *router, maxLag time.Duration, wrap func(replicate.Sink) replicate.Sink) *replicate.Replicator {
	t.Helper()
	connect := replicate.Postgres(s.srv.DSN("router_a", s.db))
	rep := replicate.New(replicate.Config{Router: "router_a", Store: r.st, Audit: r.log, Batch: 7, MaxLag: maxLag, Log: quiet,
		Poll: 20 * time.Millisecond, Backoff: 50 * time.Millisecond, Close: replicate.ClosePostgres,
		Connect: func(ctx context.Context) (replicate.Sink, error) {
			sink, err := connect(ctx)
			if err == nil && wrap != nil {
				sink = wrap(sink)
			}
			return sink, err
		}})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- rep.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("replicator: %v", err)
		}
	})
	return rep
}

// caughtUp waits until the database holds everything the router wrote.
func caughtUp(t *testing.T, rep *replicate.Replicator) replicate.State {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for {
		st := rep.State()
		if st.Connected && st.StoreSent == st.StoreLast && st.AuditSent == st.AuditLast && st.OutboxDepth == 0 && st.AuditPending == 0 {
			return st
		}
		if time.Now().After(deadline) {
			t.Fatalf("replication did not catch up: %+v", st)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// every checks that the database holds each of n subscribers' records
// exactly once, closed, and n audit entries.
func (s *site) every(t *testing.T, n int) {
	t.Helper()
	if got := s.count(t, "SELECT count(DISTINCT (subscriber, start_ms)) FROM blocknat.records WHERE router = 'router_a'"); got != n {
		t.Errorf("database holds %d distinct records, want %d", got, n)
	}
	// A record of one day is one row: no copy twice.
	if got := s.count(t, "SELECT count(*) FROM blocknat.records WHERE router = 'router_a'"); got < n {
		t.Errorf("database holds %d record rows, want at least %d", got, n)
	}
	if dup := s.count(t, "SELECT count(*) FROM (SELECT day, subscriber, start_ms FROM blocknat.records WHERE router = 'router_a' GROUP BY 1, 2, 3 HAVING count(*) > 1) d"); dup != 0 {
		t.Errorf("%d records are in the database twice", dup)
	}
	if open := s.count(t, "SELECT count(*) FROM blocknat.open_records WHERE router = 'router_a'"); open != 0 {
		t.Errorf("%d records are still open in the database; every one was released", open)
	}
	if got := s.count(t, "SELECT count(DISTINCT seq) FROM blocknat.audit WHERE router = 'router_a'"); got != n {
		t.Errorf("database holds %d audit entries, want %d", got, n)
	}
	if got := s.count(t, "SELECT count(*) FROM blocknat.audit WHERE router = 'router_a'"); got != n {
		t.Errorf("database holds %d audit rows, want %d (no entry twice)", got, n)
	}
}

func TestReplicatesEveryChangeOnce(t *testing.T) {
	s := newSite(t, "fleet")
	r := newRouter(t)
	r.activity(t, 0, 20)
	rep := s.replicator(t, r, time.Hour, nil)
	st := caughtUp(t, rep)
	if st.StoreLast != 40 || st.AuditLast != 20 {
		t.Errorf("router wrote %d changes and %d audit entries, want 40 and 20", st.StoreLast, st.AuditLast)
	}
	if st.Sent[replicate.StreamStore] != 40 || st.Sent[replicate.StreamAudit] != 20 {
		t.Errorf("sent %v, want store 40, audit 20", st.Sent)
	}
	if st.Lag != 0 || st.Behind() != "" {
		t.Errorf("caught up, yet lag %s and alarm %q", st.Lag, st.Behind())
	}
	// The outbox entries the database took are gone from the router.
	if evs, err := r.st.Outbox(0, 100); err != nil || len(evs) != 0 {
		t.Errorf("outbox after catching up: %d events, %v", len(evs), err)
	}
	r.activity(t, 20, 5)
	caughtUp(t, rep)
	s.every(t, 25)
}

func TestOutboxKeepsChangesWhileTheDatabaseIsDown(t *testing.T) {
	s := newSite(t, "fleet")
	r := newRouter(t)
	rep := s.replicator(t, r, 300*time.Millisecond, nil)
	r.activity(t, 0, 5)
	caughtUp(t, rep)

	s.srv.Kill9(t)
	r.activity(t, 5, 10)
	deadline := time.Now().Add(30 * time.Second)
	var st replicate.State
	for {
		st = rep.State()
		if !st.Connected && st.Behind() != "" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no alarm with the database down: %+v", st)
		}
		time.Sleep(50 * time.Millisecond)
	}
	if st.OutboxDepth != 20 || st.AuditPending != 10 {
		t.Errorf("database down: outbox %d, audit pending %d; want 20 and 10", st.OutboxDepth, st.AuditPending)
	}
	if why := st.Behind(); !strings.Contains(why, "behind (replicate.max_lag 300ms)") || !strings.Contains(why, "20 changes wait") {
		t.Errorf("alarm %q does not say how far behind and what waits", why)
	}
	if st.LastError == "" {
		t.Error("no last error while the database is down")
	}

	s.srv.Restart(t)
	st = caughtUp(t, rep)
	if st.Behind() != "" {
		t.Errorf("alarm still holds after catching up: %q", st.Behind())
	}
	s.every(t, 15)
}

// ackless drops the acknowledgement of the first n batches it passes:
// the database commits, and the router hears an error, as when the
// connection dies between the commit and its answer.
type ackless struct {
	replicate.Sink
	left *atomic.Int32
}

func (a ackless) Ingest(ctx context.Context, router string, evs []store.OutboxEvent) (uint64, error) {
	last, err := a.Sink.Ingest(ctx, router, evs)
	if err == nil && a.left.Add(-1) >= 0 {
		return 0, errors.New("connection lost before the answer")
	}
	return last, err
}

func (a ackless) IngestAudit(ctx context.Context, router string, es []audit.Entry) (uint64, error) {
	last, err := a.Sink.IngestAudit(ctx, router, es)
	if err == nil && a.left.Add(-1) >= 0 {
		return 0, errors.New("connection lost before the answer")
	}
	return last, err
}

func TestLostAnswersAreNotSentTwice(t *testing.T) {
	s := newSite(t, "fleet")
	r := newRouter(t)
	r.activity(t, 0, 12)
	var left atomic.Int32
	left.Store(3)
	rep := s.replicator(t, r, time.Hour, func(sink replicate.Sink) replicate.Sink { return ackless{sink, &left} })
	caughtUp(t, rep)
	if left.Load() >= 0 {
		t.Fatalf("the test lost only %d answers of 3", 3-left.Load())
	}
	s.every(t, 12)
}

func TestDatabaseThatLostChangesStopsTheStream(t *testing.T) {
	s := newSite(t, "fleet")
	r := newRouter(t)
	r.activity(t, 0, 4)
	rep := s.replicator(t, r, time.Hour, nil)
	caughtUp(t, rep)

	// The same router against a database that never had its changes, as
	// one restored from a backup older than them.
	s.database(t, "restored")
	s.db = "restored"
	rep2 := s.replicator(t, r, time.Hour, nil)
	deadline := time.Now().Add(30 * time.Second)
	var st replicate.State
	for st = rep2.State(); st.Stopped == ""; st = rep2.State() {
		if time.Now().After(deadline) {
			t.Fatalf("no stop against a database missing delivered changes: %+v", st)
		}
		time.Sleep(20 * time.Millisecond)
	}
	if !strings.Contains(st.Stopped, "changes 1 to 8 are on the router's own store only") {
		t.Errorf("stopped %q does not name the changes the database lacks", st.Stopped)
	}
	if why := st.Behind(); !strings.HasPrefix(why, "replication to PostgreSQL stopped: ") {
		t.Errorf("alarm %q", why)
	}
	// The audit log is its own outbox: it is sent all the same.
	for st = rep2.State(); st.AuditSent != 4; st = rep2.State() {
		if time.Now().After(deadline) {
			t.Fatalf("audit log not sent to the restored database: %+v", st)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestAuditRemovedByRetentionIsRecordedAsAHole(t *testing.T) {
	s := newSite(t, "fleet")
	dir := t.TempDir()
	now := time.Now().Add(-10 * 24 * time.Hour)
	clock := func() time.Time { return now }
	l, err := audit.Open(filepath.Join(dir, "audit"), audit.Options{KeyPath: filepath.Join(dir, "audit.key"), Logger: quiet,
		Now: clock, Retention: 48 * time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	appendN := func(n int) {
		for range n {
			if _, err := l.Append(audit.Entry{Operator: "uid:0(root)", Role: "auditor", Action: "audit.show", Outcome: audit.OutcomeAnswered}); err != nil {
				t.Fatal(err)
			}
		}
	}
	// A router that ran for longer than its audit retention before
	// replication was turned on: its first entries are gone.
	appendN(6)
	now = now.Add(5 * 24 * time.Hour)
	appendN(3)
	if removed, err := l.Sweep(); err != nil || removed == 0 {
		t.Fatalf("sweep: removed %d segments, %v", removed, err)
	}
	if es, err := l.Entries(1, 1); err != nil || len(es) != 1 || es[0].Seq != 7 {
		t.Fatalf("the log's first entry after the sweep: %+v, %v; want seq 7", es, err)
	}
	rep := replicate.New(replicate.Config{Router: "router_a", Audit: l, Batch: 100, MaxLag: time.Hour, Log: quiet,
		Poll: 20 * time.Millisecond, Backoff: 50 * time.Millisecond,
		Connect: replicate.Postgres(s.srv.DSN("router_a", s.db)), Close: replicate.ClosePostgres})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- rep.Run(ctx) }()
	defer func() { cancel(); <-done }()
	st := caughtUp(t, rep)
	if st.AuditSent != 9 || st.AuditSkipped != 6 || st.Sent[replicate.StreamAudit] != 3 {
		t.Errorf("sent through %d, skipped %d, sent %d; want through 9, 6 skipped, 3 sent", st.AuditSent, st.AuditSkipped, st.Sent[replicate.StreamAudit])
	}
	if n := s.count(t, "SELECT count(*) FROM blocknat.audit_holes WHERE router = 'router_a' AND from_seq = 1 AND to_seq = 6"); n != 1 {
		t.Errorf("the database records %d holes 1-6, want 1", n)
	}
	if n := s.count(t, "SELECT count(*) FROM blocknat.audit WHERE router = 'router_a'"); n != 3 {
		t.Errorf("the database holds %d audit entries, want the 3 the log kept", n)
	}
	// Later entries follow the strict gap check as before.
	appendN(2)
	caughtUp(t, rep)
	if n := s.count(t, "SELECT count(*) FROM blocknat.audit_holes"); n != 1 {
		t.Errorf("%d holes after more entries, want still 1", n)
	}
}

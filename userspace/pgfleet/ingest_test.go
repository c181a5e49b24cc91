package pgfleet_test

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/blocknat/blocknat/test/testutil"
	"github.com/blocknat/blocknat/userspace/audit"
	"github.com/blocknat/blocknat/userspace/pgfleet"
	"github.com/blocknat/blocknat/userspace/store"
)

// schemaDump describes the schema blocknat without its day partitions
// (which follow the data): tables and columns, constraints, indexes,
// functions with their bodies and privileges, and table privileges.
func (f *fleet) schemaDump(t testing.TB, db string) string {
	t.Helper()
	var b strings.Builder
	for _, q := range []string{
		`SELECT format('%s.%s %s %s %s', c.table_name, c.column_name, c.data_type, c.is_nullable, coalesce(c.column_default, ''))
		 FROM information_schema.columns c JOIN pg_class r ON r.relname = c.table_name AND r.relnamespace = 'blocknat'::regnamespace
		 WHERE c.table_schema = 'blocknat' AND NOT r.relispartition ORDER BY c.table_name, c.ordinal_position`,
		`SELECT format('%s %s %s', r.relname, r.relkind, coalesce(r.relacl::text, '')) FROM pg_class r
		 WHERE r.relnamespace = 'blocknat'::regnamespace AND NOT r.relispartition AND r.relkind IN ('r', 'p', 'v', 'S') ORDER BY 1`,
		`SELECT format('%s %s', conrelid::regclass, pg_get_constraintdef(oid)) FROM pg_constraint
		 WHERE connamespace = 'blocknat'::regnamespace AND conrelid IN (SELECT oid FROM pg_class WHERE NOT relispartition) ORDER BY 1`,
		`SELECT indexdef FROM pg_indexes i JOIN pg_class r ON r.relname = i.tablename AND r.relnamespace = 'blocknat'::regnamespace
		 WHERE i.schemaname = 'blocknat' AND NOT r.relispartition ORDER BY 1`,
		`SELECT format('%s %s %s', p.oid::regprocedure, coalesce(p.proacl::text, ''), md5(pg_get_functiondef(p.oid)))
		 FROM pg_proc p WHERE p.pronamespace = 'blocknat'::regnamespace ORDER BY 1`,
		`SELECT coalesce(nspacl::text, '') FROM pg_namespace WHERE nspname = 'blocknat'`,
	} {
		rows := f.strings(t, db, q)
		fmt.Fprintf(&b, "%d\n%s\n", len(rows), strings.Join(rows, "\n"))
	}
	return b.String()
}

// Migrating from empty and from version 1 with data in it give the same
// schema, and version 1's data still answers; Migrate is a no-op on a
// current schema and refuses to go down.
func TestMigrateFromEmptyAndFromPrevious(t *testing.T) {
	ctx := context.Background()
	f := newFleet(t)
	f.srv.CreateDB(t, "fresh", ownerRole)
	fresh := connect(t, f.srv.DSN(ownerRole, "fresh"))
	from, to, err := fresh.Migrate(ctx, quiet)
	if err != nil || from != 0 || to != pgfleet.SchemaVersion {
		t.Fatalf("migrate from empty: %d -> %d, %v; want 0 -> %d", from, to, err, pgfleet.SchemaVersion)
	}
	if from, to, err := fresh.Migrate(ctx, quiet); err != nil || from != to || to != pgfleet.SchemaVersion {
		t.Errorf("migrate again: %d -> %d, %v; want a no-op at %d", from, to, err, pgfleet.SchemaVersion)
	}

	// Two services starting at once: the advisory lock has them migrate
	// one after the other, and both succeed.
	f.srv.CreateDB(t, "racing", ownerRole)
	var wg sync.WaitGroup
	errs := make([]error, 2)
	for i := range errs {
		db := connect(t, f.srv.DSN(ownerRole, "racing"))
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, _, errs[i] = db.Migrate(ctx, quiet)
		}()
	}
	wg.Wait()
	if errs[0] != nil || errs[1] != nil {
		t.Errorf("concurrent migrations: %v", errs)
	}
	if a, b := f.schemaDump(t, "fresh"), f.schemaDump(t, "racing"); a != b {
		t.Errorf("concurrently migrated schema differs:\n%s\n%s", a, b)
	}

	// The previous version, empty, migrates to the same schema.
	f.database(t, "previous", pgfleet.SchemaVersion-1)
	prev := connect(t, f.srv.DSN(ownerRole, "previous"))
	if from, to, err := prev.Migrate(ctx, quiet); err != nil || from != pgfleet.SchemaVersion-1 || to != pgfleet.SchemaVersion {
		t.Fatalf("migrate from %d: %d -> %d, %v", pgfleet.SchemaVersion-1, from, to, err)
	}
	if a, b := f.schemaDump(t, "fresh"), f.schemaDump(t, "previous"); a != b {
		t.Errorf("schemas differ:\nfrom empty:\n%s\nfrom version %d:\n%s", a, pgfleet.SchemaVersion-1, b)
	}

	// Version 1 with data migrates through every version since.
	f.database(t, "old", 1)
	r1 := f.router(t, "r1", "old")
	rec := record(1, t0, t0.Add(time.Hour)).AsStored()
	evs := []store.OutboxEvent{
		{Seq: 1, Kind: store.OutboxEpoch, Epoch: func() store.Epoch { e := epoch(1, t0.Add(-time.Hour)); e.Recorded = t0; return e }()},
		{Seq: 2, Kind: store.OutboxOpen, Record: func() store.Record { r := rec; r.End = time.Time{}; return r }()},
		{Seq: 3, Kind: store.OutboxClose, Record: rec},
	}
	ingestAll(t, r1, "r1", evs, 3)
	// Version 1 has no leases: its ingest refuses them by name.
	_, err = r1.Ingest(ctx, "r1", []store.OutboxEvent{{Seq: 4, Kind: store.OutboxLeaseHeld,
		Lease: store.Lease{Inside: inside(1), MAC: mac(1), Start: t0}}})
	if err == nil || !strings.Contains(err.Error(), "kind 3") {
		t.Errorf("lease event into version 1: %v, want a refusal naming kind 3", err)
	}
	oldDB := connect(t, f.srv.DSN(ownerRole, "old"))
	from, to, err = oldDB.Migrate(ctx, quiet)
	if err != nil || from != 1 || to != pgfleet.SchemaVersion {
		t.Fatalf("migrate from 1: %d -> %d, %v", from, to, err)
	}
	if a, b := f.schemaDump(t, "fresh"), f.schemaDump(t, "old"); a != b {
		t.Errorf("schemas differ:\nfrom empty:\n%s\nfrom version 1:\n%s", a, b)
	}
	if !strings.Contains(f.schemaDump(t, "fresh"), "ingest_audit") || !strings.Contains(f.schemaDump(t, "fresh"), "skip_audit") {
		t.Error("schema dump names no ingest_audit: the comparison compares too little")
	}
	got, err := oldDB.Reader(pgfleet.ReaderOptions{}).LookupInterval(pub, rec.PortLo+5, t0.Add(time.Minute), t0.Add(time.Minute))
	if err != nil || len(got) != 1 || got[0].Router != "r1" || !got[0].End.Equal(rec.End) {
		t.Errorf("lookup of version 1's record after the migration: %+v, %v", got, err)
	}
	if last, err := r1.Ingest(ctx, "r1", []store.OutboxEvent{{Seq: 4, Kind: store.OutboxLeaseHeld,
		Lease: store.Lease{Inside: inside(1), MAC: mac(1), Start: t0}}}); err != nil || last != 4 {
		t.Errorf("lease event after the migration: %d, %v", last, err)
	}
	if err := oldDB.MigrateTo(ctx, 1, quiet); err == nil {
		t.Errorf("MigrateTo(1) on version %d: no error; migrations never go down", pgfleet.SchemaVersion)
	}
	var want []string
	for v := 1; v <= pgfleet.SchemaVersion; v++ {
		want = append(want, strconv.Itoa(v))
	}
	if n := f.strings(t, "old", "SELECT version::text FROM blocknat.schema_version ORDER BY version"); !reflect.DeepEqual(n, want) {
		t.Errorf("schema_version rows %v, want %v", n, want)
	}
}

// Delivering batches twice, or overlapping, stores what one delivery
// stores; a batch after a gap returns *GapError and stores nothing.
func TestRedeliveryAndGaps(t *testing.T) {
	ctx := context.Background()
	s, _ := scenario(t)
	evs := outbox(t, s)
	if len(evs) < 30 {
		t.Fatalf("scenario has %d events: too few", len(evs))
	}
	f := newFleet(t)
	f.database(t, "once", 0)
	f.database(t, "twice", 0)
	ingestAll(t, f.router(t, "r1", "once"), "r1", evs, len(evs))
	twice := f.router(t, "r1", "twice")
	ingestAll(t, twice, "r1", evs[:10], 10)
	ingestAll(t, twice, "r1", evs[:10], 10)  // again
	ingestAll(t, twice, "r1", evs[5:20], 15) // overlapping
	ingestAll(t, twice, "r1", evs[19:], 6)   // the rest, one event again
	ingestAll(t, twice, "r1", evs[len(evs)-3:], 3)
	if a, b := f.dump(t, "once"), f.dump(t, "twice"); a != b {
		t.Errorf("redelivered database differs:\nonce:\n%s\ntwice:\n%s", a, b)
	}

	f.database(t, "gap", 0)
	gap := f.router(t, "r1", "gap")
	ingestAll(t, gap, "r1", evs[:5], 5)
	before := f.dump(t, "gap")
	for _, c := range []struct {
		name      string
		batch     []store.OutboxEvent
		have, got uint64
	}{
		{"starts after a hole", evs[6:9], 5, 7},
		{"hole inside", append(append([]store.OutboxEvent{}, evs[5:7]...), evs[8:10]...), 7, 9},
		{"out of order", []store.OutboxEvent{evs[6], evs[5]}, 5, 7},
	} {
		_, err := gap.Ingest(ctx, "r1", c.batch)
		var g *pgfleet.GapError
		if !errors.As(err, &g) {
			t.Errorf("%s: %v, want *GapError", c.name, err)
			continue
		}
		if *g != (pgfleet.GapError{Router: "r1", Stream: "store", Have: c.have, Got: c.got}) {
			t.Errorf("%s: %+v, want have %d got %d", c.name, *g, c.have, c.got)
		}
		if !strings.Contains(g.Error(), "r1") || !strings.Contains(g.Error(), "store") {
			t.Errorf("%s: %q names not the router and stream", c.name, g.Error())
		}
	}
	if after := f.dump(t, "gap"); after != before {
		t.Errorf("a refused batch changed the database:\nbefore:\n%s\nafter:\n%s", before, after)
	}
	if p, err := gap.Progress(ctx, "r1"); err != nil || p.Store != 5 || p.Audit != 0 {
		t.Errorf("progress after the gaps: %+v, %v; want store 5", p, err)
	}

	// The audit stream has its own seqs and the same rules.
	es := auditEntries(t, 6)
	if last, err := gap.IngestAudit(ctx, "r1", es[:3]); err != nil || last != 3 {
		t.Fatalf("ingest audit 1..3: %d, %v", last, err)
	}
	_, err := gap.IngestAudit(ctx, "r1", es[4:])
	var g *pgfleet.GapError
	if !errors.As(err, &g) || g.Stream != "audit" || g.Have != 3 || g.Got != 5 {
		t.Errorf("audit after a hole: %v, want a gap at 3 -> 5", err)
	}
	if last, err := gap.IngestAudit(ctx, "r1", es[1:]); err != nil || last != 6 {
		t.Errorf("ingest audit 2..6: %d, %v", last, err)
	}
	if n := f.count(t, "gap", "blocknat.audit"); n != 6 {
		t.Errorf("%d audit rows, want 6", n)
	}
}

// auditEntries appends n entries to a real audit log and returns them,
// one with a NUL and markup in its criteria, as a client may send.
func auditEntries(t testing.TB, n int) []audit.Entry {
	t.Helper()
	dir := t.TempDir()
	clock := testutil.NewClock(t0, 0)
	l, err := audit.Open(filepath.Join(dir, "log"), audit.Options{Now: clock.Now, KeyPath: filepath.Join(dir, "key.pem")})
	if err != nil {
		t.Fatalf("open audit log: %v", err)
	}
	defer l.Close()
	for i := range n {
		clock.Advance(7 * time.Hour)
		e := audit.Entry{Operator: "uid:1001(alice)", Role: "investigator", Action: "lookup",
			Criteria: map[string]string{"ip": "198.51.100.7", "port": fmt.Sprint(1024 + i)},
			Purpose:  "case 17", Outcome: audit.OutcomeAnswered, Subjects: []string{audit.SubjectInside(inside(i))}}
		if i == 1 {
			e.Criteria["note"] = "a\x00b <script>&\u2028"
		}
		if _, err := l.Append(e); err != nil {
			t.Fatalf("append: %v", err)
		}
	}
	es, err := l.Entries(1, n)
	if err != nil || len(es) != n {
		t.Fatalf("entries: %d, %v", len(es), err)
	}
	return es
}

// AuditCopy gives back the router's entries exactly, so that their hash
// chain verifies from the copy.
func TestAuditCopyIsExact(t *testing.T) {
	ctx := context.Background()
	es := auditEntries(t, 5)
	f := newFleet(t)
	owner := f.database(t, "fleet", 0)
	r1 := f.router(t, "r1", "fleet")
	if last, err := r1.IngestAudit(ctx, "r1", es); err != nil || last != 5 {
		t.Fatalf("ingest audit: %d, %v", last, err)
	}
	got, err := owner.AuditCopy(ctx, "r1", 2, 10)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, es[1:]) {
		t.Errorf("audit copy:\n%+v\nwant\n%+v", got, es[1:])
	}
	for i := 1; i < len(got); i++ {
		if got[i].Prev != got[i-1].Hash {
			t.Errorf("copy seq %d: prev %s is not the hash of seq %d", got[i].Seq, got[i].Prev, got[i-1].Seq)
		}
	}
	if got, err := owner.AuditCopy(ctx, "r1", 4, 1); err != nil || len(got) != 1 || got[0].Seq != 4 {
		t.Errorf("audit copy from 4, limit 1: %+v, %v", got, err)
	}
	rs, err := owner.Routers(ctx)
	if err != nil || len(rs) != 1 || rs[0].Name != "r1" || rs[0].Audit != 5 || rs[0].Store != 0 || rs[0].LastIngest.IsZero() {
		t.Errorf("routers: %+v, %v", rs, err)
	}
}

// A router's role calls progress and ingest, as itself only, and can
// read, change or delete nothing directly.
func TestRouterRoleOnlyIngests(t *testing.T) {
	ctx := context.Background()
	s, _ := scenario(t)
	f := newFleet(t)
	f.database(t, "fleet", 0)
	r1 := f.router(t, "r1", "fleet")
	ingestAll(t, r1, "r1", outbox(t, s), 50)
	if _, err := r1.IngestAudit(ctx, "r1", auditEntries(t, 2)); err != nil {
		t.Fatalf("ingest audit as r1: %v", err)
	}
	if p, err := r1.Progress(ctx, "r1"); err != nil || p.Store == 0 || p.Audit != 2 {
		t.Errorf("progress as r1: %+v, %v", p, err)
	}
	f.router(t, "r2", "fleet")
	if _, err := r1.Ingest(ctx, "r2", outbox(t, s)[:1]); pgCodeOf(err) != "42501" || !strings.Contains(err.Error(), "r2") {
		t.Errorf("r1 ingesting as r2: %v, want permission denied naming r2", err)
	}
	if _, err := r1.Progress(ctx, "r2"); pgCodeOf(err) != "42501" {
		t.Errorf("r1 reading r2's progress: %v, want permission denied", err)
	}

	tables := f.strings(t, "fleet", `SELECT relname::text FROM pg_class WHERE relnamespace = 'blocknat'::regnamespace AND relkind IN ('r', 'p') ORDER BY 1`)
	if len(tables) < 12 {
		t.Fatalf("tables %v: the scenario made too few partitions", tables)
	}
	conn, err := pgx.Connect(ctx, f.srv.DSN("r1", "fleet"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	for _, table := range tables {
		q := "blocknat." + pgx.Identifier{table}.Sanitize()
		col := f.strings(t, "fleet", `SELECT column_name::text FROM information_schema.columns
			WHERE table_schema = 'blocknat' AND table_name = $1 ORDER BY ordinal_position LIMIT 1`, table)
		if len(col) != 1 {
			t.Fatalf("table %s: no columns", table)
		}
		c := pgx.Identifier{col[0]}.Sanitize()
		for _, sql := range []string{
			"SELECT * FROM " + q + " LIMIT 1",
			"UPDATE " + q + " SET " + c + " = " + c,
			"DELETE FROM " + q,
			"TRUNCATE " + q,
			"INSERT INTO " + q + " DEFAULT VALUES",
		} {
			if _, err := conn.Exec(ctx, sql); pgCodeOf(err) != "42501" {
				t.Errorf("r1: %s: %v, want permission denied (42501)", sql, err)
			}
		}
	}
	for _, sql := range []string{
		"SELECT blocknat.ensure_partition('records', 1)",
		"SELECT blocknat.put_epoch('r1', 1, '{}')",
		"SELECT blocknat.lock_progress('r1', 'store')",
		"CREATE TABLE blocknat.mine (x int)",
		"DROP TABLE blocknat.records",
		"SELECT pg_catalog.pg_advisory_unlock_all()", // harmless, and allowed: a control
	} {
		_, err := conn.Exec(ctx, sql)
		if strings.Contains(sql, "advisory_unlock_all") {
			if err != nil {
				t.Errorf("r1: %s: %v (the connection itself is broken)", sql, err)
			}
			continue
		}
		if code := pgCodeOf(err); code != "42501" && code != "42P01" {
			t.Errorf("r1: %s: %v, want permission denied", sql, err)
		}
	}
}

func pgCodeOf(err error) string {
	var pe *pgconn.PgError
	if errors.As(err, &pe) {
		return pe.Code
	}
	return ""
}

// Connect's errors name the database and never the password.
func TestConnectHidesPassword(t *testing.T) {
	f := newFleet(t)
	for _, dsn := range []string{
		f.srv.DSN(ownerRole, "nosuchdb") + " password=hunter2secret",
		"postgres://blocknat_owner:hunter2secret@/nosuchdb?host=" + f.srv.Dir(),
		"host=" + f.srv.Dir() + " password=hunter2secret port=notaport",
	} {
		_, err := pgfleet.Connect(context.Background(), dsn)
		if err == nil {
			t.Errorf("connect to a missing database: no error")
			continue
		}
		if strings.Contains(err.Error(), "hunter2secret") {
			t.Errorf("connect error shows the password: %v", err)
		}
		if !strings.Contains(err.Error(), "nosuchdb") && !strings.Contains(err.Error(), "port") {
			t.Errorf("connect error names neither the database nor the field: %v", err)
		}
	}
}

// Routers creating the same new day partitions at once all succeed, and
// every row arrives.
func TestConcurrentRoutersNewDay(t *testing.T) {
	const routers, batches, perBatch = 4, 5, 40
	f := newFleet(t)
	owner := f.database(t, "fleet", 0)
	dbs := make([]*pgfleet.DB, routers)
	for i := range dbs {
		dbs[i] = f.router(t, fmt.Sprintf("r%d", i), "fleet")
	}
	start := make(chan struct{})
	var wg sync.WaitGroup
	errs := make(chan error, routers)
	for i, db := range dbs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			seq := uint64(0)
			for b := range batches {
				var evs []store.OutboxEvent
				for k := range perBatch {
					seq++
					// Every batch spans the same three new days.
					st := t0.Add(time.Duration(b*perBatch+k) * time.Second)
					evs = append(evs, store.OutboxEvent{Seq: seq, Kind: store.OutboxClose,
						Record: record(k, st, st.Add(50*time.Hour)).AsStored()})
				}
				if _, err := db.Ingest(context.Background(), fmt.Sprintf("r%d", i), evs); err != nil {
					errs <- fmt.Errorf("router r%d batch %d: %w", i, b, err)
					return
				}
			}
		}()
	}
	close(start)
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if got := f.partitionNames(t, "fleet", "records"); !reflect.DeepEqual(got, []string{"records_20260310", "records_20260311", "records_20260312", "records_20260313"}) {
		t.Errorf("partitions %v", got)
	}
	if n, want := f.count(t, "fleet", "blocknat.records"), routers*batches*perBatch*4; n != want {
		t.Errorf("%d record rows, want %d (4 day copies each)", n, want)
	}
	got, err := owner.Reader(pgfleet.ReaderOptions{}).LookupInterval(pub, 1024, t0.Add(time.Hour), t0.Add(time.Hour))
	if err != nil || len(got) != routers*batches {
		t.Errorf("lookup across routers: %d records, %v; want %d", len(got), err, routers*batches)
	}
}

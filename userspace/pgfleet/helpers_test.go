package pgfleet_test

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/blocknat/blocknat/test/testutil"
	"github.com/blocknat/blocknat/test/testutil/pgtest"
	"github.com/blocknat/blocknat/userspace/api"
	"github.com/blocknat/blocknat/userspace/pgfleet"
	"github.com/blocknat/blocknat/userspace/store"
)

var (
	_ api.Store        = (*pgfleet.Reader)(nil)
	_ api.RouterEpochs = (*pgfleet.Reader)(nil)
)

// ownerRole owns the fleet schema in the tests; it needs CREATEROLE for
// the first migration, which creates blocknat_router.
const ownerRole = "blocknat_owner"

var quiet = slog.New(slog.NewTextHandler(io.Discard, nil))

// fleet is a PostgreSQL server with the owner role and one migrated
// database per name asked for.
type fleet struct {
	srv *pgtest.Server
}

func newFleet(t testing.TB) *fleet {
	t.Helper()
	srv := pgtest.Start(t)
	srv.CreateRole(t, ownerRole, "LOGIN", "CREATEROLE")
	return &fleet{srv: srv}
}

// database creates database name, and returns the owner's connection to
// it migrated to version (0: SchemaVersion).
func (f *fleet) database(t testing.TB, name string, version int) *pgfleet.DB {
	t.Helper()
	f.srv.CreateDB(t, name, ownerRole)
	db := connect(t, f.srv.DSN(ownerRole, name))
	if version == 0 {
		version = pgfleet.SchemaVersion
	}
	if err := db.MigrateTo(context.Background(), version, quiet); err != nil {
		t.Fatalf("migrate %s to %d: %v", name, version, err)
	}
	return db
}

// router creates router's login role (once per server) and returns its
// connection to database db.
func (f *fleet) router(t testing.TB, router, db string) *pgfleet.DB {
	t.Helper()
	if !f.roleExists(t, router) {
		f.srv.CreateRole(t, router, "LOGIN", "IN ROLE blocknat_router")
	}
	return connect(t, f.srv.DSN(router, db))
}

func (f *fleet) roleExists(t testing.TB, role string) bool {
	t.Helper()
	var n int
	f.query(t, "postgres", func(c *pgx.Conn) error {
		return c.QueryRow(context.Background(), "SELECT count(*) FROM pg_roles WHERE rolname = $1", role).Scan(&n)
	})
	return n > 0
}

// query runs fn on a superuser connection to db.
func (f *fleet) query(t testing.TB, db string, fn func(c *pgx.Conn) error) {
	t.Helper()
	ctx := context.Background()
	c, err := pgx.Connect(ctx, f.srv.DSN(pgtest.Superuser, db))
	if err != nil {
		t.Fatalf("connect to %s as superuser: %v", db, err)
	}
	defer c.Close(ctx)
	if err := fn(c); err != nil {
		t.Fatalf("query %s: %v", db, err)
	}
}

// strings returns the one-column text rows of sql, run as superuser.
func (f *fleet) strings(t testing.TB, db, sql string, args ...any) []string {
	t.Helper()
	var out []string
	f.query(t, db, func(c *pgx.Conn) error {
		rows, err := c.Query(context.Background(), sql, args...)
		if err != nil {
			return err
		}
		out, err = pgx.CollectRows(rows, pgx.RowTo[string])
		return err
	})
	return out
}

func (f *fleet) count(t testing.TB, db, table string) int {
	t.Helper()
	var n int
	f.query(t, db, func(c *pgx.Conn) error {
		return c.QueryRow(context.Background(), "SELECT count(*) FROM "+table).Scan(&n)
	})
	return n
}

// dump is every row of the data tables, as text, in a fixed order: two
// databases that took the same events dump the same.
func (f *fleet) dump(t testing.TB, db string) string {
	t.Helper()
	var b strings.Builder
	for _, table := range []string{"records", "open_records", "leases", "current_leases", "epochs", "audit", "progress", "widths", "meta"} {
		rows := f.strings(t, db, fmt.Sprintf(
			"SELECT (to_jsonb(x) - 'updated')::text FROM blocknat.%s x ORDER BY 1", table))
		fmt.Fprintf(&b, "%s %d\n%s\n", table, len(rows), strings.Join(rows, "\n"))
	}
	return b.String()
}

// partitionNames lists parent's partitions.
func (f *fleet) partitionNames(t testing.TB, db, parent string) []string {
	t.Helper()
	return f.strings(t, db, `SELECT c.relname::text FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
		WHERE i.inhparent = $1::regclass ORDER BY 1`, "blocknat."+parent)
}

func connect(t testing.TB, dsn string) *pgfleet.DB {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	db, err := pgfleet.Connect(ctx, dsn)
	if err != nil {
		t.Fatalf("connect: %v", err)
	}
	t.Cleanup(db.Close)
	return db
}

// routerStore is a router's real Pebble store with its outbox, on disk,
// on a settable clock.
func routerStore(t testing.TB, clock *testutil.Clock) *store.Store {
	t.Helper()
	s, err := store.Open(filepath.Join(t.TempDir(), "store"), store.Options{Now: clock.Now, Outbox: true, Logger: quiet})
	if err != nil {
		t.Fatalf("open store: %v", err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// outbox returns every event of s's outbox.
func outbox(t testing.TB, s *store.Store) []store.OutboxEvent {
	t.Helper()
	evs, err := s.Outbox(0, 1<<30)
	if err != nil {
		t.Fatalf("outbox: %v", err)
	}
	return evs
}

// ingestAll sends evs in batches of size.
func ingestAll(t testing.TB, db *pgfleet.DB, router string, evs []store.OutboxEvent, size int) {
	t.Helper()
	for i := 0; i < len(evs); i += size {
		batch := evs[i:min(i+size, len(evs))]
		last, err := db.Ingest(context.Background(), router, batch)
		if err != nil {
			t.Fatalf("ingest seq %d..%d: %v", batch[0].Seq, batch[len(batch)-1].Seq, err)
		}
		if want := batch[len(batch)-1].Seq; last != want {
			t.Fatalf("ingest seq %d..%d: last %d, want %d", batch[0].Seq, want, last, want)
		}
	}
}

var (
	t0 = time.Date(2026, 3, 10, 22, 0, 0, 0, time.UTC)
	// pub is the pool's address in the tests.
	pub = netip.MustParseAddr("198.51.100.7")
)

func inside(i int) netip.Addr { return netip.AddrFrom4([4]byte{100, 64, byte(i >> 8), byte(i)}) }

func mac(i int) net.HardwareAddr { return net.HardwareAddr{0x02, 0, 0, 0, byte(i >> 8), byte(i)} }

func block(i int) (lo, hi uint16) { return uint16(1024 + 256*i), uint16(1024 + 256*i + 255) }

func record(sub int, start, end time.Time) store.Record {
	lo, hi := block(sub)
	return store.Record{Subscriber: uint32(sub), Inside: inside(sub), Public: pub, PortLo: lo, PortHi: hi,
		Start: start, End: end, Epoch: 1}
}

func activate(r store.Record) store.Op {
	r.End = time.Time{}
	return store.Op{Kind: store.OpActivate, Record: r}
}
func release(r store.Record) store.Op { return store.Op{Kind: store.OpRelease, Record: r} }

func apply(t testing.TB, s *store.Store, ops ...store.Op) {
	t.Helper()
	if err := s.Apply(ops); err != nil {
		t.Fatalf("apply: %v", err)
	}
}

func epoch(id uint32, start time.Time) store.Epoch {
	return store.Epoch{ID: id, Start: start, Prefixes: []netip.Prefix{netip.MustParsePrefix("100.64.0.0/16")},
		Pool: []netip.Addr{pub}, PortLo: 1024, PortHi: 65535, BlockSize: 256, Ratio: 252, Hash: [32]byte{byte(id), 1, 2}}
}

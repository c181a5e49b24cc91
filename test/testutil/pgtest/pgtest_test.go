package pgtest_test

import (
	"context"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/blocknat/blocknat/test/testutil"
	"github.com/blocknat/blocknat/test/testutil/pgtest"
)

// A committed row survives kill -9 of the postmaster, and the server
// listens on its socket only.
func TestKill9KeepsCommittedRows(t *testing.T) {
	s := pgtest.Start(t)
	s.CreateRole(t, "alice", "LOGIN")
	s.CreateDB(t, "app", "alice")
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	conn, err := pgx.Connect(ctx, s.DSN("alice", "app"))
	if err != nil {
		t.Fatal(err)
	}
	var listen, fsync string
	if err := conn.QueryRow(ctx, "SELECT current_setting('listen_addresses'), current_setting('fsync')").Scan(&listen, &fsync); err != nil {
		t.Fatal(err)
	}
	if listen != "" || fsync != "on" {
		t.Errorf("listen_addresses %q fsync %q, want '' and on", listen, fsync)
	}
	if _, err := conn.Exec(ctx, "CREATE TABLE t (x int); INSERT INTO t VALUES (1), (2)"); err != nil {
		t.Fatal(err)
	}
	s.Kill9(t)
	// Its backend exits once it notices the postmaster is gone.
	testutil.Eventually(t, 10*time.Second, func() bool { return conn.Ping(ctx) != nil },
		"connection still answers 10s after kill -9 of the postmaster")
	conn.Close(ctx)
	s.Restart(t)
	conn, err = pgx.Connect(ctx, s.DSN("alice", "app"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	var n int
	if err := conn.QueryRow(ctx, "SELECT count(*) FROM t").Scan(&n); err != nil {
		t.Fatal(err)
	}
	if n != 2 {
		t.Errorf("after crash recovery: %d rows, want 2", n)
	}
}

package preflight

import (
	"context"
	"io"
	"log/slog"
	"path/filepath"
	"strings"
	"testing"

	"github.com/blocknat/blocknat/test/testutil/pgtest"
	"github.com/blocknat/blocknat/userspace/config"
	"github.com/blocknat/blocknat/userspace/pgfleet"
)

func TestReplicationCheck(t *testing.T) {
	srv := pgtest.Start(t)
	srv.CreateRole(t, "blocknat_owner", "LOGIN", "CREATEROLE")
	srv.CreateDB(t, "fleet", "blocknat_owner")
	srv.CreateDB(t, "empty", "blocknat_owner")
	owner, err := pgfleet.Connect(context.Background(), srv.DSN("blocknat_owner", "fleet"))
	if err != nil {
		t.Fatal(err)
	}
	defer owner.Close()
	if _, _, err := owner.Migrate(context.Background(), slog.New(slog.NewTextHandler(io.Discard, nil))); err != nil {
		t.Fatal(err)
	}
	srv.CreateRole(t, "cgn_a", "LOGIN", "IN ROLE blocknat_router")

	for _, tc := range []struct {
		name   string
		r      config.Replicate
		status Status
		want   string
	}{
		{"replicates", config.Replicate{Postgres: srv.DSN("cgn_a", "fleet"), Router: "cgn_a"}, Pass,
			"replicates as cgn_a; the database holds this router's changes up to 0 and its audit log up to 0"},
		{"another router's name", config.Replicate{Postgres: srv.DSN("cgn_a", "fleet"), Router: "cgn_b"}, Fail,
			"may not replicate as \"cgn_b\""},
		{"no schema", config.Replicate{Postgres: srv.DSN("cgn_a", "empty"), Router: "cgn_a"}, Fail,
			"the database has no blocknat schema"},
		{"unreachable", config.Replicate{Postgres: "host=" + filepath.Join(t.TempDir(), "none") + " user=cgn_a dbname=fleet", Router: "cgn_a"}, Fail,
			"cannot reach the log server"},
	} {
		f := checkReplication("replicate.postgres", tc.r)
		if f.Status != tc.status || !strings.Contains(f.Text, tc.want) {
			t.Errorf("%s: %s, want it to say %q", tc.name, f, tc.want)
		}
		if f.Refuses {
			t.Errorf("%s: refuses the start; the outbox keeps the changes, so replication never should", tc.name)
		}
	}

	// The agent's start does not wait for the log server.
	cfg := &config.Config{Replicate: config.Replicate{Postgres: srv.DSN("cgn_a", "fleet"), Router: "cgn_a"}}
	var names []string
	for _, c := range replicationCheck(cfg) {
		names = append(names, c.name)
		if !c.liveOnly {
			t.Errorf("check %s runs at every start", c.name)
		}
	}
	if len(names) != 1 {
		t.Errorf("replication checks %v, want one", names)
	}
}

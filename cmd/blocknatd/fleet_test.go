package main

import (
	"bytes"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/blocknat/blocknat/test/testutil/pgtest"
	"github.com/blocknat/blocknat/userspace/audit"
	"github.com/blocknat/blocknat/userspace/fleet"
	"github.com/blocknat/blocknat/userspace/pgfleet"
)

// TestFleetConfigRefused: `blocknatd fleet` reads the fleet's own
// configuration, not a router's, and refuses a bad one naming the field,
// before it connects to anything.
func TestFleetConfigRefused(t *testing.T) {
	dir := t.TempDir()
	for _, tc := range []struct{ yaml, want string }{
		{"name: east\npostgres: \"dbname=blocknat\"\nretention: {records: 1y}\n", "retention.records"},
		{"name: east\npostgres: \"dbname=blocknat\"\ninside: {interfaces: [eth0]}\n", `inside: unknown field "inside"`},
		{"postgres: \"dbname=blocknat\"\n", "name: missing"},
	} {
		path := filepath.Join(dir, "fleet.yaml")
		if err := os.WriteFile(path, []byte(tc.yaml), 0o600); err != nil {
			t.Fatal(err)
		}
		var stdout, stderr bytes.Buffer
		if code := run(t.Context(), []string{"fleet", "--config", path}, &stdout, &stderr); code != 1 {
			t.Errorf("fleet with %q: exit %d, want 1\n%s", tc.yaml, code, stderr.String())
		}
		if !strings.Contains(stderr.String(), "blocknatd fleet: ") || !strings.Contains(stderr.String(), tc.want) {
			t.Errorf("fleet with %q: stderr %q lacks %q", tc.yaml, stderr.String(), tc.want)
		}
	}
	var stdout, stderr bytes.Buffer
	if code := run(t.Context(), []string{"fleet", "--replace", "--config", "x"}, &stdout, &stderr); code != 2 {
		t.Errorf("fleet --replace: exit %d, want 2 (%s)", code, stderr.String())
	}
}

// TestFleetUnit: the fleet service's unit runs `blocknatd fleet` on the
// default configuration, without any capability, as a user of its own,
// with state and socket where the fleet configuration's defaults expect
// them, and says why for every directive. (TestServiceUnitVerifies and
// TestServiceUnitSecurity check it with systemd-analyze.)
func TestFleetUnit(t *testing.T) {
	ds := readUnit(t, fleetUnitFile)
	for _, d := range ds {
		if !d.commented {
			t.Errorf("%s:%d: %s=%s has no comment saying why", fleetUnitFile, d.line, d.key, d.value)
		}
	}
	for _, want := range []struct{ key, value string }{
		{"ExecStart", "/usr/local/sbin/blocknatd fleet --config " + defaultFleetConfigPath},
		{"Type", "notify"},
		{"Restart", "always"},
		{"CapabilityBoundingSet", ""},
		{"DynamicUser", "yes"},
		{"StateDirectory", filepath.Base(fleet.DefaultStateDir)},
		{"RuntimeDirectory", filepath.Base(filepath.Dir(fleet.DefaultSocket))},
	} {
		if got := values(ds, "Service", want.key); len(got) != 1 || got[0] != want.value {
			t.Errorf("%s=%v, want %s", want.key, got, want.value)
		}
	}
	if filepath.Join("/var/lib", filepath.Base(fleet.DefaultStateDir)) != fleet.DefaultStateDir ||
		filepath.Join("/run", filepath.Base(filepath.Dir(fleet.DefaultSocket))) != filepath.Dir(fleet.DefaultSocket) {
		t.Errorf("state_dir %s or api.socket %s is not under StateDirectory or RuntimeDirectory", fleet.DefaultStateDir, fleet.DefaultSocket)
	}
}

// TestFleetRetire: `blocknatd fleet retire` marks a router that has
// replicated as retired, through the fleet's own configuration, and
// refuses a name that never replicated and a missing --router.
func TestFleetRetire(t *testing.T) {
	ctx := t.Context()
	pg := pgtest.Start(t)
	pg.CreateRole(t, "blocknat_owner", "LOGIN", "CREATEROLE")
	pg.CreateDB(t, "blocknat", "blocknat_owner")
	dsn := pg.DSN("blocknat_owner", "blocknat")
	owner, err := pgfleet.Connect(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer owner.Close()
	if _, _, err := owner.Migrate(ctx, slog.New(slog.NewTextHandler(io.Discard, nil))); err != nil {
		t.Fatal(err)
	}
	pg.CreateRole(t, "cgn_a", "LOGIN", "IN ROLE blocknat_router")
	router, err := pgfleet.Connect(ctx, pg.DSN("cgn_a", "blocknat"))
	if err != nil {
		t.Fatal(err)
	}
	defer router.Close()
	if _, err := router.IngestAudit(ctx, "cgn_a", []audit.Entry{{Seq: 1, Time: time.Now(), Operator: "uid:0(root)", Action: "status",
		Outcome: audit.OutcomeAnswered, Hash: strings.Repeat("0", 64)}}); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "fleet.yaml")
	if err := os.WriteFile(path, []byte("name: east\npostgres: \""+dsn+"\"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		args []string
		code int
		want string
	}{
		{[]string{"fleet", "retire", "--config", path}, 2, "usage: blocknatd fleet retire --config FILE --router NAME"},
		{[]string{"fleet", "--config", path, "--router", "cgn_a"}, 2, "--router applies to fleet retire only"},
		{[]string{"fleet", "retire", "--config", path, "--router", "cgn_b"}, 1, "retire router cgn_b: it has never replicated"},
		{[]string{"fleet", "retire", "--config", path, "--router", "cgn_a"}, 0, "router cgn_a retired at "},
	} {
		var stdout, stderr bytes.Buffer
		code := run(ctx, tc.args, &stdout, &stderr)
		if out := stdout.String() + stderr.String(); code != tc.code || !strings.Contains(out, tc.want) {
			t.Errorf("%v: exit %d, want %d; output %q lacks %q", tc.args, code, tc.code, out, tc.want)
		}
	}
	routers, err := owner.Routers(ctx)
	if err != nil || len(routers) != 1 || routers[0].InService() {
		t.Errorf("after retiring cgn_a: %+v, %v; want it retired", routers, err)
	}
}

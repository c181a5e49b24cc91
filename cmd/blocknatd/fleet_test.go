package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/blocknat/blocknat/userspace/fleet"
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

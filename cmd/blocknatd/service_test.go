package main

import (
	"bufio"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/blocknat/blocknat/userspace/config"
)

const unitFile = "blocknatd.service"

// directive is one Key=Value line of the unit and the comment above it.
type directive struct {
	section, key, value string
	line                int
	commented           bool
}

func readUnit(t *testing.T) []directive {
	t.Helper()
	f, err := os.Open(unitFile)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var out []directive
	section, commented := "", false
	sc := bufio.NewScanner(f)
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		switch {
		case line == "":
			commented = false
		case strings.HasPrefix(line, "#"):
			commented = true
		case strings.HasPrefix(line, "["):
			section, commented = strings.Trim(line, "[]"), false
		default:
			key, value, ok := strings.Cut(line, "=")
			if !ok {
				t.Fatalf("%s:%d: %q is not Key=Value", unitFile, n, line)
			}
			out = append(out, directive{section, key, value, n, commented})
			commented = false
		}
	}
	return out
}

func values(ds []directive, section, key string) []string {
	var out []string
	for _, d := range ds {
		if d.section == section && d.key == key {
			out = append(out, d.value)
		}
	}
	return out
}

// TestServiceUnitHardening: the unit grants exactly the capabilities the
// agent needs, puts state, socket and pins where the configuration's
// defaults expect them, restarts always, and says why for every directive.
func TestServiceUnitHardening(t *testing.T) {
	ds := readUnit(t)
	for _, d := range ds {
		if !d.commented {
			t.Errorf("%s:%d: %s=%s has no comment saying why", unitFile, d.line, d.key, d.value)
		}
	}
	wantCaps := []string{"CAP_BPF", "CAP_NET_ADMIN", "CAP_PERFMON"}
	for _, key := range []string{"CapabilityBoundingSet", "AmbientCapabilities"} {
		got := values(ds, "Service", key)
		if len(got) != 1 {
			t.Fatalf("%s set %d times", key, len(got))
		}
		caps := strings.Fields(got[0])
		slices.Sort(caps)
		if !slices.Equal(caps, wantCaps) {
			t.Errorf("%s=%s, want exactly %v", key, got[0], wantCaps)
		}
	}
	for _, want := range []struct{ key, value string }{
		{"StateDirectory", filepath.Base(config.DefaultStateDir)},
		{"RuntimeDirectory", filepath.Base(filepath.Dir(config.DefaultSocket))},
		{"ProtectSystem", "strict"},
		{"Restart", "always"},
		{"NoNewPrivileges", "yes"},
		{"ReadWritePaths", "/sys/fs/bpf"},
	} {
		if got := values(ds, "Service", want.key); len(got) != 1 || got[0] != want.value {
			t.Errorf("%s=%v, want %s", want.key, got, want.value)
		}
	}
	if !strings.HasPrefix(config.DefaultBPFFSDir, "/sys/fs/bpf/") {
		t.Errorf("bpffs_dir's default %s is outside ReadWritePaths", config.DefaultBPFFSDir)
	}
	if filepath.Join("/var/lib", values(ds, "Service", "StateDirectory")[0]) != config.DefaultStateDir ||
		filepath.Join("/run", values(ds, "Service", "RuntimeDirectory")[0]) != filepath.Dir(config.DefaultSocket) {
		t.Errorf("StateDirectory/RuntimeDirectory do not hold state_dir %s and api.socket %s", config.DefaultStateDir, config.DefaultSocket)
	}
	for _, exec := range append(values(ds, "Service", "ExecStart"), values(ds, "Service", "ExecStartPre")...) {
		if strings.Contains(exec, "--replace") {
			t.Errorf("%q: a restart must never replace another program's XDP without the operator", exec)
		}
		if !strings.Contains(exec, "--config "+defaultConfigPath) {
			t.Errorf("%q does not use the default configuration %s", exec, defaultConfigPath)
		}
	}
}

// TestServiceUnitVerifies runs systemd-analyze verify on the unit, with
// the binary paths pointed at a fresh build (verify checks that they are
// executables). Any complaint about the unit fails the test.
func TestServiceUnitVerifies(t *testing.T) {
	analyze, err := exec.LookPath("systemd-analyze")
	if err != nil {
		// Not a privilege question: the tool is simply not on this system.
		t.Skip("systemd-analyze not installed")
	}
	dir := t.TempDir()
	bin := filepath.Join(dir, "blocknatd")
	ctx := context.Background()
	if out, err := exec.CommandContext(ctx, "go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	data, err := os.ReadFile(unitFile)
	if err != nil {
		t.Fatal(err)
	}
	unit := filepath.Join(dir, unitFile)
	if err := os.WriteFile(unit, []byte(strings.ReplaceAll(string(data), "/usr/local/sbin/blocknatd", bin)), 0o644); err != nil {
		t.Fatal(err)
	}
	out, err := exec.CommandContext(ctx, analyze, "verify", unit).CombinedOutput()
	if err != nil {
		t.Fatalf("systemd-analyze verify: %v\n%s", err, out)
	}
	// verify exits 0 on warnings such as an unknown or misplaced key; for
	// this unit, every line about it is a failure.
	for _, line := range strings.Split(string(out), "\n") {
		if strings.Contains(line, unitFile) {
			t.Errorf("systemd-analyze: %s", line)
		}
	}
}

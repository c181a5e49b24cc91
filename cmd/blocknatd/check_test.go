package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestCheckOfflineSaysSo: `check` without --live passes a valid file and
// lists every check of the router as not made, an interface that does
// not exist included, never as ok; --live is refused on other verbs.
func TestCheckOfflineSaysSo(t *testing.T) {
	cfg := filepath.Join(t.TempDir(), "blocknat.yaml")
	yaml := "inside: {interfaces: [eth7], prefixes: [100.64.0.0/24]}\noutside: {interfaces: [eth8], pool: [198.51.100.10/31]}\n"
	if err := os.WriteFile(cfg, []byte(yaml), 0o600); err != nil {
		t.Fatal(err)
	}
	var stdout, stderr bytes.Buffer
	if code := run(t.Context(), []string{"check", "--config", cfg}, &stdout, &stderr); code != 0 {
		t.Fatalf("check: exit %d\n%s%s", code, stdout.String(), stderr.String())
	}
	out := stdout.String()
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if lines[0] != cfg+": ok" {
		t.Errorf("first line %q, want the file's verdict", lines[0])
	}
	for _, want := range []string{"inside interface eth7: not checked (offline; --live looks at the router)",
		"outside interface eth8: not checked (offline", "state_dir /var/lib/blocknat: not checked (offline", "clock: not checked (offline"} {
		if !strings.Contains(out, want) {
			t.Errorf("check does not say %q:\n%s", want, out)
		}
	}
	for _, l := range lines[1:] {
		if !strings.Contains(l, "not checked (offline") {
			t.Errorf("offline line %q claims something of the router", l)
		}
	}
	stdout.Reset()
	if code := run(t.Context(), []string{"detach", "--live", "--config", cfg}, &stdout, &stderr); code != 2 ||
		!strings.Contains(stderr.String(), "--live only applies to check") {
		t.Errorf("detach --live: exit %d, %s", code, stderr.String())
	}
}

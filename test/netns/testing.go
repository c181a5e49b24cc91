package netns

import (
	"os"
	"os/exec"
	"strconv"
	"testing"
)

// RequirePrivilegedEnv, when "1" (as in CI), turns every privilege or tool skip
// into a failure, so nothing that could run is skipped silently.
const RequirePrivilegedEnv = "BLOCKNAT_REQUIRE_PRIVILEGED"

// RequirePrivileged skips the test unless it runs as root with `ip` installed,
// or fails it when RequirePrivilegedEnv is "1".
func RequirePrivileged(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		skipOrFail(t, "needs root to create network namespaces")
	}
	RequireTools(t, "ip")
}

// RequireTools skips the test unless every named program is on PATH, or fails it
// when RequirePrivilegedEnv is "1".
func RequireTools(t testing.TB, names ...string) {
	t.Helper()
	for _, name := range names {
		if _, err := exec.LookPath(name); err != nil {
			skipOrFail(t, "needs "+name+": "+err.Error())
		}
	}
}

func skipOrFail(t testing.TB, reason string) {
	t.Helper()
	if os.Getenv(RequirePrivilegedEnv) == "1" {
		t.Fatalf("%s (%s=1 forbids skipping)", reason, RequirePrivilegedEnv)
	}
	t.Skip(reason)
}

// NewTestTopology builds a Topology for one test and deletes it in t.Cleanup.
// The namespaces are named <prefix>-<pid>-sub0 and so on: the process id, in
// base 36, keeps two test binaries running at once on one machine apart.
func NewTestTopology(t testing.TB, prefix string) *Topology {
	t.Helper()
	RequirePrivileged(t)
	RequireTools(t, "ethtool")
	topo, err := NewTopology(t.Context(), TopologyOptions{Prefix: TestPrefix(prefix)})
	if err != nil {
		t.Fatalf("new topology: %v", err)
	}
	t.Cleanup(func() {
		if err := topo.Close(); err != nil {
			t.Errorf("close topology: %v", err)
		}
	})
	return topo
}

// TestPrefix returns the namespace prefix NewTestTopology uses for prefix.
func TestPrefix(prefix string) string {
	return prefix + "-" + strconv.FormatInt(int64(os.Getpid()), 36)
}

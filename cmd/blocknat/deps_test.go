package main

import (
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
)

// TestDepsStayLight: the CLI an investigator or an auditor runs links the
// wire contract, not the agent. None of the eBPF library, the record
// store's database or the metrics library may reach it, and neither may the
// packages built on them.
func TestDepsStayLight(t *testing.T) {
	goTool, err := exec.LookPath("go")
	if err != nil {
		goTool = filepath.Join(runtime.GOROOT(), "bin", "go")
	}
	out, err := exec.Command(goTool, "list", "-deps", ".").CombinedOutput()
	if err != nil {
		t.Fatalf("go list -deps: %v\n%s", err, out)
	}
	forbidden := []string{
		"github.com/cilium/",
		"github.com/cockroachdb/pebble",
		"github.com/prometheus/",
		"github.com/blocknat/blocknat/loader",
		"github.com/blocknat/blocknat/userspace/agent",
		"github.com/blocknat/blocknat/userspace/store",
		"github.com/blocknat/blocknat/userspace/metrics",
	}
	deps := strings.Fields(string(out))
	for _, dep := range deps {
		for _, f := range forbidden {
			if dep == strings.TrimSuffix(f, "/") || strings.HasPrefix(dep, f) {
				t.Errorf("blocknat links %s", dep)
			}
		}
	}
	// "github.com/blocknat/blocknat/userspace/api" would drag the store in;
	// only its client may come.
	for _, dep := range deps {
		if dep == "github.com/blocknat/blocknat/userspace/api" {
			t.Errorf("blocknat links the API server %s; use userspace/api/client", dep)
		}
	}
	t.Logf("%d packages", len(deps))
}

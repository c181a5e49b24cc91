package main

import (
	"strings"
	"testing"
	"time"

	"github.com/blocknat/blocknat/userspace/api"
)

// TestStatusWait: --wait gives up after --timeout with exit 1 and the
// reason while the agent answers but is not ready; what waiting cannot
// change (no admin role) ends it at once; --timeout needs --wait.
func TestStatusWait(t *testing.T) {
	a := startAgent(t, agentOptions{roles: allRoles()})
	start := time.Now()
	r := runCLI("status", "--wait", "--timeout", "600ms", "--socket", a.socket)
	if r.code != exitFailure || !strings.Contains(r.stderr, "the agent was not ready within 600ms: the agent answers but is still starting") {
		t.Errorf("status --wait against an agent not ready: exit %d\n%s", r.code, r.stderr)
	}
	if took := time.Since(start); took < 600*time.Millisecond || took > 3*time.Second {
		t.Errorf("--timeout 600ms took %s", took)
	}

	noRole := startAgent(t, agentOptions{roles: api.Roles{}})
	start = time.Now()
	r = runCLI("status", "--wait", "--timeout", "10s", "--socket", noRole.socket)
	if r.code != exitFailure || time.Since(start) > 3*time.Second || !strings.Contains(r.stderr, "blocknat status:") {
		t.Errorf("status --wait without the admin role: exit %d after %s\n%s", r.code, time.Since(start), r.stderr)
	}

	if r := runCLI("status", "--timeout", "1s", "--socket", a.socket); r.code != exitUsage {
		t.Errorf("--timeout without --wait: exit %d\n%s", r.code, r.stderr)
	}
}

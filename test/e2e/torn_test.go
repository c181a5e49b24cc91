package e2e

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/blocknat/blocknat/userspace/wire"
)

// TestTornAuditTailRepairedAtStart: a crash in the middle of an audit write
// leaves a torn last line. The next start moves it aside, records the
// repair in the log, and answers as before; the log verifies.
func TestTornAuditTailRepairedAtStart(t *testing.T) {
	e := startEnv(t, "bn-e2etorn")
	var shown wire.AuditShowResponse
	e.cli(t, &shown, "audit", "show", "--config", e.cfgPath, "--json")
	if err := e.agent.Kill(); err != nil {
		t.Fatal(err)
	}
	segs, err := filepath.Glob(filepath.Join(e.stateDir, "audit", "audit-*.jsonl"))
	if err != nil || len(segs) == 0 {
		t.Fatalf("no audit segment: %v %v", segs, err)
	}
	newest := segs[len(segs)-1]
	f, err := os.OpenFile(newest, os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		t.Fatal(err)
	}
	f.WriteString(`{"seq":2,"time":"2026-12-02T00:00:00Z","operator":"uid:10`)
	f.Close()

	e.start(t)
	e.cli(t, &shown, "audit", "show", "--config", e.cfgPath, "--json")
	var repaired bool
	for _, en := range shown.Entries {
		repaired = repaired || (en.Action == "audit.repair" && strings.Contains(en.Detail, filepath.Base(newest)))
	}
	if !repaired {
		t.Errorf("no audit.repair entry naming %s: %+v", filepath.Base(newest), shown.Entries)
	}
	if kept, _ := filepath.Glob(newest + ".torn-*"); len(kept) != 1 {
		t.Errorf("torn bytes not kept beside the segment: %v", kept)
	}
	if out, err := runCmd(t.Context(), bins.Blocknat, "audit", "verify", "--config", e.cfgPath); err != nil {
		t.Errorf("audit verify after the repair: %v\n%s", err, out)
	}
}

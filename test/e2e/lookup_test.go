package e2e

import (
	"encoding/json"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/blocknat/blocknat/test/harness"
	"github.com/blocknat/blocknat/test/netns"
	"github.com/blocknat/blocknat/userspace/wire"
)

// TestLookupWhatTheServerSaw is the job blocknat exists for: the server
// logs a public address, port and time; `blocknat lookup` names the
// subscriber, and the question is in the audit log, which verifies.
func TestLookupWhatTheServerSaw(t *testing.T) {
	e := startEnv(t, "bn-e2elook")
	srv, err := netns.StartHTTPServer(e.topo.Internet, netip.AddrPortFrom(e.topo.ServerAddrs[0], 8080))
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	sub := e.topo.Subscribers[1]
	if out, err := sub.NS.Exec(t.Context(), "curl", "--noproxy", "*", "-sS", "-m", "5", "http://"+srv.Addr.String()+"/"); err != nil {
		t.Fatalf("curl: %v %s", err, out)
	}
	seenAt := time.Now().UTC().Format(time.RFC3339Nano)
	seen := srv.Remotes()[0]
	time.Sleep(200 * time.Millisecond) // the record is committed within 50 ms
	socket := harness.SocketPath(e.stateDir)

	var ans wire.LookupResponse
	e.cli(t, &ans, "lookup", "--socket", socket, "--ip", seen.Addr().String(), "--port", itoa(seen.Port()),
		"--time", seenAt, "--tolerance", "2s", "--purpose", "case 2026-4411", "--json")
	if len(ans.Candidates) != 1 {
		t.Fatalf("candidates %+v, want exactly one", ans.Candidates)
	}
	c := ans.Candidates[0]
	if c.Inside != sub.Addr || c.Public != seen.Addr() || seen.Port() < c.PortLo || seen.Port() > c.PortHi || c.End != nil || c.Epoch != 1 {
		t.Errorf("candidate %+v, want %s's open block holding %s in epoch 1", c, sub.Addr, seen)
	}

	human, err := runCmd(t.Context(), bins.Blocknat, "lookup", "--socket", socket, "--ip", seen.Addr().String(),
		"--port", itoa(seen.Port()), "--time", seenAt, "--purpose", "case 2026-4411")
	if err != nil {
		t.Fatalf("lookup: %v\n%s", err, human)
	}
	for _, want := range []string{"1 candidate", sub.Addr.String(), "epoch 1", "still active"} {
		if !strings.Contains(string(human), want) {
			t.Errorf("human answer lacks %q:\n%s", want, human)
		}
	}

	var shown wire.AuditShowResponse
	e.cli(t, &shown, "audit", "show", "--socket", socket, "--json")
	var lookups []string
	for _, en := range shown.Entries {
		if en.Action == "lookup" {
			lookups = append(lookups, en.Criteria["ip"]+":"+en.Criteria["port"])
			if en.Purpose != "case 2026-4411" || en.Outcome != "answered" || !strings.HasPrefix(en.Operator, "uid:0") {
				t.Errorf("audit entry %+v", en)
			}
		}
	}
	if len(lookups) != 2 || lookups[0] != seen.String() {
		t.Errorf("audited lookups %v, want two for %s", lookups, seen)
	}
	out, err := runCmd(t.Context(), bins.Blocknat, "audit", "verify", "--socket", socket)
	if err != nil {
		t.Errorf("audit verify: %v\n%s", err, out)
	}
}

// TestLookupRefusedWithoutRole: a local user without the investigator role
// is refused, and the refusal is in the audit log.
func TestLookupRefusedWithoutRole(t *testing.T) {
	e := startEnv(t, "bn-e2eref")
	socket := harness.SocketPath(e.stateDir)
	// Let uid 65534 reach the socket: the roles decide, not the file mode.
	for dir := filepath.Dir(socket); dir != "/" && dir != os.TempDir(); dir = filepath.Dir(dir) {
		if err := os.Chmod(dir, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	cmd := exec.CommandContext(t.Context(), bins.Blocknat, "lookup", "--socket", socket, "--ip", "198.51.100.10",
		"--port", "2100", "--time", "2026-11-20T12:00:01Z", "--purpose", "curiosity")
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
	out, err := cmd.CombinedOutput()
	if err == nil || !strings.Contains(string(out), "refused") {
		t.Fatalf("lookup as uid 65534: err=%v output %q, want a refusal", err, out)
	}
	var shown wire.AuditShowResponse
	e.cli(t, &shown, "audit", "show", "--socket", socket, "--json")
	if len(shown.Entries) == 0 {
		t.Fatal("no audit entries")
	}
	first := shown.Entries[0]
	// A uid without a role is refused before its body is read: the entry
	// holds who, when, what kind and the outcome, not the purpose it sent.
	if first.Action != "lookup" || first.Outcome != "refused" || !strings.HasPrefix(first.Operator, "uid:65534") || first.Purpose != "" {
		t.Errorf("audit entry %+v, want the refused lookup by uid 65534, without its purpose", first)
	}
}

func itoa(v uint16) string {
	b, _ := json.Marshal(v)
	return string(b)
}

package e2e

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/blocknat/blocknat/test/harness"
	"github.com/blocknat/blocknat/test/netns"
	"github.com/blocknat/blocknat/userspace/config"
)

// clockSynchronised is what the kernel says of its clock, and whether its
// estimated error is within selfcheck.clock_max_error's default, for the
// expectation of the check that reads it too. It asks adjtimex itself,
// not through userspace/clockstate, so the check is held to the kernel.
func clockSynchronised(t *testing.T) (synchronised, within bool) {
	t.Helper()
	var tx unix.Timex
	state, err := unix.Adjtimex(&tx)
	if err != nil {
		t.Fatal(err)
	}
	synchronised = state != unix.TIME_ERROR && tx.Status&unix.STA_UNSYNC == 0
	return synchronised, synchronised && time.Duration(tx.Esterror)*time.Microsecond <= config.DefaultClockMaxError
}

// wantLines fails for each substring the output lacks.
func wantLines(t *testing.T, what, out string, wants ...string) {
	t.Helper()
	for _, w := range wants {
		if !strings.Contains(out, w) {
			t.Errorf("%s does not say %q:\n%s", what, w, out)
		}
	}
}

// TestCheckLive: `blocknatd check --live` in the router namespace names a
// missing interface, a down one and one with a foreign XDP program, each
// on its own line with the fix, and exits 1; against a running agent it
// names the agent holding state_dir and bpffs_dir by pid; offline it says
// it looked at nothing.
func TestCheckLive(t *testing.T) {
	e := prepareEnv(t, "bn-e2echklive", "")
	root, err := harness.ModuleRoot(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	in0, in1, out := e.topo.InsideIfaces[0], e.topo.InsideIfaces[1], e.topo.OutsideIface
	const missing = "bnchk-missing"
	dir := t.TempDir()
	cfgPath := filepath.Join(dir, "live.yaml")
	cfg := strings.Replace(string(harness.Config(e.topo, e.stateDir, e.pinDir, "")),
		"interfaces: ["+strings.Join(e.topo.InsideIfaces, ", ")+"]", "interfaces: ["+in0+", "+in1+", "+missing+"]", 1)
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	if out, err := e.topo.Router.Exec(t.Context(), "ip", "link", "set", "dev", in0, "xdp", "obj",
		filepath.Join(root, "loader", "baseline_bpfel.o"), "sec", "xdp"); err != nil {
		t.Fatalf("attach a foreign program: %v %s", err, out)
	}
	foreign := xdpProgID(t, e.topo.Router, in0)
	if _, err := e.topo.Router.Exec(t.Context(), "ip", "link", "set", "dev", in1, "down"); err != nil {
		t.Fatal(err)
	}

	offline, err := e.topo.Router.Exec(t.Context(), bins.Blocknatd, "check", "--config", cfgPath)
	if err != nil {
		t.Fatalf("check offline: %v\n%s", err, offline)
	}
	wantLines(t, "check offline", string(offline), cfgPath+": ok", "inside interface "+missing+": not checked (offline; --live looks at the router)")
	if strings.Contains(string(offline), missing+": ok") {
		t.Errorf("offline, a missing interface is ok:\n%s", offline)
	}

	live, err := e.topo.Router.Exec(t.Context(), bins.Blocknatd, "check", "--live", "--config", cfgPath)
	var exit *exec.ExitError
	if !errors.As(err, &exit) || exit.ExitCode() != 1 {
		t.Fatalf("check --live over a broken router: %v, want exit 1\n%s", err, live)
	}
	wantLines(t, "check --live", string(live),
		"FAIL  inside interface "+missing+" does not exist in this network namespace",
		"create it, or correct inside.interfaces",
		"FAIL  inside interface "+in1+" is down",
		"ip link set dev "+in1+" up",
		"FAIL  inside interface "+in0+" already has XDP program id "+foreign,
		"ip link set dev "+in0+" xdp off",
		"ok    outside interface "+out+": up, native XDP supported by the driver, no XDP program blocknat did not attach",
		"ok    capabilities: CAP_BPF, CAP_NET_ADMIN, CAP_PERFMON",
		"ok    state_dir "+e.stateDir+": does not exist yet",
		"ok    bpffs_dir "+e.pinDir+": on a bpffs",
		"ok    metrics.listen 127.0.0.1:9477: free")
	switch synchronised, within := clockSynchronised(t); {
	case within:
		wantLines(t, "check --live", string(live), "ok    clock: synchronised, estimated error")
	case synchronised:
		wantLines(t, "check --live", string(live), "clock: estimated error", "is above selfcheck.clock_max_error 100 ms")
	default:
		wantLines(t, "check --live", string(live), "FAIL  clock is not synchronised", "NTP")
	}
	if _, err := os.Stat(e.stateDir); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("check --live made state_dir %s: %v", e.stateDir, err)
	}

	// The router repaired, an agent on it: a second look names the agent.
	if out, err := e.topo.Router.Exec(t.Context(), "ip", "link", "set", "dev", in0, "xdp", "off"); err != nil {
		t.Fatalf("%v %s", err, out)
	}
	if _, err := e.topo.Router.Exec(t.Context(), "ip", "link", "set", "dev", in1, "up"); err != nil {
		t.Fatal(err)
	}
	e.start(t)
	held, err := e.topo.Router.Exec(t.Context(), bins.Blocknatd, "check", "--live", "--config", e.cfgPath)
	if !errors.As(err, &exit) || exit.ExitCode() != 1 {
		t.Fatalf("check --live beside a running agent: %v, want exit 1\n%s", err, held)
	}
	pid := e.agent.PID()
	wantLines(t, "check --live beside an agent", string(held),
		fmt.Sprintf("FAIL  state_dir %s is in use by blocknatd (pid %d): stop that agent", e.stateDir, pid),
		fmt.Sprintf("FAIL  bpffs_dir %s is held by another blocknatd (pid %d, state_dir %s", e.pinDir, pid, e.stateDir),
		"FAIL  metrics.listen 127.0.0.1:9477 is in use",
		"FAIL  api.socket "+harness.SocketPath(e.stateDir)+" is served by another process already",
		"ok    inside interface "+in0+": up, native XDP supported by the driver, no XDP program blocknat did not attach")
}

// TestStartRefusedNotRoot: blocknatd run as uid 65534 refuses to start,
// naming the capabilities it lacks and how to run it, and creates nothing:
// not state_dir (whose parent that uid may write), not the pins.
func TestStartRefusedNotRoot(t *testing.T) {
	netns.RequireTools(t, "setpriv")
	e := prepareEnv(t, "bn-e2enoroot", "")
	dir, err := os.MkdirTemp("", "bn-e2enoroot-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	// Writable by everyone, so that only the agent's own checks keep
	// state_dir from being made.
	if err := os.Chmod(dir, 0o777); err != nil {
		t.Fatal(err)
	}
	stateDir := filepath.Join(dir, "state")
	cfgPath := filepath.Join(dir, "blocknat.yaml")
	if err := os.WriteFile(cfgPath, harness.Config(e.topo, stateDir, e.pinDir, ""), 0o644); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
	defer cancel()
	out, err := e.topo.Router.Exec(ctx, "setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", bins.Blocknatd, "--config", cfgPath)
	if err == nil {
		t.Fatalf("blocknatd started as uid 65534:\n%s", out)
	}
	wantLines(t, "the refusal", string(out), "refusing to start; nothing was created",
		"capabilities CAP_BPF, CAP_NET_ADMIN, CAP_PERFMON are missing (uid 65534)",
		"run it as root (sudo blocknatd ...), or through the systemd unit")
	if strings.Contains(string(out), "statfs") && !strings.Contains(string(out), "run blocknatd as root") {
		t.Errorf("a statfs error without the fix:\n%s", out)
	}
	if _, err := os.Stat(stateDir); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("a refused start made state_dir %s: %v", stateDir, err)
	}
	if _, err := os.Stat(e.pinDir); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("a refused start made bpffs_dir %s: %v", e.pinDir, err)
	}
	for _, ifc := range e.ifaces {
		if id := xdpProgID(t, e.topo.Router, ifc); id != "" {
			t.Errorf("a refused start left program %s on %s", id, ifc)
		}
	}
}

// TestStartRefusedStateDirInUse: a second agent on the first one's
// state_dir (with a bpffs_dir of its own) is refused naming the first by
// pid, and adds nothing to state_dir or creates its pins.
func TestStartRefusedStateDirInUse(t *testing.T) {
	e := startEnv(t, "bn-e2estatebusy")
	before := listTree(t, e.stateDir)
	otherPins := filepath.Join(filepath.Dir(e.pinDir), "blocknat-b")
	cfgPath := filepath.Join(t.TempDir(), "b.yaml")
	if err := os.WriteFile(cfgPath, harness.Config(e.topo, e.stateDir, otherPins, "metrics: {listen: 127.0.0.1:9478}\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
	defer cancel()
	out, err := e.topo.Router.Exec(ctx, bins.Blocknatd, "--config", cfgPath)
	if err == nil {
		t.Fatalf("a second agent on state_dir %s started:\n%s", e.stateDir, out)
	}
	wantLines(t, "the refusal", string(out),
		fmt.Sprintf("state_dir %s is in use by blocknatd (pid %d)", e.stateDir, e.agent.PID()))
	if strings.Contains(string(out), "resource temporarily unavailable") {
		t.Errorf("the refusal is Pebble's:\n%s", out)
	}
	if _, err := os.Stat(otherPins); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("the refused agent made its bpffs_dir %s: %v", otherPins, err)
	}
	if after := listTree(t, e.stateDir); fmt.Sprint(after) != fmt.Sprint(before) && !onlyStoreChurn(before, after) {
		t.Errorf("state_dir changed under the refused agent:\nbefore %v\nafter  %v", before, after)
	}
}

// listTree lists the paths under dir.
func listTree(t *testing.T, dir string) []string {
	t.Helper()
	var out []string
	filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err == nil {
			out = append(out, strings.TrimPrefix(path, dir))
		}
		return nil
	})
	return out
}

// onlyStoreChurn allows what the running first agent itself writes under
// records/ and audit/ (new log and table files) meanwhile.
func onlyStoreChurn(before, after []string) bool {
	seen := map[string]bool{}
	for _, p := range before {
		seen[p] = true
	}
	for _, p := range after {
		if !seen[p] && !strings.HasPrefix(p, "/records/") && !strings.HasPrefix(p, "/audit/") {
			return false
		}
	}
	return true
}

package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/blocknat/blocknat/loader"
	"github.com/blocknat/blocknat/test/harness"
	"github.com/blocknat/blocknat/test/netns"
	"github.com/blocknat/blocknat/userspace/wire"
)

// namePrefix starts the name of every namespace and temporary directory a
// soak makes; the process id after it tells a later run whose they are.
const namePrefix = "bn-soak"

// insidePrefix is wider than the topology's own /24, so that hundreds of
// subscribers can each activate a block; the topology is told so, since
// it checks every address it routes against it.
var insidePrefix = netip.MustParsePrefix("100.64.0.0/22")

const metricsListen = "127.0.0.1:9477"

// env is the soak's world: the topology, the mounts, the agent and the
// files it runs from. Everything it makes is undone by close, in reverse.
type env struct {
	topo      *netns.Topology
	bins      harness.Binaries
	dir       string
	stateFS   string // the tmpfs mount that holds state_dir
	stateDir  string
	pinDir    string
	cfgPath   string
	ifaces    []string
	diskExtra string // the disk section, when the agent knows it

	mu        sync.Mutex
	agent     *harness.Agent
	starts    int
	undo      []func() error
	undoNames []string
}

func (e *env) onClose(name string, fn func() error) {
	e.undo = append(e.undo, fn)
	e.undoNames = append(e.undoNames, name)
}

// close undoes everything in reverse and says what it could not undo.
func (e *env) close() error {
	var errs []error
	for i := len(e.undo) - 1; i >= 0; i-- {
		if err := e.undo[i](); err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", e.undoNames[i], err))
		}
	}
	e.undo, e.undoNames = nil, nil
	return errors.Join(errs...)
}

// setup builds the world. On error, whatever was built is in e.undo and
// the caller's close removes it.
func (e *env) setup(ctx context.Context, stateSize string) error {
	pid := strconv.FormatInt(int64(os.Getpid()), 36)
	dir, err := os.MkdirTemp("", namePrefix+"-"+pid+"-")
	if err != nil {
		return err
	}
	e.dir = dir
	e.onClose("remove "+dir, func() error { return os.RemoveAll(dir) })

	logf("building blocknatd and blocknat")
	if e.bins, err = harness.Build(ctx, filepath.Join(dir, "bin")); err != nil {
		return err
	}

	e.stateFS = filepath.Join(dir, "statefs")
	if err := os.Mkdir(e.stateFS, 0o700); err != nil {
		return err
	}
	if err := unix.Mount("tmpfs", e.stateFS, "tmpfs", unix.MS_NOSUID|unix.MS_NODEV, "size="+stateSize+",mode=0700"); err != nil {
		return fmt.Errorf("mount a %s tmpfs for state_dir on %s: %w", stateSize, e.stateFS, err)
	}
	e.onClose("unmount "+e.stateFS, func() error { return unix.Unmount(e.stateFS, unix.MNT_DETACH) })
	e.stateDir = filepath.Join(e.stateFS, "state")

	unmountBPF, err := harness.MountBPFFS(filepath.Join(dir, "bpf"))
	if err != nil {
		return err
	}
	e.pinDir = filepath.Join(dir, "bpf", "blocknat")
	// The agent must be gone before its pins are removed, or it would
	// write into a data plane being taken apart.
	e.onClose("unmount bpffs", unmountBPF)

	logf("building the namespace topology %s-%s-*", namePrefix, pid)
	e.topo, err = netns.NewTopology(ctx, netns.TopologyOptions{Prefix: namePrefix + "-" + pid})
	if err != nil {
		return err
	}
	e.onClose("delete namespaces", e.topo.Close)
	e.topo.InsidePrefix = insidePrefix
	e.ifaces = append(append([]string{}, e.topo.InsideIfaces...), e.topo.OutsideIface)
	e.onClose("stop blocknatd", e.stopAgent)

	e.cfgPath = filepath.Join(dir, "blocknat.yaml")
	return nil
}

// config renders the soak's configuration; udpTimeout is what the
// reloads alternate, a change that must not disturb anything.
func (e *env) config(udpTimeout string) []byte {
	extra := fmt.Sprintf("inside: {interfaces: [%s], prefixes: [%s]}\n", strings.Join(e.topo.InsideIfaces, ", "), insidePrefix) +
		// A short transitory timeout, so that a forged RST or FIN that
		// moved a live connection's mapping to closing would cut it
		// within the hostile phase rather than hours later.
		fmt.Sprintf("timeouts: {udp: %s, tcp_transitory: 4s}\n", udpTimeout) +
		// A reconcile every few seconds, so that recovery after a full
		// disk is seen within the phase.
		"intervals: {sweep: 1s, reconcile: 5s}\n" +
		fmt.Sprintf("metrics: {listen: %q}\n", metricsListen) +
		// The clock alarm off: the disk phase waits for the alarm to clear
		// once the disk has room, and a soak machine's clock may not be
		// synchronised (test/e2e's TestClockHealth proves the clock alarm).
		"selfcheck: {clock_max_error: 0}\n" +
		e.diskExtra
	return harness.Config(e.topo, e.stateDir, e.pinDir, extra)
}

func (e *env) writeConfig(udpTimeout string) error {
	return os.WriteFile(e.cfgPath, e.config(udpTimeout), 0o600)
}

// checkConfig asks blocknatd whether it accepts cfg, without starting.
func (e *env) checkConfig(ctx context.Context, cfg []byte) error {
	path := filepath.Join(e.dir, "probe.yaml")
	if err := os.WriteFile(path, cfg, 0o600); err != nil {
		return err
	}
	defer os.Remove(path)
	out, err := exec.CommandContext(ctx, e.bins.Blocknatd, "check", "--config", path).CombinedOutput()
	if err != nil {
		return fmt.Errorf("%w: %s", err, strings.TrimSpace(string(out)))
	}
	return nil
}

func (e *env) startAgent(ctx context.Context, timeout time.Duration) error {
	a, err := harness.StartAgent(ctx, e.topo.Router, e.bins.Blocknatd, e.cfgPath, e.pinDir, e.ifaces, timeout)
	if err != nil {
		return err
	}
	e.mu.Lock()
	e.agent = a
	e.starts++
	e.mu.Unlock()
	return nil
}

func (e *env) currentAgent() *harness.Agent {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.agent
}

// killWhileStarting starts blocknatd and kills it after d, whether or
// not it is translating by then, and returns what it logged.
func (e *env) killWhileStarting(ctx context.Context, d time.Duration) (string, error) {
	var log strings.Builder
	cmd := e.topo.Router.Command(context.WithoutCancel(ctx), e.bins.Blocknatd, "--config", e.cfgPath)
	cmd.Stdout, cmd.Stderr = &log, &log
	if err := cmd.Start(); err != nil {
		return "", err
	}
	time.Sleep(d)
	cmd.Process.Kill()
	cmd.Wait()
	return log.String(), nil
}

// killAgent sends SIGKILL, as a crash would.
func (e *env) killAgent() error {
	a := e.currentAgent()
	if a == nil {
		return nil
	}
	return a.Kill()
}

func (e *env) stopAgent() error {
	a := e.currentAgent()
	if a == nil {
		return nil
	}
	if err := a.Stop(); err != nil && !agentExited(a) {
		return err
	}
	return nil
}

// agentExited reports whether the agent's process has ended, whatever
// the reason. The harness reaps it, so a zombie counts as ended too.
func agentExited(a *harness.Agent) bool {
	if a == nil {
		return true
	}
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", a.PID()))
	if err != nil {
		return true
	}
	// The state follows the command name in parentheses, which may hold
	// spaces of its own.
	_, after, ok := strings.Cut(string(stat), ") ")
	return !ok || strings.HasPrefix(after, "Z") || strings.HasPrefix(after, "X")
}

// agentAlive reports whether the current agent's process still runs.
func (e *env) agentAlive() bool { return !agentExited(e.currentAgent()) }

// reload writes the configuration, sends SIGHUP and waits until the agent
// says it reloaded once more than before.
func (e *env) reload(udpTimeout string, within time.Duration) error {
	a := e.currentAgent()
	before := strings.Count(a.Log(), "configuration reloaded")
	refusedBefore := strings.Count(a.Log(), "reload refused")
	if err := e.writeConfig(udpTimeout); err != nil {
		return err
	}
	if err := a.Signal(syscall.SIGHUP); err != nil {
		return fmt.Errorf("SIGHUP: %w", err)
	}
	deadline := time.Now().Add(within)
	for {
		log := a.Log()
		if strings.Count(log, "configuration reloaded") > before {
			return nil
		}
		if strings.Count(log, "reload refused") > refusedBefore {
			return fmt.Errorf("reload refused: %s", lastLine(log, "reload refused"))
		}
		if agentExited(a) {
			return fmt.Errorf("blocknatd exited on SIGHUP: %s", tail(log, 5))
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("no reload within %s", within)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// cli runs the blocknat command against the agent's socket and decodes
// its JSON answer.
func (e *env) cli(ctx context.Context, into any, args ...string) error {
	args = append(args, "--socket", harness.SocketPath(e.stateDir), "--json")
	ctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, e.bins.Blocknat, args...).Output()
	if err != nil {
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			return fmt.Errorf("blocknat %s: %w: %s", args[0], err, strings.TrimSpace(string(ee.Stderr)))
		}
		return fmt.Errorf("blocknat %s: %w", args[0], err)
	}
	if err := json.Unmarshal(out, into); err != nil {
		return fmt.Errorf("blocknat %s: bad JSON: %w", args[0], err)
	}
	return nil
}

// history asks the agent, as an investigator would, for every record of
// one subscriber since the soak began.
func (e *env) history(ctx context.Context, sub netip.Addr, from time.Time) ([]span, error) {
	var ans wire.HistoryResponse
	err := e.cli(ctx, &ans, "history", "--subscriber", sub.String(),
		"--from", from.UTC().Format(time.RFC3339Nano), "--to", time.Now().Add(time.Minute).UTC().Format(time.RFC3339Nano),
		"--purpose", "soak: records of every activation")
	if err != nil {
		return nil, err
	}
	out := make([]span, 0, len(ans.Records))
	for _, r := range ans.Records {
		if r.Inside != sub {
			continue
		}
		out = append(out, span{Start: r.Start, End: r.End, Recovered: slices.Contains(r.Flags, wire.FlagRecovered)})
	}
	return out, nil
}

// agentStatus is the part of `blocknat status --json` the soak reads.
type agentStatus struct {
	Agent struct {
		Alarm []string `json:"alarm"`
	} `json:"agent"`
}

func (e *env) statusAlarm(ctx context.Context) ([]string, error) {
	var st agentStatus
	if err := e.cli(ctx, &st, "status"); err != nil {
		return nil, err
	}
	return st.Agent.Alarm, nil
}

// metrics scrapes /metrics in the router namespace, where the agent
// listens on loopback. It is not audited, so it answers on a full disk.
func (e *env) metrics(ctx context.Context) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	out, err := e.topo.Router.Exec(ctx, "curl", "--noproxy", "*", "-sS", "-m", "5", "http://"+metricsListen+"/metrics")
	return string(out), err
}

// alarm is what a scrape says about the alarm: blocknat_records_alarm,
// and which reasons of blocknat_alarm{reason} hold.
type alarm struct {
	Raised  bool
	Reasons []string
	Lines   []string
}

func parseAlarm(text string) alarm {
	var a alarm
	for _, line := range strings.Split(text, "\n") {
		name, value, ok := strings.Cut(line, " ")
		if !ok || !strings.HasPrefix(name, "blocknat_records_alarm") && !strings.HasPrefix(name, "blocknat_alarm{") {
			continue
		}
		a.Lines = append(a.Lines, line)
		v, err := strconv.ParseFloat(strings.TrimSpace(value), 64)
		if err != nil || v == 0 {
			continue
		}
		if name == "blocknat_records_alarm" {
			a.Raised = true
		} else if _, reason, ok := strings.Cut(name, `reason="`); ok {
			a.Reasons = append(a.Reasons, strings.TrimSuffix(reason, `"}`))
		}
	}
	return a
}

func (e *env) stats() (loader.Stats, error) {
	p, err := loader.OpenPinned(e.pinDir)
	if err != nil {
		return nil, err
	}
	defer p.Close()
	return p.Stats()
}

func lastLine(log, substr string) string {
	lines := strings.Split(log, "\n")
	for i := len(lines) - 1; i >= 0; i-- {
		if strings.Contains(lines[i], substr) {
			return lines[i]
		}
	}
	return ""
}

func tail(log string, n int) string {
	lines := strings.Split(strings.TrimRight(log, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// removeStale deletes what an earlier soak that was killed left behind:
// namespaces, mounts and temporary directories named after a process that
// no longer runs.
func removeStale() {
	entries, _ := os.ReadDir("/var/run/netns")
	for _, ent := range entries {
		if pid, ok := stalePID(ent.Name()); ok {
			logf("removing namespace %s of soak process %d, which is gone", ent.Name(), pid)
			_ = (&netns.NS{Name: ent.Name()}).Delete()
		}
	}
	mounts, _ := os.ReadFile("/proc/self/mounts")
	var stale []string
	for _, line := range strings.Split(string(mounts), "\n") {
		fields := strings.Fields(line)
		if len(fields) < 2 {
			continue
		}
		for _, part := range strings.Split(fields[1], "/") {
			if _, ok := stalePID(part); ok {
				stale = append(stale, fields[1])
				break
			}
		}
	}
	// Deepest first, so that a bpffs inside a temporary directory goes
	// before anything it sits on.
	for i := len(stale) - 1; i >= 0; i-- {
		logf("unmounting %s of a soak that is gone", stale[i])
		if strings.HasSuffix(stale[i], "/bpf") {
			_ = harness.RemoveHostPins(filepath.Join(stale[i], "blocknat"), true)
		}
		_ = unix.Unmount(stale[i], unix.MNT_DETACH)
	}
	dirs, _ := os.ReadDir(os.TempDir())
	for _, d := range dirs {
		path := filepath.Join(os.TempDir(), d.Name())
		if _, ok := stalePID(d.Name()); ok && d.IsDir() && !mountedUnder(path) {
			logf("removing %s of a soak that is gone", path)
			_ = os.RemoveAll(path)
		}
	}
}

// mountedUnder reports whether anything is still mounted at or below dir,
// so that removing dir would reach into a filesystem it does not own.
func mountedUnder(dir string) bool {
	mounts, _ := os.ReadFile("/proc/self/mounts")
	for _, line := range strings.Split(string(mounts), "\n") {
		if f := strings.Fields(line); len(f) > 1 && (f[1] == dir || strings.HasPrefix(f[1], dir+"/")) {
			return true
		}
	}
	return false
}

// stalePID parses "bn-soak-<pid in base 36>-..." and reports whether that
// process is gone.
func stalePID(name string) (int, bool) {
	rest, ok := strings.CutPrefix(name, namePrefix+"-")
	if !ok {
		return 0, false
	}
	id, _, _ := strings.Cut(rest, "-")
	pid, err := strconv.ParseInt(id, 36, 32)
	if err != nil || int(pid) == os.Getpid() {
		return 0, false
	}
	if syscall.Kill(int(pid), 0) == nil {
		return 0, false
	}
	return int(pid), true
}

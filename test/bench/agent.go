package bench

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/blocknat/blocknat/loader"
	"github.com/blocknat/blocknat/test/harness"
	"github.com/blocknat/blocknat/userspace/guard"
)

// Agent is blocknatd running in the bed's router namespace with rin
// inside and rout outside, pinned into a bpffs of its own.
type Agent struct {
	*harness.Agent
	StateDir string
	unmount  func() error
	bed      *Bed
}

// StartAgent writes a configuration for the bed (plus extra YAML lines)
// under dir and starts bin, the built blocknatd, with it.
func StartAgent(ctx context.Context, bed *Bed, bin, dir, extra string) (_ *Agent, err error) {
	a := &Agent{StateDir: filepath.Join(dir, "state"), bed: bed}
	bpffs := filepath.Join(dir, "bpffs")
	if a.unmount, err = harness.MountBPFFS(bpffs); err != nil {
		return nil, fmt.Errorf("agent: %w", err)
	}
	defer func() {
		if err != nil {
			err = errors.Join(err, a.unmount())
		}
	}()
	pinDir := filepath.Join(bpffs, "blocknat")
	var cfg bytes.Buffer
	fmt.Fprintf(&cfg, "inside:  {interfaces: [%s], prefixes: [%s]}\n", RouterInIface, InsidePrefix)
	fmt.Fprintf(&cfg, "outside: {interfaces: [%s], pool: [%s]}\n", RouterOutIface, PoolPrefix)
	fmt.Fprintf(&cfg, "ports:   {range: 1024-65535, block_size: 0}\n")
	// max_flows is left to its default, sized from the mapping (BenchMaxFlows).
	fmt.Fprintf(&cfg, "xdp_mode: native\nstate_dir: %s\nbpffs_dir: %s\n", a.StateDir, pinDir)
	fmt.Fprintf(&cfg, "api: {socket: %s}\n", harness.SocketPath(a.StateDir))
	cfg.WriteString("roles: {investigator: {uids: [0]}, auditor: {uids: [0]}, admin: {uids: [0]}}\n")
	cfg.WriteString(extra)
	path := filepath.Join(dir, "blocknat.yaml")
	if err := os.WriteFile(path, cfg.Bytes(), 0o600); err != nil {
		return nil, fmt.Errorf("agent: write config: %w", err)
	}
	a.Agent, err = harness.StartAgent(ctx, bed.Router, bin, path, pinDir, []string{RouterInIface, RouterOutIface}, 30*time.Second)
	if err != nil {
		return nil, fmt.Errorf("agent: %w", err)
	}
	return a, nil
}

// StorePath is the agent's record store.
func (a *Agent) StorePath() string { return filepath.Join(a.StateDir, "records") }

// Pinned opens the running data plane's maps.
func (a *Agent) Pinned() (*loader.Pinned, error) { return loader.OpenPinned(a.PinDir) }

// Stop stops the agent, removes its data plane and unmounts its bpffs.
func (a *Agent) Stop() error {
	err := a.Agent.Stop()
	if err != nil {
		err = fmt.Errorf("agent: stop: %w\n%s", err, a.Log())
	}
	// The agent leaves its fail-closed guard behind, as on a router; in the
	// bed it would drop the next router's untranslated traffic (Linux
	// forwarding, nftables), so a measurement after this one must not
	// inherit it.
	if gerr := a.bed.Router.Do(guard.Remove); gerr != nil {
		err = errors.Join(err, fmt.Errorf("agent: remove the guard: %w", gerr))
	}
	return errors.Join(err, a.unmount())
}

// MemoryOf reads a process's resident set and its peak, in bytes.
func MemoryOf(pid int) (rss, peak uint64, err error) {
	status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, 0, fmt.Errorf("memory of pid %d: %w", pid, err)
	}
	for _, line := range strings.Split(string(status), "\n") {
		field, rest, ok := strings.Cut(line, ":")
		if !ok || (field != "VmRSS" && field != "VmHWM") {
			continue
		}
		kb, err := strconv.ParseUint(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 10, 64)
		if err != nil {
			return 0, 0, fmt.Errorf("memory of pid %d: %s: %w", pid, line, err)
		}
		if field == "VmRSS" {
			rss = kb << 10
		} else {
			peak = kb << 10
		}
	}
	if rss == 0 {
		return 0, 0, fmt.Errorf("memory of pid %d: no VmRSS in /proc status", pid)
	}
	return rss, peak, nil
}

// Pid finds the agent's process among those in the router namespace.
func (a *Agent) Pid(ctx context.Context, bed *Bed) (int, error) {
	out, err := runCmd(ctx, "ip", "netns", "pids", bed.Router.Name)
	if err != nil {
		return 0, fmt.Errorf("agent pid: %w", err)
	}
	for _, f := range strings.Fields(string(out)) {
		pid, err := strconv.Atoi(f)
		if err != nil {
			continue
		}
		comm, err := os.ReadFile(fmt.Sprintf("/proc/%d/comm", pid))
		if err == nil && strings.TrimSpace(string(comm)) == "blocknatd" {
			return pid, nil
		}
	}
	return 0, fmt.Errorf("agent pid: no blocknatd among the processes of %s: %s", bed.Router.Name, out)
}

// Package harness runs the real blocknat binaries against a netns topology:
// it builds them, mounts a bpffs the test can see, writes a configuration
// for the topology, and starts and stops blocknatd inside the router
// namespace. The end-to-end tests, the demo and the lab share it, so the
// demo and the lab run exactly what the tests prove.
package harness

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/blocknat/blocknat/loader"
	"github.com/blocknat/blocknat/test/netns"
	"github.com/blocknat/blocknat/test/testutil"
)

// ModuleRoot finds the repository root through the go tool, so tests and
// the demo build the same sources wherever they are started.
func ModuleRoot(ctx context.Context) (string, error) {
	out, err := exec.CommandContext(ctx, "go", "env", "GOMOD").Output()
	if err != nil {
		return "", fmt.Errorf("go env GOMOD: %w", err)
	}
	mod := strings.TrimSpace(string(out))
	if mod == "" || mod == os.DevNull {
		return "", errors.New("not inside the blocknat module")
	}
	return filepath.Dir(mod), nil
}

// Binaries are the built commands.
type Binaries struct {
	Blocknatd string
	Blocknat  string
}

// Build compiles blocknatd and blocknat into dir.
func Build(ctx context.Context, dir string) (Binaries, error) {
	root, err := ModuleRoot(ctx)
	if err != nil {
		return Binaries{}, err
	}
	cmd := exec.CommandContext(ctx, "go", "build", "-o", dir+"/", "./cmd/blocknatd", "./cmd/blocknat")
	cmd.Dir = root
	if out, err := cmd.CombinedOutput(); err != nil {
		return Binaries{}, fmt.Errorf("go build: %w\n%s", err, out)
	}
	return Binaries{Blocknatd: filepath.Join(dir, "blocknatd"), Blocknat: filepath.Join(dir, "blocknat")}, nil
}

// MountBPFFS mounts a bpffs on dir in this mount namespace. `ip netns exec`
// only remounts /sys, so an agent started that way pins into this very
// bpffs, and the caller can open its maps. The returned function removes
// whatever was pinned (detaching the programs) and unmounts.
func MountBPFFS(dir string) (func() error, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	if err := unix.Mount("bpf", dir, "bpf", 0, "mode=0700"); err != nil {
		return nil, fmt.Errorf("mount bpffs on %s: %w", dir, err)
	}
	return func() error {
		var detachErr error
		entries, _ := os.ReadDir(dir)
		for _, e := range entries {
			if !e.IsDir() {
				continue // bpffs's own maps.debug and friends
			}
			detachErr = errors.Join(detachErr, loader.Detach(filepath.Join(dir, e.Name())))
		}
		if err := unix.Unmount(dir, unix.MNT_DETACH); err != nil {
			return errors.Join(detachErr, fmt.Errorf("unmount %s: %w", dir, err))
		}
		return detachErr
	}, nil
}

// IsBPFFS reports whether path is on a bpffs.
func IsBPFFS(path string) bool {
	var st unix.Statfs_t
	return unix.Statfs(path, &st) == nil && st.Type == unix.BPF_FS_MAGIC
}

// RemoveHostPins removes a data plane an agent under `ip netns exec`
// pinned into the host's bpffs at pinDir, and unmounts the host's
// /sys/fs/bpf when it was not a bpffs before (hadBPFFS false) and holds
// nothing else now: the agent mounted it on the caller's behalf, and the
// machine is left as it was found.
func RemoveHostPins(pinDir string, hadBPFFS bool) error {
	if err := loader.Detach(pinDir); err != nil {
		return fmt.Errorf("detach %s: %w", pinDir, err)
	}
	const host = "/sys/fs/bpf"
	if hadBPFFS || !IsBPFFS(host) {
		return nil
	}
	entries, err := os.ReadDir(host)
	if err != nil {
		return err
	}
	for _, e := range entries {
		if e.IsDir() || !strings.HasSuffix(e.Name(), ".debug") {
			return nil // someone else's pins: keep the bpffs
		}
	}
	if err := unix.Unmount(host, unix.MNT_DETACH); err != nil {
		return fmt.Errorf("unmount the bpffs the agent mounted at %s: %w", host, err)
	}
	return nil
}

// Config renders a configuration for the standard topology. The API
// socket lives next to stateDir, so tests never share one. Unless extra sets
// roles, root (the tests' uid) holds every role.
func Config(topo *netns.Topology, stateDir, pinDir string, extra string) []byte {
	var b bytes.Buffer
	if !hasTopLevelKey(extra, "inside") {
		fmt.Fprintf(&b, "inside:  {interfaces: [%s], prefixes: [%s]}\n", strings.Join(topo.InsideIfaces, ", "), topo.InsidePrefix)
	}
	fmt.Fprintf(&b, "outside: {interfaces: [%s], pool: [%s]}\n", topo.OutsideIface, topo.Pool)
	fmt.Fprintf(&b, "state_dir: %s\nbpffs_dir: %s\n", stateDir, pinDir)
	fmt.Fprintf(&b, "api: {socket: %s}\n", SocketPath(stateDir))
	// Defaults that extra may replace: a top-level key written in extra
	// wins, since YAML refuses a key given twice.
	for _, d := range []struct{ key, line string }{
		{"ports", "ports: {range: 1024-65535, block_size: 0}"},
		{"xdp_mode", "xdp_mode: native"},
		{"roles", "roles: {investigator: {uids: [0]}, auditor: {uids: [0]}, admin: {uids: [0]}, dhcp: {uids: [0]}}"},
	} {
		if !hasTopLevelKey(extra, d.key) {
			b.WriteString(d.line + "\n")
		}
	}
	b.WriteString(extra)
	return b.Bytes()
}

func hasTopLevelKey(yaml, key string) bool {
	for _, line := range strings.Split(yaml, "\n") {
		if strings.HasPrefix(line, key+":") {
			return true
		}
	}
	return false
}

// SocketPath is where Config puts the API socket: beside stateDir, not in
// it, since state_dir is the agent's alone and other uids must reach the
// socket (roles decide who may ask).
func SocketPath(stateDir string) string { return filepath.Join(filepath.Dir(stateDir), "api.sock") }

// Agent is a blocknatd process in a namespace.
type Agent struct {
	cmd    *exec.Cmd
	log    *testutil.Buffer
	done   chan struct{}
	err    error
	PinDir string
}

// StartAgent starts blocknatd in ns and waits until XDP is attached to
// every named interface, or the process dies, or the timeout passes. It
// watches the interfaces rather than the pins, because an agent whose
// bpffs lives in its private mount namespace pins where no one else sees.
func StartAgent(ctx context.Context, ns *netns.NS, bin, configPath, pinDir string, ifaces []string, timeout time.Duration) (*Agent, error) {
	a := &Agent{log: &testutil.Buffer{}, done: make(chan struct{}), PinDir: pinDir}
	a.cmd = ns.Command(context.WithoutCancel(ctx), bin, "--config", configPath)
	a.cmd.Stdout, a.cmd.Stderr = a.log, a.log
	if err := a.cmd.Start(); err != nil {
		return nil, fmt.Errorf("start blocknatd: %w", err)
	}
	go func() {
		a.err = a.cmd.Wait()
		close(a.done)
	}()
	deadline := time.Now().Add(timeout)
	for {
		if translating(ctx, ns, ifaces, a.log.String()) {
			return a, nil
		}
		select {
		case <-a.done:
			return nil, fmt.Errorf("blocknatd exited before attaching (%v):\n%s", a.err, a.log.String())
		case <-time.After(50 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			a.Kill()
			return nil, fmt.Errorf("blocknatd did not attach within %s:\n%s", timeout, a.log.String())
		}
	}
}

// XDPAttached reports whether every interface in ns has an XDP program.
func XDPAttached(ctx context.Context, ns *netns.NS, ifaces []string) bool {
	for _, ifc := range ifaces {
		out, err := ns.Exec(ctx, "ip", "-d", "link", "show", "dev", ifc)
		if err != nil || !strings.Contains(string(out), "prog/xdp") {
			return false
		}
	}
	return true
}

// PID is the agent's process id (ip netns exec execs, so it is blocknatd's).
func (a *Agent) PID() int { return a.cmd.Process.Pid }

// Signal sends sig to the agent (SIGHUP reloads its configuration).
func (a *Agent) Signal(sig syscall.Signal) error { return a.cmd.Process.Signal(sig) }

// Log is everything the agent wrote so far.
func (a *Agent) Log() string { return a.log.String() }

// Stop sends SIGTERM and waits for a clean exit.
func (a *Agent) Stop() error {
	return a.signalAndWait(syscall.SIGTERM)
}

// Exited reports whether the process has ended, and how.
func (a *Agent) Exited() (bool, error) {
	select {
	case <-a.done:
		return true, a.err
	default:
		return false, nil
	}
}

// Kill sends SIGKILL, as a crash would, and waits.
func (a *Agent) Kill() error {
	err := a.signalAndWait(syscall.SIGKILL)
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		return nil
	}
	return err
}

func (a *Agent) signalAndWait(sig syscall.Signal) error {
	select {
	case <-a.done:
		return a.err
	default:
	}
	// ip netns exec runs the agent as its own process (it execs), so the
	// signal reaches blocknatd itself.
	if err := a.cmd.Process.Signal(sig); err != nil && !errors.Is(err, os.ErrProcessDone) {
		return err
	}
	select {
	case <-a.done:
		return a.err
	case <-time.After(15 * time.Second):
		a.cmd.Process.Kill()
		<-a.done
		return fmt.Errorf("blocknatd ignored %v for 15s", sig)
	}
}

package harness

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/blocknat/blocknat/test/netns"
	"github.com/blocknat/blocknat/userspace/config"
)

// Lab is the demo's topology with blocknatd on its router, named so that
// another process can find all of it again: `make lab` leaves one up for
// an operator, `make lab-down` removes it, and `make demo` runs through
// one and removes it. Everything it makes is named after Name: the
// namespaces Name-sub0, Name-sub1, Name-rtr and Name-inet, and the paths
// below.
type Lab struct {
	Name string `json:"name"`
	// Dir holds the configuration, the API socket, the logs and this
	// record of what the lab started.
	Dir      string `json:"dir"`
	Config   string `json:"config"`
	Socket   string `json:"socket"`
	AgentLog string `json:"agent_log"`
	StateDir string `json:"state_dir"`
	PinDir   string `json:"pin_dir"`
	// HadBPFFS says /sys/fs/bpf was a bpffs before the lab's agent ran;
	// when it was not, the agent mounted one, and removing the lab
	// unmounts it again once nothing else is pinned there.
	HadBPFFS bool `json:"had_bpffs"`
	// PIDs are the processes the lab left running (blocknatd, the
	// servers), by what they are.
	PIDs map[string]int `json:"pids"`
}

// NewLab names a lab's paths; it makes nothing.
func NewLab(name string) *Lab {
	dir := filepath.Join("/run", name)
	return &Lab{
		Name:     name,
		Dir:      dir,
		Config:   filepath.Join(dir, "blocknat.yaml"),
		Socket:   filepath.Join(dir, "api.sock"),
		AgentLog: filepath.Join(dir, "blocknatd.log"),
		StateDir: filepath.Join("/var/lib", name),
		PinDir:   filepath.Join("/sys/fs/bpf", name),
		HadBPFFS: IsBPFFS("/sys/fs/bpf"),
		PIDs:     map[string]int{},
	}
}

func (l *Lab) recordPath() string { return filepath.Join(l.Dir, "lab.json") }

// LoadLab reads what an earlier process recorded of the lab name. With no
// record it returns the bare names (ok false), so that a half-made lab
// can still be removed.
func LoadLab(name string) (l *Lab, ok bool, err error) {
	l = NewLab(name)
	b, err := os.ReadFile(l.recordPath())
	if errors.Is(err, os.ErrNotExist) {
		// Nothing says who mounted the bpffs: leave it.
		l.HadBPFFS = true
		return l, false, nil
	}
	if err != nil {
		return nil, false, err
	}
	if err := json.Unmarshal(b, l); err != nil {
		return nil, false, fmt.Errorf("%s: %w", l.recordPath(), err)
	}
	return l, true, nil
}

// Save records the lab in Dir, for whoever removes it.
func (l *Lab) Save() error {
	if err := os.MkdirAll(l.Dir, 0o755); err != nil {
		return err
	}
	b, err := json.MarshalIndent(l, "", "  ")
	if err != nil {
		return err
	}
	return os.WriteFile(l.recordPath(), append(b, '\n'), 0o644)
}

// WriteConfig writes the embedded default configuration, the one the
// demo topology is made for, with its paths moved to the lab's, and
// returns it.
func (l *Lab) WriteConfig() ([]byte, error) {
	def, err := config.Parse(config.Default)
	if err != nil {
		return nil, fmt.Errorf("embedded default config: %w", err)
	}
	text := string(config.Default)
	for _, r := range []struct{ field, from, to string }{
		{"state_dir", def.StateDir, l.StateDir},
		{"bpffs_dir", def.BPFFSDir, l.PinDir},
		{"api.socket", def.API.Socket, l.Socket},
	} {
		// The default names each path once; more or fewer would mean it
		// changed shape and this swap no longer says what it does.
		if n := strings.Count(text, r.from); n != 1 {
			return nil, fmt.Errorf("embedded default config: %s %s appears %d times, want once", r.field, r.from, n)
		}
		text = strings.Replace(text, r.from, r.to, 1)
	}
	got, err := config.Parse([]byte(text))
	if err != nil {
		return nil, fmt.Errorf("lab config: %w", err)
	}
	if got.StateDir != l.StateDir || got.BPFFSDir != l.PinDir || got.API.Socket != l.Socket {
		return nil, fmt.Errorf("lab config: paths %s, %s, %s, want %s, %s, %s", got.StateDir, got.BPFFSDir, got.API.Socket, l.StateDir, l.PinDir, l.Socket)
	}
	if err := os.MkdirAll(l.Dir, 0o755); err != nil {
		return nil, err
	}
	return []byte(text), os.WriteFile(l.Config, []byte(text), 0o644)
}

// Interfaces are the interfaces the lab's configuration attaches to.
func (l *Lab) Interfaces() ([]string, error) {
	b, err := os.ReadFile(l.Config)
	if err != nil {
		return nil, err
	}
	cfg, err := config.Parse(b)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", l.Config, err)
	}
	return append(append([]string{}, cfg.Inside.Interfaces...), cfg.Outside.Interfaces...), nil
}

// Detached is a process started by StartDetached.
type Detached struct {
	PID  int
	done chan struct{}
	err  error
}

// Exited reports whether the process has ended, and how, while the
// caller that started it still runs.
func (d *Detached) Exited() (bool, error) {
	select {
	case <-d.done:
		return true, d.err
	default:
		return false, nil
	}
}

// StartDetached starts argv in ns in a session of its own, writing to
// logPath, so that it outlives the caller and no terminal's hang-up
// reaches it.
func StartDetached(ns *netns.NS, logPath string, argv ...string) (*Detached, error) {
	log, err := os.OpenFile(logPath, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
	if err != nil {
		return nil, err
	}
	defer log.Close()
	cmd := ns.Command(context.Background(), argv...)
	cmd.Stdout, cmd.Stderr = log, log
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s in %s: %w", argv[0], ns.Name, err)
	}
	d := &Detached{PID: cmd.Process.Pid, done: make(chan struct{})}
	// Waited for only while the caller lives, to learn how an early exit
	// went; once the caller exits, init reaps it.
	go func() {
		d.err = cmd.Wait()
		close(d.done)
	}()
	return d, nil
}

// StartDetachedAgent starts blocknatd on the lab's router, detached, and
// waits as StartAgent does until it translates on every interface.
func (l *Lab) StartDetachedAgent(ctx context.Context, router *netns.NS, bin string, timeout time.Duration) (int, error) {
	ifaces, err := l.Interfaces()
	if err != nil {
		return 0, err
	}
	agent, err := StartDetached(router, l.AgentLog, bin, "--config", l.Config)
	if err != nil {
		return 0, err
	}
	l.PIDs["blocknatd"] = agent.PID
	log := func() string { b, _ := os.ReadFile(l.AgentLog); return string(b) }
	deadline := time.Now().Add(timeout)
	for !translating(ctx, router, ifaces, log()) {
		if exited, err := agent.Exited(); exited {
			return 0, fmt.Errorf("blocknatd exited before attaching (%v):\n%s", err, log())
		}
		if time.Now().After(deadline) {
			return 0, fmt.Errorf("blocknatd did not attach within %s:\n%s", timeout, log())
		}
		time.Sleep(50 * time.Millisecond)
	}
	return agent.PID, nil
}

// translating is when an agent counts as started: XDP on every interface
// and its log saying so.
func translating(ctx context.Context, ns *netns.NS, ifaces []string, log string) bool {
	return XDPAttached(ctx, ns, ifaces) && strings.Contains(log, "msg=translating")
}

// running reports whether pid is alive and still one the lab started: its
// command line names the lab's directory, so a reused pid is left alone.
func (l *Lab) running(pid int) bool {
	cmdline, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	if err != nil || !bytes.Contains(cmdline, []byte(l.Dir+"/")) {
		return false
	}
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	// A zombie has exited; its parent has yet to notice.
	_, after, _ := bytes.Cut(stat, []byte(") "))
	return !bytes.HasPrefix(after, []byte("Z"))
}

// Remove takes down everything the lab made, in the order that lets
// each step succeed: its processes (SIGTERM, so blocknatd closes its store
// cleanly; SIGKILL after 15 s), the pinned data plane, the namespaces with
// their veths and the guard, the state and the lab's directory, and the
// host's bpffs if the agent mounted it. What is not there is skipped, so
// Remove may run twice, or on a lab that was never (fully) made.
func (l *Lab) Remove() error {
	var errs []error
	for what, pid := range l.PIDs {
		if err := l.stop(pid); err != nil {
			errs = append(errs, fmt.Errorf("stop %s (pid %d): %w", what, pid, err))
		}
	}
	if err := RemoveHostPins(l.PinDir, l.HadBPFFS); err != nil {
		errs = append(errs, err)
	}
	if err := netns.RemoveTopology(l.Name); err != nil {
		errs = append(errs, err)
	}
	for _, dir := range []string{l.StateDir, l.Dir} {
		if err := os.RemoveAll(dir); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

func (l *Lab) stop(pid int) error {
	if !l.running(pid) {
		return nil
	}
	for _, sig := range []syscall.Signal{syscall.SIGTERM, syscall.SIGKILL} {
		if err := syscall.Kill(pid, sig); err != nil && !errors.Is(err, syscall.ESRCH) {
			return err
		}
		for deadline := time.Now().Add(15 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
			if !l.running(pid) {
				return nil
			}
		}
	}
	return errors.New("still running after SIGKILL")
}

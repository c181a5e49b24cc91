// Package netns builds the network-namespace topology that blocknat's end-to-end
// tests and demo run in, and the small servers and clients they use to prove
// traffic with real sockets.
//
// Everything is driven through iproute2's `ip` (and `ethtool` for GRO) so the
// setup is exactly what an operator could type by hand; only Do enters a
// namespace from Go, so that Go servers can listen inside it.
//
// Nothing here needs *testing.T except the helpers in testing.go, so a demo
// program can use the same topology as the tests.
package netns

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"

	"golang.org/x/sys/unix"
)

// netnsRunDir is where `ip netns add` bind-mounts named namespaces.
const netnsRunDir = "/var/run/netns"

// NS is a named network namespace owned by the caller, who must Delete it.
type NS struct {
	Name string
}

// Create makes a new named network namespace with `ip netns add`. It fails if a
// namespace of that name already exists, so two users never share one by accident.
func Create(name string) (*NS, error) {
	if err := validName(name); err != nil {
		return nil, fmt.Errorf("create netns: %w", err)
	}
	if _, err := os.Stat(filepath.Join(netnsRunDir, name)); err == nil {
		return nil, fmt.Errorf("create netns %s: %w", name, os.ErrExist)
	}
	if _, err := runIP(context.Background(), "netns", "add", name); err != nil {
		return nil, fmt.Errorf("create netns %s: %w", name, err)
	}
	return &NS{Name: name}, nil
}

// Delete removes the namespace's name. The kernel frees the namespace, and the
// veths inside it, once no process or socket still holds it.
func (n *NS) Delete() error {
	if _, err := runIP(context.Background(), "netns", "delete", n.Name); err != nil {
		return fmt.Errorf("delete netns %s: %w", n.Name, err)
	}
	return nil
}

// Command returns `ip netns exec NAME argv...` for a long-running process; the
// caller starts and waits for it. Cancelling ctx kills argv[0] itself, because
// `ip netns exec` replaces itself with the command.
func (n *NS) Command(ctx context.Context, argv ...string) *exec.Cmd {
	args := append([]string{"netns", "exec", n.Name}, argv...)
	return exec.CommandContext(ctx, "ip", args...)
}

// Exec runs argv inside the namespace and returns its combined output. On failure
// the error carries that output, since it is usually the only explanation.
func (n *NS) Exec(ctx context.Context, argv ...string) ([]byte, error) {
	if len(argv) == 0 {
		return nil, fmt.Errorf("netns %s: exec: empty argv", n.Name)
	}
	out, err := n.Command(ctx, argv...).CombinedOutput()
	if err != nil {
		return out, fmt.Errorf("netns %s: exec %q: %w: %s", n.Name, strings.Join(argv, " "), err, bytes.TrimSpace(out))
	}
	return out, nil
}

// ip runs `ip -n NAME args...`, which is cheaper than `ip netns exec` because it
// needs no new mount namespace.
func (n *NS) ip(ctx context.Context, args ...string) ([]byte, error) {
	out, err := runIP(ctx, append([]string{"-n", n.Name}, args...)...)
	if err != nil {
		return out, fmt.Errorf("netns %s: %w", n.Name, err)
	}
	return out, nil
}

// Do runs fn on an OS thread switched into the namespace. Sockets that fn opens
// belong to the namespace for their whole life, so they may be used from any
// goroutine afterwards. Goroutines that fn starts do not run in the namespace.
//
// fn runs on a fresh goroutine so that the caller's thread is never touched. If
// switching back fails, that thread is left locked and the Go runtime discards it
// when the goroutine ends, so no other goroutine can ever run in the wrong
// namespace. A panic in fn is re-raised on the caller's goroutine.
func (n *NS) Do(fn func() error) error {
	type outcome struct {
		err      error
		panicked any
		stack    []byte
	}
	done := make(chan outcome, 1)
	go func() {
		runtime.LockOSThread()
		var res outcome
		restored := false
		func() {
			defer func() {
				if p := recover(); p != nil {
					res.panicked = p
					res.stack = stack()
				}
			}()
			restored, res.err = n.doLocked(fn)
		}()
		if restored {
			runtime.UnlockOSThread()
		}
		done <- res
	}()
	res := <-done
	if res.panicked != nil {
		panic(fmt.Sprintf("netns %s: Do: %v\n%s", n.Name, res.panicked, res.stack))
	}
	return res.err
}

// doLocked must run on a locked thread. restored reports whether the thread is
// back in its original namespace (or never left it).
func (n *NS) doLocked(fn func() error) (restored bool, err error) {
	origin, err := os.Open("/proc/thread-self/ns/net")
	if err != nil {
		return true, fmt.Errorf("netns %s: Do: open current netns: %w", n.Name, err)
	}
	defer origin.Close()
	target, err := os.Open(filepath.Join(netnsRunDir, n.Name))
	if err != nil {
		return true, fmt.Errorf("netns %s: Do: open netns: %w", n.Name, err)
	}
	defer target.Close()
	if err := unix.Setns(int(target.Fd()), unix.CLONE_NEWNET); err != nil {
		return true, fmt.Errorf("netns %s: Do: setns: %w", n.Name, err)
	}
	// Deferred so that a panicking fn still gets its thread switched back.
	defer func() {
		restored = unix.Setns(int(origin.Fd()), unix.CLONE_NEWNET) == nil
	}()
	return false, fn()
}

func stack() []byte {
	buf := make([]byte, 64<<10)
	return buf[:runtime.Stack(buf, false)]
}

// runIP runs iproute2 in the caller's namespace.
func runIP(ctx context.Context, args ...string) ([]byte, error) {
	out, err := exec.CommandContext(ctx, "ip", args...).CombinedOutput()
	if err != nil {
		return out, fmt.Errorf("ip %s: %w: %s", strings.Join(args, " "), err, bytes.TrimSpace(out))
	}
	return out, nil
}

// validName keeps names to what is safe as a file name under netnsRunDir and as
// an argument that no tool mistakes for an option.
func validName(name string) error {
	if name == "" {
		return errors.New("name is empty")
	}
	if len(name) > 64 {
		return fmt.Errorf("name %q is longer than 64 characters", name)
	}
	if name[0] == '-' || name[0] == '.' {
		return fmt.Errorf("name %q starts with %q", name, name[0])
	}
	for _, r := range name {
		ok := r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '_' || r == '.'
		if !ok {
			return fmt.Errorf("name %q contains %q; use letters, digits, '-', '_' or '.'", name, r)
		}
	}
	return nil
}

package netns

import (
	"errors"
	"net"
	"os"
	"strings"
	"testing"
)

func newTestNS(t *testing.T, name string) *NS {
	t.Helper()
	RequirePrivileged(t)
	ns, err := Create(TestPrefix(name))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := ns.Delete(); err != nil {
			t.Error(err)
		}
	})
	return ns
}

func currentNetns(t *testing.T) string {
	t.Helper()
	link, err := os.Readlink("/proc/thread-self/ns/net")
	if err != nil {
		t.Fatal(err)
	}
	return link
}

func TestCreateRefusesExistingName(t *testing.T) {
	t.Parallel()
	ns := newTestNS(t, "bn-nt-dup")
	if again, err := Create(ns.Name); !errors.Is(err, os.ErrExist) {
		if again != nil {
			again.Delete()
		}
		t.Fatalf("second Create(%q): %v, want os.ErrExist", ns.Name, err)
	}
}

func TestExecReportsOutputOnFailure(t *testing.T) {
	t.Parallel()
	ns := newTestNS(t, "bn-nt-exec")
	out, err := ns.Exec(t.Context(), "ip", "link", "show", "dev", "no-such-dev")
	if err == nil {
		t.Fatalf("exec of a failing command succeeded: %s", out)
	}
	if !strings.Contains(err.Error(), "no-such-dev") || !strings.Contains(err.Error(), ns.Name) {
		t.Errorf("error %q names neither the namespace nor the failure", err)
	}
	out, err = ns.Exec(t.Context(), "ip", "-o", "link", "show")
	if err != nil {
		t.Fatal(err)
	}
	// A fresh namespace has only its own loopback.
	if lines := strings.Count(strings.TrimSpace(string(out)), "\n") + 1; lines != 1 || !strings.Contains(string(out), "lo:") {
		t.Errorf("fresh namespace links: %q, want only lo", out)
	}
}

func TestDoEntersNamespaceAndKeepsSockets(t *testing.T) {
	t.Parallel()
	ns := newTestNS(t, "bn-nt-do")
	if _, err := ns.ip(t.Context(), "link", "set", "lo", "up"); err != nil {
		t.Fatal(err)
	}
	before := currentNetns(t)
	var inside string
	var ln net.Listener
	err := ns.Do(func() (err error) {
		inside = currentNetns(t)
		ln, err = net.Listen("tcp", "127.0.0.1:0")
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	if inside == before {
		t.Fatalf("Do ran fn in the caller's namespace %s", before)
	}
	if after := currentNetns(t); after != before {
		t.Fatalf("caller's namespace changed from %s to %s", before, after)
	}

	// The listener lives in the namespace: reachable from a socket made there,
	// not from the caller's namespace (whose loopback has no such listener).
	accepted := make(chan error, 1)
	go func() {
		c, err := ln.Accept()
		if err == nil {
			c.Close()
		}
		accepted <- err
	}()
	if err := ns.Do(func() error {
		c, err := net.Dial("tcp", ln.Addr().String())
		if err == nil {
			c.Close()
		}
		return err
	}); err != nil {
		t.Fatalf("dial inside the namespace: %v", err)
	}
	if err := <-accepted; err != nil {
		t.Fatal(err)
	}
	if c, err := net.Dial("tcp", ln.Addr().String()); err == nil {
		c.Close()
		t.Fatalf("listener in %s reachable from the caller's namespace", ns.Name)
	}
}

func TestDoReturnsErrorAndRepanics(t *testing.T) {
	t.Parallel()
	ns := newTestNS(t, "bn-nt-panic")
	sentinel := errors.New("sentinel")
	if err := ns.Do(func() error { return sentinel }); !errors.Is(err, sentinel) {
		t.Fatalf("Do returned %v, want fn's error", err)
	}
	func() {
		defer func() {
			p := recover()
			if p == nil || !strings.Contains(p.(string), "boom") {
				t.Fatalf("recovered %v, want fn's panic", p)
			}
		}()
		ns.Do(func() error { panic("boom") })
	}()
	if err := ns.Do(func() error { return nil }); err != nil {
		t.Fatalf("Do after a panic: %v", err)
	}
}

func TestCreateRejectsBadName(t *testing.T) {
	for _, name := range []string{"", "a/b", "../x", "-n", strings.Repeat("x", 65)} {
		if ns, err := Create(name); err == nil {
			ns.Delete()
			t.Errorf("Create(%q) succeeded", name)
		}
	}
}

package api

import (
	"bufio"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"os"
	"runtime"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/blocknat/blocknat/userspace/wire"
)

// nobody is the unprivileged uid that floods the socket.
const nobody = 65534

// dialAs connects to the unix socket at path with the effective uid set to
// uid on one locked thread only (the raw syscall, unlike syscall.Setresuid,
// leaves the other threads alone), so that SO_PEERCRED names uid.
func dialAs(uid int, path string) (net.Conn, error) {
	type result struct {
		c   net.Conn
		err error
	}
	done := make(chan result, 1)
	go func() {
		runtime.LockOSThread()
		keep := ^uintptr(0) // -1: leave unchanged
		if _, _, e := unix.RawSyscall(unix.SYS_SETRESUID, keep, uintptr(uid), keep); e != 0 {
			runtime.UnlockOSThread()
			done <- result{nil, e}
			return
		}
		c, err := net.Dial("unix", path)
		if _, _, e := unix.RawSyscall(unix.SYS_SETRESUID, keep, 0, keep); e == 0 {
			runtime.UnlockOSThread()
		} // else the thread stays locked and ends with the goroutine
		done <- result{c, err}
	}()
	r := <-done
	return r.c, r.err
}

// closedAtOnce says whether the server closed c without reading from it.
func closedAtOnce(c net.Conn) bool {
	c.SetReadDeadline(time.Now().Add(time.Second))
	_, err := c.Read(make([]byte, 1))
	return errors.Is(err, io.EOF) || errors.Is(err, unix.ECONNRESET)
}

// TestConnCapsPerUID: an unprivileged uid holding as many connections as
// it may (further ones are closed at once) leaves an investigator able to
// look up, and is answered normally again once it lets go.
func TestConnCapsPerUID(t *testing.T) {
	if os.Getuid() != 0 {
		if os.Getenv("BLOCKNAT_REQUIRE_PRIVILEGED") == "1" {
			t.Fatal("needs root to connect as another uid, and BLOCKNAT_REQUIRE_PRIVILEGED=1 forbids skipping")
		}
		t.Skip("needs root to connect as another uid")
	}
	dir, err := os.MkdirTemp("", "blocknat-api-caps-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	const perUID, total = 4, 8
	h := newHarness(t, harnessOptions{roles: rootRoles(RoleInvestigator), maxConnsPerUID: perUID, maxConns: total, socketDir: dir})
	if err := os.Chmod(h.socket, 0o666); err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	lookup := wire.LookupRequest{IP: "198.51.100.10", Port: 15123, Time: "2026-11-20T12:00:01Z", Purpose: "case 9"}

	var held []net.Conn
	t.Cleanup(func() {
		for _, c := range held {
			c.Close()
		}
	})
	for i := range perUID + 3 {
		c, err := dialAs(nobody, h.socket)
		if err != nil {
			t.Fatalf("connection %d as uid %d: %v", i, nobody, err)
		}
		if i < perUID {
			held = append(held, c)
			continue
		}
		if !closedAtOnce(c) {
			t.Errorf("connection %d of uid %d, over its cap of %d, was kept open", i, nobody, perUID)
		}
		c.Close()
	}
	// Closed in Accept before the client saw EOF, so counted by now.
	if got := h.server.Counters().ConnsOverCap; got[OverCapPerUID] != 3 || got[OverCapTotal] != 0 {
		t.Errorf("ConnsOverCap %v after 3 connections over the per-uid cap, want per_uid 3, total 0", got)
	}
	for _, c := range held {
		c.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
		if _, err := c.Read(make([]byte, 1)); !errors.Is(err, os.ErrDeadlineExceeded) {
			t.Errorf("a connection within the cap was not kept open: %v", err)
		}
	}
	for i := range 3 {
		if _, err := h.client.Lookup(ctx, lookup); err != nil {
			t.Fatalf("lookup %d while uid %d holds its cap: %v", i, nobody, err)
		}
	}
	for _, c := range held {
		c.Close()
	}
	held = nil
	// Once it lets go, uid 65534 is answered again (refused, since it has
	// no role, but answered and audited).
	deadline := time.Now().Add(5 * time.Second)
	for h.server.conns.count(nobody) > 0 {
		if time.Now().After(deadline) {
			t.Fatalf("the server still counts uid %d's connections after they closed", nobody)
		}
		time.Sleep(10 * time.Millisecond)
	}
	before := h.log.Len()
	conn, err := dialAs(nobody, h.socket)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	req, _ := http.NewRequest("POST", "http://blocknat"+wire.PathLookup, strings.NewReader(lookupBody))
	if err := req.Write(conn); err != nil {
		t.Fatal(err)
	}
	resp, err := http.ReadResponse(bufio.NewReader(conn), req)
	if err != nil {
		t.Fatalf("lookup as uid %d after it let go: %v", nobody, err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusForbidden || h.log.Len() != before+1 {
		t.Errorf("lookup as uid %d after it let go: status %d, log %d -> %d; want 403 and one entry", nobody, resp.StatusCode, before, h.log.Len())
	}
}

// TestConnCapsTotal: the total cap holds across uids and TLS peers, and a
// closed connection gives its place back.
func TestConnCapsTotal(t *testing.T) {
	c := newConnCaps(4, 8, quietLogger())
	for uid := range uint32(2) {
		for i := range 5 {
			if got, want := c.take(uid, true), i < 4; got != want {
				t.Fatalf("uid %d connection %d: take %v, want %v", uid, i, got, want)
			}
		}
	}
	if c.take(7, true) || c.take(0, false) {
		t.Fatal("a connection over the total cap of 8 was taken")
	}
	c.release(1, true)
	if !c.take(0, false) {
		t.Fatal("a TLS connection was refused after one closed")
	}
	// uid 0's fifth was over its own cap; uid 1's fifth and the two after
	// it found 8 open.
	if got := c.overCap(); got[OverCapPerUID] != 1 || got[OverCapTotal] != 3 {
		t.Errorf("overCap %v, want per_uid 1, total 3", got)
	}
	if DefaultMaxConns() < minConns || DefaultMaxConns() > maxConnsCeiling {
		t.Errorf("DefaultMaxConns %d", DefaultMaxConns())
	}
	var rl unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_NOFILE, &rl); err == nil && rl.Cur > 2*fdReserve && uint64(DefaultMaxConns()+fdReserve) > rl.Cur {
		t.Errorf("DefaultMaxConns %d leaves less than %d of RLIMIT_NOFILE %d", DefaultMaxConns(), fdReserve, rl.Cur)
	}
}

package e2e

import (
	"context"
	"errors"
	"net"
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
	"github.com/blocknat/blocknat/test/testutil"
)

// notification is one sd_notify datagram, with what was true when it
// arrived.
type notification struct {
	state string
	// attached and translating: XDP on every interface, and the agent's
	// log had said "translating", at the moment it arrived.
	attached, translating bool
	// roundTrip is a subscriber's UDP exchange through the NAT made at
	// once on READY=1.
	roundTrip error
}

// TestReadyNotifyAndStatusWait: started with a NOTIFY_SOCKET the test
// listens on, as systemd's Type=notify does, the agent sends READY=1 only
// once it translates (XDP attached, a subscriber's packets answered through
// the NAT at that instant) and STOPPING=1 on SIGTERM; `blocknat status
// --wait`, started before the agent, returns 0 once the agent reports
// itself ready, and gives up with exit 1 and a reason when none is.
func TestReadyNotifyAndStatusWait(t *testing.T) {
	e := prepareEnv(t, "bn-e2eready", "")
	ctx := t.Context()
	srv, err := netns.StartUDPEcho(e.topo.Internet, netip.AddrPortFrom(e.topo.ServerAddrs[0], 9000))
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	sub := e.topo.Subscribers[0]
	socket := harness.SocketPath(e.stateDir)

	// No agent: --wait gives up, saying why.
	start := time.Now()
	out, err := runCmd(ctx, bins.Blocknat, "status", "--wait", "--timeout", "1s", "--socket", socket)
	var exit *exec.ExitError
	if !errors.As(err, &exit) || exit.ExitCode() != 1 || !strings.Contains(string(out), "the agent was not ready within 1s") ||
		!strings.Contains(string(out), "does not exist (is blocknatd running?)") {
		t.Fatalf("status --wait without an agent: %v\n%s", err, out)
	}
	if took := time.Since(start); took < time.Second || took > 5*time.Second {
		t.Errorf("status --wait --timeout 1s took %s", took)
	}

	notifyPath := filepath.Join(t.TempDir(), "notify")
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: notifyPath, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()

	// --wait first, the agent after: it must wait through the missing
	// socket and the start.
	type result struct {
		out []byte
		err error
		at  time.Time
	}
	waited := make(chan result, 1)
	go func() {
		out, err := runCmd(ctx, bins.Blocknat, "status", "--wait", "--timeout", "30s", "--socket", socket)
		waited <- result{out, err, time.Now()}
	}()

	log := &testutil.Buffer{}
	cmd := e.topo.Router.Command(context.WithoutCancel(ctx), bins.Blocknatd, "--config", e.cfgPath)
	cmd.Env = append(os.Environ(), "NOTIFY_SOCKET="+notifyPath)
	cmd.Stdout, cmd.Stderr = log, log
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	stopped := false
	defer func() {
		if !stopped {
			cmd.Process.Signal(syscall.SIGTERM)
			<-done
		}
		if t.Failed() {
			t.Logf("blocknatd log:\n%s", log.String())
		}
	}()

	notes := make(chan notification, 16)
	go func() {
		buf := make([]byte, 4096)
		for {
			n, err := conn.Read(buf)
			if err != nil {
				close(notes)
				return
			}
			// Look at once, before the agent moves on.
			note := notification{state: string(buf[:n]), translating: strings.Contains(log.String(), "msg=translating"),
				attached: harness.XDPAttached(ctx, e.topo.Router, e.ifaces)}
			if strings.Contains(note.state, "READY=1") {
				_, note.roundTrip = netns.UDPRoundTrip(sub.NS, 0, srv.Addr, []byte("ready?"), 3*time.Second)
			}
			notes <- note
		}
	}()

	var ready notification
	select {
	case ready = <-notes:
	case err := <-done:
		t.Fatalf("blocknatd exited before READY=1 (%v)", err)
	case <-time.After(30 * time.Second):
		t.Fatal("no sd_notify datagram within 30s")
	}
	if !strings.HasPrefix(ready.state, "READY=1\n") || !strings.Contains(ready.state, "STATUS=translating: ") {
		t.Fatalf("first datagram %q, want READY=1 with a STATUS", ready.state)
	}
	if !ready.attached || !ready.translating || ready.roundTrip != nil {
		t.Errorf("READY=1 before translating: XDP attached %v, logged translating %v, round trip %v",
			ready.attached, ready.translating, ready.roundTrip)
	}
	if got := srv.Remotes(); len(got) == 0 || !e.topo.Pool.Contains(got[0].Addr()) {
		t.Errorf("the UDP server saw %v, want a pool address", got)
	}

	select {
	case r := <-waited:
		if r.err != nil || !strings.Contains(string(r.out), "state                ready: translating, start finished") {
			t.Errorf("status --wait: %v\n%s", r.err, r.out)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("status --wait did not return within 30s of the agent's start")
	}

	cmd.Process.Signal(syscall.SIGTERM)
	var stopping notification
	select {
	case stopping = <-notes:
	case <-time.After(15 * time.Second):
		t.Fatal("no datagram after SIGTERM")
	}
	if !strings.HasPrefix(stopping.state, "STOPPING=1") {
		t.Errorf("after SIGTERM: %q, want STOPPING=1", stopping.state)
	}
	if err := <-done; err != nil {
		t.Errorf("blocknatd exited with %v", err)
	}
	stopped = true
}

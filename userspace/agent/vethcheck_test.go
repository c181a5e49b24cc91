package agent

import (
	"log/slog"
	"strings"
	"testing"

	"github.com/blocknat/blocknat/test/netns"
	"github.com/blocknat/blocknat/test/testutil"
)

// TestWarnVethPeer makes veths whose peers sit in another namespace the
// test creates and in the same one, turns their tx checksum offload on,
// and expects a warning that names the command; running that very command
// must silence it.
func TestWarnVethPeer(t *testing.T) {
	netns.RequirePrivileged(t)
	netns.RequireTools(t, "ethtool")
	prefix := netns.TestPrefix("bn-vethchk")
	newNS := func(suffix string) *netns.NS {
		ns, err := netns.Create(prefix + "-" + suffix)
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
	local, far := newNS("local"), newNS("far")
	run := func(ns *netns.NS, argv ...string) {
		t.Helper()
		if _, err := ns.Exec(t.Context(), argv...); err != nil {
			t.Fatal(err)
		}
	}
	// Peers are named apart from their ends so that the warning must
	// have found the peer's own name.
	run(local, "ip", "link", "add", "vc-far", "type", "veth", "peer", "name", "far-end", "netns", far.Name)
	run(local, "ip", "link", "add", "vc-near", "type", "veth", "peer", "name", "near-end")

	check := func(iface string) string {
		t.Helper()
		var log testutil.Buffer
		logger := slog.New(slog.NewTextHandler(&log, &slog.HandlerOptions{Level: slog.LevelDebug}))
		if err := local.Do(func() error { warnVethPeer(logger, iface); return nil }); err != nil {
			t.Fatal(err)
		}
		return log.String()
	}
	for _, tc := range []struct {
		iface, peerNS, peer, fix string
	}{
		{"vc-far", far.Name, "far-end", "ip netns exec " + far.Name + " ethtool -K far-end tx off"},
		{"vc-near", local.Name, "near-end", "ethtool -K near-end tx off"},
	} {
		t.Run(tc.iface, func(t *testing.T) {
			run(&netns.NS{Name: tc.peerNS}, "ethtool", "-K", tc.peer, "tx", "on")
			got := check(tc.iface)
			if !strings.Contains(got, "level=WARN") || !strings.Contains(got, `fix="`+tc.fix+`"`) {
				t.Fatalf("tx on at %s's peer: want a warning naming %q, got:\n%s", tc.iface, tc.fix, got)
			}
			// The command as the warning states it, run where the agent
			// runs: `ip netns exec` finds the peer's namespace by itself.
			run(local, strings.Fields(tc.fix)...)
			if got := check(tc.iface); got != "" {
				t.Fatalf("tx off at %s's peer: want no log, got:\n%s", tc.iface, got)
			}
		})
	}
	if got := check("lo"); got != "" {
		t.Errorf("lo is no veth: want no log, got:\n%s", got)
	}
}

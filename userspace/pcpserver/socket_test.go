package pcpserver

import (
	"context"
	"errors"
	"syscall"
	"testing"

	"github.com/blocknat/blocknat/test/netns"
)

// One socket per inside interface shares the PCP port without
// SO_REUSEADDR, and a second socket on the same device and port is
// refused, so a second agent cannot quietly take part of the requests.
func TestSocketsShareThePortByDevice(t *testing.T) {
	netns.RequirePrivileged(t)
	ns, err := netns.Create(netns.TestPrefix("pcpsock"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := ns.Delete(); err != nil {
			t.Error(err)
		}
	})
	ctx := context.Background()
	for _, cmd := range [][]string{
		// A veth pair: two devices without the dummy module.
		{"ip", "link", "add", "in0", "type", "veth", "peer", "name", "in1"},
		{"ip", "link", "set", "in0", "up"},
		{"ip", "link", "set", "in1", "up"},
	} {
		if out, err := ns.Exec(ctx, cmd...); err != nil {
			t.Fatalf("%v: %v: %s", cmd, err, out)
		}
	}
	err = ns.Do(func() error {
		first, err := listenOn(ctx, "in0", DefaultPort)
		if err != nil {
			return err
		}
		defer first.Close()
		second, err := listenOn(ctx, "in1", DefaultPort)
		if err != nil {
			return err
		}
		defer second.Close()
		again, err := listenOn(ctx, "in0", DefaultPort)
		if err == nil {
			again.Close()
			return errors.New("a second socket on in0's PCP port was allowed")
		}
		if !errors.Is(err, syscall.EADDRINUSE) {
			return err
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

package main

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/blocknat/blocknat/test/netns"
)

// TestGuardCommands: in a namespace of the test's own, `guard show` says
// there is no guard and exits 1; `guard install` creates it and a second
// install changes nothing; show then exits 0 naming the prefixes and the
// interface; `guard remove` and `detach --remove-guard` take it away, a
// plain detach keeps it and says so; --remove-guard anywhere but detach is
// refused.
func TestGuardCommands(t *testing.T) {
	netns.RequirePrivileged(t)
	netns.RequireTools(t, "nft")
	ns, err := netns.Create(netns.TestPrefix("bn-guardcmd"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := ns.Delete(); err != nil {
			t.Error(err)
		}
	})
	dir := t.TempDir()
	cfg := filepath.Join(dir, "blocknat.yaml")
	if err := os.WriteFile(cfg, []byte(`inside:  {interfaces: [bn-in0], prefixes: [100.64.0.0/24]}
outside: {interfaces: [bn-out], pool: [198.51.100.10/31]}
state_dir: `+filepath.Join(dir, "state")+`
bpffs_dir: `+filepath.Join(dir, "pins")+`
ports: {range: 1024-65535, block_size: 0}
`), 0o600); err != nil {
		t.Fatal(err)
	}
	blocknatd := func(args ...string) (int, string) {
		var out, errb bytes.Buffer
		var code int
		if err := ns.Do(func() error {
			code = run(context.Background(), append(args, "--config", cfg), &out, &errb)
			return nil
		}); err != nil {
			t.Fatal(err)
		}
		return code, out.String() + errb.String()
	}
	for _, step := range []struct {
		args []string
		code int
		want string
	}{
		{[]string{"guard", "show"}, 1, "guard not installed (table inet blocknat_guard)"},
		{[]string{"guard", "install"}, 0, "guard created: table inet blocknat_guard drops IPv4 from 100.64.0.0/24 leaving by bn-out untranslated"},
		{[]string{"guard", "install"}, 0, "guard unchanged"},
		{[]string{"guard", "show"}, 0, "guard installed: table inet blocknat_guard drops IPv4 from 100.64.0.0/24 leaving by bn-out"},
		{[]string{"detach"}, 0, "the nftables guard (table inet blocknat_guard) stays"},
		{[]string{"guard", "show"}, 0, "guard installed"},
		{[]string{"detach", "--remove-guard"}, 0, "guard removed: table inet blocknat_guard"},
		{[]string{"guard", "show"}, 1, "guard not installed"},
		{[]string{"guard", "install"}, 0, "guard created"},
		{[]string{"guard", "remove"}, 0, "leave with their inside addresses"},
		{[]string{"guard", "show"}, 1, "guard not installed"},
		{[]string{"--remove-guard"}, 2, "--remove-guard only applies to detach"},
		{[]string{"guard", "frobnicate"}, 2, "usage: blocknatd guard install|remove|show"},
		{[]string{"check"}, 0, ": ok"},
	} {
		code, out := blocknatd(step.args...)
		if code != step.code || !strings.Contains(out, step.want) {
			t.Errorf("blocknatd %s: exit %d, output %q; want exit %d and %q", strings.Join(step.args, " "), code, out, step.code, step.want)
		}
	}
}

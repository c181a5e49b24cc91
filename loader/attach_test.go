package loader

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/blocknat/blocknat/userspace/mapping"
)

// xdpProgOn reports the XDP program id `ip` shows on an interface, or "".
func xdpProgOn(t *testing.T, ns *testNS, iface string) string {
	t.Helper()
	out, err := exec.Command("ip", "-n", ns.name, "-d", "link", "show", "dev", iface).CombinedOutput()
	if err != nil {
		t.Fatalf("ip link show %s: %v: %s", iface, err, out)
	}
	fields := strings.Fields(string(out))
	for i, f := range fields {
		if f == "prog/xdp" && i+2 < len(fields) {
			return fields[i+2]
		}
	}
	return ""
}

func mountTestBPFFS(t *testing.T) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "bpffs")
	if err := EnsureBPFFS(dir); err != nil {
		t.Fatal(err)
	}
	var st unix.Statfs_t
	if err := unix.Statfs(dir, &st); err != nil || st.Type != unix.BPF_FS_MAGIC {
		t.Fatalf("EnsureBPFFS(%s) left no bpffs there (%v)", dir, err)
	}
	t.Cleanup(func() { unix.Unmount(dir, unix.MNT_DETACH) })
	return dir
}

// TestAttachPinRestartDetach walks the data plane's life: attach natively
// with pins, survive the loading process closing, hand the same links to a
// second load (as a restarted agent does), then detach cleanly.
func TestAttachPinRestartDetach(t *testing.T) {
	ns := newTestNS(t)
	pinDir := filepath.Join(mountTestBPFFS(t), "blocknat")
	m, err := mapping.New(prefixesOf(t, []string{"100.64.0.0/24"}), prefixesOf(t, []string{"198.51.100.10/31"}), 1024, 65535, 0)
	if err != nil {
		t.Fatal(err)
	}
	ifaces := []Interface{{"in0", RoleInside}, {"out0", RoleOutside}}
	load := func() *NAT {
		t.Helper()
		var nat *NAT
		ns.do(t, func() {
			var err error
			if nat, err = Load(Params{Mapping: m, Epoch: 1}, pinDir); err != nil {
				t.Fatal(err)
			}
			if err := nat.AttachAll(ifaces, ModeNative); err != nil {
				nat.Close()
				t.Fatal(err)
			}
		})
		return nat
	}

	nat := load()
	for _, p := range []string{"maps/stats", "maps/flows_fwd", "maps/block_events", "progs/xdp_inside", "progs/xdp_outside", "links/in0", "links/out0"} {
		if _, err := os.Stat(filepath.Join(pinDir, p)); err != nil {
			t.Errorf("not pinned: %s", p)
		}
	}
	firstIn := xdpProgOn(t, ns, "in0")
	if firstIn == "" || xdpProgOn(t, ns, "out0") == "" {
		t.Fatalf("no XDP program on in0/out0 after attach")
	}
	// A mapping made now must survive the restart below.
	key := FlowKey{Addr: 0x01020304, Port: 7, Proto: ProtoUDP}
	if err := nat.objs.FlowsFwd.Put(&key, &FlowFwd{NatPort: 9}); err != nil {
		t.Fatal(err)
	}
	if err := nat.Close(); err != nil {
		t.Fatal(err)
	}
	if xdpProgOn(t, ns, "in0") != firstIn {
		t.Fatal("closing the loader detached the program; the pinned link should hold it")
	}

	nat = load()
	defer nat.Close()
	secondIn := xdpProgOn(t, ns, "in0")
	if secondIn == "" || secondIn == firstIn {
		t.Errorf("restart: program on in0 is %q, was %q; want the new program in the old link", secondIn, firstIn)
	}
	var v FlowFwd
	if err := nat.objs.FlowsFwd.Lookup(&key, &v); err != nil || v.NatPort != 9 {
		t.Errorf("restart lost the pinned flow table: %v %+v", err, v)
	}
	linksAfter, _ := filepath.Glob(filepath.Join(pinDir, "links", "*"))
	if len(linksAfter) != 2 {
		t.Errorf("pinned links after restart: %v", linksAfter)
	}

	nat.Close()
	if err := Detach(pinDir); err != nil {
		t.Fatal(err)
	}
	if p := xdpProgOn(t, ns, "in0") + xdpProgOn(t, ns, "out0"); p != "" {
		t.Errorf("after detach an XDP program is still attached: %s", p)
	}
	if _, err := os.Stat(pinDir); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("pin directory still there: %v", err)
	}
	if err := Detach(pinDir); err != nil {
		t.Errorf("second detach: %v", err)
	}
}

// TestAttachAllRollsBack: one bad interface leaves no other attached and
// the error names it.
func TestAttachAllRollsBack(t *testing.T) {
	ns := newTestNS(t)
	pinDir := filepath.Join(mountTestBPFFS(t), "blocknat")
	m, _ := mapping.New(prefixesOf(t, []string{"100.64.0.0/24"}), prefixesOf(t, []string{"198.51.100.10"}), 1024, 65535, 0)
	ns.do(t, func() {
		nat, err := Load(Params{Mapping: m}, pinDir)
		if err != nil {
			t.Fatal(err)
		}
		defer nat.Close()
		err = nat.AttachAll([]Interface{{"in0", RoleInside}, {"nosuch0", RoleOutside}}, ModeNative)
		if err == nil || !strings.Contains(err.Error(), "nosuch0") || !strings.Contains(err.Error(), "outside") {
			t.Fatalf("error %v, want one naming outside interface nosuch0", err)
		}
	})
	if p := xdpProgOn(t, ns, "in0"); p != "" {
		t.Errorf("in0 kept program %s after the start was refused", p)
	}
	if links, _ := filepath.Glob(filepath.Join(pinDir, "links", "*")); len(links) != 0 {
		t.Errorf("pinned links left: %v", links)
	}
}

// TestGenericMode attaches in the skb path when asked.
func TestGenericMode(t *testing.T) {
	ns := newTestNS(t)
	m, _ := mapping.New(prefixesOf(t, []string{"100.64.0.0/24"}), prefixesOf(t, []string{"198.51.100.10"}), 1024, 65535, 0)
	var shown string
	ns.do(t, func() {
		nat, err := Load(Params{Mapping: m}, "")
		if err != nil {
			t.Fatal(err)
		}
		defer nat.Close()
		if err := nat.Attach("in0", RoleInside, ModeGeneric); err != nil {
			t.Fatal(err)
		}
		out, _ := exec.Command("ip", "-n", ns.name, "link", "show", "dev", "in0").CombinedOutput()
		shown = string(out)
	})
	if !strings.Contains(shown, "xdpgeneric") {
		t.Errorf("in0 after a generic attach:\n%s", shown)
	}
}

func TestParamsErrorsNameTheField(t *testing.T) {
	m, _ := mapping.New(prefixesOf(t, []string{"100.64.0.0/24"}), prefixesOf(t, []string{"198.51.100.10"}), 1024, 65535, 0)
	for _, tc := range []struct {
		p    Params
		want string
	}{
		{Params{MaxFlows: 1}, "mapping"},
		{Params{Mapping: m, MaxFlows: 193535}, "max_flows: 193535 cannot hold 256 subscribers × 252 ports × 3 protocols = 193536"},
		{Params{Mapping: &mapping.Mapping{Subscribers: 1, Pool: m.Pool, Ratio: 1}, MaxFlows: 1}, "ports.block_size"},
		{Params{Mapping: &mapping.Mapping{Subscribers: 1, Ratio: 1, BlockSize: 1}, MaxFlows: 1}, "outside.pool"},
		{Params{Mapping: &mapping.Mapping{Subscribers: 1, Pool: m.Pool, Ratio: 2, BlockSize: 40000, PortLo: 1024}, MaxFlows: 1}, "ports.range"},
	} {
		if _, err := Load(tc.p, ""); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("Load(%+v) = %v, want an error naming %s", tc.p, err, tc.want)
		}
	}
	if _, err := ParseMode("turbo"); err == nil || !strings.Contains(err.Error(), "xdp_mode") {
		t.Errorf("ParseMode(turbo) = %v", err)
	}
}

// TestAttachRefusesLargeIfindex: the per-interface tables are arrays
// indexed by ifindex, so an interface beyond them is refused by name
// rather than left without a role.
func TestAttachRefusesLargeIfindex(t *testing.T) {
	f := defaultFixture(t)
	if out, err := exec.Command("ip", "-n", f.ns.name, "link", "add", "big0", "index", "5000", "type", "veth", "peer", "name", "big0p").CombinedOutput(); err != nil {
		t.Fatalf("ip link add big0: %v: %s", err, out)
	}
	f.ns.do(t, func() {
		err := f.nat.Attach("big0", RoleInside, ModeGeneric)
		if err == nil || !strings.Contains(err.Error(), "big0") || !strings.Contains(err.Error(), "ifindex 5000") {
			t.Fatalf("attach to ifindex 5000: %v, want a refusal naming big0 and its ifindex", err)
		}
		err = f.nat.SetInterfacePolicies(map[string]InterfacePolicy{"big0": {RequireBinding: true}})
		if err == nil || !strings.Contains(err.Error(), "big0") {
			t.Fatalf("policy for ifindex 5000: %v, want a refusal naming big0", err)
		}
	})
}

package loader

import (
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/blocknat/blocknat/userspace/mapping"
)

// foreignProgram loads an XDP program that is not blocknat's.
func foreignProgram(t *testing.T) *ebpf.Program {
	t.Helper()
	var objs baselineObjects
	if err := loadBaselineObjects(&objs, nil); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { objs.Close() })
	return objs.XdpPass
}

func progID(t *testing.T, p *ebpf.Program) ebpf.ProgramID {
	t.Helper()
	info, err := p.Info()
	if err != nil {
		t.Fatal(err)
	}
	id, ok := info.ID()
	if !ok {
		t.Fatal("program has no id")
	}
	return id
}

// attachNetlink attaches prog the way `ip link set dev X xdp obj ...` does.
func attachNetlink(t *testing.T, ns *testNS, iface string, prog *ebpf.Program, flags int) {
	t.Helper()
	ns.do(t, func() {
		l, err := netlink.LinkByName(iface)
		if err != nil {
			t.Fatal(err)
		}
		if err := netlink.LinkSetXdpFdWithFlags(l, prog.FD(), flags); err != nil {
			t.Fatalf("attach foreign program to %s: %v", iface, err)
		}
	})
}

// TestForeignXDPRefusedThenReplaced: a program attached by someone else
// (through netlink in native mode, through netlink in generic mode, or
// held by a BPF link) makes the check fail with an error naming the
// interface and the program id; with replace, the programs are removed and
// blocknat attaches; blocknat's own pinned links are never foreign.
func TestForeignXDPRefusedThenReplaced(t *testing.T) {
	ns := newTestNS(t)
	pinDir := filepath.Join(mountTestBPFFS(t), "blocknat")
	m, err := mapping.New(prefixesOf(t, []string{"100.64.0.0/24"}), prefixesOf(t, []string{"198.51.100.10/31"}), 1024, 65535, 0)
	if err != nil {
		t.Fatal(err)
	}
	prog := foreignProgram(t)
	id := progID(t, prog)
	attachNetlink(t, ns, "in0", prog, unix.XDP_FLAGS_DRV_MODE)
	attachNetlink(t, ns, "out0", prog, unix.XDP_FLAGS_SKB_MODE)
	var held link.Link
	ns.do(t, func() {
		held, err = link.AttachXDP(link.XDPOptions{Program: prog, Interface: ns.ifs["lan0"], Flags: link.XDPDriverMode})
		if err != nil {
			t.Fatal(err)
		}
	})
	defer held.Close()
	ifaces := []Interface{{"in0", RoleInside}, {"out0", RoleOutside}, {"lan0", RoleInside}}

	ns.do(t, func() {
		_, err = CheckForeignXDP(ifaces, pinDir, false)
	})
	var fe *ForeignXDPError
	if !errors.As(err, &fe) {
		t.Fatalf("check with foreign programs: %v, want a ForeignXDPError", err)
	}
	for _, want := range []string{
		fmt.Sprintf("inside interface in0 already has XDP program id %d (xdp_pass) in native mode", id),
		fmt.Sprintf("outside interface out0 already has XDP program id %d (xdp_pass) in generic mode", id),
		fmt.Sprintf("inside interface lan0 already has XDP program id %d (xdp_pass) in native mode", id),
		"--replace",
	} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error lacks %q:\n%v", want, err)
		}
	}
	// Without the check, the attach fails with nothing an operator can
	// act on; the check must come first.
	ns.do(t, func() {
		nat, err := Load(Params{Mapping: m, Epoch: 1}, pinDir)
		if err != nil {
			t.Fatal(err)
		}
		defer nat.Close()
		if err := nat.AttachAll(ifaces, ModeNative); err == nil {
			t.Fatal("attached over a foreign program without the operator asking")
		}
	})

	var removed []XDPProgram
	ns.do(t, func() {
		removed, err = CheckForeignXDP(ifaces, pinDir, true)
	})
	if err != nil || len(removed) != 3 {
		t.Fatalf("replace: removed %v, err %v; want the three foreign programs removed", removed, err)
	}
	for _, ifn := range []string{"in0", "out0", "lan0"} {
		if p := xdpProgOn(t, ns, ifn); p != "" {
			t.Errorf("%s still runs program %s after replace", ifn, p)
		}
	}
	var nat *NAT
	ns.do(t, func() {
		if nat, err = Load(Params{Mapping: m, Epoch: 1}, pinDir); err != nil {
			t.Fatal(err)
		}
		if err := nat.AttachAll(ifaces, ModeNative); err != nil {
			t.Fatalf("attach after replace: %v", err)
		}
	})
	nat.Close()
	// A restarted agent finds its own pinned programs: not foreign.
	ns.do(t, func() {
		removed, err = CheckForeignXDP(ifaces, pinDir, false)
	})
	if err != nil || len(removed) != 0 {
		t.Errorf("check over blocknat's own links: %v, %v; want nothing foreign", removed, err)
	}
	// The same interfaces seen through another pin directory belong to
	// another blocknat: foreign to this one.
	ns.do(t, func() {
		_, err = CheckForeignXDP(ifaces[:1], filepath.Join(filepath.Dir(pinDir), "other"), false)
	})
	if !errors.As(err, &fe) || !strings.Contains(err.Error(), "in0") {
		t.Errorf("check with another pin directory: %v, want in0 refused", err)
	}
	if err := Detach(pinDir); err != nil {
		t.Fatal(err)
	}
}

// TestForeignXDPUnknownInterface: a missing interface is named.
func TestForeignXDPUnknownInterface(t *testing.T) {
	ns := newTestNS(t)
	var err error
	ns.do(t, func() {
		_, err = CheckForeignXDP([]Interface{{"nosuch0", RoleOutside}}, "", false)
	})
	if err == nil || !strings.Contains(err.Error(), "outside interface nosuch0") {
		t.Errorf("err %v, want one naming outside interface nosuch0", err)
	}
}

package preflight

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"strings"
	"syscall"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netlink/nl"
	"golang.org/x/sys/unix"

	"github.com/blocknat/blocknat/loader"
	"github.com/blocknat/blocknat/userspace/config"
)

// checkInterface: the interface exists here and is up, XDP can run on it
// in the configured mode, and no program blocknat did not attach holds it.
func checkInterface(name, role, ifname string, cfg *config.Config, opts Options) []Finding {
	ifc, err := net.InterfaceByName(ifname)
	if err != nil {
		return []Finding{refuse(name, "does not exist in this network namespace (ip link show lists those that do): "+
			"create it, or correct %s.interfaces; under systemd, start the agent after it exists (see the unit's header)", role)}
	}
	var out []Finding
	var ok []string
	if ifc.Flags&net.FlagUp == 0 {
		out = append(out, warn(name, "is down: nothing is translated on it until it is up; ip link set dev %s up", ifname))
	} else {
		ok = append(ok, "up")
	}
	switch f := checkXDPMode(name, ifc.Index, cfg.XDPMode); {
	case f.Status == Pass:
		ok = append(ok, f.Text)
	default:
		out = append(out, f)
	}
	foreign, err := loader.ForeignXDP(ifname, cfg.BPFFSDir)
	switch {
	case err != nil:
		out = append(out, notChecked(name, "XDP programs attached: %v", err))
	case len(foreign) > 0 && !onBPFFS(cfg.BPFFSDir):
		// Under `ip netns exec` the agent's own pins are out of sight
		// until it shares the host's bpffs into its mount namespace, so
		// its own program cannot be told from another; the attach,
		// after that, tells.
		out = append(out, notChecked(name, "whether %s is blocknat's own: bpffs_dir is not on a bpffs in this mount namespace yet; the agent tells once it has mounted or shared one",
			foreign[0]))
	case len(foreign) > 0 && opts.ReplaceXDP:
		ok = append(ok, fmt.Sprintf("%s, which blocknat did not attach, will be replaced (--replace)", foreign[0]))
	case len(foreign) > 0:
		out = append(out, refuse(name, "already has %s, which blocknat did not attach: remove it (ip link set dev %s xdp off), "+
			"or start blocknatd once with --replace to replace it", foreign[0], ifname))
	default:
		ok = append(ok, "no XDP program blocknat did not attach")
	}
	if !Failed(out) && len(ok) > 0 {
		out = append([]Finding{pass(name, "%s", strings.Join(ok, ", "))}, out...)
	}
	return out
}

// checkXDPMode says whether the driver runs XDP in the configured mode.
// Generic XDP runs on any interface; native needs the driver's support,
// which kernels from 6.3 report through the netdev netlink family.
func checkXDPMode(name string, ifindex int, mode string) Finding {
	if mode == config.XDPModeGeneric {
		return pass(name, "generic XDP")
	}
	features, err := xdpFeatures(ifindex)
	if err != nil {
		return notChecked(name, "whether the driver has native XDP: %v; the attach at start will tell", err)
	}
	if features&netdevXDPActBasic == 0 {
		return refuse(name, "has no native XDP in its driver (xdp_mode: native): set xdp_mode: generic, which is slower, "+
			"or use a NIC whose driver supports XDP")
	}
	return pass(name, "native XDP supported by the driver")
}

// The netdev generic-netlink family (include/uapi/linux/netdev.h).
const (
	netdevCmdDevGet       = 1
	netdevAttrIfindex     = 1
	netdevAttrXDPFeatures = 3
	netdevXDPActBasic     = 1 << 0
)

// xdpFeatures asks the kernel which XDP actions the interface's driver
// implements (NETDEV_A_DEV_XDP_FEATURES). The request is written by hand:
// the netlink library's generic-netlink header came out garbled on the
// first request of a process, which the kernel refuses.
func xdpFeatures(ifindex int) (uint64, error) {
	fam, err := netlink.GenlFamilyGet("netdev")
	if err != nil {
		return 0, errors.New("this kernel does not report XDP features (netdev netlink family, kernel 6.3 and later)")
	}
	fd, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.NETLINK_GENERIC)
	if err != nil {
		return 0, fmt.Errorf("netlink socket: %w", err)
	}
	defer unix.Close(fd)
	tv := unix.Timeval{Sec: 2}
	if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv); err != nil {
		return 0, fmt.Errorf("netlink socket: %w", err)
	}
	const seq = 1
	msg := make([]byte, unix.NLMSG_HDRLEN+nl.SizeofGenlmsg+8)
	ne := binary.NativeEndian
	ne.PutUint32(msg[0:], uint32(len(msg)))
	ne.PutUint16(msg[4:], fam.ID)
	ne.PutUint16(msg[6:], unix.NLM_F_REQUEST)
	ne.PutUint32(msg[8:], seq)
	msg[unix.NLMSG_HDRLEN] = netdevCmdDevGet
	msg[unix.NLMSG_HDRLEN+1] = uint8(fam.Version)
	attr := msg[unix.NLMSG_HDRLEN+nl.SizeofGenlmsg:]
	ne.PutUint16(attr[0:], 8)
	ne.PutUint16(attr[2:], netdevAttrIfindex)
	ne.PutUint32(attr[4:], uint32(ifindex))
	if err := unix.Sendto(fd, msg, 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		return 0, fmt.Errorf("netdev dev-get: %w", err)
	}
	buf := make([]byte, 8192)
	n, _, err := unix.Recvfrom(fd, buf, 0)
	if err != nil {
		return 0, fmt.Errorf("netdev dev-get: %w", err)
	}
	msgs, err := syscall.ParseNetlinkMessage(buf[:n])
	if err != nil {
		return 0, fmt.Errorf("netdev dev-get: %w", err)
	}
	for _, m := range msgs {
		if m.Header.Type == unix.NLMSG_ERROR && len(m.Data) >= 4 {
			return 0, fmt.Errorf("netdev dev-get: %w", syscall.Errno(-int32(ne.Uint32(m.Data))))
		}
		if m.Header.Type != fam.ID || len(m.Data) < nl.SizeofGenlmsg {
			continue
		}
		attrs, err := nl.ParseRouteAttr(m.Data[nl.SizeofGenlmsg:])
		if err != nil {
			return 0, fmt.Errorf("netdev dev-get: %w", err)
		}
		for _, a := range attrs {
			if a.Attr.Type == netdevAttrXDPFeatures && len(a.Value) >= 8 {
				return ne.Uint64(a.Value), nil
			}
		}
	}
	return 0, errors.New("the kernel's answer holds no XDP features")
}

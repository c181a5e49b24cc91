package loader

import (
	"errors"
	"fmt"
	"net"
	"path/filepath"
	"strings"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netlink/nl"
	"golang.org/x/sys/unix"
)

// XDPProgram is an XDP program attached to an interface.
type XDPProgram struct {
	Interface string
	Ifindex   int
	ID        ebpf.ProgramID
	Name      string // the program's name when the kernel tells it, else ""
	Mode      string // native, generic or offload
}

func (p XDPProgram) String() string {
	s := fmt.Sprintf("XDP program id %d", p.ID)
	if p.Name != "" {
		s += fmt.Sprintf(" (%s)", p.Name)
	}
	return s + " in " + p.Mode + " mode"
}

// ForeignXDPError says that an interface blocknat is configured for already
// runs an XDP program blocknat did not attach. Attaching over it would
// silently take its job away (a firewall, a load balancer, another NAT), so
// the operator must decide.
type ForeignXDPError struct {
	Role     Role
	Programs []XDPProgram
}

func (e *ForeignXDPError) Error() string {
	p := e.Programs[0]
	var others []string
	for _, q := range e.Programs[1:] {
		others = append(others, q.String())
	}
	msg := fmt.Sprintf("%s interface %s already has %s, which blocknat did not attach", e.Role, p.Interface, p)
	if len(others) > 0 {
		msg += ", and " + strings.Join(others, ", ")
	}
	return msg + "; remove it (ip link set dev " + p.Interface + " xdp off), or start blocknatd once with --replace to replace it"
}

// ForeignXDP lists the XDP programs attached to iface other than
// blocknat's own: the program of the link pinned for iface under pinDir.
func ForeignXDP(iface, pinDir string) ([]XDPProgram, error) {
	ifc, err := net.InterfaceByName(iface)
	if err != nil {
		return nil, fmt.Errorf("interface %s: %w", iface, err)
	}
	attached, err := xdpPrograms(ifc.Index)
	if err != nil {
		return nil, fmt.Errorf("interface %s: read XDP programs: %w", iface, err)
	}
	own := ownProgram(pinDir, iface, ifc.Index)
	var out []XDPProgram
	for _, p := range attached {
		if p.ID == own {
			continue
		}
		p.Interface = iface
		if prog, err := ebpf.NewProgramFromID(p.ID); err == nil {
			// Only a nicety for the message: reading a foreign program by
			// id needs CAP_SYS_ADMIN, which the agent need not have.
			if info, err := prog.Info(); err == nil {
				p.Name = info.Name
			}
			prog.Close()
		}
		out = append(out, p)
	}
	return out, nil
}

// ownProgram returns the program id of blocknat's link pinned for iface,
// or 0 when there is none for this interface.
func ownProgram(pinDir, iface string, ifindex int) ebpf.ProgramID {
	if pinDir == "" {
		return 0
	}
	l, err := link.LoadPinnedLink(filepath.Join(pinDir, linksDir, iface), nil)
	if err != nil {
		return 0
	}
	defer l.Close()
	info, err := l.Info()
	if err != nil || info.XDP() == nil || int(info.XDP().Ifindex) != ifindex {
		return 0 // a stale pin: Attach replaces it
	}
	return info.Program
}

// CheckForeignXDP refuses, with a *ForeignXDPError per interface, every
// configured interface that runs an XDP program blocknat did not attach.
// With replace, it removes those programs instead and returns them, so
// that AttachAll finds the interfaces free.
func CheckForeignXDP(ifaces []Interface, pinDir string, replace bool) ([]XDPProgram, error) {
	var errs []error
	var removed []XDPProgram
	for _, ifc := range ifaces {
		foreign, err := ForeignXDP(ifc.Name, pinDir)
		if err != nil {
			errs = append(errs, fmt.Errorf("%s %w", ifc.Role, err))
			continue
		}
		if len(foreign) == 0 {
			continue
		}
		if !replace {
			errs = append(errs, &ForeignXDPError{Role: ifc.Role, Programs: foreign})
			continue
		}
		for _, p := range foreign {
			if err := removeXDP(p); err != nil {
				errs = append(errs, fmt.Errorf("%s interface %s: replace %s: %w", ifc.Role, p.Interface, p, err))
				continue
			}
			removed = append(removed, p)
		}
	}
	return removed, errors.Join(errs...)
}

// removeXDP detaches a program attached through netlink, or, when a BPF
// link holds it, detaches that link.
func removeXDP(p XDPProgram) error {
	l, err := netlink.LinkByIndex(p.Ifindex)
	if err != nil {
		return fmt.Errorf("find interface: %w", err)
	}
	flags := map[string]int{"native": unix.XDP_FLAGS_DRV_MODE, "generic": unix.XDP_FLAGS_SKB_MODE, "offload": unix.XDP_FLAGS_HW_MODE}[p.Mode]
	err = netlink.LinkSetXdpFdWithFlags(l, -1, flags)
	if err == nil {
		return nil
	}
	if !errors.Is(err, unix.EBUSY) {
		return fmt.Errorf("detach through netlink: %w", err)
	}
	// EBUSY: a BPF link owns the attachment and only detaching the link
	// frees it. Finding it by id needs CAP_SYS_ADMIN.
	var it link.Iterator
	defer it.Close()
	for it.Next() {
		info, err := it.Link.Info()
		if err != nil || info.XDP() == nil || int(info.XDP().Ifindex) != p.Ifindex || info.Program != p.ID {
			continue
		}
		if err := it.Link.Detach(); err != nil {
			return fmt.Errorf("detach BPF link %d: %w", it.ID, err)
		}
		return nil
	}
	if err := it.Err(); err != nil {
		return fmt.Errorf("a BPF link holds it, and links cannot be listed: %w", err)
	}
	return errors.New("a BPF link holds it and was not found")
}

// nlaFlags are the flag bits of a netlink attribute type (NLA_F_NESTED,
// NLA_F_NET_BYTEORDER); the rest is the type.
const nlaFlags = 0xc000

// xdpPrograms reads the XDP programs attached to an interface, by mode,
// from the kernel's link message: the per-mode ids are there even when
// several modes are in use at once, where the single id is not.
func xdpPrograms(ifindex int) ([]XDPProgram, error) {
	req := nl.NewNetlinkRequest(unix.RTM_GETLINK, unix.NLM_F_ACK)
	msg := nl.NewIfInfomsg(unix.AF_UNSPEC)
	msg.Index = int32(ifindex)
	req.AddData(msg)
	msgs, err := req.Execute(unix.NETLINK_ROUTE, unix.RTM_NEWLINK)
	if err != nil {
		return nil, err
	}
	var out []XDPProgram
	for _, m := range msgs {
		if len(m) < unix.SizeofIfInfomsg {
			continue
		}
		attrs, err := nl.ParseRouteAttr(m[unix.SizeofIfInfomsg:])
		if err != nil {
			return nil, fmt.Errorf("parse link message: %w", err)
		}
		for _, a := range attrs {
			if a.Attr.Type&^nlaFlags != unix.IFLA_XDP {
				continue
			}
			nested, err := nl.ParseRouteAttr(a.Value)
			if err != nil {
				return nil, fmt.Errorf("parse IFLA_XDP: %w", err)
			}
			for _, x := range nested {
				if len(x.Value) < 4 {
					continue
				}
				mode := map[uint16]string{
					unix.IFLA_XDP_DRV_PROG_ID: "native",
					unix.IFLA_XDP_SKB_PROG_ID: "generic",
					unix.IFLA_XDP_HW_PROG_ID:  "offload",
				}[x.Attr.Type&^nlaFlags]
				if id := ebpf.ProgramID(nl.NativeEndian().Uint32(x.Value)); mode != "" && id != 0 {
					out = append(out, XDPProgram{Ifindex: ifindex, ID: id, Mode: mode})
				}
			}
		}
	}
	return out, nil
}

package agent

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"runtime"
	"strings"

	"github.com/safchain/ethtool"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/blocknat/blocknat/userspace/logattr"
)

// A veth whose peer has tx checksum offload on hands the XDP program
// packets whose TCP or UDP checksum is only partial (CHECKSUM_PARTIAL: the
// "hardware" was to finish it). XDP sees raw bytes, and a redirected frame
// loses that promise, so the far side drops every translated packet, and
// nothing says why. A real NIC always delivers full checksums, so this
// matters only in a lab, and there it matters for every packet.
//
// These are the features that leave a TCP or UDP checksum partial;
// `ethtool -K IFACE tx off` turns them all off.
var partialChecksumFeatures = []string{"tx-checksum-ip-generic", "tx-checksum-ipv4", "tx-checksum-ipv6"}

// vethPeer is the far end of a veth: its name, the namespace it is in,
// and whether it hands over partial checksums.
type vethPeer struct {
	Name string
	// Netns is "" when the peer shares the agent's namespace, the name
	// `ip netns` knows it by, or a /proc/PID/ns/net path for an unnamed
	// one.
	Netns     string
	TxPartial bool
}

// fixCommand is what turns the peer's tx checksum offload off.
func (p vethPeer) fixCommand() string {
	switch {
	case p.Netns == "":
		return "ethtool -K " + p.Name + " tx off"
	case strings.HasPrefix(p.Netns, "/"):
		return "nsenter --net=" + p.Netns + " ethtool -K " + p.Name + " tx off"
	default:
		return "ip netns exec " + p.Netns + " ethtool -K " + p.Name + " tx off"
	}
}

// warnVethPeer warns when iface is a veth whose peer has tx checksum
// offload on, naming the command that fixes it. It never stops the agent:
// a check it cannot make (without CAP_SYS_ADMIN it cannot enter the peer's
// namespace) is logged and the agent goes on.
func warnVethPeer(log *slog.Logger, iface string) {
	peer, err := findVethPeer(iface)
	switch {
	case err != nil:
		log.Info("veth peer not checked", logattr.Interface, iface, logattr.Err, err)
	case peer != nil && peer.TxPartial:
		log.Warn("veth peer has tx checksum offload on: the far side will drop translated packets",
			logattr.Interface, iface, logattr.Peer, peer.Name, logattr.Netns, peer.Netns, logattr.Fix, peer.fixCommand())
	}
}

// findVethPeer returns iface's peer, or nil when iface is not a veth. It
// reads the calling thread's network namespace.
func findVethPeer(iface string) (*vethPeer, error) {
	link, err := netlink.LinkByName(iface)
	if err != nil {
		return nil, fmt.Errorf("link %s: %w", iface, err)
	}
	if link.Type() != "veth" {
		return nil, nil
	}
	attrs := link.Attrs()
	if attrs.ParentIndex == 0 {
		return nil, fmt.Errorf("veth %s: the kernel names no peer", iface)
	}
	peer := &vethPeer{}
	// NetNsID is the id this namespace gives the peer's; -1 when the peer
	// is here too.
	if attrs.NetNsID < 0 {
		err = peer.read(attrs.ParentIndex)
	} else {
		var path string
		if path, peer.Netns, err = netnsByID(attrs.NetNsID); err == nil {
			err = inNetns(path, func() error { return peer.read(attrs.ParentIndex) })
		}
	}
	if err != nil {
		return nil, fmt.Errorf("veth %s: peer (ifindex %d, netnsid %d): %w", iface, attrs.ParentIndex, attrs.NetNsID, err)
	}
	return peer, nil
}

// read fills in the peer's name and offloads; it runs in the peer's
// namespace.
func (p *vethPeer) read(index int) error {
	link, err := netlink.LinkByIndex(index)
	if err != nil {
		return err
	}
	p.Name = link.Attrs().Name
	// The ethtool ioctls go through this socket, so they reach the
	// namespace it was opened in.
	e, err := ethtool.NewEthtool()
	if err != nil {
		return fmt.Errorf("ethtool: %w", err)
	}
	defer e.Close()
	features, err := e.Features(p.Name)
	if err != nil {
		return fmt.Errorf("ethtool features of %s: %w", p.Name, err)
	}
	for _, f := range partialChecksumFeatures {
		p.TxPartial = p.TxPartial || features[f]
	}
	return nil
}

// netnsByID finds the namespace that this one calls id: first among the
// namespaces `ip netns` names, then among those of running processes.
// It returns a path to open and the name to show.
func netnsByID(id int) (path, name string, err error) {
	named, _ := filepath.Glob("/run/netns/*")
	procs, _ := filepath.Glob("/proc/[0-9]*/ns/net")
	seen := map[uint64]bool{}
	for _, p := range append(named, procs...) {
		var st unix.Stat_t
		if unix.Stat(p, &st) != nil || seen[st.Ino] {
			continue
		}
		seen[st.Ino] = true
		got, err := nsidOf(p)
		if err != nil || got != id {
			continue
		}
		if strings.HasPrefix(p, "/run/netns/") {
			return p, filepath.Base(p), nil
		}
		return p, p, nil
	}
	return "", "", fmt.Errorf("no namespace in /run/netns or /proc has netnsid %d", id)
}

func nsidOf(path string) (int, error) {
	f, err := os.Open(path)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	return netlink.GetNetNsIdByFd(int(f.Fd()))
}

// inNetns runs fn on a locked thread in the namespace at path, and
// switches the thread back. A thread that cannot be switched back stays
// locked, so the runtime discards it rather than let another goroutine
// run in the wrong namespace.
func inNetns(path string, fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		origin, err := netns.Get()
		if err != nil {
			errc <- fmt.Errorf("this thread's netns: %w", err)
			return
		}
		defer origin.Close()
		target, err := netns.GetFromPath(path)
		if err != nil {
			errc <- fmt.Errorf("open netns %s: %w", path, err)
			return
		}
		defer target.Close()
		if err := netns.Set(target); err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("enter netns %s: %w", path, err)
			return
		}
		ferr := fn()
		if err := netns.Set(origin); err != nil {
			errc <- errors.Join(ferr, fmt.Errorf("leave netns %s: %w", path, err))
			return
		}
		runtime.UnlockOSThread()
		errc <- ferr
	}()
	return <-errc
}

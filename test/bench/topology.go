package bench

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/blocknat/blocknat/test/netns"
	"github.com/blocknat/blocknat/userspace/mapping"
)

// The bench bed's addressing. Subscribers are numbered from the inside
// prefix's network address, so 1 000 of them need a /22; the pool of 16
// addresses gives a sharing ratio of 64 and blocks of 1 008 ports.
var (
	InsidePrefix = netip.MustParsePrefix("100.64.0.0/22")
	PoolPrefix   = netip.MustParsePrefix("198.51.100.0/28")
	// FirstSubscriber is the generator's subscriber 0: subscriber number 1,
	// because the network address is an odd source to send from.
	FirstSubscriber = netip.MustParseAddr("100.64.0.1")
	// FirstDestination is where flow 0 goes; flows spread over the
	// following addresses, all behind the sink.
	FirstDestination = netip.MustParseAddr("203.0.113.1")
	routerInside     = netip.MustParsePrefix("10.255.0.1/30")
	routerOutside    = netip.MustParsePrefix("192.0.2.1/30")
	sinkAddr         = netip.MustParsePrefix("192.0.2.2/30")
)

// Interface names; each lives in its own namespace.
const (
	GenIface       = "gen0"
	RouterInIface  = "rin"
	RouterOutIface = "rout"
	SinkIface      = "sink0"
)

// nsPrefix starts the name of every namespace this package makes. The
// process id follows, so that a bed left by a killed run can be told from
// a live one (see RemoveStale).
const nsPrefix = "bnbench"

// Bed is the throughput topology:
//
//	<p>-gen  gen0 ──veth── rin  <p>-rtr  rout 192.0.2.1/30 ──veth── sink0  <p>-sink
//	 xdp_trafficgen      (router under test)                          xdp_sink
//
// The generator sends from the subscriber addresses of InsidePrefix to
// addresses of 203.0.113.0/24; the router routes 100.64.0.0/22 back to rin
// and everything else to the sink, whose MAC it knows permanently, so no
// lookup ever waits for ARP. The sink drops every frame after counting it.
type Bed struct {
	Gen, Router, Sink *netns.NS
	// MACs of both ends of both links, and ifindexes in their namespaces.
	GenMAC, RouterInMAC, RouterOutMAC, SinkMAC net.HardwareAddr
	GenIndex, RouterInIndex, RouterOutIndex    int
	SinkIndex                                  int

	owned []*netns.NS
}

// NewBed builds the bed in three namespaces named <prefix>-gen, -rtr and
// -sink. On error it removes whatever it made.
func NewBed(ctx context.Context, prefix string) (_ *Bed, err error) {
	b := &Bed{}
	defer func() {
		if err != nil {
			err = errors.Join(err, b.Close())
		}
	}()
	for _, ns := range []struct {
		dst    **netns.NS
		suffix string
	}{{&b.Gen, "gen"}, {&b.Router, "rtr"}, {&b.Sink, "sink"}} {
		n, err := netns.Create(prefix + "-" + ns.suffix)
		if err != nil {
			return nil, fmt.Errorf("bed: %w", err)
		}
		b.owned = append(b.owned, n)
		*ns.dst = n
		// No IPv6: its neighbour discovery would reach the sink.
		if err := writeSysctls(n, [][2]string{
			{"net/ipv6/conf/all/disable_ipv6", "1"},
			{"net/ipv6/conf/default/disable_ipv6", "1"},
		}); err != nil {
			return nil, fmt.Errorf("bed: %w", err)
		}
	}
	steps := [][]string{
		{b.Router.Name, "link", "add", RouterInIface, "type", "veth", "peer", "name", GenIface, "netns", b.Gen.Name},
		{b.Router.Name, "link", "add", RouterOutIface, "type", "veth", "peer", "name", SinkIface, "netns", b.Sink.Name},
		{b.Router.Name, "addr", "add", routerInside.String(), "dev", RouterInIface},
		{b.Router.Name, "addr", "add", routerOutside.String(), "dev", RouterOutIface},
		{b.Sink.Name, "addr", "add", sinkAddr.String(), "dev", SinkIface},
	}
	for _, l := range [][2]string{{b.Gen.Name, GenIface}, {b.Router.Name, RouterInIface}, {b.Router.Name, RouterOutIface}, {b.Sink.Name, SinkIface}} {
		steps = append(steps, []string{l[0], "link", "set", l[1], "up"})
	}
	for _, ns := range b.owned {
		steps = append(steps, []string{ns.Name, "link", "set", "lo", "up"})
	}
	for _, s := range steps {
		if err := ipIn(ctx, s[0], s[1:]...); err != nil {
			return nil, fmt.Errorf("bed: %w", err)
		}
	}
	// A veth only takes XDP_REDIRECTed frames while its receiving end runs
	// NAPI, which an XDP program or GRO turns on. GRO on rin lets the
	// kernel-forwarding routers receive the generator's frames.
	if _, err := b.Router.Exec(ctx, "ethtool", "-K", RouterInIface, "gro", "on"); err != nil {
		return nil, fmt.Errorf("bed: %w", err)
	}

	// The generator's subscribers are not on rin's subnet; only a route
	// says they are behind it, so reverse-path filtering is off.
	if err := writeSysctls(b.Router, [][2]string{
		{"net/ipv4/ip_forward", "1"},
		{"net/ipv4/conf/all/rp_filter", "0"},
		{"net/ipv4/conf/default/rp_filter", "0"},
		{"net/ipv4/conf/" + RouterInIface + "/rp_filter", "0"},
	}); err != nil {
		return nil, fmt.Errorf("bed: %w", err)
	}
	if b.GenMAC, b.GenIndex, err = linkOf(b.Gen, GenIface); err != nil {
		return nil, err
	}
	if b.RouterInMAC, b.RouterInIndex, err = linkOf(b.Router, RouterInIface); err != nil {
		return nil, err
	}
	if b.RouterOutMAC, b.RouterOutIndex, err = linkOf(b.Router, RouterOutIface); err != nil {
		return nil, err
	}
	if b.SinkMAC, b.SinkIndex, err = linkOf(b.Sink, SinkIface); err != nil {
		return nil, err
	}
	for _, s := range [][]string{
		{"route", "add", InsidePrefix.String(), "dev", RouterInIface},
		{"route", "add", "default", "via", sinkAddr.Addr().String(), "dev", RouterOutIface},
		{"neigh", "replace", sinkAddr.Addr().String(), "lladdr", b.SinkMAC.String(), "dev", RouterOutIface, "nud", "permanent"},
	} {
		if err := ipIn(ctx, b.Router.Name, s...); err != nil {
			return nil, fmt.Errorf("bed: %w", err)
		}
	}
	return b, nil
}

// Close deletes the namespaces, and with them the veths and anything
// attached. It may be called again after a failure.
func (b *Bed) Close() error {
	var errs []error
	var failed []*netns.NS
	for i := len(b.owned) - 1; i >= 0; i-- {
		if err := b.owned[i].Delete(); err != nil {
			errs = append(errs, err)
			failed = append(failed, b.owned[i])
		}
	}
	b.owned = failed
	return errors.Join(errs...)
}

// Mapping is the RFC 7422 mapping of the bed: every address of
// InsidePrefix a subscriber, PoolPrefix shared, ports 1024-65535.
func Mapping() (*mapping.Mapping, error) {
	return mapping.New([]netip.Prefix{InsidePrefix}, []netip.Prefix{PoolPrefix}, 1024, 65535, 0)
}

// Prefix returns a namespace prefix unique to this process.
func Prefix(label string) string {
	return nsPrefix + strconv.FormatInt(int64(os.Getpid()), 36) + "-" + label
}

// RemoveStale deletes namespaces left by benchmark processes that no
// longer exist (killed before their own cleanup ran). Namespaces of live
// processes, including this one, are left alone.
func RemoveStale(ctx context.Context) error {
	entries, err := os.ReadDir("/var/run/netns")
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("list namespaces: %w", err)
	}
	var errs []error
	for _, e := range entries {
		name := e.Name()
		rest, ok := strings.CutPrefix(name, nsPrefix)
		if !ok {
			continue
		}
		pid36, _, ok := strings.Cut(rest, "-")
		if !ok {
			continue
		}
		pid, err := strconv.ParseInt(pid36, 36, 64)
		if err != nil || pid <= 0 {
			continue
		}
		if _, err := os.Stat(fmt.Sprintf("/proc/%d", pid)); err == nil {
			continue
		}
		if _, err := runCmd(ctx, "ip", "netns", "delete", name); err != nil {
			errs = append(errs, fmt.Errorf("delete stale namespace: %w", err))
		}
	}
	return errors.Join(errs...)
}

// writeSysctls sets each /proc/sys path to its value in ns's network
// namespace (which /proc/sys/net shows to the thread that opens it).
func writeSysctls(ns *netns.NS, settings [][2]string) error {
	return ns.Do(func() error {
		for _, s := range settings {
			if err := os.WriteFile(filepath.Join("/proc/sys", s[0]), []byte(s[1]), 0); err != nil {
				return fmt.Errorf("netns %s: sysctl %s=%s: %w", ns.Name, strings.ReplaceAll(s[0], "/", "."), s[1], err)
			}
		}
		return nil
	})
}

func ipIn(ctx context.Context, ns string, args ...string) error {
	_, err := runCmd(ctx, "ip", append([]string{"-n", ns}, args...)...)
	return err
}

// runCmd runs a command and returns its output; a failure carries the
// output, which is usually the only explanation.
func runCmd(ctx context.Context, name string, args ...string) ([]byte, error) {
	out, err := exec.CommandContext(ctx, name, args...).CombinedOutput()
	if err != nil {
		return out, fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return out, nil
}

func linkOf(ns *netns.NS, name string) (mac net.HardwareAddr, index int, err error) {
	err = ns.Do(func() error {
		ifc, err := net.InterfaceByName(name)
		if err != nil {
			return err
		}
		mac, index = ifc.HardwareAddr, ifc.Index
		return nil
	})
	if err != nil {
		return nil, 0, fmt.Errorf("netns %s: interface %s: %w", ns.Name, name, err)
	}
	return mac, index, nil
}

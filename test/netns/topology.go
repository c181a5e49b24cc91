package netns

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
)

// The addressing matches the demo configuration: inside prefix 100.64.0.0/24,
// pool 198.51.100.10/31. Documentation ranges keep the test traffic obviously
// fake: 192.0.2.0/30 for the transit link, 203.0.113.0/24 for the servers.
var (
	insidePrefix    = netip.MustParsePrefix("100.64.0.0/24")
	insideGateway   = netip.MustParseAddr("100.64.0.254")
	firstSubscriber = netip.MustParseAddr("100.64.0.2")
	routerOutside   = netip.MustParsePrefix("192.0.2.1/30")
	internetTransit = netip.MustParsePrefix("192.0.2.2/30")
	serverAddrs     = []netip.Addr{netip.MustParseAddr("203.0.113.1"), netip.MustParseAddr("203.0.113.2")}
	poolPrefix      = netip.MustParsePrefix("198.51.100.10/31")
)

const (
	subscriberCount   = 2
	peerIface         = "eth0"
	defaultOutsideIf  = "bn-out"
	maxIfaceNameBytes = 15 // IFNAMSIZ - 1
)

var defaultInsideIfs = []string{"bn-in0", "bn-in1"}

// TopologyOptions chooses names. Addresses are fixed, see Topology.
type TopologyOptions struct {
	// Prefix names the namespaces <Prefix>-sub0, <Prefix>-sub1, <Prefix>-rtr and
	// <Prefix>-inet. It must be unique among concurrent users of the machine.
	Prefix string
	// InsideIfaces are the router-side names of the two subscriber links;
	// default "bn-in0", "bn-in1". They live in the router namespace, so they may
	// repeat across topologies.
	InsideIfaces []string
	// OutsideIface is the router-side name of the internet link; default "bn-out".
	OutsideIface string

	// failAfter makes NewTopology fail right after the named step, so tests can
	// prove that a half-built topology is removed.
	failAfter string
}

// Topology is the standard blocknat test and demo layout:
//
//	<p>-sub0 eth0 100.64.0.2 ──veth── bn-in0 ┐
//	                                         ├ <p>-rtr  bn-out 192.0.2.1/30 ──veth── eth0 192.0.2.2/30 <p>-inet
//	<p>-sub1 eth0 100.64.0.3 ──veth── bn-in1 ┘                                        lo 203.0.113.1, 203.0.113.2
//
// Both subscribers sit in the one inside prefix 100.64.0.0/24 but on separate
// veths, using point-to-point addressing: each side has a /32 with the other end
// as its peer (`ip addr add 100.64.0.2/32 peer 100.64.0.254/32`), so the kernel
// itself installs the /32 route to the far end. The router side of every inside
// link is 100.64.0.254. Subscribers route by default via 100.64.0.254, the
// router via 192.0.2.2, and the internet routes only the pool 198.51.100.10/31
// back to the router: the inside prefix is deliberately unreachable from the
// internet, as it is behind a real NAT.
//
// Every link has permanent neighbour entries in both directions, so a
// bpf_fib_lookup never misses on ARP, and GRO on at both ends, because
// XDP_REDIRECT into a veth drops frames unless the receiving peer has GRO or an
// XDP program.
type Topology struct {
	Subscribers []*Subscriber
	Router      *NS
	Internet    *NS
	// InsideIfaces are the router-side names of the subscriber links, in
	// subscriber order.
	InsideIfaces []string
	// OutsideIface is the router-side name of the internet link.
	OutsideIface string
	// InternetIface is the internet namespace's side of the outside link.
	InternetIface string
	// InsidePrefix holds every subscriber address.
	InsidePrefix netip.Prefix
	// RouterOutside is the router's address on the outside link (192.0.2.1), the
	// internet's next hop for the pool.
	RouterOutside netip.Addr
	// InternetAddr is the internet's address on the outside link (192.0.2.2), the
	// router's default gateway.
	InternetAddr netip.Addr
	// ServerAddrs are two addresses of the internet namespace (203.0.113.1 and
	// 203.0.113.2), on its loopback, reachable from subscribers via the router.
	ServerAddrs []netip.Addr
	// Pool is routed by the internet namespace to RouterOutside.
	Pool netip.Prefix

	// owned lists the namespaces this topology made, in creation order.
	owned []*NS
}

// Subscriber is one subscriber namespace.
type Subscriber struct {
	NS *NS
	// Iface is the subscriber's side of its link.
	Iface string
	// Addr is the subscriber's inside address.
	Addr netip.Addr
	// Gateway is the router's address on this subscriber's link.
	Gateway netip.Addr
}

// Build steps, in order; failAfter names one of them.
const (
	stepNamespaces = "namespaces"
	stepLinks      = "links"
	stepAddresses  = "addresses"
	stepSysctls    = "sysctls"
	stepUp         = "up"
	stepGRO        = "gro"
	stepRoutes     = "routes"
	stepNeighbours = "neighbours"
)

var buildSteps = []string{stepNamespaces, stepLinks, stepAddresses, stepSysctls, stepUp, stepGRO, stepRoutes, stepNeighbours}

// errInjected is returned when TopologyOptions.failAfter fires.
var errInjected = errors.New("injected failure")

// link is one veth pair; end A is on the router.
type link struct {
	routerIface string
	peer        *NS
}

// NewTopology builds the topology. It needs root, `ip` and `ethtool`. On error
// it deletes every namespace it made.
func NewTopology(ctx context.Context, opts TopologyOptions) (_ *Topology, err error) {
	if err := opts.fill(); err != nil {
		return nil, fmt.Errorf("topology options: %w", err)
	}
	for _, tool := range []string{"ip", "ethtool"} {
		if _, err := exec.LookPath(tool); err != nil {
			return nil, fmt.Errorf("topology %s: %w", opts.Prefix, err)
		}
	}
	t := &Topology{
		InsideIfaces:  opts.InsideIfaces,
		OutsideIface:  opts.OutsideIface,
		InternetIface: peerIface,
		InsidePrefix:  insidePrefix,
		RouterOutside: routerOutside.Addr(),
		InternetAddr:  internetTransit.Addr(),
		ServerAddrs:   append([]netip.Addr(nil), serverAddrs...),
		Pool:          poolPrefix,
	}
	defer func() {
		if err != nil {
			if cerr := t.Close(); cerr != nil {
				err = errors.Join(err, fmt.Errorf("topology %s: clean up after failure: %w", opts.Prefix, cerr))
			}
		}
	}()
	steps := []struct {
		name string
		run  func(context.Context) error
	}{
		{stepNamespaces, func(ctx context.Context) error { return t.createNamespaces(ctx, opts.Prefix) }},
		{stepLinks, t.createLinks},
		{stepAddresses, t.addAddresses},
		{stepSysctls, func(context.Context) error { return t.setRouterSysctls() }},
		{stepUp, t.setLinksUp},
		{stepGRO, t.enableGRO},
		{stepRoutes, t.addRoutes},
		{stepNeighbours, t.addNeighbours},
	}
	for _, s := range steps {
		if err := s.run(ctx); err != nil {
			return nil, fmt.Errorf("topology %s: %s: %w", opts.Prefix, s.name, err)
		}
		if opts.failAfter == s.name {
			return nil, fmt.Errorf("topology %s: after %s: %w", opts.Prefix, s.name, errInjected)
		}
	}
	return t, nil
}

func (o *TopologyOptions) fill() error {
	if err := validName(o.Prefix); err != nil {
		return fmt.Errorf("Prefix: %w", err)
	}
	if o.InsideIfaces == nil {
		o.InsideIfaces = append([]string(nil), defaultInsideIfs...)
	}
	if o.OutsideIface == "" {
		o.OutsideIface = defaultOutsideIf
	}
	if len(o.InsideIfaces) != subscriberCount {
		return fmt.Errorf("InsideIfaces: want %d names, got %d", subscriberCount, len(o.InsideIfaces))
	}
	seen := map[string]string{"lo": "loopback"}
	names := append([]string{}, o.InsideIfaces...)
	names = append(names, o.OutsideIface)
	for i, name := range names {
		field := "OutsideIface"
		if i < len(o.InsideIfaces) {
			field = fmt.Sprintf("InsideIfaces[%d]", i)
		}
		if err := validName(name); err != nil {
			return fmt.Errorf("%s: %w", field, err)
		}
		if len(name) > maxIfaceNameBytes {
			return fmt.Errorf("%s: %q is longer than %d bytes", field, name, maxIfaceNameBytes)
		}
		if other, ok := seen[name]; ok {
			return fmt.Errorf("%s: %q is already used by %s", field, name, other)
		}
		seen[name] = field
	}
	return nil
}

// TopologyNamespaces are the namespaces NewTopology makes for prefix, in
// the order it makes them: the subscribers', the router's, the internet's.
func TopologyNamespaces(prefix string) []string {
	var names []string
	for i := range subscriberCount {
		names = append(names, fmt.Sprintf("%s-sub%d", prefix, i))
	}
	return append(names, prefix+"-rtr", prefix+"-inet")
}

// RemoveTopology deletes the namespaces of the topology named prefix that
// exist, for a process other than the one that built it (make lab-down).
// Nothing there is no error.
func RemoveTopology(prefix string) error {
	var errs []error
	names := TopologyNamespaces(prefix)
	for i := len(names) - 1; i >= 0; i-- {
		if _, err := os.Stat(filepath.Join(netnsRunDir, names[i])); errors.Is(err, os.ErrNotExist) {
			continue
		}
		errs = append(errs, (&NS{Name: names[i]}).Delete())
	}
	return errors.Join(errs...)
}

func (t *Topology) createNamespaces(ctx context.Context, prefix string) error {
	names := TopologyNamespaces(prefix)
	create := func(name string) (*NS, error) {
		ns, err := Create(name)
		if err != nil {
			return nil, err
		}
		t.owned = append(t.owned, ns)
		if _, err := ns.ip(ctx, "link", "set", "lo", "up"); err != nil {
			return nil, err
		}
		return ns, nil
	}
	for i := range subscriberCount {
		ns, err := create(names[i])
		if err != nil {
			return err
		}
		t.Subscribers = append(t.Subscribers, &Subscriber{
			NS:      ns,
			Iface:   peerIface,
			Addr:    nthAddr(firstSubscriber, i),
			Gateway: insideGateway,
		})
	}
	var err error
	if t.Router, err = create(names[subscriberCount]); err != nil {
		return err
	}
	t.Internet, err = create(names[subscriberCount+1])
	return err
}

func (t *Topology) links() []link {
	var links []link
	for i, sub := range t.Subscribers {
		links = append(links, link{routerIface: t.InsideIfaces[i], peer: sub.NS})
	}
	return append(links, link{routerIface: t.OutsideIface, peer: t.Internet})
}

func (t *Topology) createLinks(ctx context.Context) error {
	for _, l := range t.links() {
		// Created from inside the router with the peer placed straight into its
		// namespace, so no name is ever taken in the caller's namespace.
		if _, err := t.Router.ip(ctx, "link", "add", "name", l.routerIface, "type", "veth",
			"peer", "name", peerIface, "netns", l.peer.Name); err != nil {
			return fmt.Errorf("veth %s <-> %s %s: %w", l.routerIface, l.peer.Name, peerIface, err)
		}
	}
	return nil
}

func (t *Topology) addAddresses(ctx context.Context) error {
	for i, sub := range t.Subscribers {
		if _, err := sub.NS.ip(ctx, "addr", "add", host(sub.Addr), "peer", host(sub.Gateway), "dev", sub.Iface); err != nil {
			return fmt.Errorf("subscriber %d address: %w", i, err)
		}
		if _, err := t.Router.ip(ctx, "addr", "add", host(sub.Gateway), "peer", host(sub.Addr), "dev", t.InsideIfaces[i]); err != nil {
			return fmt.Errorf("router %s address: %w", t.InsideIfaces[i], err)
		}
	}
	if _, err := t.Router.ip(ctx, "addr", "add", routerOutside.String(), "dev", t.OutsideIface); err != nil {
		return fmt.Errorf("router %s address: %w", t.OutsideIface, err)
	}
	if _, err := t.Internet.ip(ctx, "addr", "add", internetTransit.String(), "dev", t.InternetIface); err != nil {
		return fmt.Errorf("internet %s address: %w", t.InternetIface, err)
	}
	for _, a := range t.ServerAddrs {
		// On loopback so that a server can bind either address and the internet
		// answers for both without another device.
		if _, err := t.Internet.ip(ctx, "addr", "add", host(a), "dev", "lo"); err != nil {
			return fmt.Errorf("internet server address %s: %w", a, err)
		}
	}
	return nil
}

// setRouterSysctls turns on forwarding and turns off reverse-path filtering: the
// NAT forwards packets whose source the router's routes would not send back the
// same way (replies to pool addresses the router does not hold). The effective
// rp_filter is the maximum of "all" and the interface, so both are set.
func (t *Topology) setRouterSysctls() error {
	settings := [][2]string{
		{"net/ipv4/ip_forward", "1"},
		{"net/ipv4/conf/all/rp_filter", "0"},
		{"net/ipv4/conf/default/rp_filter", "0"},
		{"net/ipv4/conf/lo/rp_filter", "0"},
	}
	for _, iface := range append(append([]string{}, t.InsideIfaces...), t.OutsideIface) {
		settings = append(settings, [2]string{"net/ipv4/conf/" + iface + "/rp_filter", "0"})
	}
	return t.Router.Do(func() error {
		for _, s := range settings {
			// /proc/sys/net shows the namespace of the thread that opens it.
			if err := os.WriteFile(filepath.Join("/proc/sys", s[0]), []byte(s[1]), 0); err != nil {
				return fmt.Errorf("router sysctl %s=%s: %w", strings.ReplaceAll(s[0], "/", "."), s[1], err)
			}
		}
		return nil
	})
}

func (t *Topology) setLinksUp(ctx context.Context) error {
	for _, l := range t.links() {
		if _, err := t.Router.ip(ctx, "link", "set", l.routerIface, "up"); err != nil {
			return err
		}
		if _, err := l.peer.ip(ctx, "link", "set", peerIface, "up"); err != nil {
			return err
		}
	}
	return nil
}

func (t *Topology) enableGRO(ctx context.Context) error {
	for _, l := range t.links() {
		if _, err := t.Router.Exec(ctx, "ethtool", "-K", l.routerIface, "gro", "on"); err != nil {
			return err
		}
		// tx off: a veth hands the router packets whose L4 checksum is
		// only partial (CHECKSUM_PARTIAL, to be finished by "hardware").
		// XDP sees raw bytes and a redirected frame loses that promise,
		// so without this the far side drops every translated packet.
		// Frames from a real NIC always carry full checksums.
		if _, err := l.peer.Exec(ctx, "ethtool", "-K", peerIface, "gro", "on", "tx", "off"); err != nil {
			return err
		}
	}
	return nil
}

func (t *Topology) addRoutes(ctx context.Context) error {
	for i, sub := range t.Subscribers {
		if _, err := sub.NS.ip(ctx, "route", "add", "default", "via", sub.Gateway.String(), "dev", sub.Iface); err != nil {
			return fmt.Errorf("subscriber %d default route: %w", i, err)
		}
	}
	if _, err := t.Router.ip(ctx, "route", "add", "default", "via", t.InternetAddr.String(), "dev", t.OutsideIface); err != nil {
		return fmt.Errorf("router default route: %w", err)
	}
	if _, err := t.Internet.ip(ctx, "route", "add", t.Pool.String(), "via", t.RouterOutside.String(), "dev", t.InternetIface); err != nil {
		return fmt.Errorf("internet pool route: %w", err)
	}
	return nil
}

// addNeighbours writes permanent ARP entries on both ends of every link, as
// xdp-tools' test environments do.
func (t *Topology) addNeighbours(ctx context.Context) error {
	type end struct {
		ns    *NS
		iface string
		addr  netip.Addr
	}
	pairs := [][2]end{}
	for i, sub := range t.Subscribers {
		pairs = append(pairs, [2]end{
			{t.Router, t.InsideIfaces[i], sub.Gateway},
			{sub.NS, sub.Iface, sub.Addr},
		})
	}
	pairs = append(pairs, [2]end{
		{t.Router, t.OutsideIface, t.RouterOutside},
		{t.Internet, t.InternetIface, t.InternetAddr},
	})
	for _, p := range pairs {
		for i, local := range p {
			remote := p[1-i]
			mac, err := linkMAC(ctx, remote.ns, remote.iface)
			if err != nil {
				return err
			}
			if _, err := local.ns.ip(ctx, "neigh", "replace", remote.addr.String(), "lladdr", mac,
				"dev", local.iface, "nud", "permanent"); err != nil {
				return fmt.Errorf("neighbour %s on %s: %w", remote.addr, local.iface, err)
			}
		}
	}
	return nil
}

// linkMAC reads an interface's MAC address.
func linkMAC(ctx context.Context, ns *NS, iface string) (string, error) {
	out, err := ns.ip(ctx, "-j", "link", "show", "dev", iface)
	if err != nil {
		return "", err
	}
	var links []struct {
		Address string `json:"address"`
	}
	if err := json.Unmarshal(out, &links); err != nil {
		return "", fmt.Errorf("netns %s: parse link %s: %w", ns.Name, iface, err)
	}
	if len(links) != 1 || links[0].Address == "" {
		return "", fmt.Errorf("netns %s: link %s: no MAC address in %s", ns.Name, iface, bytes.TrimSpace(out))
	}
	return links[0].Address, nil
}

// Close deletes every namespace the topology made, which also removes its
// veths. It is idempotent; a namespace that failed to delete is tried again by
// the next Close.
func (t *Topology) Close() error {
	var errs []error
	var failed []*NS
	for i := len(t.owned) - 1; i >= 0; i-- {
		if err := t.owned[i].Delete(); err != nil {
			errs = append(errs, err)
			failed = append(failed, t.owned[i])
		}
	}
	t.owned = failed
	return errors.Join(errs...)
}

// RouterHasNoNAT fails if the router namespace holds any nftables or iptables
// NAT rule, so a test can prove that translation came from blocknat and not
// from the kernel. A missing tool means that kind of rule cannot exist.
func (t *Topology) RouterHasNoNAT(ctx context.Context) error {
	if _, err := exec.LookPath("nft"); err == nil {
		out, err := t.Router.Exec(ctx, "nft", "list", "ruleset")
		if err != nil {
			return fmt.Errorf("router NAT check: %w", err)
		}
		if rules := nftNATLines(out); len(rules) > 0 {
			return fmt.Errorf("router netns %s has nftables NAT: %s", t.Router.Name, strings.Join(rules, "; "))
		}
	}
	if _, err := exec.LookPath("iptables-save"); err == nil {
		out, err := t.Router.Exec(ctx, "iptables-save", "-t", "nat")
		if err != nil && !bytes.Contains(out, []byte("does not exist")) {
			return fmt.Errorf("router NAT check: %w", err)
		}
		if rules := iptablesRuleLines(out); len(rules) > 0 {
			return fmt.Errorf("router netns %s has iptables NAT: %s", t.Router.Name, strings.Join(rules, "; "))
		}
	}
	return nil
}

// nftNATLines returns the lines of an `nft list ruleset` that translate: a
// masquerade, snat, dnat or redirect statement. Empty NAT chains do not count,
// since iptables-nft creates them merely by being asked to list the nat table.
func nftNATLines(ruleset []byte) []string {
	var found []string
	sc := bufio.NewScanner(bytes.NewReader(ruleset))
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		fields := strings.Fields(line)
		for i, f := range fields {
			prev, next := "", ""
			if i > 0 {
				prev = fields[i-1]
			}
			if i+1 < len(fields) {
				next = fields[i+1]
			}
			// "ct status snat" and "icmp type redirect" are matches, not statements.
			isNAT := f == "masquerade" ||
				f == "redirect" && prev != "type" ||
				(f == "snat" || f == "dnat") && (next == "to" || next == "ip" || next == "ip6")
			if isNAT {
				found = append(found, line)
				break
			}
		}
	}
	return found
}

// iptablesRuleLines returns the rules ("-A ...") of an iptables-save output;
// empty built-in chains are listed even when nothing translates.
func iptablesRuleLines(save []byte) []string {
	var found []string
	sc := bufio.NewScanner(bytes.NewReader(save))
	for sc.Scan() {
		if line := strings.TrimSpace(sc.Text()); strings.HasPrefix(line, "-A ") {
			found = append(found, line)
		}
	}
	return found
}

// nthAddr returns base + n within the same /24 (n is small).
func nthAddr(base netip.Addr, n int) netip.Addr {
	for range n {
		base = base.Next()
	}
	return base
}

func host(a netip.Addr) string {
	return netip.PrefixFrom(a, a.BitLen()).String()
}

// AddSubscriberAddrs gives subscriber i's namespace more inside addresses,
// each one a further subscriber to the NAT: the router routes each over
// subscriber i's link with a permanent neighbour entry. Tests use it to
// activate many blocks from one namespace.
func (t *Topology) AddSubscriberAddrs(ctx context.Context, i int, addrs []netip.Addr) error {
	sub := t.Subscribers[i]
	mac, err := linkMAC(ctx, sub.NS, sub.Iface)
	if err != nil {
		return err
	}
	for _, a := range addrs {
		if !t.InsidePrefix.Contains(a) {
			return fmt.Errorf("%s is not in the inside prefix %s", a, t.InsidePrefix)
		}
		if _, err := sub.NS.ip(ctx, "addr", "add", a.String()+"/32", "dev", sub.Iface); err != nil {
			return fmt.Errorf("address %s: %w", a, err)
		}
		if _, err := t.Router.ip(ctx, "route", "add", a.String()+"/32", "dev", t.InsideIfaces[i]); err != nil {
			return fmt.Errorf("router route to %s: %w", a, err)
		}
		if _, err := t.Router.ip(ctx, "neigh", "replace", a.String(), "lladdr", mac, "dev", t.InsideIfaces[i], "nud", "permanent"); err != nil {
			return fmt.Errorf("router neighbour %s: %w", a, err)
		}
	}
	return nil
}

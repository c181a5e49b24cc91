package bench

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"

	"github.com/blocknat/blocknat/loader"
	"github.com/blocknat/blocknat/test/netns"
)

// Router is one way of moving the generator's frames from rin to rout in
// the bed's router namespace.
type Router interface {
	// Name is the router's label in reports.
	Name() string
	// Translates says whether frames leave with a source outside the
	// inside prefix.
	Translates() bool
	// Start sets the router up in an otherwise idle router namespace.
	Start(ctx context.Context, bed *Bed) error
	// Check is called after a warm-up that sent every flow of w at least
	// once; it fails if the router did not do what it claims.
	Check(ctx context.Context, bed *Bed, w Workload) error
	// Stop removes everything Start made, leaving the namespace idle.
	Stop(ctx context.Context, bed *Bed) error
}

// Router names, in the order reports list them.
const (
	RouterBlocknat      = "blocknat"
	RouterXDPForward    = "xdp-forward"
	RouterXDPRedirect   = "xdp-redirect"
	RouterLinux         = "linux-forward"
	RouterNftMasquerade = "nft-masquerade"
	RouterNftPortBlock  = "nft-portblock"
)

// RouterNames lists every router. xdp-redirect is not a router but the
// bed's floor: what it costs to carry a frame from generator to sink.
var RouterNames = []string{RouterBlocknat, RouterXDPForward, RouterLinux, RouterNftMasquerade, RouterNftPortBlock, RouterXDPRedirect}

// NewRouter returns the router of that name.
func NewRouter(name string) (Router, error) {
	switch name {
	case RouterBlocknat:
		return &blocknatRouter{}, nil
	case RouterXDPForward:
		return &xdpForwardRouter{name: name}, nil
	case RouterXDPRedirect:
		return &xdpForwardRouter{name: name, redirectOnly: true}, nil
	case RouterLinux:
		return linuxRouter{}, nil
	case RouterNftMasquerade:
		return &nftRouter{name: name, ruleset: masqueradeRuleset}, nil
	case RouterNftPortBlock:
		return &nftRouter{name: name, ruleset: portBlockRuleset}, nil
	}
	return nil, fmt.Errorf("router %q: want one of %s", name, strings.Join(RouterNames, ", "))
}

// BenchMaxFlows is the flow-table size blocknat runs with: the agent's
// default, derived from the bed's mapping (subscribers × block size × 3
// protocols), so that no subscriber can take another's capacity.
var BenchMaxFlows = func() uint32 {
	m, err := Mapping()
	if err != nil {
		panic(fmt.Sprintf("bench bed mapping: %v", err))
	}
	return uint32(m.FlowsNeeded())
}()

// blocknatRouter is blocknat's data plane, loaded and attached as
// blocknatd does (native XDP on both interfaces), without the agent: the
// agent's work is off the packet path.
type blocknatRouter struct {
	nat *loader.NAT
}

func (*blocknatRouter) Name() string     { return RouterBlocknat }
func (*blocknatRouter) Translates() bool { return true }

func (r *blocknatRouter) Start(_ context.Context, bed *Bed) error {
	m, err := Mapping()
	if err != nil {
		return fmt.Errorf("blocknat: mapping: %w", err)
	}
	nat, err := loader.Load(loader.Params{Mapping: m, Epoch: 1, MaxFlows: BenchMaxFlows}, "")
	if err != nil {
		return fmt.Errorf("blocknat: %w", err)
	}
	// Attach resolves interface names, and the devmap its ifindexes, in
	// the namespace of the calling thread.
	err = bed.Router.Do(func() error {
		if err := nat.Attach(RouterInIface, loader.RoleInside, loader.ModeNative); err != nil {
			return err
		}
		return nat.Attach(RouterOutIface, loader.RoleOutside, loader.ModeNative)
	})
	if err != nil {
		nat.Close()
		return fmt.Errorf("blocknat: %w", err)
	}
	r.nat = nat
	return nil
}

// Check proves that every flow got a mapping and that nothing took another
// path than translation.
func (r *blocknatRouter) Check(_ context.Context, _ *Bed, w Workload) error {
	st, err := r.nat.Stats()
	if err != nil {
		return fmt.Errorf("blocknat: %w", err)
	}
	for name, v := range st {
		switch name {
		case "out_packets", "out_bytes", "new_flows", "block_activations":
			continue
		}
		if v != 0 {
			return fmt.Errorf("blocknat: counter %s = %d: some frames were not translated (%v)", name, v, st)
		}
	}
	perSub, err := r.nat.FlowsPerSubscriber()
	if err != nil {
		return fmt.Errorf("blocknat: %w", err)
	}
	n := 0
	for _, c := range perSub {
		n += c
	}
	if n != w.Flows || st["new_flows"] != uint64(w.Flows) {
		return fmt.Errorf("blocknat: %d mappings, %d created; the workload has %d flows", n, st["new_flows"], w.Flows)
	}
	return nil
}

// Stats exposes the data plane's counters to callers that measure it.
func (r *blocknatRouter) Stats() (loader.Stats, error) { return r.nat.Stats() }

func (r *blocknatRouter) Stop(context.Context, *Bed) error {
	if r.nat == nil {
		return nil
	}
	err := r.nat.Close()
	r.nat = nil
	if err != nil {
		return fmt.Errorf("blocknat: close: %w", err)
	}
	return nil
}

// xdpForwardRouter is bpf/baseline.c: the NAT's forwarding without the NAT
// (xdp_forward), or no routing at all (xdp_redirect).
type xdpForwardRouter struct {
	name         string
	redirectOnly bool
	objs         forwardObjects
	link         link.Link
}

// forwardObjects are the baseline object's parts a forwarding router uses.
type forwardObjects struct {
	XdpForward  *ebpf.Program `ebpf:"xdp_forward"`
	XdpRedirect *ebpf.Program `ebpf:"xdp_redirect"`
	TxPorts     *ebpf.Map     `ebpf:"tx_ports"`
}

func (o *forwardObjects) Close() error {
	var errs []error
	for _, p := range []*ebpf.Program{o.XdpForward, o.XdpRedirect} {
		if p != nil {
			errs = append(errs, p.Close())
		}
	}
	if o.TxPorts != nil {
		errs = append(errs, o.TxPorts.Close())
	}
	return errors.Join(errs...)
}

func (r *xdpForwardRouter) Name() string   { return r.name }
func (*xdpForwardRouter) Translates() bool { return false }

func (r *xdpForwardRouter) Start(_ context.Context, bed *Bed) error {
	spec, err := loader.BaselineSpec()
	if err != nil {
		return fmt.Errorf("%s: %w", r.name, err)
	}
	if err := spec.Variables["redirect_ifindex"].Set(uint32(bed.RouterOutIndex)); err != nil {
		return fmt.Errorf("%s: set redirect_ifindex: %w", r.name, err)
	}
	if err := spec.LoadAndAssign(&r.objs, nil); err != nil {
		var ve *ebpf.VerifierError
		if errors.As(err, &ve) {
			return fmt.Errorf("%s: load: %+v", r.name, ve)
		}
		return fmt.Errorf("%s: load: %w", r.name, err)
	}
	prog := r.objs.XdpForward
	if r.redirectOnly {
		prog = r.objs.XdpRedirect
	}
	err = bed.Router.Do(func() error {
		out := uint32(bed.RouterOutIndex)
		if err := r.objs.TxPorts.Update(&out, &out, ebpf.UpdateAny); err != nil {
			return fmt.Errorf("write tx_ports: %w", err)
		}
		var err error
		r.link, err = link.AttachXDP(link.XDPOptions{Program: prog, Interface: bed.RouterInIndex, Flags: link.XDPDriverMode})
		return err
	})
	if err != nil {
		r.objs.Close()
		return fmt.Errorf("%s: %w", r.name, err)
	}
	return nil
}

func (*xdpForwardRouter) Check(context.Context, *Bed, Workload) error { return nil }

func (r *xdpForwardRouter) Stop(context.Context, *Bed) error {
	var errs []error
	if r.link != nil {
		errs = append(errs, r.link.Close())
		r.link = nil
	}
	errs = append(errs, r.objs.Close())
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("%s: stop: %w", r.name, err)
	}
	return nil
}

// linuxRouter is the kernel's own forwarding, with no netfilter rule (so
// no conntrack either).
type linuxRouter struct{}

func (linuxRouter) Name() string                                { return RouterLinux }
func (linuxRouter) Translates() bool                            { return false }
func (linuxRouter) Start(context.Context, *Bed) error           { return nil }
func (linuxRouter) Check(context.Context, *Bed, Workload) error { return nil }
func (linuxRouter) Stop(context.Context, *Bed) error            { return nil }

// nftRouter is kernel forwarding with an nftables NAT table.
type nftRouter struct {
	name    string
	ruleset func() (string, error)
}

func (r *nftRouter) Name() string     { return r.name }
func (r *nftRouter) Translates() bool { return true }

// masqueradeRuleset is the everyday Linux CGNAT: source NAT to the
// outside interface's address, ports chosen by conntrack.
func masqueradeRuleset() (string, error) {
	return `table ip blocknat_bench {
	chain postrouting {
		type nat hook postrouting priority srcnat; policy accept;
		oifname "` + RouterOutIface + `" masquerade
	}
}
`, nil
}

// portBlockRuleset is deterministic NAT as operators build it with
// nftables today: one map element per subscriber, giving the same public
// address and port block as blocknat's mapping, looked up once per new
// connection; conntrack still tracks every session.
func portBlockRuleset() (string, error) {
	m, err := Mapping()
	if err != nil {
		return "", fmt.Errorf("mapping: %w", err)
	}
	var elems []string
	for i := uint32(0); i < m.Subscribers; i++ {
		b, err := m.Block(i)
		if err != nil {
			return "", fmt.Errorf("block of subscriber %d: %w", i, err)
		}
		elems = append(elems, fmt.Sprintf("%s : %s . %d-%d", b.Inside, b.Public, b.PortLo, b.PortHi))
	}
	return `table ip blocknat_bench {
	map blocks {
		type ipv4_addr : interval ipv4_addr . inet_service
		flags interval
		elements = { ` + strings.Join(elems, ",\n\t\t\t") + ` }
	}
	chain postrouting {
		type nat hook postrouting priority srcnat; policy accept;
		oifname "` + RouterOutIface + `" meta l4proto { tcp, udp } snat ip to ip saddr map @blocks
	}
}
`, nil
}

func (r *nftRouter) Start(ctx context.Context, bed *Bed) error {
	rules, err := r.ruleset()
	if err != nil {
		return fmt.Errorf("%s: %w", r.name, err)
	}
	cmd := bed.Router.Command(ctx, "nft", "-f", "-")
	cmd.Stdin = strings.NewReader(rules)
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("%s: nft -f: %w: %s", r.name, err, bytes.TrimSpace(out))
	}
	return nil
}

// Check proves that conntrack holds at least one entry per flow.
func (r *nftRouter) Check(ctx context.Context, bed *Bed, w Workload) error {
	n, err := ConntrackCount(ctx, bed.Router)
	if err != nil {
		return fmt.Errorf("%s: %w", r.name, err)
	}
	if n < w.Flows {
		return fmt.Errorf("%s: conntrack holds %d entries; the workload has %d flows", r.name, n, w.Flows)
	}
	return nil
}

func (r *nftRouter) Stop(ctx context.Context, bed *Bed) error {
	var errs []error
	if out, err := bed.Router.Exec(ctx, "nft", "delete", "table", "ip", "blocknat_bench"); err != nil {
		errs = append(errs, fmt.Errorf("%s: %w: %s", r.name, err, out))
	}
	// Leave no session behind for the next router to inherit.
	if out, err := bed.Router.Exec(ctx, "conntrack", "-F"); err != nil {
		errs = append(errs, fmt.Errorf("%s: conntrack -F: %w: %s", r.name, err, out))
	}
	return errors.Join(errs...)
}

// ConntrackCount is the number of conntrack entries in ns.
func ConntrackCount(ctx context.Context, ns *netns.NS) (int, error) {
	out, err := ns.Exec(ctx, "conntrack", "-C")
	if err != nil {
		return 0, err
	}
	n, err := strconv.Atoi(strings.TrimSpace(string(out)))
	if err != nil {
		return 0, fmt.Errorf("conntrack -C: %q: %w", out, err)
	}
	return n, nil
}

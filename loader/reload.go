package loader

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"

	"github.com/blocknat/blocknat/userspace/mapping"
)

// ReloadStats says what a change of mapping did to the live mappings.
type ReloadStats struct {
	Kept    int // mappings whose public port lies in the subscriber's new block
	Dropped int // mappings the new mapping no longer allows
	// PCPKept and PCPDropped are the PCP mappings whose mapping was kept
	// and dropped.
	PCPKept, PCPDropped int
}

// shared are the maps a reload carries over as they are: the ring buffer
// (the agent's reader is attached to it), the counters, the interface
// tables, whose contents do not depend on the mapping, and the next-hop
// cache with its generation, which the agent's route watch keeps writing.
// The PCP epoch goes on too: the PCP mappings kept are still there, so
// clients must not be told that state was lost (RFC 6887 §8.5).
var shared = []string{"block_events", "stats", "iface_roles", "tx_ports", "frags", "iface_policy", "iface_sources", "nexthops", "route_gen", "iface_addrs", "pcp_epoch"}

// Reload moves the data plane onto a new configuration without detaching:
// it loads programs and tables for p, copies every mapping still valid
// under the new mapping (same public address, port inside the subscriber's
// new block), swaps the new programs into the attached links, and pins the
// new tables in place of the old. The old NAT is closed; use the returned
// one. On an error with a nil NAT the old one is untouched and still
// translating; with a non-nil NAT (only re-pinning failed) the data plane
// has moved and the returned NAT is the one to use.
func (n *NAT) Reload(p Params) (*NAT, ReloadStats, error) {
	var st ReloadStats
	if err := p.check(); err != nil {
		return nil, st, err
	}
	spec, err := prepareSpec(p)
	if err != nil {
		return nil, st, err
	}
	for _, ms := range spec.Maps {
		ms.Pinning = ebpf.PinNone
	}
	old := map[string]*ebpf.Map{"block_events": n.objs.BlockEvents, "stats": n.objs.Stats,
		"iface_roles": n.objs.IfaceRoles, "tx_ports": n.objs.TxPorts, "frags": n.objs.Frags,
		"iface_policy": n.objs.IfacePolicy, "iface_sources": n.objs.IfaceSources,
		"nexthops": n.objs.Nexthops, "route_gen": n.objs.RouteGen, "iface_addrs": n.objs.IfaceAddrs,
		"pcp_epoch": n.objs.PcpEpoch}
	repl := map[string]*ebpf.Map{}
	for _, name := range shared {
		c, err := old[name].Clone()
		if err != nil {
			for _, m := range repl {
				m.Close()
			}
			return nil, st, fmt.Errorf("reload: share map %s: %w", name, err)
		}
		repl[name] = c
	}
	next := &NAT{pinDir: n.pinDir, params: p, links: map[string]link.Link{}, roles: map[string]Role{}}
	err = spec.LoadAndAssign(&next.objs, &ebpf.CollectionOptions{MapReplacements: repl})
	for _, m := range repl {
		m.Close() // the collection holds its own references
	}
	if err != nil {
		var ve *ebpf.VerifierError
		if errors.As(err, &ve) {
			return nil, st, fmt.Errorf("reload: load nat programs: %+v", ve)
		}
		return nil, st, fmt.Errorf("reload: load nat objects: %w", err)
	}
	fail := func(err error) (*NAT, ReloadStats, error) {
		next.objs.Close()
		return nil, st, err
	}
	if err := next.fillConfigMaps(); err != nil {
		return fail(err)
	}
	if st, err = copyValid(n, next, p.Mapping); err != nil {
		return fail(err)
	}
	if kept, err := copyOverflow(n, next); err != nil {
		return fail(err)
	} else {
		st.Kept += kept
		st.Dropped -= kept
	}
	if st.PCPKept, st.PCPDropped, err = copyPCP(n, next); err != nil {
		return fail(err)
	}
	// From here on the new programs carry the traffic.
	for iface, l := range n.links {
		prog := next.objs.XdpInside
		if n.roles[iface] == RoleOutside {
			prog = next.objs.XdpOutside
		}
		if err := l.Update(prog); err != nil {
			return fail(fmt.Errorf("reload: replace program on %s: %w", iface, err))
		}
		next.links[iface], next.roles[iface] = l, n.roles[iface]
	}
	n.links = nil
	if n.pinDir != "" {
		if err := next.repin(); err != nil {
			n.objs.Close()
			return next, st, err
		}
	}
	n.objs.Close()
	return next, st, nil
}

// copyValid copies the mappings of from that the new mapping m still
// allows into to, with the subscriber numbers of m, and carries over the
// state of every subscriber whose block is unchanged.
func copyValid(from, to *NAT, m *mapping.Mapping) (ReloadStats, error) {
	var st ReloadStats
	active := map[uint32]bool{}
	err := from.Flows(func(key FlowKey, fwd FlowFwd) error {
		sub, ok := m.SubscriberOf(AddrFromBE32(key.Addr))
		if !ok {
			st.Dropped++
			return nil
		}
		block, err := m.Block(sub)
		port := PortFromBE16(fwd.NatPort)
		if err != nil || AddrFromBE32(fwd.NatAddr) != block.Public || port < block.PortLo || port > block.PortHi {
			st.Dropped++
			return nil
		}
		fwd.Subscriber = sub
		if err := to.AddMapping(key, fwd); err != nil {
			return fmt.Errorf("reload: copy mapping: %w", err)
		}
		active[sub] = true
		st.Kept++
		return nil
	})
	if err != nil {
		return st, err
	}
	if err := copyFilters(from, to); err != nil {
		return st, err
	}
	// A subscriber with kept mappings holds its new block from now on;
	// when the block is the same as before, it keeps its old state, so its
	// open record and its start stay true.
	oldMapping := from.params.Mapping
	for sub := range active {
		state := SubscriberState{Active: 1}
		nb, _ := m.Block(sub)
		if oldSub, ok := oldMapping.SubscriberOf(nb.Inside); ok {
			ob, _ := oldMapping.Block(oldSub)
			if prev, err := from.Subscriber(oldSub); ob == nb && err == nil {
				state = prev
			}
		}
		if err := to.SetSubscriber(sub, state); err != nil {
			return st, fmt.Errorf("reload: %w", err)
		}
	}
	return st, nil
}

// copyFilters carries over the remote endpoints of the mappings kept (those
// whose public side the new reverse table holds), when the new
// configuration filters by address and port. The endpoints of a dropped
// mapping go with it.
func copyFilters(from, to *NAT) error {
	if !to.params.FilterAPDF || !from.params.FilterAPDF {
		return nil
	}
	err := eachFilter(from.objs.Filters, func(key FilterKey, seen uint64) error {
		_, held, err := to.LookupReverse(FlowKey{Addr: key.NatAddr, Port: key.NatPort, Proto: key.Proto})
		if err != nil || !held {
			return nil
		}
		return to.NoteRemote(key, seen)
	})
	if err != nil {
		return fmt.Errorf("reload: copy filter entry: %w", err)
	}
	return nil
}

// repin replaces the pinned maps and programs with this NAT's.
func (n *NAT) repin() error {
	var errs []error
	for name, m := range n.objs.mapsByName() {
		path := filepath.Join(n.pinDir, mapsDir, name)
		if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, fmt.Errorf("unpin %s: %w", name, err))
			continue
		}
		if err := m.Pin(path); err != nil {
			errs = append(errs, fmt.Errorf("pin %s: %w", name, err))
		}
	}
	errs = append(errs, n.pinPrograms())
	return errors.Join(errs...)
}

func (o *natObjects) mapsByName() map[string]*ebpf.Map {
	return map[string]*ebpf.Map{
		"inside_prefixes": o.InsidePrefixes, "pool_addrs": o.PoolAddrs, "pool_index": o.PoolIndex,
		"subscribers": o.Subscribers, "flows_fwd": o.FlowsFwd, "flows_rev": o.FlowsRev, "frags": o.Frags,
		"filters": o.Filters, "iface_roles": o.IfaceRoles, "tx_ports": o.TxPorts, "block_events": o.BlockEvents,
		"stats": o.Stats, "nat_exempt": o.NatExempt, "public_inside": o.PublicInside,
		"overflow_addrs": o.OverflowAddrs, "overflow_blocks": o.OverflowBlocks, "overflow_slots": o.OverflowSlots,
	}
}

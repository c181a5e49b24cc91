package loader

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"path/filepath"

	"github.com/cilium/ebpf"
)

// Interface policy flags (bpf/types.h, enum iface_policy_flags).
const (
	policyCheckPrefixes  = uint32(natIfacePolicyFlagsIFACE_CHECK_PREFIXES)
	policyRequireBinding = uint32(natIfacePolicyFlagsIFACE_REQUIRE_BINDING)
)

// InterfacePolicy is what an inside interface may carry: only Prefixes
// when any are given, and only bound addresses when RequireBinding.
type InterfacePolicy struct {
	Prefixes       []netip.Prefix
	RequireBinding bool
}

// SetSourceBindings makes the kernel's address→MAC table equal to table.
// Only entries that change are written, so a sync after each lease request
// costs what the lease changed, and a packet in flight never sees an
// unchanged address unbound for a moment.
func (n *NAT) SetSourceBindings(table map[netip.Addr]net.HardwareAddr) error {
	m := n.objs.SrcBindings
	current, err := readSourceBindings(m)
	if err != nil {
		return err
	}
	for a := range current {
		if _, keep := table[a]; keep {
			continue
		}
		if err := m.Delete(a.As4()); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			return fmt.Errorf("src_bindings: delete %s: %w", a, err)
		}
	}
	for a, mac := range table {
		if !a.Is4() || len(mac) != 6 {
			return fmt.Errorf("src_bindings: %s %s: want an IPv4 address and an Ethernet MAC", a, mac)
		}
		if string(current[a]) == string(mac) {
			continue
		}
		var v natSrcBinding
		copy(v.Mac[:], mac)
		if err := m.Put(a.As4(), v); err != nil {
			return fmt.Errorf("src_bindings: put: %w (the table holds one binding per subscriber)", err)
		}
	}
	return nil
}

// SourceBindings returns the kernel's address→MAC table.
func (n *NAT) SourceBindings() (map[netip.Addr]net.HardwareAddr, error) {
	return readSourceBindings(n.objs.SrcBindings)
}

// SourceBindings returns the running data plane's address→MAC table.
func (p *Pinned) SourceBindings() (map[netip.Addr]net.HardwareAddr, error) {
	path := filepath.Join(p.pinDir, mapsDir, "src_bindings")
	m, err := ebpf.LoadPinnedMap(path, &ebpf.LoadPinOptions{ReadOnly: true})
	if err != nil {
		return nil, fmt.Errorf("open pinned map %s: %w", path, err)
	}
	defer m.Close()
	return readSourceBindings(m)
}

func readSourceBindings(m *ebpf.Map) (map[netip.Addr]net.HardwareAddr, error) {
	out := map[netip.Addr]net.HardwareAddr{}
	var key [4]byte
	var val natSrcBinding
	it := m.Iterate()
	for it.Next(&key, &val) {
		out[netip.AddrFrom4(key)] = net.HardwareAddr(append([]byte(nil), val.Mac[:]...))
	}
	if err := it.Err(); err != nil {
		return nil, fmt.Errorf("src_bindings: iterate: %w", err)
	}
	return out, nil
}

// SetInterfacePolicies replaces every inside interface's policy; an
// interface not in policies carries any inside prefix.
func (n *NAT) SetInterfacePolicies(policies map[string]InterfacePolicy) error {
	var ifindex uint32
	var flags uint32
	var old []uint32
	it := n.objs.IfacePolicy.Iterate()
	for it.Next(&ifindex, &flags) {
		if flags != 0 {
			old = append(old, ifindex)
		}
	}
	if err := it.Err(); err != nil {
		return fmt.Errorf("iface_policy: iterate: %w", err)
	}
	var srcKey natIfaceSourceKey
	var one uint32
	var oldSources []natIfaceSourceKey
	sit := n.objs.IfaceSources.Iterate()
	for sit.Next(&srcKey, &one) {
		oldSources = append(oldSources, srcKey)
	}
	if err := sit.Err(); err != nil {
		return fmt.Errorf("iface_sources: iterate: %w", err)
	}
	// Prefixes first, then the policy that makes them count, so that a
	// policy never applies to an interface whose prefixes are not in yet.
	want := map[uint32]uint32{}
	wantSources := map[natIfaceSourceKey]bool{}
	for name, p := range policies {
		ifc, err := net.InterfaceByName(name)
		if err != nil {
			return fmt.Errorf("inside.interface_prefixes: interface %s: %w", name, err)
		}
		if err := checkIfindex(ifc.Index); err != nil {
			return fmt.Errorf("inside.interface_prefixes: interface %s: %w", name, err)
		}
		idx := uint32(ifc.Index)
		var f uint32
		if len(p.Prefixes) > 0 {
			f |= policyCheckPrefixes
		}
		if p.RequireBinding {
			f |= policyRequireBinding
		}
		for _, pfx := range p.Prefixes {
			// The trie compares key bytes in order: the ifindex's four
			// bytes big-endian, then the address as on the wire.
			addr := pfx.Addr().As4()
			k := natIfaceSourceKey{
				Prefixlen: 32 + uint32(pfx.Bits()),
				Ifindex:   binary.NativeEndian.Uint32(binary.BigEndian.AppendUint32(nil, idx)),
				Addr:      binary.NativeEndian.Uint32(addr[:]),
			}
			wantSources[k] = true
			if err := n.objs.IfaceSources.Put(k, uint32(1)); err != nil {
				return fmt.Errorf("iface_sources: put %s on %s: %w", pfx, name, err)
			}
		}
		want[idx] = f
	}
	for idx, f := range want {
		if err := n.objs.IfacePolicy.Put(idx, f); err != nil {
			return fmt.Errorf("iface_policy: put: %w", err)
		}
	}
	for _, idx := range old {
		if _, keep := want[idx]; !keep {
			// An array entry cannot be deleted: 0 is no policy.
			if err := n.objs.IfacePolicy.Put(idx, uint32(0)); err != nil {
				return fmt.Errorf("iface_policy: clear: %w", err)
			}
		}
	}
	for _, k := range oldSources {
		if !wantSources[k] {
			if err := n.objs.IfaceSources.Delete(k); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
				return fmt.Errorf("iface_sources: delete: %w", err)
			}
		}
	}
	return nil
}

// Package loader loads blocknat's XDP programs with a mapping configuration,
// attaches them to the router's interfaces, pins programs, links and maps in
// bpffs so translation outlives the agent, and gives typed access to the maps.
package loader

import (
	"encoding/binary"
	"errors"
	"fmt"
	"maps"
	"math"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"

	"github.com/blocknat/blocknat/userspace/mapping"
)

// Go names for the types shared with the C program (bpf/types.h).
type (
	BlockEvent      = natBlockEvent
	FlowKey         = natFlowKey
	FlowFwd         = natFlowFwd
	FlowRev         = natFlowRev
	SubscriberState = natSubscriberState
	FragKey         = natFragKey
	FragVal         = natFragVal
)

// Block event kinds (enum block_event_kind), as BlockEvent.Kind holds them.
const (
	BlockEventActivate = uint32(natBlockEventKindBLOCK_EVENT_ACTIVATE)
	// BlockEventCanary is the agent's self-check (bpf/canary.c).
	BlockEventCanary = uint32(natBlockEventKindBLOCK_EVENT_CANARY)
)

// Flow states (enum flow_state), as FlowFwd.State holds them; the sweeper
// picks a timeout by them.
const (
	FlowStateOther    = uint8(natFlowStateFLOW_STATE_OTHER)
	FlowStateTCPTrans = uint8(natFlowStateFLOW_STATE_TCP_TRANS)
	FlowStateTCPEst   = uint8(natFlowStateFLOW_STATE_TCP_EST)
	// FlowStateTCPClosing: a FIN or RST from or to the mapping's peer
	// (FlowFwd.PeerAddr, PeerPort); the transitory timeout applies. It
	// reverts to established when both sides go on exchanging plain ACKs.
	FlowStateTCPClosing = uint8(natFlowStateFLOW_STATE_TCP_CLOSING)
)

// LastSeenResolution is how finely FlowFwd.LastSeen follows a mapping's
// packets (enum flow_clock): it counts units of this many nanoseconds, so
// it may lag the last packet by up to this.
const LastSeenResolution = time.Duration(1) << natFlowClockFLOW_LAST_SEEN_SHIFT

// LastSeenNs is the monotonic time, in nanoseconds, at the start of the
// unit in which the mapping last carried an outbound packet.
func (v natFlowFwd) LastSeenNs() uint64 {
	return uint64(v.LastSeen) << natFlowClockFLOW_LAST_SEEN_SHIFT
}

// LastSeenUnit is the FlowFwd.LastSeen value for the monotonic time ns.
func LastSeenUnit(ns uint64) uint32 { return uint32(ns >> natFlowClockFLOW_LAST_SEEN_SHIFT) }

// Protocol numbers of the flow key's Proto (enum flow_proto): the three
// protocols that share the flow tables.
const (
	ProtoICMP = uint8(natFlowProtoFLOW_PROTO_ICMP)
	ProtoTCP  = uint8(natFlowProtoFLOW_PROTO_TCP)
	ProtoUDP  = uint8(natFlowProtoFLOW_PROTO_UDP)
)

// TimeoutClass is which idle timeout a mapping lives by.
type TimeoutClass int

const (
	TimeoutUDP TimeoutClass = iota
	TimeoutTCPEstablished
	// TimeoutTCPTransitory: a handshake not yet acknowledged, or closing
	// (RFC 5382 REQ-5, RFC 7857 2.2: held, not removed, after an RST).
	TimeoutTCPTransitory
	TimeoutICMP
)

// TimeoutClassOf says which idle timeout applies to the mapping key, value.
func TimeoutClassOf(key FlowKey, v FlowFwd) TimeoutClass {
	switch key.Proto {
	case ProtoTCP:
		if v.State == FlowStateTCPEst {
			return TimeoutTCPEstablished
		}
		return TimeoutTCPTransitory
	case ProtoICMP:
		return TimeoutICMP
	}
	return TimeoutUDP
}

// Role says which side of the NAT an interface is on.
type Role uint32

const (
	RoleInside  = Role(natIfaceRoleIFACE_INSIDE) // enum iface_role
	RoleOutside = Role(natIfaceRoleIFACE_OUTSIDE)
)

func (r Role) String() string {
	switch r {
	case RoleInside:
		return "inside"
	case RoleOutside:
		return "outside"
	}
	return fmt.Sprintf("role(%d)", uint32(r))
}

// Mode is how a program is attached: in the driver, or in the generic
// (skb) path for drivers without XDP support.
type Mode int

const (
	ModeNative Mode = iota
	ModeGeneric
)

// ParseMode accepts the config's spelling.
func ParseMode(s string) (Mode, error) {
	switch s {
	case "", "native":
		return ModeNative, nil
	case "generic":
		return ModeGeneric, nil
	}
	return 0, fmt.Errorf("xdp_mode %q: want native or generic", s)
}

// Params is everything the data plane needs to know about a configuration.
type Params struct {
	Mapping *mapping.Mapping
	Epoch   uint32
	// MaxFlows is the capacity of each flow table; 0 sizes them from the
	// mapping (Mapping.FlowsNeeded). A smaller value is refused: with it, busy
	// subscribers could fill the tables and leave a quiet one none.
	MaxFlows uint32
	// FilterAPDF admits inbound packets only from endpoints the mapping
	// sent to (RFC 4787 REQ-8); false is endpoint-independent filtering.
	FilterAPDF bool
	// UDPInboundRefresh lets inbound UDP refresh its mapping.
	UDPInboundRefresh bool
	// Exempt are the destinations subscribers reach untranslated
	// (nat_exempt), PublicInside the inside addresses of their own that
	// are routed untouched (inside.public). They are not part of the
	// mapping: no record depends on them.
	Exempt, PublicInside []netip.Prefix
	// Overflow is the overflow pool's layout (ports.overflow); nil when
	// it is off.
	Overflow *mapping.Overflow
	// PCP says the PCP server runs (pcp.enabled): the inside program
	// then marks requests to it that fail the source validation.
	PCP bool
}

// ExemptPrefixLimit is how many prefixes Exempt and PublicInside may each
// hold (enum exempt_limits).
const ExemptPrefixLimit = int(natExemptLimitsEXEMPT_PREFIX_LIMIT)

func (p Params) check() error {
	m := p.Mapping
	switch {
	case m == nil:
		return errors.New("no mapping")
	case m.Subscribers == 0:
		return errors.New("inside.prefixes: no subscribers")
	case len(m.Pool) == 0:
		return errors.New("outside.pool: no addresses")
	case m.Ratio == 0:
		return errors.New("mapping: sharing ratio 0")
	case m.BlockSize == 0:
		return errors.New("ports.block_size: 0 ports per block")
	case uint64(m.PortLo)+uint64(m.Ratio)*uint64(m.BlockSize)-1 > 65535:
		return errors.New("ports.range: blocks run past port 65535")
	case m.FlowsNeeded() > math.MaxUint32:
		return fmt.Errorf("max_flows: %s is more than a kernel table holds", m.FlowsExplained())
	case p.MaxFlows != 0 && uint64(p.MaxFlows) < m.FlowsNeeded():
		return fmt.Errorf("max_flows: %d cannot hold %s", p.MaxFlows, m.FlowsExplained())
	case len(p.Exempt) > ExemptPrefixLimit:
		return fmt.Errorf("nat_exempt: %d prefixes, at most %d", len(p.Exempt), ExemptPrefixLimit)
	case len(p.PublicInside) > ExemptPrefixLimit:
		return fmt.Errorf("inside.public: %d prefixes, at most %d", len(p.PublicInside), ExemptPrefixLimit)
	}
	return checkOverflow(p)
}

// flowTableSize is the size of each flow table for p.
func (p Params) flowTableSize() uint32 {
	if p.MaxFlows != 0 {
		return p.MaxFlows
	}
	return uint32(p.Mapping.FlowsNeeded())
}

// Directory layout under the pin directory.
const (
	mapsDir  = "maps"
	progsDir = "progs"
	linksDir = "links"
)

// NAT is a loaded data plane.
type NAT struct {
	objs   natObjects
	pinDir string // "" when nothing is pinned (tests)
	params Params
	links  map[string]link.Link
	roles  map[string]Role
	// migrated counts the mappings Load carried over from a pinned flow
	// table of an earlier release's layout (migrateFlowLayout).
	migrated int
}

// MigratedFlows is how many live mappings Load carried over from a pinned
// flow table of an earlier release's entry layout; 0 when there was none.
func (n *NAT) MigratedFlows() int { return n.migrated }

// ErrConfigChanged reports pinned maps left by a configuration whose table
// sizes differ from this one. Reusing them would misread their contents.
var ErrConfigChanged = errors.New("pinned maps belong to a different configuration")

// Load checks the parameters, loads the programs and maps into the kernel,
// and fills the configuration maps. When pinDir is not empty, maps already
// pinned there are reused (so live flows survive an agent restart) and new
// ones are pinned.
func Load(p Params, pinDir string) (*NAT, error) {
	if err := p.check(); err != nil {
		return nil, err
	}
	spec, err := prepareSpec(p)
	if err != nil {
		return nil, err
	}

	opts := &ebpf.CollectionOptions{}
	migrated := 0
	if pinDir != "" {
		if err := EnsureBPFFS(pinDir); err != nil {
			return nil, err
		}
		for _, d := range []string{mapsDir, progsDir, linksDir} {
			if err := os.MkdirAll(filepath.Join(pinDir, d), 0o700); err != nil {
				return nil, fmt.Errorf("create pin directory: %w", err)
			}
		}
		opts.Maps.PinPath = filepath.Join(pinDir, mapsDir)
		if err := dropResizedFilters(spec, opts.Maps.PinPath); err != nil {
			return nil, err
		}
		if err := dropReshapedTables(spec, opts.Maps.PinPath); err != nil {
			return nil, err
		}
		if migrated, err = migrateFlowLayout(spec, opts.Maps.PinPath); err != nil {
			return nil, err
		}
	} else {
		// Unpinned (tests, benchmarks): private maps nobody else can see.
		for _, ms := range spec.Maps {
			ms.Pinning = ebpf.PinNone
		}
	}

	n := &NAT{pinDir: pinDir, params: p, links: map[string]link.Link{}, roles: map[string]Role{}, migrated: migrated}
	if err := spec.LoadAndAssign(&n.objs, opts); err != nil {
		var ve *ebpf.VerifierError
		if errors.As(err, &ve) {
			// %+v prints the whole verifier log, which is what anyone
			// debugging a rejected program needs.
			return nil, fmt.Errorf("load nat programs: %+v", ve)
		}
		if errors.Is(err, ebpf.ErrMapIncompatible) {
			return nil, fmt.Errorf("load nat maps from %s: %w (%w); run 'blocknatd detach' to start afresh, which drops live mappings",
				opts.Maps.PinPath, ErrConfigChanged, err)
		}
		return nil, fmt.Errorf("load nat objects: %w", err)
	}
	if err := n.fillConfigMaps(); err != nil {
		n.Close()
		return nil, err
	}
	if pinDir != "" {
		if err := n.pinPrograms(); err != nil {
			n.Close()
			return nil, err
		}
	}
	return n, nil
}

// dropReshapedTables removes the pins of the tables whose contents a start
// rewrites or may lose, when they are not of the type and shape spec asks
// for (an upgrade), so that loading makes new ones rather than refusing the
// pinned maps. The per-interface tables (hash tables in earlier releases)
// are rewritten at every start: Attach registers every interface's role,
// and the agent sets the interface policies. The counters (a release that
// adds one) start again from zero, which Prometheus reads as a reset.
func dropReshapedTables(spec *ebpf.CollectionSpec, pinPath string) error {
	for _, name := range []string{"iface_roles", "iface_policy", "stats"} {
		path := filepath.Join(pinPath, name)
		m, err := ebpf.LoadPinnedMap(path, &ebpf.LoadPinOptions{ReadOnly: true})
		if errors.Is(err, os.ErrNotExist) {
			continue
		}
		if err != nil {
			return fmt.Errorf("open pinned map %s: %w", path, err)
		}
		ms := spec.Maps[name]
		same := m.Type() == ms.Type && m.MaxEntries() == ms.MaxEntries && m.KeySize() == ms.KeySize && m.ValueSize() == ms.ValueSize
		m.Close()
		if same {
			continue
		}
		if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("unpin reshaped table %s: %w", path, err)
		}
	}
	return nil
}

// prepareSpec reads the object and sets the mapping's constants and the
// tables' sizes for p.
func prepareSpec(p Params) (*ebpf.CollectionSpec, error) {
	spec, err := loadNat()
	if err != nil {
		return nil, fmt.Errorf("read nat object: %w", err)
	}
	m := p.Mapping
	vars := map[string]any{
		"port_lo":             m.PortLo,
		"block_size":          m.BlockSize,
		"sharing_ratio":       m.Ratio,
		"subscriber_count":    m.Subscribers,
		"epoch":               p.Epoch,
		"filter_apdf":         boolByte(p.FilterAPDF),
		"udp_inbound_refresh": boolByte(p.UDPInboundRefresh),
		"pool_min":            poolMin(p),
		"pool_max":            poolMax(p),
		"inside_min":          prefixesMin(m.Prefixes),
		"inside_max":          prefixesMax(m.Prefixes),
		"nat_exempt_on":       boolByte(len(p.Exempt) > 0),
		"public_inside_on":    boolByte(len(p.PublicInside) > 0),
		"exempt_min":          prefixesMin(p.Exempt),
		"exempt_max":          prefixesMax(p.Exempt),
		"public_min":          prefixesMin(p.PublicInside),
		"public_max":          prefixesMax(p.PublicInside),
		"pcp_on":              boolByte(p.PCP),
	}
	ovVars, ovSizes := overflowVars(p)
	maps.Copy(vars, ovVars)
	for name, v := range vars {
		vs, ok := spec.Variables[name]
		if !ok {
			return nil, fmt.Errorf("nat object has no variable %s", name)
		}
		if err := vs.Set(v); err != nil {
			return nil, fmt.Errorf("set %s: %w", name, err)
		}
	}
	sizes := map[string]uint32{
		"inside_prefixes": uint32(len(m.Prefixes)),
		"pool_addrs":      uint32(len(m.Pool)),
		"pool_index":      uint32(len(publicAddrs(p))),
		"subscribers":     m.Subscribers,
		"flows_fwd":       p.flowTableSize(),
		"flows_rev":       p.flowTableSize(),
		"filters":         p.filterTableSize(),
		// One binding per inside address at most.
		"src_bindings": m.Subscribers,
	}
	maps.Copy(sizes, ovSizes)
	for name, n := range sizes {
		spec.Maps[name].MaxEntries = n
	}

	return spec, nil
}

// publicAddrs are the addresses the outside program answers for: the
// pool's and the overflow pool's.
func publicAddrs(p Params) []netip.Addr {
	if p.Overflow == nil {
		return p.Mapping.Pool
	}
	return append(slices.Clone(p.Mapping.Pool), p.Overflow.Pool...)
}

func poolMin(p Params) uint32 {
	lo := uint32(0xffffffff)
	for _, a := range publicAddrs(p) {
		lo = min(lo, binary.BigEndian.Uint32(a.AsSlice()))
	}
	return lo
}

func poolMax(p Params) uint32 {
	var hi uint32
	for _, a := range publicAddrs(p) {
		hi = max(hi, binary.BigEndian.Uint32(a.AsSlice()))
	}
	return hi
}

// prefixesMin and prefixesMax are the lowest and highest address the
// prefixes cover, in host order, for the data plane's range checks in
// front of its tries; with no prefix the range is empty (min above max).
func prefixesMin(prefixes []netip.Prefix) uint32 {
	lo := uint32(0xffffffff)
	for _, p := range prefixes {
		lo = min(lo, binary.BigEndian.Uint32(p.Masked().Addr().AsSlice()))
	}
	return lo
}

func prefixesMax(prefixes []netip.Prefix) uint32 {
	var hi uint32
	for _, p := range prefixes {
		first := binary.BigEndian.Uint32(p.Masked().Addr().AsSlice())
		hi = max(hi, first|uint32(uint64(1)<<(32-p.Bits())-1))
	}
	return hi
}

func boolByte(b bool) uint8 {
	if b {
		return 1
	}
	return 0
}

func (n *NAT) fillConfigMaps() error {
	m := n.params.Mapping
	var first uint32
	for i, pfx := range m.Prefixes {
		key := natLpmV4Key{Prefixlen: uint32(pfx.Bits()), Addr: be32(pfx.Addr())}
		val := natInsidePrefix{FirstSubscriber: first, Network: binary.BigEndian.Uint32(pfx.Addr().AsSlice())}
		if err := n.objs.InsidePrefixes.Update(&key, &val, ebpf.UpdateAny); err != nil {
			return fmt.Errorf("inside.prefixes[%d] %s: write to map: %w", i, pfx, err)
		}
		first += uint32(1) << (32 - pfx.Bits())
	}
	for i, a := range m.Pool {
		idx, addr := uint32(i), be32(a)
		if err := n.objs.PoolAddrs.Update(&idx, &addr, ebpf.UpdateAny); err != nil {
			return fmt.Errorf("outside.pool address %s: write to map: %w", a, err)
		}
		if err := n.objs.PoolIndex.Update(&addr, &idx, ebpf.UpdateAny); err != nil {
			return fmt.Errorf("outside.pool address %s: write to map: %w", a, err)
		}
	}
	if err := n.fillOverflow(); err != nil {
		return err
	}
	if err := fillTrie(n.objs.NatExempt, "nat_exempt", n.params.Exempt); err != nil {
		return err
	}
	return fillTrie(n.objs.PublicInside, "inside.public", n.params.PublicInside)
}

// fillTrie makes an LPM trie hold exactly prefixes: a pinned trie reused
// from an earlier run may hold prefixes since removed from the
// configuration, and those must stop being exempt.
func fillTrie(m *ebpf.Map, field string, prefixes []netip.Prefix) error {
	want := map[natLpmV4Key]bool{}
	for i, pfx := range prefixes {
		key := natLpmV4Key{Prefixlen: uint32(pfx.Bits()), Addr: be32(pfx.Addr())}
		one := uint32(1)
		if err := m.Update(&key, &one, ebpf.UpdateAny); err != nil {
			return fmt.Errorf("%s[%d] %s: write to map: %w", field, i, pfx, err)
		}
		want[key] = true
	}
	var (
		key   natLpmV4Key
		val   uint32
		stale []natLpmV4Key
	)
	it := m.Iterate()
	for it.Next(&key, &val) {
		if !want[key] {
			stale = append(stale, key)
		}
	}
	if err := it.Err(); err != nil {
		return fmt.Errorf("%s: walk map: %w", field, err)
	}
	for i := range stale {
		if err := m.Delete(&stale[i]); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			return fmt.Errorf("%s: delete a removed prefix: %w", field, err)
		}
	}
	return nil
}

func (n *NAT) pinPrograms() error {
	for name, prog := range map[string]*ebpf.Program{"xdp_inside": n.objs.XdpInside, "xdp_outside": n.objs.XdpOutside} {
		path := filepath.Join(n.pinDir, progsDir, name)
		// The previous agent's program stays attached through its link
		// until Attach swaps it; only the pin name moves on.
		if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("unpin old %s: %w", name, err)
		}
		if err := prog.Pin(path); err != nil {
			return fmt.Errorf("pin %s: %w", name, err)
		}
	}
	return nil
}

// Attach attaches the program for role to the named interface, or, when a
// link pinned by an earlier run still holds it, swaps the new program into
// that link so traffic never sees the interface without a program.
func (n *NAT) Attach(iface string, role Role, mode Mode) error {
	ifc, err := net.InterfaceByName(iface)
	if err != nil {
		return fmt.Errorf("%s interface %s: %w", role, iface, err)
	}
	prog := n.objs.XdpInside
	if role == RoleOutside {
		prog = n.objs.XdpOutside
	}
	if err := n.register(ifc.Index, role); err != nil {
		return fmt.Errorf("%s interface %s: %w", role, iface, err)
	}

	pinPath := ""
	if n.pinDir != "" {
		pinPath = filepath.Join(n.pinDir, linksDir, iface)
		if l, err := link.LoadPinnedLink(pinPath, nil); err == nil {
			info, infoErr := l.Info()
			if infoErr == nil && info.XDP() != nil && int(info.XDP().Ifindex) == ifc.Index {
				if err := l.Update(prog); err != nil {
					l.Close()
					return fmt.Errorf("replace program on %s interface %s: %w", role, iface, err)
				}
				n.links[iface] = l
				n.roles[iface] = role
				return nil
			}
			// A stale pin: its interface is gone or was recreated.
			l.Unpin()
			l.Close()
		}
	}

	flags := link.XDPDriverMode
	if mode == ModeGeneric {
		flags = link.XDPGenericMode
	}
	l, err := link.AttachXDP(link.XDPOptions{Program: prog, Interface: ifc.Index, Flags: flags})
	if err != nil {
		return fmt.Errorf("attach xdp to %s interface %s (%s mode): %w", role, iface, modeName(mode), err)
	}
	if pinPath != "" {
		if err := l.Pin(pinPath); err != nil {
			l.Close()
			return fmt.Errorf("pin xdp link of %s: %w", iface, err)
		}
	}
	n.links[iface] = l
	n.roles[iface] = role
	return nil
}

func modeName(m Mode) string {
	if m == ModeGeneric {
		return "generic"
	}
	return "native"
}

// register tells the programs an interface's role and makes it a redirect
// target, so packets routed out of it can leave straight from XDP.
func (n *NAT) register(ifindex int, role Role) error {
	if err := checkIfindex(ifindex); err != nil {
		return err
	}
	idx, r := uint32(ifindex), uint32(role)
	if err := n.objs.IfaceRoles.Update(&idx, &r, ebpf.UpdateAny); err != nil {
		return fmt.Errorf("write iface_roles: %w", err)
	}
	if err := n.objs.TxPorts.Update(&idx, &idx, ebpf.UpdateAny); err != nil {
		return fmt.Errorf("write tx_ports: %w", err)
	}
	return n.noteAddr(ifindex)
}

// noteAddr writes the router's IPv4 address on the interface ifindex (in
// the calling thread's namespace) into iface_addrs, where the data plane
// finds the source of the ICMP errors it sends out of that interface; 0
// when it has none, and then none is sent.
func (n *NAT) noteAddr(ifindex int) error {
	var addr uint32
	if ifc, err := net.InterfaceByIndex(ifindex); err == nil {
		addrs, err := ifc.Addrs()
		if err != nil {
			return fmt.Errorf("interface %s: read its addresses: %w", ifc.Name, err)
		}
		for _, a := range addrs {
			if ipn, ok := a.(*net.IPNet); ok {
				if ip, ok := netip.AddrFromSlice(ipn.IP); ok && ip.Unmap().Is4() {
					addr = be32(ip.Unmap())
					break
				}
			}
		}
	}
	idx := uint32(ifindex)
	if err := n.objs.IfaceAddrs.Update(&idx, &addr, ebpf.UpdateAny); err != nil {
		return fmt.Errorf("write iface_addrs: %w", err)
	}
	return nil
}

// RefreshAddrs rewrites the router's address of every attached interface
// into iface_addrs, for the agent to call when addresses change.
func (n *NAT) RefreshAddrs() error {
	for name := range n.roles {
		ifc, err := net.InterfaceByName(name)
		if err != nil {
			continue // gone: the route watch reports it
		}
		if err := n.noteAddr(ifc.Index); err != nil {
			return err
		}
	}
	return nil
}

// ifaceIndexLimit bounds the ifindex of every interface the NAT knows: its
// per-interface tables are arrays of this size (enum iface_limits).
const ifaceIndexLimit = int(natIfaceLimitsIFACE_INDEX_LIMIT)

func checkIfindex(ifindex int) error {
	if ifindex <= 0 || ifindex >= ifaceIndexLimit {
		return fmt.Errorf("ifindex %d: blocknat handles interfaces with an ifindex below %d only", ifindex, ifaceIndexLimit)
	}
	return nil
}

// Close releases this process's handles. Pinned links keep the programs
// attached, so translation continues; use Detach to stop it.
func (n *NAT) Close() error {
	var errs []error
	for _, l := range n.links {
		errs = append(errs, l.Close())
	}
	n.links = nil
	errs = append(errs, n.objs.Close())
	return errors.Join(errs...)
}

// Detach removes everything blocknat pinned under pinDir: the links (which
// detaches the programs), the programs and the maps, so the kernel frees
// them once no process holds them.
func Detach(pinDir string) error {
	if err := AttachHostBPFFS(pinDir); err != nil { // under ip netns exec, the pins are the host's
		return err
	}
	if _, err := os.Stat(pinDir); errors.Is(err, os.ErrNotExist) {
		return nil
	}
	linkPins, _ := filepath.Glob(filepath.Join(pinDir, linksDir, "*"))
	var errs []error
	for _, p := range linkPins {
		l, err := link.LoadPinnedLink(p, nil)
		if err != nil {
			// Not a link we can open: removing the pin still drops it.
			errs = append(errs, removeIfExists(p))
			continue
		}
		errs = append(errs, l.Unpin(), l.Close())
	}
	if err := os.RemoveAll(pinDir); err != nil {
		errs = append(errs, fmt.Errorf("remove %s: %w", pinDir, err))
	}
	return errors.Join(errs...)
}

func removeIfExists(p string) error {
	if err := os.Remove(p); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	return nil
}

// Params returns the parameters the data plane was loaded with.
func (n *NAT) Params() Params { return n.params }

func be32(a netip.Addr) uint32 {
	b := a.As4()
	// The program compares raw packet bytes; the map must hold them in
	// the same order, which a native-endian load of the bytes gives.
	return binary.NativeEndian.Uint32(b[:])
}

// AddrFromBE32 turns a network-order address read from a map into netip.
func AddrFromBE32(v uint32) netip.Addr {
	var b [4]byte
	binary.NativeEndian.PutUint32(b[:], v)
	return netip.AddrFrom4(b)
}

// PortFromBE16 turns a network-order port read from a map into host order.
func PortFromBE16(v uint16) uint16 {
	var b [2]byte
	binary.NativeEndian.PutUint16(b[:], v)
	return binary.BigEndian.Uint16(b[:])
}

// Interface is one interface to attach, with its side of the NAT.
type Interface struct {
	Name string
	Role Role
}

// AttachAll attaches every interface, or none: when one fails, the links
// this call created are removed again, so a refused start leaves no
// interface half-translated. Links reused from a previous run are kept,
// since they carried traffic before this call.
func (n *NAT) AttachAll(ifaces []Interface, mode Mode) error {
	var created []string
	for _, ifc := range ifaces {
		_, reused := n.links[ifc.Name]
		pinned := n.pinDir != "" && exists(filepath.Join(n.pinDir, linksDir, ifc.Name))
		if err := n.Attach(ifc.Name, ifc.Role, mode); err != nil {
			for _, name := range created {
				l := n.links[name]
				l.Unpin()
				l.Close()
				delete(n.links, name)
			}
			return err
		}
		if !reused && !pinned {
			created = append(created, ifc.Name)
		}
	}
	return nil
}

func exists(p string) bool {
	_, err := os.Stat(p)
	return err == nil
}

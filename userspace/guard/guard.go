// Package guard keeps subscribers' inside addresses off the internet when
// the XDP data plane is not translating them: before the first start, after
// `blocknatd detach`, after a failed start, and for every packet the XDP
// program passes to the kernel untranslated.
//
// Without it the router is an ordinary Linux router: a subscriber's packet
// that XDP did not redirect is forwarded by the kernel with its 100.64.x
// source, which leaks who is behind the NAT to the upstream and gets no
// answer. The guard is one nftables table of blocknat's own, inet
// blocknat_guard, with one rule on the postrouting hook:
//
//	meta nfproto ipv4 oifname @outside_interfaces ip saddr @inside_prefixes ip daddr != @exempt_destinations counter name "dropped" drop
//
// The exempt destinations are the configuration's nat_exempt: subscribers
// reach them untranslated, so the guard must let exactly those through
// (the set is empty when there are none). The inside.public prefixes are no
// inside prefixes and never match.
//
// postrouting sees forwarded and locally generated packets alike, after
// the kernel's own source NAT (so an operator's masquerade of some other
// traffic is judged by the address that leaves). Frames that xdp_inside
// translated and redirected never enter netfilter, so the guard costs the
// fast path nothing.
//
// The guard owns that one table and nothing else: it never lists, flushes
// or changes the operator's tables or rules. It is kept when the agent stops
// and when the data plane is detached, because those are exactly the states
// in which it is needed; only Remove takes it away.
//
// Every function works in the network namespace of the calling thread.
package guard

import (
	"cmp"
	"errors"
	"fmt"
	"math/bits"
	"net/netip"
	"slices"
	"strings"

	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"github.com/google/nftables/userdata"
	"golang.org/x/sys/unix"
)

// Names of the guard's objects, as `nft list table inet blocknat_guard`
// shows them.
const (
	TableName     = "blocknat_guard"
	ChainName     = "postrouting"
	InsideSet     = "inside_prefixes"
	OutsideSet    = "outside_interfaces"
	ExemptSet     = "exempt_destinations"
	CounterName   = "dropped"
	tableFamily   = nftables.TableFamilyINet
	tableFullName = "inet " + TableName
)

// ruleComment marks the guard's rule. It carries a version, so that an
// agent whose rule differs from the one an older agent installed replaces
// it instead of taking it for its own.
const ruleComment = "blocknat guard v2: drop untranslated subscriber packets but to nat_exempt"

// chainPriority runs the guard after source NAT (srcnat, 100): it judges the
// source address that actually leaves.
var chainPriority = nftables.ChainPriorityRef(*nftables.ChainPriorityNATSource + 10)

// ifNameSize is IFNAMSIZ: an ifname set key is the name, NUL-padded.
const ifNameSize = 16

// Status is what the kernel holds of the guard.
type Status struct {
	// Installed is true when the table, its chain on the postrouting hook,
	// the rule, both sets and the counter are all in place.
	Installed bool `json:"installed"`
	// Problem says what is missing or different when Installed is false
	// and the table exists; empty otherwise.
	Problem string `json:"problem,omitempty"`
	// Prefixes are the inside prefixes the rule drops, as the kernel's
	// interval set holds them (adjacent prefixes read back merged).
	Prefixes []netip.Prefix `json:"prefixes,omitempty"`
	// Interfaces are the outside interfaces the rule watches, sorted.
	Interfaces []string `json:"interfaces,omitempty"`
	// Exempt are the destinations the rule lets subscribers reach
	// untranslated (nat_exempt), as the kernel holds them.
	Exempt []netip.Prefix `json:"exempt,omitempty"`
	// DroppedPackets and DroppedBytes are the rule's named counter.
	DroppedPackets uint64 `json:"dropped_packets"`
	DroppedBytes   uint64 `json:"dropped_bytes"`
}

// Change says what Install did.
type Change int

const (
	// Unchanged: the guard was already installed for these prefixes and
	// interfaces; nothing was written.
	Unchanged Change = iota
	// Created: there was no guard table.
	Created
	// Replaced: a guard table for other prefixes or interfaces (or a
	// damaged one) was replaced in the same transaction; the counter
	// carried over.
	Replaced
)

func (c Change) String() string {
	switch c {
	case Unchanged:
		return "unchanged"
	case Created:
		return "created"
	case Replaced:
		return "replaced"
	}
	return fmt.Sprintf("change(%d)", int(c))
}

// spec is what the guard should hold, normalised so that two spellings of
// the same configuration compare equal.
type spec struct {
	ranges     []ipRange // merged, sorted
	interfaces []string  // sorted, unique
	exempt     []ipRange // merged, sorted; may be empty
}

// ipRange is [lo, hi) over IPv4 addresses as integers; hi may be 1<<32.
type ipRange struct{ lo, hi uint64 }

func newSpec(inside []netip.Prefix, outside []string, exempt []netip.Prefix) (spec, error) {
	if len(inside) == 0 {
		return spec{}, errors.New("no inside prefix to guard")
	}
	if len(outside) == 0 {
		return spec{}, errors.New("no outside interface to guard")
	}
	var (
		s   spec
		err error
	)
	if s.ranges, err = prefixRanges("inside", inside); err != nil {
		return spec{}, err
	}
	if s.exempt, err = prefixRanges("exempt", exempt); err != nil {
		return spec{}, err
	}
	for _, name := range outside {
		if name == "" || len(name) >= ifNameSize || strings.ContainsRune(name, 0) {
			return spec{}, fmt.Errorf("outside interface %q: not a valid interface name", name)
		}
		s.interfaces = append(s.interfaces, name)
	}
	slices.Sort(s.interfaces)
	s.interfaces = slices.Compact(s.interfaces)
	return s, nil
}

// prefixRanges turns IPv4 prefixes into merged ranges.
func prefixRanges(what string, prefixes []netip.Prefix) ([]ipRange, error) {
	var out []ipRange
	for _, p := range prefixes {
		if !p.IsValid() || !p.Addr().Is4() {
			return nil, fmt.Errorf("%s prefix %s: the guard covers IPv4 prefixes only", what, p)
		}
		p = p.Masked()
		lo := uint64(addrUint(p.Addr()))
		out = append(out, ipRange{lo, lo + 1<<(32-p.Bits())})
	}
	return mergeRanges(out), nil
}

func mergeRanges(rs []ipRange) []ipRange {
	slices.SortFunc(rs, func(a, b ipRange) int { return cmp.Compare(a.lo, b.lo) })
	var out []ipRange
	for _, r := range rs {
		// The kernel's interval set refuses overlapping elements, and
		// adjacent ones would read back as one anyway.
		if n := len(out); n > 0 && r.lo <= out[n-1].hi {
			out[n-1].hi = max(out[n-1].hi, r.hi)
			continue
		}
		out = append(out, r)
	}
	return out
}

// Install puts the guard in place for inside prefixes leaving by outside
// interfaces to anywhere but the exempt destinations. A guard that already holds exactly these is left alone, so a
// restart with the same configuration changes nothing, not even the
// counter. Otherwise the table is created, or deleted and re-created, in one
// nftables transaction: no packet ever sees a moment without a guard.
func Install(inside []netip.Prefix, outside []string, exempt []netip.Prefix) (Change, error) {
	want, err := newSpec(inside, outside, exempt)
	if err != nil {
		return Unchanged, fmt.Errorf("install nftables guard: %w", err)
	}
	c, err := nftables.New()
	if err != nil {
		return Unchanged, explain("install nftables guard: open netlink", err)
	}
	cur, got, exists, err := read(c)
	if err != nil {
		return Unchanged, explain("install nftables guard: read "+tableFullName, err)
	}
	if cur.Installed && slices.Equal(got.ranges, want.ranges) && slices.Equal(cur.Interfaces, want.interfaces) &&
		slices.Equal(got.exempt, want.exempt) {
		return Unchanged, nil
	}

	table := &nftables.Table{Name: TableName, Family: tableFamily}
	if exists {
		// Ensure-then-delete makes the delete safe to batch, and the
		// whole replacement one transaction.
		c.AddTable(table)
		c.DelTable(table)
	}
	c.AddTable(table)
	c.AddObj(&nftables.NamedObj{Table: table, Name: CounterName, Type: nftables.ObjTypeCounter,
		// Carried over, so a configuration change does not hide what the
		// guard already stopped.
		Obj: &expr.Counter{Packets: cur.DroppedPackets, Bytes: cur.DroppedBytes}})
	prefixes := &nftables.Set{Table: table, Name: InsideSet, KeyType: nftables.TypeIPAddr, Interval: true}
	if err := c.AddSet(prefixes, rangeElements(want.ranges)); err != nil {
		return Unchanged, fmt.Errorf("install nftables guard: set %s: %w", InsideSet, err)
	}
	ifaces := &nftables.Set{Table: table, Name: OutsideSet, KeyType: nftables.TypeIFName, KeyByteOrder: binaryutil.NativeEndian}
	if err := c.AddSet(ifaces, nameElements(want.interfaces)); err != nil {
		return Unchanged, fmt.Errorf("install nftables guard: set %s: %w", OutsideSet, err)
	}
	exemptSet := &nftables.Set{Table: table, Name: ExemptSet, KeyType: nftables.TypeIPAddr, Interval: true}
	if err := c.AddSet(exemptSet, rangeElements(want.exempt)); err != nil {
		return Unchanged, fmt.Errorf("install nftables guard: set %s: %w", ExemptSet, err)
	}
	accept := nftables.ChainPolicyAccept
	chain := c.AddChain(&nftables.Chain{Name: ChainName, Table: table, Type: nftables.ChainTypeFilter,
		Hooknum: nftables.ChainHookPostrouting, Priority: chainPriority, Policy: &accept})
	c.AddRule(&nftables.Rule{Table: table, Chain: chain, Exprs: ruleExprs(prefixes, ifaces, exemptSet),
		UserData: userdata.AppendString(nil, userdata.TypeComment, ruleComment)})
	if err := c.Flush(); err != nil {
		return Unchanged, explain("install nftables guard: write "+tableFullName, err)
	}
	if exists {
		return Replaced, nil
	}
	return Created, nil
}

// ruleExprs is `meta nfproto ipv4 oifname @outside ip saddr @inside ip
// daddr != @exempt counter name "dropped" drop`. The cheap interface match
// comes first: most packets through a router leave by an inside interface
// or are IPv6.
func ruleExprs(prefixes, ifaces, exempt *nftables.Set) []expr.Any {
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyNFPROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{unix.NFPROTO_IPV4}},
		&expr.Meta{Key: expr.MetaKeyOIFNAME, Register: 1},
		&expr.Lookup{SourceRegister: 1, SetName: ifaces.Name, SetID: ifaces.ID},
		// The IPv4 source address: 4 bytes at offset 12 of the header.
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: 12, Len: 4},
		&expr.Lookup{SourceRegister: 1, SetName: prefixes.Name, SetID: prefixes.ID},
		// The IPv4 destination address: 4 bytes at offset 16.
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: 16, Len: 4},
		&expr.Lookup{SourceRegister: 1, SetName: exempt.Name, SetID: exempt.ID, Invert: true},
		&expr.Objref{Type: int(nftables.ObjTypeCounter), Name: CounterName},
		&expr.Verdict{Kind: expr.VerdictDrop},
	}
}

// rangeElements writes each range as the kernel's interval set wants it: a
// start element and an end element one past the last address. A range
// that runs to the top of the address space has no end element.
func rangeElements(rs []ipRange) []nftables.SetElement {
	var out []nftables.SetElement
	for _, r := range rs {
		out = append(out, nftables.SetElement{Key: uintAddr(uint32(r.lo))})
		if r.hi < 1<<32 {
			out = append(out, nftables.SetElement{Key: uintAddr(uint32(r.hi)), IntervalEnd: true})
		}
	}
	return out
}

func nameElements(names []string) []nftables.SetElement {
	out := make([]nftables.SetElement, len(names))
	for i, n := range names {
		key := make([]byte, ifNameSize)
		copy(key, n)
		out[i] = nftables.SetElement{Key: key}
	}
	return out
}

// Remove deletes the guard's table, if there is one. Nothing else is
// touched.
func Remove() error {
	c, err := nftables.New()
	if err != nil {
		return explain("remove nftables guard: open netlink", err)
	}
	table := &nftables.Table{Name: TableName, Family: tableFamily}
	// Ensure-then-delete: a missing table is not an error.
	c.AddTable(table)
	c.DelTable(table)
	if err := c.Flush(); err != nil {
		return explain("remove nftables guard: delete "+tableFullName, err)
	}
	return nil
}

// State reads the guard back from the kernel. A missing table is not an
// error: it is Status{Installed: false}.
func State() (Status, error) {
	c, err := nftables.New()
	if err != nil {
		return Status{}, explain("read nftables guard: open netlink", err)
	}
	st, _, _, err := read(c)
	if err != nil {
		return Status{}, explain("read nftables guard "+tableFullName, err)
	}
	return st, nil
}

// read reports the guard's state, the ranges of its sets and whether its
// table exists at all. Below the table it reads by dumps scoped to the guard's
// table (or, for chains, filtered to it), so that a missing piece is an
// empty answer rather than an error to tell apart from a failure.
func read(c *nftables.Conn) (Status, spec, bool, error) {
	var (
		st  Status
		got spec
	)
	table, err := c.ListTableOfFamily(TableName, tableFamily)
	if errors.Is(err, unix.ENOENT) {
		return st, got, false, nil
	}
	if err != nil {
		return st, got, false, fmt.Errorf("table: %w", err)
	}
	missing := func(what string) (Status, spec, bool, error) {
		st.Problem = what
		return st, spec{}, true, nil
	}

	// The counter first: a damaged table still tells what it stopped, and
	// a replacement carries the count over.
	objs, err := c.GetNamedObjects(table)
	if err != nil {
		return st, got, true, fmt.Errorf("objects: %w", err)
	}
	counter := false
	for _, o := range objs {
		named, ok := o.(*nftables.NamedObj)
		if !ok || named.Name != CounterName || named.Type != nftables.ObjTypeCounter {
			continue
		}
		if ctr, ok := named.Obj.(*expr.Counter); ok {
			st.DroppedPackets, st.DroppedBytes, counter = ctr.Packets, ctr.Bytes, true
		}
	}
	if !counter {
		return missing("no counter " + CounterName)
	}

	chains, err := c.ListChainsOfTableFamily(tableFamily)
	if err != nil {
		return st, got, true, fmt.Errorf("chains: %w", err)
	}
	var chain *nftables.Chain
	for _, ch := range chains {
		if ch.Table != nil && ch.Table.Name == TableName && ch.Name == ChainName {
			chain = ch
		}
	}
	switch {
	case chain == nil:
		return missing("no chain " + ChainName)
	case chain.Hooknum == nil || *chain.Hooknum != *nftables.ChainHookPostrouting ||
		chain.Priority == nil || *chain.Priority != *chainPriority || chain.Type != nftables.ChainTypeFilter:
		return missing("chain " + ChainName + " is not a filter chain on the postrouting hook at the guard's priority")
	}
	rules, err := c.GetRules(table, chain)
	if err != nil {
		return st, got, true, fmt.Errorf("rules of chain %s: %w", ChainName, err)
	}
	if len(rules) != 1 || !isGuardRule(rules[0]) {
		return missing(fmt.Sprintf("chain %s holds %d rules, not the guard's one", ChainName, len(rules)))
	}

	sets, err := c.GetSets(table)
	if err != nil {
		return st, got, true, fmt.Errorf("sets: %w", err)
	}
	byName := map[string]*nftables.Set{}
	for _, s := range sets {
		byName[s.Name] = s
	}
	inside, outside, exempt := byName[InsideSet], byName[OutsideSet], byName[ExemptSet]
	switch {
	case inside == nil:
		return missing("no set " + InsideSet)
	case outside == nil:
		return missing("no set " + OutsideSet)
	case exempt == nil:
		return missing("no set " + ExemptSet)
	}
	if got.ranges, err = readRanges(c, inside); err != nil {
		return st, got, true, err
	}
	st.Prefixes = rangesPrefixes(got.ranges)
	if got.exempt, err = readRanges(c, exempt); err != nil {
		return st, got, true, err
	}
	st.Exempt = rangesPrefixes(got.exempt)
	if st.Interfaces, err = readNames(c, outside); err != nil {
		return st, got, true, err
	}
	if len(got.ranges) == 0 || len(st.Interfaces) == 0 {
		return missing("a set is empty")
	}
	got.interfaces = st.Interfaces
	st.Installed = true
	return st, got, true, nil
}

func isGuardRule(r *nftables.Rule) bool {
	s, ok := userdata.GetString(r.UserData, userdata.TypeComment)
	return ok && s == ruleComment
}

func readRanges(c *nftables.Conn, set *nftables.Set) ([]ipRange, error) {
	elems, err := c.GetSetElements(set)
	if err != nil {
		return nil, fmt.Errorf("elements of set %s: %w", set.Name, err)
	}
	// The kernel lists interval elements in its own order; sorted by
	// address, each start is followed by its end.
	slices.SortFunc(elems, func(a, b nftables.SetElement) int {
		return cmp.Compare(addrBytesUint(a.Key), addrBytesUint(b.Key))
	})
	var out []ipRange
	open := false
	for _, e := range elems {
		if len(e.Key) != 4 {
			return nil, fmt.Errorf("set %s: element of %d bytes, not an IPv4 address", set.Name, len(e.Key))
		}
		v := uint64(addrBytesUint(e.Key))
		switch {
		case e.IntervalEnd && open:
			out[len(out)-1].hi, open = v, false
		case e.IntervalEnd:
			// A leading end element (nft writes one before a range that
			// does not start at 0.0.0.0) opens nothing.
		case open:
			out[len(out)-1].hi = v
			out = append(out, ipRange{lo: v})
		default:
			out, open = append(out, ipRange{lo: v}), true
		}
	}
	if open {
		out[len(out)-1].hi = 1 << 32
	}
	return mergeRanges(out), nil
}

func readNames(c *nftables.Conn, set *nftables.Set) ([]string, error) {
	elems, err := c.GetSetElements(set)
	if err != nil {
		return nil, fmt.Errorf("elements of set %s: %w", OutsideSet, err)
	}
	var out []string
	for _, e := range elems {
		out = append(out, strings.TrimRight(string(e.Key), "\x00"))
	}
	slices.Sort(out)
	return out, nil
}

// rangesPrefixes writes ranges as the fewest prefixes that cover them.
func rangesPrefixes(rs []ipRange) []netip.Prefix {
	var out []netip.Prefix
	for _, r := range rs {
		for lo := r.lo; lo < r.hi; {
			// The largest aligned block at lo that fits in the range.
			size := uint64(1) << 32
			if lo != 0 {
				size = uint64(1) << bits.TrailingZeros64(lo)
			}
			for size > r.hi-lo {
				size >>= 1
			}
			out = append(out, netip.PrefixFrom(netip.AddrFrom4([4]byte(uintAddr(uint32(lo)))), 32-bits.TrailingZeros64(size)))
			lo += size
		}
	}
	return out
}

func addrUint(a netip.Addr) uint32 {
	b := a.As4()
	return addrBytesUint(b[:])
}

func addrBytesUint(b []byte) uint32 {
	if len(b) != 4 {
		return 0
	}
	return uint32(b[0])<<24 | uint32(b[1])<<16 | uint32(b[2])<<8 | uint32(b[3])
}

func uintAddr(v uint32) []byte { return []byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)} }

// explain wraps err with the step that failed and, for the errors a kernel
// without nf_tables or a caller without CAP_NET_ADMIN gives, the fix.
func explain(step string, err error) error {
	switch {
	case errors.Is(err, unix.EPERM), errors.Is(err, unix.EACCES):
		return fmt.Errorf("%s: %w (nftables needs CAP_NET_ADMIN)", step, err)
	case errors.Is(err, unix.EPROTONOSUPPORT), errors.Is(err, unix.EAFNOSUPPORT), errors.Is(err, unix.EOPNOTSUPP),
		errors.Is(err, unix.ENOENT):
		return fmt.Errorf("%s: %w (is nf_tables available? the kernel needs CONFIG_NF_TABLES and CONFIG_NF_TABLES_INET, or `modprobe nf_tables`)", step, err)
	}
	return fmt.Errorf("%s: %w", step, err)
}

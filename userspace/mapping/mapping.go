// Package mapping computes the deterministic port-block mapping of RFC 7422,
// with the same formula as VPP det44: subscribers are numbered in
// configuration order across the inside prefixes, each public address is
// shared by C = ceil(N/M) subscribers, and each subscriber owns one block of
// B consecutive ports on one public address.
//
// The mapping is a pure function of its parameters, so an answer about a
// past time needs only the parameters that were in force then; Hash
// identifies those parameters in epoch records.
package mapping

import (
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"sort"
)

// MaxSubscribers bounds N. It keeps subscriber indexes well inside uint32
// arithmetic and the kernel's subscriber table at a size that can be
// allocated.
const MaxSubscribers = 1 << 24

// MaxPool bounds M, because the pool is expanded into one entry per address.
const MaxPool = 1 << 24

// Sentinel errors of the lookups; the returned errors wrap them with details.
var (
	// ErrNotSubscriber: the inside address is in no inside prefix, or the
	// subscriber index is not below N.
	ErrNotSubscriber = errors.New("not a subscriber")
	// ErrNotInPool: the public address is not one of the pool addresses.
	ErrNotInPool = errors.New("address not in the pool")
	// ErrPortNotInBlock: the port is below the range or among the ports past
	// the last block (C*B may not fill the range), so no subscriber owns it.
	ErrPortNotInBlock = errors.New("port not in any block")
	// ErrUnusedBlock: the block exists in the layout but its subscriber
	// index would be N or more, so nobody is assigned to it.
	ErrUnusedBlock = errors.New("block not assigned to any subscriber")
)

// Mapping is one configuration of the deterministic mapping. Build it with
// New; the exported fields are read-only after that, and a Mapping is safe
// for concurrent use.
type Mapping struct {
	Prefixes    []netip.Prefix // inside prefixes, in configuration order (masked)
	Pool        []netip.Addr   // expanded public addresses, in order
	PortLo      uint16
	PortHi      uint16
	BlockSize   uint16 // B
	Ratio       uint32 // C, subscribers per public address
	Subscribers uint32 // N

	// firstIndex[k] is the subscriber index of Prefixes[k]'s first address;
	// it lets Block find an index's prefix with a binary search.
	firstIndex []uint32
	poolIndex  map[netip.Addr]uint32
}

// Block is the port block of one subscriber.
type Block struct {
	Subscriber uint32     `json:"subscriber"`
	Inside     netip.Addr `json:"inside"`
	Public     netip.Addr `json:"public"`
	PortLo     uint16     `json:"port_lo"`
	PortHi     uint16     `json:"port_hi"`
}

// New builds and validates a mapping. blockSize 0 derives B from the range
// and the sharing ratio. Errors name the configuration field at fault
// (inside.prefixes[i], outside.pool[i], ports.range, ports.block_size).
func New(prefixes []netip.Prefix, pool []netip.Prefix, portLo, portHi uint16, blockSize uint16) (*Mapping, error) {
	m := &Mapping{PortLo: portLo, PortHi: portHi}

	if len(prefixes) == 0 {
		return nil, errors.New("inside.prefixes: at least one prefix is required")
	}
	var total uint64
	for k, p := range prefixes {
		if !p.IsValid() || !p.Addr().Is4() {
			return nil, fmt.Errorf("inside.prefixes[%d]: %s is not an IPv4 prefix", k, p)
		}
		p = p.Masked()
		for prev, q := range m.Prefixes {
			if p.Overlaps(q) {
				return nil, fmt.Errorf("inside.prefixes[%d]: %s overlaps inside.prefixes[%d] (%s)", k, p, prev, q)
			}
		}
		m.firstIndex = append(m.firstIndex, uint32(total))
		m.Prefixes = append(m.Prefixes, p)
		total += prefixSize(p)
		if total > MaxSubscribers {
			return nil, fmt.Errorf("inside.prefixes[%d]: the inside prefixes hold more than %d subscribers", k, MaxSubscribers)
		}
	}
	m.Subscribers = uint32(total)

	if len(pool) == 0 {
		return nil, errors.New("outside.pool: at least one address is required")
	}
	var poolSize uint64
	for k, p := range pool {
		if !p.IsValid() || !p.Addr().Is4() {
			return nil, fmt.Errorf("outside.pool[%d]: %s is not an IPv4 prefix or address", k, p)
		}
		p = p.Masked()
		// Overlapping pool entries would list an address twice and give it
		// two indexes, so Reverse would be ambiguous.
		for prev, q := range pool[:k] {
			if p.Overlaps(q.Masked()) {
				return nil, fmt.Errorf("outside.pool[%d]: %s repeats addresses of outside.pool[%d] (%s)", k, p, prev, q.Masked())
			}
		}
		for inside, q := range m.Prefixes {
			if p.Overlaps(q) {
				return nil, fmt.Errorf("outside.pool[%d]: %s overlaps inside.prefixes[%d] (%s)", k, p, inside, q)
			}
		}
		poolSize += prefixSize(p)
		if poolSize > MaxPool {
			return nil, fmt.Errorf("outside.pool[%d]: the pool holds more than %d addresses", k, MaxPool)
		}
	}
	m.Pool = make([]netip.Addr, 0, poolSize)
	m.poolIndex = make(map[netip.Addr]uint32, poolSize)
	for _, p := range pool {
		p = p.Masked()
		base := addrToUint(p.Addr())
		for off := range prefixSize(p) {
			a := uintToAddr(base + uint32(off))
			m.poolIndex[a] = uint32(len(m.Pool))
			m.Pool = append(m.Pool, a)
		}
	}

	if portLo < 1 {
		return nil, fmt.Errorf("ports.range: %d-%d starts at port 0, which cannot be used", portLo, portHi)
	}
	if portLo > portHi {
		return nil, fmt.Errorf("ports.range: %d-%d starts above its end", portLo, portHi)
	}

	m.Ratio = max(1, uint32((total+poolSize-1)/poolSize))
	rangeSize := uint32(portHi) - uint32(portLo) + 1
	if blockSize > 0 {
		if uint64(m.Ratio)*uint64(blockSize) > uint64(rangeSize) {
			return nil, fmt.Errorf("ports.block_size: %d subscribers per public address × %d ports = %d ports, more than the %d ports of ports.range %d-%d",
				m.Ratio, blockSize, uint64(m.Ratio)*uint64(blockSize), rangeSize, portLo, portHi)
		}
		m.BlockSize = blockSize
	} else {
		derived := rangeSize / m.Ratio
		if derived < 1 {
			return nil, fmt.Errorf("ports.range: %d-%d holds %d ports, too few for %d subscribers per public address (widen the range or add outside.pool addresses)",
				portLo, portHi, rangeSize, m.Ratio)
		}
		m.BlockSize = uint16(derived)
	}
	return m, nil
}

// Block returns the block of subscriber index i.
func (m *Mapping) Block(subscriber uint32) (Block, error) {
	if subscriber >= m.Subscribers {
		return Block{}, fmt.Errorf("%w: index %d, the mapping has %d subscribers", ErrNotSubscriber, subscriber, m.Subscribers)
	}
	// The last prefix whose first index is <= subscriber holds it.
	k := sort.Search(len(m.firstIndex), func(k int) bool { return m.firstIndex[k] > subscriber }) - 1
	inside := uintToAddr(addrToUint(m.Prefixes[k].Addr()) + (subscriber - m.firstIndex[k]))

	slot := subscriber % m.Ratio
	lo := uint32(m.PortLo) + slot*uint32(m.BlockSize)
	return Block{
		Subscriber: subscriber,
		Inside:     inside,
		Public:     m.Pool[subscriber/m.Ratio],
		PortLo:     uint16(lo),
		PortHi:     uint16(lo + uint32(m.BlockSize) - 1),
	}, nil
}

// Forward returns the block of the subscriber with the inside address.
func (m *Mapping) Forward(inside netip.Addr) (Block, error) {
	i, ok := m.SubscriberOf(inside)
	if !ok {
		return Block{}, fmt.Errorf("%w: %s is in no inside prefix", ErrNotSubscriber, inside)
	}
	return m.Block(i)
}

// Reverse returns the block, and so the subscriber, that owns the public
// address and port. The errors wrap ErrNotInPool, ErrPortNotInBlock or
// ErrUnusedBlock.
func (m *Mapping) Reverse(public netip.Addr, port uint16) (Block, error) {
	j, ok := m.poolIndex[public.Unmap()]
	if !ok {
		return Block{}, fmt.Errorf("%w: %s", ErrNotInPool, public)
	}
	usedEnd := uint32(m.PortLo) + m.Ratio*uint32(m.BlockSize) // first port past the last block
	if port < m.PortLo || uint32(port) >= usedEnd {
		return Block{}, fmt.Errorf("%w: port %d is outside the blocks %d-%d", ErrPortNotInBlock, port, m.PortLo, usedEnd-1)
	}
	i := uint64(j)*uint64(m.Ratio) + uint64(uint32(port-m.PortLo)/uint32(m.BlockSize))
	if i >= uint64(m.Subscribers) {
		return Block{}, fmt.Errorf("%w: %s port %d would be subscriber %d, the mapping has %d", ErrUnusedBlock, public, port, i, m.Subscribers)
	}
	return m.Block(uint32(i))
}

// SubscriberOf returns the subscriber index of an inside address.
func (m *Mapping) SubscriberOf(inside netip.Addr) (uint32, bool) {
	inside = inside.Unmap()
	if !inside.Is4() {
		return 0, false
	}
	for k, p := range m.Prefixes {
		if p.Contains(inside) {
			return m.firstIndex[k] + (addrToUint(inside) - addrToUint(p.Addr())), true
		}
	}
	return 0, false
}

// hashDomain separates this encoding from any other SHA-256 use and gives
// it a version, so a future encoding cannot collide with stored epochs.
const hashDomain = "blocknat mapping v1\x00"

// Hash is a SHA-256 over a canonical encoding of every parameter that
// changes the mapping (prefixes in order, pool in order, lo, hi, B, C); it
// identifies an epoch's configuration.
//
// Encoding, all integers big-endian: hashDomain; uint32 prefix count, then
// per prefix 4 address bytes and 1 length byte; uint32 pool count, then 4
// bytes per pool address; uint16 lo, uint16 hi, uint16 B, uint32 C. The
// pool is hashed expanded, so the same addresses written as one prefix or
// as single addresses give the same hash, as they give the same mapping.
func (m *Mapping) Hash() [32]byte {
	h := sha256.New()
	h.Write([]byte(hashDomain))
	var buf []byte
	buf = binary.BigEndian.AppendUint32(buf, uint32(len(m.Prefixes)))
	for _, p := range m.Prefixes {
		a := p.Addr().As4()
		buf = append(buf, a[:]...)
		buf = append(buf, byte(p.Bits()))
	}
	buf = binary.BigEndian.AppendUint32(buf, uint32(len(m.Pool)))
	for _, a := range m.Pool {
		b := a.As4()
		buf = append(buf, b[:]...)
	}
	buf = binary.BigEndian.AppendUint16(buf, m.PortLo)
	buf = binary.BigEndian.AppendUint16(buf, m.PortHi)
	buf = binary.BigEndian.AppendUint16(buf, m.BlockSize)
	buf = binary.BigEndian.AppendUint32(buf, m.Ratio)
	h.Write(buf)
	var sum [32]byte
	h.Sum(sum[:0])
	return sum
}

func prefixSize(p netip.Prefix) uint64 {
	return 1 << (32 - p.Bits())
}

func addrToUint(a netip.Addr) uint32 {
	b := a.As4()
	return binary.BigEndian.Uint32(b[:])
}

func uintToAddr(v uint32) netip.Addr {
	var b [4]byte
	binary.BigEndian.PutUint32(b[:], v)
	return netip.AddrFrom4(b)
}

// FlowProtocols is how many protocols share each flow table of the data
// plane: TCP and UDP keyed by port, ICMP echo by identifier, all three
// mapped onto the ports of the subscriber's one block.
const FlowProtocols = 3

// FlowsNeeded is the flow-table size at which no subscriber can take
// another's capacity: every subscriber holds a mapping on every port of its
// block in each protocol, and the reverse table can hold no more, since its
// keys are those ports. Tables this size never fill. It lives here, with
// the mapping it is computed from, so that the configuration can check
// max_flows without the loader.
func (m *Mapping) FlowsNeeded() uint64 {
	return uint64(m.Subscribers) * uint64(m.BlockSize) * FlowProtocols
}

// FlowsExplained spells FlowsNeeded out for an error message.
func (m *Mapping) FlowsExplained() string {
	return fmt.Sprintf("%d subscribers × %d ports × %d protocols = %d", m.Subscribers, m.BlockSize, FlowProtocols, m.FlowsNeeded())
}

package mapping

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"
)

// MaxOverflowBlocks bounds the overflow pool's blocks: the kernel holds
// one entry for each.
const MaxOverflowBlocks = 1 << 22

// MaxOverflowPerSubscriber is the most overflow blocks one subscriber may
// hold at once (OVERFLOW_SLOTS in bpf/types.h; a test keeps them equal).
const MaxOverflowPerSubscriber = 4

// Overflow is the layout of the overflow pool (ports.overflow): extra
// blocks lent to subscribers whose own block has no free port, RFC 7422's
// "dynamic" part. Every overflow address's range [PortLo, PortHi] is cut
// into blocks of BlockSize ports; block id i is the (i mod PerAddr)-th
// block of address Pool[i / PerAddr]. Which subscriber held a block when
// is only in the records: unlike a deterministic block, an overflow block
// has no owner by formula. Build it with NewOverflow.
type Overflow struct {
	Pool      []netip.Addr
	PortLo    uint16
	PortHi    uint16
	BlockSize uint16
	PerAddr   uint32 // blocks on each address
	MaxBlocks uint32 // held by one subscriber at most

	index map[netip.Addr]uint32 // Pool's positions
}

// NewOverflow checks and builds the overflow layout over the addresses of
// pool, in the port range [portLo, portHi]. Errors name the field at fault.
func NewOverflow(pool []netip.Prefix, portLo, portHi, blockSize uint16, maxBlocks uint32) (*Overflow, error) {
	o := &Overflow{PortLo: portLo, PortHi: portHi, BlockSize: blockSize, MaxBlocks: maxBlocks, index: map[netip.Addr]uint32{}}
	if len(pool) == 0 {
		return nil, errors.New("ports.overflow.pool: at least one address is required")
	}
	var total uint64
	for i, p := range pool {
		if !p.Addr().Is4() {
			return nil, fmt.Errorf("ports.overflow.pool[%d]: %s is not IPv4", i, p)
		}
		total += prefixSize(p)
		if total > MaxPool {
			return nil, fmt.Errorf("ports.overflow.pool: more than %d addresses", MaxPool)
		}
		first := addrToUint(p.Masked().Addr())
		for k := uint64(0); k < prefixSize(p); k++ {
			a := uintToAddr(first + uint32(k))
			if _, dup := o.index[a]; dup {
				return nil, fmt.Errorf("ports.overflow.pool[%d]: %s is listed twice", i, a)
			}
			o.index[a] = uint32(len(o.Pool))
			o.Pool = append(o.Pool, a)
		}
	}
	if portLo == 0 || portLo > portHi {
		return nil, fmt.Errorf("ports.range: %d-%d is not a range of ports", portLo, portHi)
	}
	span := uint32(portHi) - uint32(portLo) + 1
	switch {
	case blockSize == 0:
		return nil, errors.New("ports.overflow.block_size: 0 ports per block; give at least 1")
	case uint32(blockSize) > span:
		return nil, fmt.Errorf("ports.overflow.block_size: %d ports per block, more than the %d of ports.range", blockSize, span)
	case maxBlocks == 0 || maxBlocks > MaxOverflowPerSubscriber:
		return nil, fmt.Errorf("ports.overflow.max_blocks: %d, want 1 to %d", maxBlocks, MaxOverflowPerSubscriber)
	}
	o.PerAddr = span / uint32(blockSize)
	if n := uint64(len(o.Pool)) * uint64(o.PerAddr); n > MaxOverflowBlocks {
		return nil, fmt.Errorf("ports.overflow: %d addresses × %d blocks = %d blocks, more than %d", len(o.Pool), o.PerAddr, n, MaxOverflowBlocks)
	}
	return o, nil
}

// SameBlocks says whether o and b cut the same blocks on the same
// addresses (MaxBlocks may differ); two nil layouts are the same.
func (o *Overflow) SameBlocks(b *Overflow) bool {
	if o == nil || b == nil {
		return o == b
	}
	return slices.Equal(o.Pool, b.Pool) && o.PortLo == b.PortLo && o.PortHi == b.PortHi && o.BlockSize == b.BlockSize
}

// Count is the number of overflow blocks.
func (o *Overflow) Count() uint32 { return uint32(len(o.Pool)) * o.PerAddr }

// Block is overflow block id's address and ports.
func (o *Overflow) Block(id uint32) (public netip.Addr, lo, hi uint16, err error) {
	if id >= o.Count() {
		return netip.Addr{}, 0, 0, fmt.Errorf("overflow block %d: there are %d", id, o.Count())
	}
	lo = o.PortLo + uint16(id%o.PerAddr)*o.BlockSize
	return o.Pool[id/o.PerAddr], lo, lo + o.BlockSize - 1, nil
}

// ID is the overflow block holding public:port; false when none does.
func (o *Overflow) ID(public netip.Addr, port uint16) (uint32, bool) {
	if o == nil || port < o.PortLo {
		return 0, false
	}
	k := uint32(port-o.PortLo) / uint32(o.BlockSize)
	if k >= o.PerAddr {
		return 0, false
	}
	i, ok := o.index[public]
	if !ok {
		return 0, false
	}
	return i*o.PerAddr + k, true
}

package metrics

import (
	"errors"
	"fmt"
	"time"

	"github.com/blocknat/blocknat/loader"
	"github.com/blocknat/blocknat/userspace/mapping"
)

// BlockUsage is the kernel tables' occupancy at one moment.
type BlockUsage struct {
	ActiveBlocks int
	Flows        int
	BlockSize    uint16
	// Counts[i] is how many active blocks have a utilisation of at most
	// UtilisationBuckets[i] (cumulative, as Prometheus wants it).
	Counts []uint64
	// Sum is the sum of every active block's utilisation.
	Sum float64
	// Full is how many active blocks have every port in use or refused a
	// new mapping within FullWindow. A new mapping probes at most 64
	// random ports of its block, so a block refuses flows from about 99 %
	// use on (a 504-port block: 500 ports and more), well before its last
	// port is taken.
	Full int
}

// OverflowUsage is the overflow pool's occupancy at one moment.
type OverflowUsage struct {
	InUse, Free int
	MaxBlocks   uint32 // a subscriber may hold
}

// ScanOverflow counts the overflow blocks of layout o held and free.
func ScanOverflow(t OverflowTables, o *mapping.Overflow) (OverflowUsage, error) {
	held, err := t.OverflowBlocks()
	if err != nil {
		return OverflowUsage{}, fmt.Errorf("scan overflow blocks: %w", err)
	}
	return OverflowUsage{InUse: len(held), Free: int(o.Count()) - len(held), MaxBlocks: o.MaxBlocks}, nil
}

// OverflowTables lists the held overflow blocks (*loader.NAT).
type OverflowTables interface {
	OverflowBlocks() ([]loader.OverflowBlock, error)
}

// FullWindow is how recently a block must have refused a new mapping to
// count as full.
const FullWindow = time.Minute

func (b *BlockUsage) bucketMap() map[float64]uint64 {
	m := make(map[float64]uint64, len(UtilisationBuckets))
	for i, bound := range UtilisationBuckets {
		if i < len(b.Counts) {
			m[bound] = b.Counts[i]
		}
	}
	return m
}

// Tables are the kernel tables a scan reads (*loader.NAT).
type Tables interface {
	FlowsPerSubscriber() (map[uint32]int, error)
	ActiveBlocks() ([]loader.ActiveBlock, error)
}

// ScanBlocks counts the live mappings of every active block in the
// kernel's tables and sorts the blocks into the utilisation buckets. Each
// forward mapping holds one port of its subscriber's block; now is the
// monotonic clock the data plane's times are on. Only counts leave this
// function.
func ScanBlocks(t Tables, blockSize uint16, now uint64) (BlockUsage, error) {
	u := BlockUsage{BlockSize: blockSize, Counts: make([]uint64, len(UtilisationBuckets))}
	if blockSize == 0 {
		return u, errors.New("scan blocks: block size 0")
	}
	perSub, err := t.FlowsPerSubscriber()
	if err != nil {
		return u, fmt.Errorf("scan blocks: %w", err)
	}
	blocks, err := t.ActiveBlocks()
	if err != nil {
		return u, fmt.Errorf("scan blocks: %w", err)
	}
	for _, b := range blocks {
		u.ActiveBlocks++
		used := perSub[b.Subscriber]
		frac := min(float64(used)/float64(blockSize), 1)
		refused := b.LastRefusedNs != 0 && now-b.LastRefusedNs <= uint64(FullWindow)
		if used >= int(blockSize) || refused {
			u.Full++
		}
		u.Sum += frac
		for i, bound := range UtilisationBuckets {
			if frac <= bound {
				u.Counts[i]++
			}
		}
	}
	for _, n := range perSub {
		u.Flows += n
	}
	return u, nil
}

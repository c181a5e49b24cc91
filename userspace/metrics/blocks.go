package metrics

import (
	"errors"
	"fmt"

	"github.com/cilium/ebpf"

	"github.com/blocknat/blocknat/loader"
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
	// Full is how many active blocks have every port in use.
	Full int
}

func (b *BlockUsage) bucketMap() map[float64]uint64 {
	m := make(map[float64]uint64, len(UtilisationBuckets))
	for i, bound := range UtilisationBuckets {
		if i < len(b.Counts) {
			m[bound] = b.Counts[i]
		}
	}
	return m
}

// flowBatch is how many flow entries one batch lookup reads.
const flowBatch = 4096

// ScanBlocks counts the live mappings of every active block in the
// kernel's tables (flows_fwd and subscribers) and sorts the blocks into
// the utilisation buckets. Each forward mapping holds one port of its
// subscriber's block. Only counts leave this function.
func ScanBlocks(flowsFwd, subscribers *ebpf.Map, blockSize uint16) (BlockUsage, error) {
	u := BlockUsage{BlockSize: blockSize, Counts: make([]uint64, len(UtilisationBuckets))}
	if blockSize == 0 {
		return u, errors.New("scan blocks: block size 0")
	}
	perSub, err := flowsPerSubscriber(flowsFwd)
	if err != nil {
		return u, err
	}
	var idx uint32
	var st loader.SubscriberState
	it := subscribers.Iterate()
	for it.Next(&idx, &st) {
		if st.Active == 0 {
			continue
		}
		u.ActiveBlocks++
		used := perSub[idx]
		frac := min(float64(used)/float64(blockSize), 1)
		if used >= int(blockSize) {
			u.Full++
		}
		u.Sum += frac
		for i, bound := range UtilisationBuckets {
			if frac <= bound {
				u.Counts[i]++
			}
		}
	}
	if err := it.Err(); err != nil {
		return u, fmt.Errorf("scan blocks: read subscribers: %w", err)
	}
	for _, n := range perSub {
		u.Flows += n
	}
	return u, nil
}

// flowsPerSubscriber counts forward mappings by subscriber, in batches
// where the kernel supports it: a table of a quarter million mappings read
// one key at a time costs half a million system calls per scrape.
func flowsPerSubscriber(flowsFwd *ebpf.Map) (map[uint32]int, error) {
	out := map[uint32]int{}
	keys := make([]loader.FlowKey, flowBatch)
	vals := make([]loader.FlowFwd, flowBatch)
	var cursor ebpf.MapBatchCursor
	for {
		n, err := flowsFwd.BatchLookup(&cursor, keys, vals, nil)
		for _, v := range vals[:n] {
			out[v.Subscriber]++
		}
		if errors.Is(err, ebpf.ErrKeyNotExist) {
			return out, nil
		}
		if errors.Is(err, ebpf.ErrNotSupported) {
			return flowsPerSubscriberIterate(flowsFwd)
		}
		if err != nil {
			return nil, fmt.Errorf("scan blocks: read flows_fwd: %w", err)
		}
	}
}

func flowsPerSubscriberIterate(flowsFwd *ebpf.Map) (map[uint32]int, error) {
	out := map[uint32]int{}
	var key loader.FlowKey
	var val loader.FlowFwd
	it := flowsFwd.Iterate()
	for it.Next(&key, &val) {
		out[val.Subscriber]++
	}
	if err := it.Err(); err != nil {
		return nil, fmt.Errorf("scan blocks: read flows_fwd: %w", err)
	}
	return out, nil
}

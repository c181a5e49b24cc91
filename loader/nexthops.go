package loader

import (
	"errors"
	"fmt"
	"time"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"
)

// The next-hop cache (bpf/route.h) keeps the fib's answers for the
// established path. It is only as good as the agent's watch on the routes,
// neighbours and links, so the data plane uses it only while route_gen says
// the agent watches, and only under the generation the agent last wrote.

// RouteGeneration is the generation the cache's answers are valid for.
func (n *NAT) RouteGeneration() (uint64, error) {
	var zero uint32
	var st natRouteState
	if err := n.objs.RouteGen.Lookup(&zero, &st); err != nil {
		return 0, fmt.Errorf("read route_gen: %w", err)
	}
	return st.Gen, nil
}

// VouchRoutes sets the cache's generation and says the agent watches for
// changes until the monotonic time until (MonotonicNow's clock); 0 turns
// the cache off now.
func (n *NAT) VouchRoutes(gen uint64, until time.Duration) error {
	var zero uint32
	st := natRouteState{Gen: gen, ValidUntilNs: uint64(until)}
	if err := n.objs.RouteGen.Update(&zero, &st, 0); err != nil {
		return fmt.Errorf("write route_gen: %w", err)
	}
	return nil
}

// MonotonicNow is CLOCK_MONOTONIC, the clock of bpf_ktime_get_coarse_ns.
func MonotonicNow() time.Duration {
	var ts unix.Timespec
	_ = unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts)
	return time.Duration(ts.Nano())
}

// PruneNexthops deletes the cache entries not used since before cutoff
// (MonotonicNow's clock), and returns how many it deleted; a zero cutoff
// deletes every entry, and a negative one (a time before boot, as "an hour
// ago" is on a router up for less) none. An entry's key names a
// destination, so none may outlive the mappings that used it.
func (n *NAT) PruneNexthops(cutoff time.Duration) (int, error) {
	if cutoff < 0 {
		return 0, nil
	}
	var (
		key     natNexthopKey
		val     natNexthop
		expired []natNexthopKey
	)
	it := n.objs.Nexthops.Iterate()
	for it.Next(&key, &val) {
		if cutoff == 0 || val.UsedNs < uint64(cutoff) {
			expired = append(expired, key)
		}
	}
	if err := it.Err(); err != nil {
		return 0, fmt.Errorf("walk nexthops: %w", err)
	}
	deleted := 0
	for i := range expired {
		if err := n.objs.Nexthops.Delete(&expired[i]); err == nil {
			deleted++
		} else if !errors.Is(err, ebpf.ErrKeyNotExist) {
			return deleted, fmt.Errorf("delete from nexthops: %w", err)
		}
	}
	return deleted, nil
}

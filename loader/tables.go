package loader

import (
	"errors"
	"fmt"

	"github.com/cilium/ebpf"
)

// The mapping tables (flows_fwd, flows_rev, subscribers, filters) stay in
// this package; the sweeper, the reconciler and the metrics get the
// iterators and operations below, so that each table is read one way and
// the two sides of a mapping are written and removed as the data plane
// does it.

// ActiveBlock is a subscriber whose block the kernel shows as active.
type ActiveBlock struct {
	Subscriber uint32
	// ActiveSinceNs is the monotonic time the data plane noted the block
	// becoming active; 0 when it did not.
	ActiveSinceNs uint64
	// LastActiveNs is the monotonic time of its last new mapping.
	LastActiveNs uint64
	// LastRefusedNs is the monotonic time the block last refused a new
	// mapping for want of a free port (within the 100 ms the block-full
	// ICMP is rate-limited to); 0 when it never did.
	LastRefusedNs uint64
}

// Flows calls fn for every mapping in the forward table; an error from fn
// ends the walk and is returned.
func (n *NAT) Flows(fn func(FlowKey, FlowFwd) error) error { return eachFlow(n.objs.FlowsFwd, fn) }

// FlowsPerSubscriber counts the forward mappings of each subscriber, in
// batches where the kernel supports it: a table of a quarter million
// mappings read one key at a time costs half a million system calls.
func (n *NAT) FlowsPerSubscriber() (map[uint32]int, error) {
	return flowsPerSubscriber(n.objs.FlowsFwd)
}

// ActiveBlocks lists the subscribers whose block the kernel shows as
// active, in subscriber order.
func (n *NAT) ActiveBlocks() ([]ActiveBlock, error) { return activeBlocks(n.objs.Subscribers) }

// LookupFlow reads the forward entry of key; false when there is none.
func (n *NAT) LookupFlow(key FlowKey) (FlowFwd, bool, error) {
	var v FlowFwd
	ok, err := lookup(n.objs.FlowsFwd, "flows_fwd", &key, &v)
	return v, ok, err
}

// LookupReverse reads the reverse entry of a mapping's public side (its
// address, port and protocol); false when there is none.
func (n *NAT) LookupReverse(key FlowKey) (FlowRev, bool, error) {
	var v FlowRev
	ok, err := lookup(n.objs.FlowsRev, "flows_rev", &key, &v)
	return v, ok, err
}

// AddMapping writes both sides of a mapping as xdp_inside does: the
// reverse entry first, only if its public port is free, then the forward
// entry, rolling the reverse one back if that fails.
func (n *NAT) AddMapping(key FlowKey, fwd FlowFwd) error {
	rkey := reverseKey(key, fwd)
	rev := FlowRev{Addr: key.Addr, Port: key.Port, Subscriber: fwd.Subscriber}
	if key.Proto == ProtoTCP && fwd.State == FlowStateTCPClosing {
		// The outside program counts the peer's ACKs towards reopening
		// only where the reverse entry says closing.
		rev.Closing = 1
	}
	if err := n.objs.FlowsRev.Update(&rkey, &rev, ebpf.UpdateNoExist); err != nil {
		return fmt.Errorf("write flows_rev: %w", err)
	}
	if err := n.objs.FlowsFwd.Update(&key, &fwd, ebpf.UpdateNoExist); err != nil {
		n.objs.FlowsRev.Delete(&rkey)
		return fmt.Errorf("write flows_fwd: %w", err)
	}
	return nil
}

// ExpireFlow removes the mapping key if idle still says so of its forward
// entry as it is now, and returns that entry. The forward entry goes first:
// an outbound packet arriving meanwhile then makes a fresh mapping instead
// of refreshing one that is about to lose its reverse side. The reverse
// entry goes only while it still names key, since the port may already
// belong to a new mapping.
func (n *NAT) ExpireFlow(key FlowKey, idle func(FlowFwd) bool) (FlowFwd, bool, error) {
	val, ok, err := n.LookupFlow(key)
	if err != nil || !ok || !idle(val) {
		return val, false, err
	}
	if err := n.objs.FlowsFwd.Delete(&key); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		return val, false, fmt.Errorf("delete from flows_fwd: %w", err)
	}
	rkey := reverseKey(key, val)
	var rev FlowRev
	if err := n.objs.FlowsRev.Lookup(&rkey, &rev); err == nil && rev.Addr == key.Addr && rev.Port == key.Port {
		if err := n.objs.FlowsRev.Delete(&rkey); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			return val, true, fmt.Errorf("delete from flows_rev: %w", err)
		}
	}
	return val, true, nil
}

// reverseKey is the reverse table's key of the mapping key, fwd: its
// public side.
func reverseKey(key FlowKey, fwd FlowFwd) FlowKey {
	return FlowKey{Addr: fwd.NatAddr, Port: fwd.NatPort, Proto: key.Proto}
}

// Subscriber reads a subscriber's block state.
func (n *NAT) Subscriber(sub uint32) (SubscriberState, error) {
	var st SubscriberState
	if err := n.objs.Subscribers.Lookup(&sub, &st); err != nil {
		return st, fmt.Errorf("read subscribers[%d]: %w", sub, err)
	}
	return st, nil
}

// SetSubscriber writes a subscriber's block state.
func (n *NAT) SetSubscriber(sub uint32, st SubscriberState) error {
	if err := n.objs.Subscribers.Update(&sub, &st, ebpf.UpdateExist); err != nil {
		return fmt.Errorf("write subscribers[%d]: %w", sub, err)
	}
	return nil
}

// BlockActive says whether the kernel shows sub's block as active.
func (n *NAT) BlockActive(sub uint32) (bool, error) {
	st, err := n.Subscriber(sub)
	return st.Active != 0, err
}

// ReleaseBlock marks sub's block idle in the kernel. The data plane's next
// mapping for sub activates it again and reports that through the ring
// buffer, so a release is only final once the block, looked at again, is
// still idle and unused.
func (n *NAT) ReleaseBlock(sub uint32) error { return n.setActive(sub, 0) }

// KeepBlock undoes ReleaseBlock for a block found in use after all.
func (n *NAT) KeepBlock(sub uint32) error { return n.setActive(sub, 1) }

func (n *NAT) setActive(sub uint32, active uint32) error {
	st, err := n.Subscriber(sub)
	if err != nil {
		return err
	}
	st.Active = active
	return n.SetSubscriber(sub, st)
}

// NoteRemote records that the mapping key names sent to its remote
// endpoint at seen, as xdp_inside does under address-and-port-dependent
// filtering.
func (n *NAT) NoteRemote(key FilterKey, seen uint64) error {
	if err := n.objs.Filters.Update(&key, &seen, ebpf.UpdateAny); err != nil {
		return fmt.Errorf("write filters: %w", err)
	}
	return nil
}

// RemoteNoted says whether the filter table holds key.
func (n *NAT) RemoteNoted(key FilterKey) (bool, error) {
	var seen uint64
	return lookup(n.objs.Filters, "filters", &key, &seen)
}

func lookup(m *ebpf.Map, name string, key, val any) (bool, error) {
	err := m.Lookup(key, val)
	if errors.Is(err, ebpf.ErrKeyNotExist) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("read %s: %w", name, err)
	}
	return true, nil
}

func eachFlow(m *ebpf.Map, fn func(FlowKey, FlowFwd) error) error {
	return eachEntry(m, "flows_fwd", fn)
}

// eachEntry calls fn for every entry of the map called name; an error of
// the walk names the map.
func eachEntry[K, V any](m *ebpf.Map, name string, fn func(K, V) error) error {
	var key K
	var val V
	it := m.Iterate()
	for it.Next(&key, &val) {
		if err := fn(key, val); err != nil {
			return err
		}
	}
	if err := it.Err(); err != nil {
		return fmt.Errorf("read %s: %w", name, err)
	}
	return nil
}

// flowBatch is how many flow entries one batch lookup reads.
const flowBatch = 4096

func flowsPerSubscriber(m *ebpf.Map) (map[uint32]int, error) {
	out := map[uint32]int{}
	keys := make([]FlowKey, flowBatch)
	vals := make([]FlowFwd, flowBatch)
	var cursor ebpf.MapBatchCursor
	for {
		n, err := m.BatchLookup(&cursor, keys, vals, nil)
		for _, v := range vals[:n] {
			out[v.Subscriber]++
		}
		if errors.Is(err, ebpf.ErrKeyNotExist) {
			return out, nil
		}
		if errors.Is(err, ebpf.ErrNotSupported) {
			out = map[uint32]int{}
			return out, eachFlow(m, func(_ FlowKey, v FlowFwd) error { out[v.Subscriber]++; return nil })
		}
		if err != nil {
			return nil, fmt.Errorf("read flows_fwd: %w", err)
		}
	}
}

func activeBlocks(m *ebpf.Map) ([]ActiveBlock, error) {
	var out []ActiveBlock
	var sub uint32
	var st SubscriberState
	it := m.Iterate()
	for it.Next(&sub, &st) {
		if st.Active != 0 {
			out = append(out, ActiveBlock{Subscriber: sub, ActiveSinceNs: st.ActiveSinceNs, LastActiveNs: st.LastActiveNs,
				LastRefusedNs: st.LastIcmpNs})
		}
	}
	if err := it.Err(); err != nil {
		return nil, fmt.Errorf("read subscribers: %w", err)
	}
	return out, nil
}

func eachFilter(m *ebpf.Map, fn func(FilterKey, uint64) error) error {
	return eachEntry(m, "filters", fn)
}

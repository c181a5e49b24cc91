package loader

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/cilium/ebpf"
)

// FilterKey is an entry of the filter table: a remote endpoint a mapping
// sent to (bpf/types.h struct filter_key).
type FilterKey = natFilterKey

// MappingEnd is the public side of a mapping as the kernel tables key it:
// address and port in network byte order, and the protocol.
type MappingEnd struct {
	Addr  uint32
	Port  uint16
	Proto uint8
}

// filterTableSize is the size of the filter table for p. Only
// address-and-port-dependent filtering keeps remote endpoints: in any other
// mode the table is a single unused entry, so it cannot hold destinations.
func (p Params) filterTableSize() uint32 {
	if !p.FilterAPDF {
		return 1
	}
	return p.flowTableSize()
}

// PruneFilters deletes the remote endpoints whose mapping is gone, so the
// table names a destination only while its mapping lives. An entry goes
// when its mapping is in expired (keyed by public side, with the mapping's
// last use) and the entry was last noted no later than that use, so that a
// new mapping already made on the same public port keeps its own; and an
// entry goes when no mapping holds its public side at all (flows_rev),
// which clears what an earlier agent, a reload or a crash left. It returns
// how many entries it deleted.
func (n *NAT) PruneFilters(expired map[MappingEnd]uint64) (int, error) {
	var gone []FilterKey
	err := eachFilter(n.objs.Filters, func(key FilterKey, seen uint64) error {
		end := MappingEnd{Addr: key.NatAddr, Port: key.NatPort, Proto: key.Proto}
		if last, ok := expired[end]; ok && seen <= last {
			gone = append(gone, key)
			return nil
		}
		// The data plane writes the reverse entry before it notes a
		// remote, and the sweeper deletes it after the forward one, so
		// a live mapping is never mistaken for a gone one here.
		_, held, err := n.LookupReverse(FlowKey{Addr: key.NatAddr, Port: key.NatPort, Proto: key.Proto})
		if !held && err == nil {
			gone = append(gone, key)
		}
		return err
	})
	if err != nil {
		return 0, fmt.Errorf("scan filters: %w", err)
	}
	deleted := 0
	for i := range gone {
		if err := n.objs.Filters.Delete(&gone[i]); err == nil {
			deleted++
		} else if !errors.Is(err, ebpf.ErrKeyNotExist) {
			return deleted, fmt.Errorf("delete from filters: %w", err)
		}
	}
	return deleted, nil
}

// dropResizedFilters unpins a filter table whose size is not the one
// spec asks for (the filtering mode changed while the agent was away), so
// that loading makes a new one rather than refusing the pinned maps. Its
// contents are only the remote endpoints live mappings sent to: losing them
// makes address-and-port-dependent filtering drop replies until the
// subscriber sends again, no mapping or record is lost.
func dropResizedFilters(spec *ebpf.CollectionSpec, pinPath string) error {
	path := filepath.Join(pinPath, "filters")
	m, err := ebpf.LoadPinnedMap(path, &ebpf.LoadPinOptions{ReadOnly: true})
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("open pinned map %s: %w", path, err)
	}
	size := m.MaxEntries()
	m.Close()
	if size == spec.Maps["filters"].MaxEntries {
		return nil
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("unpin resized filter table %s: %w", path, err)
	}
	return nil
}

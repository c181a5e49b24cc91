package loader

import (
	"fmt"
	"path/filepath"

	"github.com/cilium/ebpf"
)

// Pinned gives another process (the CLI, a test, a status probe) read
// access to a running data plane's maps through their pins.
type Pinned struct {
	stats, subscribers, flows *ebpf.Map
	pinDir                    string
}

// OpenPinned opens the maps pinned under pinDir, read-only.
func OpenPinned(pinDir string) (*Pinned, error) {
	p := Pinned{pinDir: pinDir}
	for name, dst := range map[string]**ebpf.Map{"stats": &p.stats, "subscribers": &p.subscribers, "flows_fwd": &p.flows} {
		path := filepath.Join(pinDir, mapsDir, name)
		m, err := ebpf.LoadPinnedMap(path, &ebpf.LoadPinOptions{ReadOnly: true})
		if err != nil {
			p.Close()
			return nil, fmt.Errorf("open pinned map %s: %w", path, err)
		}
		*dst = m
	}
	return &p, nil
}

// Stats reads the data plane's counters summed over all CPUs.
func (p *Pinned) Stats() (Stats, error) { return readStats(p.stats) }

// ActiveSubscribers lists the subscribers whose block the kernel shows
// as active.
func (p *Pinned) ActiveSubscribers() ([]uint32, error) {
	blocks, err := activeBlocks(p.subscribers)
	if err != nil {
		return nil, err
	}
	out := make([]uint32, len(blocks))
	for i, b := range blocks {
		out[i] = b.Subscriber
	}
	return out, nil
}

// Close releases the map handles.
func (p *Pinned) Close() error {
	for _, m := range []*ebpf.Map{p.stats, p.subscribers, p.flows} {
		if m != nil {
			m.Close()
		}
	}
	return nil
}

// Flow is one mapping as the forward table holds it.
type Flow struct {
	Key   FlowKey
	Value FlowFwd
}

// Flows lists the mappings in the pinned forward table.
func (p *Pinned) Flows() ([]Flow, error) {
	var out []Flow
	err := eachFlow(p.flows, func(key FlowKey, val FlowFwd) error {
		out = append(out, Flow{Key: key, Value: val})
		return nil
	})
	return out, err
}

// FlowTableSize is the size of the pinned flow tables: what Params.MaxFlows
// must be to open them again, with the mapping they were made for (their
// size followed that mapping, or the max_flows of its day).
func (p *Pinned) FlowTableSize() uint32 { return p.flows.MaxEntries() }

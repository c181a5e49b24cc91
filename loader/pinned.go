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
	var out []uint32
	var idx uint32
	var st SubscriberState
	it := p.subscribers.Iterate()
	for it.Next(&idx, &st) {
		if st.Active != 0 {
			out = append(out, idx)
		}
	}
	if err := it.Err(); err != nil {
		return nil, fmt.Errorf("read subscribers: %w", err)
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
	var f Flow
	it := p.flows.Iterate()
	for it.Next(&f.Key, &f.Value) {
		out = append(out, f)
	}
	if err := it.Err(); err != nil {
		return nil, fmt.Errorf("read flows_fwd: %w", err)
	}
	return out, nil
}

// FlowTableSize is the size of the pinned flow tables: what Params.MaxFlows
// must be to open them again, with the mapping they were made for (their
// size followed that mapping, or the max_flows of its day).
func (p *Pinned) FlowTableSize() uint32 { return p.flows.MaxEntries() }

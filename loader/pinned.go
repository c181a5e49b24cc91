package loader

import (
	"fmt"
	"path/filepath"

	"github.com/cilium/ebpf"
)

// Pinned gives another process (the CLI, a test, a status probe) read
// access to a running data plane's maps through their pins.
type Pinned struct {
	stats *ebpf.Map
}

// OpenPinned opens the maps pinned under pinDir.
func OpenPinned(pinDir string) (*Pinned, error) {
	path := filepath.Join(pinDir, mapsDir, "stats")
	m, err := ebpf.LoadPinnedMap(path, &ebpf.LoadPinOptions{ReadOnly: true})
	if err != nil {
		return nil, fmt.Errorf("open pinned stats map %s: %w", path, err)
	}
	return &Pinned{stats: m}, nil
}

// Stats reads the data plane's counters summed over all CPUs.
func (p *Pinned) Stats() (Stats, error) { return readStats(p.stats) }

// Close releases the map handles.
func (p *Pinned) Close() error { return p.stats.Close() }

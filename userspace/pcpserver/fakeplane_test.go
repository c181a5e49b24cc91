package pcpserver

import (
	"errors"
	"fmt"
	"net/netip"
	"sync"

	"github.com/blocknat/blocknat/userspace/mapping"
)

// kernelMapping is what the fake keeps for the data plane's flow tables:
// one mapping a key, made by traffic (implicit) or by PCP.
type kernelMapping struct {
	Public   netip.Addr
	Port     uint16
	Implicit bool
	Overflow bool // in an overflow block, outside the subscriber's own
	Open     bool
}

type unmapCall struct {
	Key  Key
	Drop bool
}

// fakePlane is an in-memory Plane over a mapping.Mapping's blocks.
type fakePlane struct {
	mu         sync.Mutex
	m          *mapping.Mapping
	table      map[Key]Entry // the pinned PCP table
	capacity   int           // of table, 0 for no bound
	kernel     map[Key]kernelMapping
	unmaps     []unmapCall
	maps       []MapRequest
	epochStart uint64
	mapErr     error // returned by the next Map calls when set
}

func newFakePlane(m *mapping.Mapping, epochStart uint64) *fakePlane {
	return &fakePlane{m: m, table: map[Key]Entry{}, kernel: map[Key]kernelMapping{}, epochStart: epochStart}
}

func (p *fakePlane) portUsed(public netip.Addr, port uint16) bool {
	for _, km := range p.kernel {
		if km.Public == public && km.Port == port {
			return true
		}
	}
	return false
}

func (p *fakePlane) Map(r MapRequest) (MapResult, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.maps = append(p.maps, r)
	if p.mapErr != nil {
		return MapResult{}, p.mapErr
	}
	block, err := p.m.Block(r.Subscriber)
	if err != nil {
		return MapResult{}, err
	}
	if km, ok := p.kernel[r.Key]; ok {
		if !km.Implicit {
			return MapResult{}, fmt.Errorf("fake plane: Map of %v, which PCP already holds", r.Key)
		}
		if km.Overflow {
			return MapResult{}, ErrNotOwnBlock
		}
		if r.Required && r.Suggested != km.Port {
			return MapResult{}, ErrSuggestedTaken
		}
		km.Implicit, km.Open = false, r.Open
		p.kernel[r.Key] = km
		return MapResult{Public: km.Public, Port: km.Port, Adopted: true}, nil
	}
	take := func(port uint16) (MapResult, error) {
		p.kernel[r.Key] = kernelMapping{Public: block.Public, Port: port, Open: r.Open}
		return MapResult{Public: block.Public, Port: port}, nil
	}
	if r.Suggested >= block.PortLo && r.Suggested <= block.PortHi && !p.portUsed(block.Public, r.Suggested) {
		return take(r.Suggested)
	}
	if r.Required {
		return MapResult{}, ErrSuggestedTaken
	}
	for port := block.PortLo; port <= block.PortHi; port++ {
		if !p.portUsed(block.Public, port) {
			return take(port)
		}
	}
	return MapResult{}, ErrBlockFull
}

func (p *fakePlane) Unmap(e Entry, drop bool) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.unmaps = append(p.unmaps, unmapCall{Key: e.Key, Drop: drop})
	km, ok := p.kernel[e.Key]
	if !ok || km.Public != e.Public || km.Port != e.Port {
		return nil
	}
	if drop {
		delete(p.kernel, e.Key)
		return nil
	}
	km.Implicit, km.Open = true, false
	p.kernel[e.Key] = km
	return nil
}

func (p *fakePlane) Entries() ([]Entry, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	var list []Entry
	for _, e := range p.table {
		list = append(list, e)
	}
	return list, nil
}

func (p *fakePlane) Put(e Entry) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if _, ok := p.table[e.Key]; !ok && p.capacity > 0 && len(p.table) >= p.capacity {
		return fmt.Errorf("fake plane: put: %w", ErrTableFull)
	}
	p.table[e.Key] = e
	return nil
}

func (p *fakePlane) Delete(k Key) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if _, ok := p.table[k]; !ok {
		return errors.New("fake plane: delete of a key not in the table")
	}
	delete(p.table, k)
	return nil
}

func (p *fakePlane) EpochStart() (uint64, error) { return p.epochStart, nil }

// Helpers for the tests' assertions.

func (p *fakePlane) entry(k Key) (Entry, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	e, ok := p.table[k]
	return e, ok
}

func (p *fakePlane) kernelMapping(k Key) (kernelMapping, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	km, ok := p.kernel[k]
	return km, ok
}

func (p *fakePlane) tableSize() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.table)
}

func (p *fakePlane) lastUnmap() (unmapCall, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if len(p.unmaps) == 0 {
		return unmapCall{}, false
	}
	return p.unmaps[len(p.unmaps)-1], true
}

func (p *fakePlane) mapCalls() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.maps)
}

func (p *fakePlane) setMapErr(err error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.mapErr = err
}

func (p *fakePlane) seed(k Key, km kernelMapping) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.kernel[k] = km
}

func (p *fakePlane) setCapacity(n int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.capacity = n
}

func (p *fakePlane) lastMap() MapRequest {
	p.mu.Lock()
	defer p.mu.Unlock()
	if len(p.maps) == 0 {
		return MapRequest{}
	}
	return p.maps[len(p.maps)-1]
}

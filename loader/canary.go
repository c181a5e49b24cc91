package loader

import (
	"encoding/binary"
	"errors"
	"fmt"

	"github.com/cilium/ebpf"
)

// canarySubmitted is XDP_PASS, which the canary program returns when its
// event was submitted.
const canarySubmitted = 2

// ErrCanaryNotSubmitted reports that the canary program ran but could not
// put its event into the ring buffer: the buffer is full, which is exactly
// the silent loss of records the self-check exists to notice.
var ErrCanaryNotSubmitted = errors.New("canary event not submitted: the block event ring buffer is full")

// Canary writes self-check events into a NAT's block event ring buffer. It
// is a program of its own (bpf/canary.c), loaded with the NAT's live ring
// buffer in place of its own, and run with BPF_PROG_TEST_RUN: never
// attached, so it cannot touch a packet.
type Canary struct {
	objs canaryObjects
}

// LoadCanary loads the canary program bound to events, the NAT's
// block_events ring buffer (NAT.Events, or the pinned map).
func LoadCanary(events *ebpf.Map) (*Canary, error) {
	if events == nil {
		return nil, errors.New("load canary: no block event ring buffer")
	}
	spec, err := loadCanary()
	if err != nil {
		return nil, fmt.Errorf("read canary object: %w", err)
	}
	// A replacement must match the spec exactly, size included; the NAT's
	// ring buffer size is the NAT's business, so take it from the map.
	spec.Maps[canaryMapBlockEvents].MaxEntries = events.MaxEntries()
	c := &Canary{}
	opts := &ebpf.CollectionOptions{MapReplacements: map[string]*ebpf.Map{canaryMapBlockEvents: events}}
	if err := spec.LoadAndAssign(&c.objs, opts); err != nil {
		var ve *ebpf.VerifierError
		if errors.As(err, &ve) {
			return nil, fmt.Errorf("load canary program: %+v", ve)
		}
		return nil, fmt.Errorf("load canary program: %w", err)
	}
	return c, nil
}

// LoadCanary loads a canary bound to this NAT's ring buffer.
func (n *NAT) LoadCanary() (*Canary, error) { return LoadCanary(n.objs.BlockEvents) }

// Fire writes one canary event carrying seq and epoch. When it returns
// nil, the kernel has submitted the event to the ring buffer; whether it
// reaches the store is what the caller then checks.
func (c *Canary) Fire(seq, epoch uint32) error {
	// XDP test runs want at least an Ethernet header's worth of input.
	in := make([]byte, 14)
	binary.NativeEndian.PutUint32(in[0:], seq)
	binary.NativeEndian.PutUint32(in[4:], epoch)
	ret, err := c.objs.Canary.Run(&ebpf.RunOptions{Data: in})
	if err != nil {
		return fmt.Errorf("run canary program: %w", err)
	}
	if ret != canarySubmitted {
		return ErrCanaryNotSubmitted
	}
	return nil
}

// Close unloads the canary program. The NAT's ring buffer is unaffected.
func (c *Canary) Close() error { return c.objs.Close() }

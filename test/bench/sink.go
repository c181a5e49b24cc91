package bench

import (
	"errors"
	"fmt"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
)

// Sink counts and drops what the router sends to the bed's sink.
type Sink struct {
	objs sinkObjects
	link link.Link
}

// SinkCounts are the sink's counters summed over CPUs.
type SinkCounts struct {
	Frames     uint64 // every frame received
	FromInside uint64 // frames whose source is in InsidePrefix: untranslated
}

// NewSink attaches the sink in native mode. With trackFlows it also records
// every distinct source endpoint, which costs a hash update per frame, so
// it is for checking a workload, not for measuring a rate.
func NewSink(bed *Bed, trackFlows bool) (*Sink, error) {
	spec, err := loadSink()
	if err != nil {
		return nil, fmt.Errorf("sink: %w", err)
	}
	for name, v := range map[string]uint32{
		"inside_net":  hostOrder(InsidePrefix.Masked().Addr()),
		"inside_mask": ^uint32(0) << (32 - InsidePrefix.Bits()),
	} {
		if err := spec.Variables[name].Set(v); err != nil {
			return nil, fmt.Errorf("sink: set %s: %w", name, err)
		}
	}
	s := &Sink{}
	if err := spec.LoadAndAssign(&s.objs, nil); err != nil {
		var ve *ebpf.VerifierError
		if errors.As(err, &ve) {
			return nil, fmt.Errorf("sink: load: %+v", ve)
		}
		return nil, fmt.Errorf("sink: load: %w", err)
	}
	prog := s.objs.XdpSink
	if trackFlows {
		prog = s.objs.XdpSinkFlows
	}
	err = bed.Sink.Do(func() error {
		var err error
		s.link, err = link.AttachXDP(link.XDPOptions{Program: prog, Interface: bed.SinkIndex, Flags: link.XDPDriverMode})
		return err
	})
	if err != nil {
		s.objs.Close()
		return nil, fmt.Errorf("sink: attach xdp to %s: %w", SinkIface, err)
	}
	return s, nil
}

// Counts reads the counters.
func (s *Sink) Counts() (SinkCounts, error) {
	var c SinkCounts
	for key, dst := range map[uint32]*uint64{0: &c.Frames, 1: &c.FromInside} {
		var perCPU []uint64
		if err := s.objs.Counts.Lookup(&key, &perCPU); err != nil {
			return c, fmt.Errorf("sink: read count %d: %w", key, err)
		}
		for _, v := range perCPU {
			*dst += v
		}
	}
	return c, nil
}

// Flows is the number of distinct source endpoints seen; only a sink made
// with trackFlows records them.
func (s *Sink) Flows() (int, error) {
	var key [8]byte
	var val uint64
	n := 0
	it := s.objs.Seen.Iterate()
	for it.Next(&key, &val) {
		n++
	}
	if err := it.Err(); err != nil {
		return 0, fmt.Errorf("sink: iterate seen: %w", err)
	}
	return n, nil
}

// Close detaches and unloads the sink.
func (s *Sink) Close() error {
	return errors.Join(s.link.Close(), s.objs.Close())
}

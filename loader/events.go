package loader

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"

	"github.com/cilium/ebpf/ringbuf"
)

// ErrEventsClosed is what Read returns once the reader is closed, which is
// how a reader blocked in Read is stopped.
var ErrEventsClosed = errors.New("block event reader closed")

// ErrMalformedEvent is a ring buffer sample that is not a block_event; the
// reader goes on after it.
var ErrMalformedEvent = errors.New("malformed block event")

// EventReader reads the block events the data plane reports (the
// block_events ring buffer). A reload shares the ring buffer with the new
// tables, so one reader serves every epoch.
type EventReader struct {
	rd  *ringbuf.Reader
	rec ringbuf.Record
}

// OpenEvents opens a reader of the block events.
func (n *NAT) OpenEvents() (*EventReader, error) {
	rd, err := ringbuf.NewReader(n.objs.BlockEvents)
	if err != nil {
		return nil, fmt.Errorf("open block event ring buffer: %w", err)
	}
	return &EventReader{rd: rd}, nil
}

// Read blocks until the next event. Only one goroutine may read; any may
// Close.
func (r *EventReader) Read() (BlockEvent, error) {
	var e BlockEvent
	if err := r.rd.ReadInto(&r.rec); err != nil {
		if errors.Is(err, ringbuf.ErrClosed) || errors.Is(err, os.ErrClosed) {
			return e, ErrEventsClosed
		}
		return e, err
	}
	if _, err := binary.Decode(r.rec.RawSample, binary.NativeEndian, &e); err != nil {
		return e, fmt.Errorf("%w: %w", ErrMalformedEvent, err)
	}
	return e, nil
}

// Close makes a blocked Read return ErrEventsClosed.
func (r *EventReader) Close() error { return r.rd.Close() }

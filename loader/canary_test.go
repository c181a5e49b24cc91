package loader

import (
	"encoding/binary"
	"errors"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/ringbuf"
	"golang.org/x/sys/unix"

	"github.com/blocknat/blocknat/userspace/mapping"
)

// The NAT's object and the canary's must say the same of the kinds.
var _ = [1]struct{}{}[BlockEventActivate-uint32(canaryBlockEventKindBLOCK_EVENT_ACTIVATE)]
var _ = [1]struct{}{}[BlockEventCanary-uint32(canaryBlockEventKindBLOCK_EVENT_CANARY)]

func monoNow(t *testing.T) uint64 {
	t.Helper()
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts); err != nil {
		t.Fatal(err)
	}
	return uint64(ts.Nano())
}

// TestCanaryReachesNATRingBuffer: a canary fired against a loaded NAT
// arrives on the NAT's own ring buffer as a canary event carrying the
// sequence number and epoch, at the kernel's time, and names no address.
func TestCanaryReachesNATRingBuffer(t *testing.T) {
	requirePrivileged(t)
	m, err := mapping.New(prefixesOf(t, []string{"100.64.0.0/24"}), prefixesOf(t, []string{"198.51.100.10/31"}), 1024, 65535, 0)
	if err != nil {
		t.Fatal(err)
	}
	nat, err := Load(Params{Mapping: m, Epoch: 4}, "")
	if err != nil {
		t.Fatal(err)
	}
	defer nat.Close()
	c, err := nat.LoadCanary()
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	rd, err := ringbuf.NewReader(nat.objs.BlockEvents)
	if err != nil {
		t.Fatal(err)
	}
	defer rd.Close()

	before := monoNow(t)
	for _, seq := range []uint32{0xfeedbeef, 2} {
		if err := c.Fire(seq, 4); err != nil {
			t.Fatalf("fire %d: %v", seq, err)
		}
	}
	after := monoNow(t)
	rd.SetDeadline(time.Now().Add(time.Second))
	for _, seq := range []uint32{0xfeedbeef, 2} {
		rec, err := rd.Read()
		if err != nil {
			t.Fatalf("read canary %d from the NAT's ring buffer: %v", seq, err)
		}
		var e BlockEvent
		if _, err := binary.Decode(rec.RawSample, binary.NativeEndian, &e); err != nil {
			t.Fatal(err)
		}
		if e.Kind != BlockEventCanary || e.Subscriber != seq || e.Epoch != 4 {
			t.Errorf("event %+v, want a canary with seq %#x in epoch 4", e, seq)
		}
		if e.InsideAddr != 0 || e.PublicAddr != 0 || e.PortLo != 0 || e.PortHi != 0 {
			t.Errorf("canary %+v carries an address or port", e)
		}
		if e.TimeNs < before || e.TimeNs > after {
			t.Errorf("canary time %d outside the firing span %d..%d", e.TimeNs, before, after)
		}
	}
	if st, err := nat.Stats(); err != nil || st["block_activations"] != 0 {
		t.Errorf("a canary counted as a block activation: %v (%v)", st, err)
	}
}

// TestCanaryReportsFullRingBuffer: when the ring buffer has no room, Fire
// says so instead of pretending the event was sent.
func TestCanaryReportsFullRingBuffer(t *testing.T) {
	requirePrivileged(t)
	small, err := ebpf.NewMap(&ebpf.MapSpec{Type: ebpf.RingBuf, MaxEntries: uint32(unix.Getpagesize())})
	if err != nil {
		t.Fatal(err)
	}
	defer small.Close()
	c, err := LoadCanary(small)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	// Each event takes its 32 bytes plus an 8-byte header.
	capacity := unix.Getpagesize() / (32 + 8)
	var fired int
	for fired = 0; fired <= capacity; fired++ {
		if err := c.Fire(uint32(fired), 1); err != nil {
			if !errors.Is(err, ErrCanaryNotSubmitted) {
				t.Fatalf("fire %d: %v, want ErrCanaryNotSubmitted", fired, err)
			}
			break
		}
	}
	if fired != capacity {
		t.Fatalf("the full ring buffer was reported after %d canaries, want %d", fired, capacity)
	}
	if _, err := LoadCanary(nil); err == nil {
		t.Error("LoadCanary(nil) succeeded")
	}
}

package loader

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/cilium/ebpf"
)

// flowFwdV1Size is the size of a forward flow entry as releases before the
// 24-byte layout pinned it: a 64-bit nanosecond last_seen_ns first, then
// the fields of today's entry, then 6 bytes of padding.
const flowFwdV1Size = 32

// migrateFlowLayout carries the mappings of a pinned flows_fwd of the
// 32-byte layout over into a new table of today's layout, pinned in its
// place, so that an upgrade keeps every live mapping and its port, as the
// guide promises. It runs before the new programs are loaded; the old ones,
// still attached, go on writing to the old table until the new programs
// replace them, so a mapping made in those milliseconds is lost (its next
// packet makes a new one). A table of another key size or capacity is left
// alone, for Load to refuse as a changed configuration. It returns how many
// mappings it carried over.
func migrateFlowLayout(spec *ebpf.CollectionSpec, pinPath string) (int, error) {
	path := filepath.Join(pinPath, "flows_fwd")
	old, err := ebpf.LoadPinnedMap(path, &ebpf.LoadPinOptions{ReadOnly: true})
	if errors.Is(err, os.ErrNotExist) {
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("open pinned map %s: %w", path, err)
	}
	defer old.Close()
	want := spec.Maps["flows_fwd"]
	if old.ValueSize() != flowFwdV1Size || old.KeySize() != want.KeySize || old.MaxEntries() != want.MaxEntries {
		return 0, nil
	}
	ms := want.Copy()
	ms.Pinning = ebpf.PinNone
	next, err := ebpf.NewMap(ms)
	if err != nil {
		return 0, fmt.Errorf("migrate %s to the %d-byte layout: %w", path, want.ValueSize, err)
	}
	defer next.Close()

	var (
		key   FlowKey
		raw   = make([]byte, flowFwdV1Size)
		moved int
	)
	it := old.Iterate()
	for it.Next(&key, &raw) {
		v := flowFwdFromV1(raw)
		if err := next.Update(&key, &v, ebpf.UpdateNoExist); err != nil {
			return 0, fmt.Errorf("migrate %s: copy mapping: %w", path, err)
		}
		moved++
	}
	if err := it.Err(); err != nil {
		return 0, fmt.Errorf("migrate %s: walk: %w", path, err)
	}
	// Unpin first: Pin refuses a path that exists. Should pinning the new
	// table fail, the old one is gone from bpffs but still held by the
	// attached programs, and the error names what to run.
	if err := os.Remove(path); err != nil {
		return 0, fmt.Errorf("migrate %s: unpin the old table: %w", path, err)
	}
	if err := next.Pin(path); err != nil {
		return 0, fmt.Errorf("migrate %s: pin the new table: %w; run 'blocknatd detach' and start again, which drops live mappings", path, err)
	}
	return moved, nil
}

// flowFwdFromV1 decodes an entry of the 32-byte layout (host byte order,
// as the kernel holds it; big-endian fields stay as they are).
func flowFwdFromV1(b []byte) FlowFwd {
	le := binary.LittleEndian
	return FlowFwd{
		LastSeen:   LastSeenUnit(le.Uint64(b[0:8])),
		NatAddr:    le.Uint32(b[8:12]),
		NatPort:    le.Uint16(b[12:14]),
		State:      b[14],
		CloseAcks:  b[15],
		Subscriber: le.Uint32(b[16:20]),
		PeerAddr:   le.Uint32(b[20:24]),
		PeerPort:   le.Uint16(b[24:26]),
	}
}

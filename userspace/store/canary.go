package store

import (
	"encoding/binary"
	"fmt"
	"time"

	"github.com/cockroachdb/pebble/v2"
)

// Canary is a self-check record: an event the kernel wrote into the block
// event ring buffer that names no subscriber. Finding it proves that block
// records reach the disk. It is stored apart from block records (see the
// package documentation), so no lookup can ever return it.
type Canary struct {
	Seq   uint32    // chosen by the agent for each check
	Time  time.Time // when the kernel wrote the event
	Epoch uint32    // the agent's epoch when it fired the canary
}

// canaryKeep is how long a canary is kept after a newer one is written:
// long enough for any check to find its own, short enough that canaries
// never pile up.
const canaryKeep = time.Hour

func canaryKey(timeNS int64, seq uint32) []byte {
	k := make([]byte, 0, canaryKeyLen)
	k = append(k, prefixCanary)
	k = binary.BigEndian.AppendUint64(k, uint64(timeNS))
	return binary.BigEndian.AppendUint32(k, seq)
}

func canaryTimeKey(timeNS int64) []byte {
	return binary.BigEndian.AppendUint64([]byte{prefixCanary}, uint64(max(timeNS, 0)))
}

// putCanary adds a canary to the batch and deletes those older than
// canaryKeep before it.
func putCanary(b *pebble.Batch, c Canary, now time.Time) error {
	ns, err := checkTime(c.Time, "time", now)
	if err != nil {
		return err
	}
	val := binary.AppendUvarint([]byte{valueVersionCanary}, uint64(c.Epoch))
	if err := b.DeleteRange([]byte{prefixCanary}, canaryTimeKey(ns-int64(canaryKeep)), nil); err != nil {
		return fmt.Errorf("batch delete old canaries: %w", err)
	}
	if err := b.Set(canaryKey(ns, c.Seq), val, nil); err != nil {
		return fmt.Errorf("batch set: %w", err)
	}
	return nil
}

// Canary returns the canary with sequence number seq written by the
// kernel at or after since, or an error wrapping ErrNotFound.
func (s *Store) Canary(seq uint32, since time.Time) (Canary, error) {
	var out Canary
	found := false
	err := s.read("canary", func(v *view) error {
		return v.scan(canaryTimeKey(ClampNS(since)), []byte{prefixCanary + 1}, func(k, val []byte) error {
			if found {
				return nil
			}
			if len(k) != canaryKeyLen {
				return fmt.Errorf("canary key %x: bad length: %w", k, ErrCorrupt)
			}
			if binary.BigEndian.Uint32(k[9:]) != seq {
				return nil
			}
			if len(val) < 2 || val[0] != valueVersionCanary {
				return fmt.Errorf("canary value %x: %w", val, ErrCorrupt)
			}
			epoch, n := binary.Uvarint(val[1:])
			if n <= 0 || epoch > 0xffffffff || n != len(val)-1 {
				return fmt.Errorf("canary value %x: epoch: %w", val, ErrCorrupt)
			}
			out = Canary{Seq: seq, Time: time.Unix(0, int64(binary.BigEndian.Uint64(k[1:]))).UTC(), Epoch: uint32(epoch)}
			found = true
			return nil
		})
	})
	if err != nil {
		return Canary{}, fmt.Errorf("canary %d: %w", seq, err)
	}
	if !found {
		return Canary{}, fmt.Errorf("canary %d since %s: %w", seq, since.UTC().Format(time.RFC3339Nano), ErrNotFound)
	}
	return out, nil
}

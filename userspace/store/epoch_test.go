package store

import (
	"encoding/hex"
	"errors"
	"net/netip"
	"testing"
	"time"
)

// oldEpochKey and oldEpochValue are epoch 3 as the store wrote it before
// epochs carried the clock (encodeEpoch at 1bb3341): the value ends after
// the pool.
const (
	oldEpochKey   = "6518b3d491bb86d4c000000003"
	oldEpochValue = "0118b42326458100000400ffff01f800000080ab000000000000000000000000000000000000000000000000000000000000cd01644000001602c6336401c6336402"
)

func oldEpoch() Epoch {
	e := Epoch{ID: 3, Start: time.Unix(1_780_000_000, 123_000_000).UTC(), Recorded: time.Unix(1_780_086_400, 0).UTC(),
		Prefixes: []netip.Prefix{netip.MustParsePrefix("100.64.0.0/22")},
		Pool:     []netip.Addr{netip.MustParseAddr("198.51.100.1"), netip.MustParseAddr("198.51.100.2")},
		PortLo:   1024, PortHi: 65535, BlockSize: 504, Ratio: 128}
	e.Hash[0], e.Hash[31] = 0xab, 0xcd
	return e
}

func sameEpoch(a, b Epoch) bool {
	return a.ID == b.ID && a.Start.Equal(b.Start) && a.Recorded.Equal(b.Recorded) && a.PortLo == b.PortLo && a.PortHi == b.PortHi &&
		a.BlockSize == b.BlockSize && a.Ratio == b.Ratio && a.Hash == b.Hash && len(a.Pool) == len(b.Pool) && a.Pool[1] == b.Pool[1] &&
		len(a.Prefixes) == 1 && a.Prefixes[0] == b.Prefixes[0]
}

// TestEpochWrittenBeforeTheClock: an epoch value of the previous version,
// which ends after the pool, still reads, with no clock; and this version
// writes the same bytes for an epoch without one, so nothing changes for
// such a writer.
func TestEpochWrittenBeforeTheClock(t *testing.T) {
	key, _ := hex.DecodeString(oldEpochKey)
	val, _ := hex.DecodeString(oldEpochValue)
	got, err := decodeEpoch(key, val)
	if err != nil {
		t.Fatalf("decode the old value: %v", err)
	}
	if !sameEpoch(got, oldEpoch()) || got.Clock != nil {
		t.Fatalf("old value read as %+v (clock %+v)", got, got.Clock)
	}
	e := oldEpoch()
	k, v, err := encodeEpoch(&e, time.Unix(1_790_000_000, 0))
	if err != nil || hex.EncodeToString(k) != oldEpochKey || hex.EncodeToString(v) != oldEpochValue {
		t.Errorf("an epoch without a clock encodes as %x %x (%v), want the old bytes", k, v, err)
	}
}

// TestEpochClockRoundTrip: the clock written with an epoch comes back
// from the store, to the microsecond, synchronised or not; a damaged
// clock field is corruption, and a trailing field of a later version is
// read as no clock.
func TestEpochClockRoundTrip(t *testing.T) {
	now := time.Unix(1_790_000_000, 0)
	s, _ := openMem(t, newClock(now))
	read := time.Unix(1_780_086_400, 5_000).UTC()
	for _, c := range []EpochClock{
		{Synchronised: true, EstimatedError: 12_345 * time.Microsecond, MaxError: 40 * time.Millisecond, ReadAt: read},
		{EstimatedError: 16 * time.Second, MaxError: 16 * time.Second, ReadAt: read},
		{Unreadable: true, ReadAt: read},
	} {
		e := oldEpoch()
		e.Clock = &c
		if err := s.PutEpoch(e); err != nil {
			t.Fatal(err)
		}
		got, err := s.EpochAt(e.Start)
		if err != nil || !sameEpoch(got, e) || got.Clock == nil || *got.Clock != c {
			t.Fatalf("clock %+v read back as %+v (%v)", c, got.Clock, err)
		}
	}

	e := oldEpoch()
	e.Clock = &EpochClock{Synchronised: true, EstimatedError: time.Millisecond, ReadAt: read}
	k, v, err := encodeEpoch(&e, now)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := decodeEpoch(k, v[:len(v)-3]); !errors.Is(err, ErrCorrupt) {
		t.Errorf("a cut clock field: %v, want ErrCorrupt", err)
	}
	later := append(mustDecodeHex(oldEpochValue), 2, 0xff)
	if got, err := decodeEpoch(k, later); err != nil || got.Clock != nil || !sameEpoch(got, oldEpoch()) {
		t.Errorf("a later version's trailing field: %+v, %v; want the epoch without a clock", got, err)
	}
	e.Clock.EstimatedError = -time.Second
	if _, _, err := encodeEpoch(&e, now); !errors.Is(err, ErrInvalid) {
		t.Errorf("a negative error: %v, want ErrInvalid", err)
	}
}

func mustDecodeHex(s string) []byte {
	b, err := hex.DecodeString(s)
	if err != nil {
		panic(err)
	}
	return b
}

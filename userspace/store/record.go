package store

import (
	"errors"
	"fmt"
	"math"
	"net/netip"
	"time"
)

// Flags describe how a record came to be.
type Flags uint32

const (
	// FlagRecovered marks a record found by the reconciler in the kernel's
	// subscriber table rather than announced by the ring buffer.
	FlagRecovered Flags = 1 << iota
)

// Record is one subscriber's use of one port block of one public address.
type Record struct {
	Subscriber     uint32
	Inside         netip.Addr // the subscriber's inside IPv4 address
	Public         netip.Addr // IPv4
	PortLo, PortHi uint16
	// Start and End are kept to the millisecond (timeStep), Start
	// rounded down and End up, so that the stored interval holds the
	// true one; see the package documentation.
	Start time.Time // block became active
	End   time.Time // zero while the record is open
	Epoch uint32
	Flags Flags
	// Router is the router that recorded it, in a fleet's answer
	// (userspace/pgfleet); a router's own store leaves it empty.
	Router string
}

// Open reports whether the block is still held.
func (r Record) Open() bool { return r.End.IsZero() }

var (
	// ErrClosed is returned by every method after Close, or after Sweep failed
	// to reopen the database.
	ErrClosed = errors.New("store closed")
	// ErrInvalid wraps errors about arguments.
	ErrInvalid = errors.New("invalid argument")
	// ErrNotFound is returned by EpochAt when no epoch was in force.
	ErrNotFound = errors.New("not found")
	// ErrCorrupt wraps errors about entries that cannot be decoded.
	ErrCorrupt = errors.New("corrupt entry")
)

// maxClockSkew bounds how far after the store's clock a record time may lie.
// Times further ahead are a broken clock, and would make a release write a
// copy into every day partition up to that time.
const maxClockSkew = 24 * time.Hour

func checkTime(t time.Time, field string, now time.Time) (int64, error) {
	switch {
	case t.IsZero():
		return 0, fmt.Errorf("%s: missing: %w", field, ErrInvalid)
	case t.Before(time.Unix(0, 0)):
		return 0, fmt.Errorf("%s: %s is before 1970: %w", field, t.Format(time.RFC3339Nano), ErrInvalid)
	case t.After(now.Add(maxClockSkew)):
		return 0, fmt.Errorf("%s: %s is more than %s after the store clock %s: %w",
			field, t.UTC().Format(time.RFC3339Nano), maxClockSkew, now.UTC().Format(time.RFC3339Nano), ErrInvalid)
	}
	return t.UnixNano(), nil
}

// CheckIPv4 returns a as the IPv4 address every question is about (an
// IPv4-mapped one unmapped), or an error naming field; a fleet's reader
// (userspace/pgfleet) holds its arguments to the same rule.
func CheckIPv4(a netip.Addr, field string) (netip.Addr, error) {
	a = a.Unmap()
	if !a.Is4() {
		return a, fmt.Errorf("%s: %v is not an IPv4 address: %w", field, a, ErrInvalid)
	}
	return a, nil
}

func addr4(a netip.Addr, field string) ([4]byte, error) {
	a, err := CheckIPv4(a, field)
	if err != nil {
		return [4]byte{}, err
	}
	return a.As4(), nil
}

func addrFrom4(b [4]byte) netip.Addr { return netip.AddrFrom4(b) }

// ClampNS converts t to Unix nanoseconds, saturating outside 1970..2262,
// as every read of the store (and of a fleet's copy) takes a time.
func ClampNS(t time.Time) int64 {
	switch {
	case t.Before(time.Unix(0, 0)):
		return -1
	case t.After(time.Unix(0, math.MaxInt64)):
		return math.MaxInt64
	}
	return t.UnixNano()
}

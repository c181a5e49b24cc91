package config

import (
	"fmt"
	"strconv"
	"strings"

	"github.com/dustin/go-humanize"
)

// ByteSize is a YAML size: a plain number of bytes or one with a unit,
// "64MiB", "1GiB", "500MB" (binary and decimal units both, as written).
type ByteSize uint64

// UnmarshalText accepts what ParseByteSize accepts.
func (b *ByteSize) UnmarshalText(text []byte) error {
	v, err := ParseByteSize(string(text))
	if err != nil {
		return badValueError{value: string(text), err: err}
	}
	*b = ByteSize(v)
	return nil
}

// MarshalText writes the size in binary units when it has a whole one.
func (b ByteSize) MarshalText() ([]byte, error) { return []byte(b.String()), nil }

func (b ByteSize) String() string {
	v := uint64(b)
	for _, u := range []struct {
		name  string
		bytes uint64
	}{{"GiB", 1 << 30}, {"MiB", 1 << 20}, {"KiB", 1 << 10}} {
		if v >= u.bytes && v%u.bytes == 0 {
			return strconv.FormatUint(v/u.bytes, 10) + u.name
		}
	}
	return strconv.FormatUint(v, 10)
}

// ParseByteSize parses "64MiB", "500MB" or a number of bytes.
func ParseByteSize(s string) (uint64, error) {
	s = strings.TrimSpace(s)
	v, err := humanize.ParseBytes(s)
	if err != nil || s == "" {
		return 0, fmt.Errorf("%q: want a size like 64MiB, 1GiB or a number of bytes", s)
	}
	return v, nil
}

// Disk is what the agent keeps free under state_dir, so that a full disk
// pauses recording loudly instead of stopping the agent (Pebble ends the
// process when a write-ahead log write fails).
type Disk struct {
	// MinFree: below this much free space on state_dir's filesystem the
	// agent stops writing records and leases (keeping them in memory, the
	// kernel's tables holding the rest) and raises the alarm; it resumes
	// by itself once there is this much free again. The audit log goes on
	// writing into this margin, so lookups stay answered.
	MinFree ByteSize `yaml:"min_free"`
	// Reserve is the size of the ballast file state_dir/reserve. Deleting
	// it frees room at once; the agent deletes it itself when it starts on
	// a full disk, so that the store can open, and makes it again when
	// there is min_free plus reserve free.
	Reserve ByteSize `yaml:"reserve"`
}

// Defaults and bounds of the disk fields. The floor of min_free is what
// the store needs to finish a write it started: a memtable flush and the
// next write-ahead log file (4 MiB each, preallocated).
const (
	DefaultDiskMinFree = 64 << 20
	DefaultDiskReserve = 32 << 20
	MinDiskMinFree     = 16 << 20
)

func (c *Config) validateDisk() []error {
	if c.Disk.MinFree < MinDiskMinFree {
		return []error{fmt.Errorf("disk.min_free: %s is below %s, the room the record store needs to finish a write", c.Disk.MinFree, ByteSize(MinDiskMinFree))}
	}
	return nil
}

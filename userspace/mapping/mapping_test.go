package mapping

import (
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"strings"
	"testing"
)

func pfx(s ...string) []netip.Prefix {
	out := make([]netip.Prefix, len(s))
	for i, v := range s {
		out[i] = netip.MustParsePrefix(v)
	}
	return out
}

func addr(s string) netip.Addr { return netip.MustParseAddr(s) }

func mustNew(t *testing.T, prefixes, pool []netip.Prefix, lo, hi, b uint16) *Mapping {
	t.Helper()
	m, err := New(prefixes, pool, lo, hi, b)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	return m
}

// demo is the demo topology's mapping: 256 subscribers on two addresses,
// so C = 128 and B = floor(64512/128) = 504.
func demo(t *testing.T) *Mapping {
	return mustNew(t, pfx("100.64.0.0/24"), pfx("198.51.100.10/31"), 1024, 65535, 0)
}

func TestDerivedParameters(t *testing.T) {
	tests := []struct {
		name              string
		prefixes, pool    []netip.Prefix
		lo, hi, blockSize uint16
		wantN, wantC      uint32
		wantB             uint16
		wantPool          int
	}{
		{"demo", pfx("100.64.0.0/24"), pfx("198.51.100.10/31"), 1024, 65535, 0, 256, 128, 504, 2},
		{"N not a multiple of M", pfx("100.64.0.0/30", "100.64.1.0/31"), pfx("198.51.100.10/31", "198.51.100.20/32"), 1024, 65535, 0, 6, 2, 32256, 3},
		{"N < M gives C=1", pfx("100.64.0.0/30"), pfx("198.51.100.0/29"), 1024, 65535, 0, 4, 1, 64512, 8},
		{"configured block size", pfx("100.64.0.0/24"), pfx("198.51.100.10/31"), 1024, 65535, 256, 256, 128, 256, 2},
		{"one port per subscriber", pfx("100.64.0.0/24"), pfx("198.51.100.1/32"), 1000, 1255, 0, 256, 256, 1, 1},
		{"masks host bits", pfx("100.64.0.9/29"), pfx("198.51.100.11/31"), 1, 65535, 0, 8, 4, 16383, 2},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m := mustNew(t, tt.prefixes, tt.pool, tt.lo, tt.hi, tt.blockSize)
			if m.Subscribers != tt.wantN || m.Ratio != tt.wantC || m.BlockSize != tt.wantB || len(m.Pool) != tt.wantPool {
				t.Fatalf("got N=%d C=%d B=%d M=%d, want N=%d C=%d B=%d M=%d",
					m.Subscribers, m.Ratio, m.BlockSize, len(m.Pool), tt.wantN, tt.wantC, tt.wantB, tt.wantPool)
			}
			for k, p := range m.Prefixes {
				if p != p.Masked() {
					t.Errorf("Prefixes[%d] = %s, not masked", k, p)
				}
			}
		})
	}
}

func TestForward(t *testing.T) {
	twoPrefixes := mustNew(t, pfx("100.64.0.0/30", "10.0.0.8/29"), pfx("198.51.100.10/31", "203.0.113.7/32"), 1024, 65535, 0)
	// 12 subscribers on 3 addresses: C=4, B=16128.
	configured := mustNew(t, pfx("100.64.0.0/24"), pfx("198.51.100.10/31"), 1024, 65535, 256)
	tests := []struct {
		name   string
		m      *Mapping
		inside string
		want   Block
	}{
		{"first subscriber", demo(t), "100.64.0.0", Block{0, addr("100.64.0.0"), addr("198.51.100.10"), 1024, 1527}},
		{"subscriber 7", demo(t), "100.64.0.7", Block{7, addr("100.64.0.7"), addr("198.51.100.10"), 4552, 5055}},
		{"last on first address", demo(t), "100.64.0.127", Block{127, addr("100.64.0.127"), addr("198.51.100.10"), 65032, 65535}},
		{"first on second address", demo(t), "100.64.0.128", Block{128, addr("100.64.0.128"), addr("198.51.100.11"), 1024, 1527}},
		{"broadcast counts", demo(t), "100.64.0.255", Block{255, addr("100.64.0.255"), addr("198.51.100.11"), 65032, 65535}},
		{"4in6 form", demo(t), "::ffff:100.64.0.7", Block{7, addr("100.64.0.7"), addr("198.51.100.10"), 4552, 5055}},
		{"second prefix continues numbering", twoPrefixes, "10.0.0.8", Block{4, addr("10.0.0.8"), addr("198.51.100.11"), 1024, 17151}},
		{"last of second prefix on third address", twoPrefixes, "10.0.0.15", Block{11, addr("10.0.0.15"), addr("203.0.113.7"), 49408, 65535}},
		{"configured block size", configured, "100.64.0.129", Block{129, addr("100.64.0.129"), addr("198.51.100.11"), 1280, 1535}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := tt.m.Forward(addr(tt.inside))
			if err != nil {
				t.Fatalf("Forward(%s): %v", tt.inside, err)
			}
			if got != tt.want {
				t.Fatalf("Forward(%s) = %+v, want %+v", tt.inside, got, tt.want)
			}
		})
	}
}

func TestForwardErrors(t *testing.T) {
	m := demo(t)
	for _, inside := range []string{"100.64.1.0", "100.63.255.255", "198.51.100.10", "2001:db8::1"} {
		if b, err := m.Forward(addr(inside)); !errors.Is(err, ErrNotSubscriber) {
			t.Errorf("Forward(%s) = %+v, %v; want ErrNotSubscriber", inside, b, err)
		}
	}
	if b, err := m.Block(m.Subscribers); !errors.Is(err, ErrNotSubscriber) {
		t.Errorf("Block(N) = %+v, %v; want ErrNotSubscriber", b, err)
	}
}

func TestReverse(t *testing.T) {
	// 256 subscribers on 2 addresses with the range 1024-65000: B=499,
	// C*B = 63872, so ports 64896-65000 belong to nobody.
	leftover := mustNew(t, pfx("100.64.0.0/24"), pfx("198.51.100.10/31"), 1024, 65000, 0)
	// 3 subscribers on 2 addresses: C=2, the second half of .11 is unused.
	sparse := mustNew(t, pfx("100.64.0.0/31", "100.64.0.4/32"), pfx("198.51.100.10/31"), 2000, 2999, 0)
	tests := []struct {
		name    string
		m       *Mapping
		public  string
		port    uint16
		want    uint32
		wantErr error
	}{
		{"first port of first block", demo(t), "198.51.100.10", 1024, 0, nil},
		{"last port of first block", demo(t), "198.51.100.10", 1527, 0, nil},
		{"first port of second block", demo(t), "198.51.100.10", 1528, 1, nil},
		{"example port 15123", demo(t), "198.51.100.10", 15123, 27, nil},
		{"last port of range", demo(t), "198.51.100.11", 65535, 255, nil},
		{"second address first port", demo(t), "198.51.100.11", 1024, 128, nil},
		{"4in6 public address", demo(t), "::ffff:198.51.100.11", 1024, 128, nil},
		{"port below range", demo(t), "198.51.100.10", 1023, 0, ErrPortNotInBlock},
		{"port zero", demo(t), "198.51.100.10", 0, 0, ErrPortNotInBlock},
		{"address not in pool", demo(t), "198.51.100.12", 2000, 0, ErrNotInPool},
		{"inside address is not public", demo(t), "100.64.0.1", 2000, 0, ErrNotInPool},
		{"last used port before leftover", leftover, "198.51.100.11", 64895, 255, nil},
		{"first leftover port", leftover, "198.51.100.11", 64896, 0, ErrPortNotInBlock},
		{"last leftover port", leftover, "198.51.100.10", 65000, 0, ErrPortNotInBlock},
		{"above range", leftover, "198.51.100.10", 65001, 0, ErrPortNotInBlock},
		{"second prefix subscriber", sparse, "198.51.100.11", 2000, 2, nil},
		{"unused block", sparse, "198.51.100.11", 2500, 0, ErrUnusedBlock},
		{"unused block last port", sparse, "198.51.100.11", 2999, 0, ErrUnusedBlock},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := tt.m.Reverse(addr(tt.public), tt.port)
			if tt.wantErr != nil {
				if !errors.Is(err, tt.wantErr) {
					t.Fatalf("Reverse(%s, %d) = %+v, %v; want %v", tt.public, tt.port, got, err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("Reverse(%s, %d): %v", tt.public, tt.port, err)
			}
			if got.Subscriber != tt.want {
				t.Fatalf("Reverse(%s, %d) = subscriber %d, want %d", tt.public, tt.port, got.Subscriber, tt.want)
			}
			if got.Public != addr(tt.public).Unmap() || tt.port < got.PortLo || tt.port > got.PortHi {
				t.Fatalf("Reverse(%s, %d) = %+v, block does not hold the queried port", tt.public, tt.port, got)
			}
		})
	}
}

func TestSentinelsDistinct(t *testing.T) {
	all := []error{ErrNotSubscriber, ErrNotInPool, ErrPortNotInBlock, ErrUnusedBlock}
	for i, a := range all {
		for j, b := range all {
			if i != j && errors.Is(a, b) {
				t.Errorf("%v matches %v", a, b)
			}
		}
	}
}

func TestNewErrors(t *testing.T) {
	tests := []struct {
		name           string
		prefixes, pool []netip.Prefix
		lo, hi, b      uint16
		wantField      string
	}{
		{"no prefixes", nil, pfx("198.51.100.1/32"), 1024, 65535, 0, "inside.prefixes"},
		{"IPv6 prefix", pfx("100.64.0.0/24", "2001:db8::/120"), pfx("198.51.100.1/32"), 1024, 65535, 0, "inside.prefixes[1]"},
		{"4in6 prefix", pfx("::ffff:100.64.0.0/120"), pfx("198.51.100.1/32"), 1024, 65535, 0, "inside.prefixes[0]"},
		{"invalid prefix", []netip.Prefix{{}}, pfx("198.51.100.1/32"), 1024, 65535, 0, "inside.prefixes[0]"},
		{"overlapping prefixes", pfx("100.64.0.0/24", "10.0.0.0/16", "100.64.0.128/25"), pfx("198.51.100.1/32"), 1024, 65535, 0, "inside.prefixes[2]"},
		{"too many subscribers", pfx("10.0.0.0/8", "100.64.0.0/32"), pfx("198.51.100.0/24"), 1024, 65535, 0, "inside.prefixes[1]"},
		{"no pool", pfx("100.64.0.0/24"), nil, 1024, 65535, 0, "outside.pool"},
		{"IPv6 pool", pfx("100.64.0.0/24"), pfx("2001:db8::1/128"), 1024, 65535, 0, "outside.pool[0]"},
		{"duplicate pool address", pfx("100.64.0.0/24"), pfx("198.51.100.10/31", "198.51.100.11/32"), 1024, 65535, 0, "outside.pool[1]"},
		{"pool overlaps inside", pfx("100.64.0.0/24"), pfx("198.51.100.10/32", "100.64.0.5/32"), 1024, 65535, 0, "outside.pool[1]"},
		{"pool too large", pfx("100.64.0.0/24"), pfx("128.0.0.0/1"), 1024, 65535, 0, "outside.pool[0]"},
		{"port 0", pfx("100.64.0.0/24"), pfx("198.51.100.1/32"), 0, 65535, 0, "ports.range"},
		{"lo above hi", pfx("100.64.0.0/24"), pfx("198.51.100.1/32"), 2000, 1999, 0, "ports.range"},
		{"range too small", pfx("100.64.0.0/24"), pfx("198.51.100.1/32"), 1024, 1278, 0, "ports.range"},
		{"block size too large", pfx("100.64.0.0/24"), pfx("198.51.100.10/31"), 1024, 65535, 505, "ports.block_size"},
		{"block size with too small range", pfx("100.64.0.0/24"), pfx("198.51.100.1/32"), 1024, 1100, 1, "ports.block_size"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m, err := New(tt.prefixes, tt.pool, tt.lo, tt.hi, tt.b)
			if err == nil {
				t.Fatalf("New succeeded: %+v", m)
			}
			if !strings.HasPrefix(err.Error(), tt.wantField+":") {
				t.Fatalf("error %q does not name %s", err, tt.wantField)
			}
		})
	}
}

// TestLargestConfiguration checks the N bound is inclusive and index
// arithmetic holds at the top of the range.
func TestLargestConfiguration(t *testing.T) {
	// 65536 subscribers per address cannot share 65535 ports ...
	if _, err := New(pfx("10.0.0.0/8"), pfx("198.51.100.0/24"), 1, 65535, 0); err == nil || !strings.HasPrefix(err.Error(), "ports.range:") {
		t.Fatalf("C=65536 on 65535 ports: err = %v, want a ports.range error", err)
	}
	// ... but 32768 can, with one port each.
	m := mustNew(t, pfx("10.0.0.0/8"), pfx("198.51.100.0/23"), 1, 65535, 0)
	if m.Subscribers != MaxSubscribers || m.Ratio != 32768 || m.BlockSize != 1 {
		t.Fatalf("N=%d C=%d B=%d", m.Subscribers, m.Ratio, m.BlockSize)
	}
	last := Block{MaxSubscribers - 1, addr("10.255.255.255"), addr("198.51.101.255"), 32768, 32768}
	if b, err := m.Forward(last.Inside); err != nil || b != last {
		t.Fatalf("Forward(%s) = %+v, %v; want %+v", last.Inside, b, err, last)
	}
	if b, err := m.Reverse(last.Public, last.PortLo); err != nil || b != last {
		t.Fatalf("Reverse = %+v, %v; want %+v", b, err, last)
	}
	if _, err := m.Reverse(last.Public, last.PortLo+1); !errors.Is(err, ErrPortNotInBlock) {
		t.Fatalf("port past the last block: %v", err)
	}
}

func TestHash(t *testing.T) {
	base := demo(t)
	h := base.Hash()

	// The hash is stored in epoch records, so its encoding must not drift:
	// rebuild the documented encoding by hand and compare.
	var enc []byte
	enc = append(enc, "blocknat mapping v1\x00"...)
	enc = binary.BigEndian.AppendUint32(enc, 1)
	enc = append(enc, 100, 64, 0, 0, 24)
	enc = binary.BigEndian.AppendUint32(enc, 2)
	enc = append(enc, 198, 51, 100, 10, 198, 51, 100, 11)
	enc = binary.BigEndian.AppendUint16(enc, 1024)
	enc = binary.BigEndian.AppendUint16(enc, 65535)
	enc = binary.BigEndian.AppendUint16(enc, 504)
	enc = binary.BigEndian.AppendUint32(enc, 128)
	if want := sha256.Sum256(enc); h != want {
		t.Fatalf("Hash = %x, want %x", h, want)
	}

	if again := demo(t).Hash(); again != h {
		t.Fatalf("equal configurations hash differently: %x vs %x", h, again)
	}
	// The same pool written address by address is the same mapping.
	if split := mustNew(t, pfx("100.64.0.0/24"), pfx("198.51.100.10/32", "198.51.100.11/32"), 1024, 65535, 0).Hash(); split != h {
		t.Fatalf("split pool hashes differently")
	}
	changed := map[string]*Mapping{
		"prefix":       mustNew(t, pfx("100.64.1.0/24"), pfx("198.51.100.10/31"), 1024, 65535, 0),
		"prefix order": mustNew(t, pfx("100.64.0.128/25", "100.64.0.0/25"), pfx("198.51.100.10/31"), 1024, 65535, 0),
		"pool order":   mustNew(t, pfx("100.64.0.0/24"), pfx("198.51.100.11/32", "198.51.100.10/32"), 1024, 65535, 0),
		"pool":         mustNew(t, pfx("100.64.0.0/24"), pfx("198.51.100.12/31"), 1024, 65535, 0),
		"lo":           mustNew(t, pfx("100.64.0.0/24"), pfx("198.51.100.10/31"), 1025, 65535, 0),
		"hi":           mustNew(t, pfx("100.64.0.0/24"), pfx("198.51.100.10/31"), 1024, 65534, 0),
		"block size":   mustNew(t, pfx("100.64.0.0/24"), pfx("198.51.100.10/31"), 1024, 65535, 500),
		"ratio":        mustNew(t, pfx("100.64.0.0/24"), pfx("198.51.100.10/31", "198.51.100.20/32"), 1024, 65535, 0),
	}
	for name, m := range changed {
		if m.Hash() == h {
			t.Errorf("changing the %s leaves the hash unchanged", name)
		}
	}
}

// randomMapping builds a random valid configuration: up to three disjoint
// inside prefixes, up to three pool prefixes, a random port range and
// sometimes a configured block size.
func randomMapping(rng *rand.Rand) (*Mapping, string) {
	for {
		var prefixes []netip.Prefix
		for k := range 1 + rng.IntN(3) {
			bits := 22 + rng.IntN(11) // /22 .. /32
			base := netip.AddrFrom4([4]byte{10, byte(k), byte(rng.IntN(4) * 4), 0})
			prefixes = append(prefixes, netip.PrefixFrom(base, bits).Masked())
		}
		var pool []netip.Prefix
		for k := range 1 + rng.IntN(3) {
			bits := 29 + rng.IntN(4) // /29 .. /32
			base := netip.AddrFrom4([4]byte{198, 51, byte(100 + k), byte(rng.IntN(256))})
			pool = append(pool, netip.PrefixFrom(base, bits).Masked())
		}
		lo := uint16(1 + rng.IntN(60000))
		hi := lo + uint16(rng.IntN(int(65535-lo)+1))
		if rng.IntN(3) == 0 { // a narrow range makes leftovers and tiny blocks likely
			hi = lo + uint16(rng.IntN(min(int(65535-lo), 3000)+1))
		}
		var blockSize uint16
		if rng.IntN(3) == 0 {
			blockSize = uint16(1 + rng.IntN(int(hi-lo)+1))
		}
		m, err := New(prefixes, pool, lo, hi, blockSize)
		if err == nil {
			return m, fmt.Sprintf("prefixes=%v pool=%v range=%d-%d block_size=%d", prefixes, pool, lo, hi, blockSize)
		}
	}
}

// TestRoundTripProperty checks on random configurations that every port of
// every block reverses to its subscriber, that no two blocks share a
// (public address, port), that blocks stay inside the range, and that every
// port Reverse refuses is refused for the reason the layout gives.
func TestRoundTripProperty(t *testing.T) {
	rng := rand.New(rand.NewPCG(7422, 1))
	for round := range 100 {
		m, desc := randomMapping(rng)
		// owned[j<<16|port] marks ports some block already holds.
		owned := make([]bool, len(m.Pool)<<16)
		for i := range m.Subscribers {
			b, err := m.Block(i)
			if err != nil {
				t.Fatalf("round %d (%s): Block(%d): %v", round, desc, i, err)
			}
			if fwd, err := m.Forward(b.Inside); err != nil || fwd != b {
				t.Fatalf("round %d (%s): Forward(%s) = %+v, %v; want %+v", round, desc, b.Inside, fwd, err, b)
			}
			if si, ok := m.SubscriberOf(b.Inside); !ok || si != i {
				t.Fatalf("round %d (%s): SubscriberOf(%s) = %d, %v", round, desc, b.Inside, si, ok)
			}
			if b.PortLo < m.PortLo || b.PortHi > m.PortHi || b.PortHi-b.PortLo+1 != m.BlockSize {
				t.Fatalf("round %d (%s): block %+v outside range or wrong size", round, desc, b)
			}
			j := int(m.poolIndex[b.Public])
			for p := uint32(b.PortLo); p <= uint32(b.PortHi); p++ {
				if owned[j<<16|int(p)] {
					t.Fatalf("round %d (%s): %s:%d is in two blocks", round, desc, b.Public, p)
				}
				owned[j<<16|int(p)] = true
				if rev, err := m.Reverse(b.Public, uint16(p)); err != nil || rev != b {
					t.Fatalf("round %d (%s): Reverse(%s, %d) = %+v, %v; want %+v", round, desc, b.Public, p, rev, err, b)
				}
			}
		}
		// Every other port of every pool address must be refused.
		usedEnd := uint32(m.PortLo) + m.Ratio*uint32(m.BlockSize)
		for j, public := range m.Pool {
			for p := uint32(max(1, int(m.PortLo)-2)); p <= min(65535, uint32(m.PortHi)+2); p++ {
				if owned[j<<16|int(p)] {
					continue
				}
				_, err := m.Reverse(public, uint16(p))
				want := ErrUnusedBlock
				if p < uint32(m.PortLo) || p >= usedEnd {
					want = ErrPortNotInBlock
				}
				if !errors.Is(err, want) {
					t.Fatalf("round %d (%s): Reverse(%s, %d) = %v, want %v", round, desc, public, p, err, want)
				}
			}
		}
	}
}

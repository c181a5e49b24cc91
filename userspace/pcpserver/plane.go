package pcpserver

import (
	"errors"
	"net/netip"

	"github.com/blocknat/blocknat/userspace/pcp"
)

// IANA protocol numbers of the two protocols a mapping may be for.
const (
	ProtoTCP = 6
	ProtoUDP = 17
)

// Key is a mapping's internal endpoint.
type Key struct {
	Inside netip.Addr
	Port   uint16
	Proto  uint8 // ProtoTCP or ProtoUDP
}

// MapRequest asks the data plane for an explicit mapping.
type MapRequest struct {
	Key
	Subscriber uint32
	// Suggested is the suggested external port, 0 for none; the plane
	// tries it first if it lies in the subscriber's own block.
	Suggested uint16
	// Required is PREFER_FAILURE: the suggested port or nothing.
	Required bool
	// Open is MAP: inbound from any remote reaches the mapping whatever
	// the filtering mode. PEER asks with Open false.
	Open bool
}

// MapResult is the mapping the plane made or took over.
type MapResult struct {
	Public netip.Addr
	Port   uint16
	// Adopted: an implicit (traffic-made) mapping already existed and was
	// taken over, so ending PCP's hold must leave it to the idle timeouts
	// rather than cut the subscriber's running flows.
	Adopted bool
}

// Errors Plane.Map returns, wrapped or not.
var (
	// ErrBlockFull: no free port in the subscriber's block.
	ErrBlockFull = errors.New("no free port in the subscriber's block")
	// ErrSuggestedTaken: Required, and the suggested port is not
	// available.
	ErrSuggestedTaken = errors.New("the suggested port is not available")
	// ErrNotOwnBlock: an implicit mapping exists for the key but in an
	// overflow block, outside the subscriber's own block, where PCP may
	// not hand out ports (an overflow block goes back to the pool).
	ErrNotOwnBlock = errors.New("the implicit mapping lies outside the subscriber's own block")
)

// ErrTableFull is what Plane.Put wraps when the pinned table has no room.
var ErrTableFull = errors.New("the PCP table is full")

// Entry is one mapping PCP or NAT-PMP holds, as the pinned table keeps it.
type Entry struct {
	Key
	Subscriber uint32
	Public     netip.Addr
	Port       uint16
	Nonce      pcp.Nonce // zero for NAT-PMP
	NATPMP     bool      // made by a NAT-PMP request
	Open       bool
	Adopted    bool
	Expires    uint64 // CLOCK_MONOTONIC ns
}

// Plane is the data plane's side of PCP, implemented over the kernel
// tables.
type Plane interface {
	Map(MapRequest) (MapResult, error)
	// Unmap ends PCP's hold on e. With drop the mapping's kernel entries
	// go too (only if they still map to e.Public:e.Port); without it the
	// mapping stays as an implicit one, under the NAT's idle timeouts.
	Unmap(e Entry, drop bool) error
	// Entries is the pinned table: it survives an agent restart.
	Entries() ([]Entry, error)
	// Put inserts or replaces; it returns an error wrapping ErrTableFull
	// when the table is full.
	Put(Entry) error
	Delete(Key) error
	// EpochStart is CLOCK_MONOTONIC ns when the PCP state began. It is
	// kept with the pinned tables, so it survives a restart but not a
	// detach, and the epoch a client sees goes back exactly when the
	// mappings it holds were lost (RFC 6887 §8.5).
	EpochStart() (uint64, error)
}

// Clock is CLOCK_MONOTONIC, the clock of Entry.Expires and EpochStart.
type Clock interface {
	MonoNow() uint64 // ns
}

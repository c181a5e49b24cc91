package store

import (
	"encoding/binary"
	"fmt"
	"math"
	"time"
)

// Keyspace prefixes; see the package documentation for the layout.
const (
	prefixRecord     = 'r'
	prefixInside     = 's'
	prefixOpen       = 'o'
	prefixOpenInside = 'p'
	prefixEpoch      = 'e'
	prefixMeta       = 'm'
	prefixCanary     = 'c'
	prefixOutbox     = 'q' // the replication queue

	// The DHCP lease keyspaces are upper case, so they sort together below
	// every block-record keyspace and can be measured and compacted as one
	// span without touching the records.
	prefixLease        = 'L'
	prefixLeaseMAC     = 'M'
	prefixLeaseHeld    = 'N'
	prefixLeaseHeldMAC = 'O'
)

// Meta keys.
var (
	metaSwept    = []byte("m swept")    // u32: oldest retained day partition
	metaWidth    = []byte("m width")    // u32: widest block ever stored
	metaRotation = []byte("m rotation") // u64: counter written to force a version edit after a reopen
)

const nsPerDay = int64(24 * time.Hour)

// timeStep is the resolution of a block record's times (layout 3). The
// kernel's clock gives nanoseconds, but an investigator asks to the second
// (a time copied from a server log) with a tolerance, and nanoseconds cost
// about 11 incompressible bytes a record. Apply rounds outward, Start down
// and End up, so a stored interval always contains the true one and no
// lookup can miss a holder; a lookup gains one only when two holders of a
// block were less than a step apart, and then both answer.
const timeStep = int64(time.Millisecond)

// maxRecordNS is the latest time a record can hold: its End rounded up
// must still be Unix nanoseconds.
const maxRecordNS = math.MaxInt64 - timeStep

// floorStep rounds a non-negative Unix nanosecond time down to timeStep.
func floorStep(ns int64) int64 { return ns - ns%timeStep }

// ceilStep rounds a non-negative Unix nanosecond time at most maxRecordNS
// up to timeStep.
func ceilStep(ns int64) int64 {
	if r := ns % timeStep; r != 0 {
		return ns + timeStep - r
	}
	return ns
}

const (
	recordKeyLen     = 1 + 4 + 4 + 2 + 4 + recordStartLen
	recordStartLen   = 6 // start in timeSteps: 2^48 ms is 8900 years
	insideKeyLen     = 1 + 4 + 4 + 4 + 2 + 4
	openKeyLen       = 1 + 4 + 2 + 8 + 4
	openInsideKeyLen = 1 + 4 + 8 + 4 + 2 + 4
	epochKeyLen      = 1 + 8 + 4
	canaryKeyLen     = 1 + 8 + 4
)

// Value format versions, so that a later layout can be read beside this one.
const (
	valueVersionRecord   = 1 // an open record (o); and a closed one (r) of layout 1
	valueVersionClosedV2 = 2 // a closed record (r) of layout 2
	valueVersionClosed   = 3 // a closed record (r) of layout 3
	valueVersionEpoch    = 1
	valueVersionCanary   = 1
	valueVersionLease    = 1
	valueVersionHeld     = 1
)

// dayOf returns the UTC day number of a non-negative Unix nanosecond time.
func dayOf(ns int64) uint32 { return uint32(ns / nsPerDay) }

func dayStart(day uint32) time.Time { return time.Unix(int64(day)*86400, 0).UTC() }

// maxDay is the day of the largest time that Unix nanoseconds can express.
const maxDay = uint32(math.MaxInt64 / nsPerDay)

// recordID is what makes a record unique: the block it held, when it began
// and who held it.
type recordID struct {
	public [4]byte
	portLo uint16
	start  int64
	sub    uint32
}

// openID is how a release finds the record it closes.
type openID struct {
	sub    uint32
	public [4]byte
	portLo uint16
}

func (id recordID) open() openID { return openID{sub: id.sub, public: id.public, portLo: id.portLo} }

// dayPrefix is the first key of a day partition of keyspace p.
func dayPrefix(p byte, day uint32) []byte {
	k := make([]byte, 5, 16)
	k[0] = p
	binary.BigEndian.PutUint32(k[1:], day)
	return k
}

// blockPrefix is r<day><public><portLo>.
func blockPrefix(day uint32, public [4]byte, portLo uint16) []byte {
	k := make([]byte, 0, 11)
	k = append(k, prefixRecord)
	k = binary.BigEndian.AppendUint32(k, day)
	k = append(k, public[:]...)
	return binary.BigEndian.AppendUint16(k, portLo)
}

// subscriberBlockPrefix is r<day><public><portLo><subscriber>: the records
// one subscriber held of one block on one day, in order of start.
func subscriberBlockPrefix(day uint32, public [4]byte, portLo uint16, sub uint32) []byte {
	return binary.BigEndian.AppendUint32(blockPrefix(day, public, portLo), sub)
}

// recordKey is built in one allocation: Apply writes one per record and
// day.
func recordKey(day uint32, id recordID) []byte {
	k := make([]byte, 0, recordKeyLen)
	k = append(k, prefixRecord)
	k = binary.BigEndian.AppendUint32(k, day)
	k = append(k, id.public[:]...)
	k = binary.BigEndian.AppendUint16(k, id.portLo)
	k = binary.BigEndian.AppendUint32(k, id.sub)
	return appendRecordStart(k, id.start)
}

// appendRecordStart appends a record key's start: Unix nanoseconds rounded
// down to timeSteps, as a 48-bit big-endian count.
func appendRecordStart(k []byte, ns int64) []byte {
	steps := uint64(ns / timeStep)
	return append(k, byte(steps>>40), byte(steps>>32), byte(steps>>24), byte(steps>>16), byte(steps>>8), byte(steps))
}

// recordStartBound is a subscriber's block prefix followed by the first
// start after ns: the exclusive upper bound of the records that started
// at or before ns, and the lower bound of those that started after it.
func recordStartBound(prefix []byte, ns int64) []byte {
	return appendRecordStart(append([]byte(nil), prefix...), floorStep(ns)+timeStep)
}

func parseRecordKey(k []byte) (day uint32, id recordID, err error) {
	if len(k) != recordKeyLen || k[0] != prefixRecord {
		return 0, id, fmt.Errorf("record key %x: bad length or prefix: %w", k, ErrCorrupt)
	}
	day = binary.BigEndian.Uint32(k[1:])
	copy(id.public[:], k[5:9])
	id.portLo = binary.BigEndian.Uint16(k[9:])
	id.sub = binary.BigEndian.Uint32(k[11:])
	var steps uint64
	for _, b := range k[15:] {
		steps = steps<<8 | uint64(b)
	}
	if steps > uint64(maxRecordNS/timeStep) {
		return 0, id, fmt.Errorf("record key %x: start past the last time a record holds: %w", k, ErrCorrupt)
	}
	id.start = int64(steps) * timeStep
	return day, id, nil
}

// insideEntry is what an s key names: the subscriber and block whose
// records of that day partition hold the inside address.
type insideEntry struct {
	public [4]byte
	portLo uint16
	sub    uint32
}

func insideKey(day uint32, inside [4]byte, e insideEntry) []byte {
	k := make([]byte, 0, insideKeyLen)
	k = append(k, prefixInside)
	k = binary.BigEndian.AppendUint32(k, day)
	k = append(k, inside[:]...)
	k = append(k, e.public[:]...)
	k = binary.BigEndian.AppendUint16(k, e.portLo)
	return binary.BigEndian.AppendUint32(k, e.sub)
}

func (id recordID) insideEntry() insideEntry {
	return insideEntry{public: id.public, portLo: id.portLo, sub: id.sub}
}

// insidePrefix is s<day><inside>.
func insidePrefix(day uint32, inside [4]byte) []byte {
	k := dayPrefix(prefixInside, day)
	return append(k, inside[:]...)
}

func parseInsideKey(k []byte) (day uint32, e insideEntry, err error) {
	if len(k) != insideKeyLen || k[0] != prefixInside {
		return 0, e, fmt.Errorf("inside key %x: bad length or prefix: %w", k, ErrCorrupt)
	}
	day = binary.BigEndian.Uint32(k[1:])
	copy(e.public[:], k[9:13])
	e.portLo = binary.BigEndian.Uint16(k[13:])
	e.sub = binary.BigEndian.Uint32(k[15:])
	return day, e, nil
}

func openKey(id recordID) []byte {
	k := make([]byte, 0, openKeyLen)
	k = append(k, prefixOpen)
	k = append(k, id.public[:]...)
	k = binary.BigEndian.AppendUint16(k, id.portLo)
	k = binary.BigEndian.AppendUint64(k, uint64(id.start))
	return binary.BigEndian.AppendUint32(k, id.sub)
}

// openBlockPrefix is o<public><portLo>.
func openBlockPrefix(public [4]byte, portLo uint16) []byte {
	k := make([]byte, 0, 7)
	k = append(k, prefixOpen)
	k = append(k, public[:]...)
	return binary.BigEndian.AppendUint16(k, portLo)
}

func parseOpenKey(k []byte) (id recordID, err error) {
	if len(k) != openKeyLen || k[0] != prefixOpen {
		return id, fmt.Errorf("open key %x: bad length or prefix: %w", k, ErrCorrupt)
	}
	copy(id.public[:], k[1:5])
	id.portLo = binary.BigEndian.Uint16(k[5:])
	id.start = int64(binary.BigEndian.Uint64(k[7:]))
	id.sub = binary.BigEndian.Uint32(k[15:])
	return id, nil
}

func openInsideKey(inside [4]byte, id recordID) []byte {
	k := make([]byte, 0, openInsideKeyLen)
	k = append(k, prefixOpenInside)
	k = append(k, inside[:]...)
	k = binary.BigEndian.AppendUint64(k, uint64(id.start))
	k = append(k, id.public[:]...)
	k = binary.BigEndian.AppendUint16(k, id.portLo)
	return binary.BigEndian.AppendUint32(k, id.sub)
}

func parseOpenInsideKey(k []byte) (id recordID, err error) {
	if len(k) != openInsideKeyLen || k[0] != prefixOpenInside {
		return id, fmt.Errorf("open inside key %x: bad length or prefix: %w", k, ErrCorrupt)
	}
	id.start = int64(binary.BigEndian.Uint64(k[5:]))
	copy(id.public[:], k[13:17])
	id.portLo = binary.BigEndian.Uint16(k[17:])
	id.sub = binary.BigEndian.Uint32(k[19:])
	return id, nil
}

func epochKey(startNS int64, id uint32) []byte {
	k := make([]byte, 0, epochKeyLen)
	k = append(k, prefixEpoch)
	k = binary.BigEndian.AppendUint64(k, uint64(startNS))
	return binary.BigEndian.AppendUint32(k, id)
}

// keyAfter returns the smallest key greater than every key with prefix p, for
// use as an exclusive upper bound.
func keyAfter(p []byte) []byte {
	k := append([]byte(nil), p...)
	for i := len(k) - 1; i >= 0; i-- {
		if k[i] != 0xff {
			k[i]++
			return k[:i+1]
		}
	}
	return nil // p is all 0xff: no upper bound
}

// encodeOpenValue writes the part of an open record that is not in its
// key: the version, the inside address, port_hi, then uvarints for the
// epoch and the flags.
func encodeOpenValue(dst []byte, r *Record, inside [4]byte) []byte {
	dst = append(dst, valueVersionRecord)
	dst = append(dst, inside[:]...)
	dst = binary.BigEndian.AppendUint16(dst, r.PortHi)
	dst = binary.AppendUvarint(dst, uint64(r.Epoch))
	return binary.AppendUvarint(dst, uint64(r.Flags))
}

// encodeClosedValue writes the part of a closed record that is not in its
// key. The fields a subscriber's records of a block share (inside address,
// port_hi, epoch, flags) come first and End, as timeSteps since Start,
// last, so that block compression finds the shared run between
// neighbouring records whole. Start and End are rounded outward to
// timeSteps if they are not already.
func encodeClosedValue(dst []byte, r *Record, inside [4]byte) []byte {
	dst = append(dst, valueVersionClosed)
	dst = append(dst, inside[:]...)
	dst = binary.BigEndian.AppendUint16(dst, r.PortHi)
	dst = binary.AppendUvarint(dst, uint64(r.Epoch))
	dst = binary.AppendUvarint(dst, uint64(r.Flags))
	return binary.AppendUvarint(dst, uint64((ceilStep(r.End.UnixNano())-floorStep(r.Start.UnixNano()))/timeStep))
}

// decodeValue rebuilds a record from its identity and its value: an open
// record's (o) when closed is false, a closed record's (r) when it is true.
func decodeValue(v []byte, id recordID, closed bool) (Record, error) {
	r := Record{
		Subscriber: id.sub,
		Public:     addrFrom4(id.public),
		PortLo:     id.portLo,
		Start:      time.Unix(0, id.start).UTC(),
	}
	bad := func(what string) (Record, error) {
		return Record{}, fmt.Errorf("record value %x: %s: %w", v, what, ErrCorrupt)
	}
	version := byte(valueVersionRecord)
	if closed {
		version = valueVersionClosed
	}
	if len(v) < 7 {
		return bad("short")
	}
	if v[0] != version {
		return bad("unknown version")
	}
	r.Inside = addrFrom4([4]byte(v[1:5]))
	r.PortHi = binary.BigEndian.Uint16(v[5:])
	rest := v[7:]
	var fields [3]uint64 // epoch, flags, and for a closed record End-Start
	n := 2
	if closed {
		n = 3
	}
	for i := range n {
		x, m := binary.Uvarint(rest)
		if m <= 0 {
			return bad([3]string{"epoch", "flags", "end"}[i])
		}
		fields[i], rest = x, rest[m:]
	}
	if fields[0] > 0xffffffff {
		return bad("epoch")
	}
	if fields[1] > 0xffffffff {
		return bad("flags")
	}
	if len(rest) != 0 {
		return bad("trailing bytes")
	}
	r.Epoch = uint32(fields[0])
	r.Flags = Flags(fields[1])
	if closed {
		if fields[2] > uint64(maxRecordNS-id.start)/uint64(timeStep) {
			return bad("end")
		}
		r.End = time.Unix(0, id.start+int64(fields[2])*timeStep).UTC()
	}
	return r, nil
}

package store

import (
	"encoding/binary"
	"fmt"
	"time"
)

// leaseID is what makes a closed lease unique: the address, when it was
// granted and to which device. The MAC is in it because two devices can
// hold one address with the same start (a lease ended by a grant to another
// device in the same nanosecond).
type leaseID struct {
	inside [4]byte
	start  int64
	mac    string // the raw bytes; a string so that the ID is comparable
}

// leaseInsidePrefix is L<day><inside>.
func leaseInsidePrefix(day uint32, inside [4]byte) []byte {
	return append(dayPrefix(prefixLease, day), inside[:]...)
}

// leaseKey is L<day><inside><start><mac len><mac>.
func leaseKey(day uint32, id leaseID) []byte {
	k := make([]byte, 0, 1+4+4+8+1+len(id.mac))
	k = append(k, prefixLease)
	k = binary.BigEndian.AppendUint32(k, day)
	k = append(k, id.inside[:]...)
	k = binary.BigEndian.AppendUint64(k, uint64(id.start))
	k = append(k, byte(len(id.mac)))
	return append(k, id.mac...)
}

func parseLeaseKey(k []byte) (day uint32, id leaseID, err error) {
	const fixed = 1 + 4 + 4 + 8 + 1
	if len(k) < fixed+1 || k[0] != prefixLease || len(k) != fixed+int(k[fixed-1]) {
		return 0, id, fmt.Errorf("lease key %x: bad length or prefix: %w", k, ErrCorrupt)
	}
	day = binary.BigEndian.Uint32(k[1:])
	copy(id.inside[:], k[5:9])
	id.start = int64(binary.BigEndian.Uint64(k[9:]))
	id.mac = string(k[fixed:])
	return day, id, nil
}

// macPart is <mac len><mac>: the length first, so that the keys of one MAC
// are never a prefix range of a longer one.
func macPart(dst []byte, mac string) []byte {
	dst = append(dst, byte(len(mac)))
	return append(dst, mac...)
}

// leaseMACPrefix is M<day><mac len><mac>.
func leaseMACPrefix(day uint32, mac string) []byte {
	return macPart(dayPrefix(prefixLeaseMAC, day), mac)
}

// leaseMACKey is M<day><mac len><mac><start><inside>.
func leaseMACKey(day uint32, id leaseID) []byte {
	k := leaseMACPrefix(day, id.mac)
	k = binary.BigEndian.AppendUint64(k, uint64(id.start))
	return append(k, id.inside[:]...)
}

func parseLeaseMACKey(k []byte) (day uint32, id leaseID, err error) {
	if len(k) < 1+4+1+1+8+4 || k[0] != prefixLeaseMAC || len(k) != 1+4+1+int(k[5])+8+4 {
		return 0, id, fmt.Errorf("lease mac key %x: bad length or prefix: %w", k, ErrCorrupt)
	}
	day = binary.BigEndian.Uint32(k[1:])
	n := int(k[5])
	id.mac = string(k[6 : 6+n])
	id.start = int64(binary.BigEndian.Uint64(k[6+n:]))
	copy(id.inside[:], k[6+n+8:])
	return day, id, nil
}

// heldKey is N<inside>: one current lease per address.
func heldKey(inside [4]byte) []byte { return append([]byte{prefixLeaseHeld}, inside[:]...) }

func parseHeldKey(k []byte) ([4]byte, error) {
	if len(k) != 1+4 || k[0] != prefixLeaseHeld {
		return [4]byte{}, fmt.Errorf("held lease key %x: bad length or prefix: %w", k, ErrCorrupt)
	}
	return [4]byte(k[1:5]), nil
}

// heldMACPrefix is O<mac len><mac>.
func heldMACPrefix(mac string) []byte { return macPart([]byte{prefixLeaseHeldMAC}, mac) }

// heldMACKey is O<mac len><mac><inside>.
func heldMACKey(mac string, inside [4]byte) []byte { return append(heldMACPrefix(mac), inside[:]...) }

func parseHeldMACKey(k []byte) ([4]byte, error) {
	if len(k) < 1+1+1+4 || k[0] != prefixLeaseHeldMAC || len(k) != 1+1+int(k[1])+4 {
		return [4]byte{}, fmt.Errorf("held lease mac key %x: bad length or prefix: %w", k, ErrCorrupt)
	}
	return [4]byte(k[len(k)-4:]), nil
}

// heldLease is the current lease of one address, as kept in N and in
// memory. Its byte fields are strings so that a copy never shares memory
// with a caller's slice.
type heldLease struct {
	start    int64
	updated  int64 // Time of the newest event applied to it
	expires  int64 // 0: infinite
	mac      string
	clientID string
	hostname string
	source   string
}

func (h *heldLease) id(inside [4]byte) leaseID {
	return leaseID{inside: inside, start: h.start, mac: h.mac}
}

func appendString(dst []byte, s string) []byte {
	dst = binary.AppendUvarint(dst, uint64(len(s)))
	return append(dst, s...)
}

func readString(rest []byte) (string, []byte, bool) {
	n, w := binary.Uvarint(rest)
	if w <= 0 || n > uint64(len(rest)-w) {
		return "", nil, false
	}
	return string(rest[w : w+int(n)]), rest[w+int(n):], true
}

// encodeHeld writes a current lease: version, start u64, updated u64,
// expires u64 (0: infinite), then the MAC, client id, hostname and source,
// each as a uvarint length and its bytes.
func encodeHeld(h *heldLease) []byte {
	v := make([]byte, 0, 1+3*8+4+len(h.mac)+len(h.clientID)+len(h.hostname)+len(h.source))
	v = append(v, valueVersionHeld)
	v = binary.BigEndian.AppendUint64(v, uint64(h.start))
	v = binary.BigEndian.AppendUint64(v, uint64(h.updated))
	v = binary.BigEndian.AppendUint64(v, uint64(h.expires))
	for _, s := range []string{h.mac, h.clientID, h.hostname, h.source} {
		v = appendString(v, s)
	}
	return v
}

func decodeHeld(v []byte) (heldLease, error) {
	var h heldLease
	bad := func(what string) (heldLease, error) {
		return heldLease{}, fmt.Errorf("held lease value %x: %s: %w", v, what, ErrCorrupt)
	}
	if len(v) < 1+3*8 {
		return bad("short")
	}
	if v[0] != valueVersionHeld {
		return bad("unknown version")
	}
	h.start = int64(binary.BigEndian.Uint64(v[1:]))
	h.updated = int64(binary.BigEndian.Uint64(v[9:]))
	h.expires = int64(binary.BigEndian.Uint64(v[17:]))
	rest := v[25:]
	for _, dst := range []*string{&h.mac, &h.clientID, &h.hostname, &h.source} {
		var ok bool
		if *dst, rest, ok = readString(rest); !ok {
			return bad("strings")
		}
	}
	if len(rest) != 0 || h.mac == "" || len(h.mac) > maxMACLen {
		return bad("trailing bytes or mac")
	}
	return h, nil
}

// encodeLease writes the part of a closed lease that is not in its key:
// version, uvarint End-Start, the client id, then the hostname and source
// as a uvarint length and its bytes. The client id is a uvarint n: 0 when
// it is hardware type 1 followed by the MAC (RFC 2132 §9.14, what most
// clients send), else n-1 bytes follow. The MAC is random and so
// incompressible; not writing it twice saves a tenth of a lease.
func encodeLease(h *heldLease, endNS int64) []byte {
	v := make([]byte, 0, 1+10+3+len(h.clientID)+len(h.hostname)+len(h.source))
	v = append(v, valueVersionLease)
	v = binary.AppendUvarint(v, uint64(endNS-h.start))
	if len(h.clientID) == 1+len(h.mac) && h.clientID[0] == 1 && h.clientID[1:] == h.mac {
		v = append(v, 0)
	} else {
		v = binary.AppendUvarint(v, uint64(len(h.clientID))+1)
		v = append(v, h.clientID...)
	}
	for _, s := range []string{h.hostname, h.source} {
		v = appendString(v, s)
	}
	return v
}

func decodeLease(v []byte, id leaseID) (Lease, error) {
	bad := func(what string) (Lease, error) {
		return Lease{}, fmt.Errorf("lease value %x: %s: %w", v, what, ErrCorrupt)
	}
	if len(v) < 1+1+1+2 {
		return bad("short")
	}
	if v[0] != valueVersionLease {
		return bad("unknown version")
	}
	d, n := binary.Uvarint(v[1:])
	if n <= 0 || d > uint64(1<<63-1-id.start) {
		return bad("end")
	}
	rest := v[1+n:]
	var clientID, hostname, source string
	switch c, w := binary.Uvarint(rest); {
	case w <= 0 || c > uint64(len(rest)-w)+1:
		return bad("client id")
	case c == 0:
		clientID, rest = "\x01"+id.mac, rest[w:]
	default:
		clientID, rest = string(rest[w:w+int(c-1)]), rest[w+int(c-1):]
	}
	for _, dst := range []*string{&hostname, &source} {
		var ok bool
		if *dst, rest, ok = readString(rest); !ok {
			return bad("strings")
		}
	}
	if len(rest) != 0 {
		return bad("trailing bytes")
	}
	return Lease{
		Inside:   addrFrom4(id.inside),
		MAC:      []byte(id.mac),
		ClientID: bytesOrNil(clientID),
		Hostname: hostname,
		Start:    time.Unix(0, id.start).UTC(),
		End:      time.Unix(0, id.start+int64(d)).UTC(),
		Ended:    true,
		Source:   source,
	}, nil
}

// lease returns the current lease as a read at now sees it: one whose
// expiry has passed is ended there, whether or not it was finalised yet.
func (h *heldLease) lease(inside [4]byte, now int64) Lease {
	l := Lease{
		Inside:   addrFrom4(inside),
		MAC:      []byte(h.mac),
		ClientID: bytesOrNil(h.clientID),
		Hostname: h.hostname,
		Start:    time.Unix(0, h.start).UTC(),
		Ended:    h.expires != 0 && h.expires < now,
		Source:   h.source,
	}
	if h.expires != 0 {
		l.End = time.Unix(0, h.expires).UTC()
	}
	return l
}

func bytesOrNil(s string) []byte {
	if s == "" {
		return nil
	}
	return []byte(s)
}

package pcpserver

import (
	"encoding/binary"
	"fmt"
	"net/netip"
)

// The tests build requests and read responses from the RFCs' byte
// layouts (RFC 6887 §7.1, §7.2, §7.3, §11.1, §12.1, §14.1; RFC 6886 §3.2,
// §3.3), not with userspace/pcp, so that a codec bug cannot hide a server
// bug.

func addr16(a netip.Addr) []byte {
	b := a.As16() // IPv4 comes out IPv4-mapped, as PCP carries it
	return b[:]
}

type mapReq struct {
	op         byte // 1 MAP, 2 PEER
	lifetime   uint32
	client     netip.Addr
	nonce      [12]byte
	proto      byte
	intPort    uint16
	extPort    uint16
	extIP      netip.Addr // zero: ::
	remotePort uint16     // PEER
	remoteIP   netip.Addr // PEER
	options    [][]byte
}

func (r mapReq) bytes() []byte {
	b := make([]byte, 24)
	b[0], b[1] = 2, r.op
	binary.BigEndian.PutUint32(b[4:], r.lifetime)
	copy(b[8:], addr16(r.client))
	body := make([]byte, 36)
	copy(body, r.nonce[:])
	body[12] = r.proto
	binary.BigEndian.PutUint16(body[16:], r.intPort)
	binary.BigEndian.PutUint16(body[18:], r.extPort)
	if r.extIP.IsValid() {
		copy(body[20:], addr16(r.extIP))
	}
	b = append(b, body...)
	if r.op == 2 {
		peer := make([]byte, 20)
		binary.BigEndian.PutUint16(peer[0:], r.remotePort)
		copy(peer[4:], addr16(r.remoteIP))
		b = append(b, peer...)
	}
	for _, o := range r.options {
		b = append(b, o...)
	}
	return b
}

func announceReq(client netip.Addr) []byte {
	b := make([]byte, 24)
	b[0] = 2
	copy(b[8:], addr16(client))
	return b
}

var optPreferFailure = []byte{2, 0, 0, 0}

func optThirdParty(a netip.Addr) []byte { return append([]byte{1, 0, 0, 16}, addr16(a)...) }

func optFilter(prefix byte, port uint16, a netip.Addr) []byte {
	b := []byte{3, 0, 0, 20, 0, prefix, byte(port >> 8), byte(port)}
	return append(b, addr16(a)...)
}

func natpmpPublicReq() []byte { return []byte{0, 0} }

func natpmpMapReq(op byte, intPort, extPort uint16, lifetime uint32) []byte {
	b := make([]byte, 12)
	b[1] = op
	binary.BigEndian.PutUint16(b[4:], intPort)
	binary.BigEndian.PutUint16(b[6:], extPort)
	binary.BigEndian.PutUint32(b[8:], lifetime)
	return b
}

// response is a decoded answer, PCP or NAT-PMP.
type response struct {
	raw      []byte
	version  byte
	opcode   byte // with the R bit
	result   uint16
	lifetime uint32
	epoch    uint32

	// PCP MAP and PEER
	nonce      [12]byte
	proto      byte
	intPort    uint16
	extPort    uint16
	extIP      netip.Addr
	remotePort uint16
	remoteIP   netip.Addr
	options    []byte

	// NAT-PMP public address
	public netip.Addr
}

func getAddr16(b []byte) netip.Addr { return netip.AddrFrom16([16]byte(b[:16])).Unmap() }

func decodeResponse(b []byte) (response, error) {
	r := response{raw: append([]byte(nil), b...)}
	if len(b) < 8 {
		return r, fmt.Errorf("%d octets, no response is that short", len(b))
	}
	r.version, r.opcode = b[0], b[1]
	if r.opcode&0x80 == 0 {
		return r, fmt.Errorf("R bit clear")
	}
	switch r.version {
	case 0:
		r.result = binary.BigEndian.Uint16(b[2:])
		r.epoch = binary.BigEndian.Uint32(b[4:])
		switch {
		case r.opcode == 128 && len(b) == 12:
			r.public = netip.AddrFrom4([4]byte(b[8:12]))
		case (r.opcode == 129 || r.opcode == 130) && len(b) == 16:
			r.intPort = binary.BigEndian.Uint16(b[8:])
			r.extPort = binary.BigEndian.Uint16(b[10:])
			r.lifetime = binary.BigEndian.Uint32(b[12:])
		case len(b) == 8:
		default:
			return r, fmt.Errorf("NAT-PMP opcode %d with %d octets", r.opcode, len(b))
		}
		return r, nil
	case 2:
	default:
		return r, fmt.Errorf("version %d", r.version)
	}
	if len(b) < 24 || len(b)%4 != 0 {
		return r, fmt.Errorf("PCP response of %d octets", len(b))
	}
	r.result = uint16(b[3])
	r.lifetime = binary.BigEndian.Uint32(b[4:])
	r.epoch = binary.BigEndian.Uint32(b[8:])
	rest := b[24:]
	op := r.opcode &^ 0x80
	if (op == 1 || op == 2) && len(rest) >= 36 {
		copy(r.nonce[:], rest[:12])
		r.proto = rest[12]
		r.intPort = binary.BigEndian.Uint16(rest[16:])
		r.extPort = binary.BigEndian.Uint16(rest[18:])
		r.extIP = getAddr16(rest[20:36])
		rest = rest[36:]
		if op == 2 {
			if len(rest) < 20 {
				return r, fmt.Errorf("PEER response without the remote peer")
			}
			r.remotePort = binary.BigEndian.Uint16(rest[0:])
			r.remoteIP = getAddr16(rest[4:20])
			rest = rest[20:]
		}
	}
	r.options = rest
	return r, nil
}

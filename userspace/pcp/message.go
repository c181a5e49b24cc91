package pcp

import (
	"encoding/binary"
	"net/netip"
)

// Request is a request Decode accepted: *PCPRequest,
// *PublicAddressRequest or *MappingRequest. Encode gives the octets back,
// with reserved fields and padding zeroed as the RFCs send them.
type Request interface {
	Encode() []byte
	isRequest()
}

// Response is a message a server sends: *PCPResponse,
// *PublicAddressResponse, *MappingResponse or *NATPMPErrorResponse.
type Response interface {
	Encode() []byte
	isResponse()
}

// Nonce is a MAP or PEER mapping nonce (RFC 6887 §11.1): the client picks
// it, and a server refreshes or deletes a mapping only for the nonce that
// created it.
type Nonce [12]byte

// MapBody is the MAP opcode-specific information (RFC 6887 §11.1). The
// external port and address are the suggested ones in a request and the
// assigned ones in a response.
type MapBody struct {
	Nonce        Nonce
	Protocol     uint8 // IANA protocol number, 0 for all protocols
	InternalPort uint16
	ExternalPort uint16
	ExternalIP   netip.Addr
}

// PeerBody is the PEER opcode-specific information (RFC 6887 §12.1): a
// MAP body followed by the remote peer.
type PeerBody struct {
	MapBody
	RemotePort uint16
	RemoteIP   netip.Addr
}

// PCPRequest is a version 2 request (RFC 6887 §7.1). Map is set for MAP
// and Peer for PEER; ANNOUNCE has neither.
type PCPRequest struct {
	Opcode   Opcode
	Lifetime uint32
	// ClientIP is the address the client says it sends from. IPv4 is
	// held unmapped so that it compares with a socket's source address;
	// on the wire it is IPv4-mapped IPv6 (RFC 6887 §5).
	ClientIP netip.Addr
	Map      *MapBody
	Peer     *PeerBody
	Options  []Option
}

// PCPResponse is a version 2 response (RFC 6887 §7.2).
type PCPResponse struct {
	Opcode   Opcode
	Result   ResultCode
	Lifetime uint32
	// Epoch is the server's seconds since its state began (RFC 6887
	// §8.5): a client that sees it go back knows to refresh its mappings.
	Epoch uint32
	// ClientIPTail answers a request the server could not parse: it is
	// the last 96 bits of that request's client IP field, in the reserved
	// field, so the client can tell which of its requests failed (RFC 6887
	// §7.2). Zero in every other response.
	ClientIPTail [12]byte
	Map          *MapBody
	Peer         *PeerBody
	Options      []Option
}

func (*PCPRequest) isRequest()   {}
func (*PCPResponse) isResponse() {}

// Encode is for clients and tests, and for checking that a decoded
// request lost nothing; a server never sends a request.
func (r *PCPRequest) Encode() []byte {
	b := make([]byte, headerSize, headerSize+peerBodySize)
	b[0] = VersionPCP
	b[1] = byte(r.Opcode) &^ responseBit
	binary.BigEndian.PutUint32(b[4:], r.Lifetime)
	putAddr(b[8:], r.ClientIP)
	b = appendBody(b, r.Map, r.Peer)
	return appendOptions(b, r.Options)
}

// Encode writes the response; keeping it within MaxMessageSize is the
// caller's, since only it knows which options it may leave out.
func (r *PCPResponse) Encode() []byte {
	b := make([]byte, headerSize, headerSize+peerBodySize)
	b[0] = VersionPCP
	b[1] = byte(r.Opcode) | responseBit
	b[3] = byte(r.Result)
	binary.BigEndian.PutUint32(b[4:], r.Lifetime)
	binary.BigEndian.PutUint32(b[8:], r.Epoch)
	copy(b[12:24], r.ClientIPTail[:])
	b = appendBody(b, r.Map, r.Peer)
	return appendOptions(b, r.Options)
}

func appendBody(b []byte, m *MapBody, p *PeerBody) []byte {
	switch {
	case m != nil:
		return appendMap(b, m)
	case p != nil:
		b = appendMap(b, &p.MapBody)
		var tail [20]byte
		binary.BigEndian.PutUint16(tail[0:], p.RemotePort)
		putAddr(tail[4:], p.RemoteIP)
		return append(b, tail[:]...)
	}
	return b
}

func appendMap(b []byte, m *MapBody) []byte {
	var body [mapBodySize]byte
	copy(body[0:12], m.Nonce[:])
	body[12] = m.Protocol
	binary.BigEndian.PutUint16(body[16:], m.InternalPort)
	binary.BigEndian.PutUint16(body[18:], m.ExternalPort)
	putAddr(body[20:], m.ExternalIP)
	return append(b, body[:]...)
}

func decodeMap(b []byte) MapBody {
	var m MapBody
	copy(m.Nonce[:], b[0:12])
	m.Protocol = b[12]
	m.InternalPort = binary.BigEndian.Uint16(b[16:])
	m.ExternalPort = binary.BigEndian.Uint16(b[18:])
	m.ExternalIP = getAddr(b[20:36])
	return m
}

func decodePeer(b []byte) PeerBody {
	return PeerBody{
		MapBody:    decodeMap(b),
		RemotePort: binary.BigEndian.Uint16(b[36:]),
		RemoteIP:   getAddr(b[40:56]),
	}
}

// putAddr writes a 128-bit address field; As16 maps IPv4 and writes the
// zero Addr as ::, the RFC's "no address".
func putAddr(b []byte, a netip.Addr) {
	a16 := a.As16()
	copy(b[:16], a16[:])
}

// getAddr unmaps, so that IPv4 compares with IPv4 wherever it came from;
// putAddr maps it back, so the octets survive a round trip.
func getAddr(b []byte) netip.Addr {
	return netip.AddrFrom16([16]byte(b[:16])).Unmap()
}

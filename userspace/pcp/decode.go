package pcp

import (
	"encoding/binary"
	"fmt"
	"net/netip"
)

// RequestError is a request Decode refused. Either the RFC says to drop it
// without an answer (Drop), or Response gives the error response to send.
type RequestError struct {
	// Drop is set for what a server must silently ignore: a datagram too
	// short to hold a version and opcode, or a response (R bit set).
	Drop bool
	// Result is the PCP result code the request earns; for a version 0
	// request, NATPMPResult is the one that is sent.
	Result       ResultCode
	NATPMPResult NATPMPResult
	// Field names what is wrong and Reason says how, with the value seen.
	Field  string
	Reason string

	// The request's part of the answer, filled in by Decode.
	pcp    *PCPResponse
	natpmp *NATPMPErrorResponse
}

func (e *RequestError) Error() string {
	verdict := e.Result.String()
	switch {
	case e.Drop:
		verdict = "dropped"
	case e.natpmp != nil:
		verdict = "NAT-PMP " + e.NATPMPResult.String()
	}
	return fmt.Sprintf("pcp: %s: %s (%s)", e.Field, e.Reason, verdict)
}

// Response is the error response the RFC prescribes, with the server's
// lifetime (how long the client should wait before retrying, RFC 6887
// §7.4) and epoch; nil when the request is to be dropped. NAT-PMP error
// responses carry no lifetime.
func (e *RequestError) Response(lifetime, epoch uint32) Response {
	switch {
	case e.Drop:
		return nil
	case e.natpmp != nil:
		r := *e.natpmp
		r.Epoch = epoch
		return &r
	}
	r := *e.pcp
	r.Lifetime, r.Epoch = lifetime, epoch
	return &r
}

func newError(result ResultCode, field, format string, args ...any) *RequestError {
	return &RequestError{Result: result, Field: field, Reason: fmt.Sprintf(format, args...)}
}

func dropped(field, format string, args ...any) *RequestError {
	return &RequestError{Drop: true, Field: field, Reason: fmt.Sprintf(format, args...)}
}

// Decode validates a datagram a server received from source, the address
// of the UDP packet (a zero source matches no client IP), and returns the
// request or a *RequestError.
//
// The checks run in the order RFC 6887 §8.3 lists them, so that a request
// with several faults gets the result code a client of another server
// would: drop what is not a request, then the version (§9; version 0 is
// NAT-PMP, RFC 6887 Appendix A), then the length, the opcode, the client
// address, and the options.
func Decode(b []byte, source netip.Addr) (Request, error) {
	if len(b) < 2 {
		return nil, dropped("length", "%d octets, fewer than the 2 of a version and opcode", len(b))
	}
	if b[1]&responseBit != 0 {
		return nil, dropped("opcode", "R bit set (octet 0x%02x): a response, not a request", b[1])
	}
	switch b[0] {
	case VersionNATPMP:
		return decodeNATPMP(b)
	case VersionPCP:
	default:
		// The version field of the answer is the one this server speaks
		// (RFC 6887 §9), which is how the client learns to fall back.
		e := newError(UnsuppVersion, "version", "version %d, this server speaks %d and NAT-PMP's %d", b[0], VersionPCP, VersionNATPMP)
		e.pcp = &PCPResponse{Opcode: Opcode(b[1]), Result: UnsuppVersion, ClientIPTail: clientIPTail(b)}
		return nil, e
	}
	op := Opcode(b[1])
	if e := checkLength(b); e != nil {
		e.pcp = &PCPResponse{Opcode: op, Result: e.Result, ClientIPTail: clientIPTail(b)}
		return nil, e
	}
	size, known := op.bodySize()
	if !known {
		e := newError(UnsuppOpcode, "opcode", "opcode %d is not ANNOUNCE, MAP or PEER", uint8(op))
		e.pcp = &PCPResponse{Opcode: op, Result: UnsuppOpcode, ClientIPTail: clientIPTail(b)}
		return nil, e
	}
	if len(b) < headerSize+size {
		e := newError(MalformedRequest, "length", "%d octets, %s needs %d", len(b), op, headerSize+size)
		e.pcp = &PCPResponse{Opcode: op, Result: MalformedRequest, ClientIPTail: clientIPTail(b)}
		return nil, e
	}
	r := &PCPRequest{
		Opcode:   op,
		Lifetime: binary.BigEndian.Uint32(b[4:]),
		ClientIP: getAddr(b[8:24]),
	}
	body := b[headerSize : headerSize+size]
	switch op {
	case OpMap:
		m := decodeMap(body)
		r.Map = &m
	case OpPeer:
		p := decodePeer(body)
		r.Peer = &p
	}
	// From here on the error response copies the request's opcode body
	// (RFC 6887 §8.3: fields from the request are copied into it), so that
	// the client can match it to its nonce and port. A request whose
	// options do not parse also gets its client IP's tail back (§7.2).
	fail := func(e *RequestError, parsed bool) (Request, error) {
		e.pcp = &PCPResponse{Opcode: op, Result: e.Result, Map: r.Map, Peer: r.Peer}
		if !parsed {
			e.pcp.ClientIPTail = clientIPTail(b)
		}
		return nil, e
	}
	if r.ClientIP != source.Unmap() {
		return fail(newError(AddressMismatch, "client IP", "%s in the request, the packet came from %s", r.ClientIP, source), true)
	}
	opts, e := decodeOptions(b[headerSize+size:], headerSize+size, op)
	if e != nil {
		return fail(e, false)
	}
	for _, o := range opts {
		// A client naming itself as the third party is confused or
		// probing; RFC 6887 §13.1 calls the request malformed.
		if tp, ok := o.(*ThirdParty); ok && tp.InternalIP == source.Unmap() {
			return fail(newError(MalformedRequest, "THIRD_PARTY internal IP", "%s is the packet's own source", tp.InternalIP), true)
		}
	}
	r.Options = opts
	return r, nil
}

// clientIPTail is what of the last 96 bits of the client IP field a
// request too short to parse still holds.
func clientIPTail(b []byte) [12]byte {
	var tail [12]byte
	if len(b) > 12 {
		copy(tail[:], b[12:min(len(b), headerSize)])
	}
	return tail
}

func checkLength(b []byte) *RequestError {
	switch {
	case len(b) < headerSize:
		return newError(MalformedRequest, "length", "%d octets, fewer than the %d of the header", len(b), headerSize)
	case len(b) > MaxMessageSize:
		return newError(MalformedRequest, "length", "%d octets, more than %d", len(b), MaxMessageSize)
	case len(b)%4 != 0:
		return newError(MalformedRequest, "length", "%d octets, not a multiple of 4", len(b))
	}
	return nil
}

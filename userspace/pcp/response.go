package pcp

import (
	"encoding/binary"
	"fmt"
)

// DecodeResponse reads a response as a client receives it: a PCP response,
// or a NAT-PMP one from a server that speaks only NAT-PMP (RFC 6887
// Appendix A). It judges only the layout, not whether the server was
// right: a client keeps even options it does not know, and a test that
// checks a server wants to see what was sent.
func DecodeResponse(b []byte) (Response, error) {
	if len(b) < 2 {
		return nil, fmt.Errorf("pcp: response length: %d octets, fewer than the 2 of a version and opcode", len(b))
	}
	if b[1]&responseBit == 0 {
		return nil, fmt.Errorf("pcp: response opcode: R bit clear (octet 0x%02x): a request, not a response", b[1])
	}
	switch b[0] {
	case VersionNATPMP:
		return decodeNATPMPResponse(b)
	case VersionPCP:
	default:
		return nil, fmt.Errorf("pcp: response version: version %d, neither PCP's %d nor NAT-PMP's %d", b[0], VersionPCP, VersionNATPMP)
	}
	if len(b) < headerSize || len(b)%4 != 0 || len(b) > MaxMessageSize {
		return nil, fmt.Errorf("pcp: response length: %d octets, want a multiple of 4 from %d to %d", len(b), headerSize, MaxMessageSize)
	}
	r := &PCPResponse{
		Opcode:   Opcode(b[1] &^ responseBit),
		Result:   ResultCode(b[3]),
		Lifetime: binary.BigEndian.Uint32(b[4:]),
		Epoch:    binary.BigEndian.Uint32(b[8:]),
	}
	copy(r.ClientIPTail[:], b[12:headerSize])
	rest := b[headerSize:]
	size, known := r.Opcode.bodySize()
	switch {
	case !known:
		// An error for an opcode nobody knows carries no body, and the
		// rest cannot be told apart from options.
		if len(rest) > 0 {
			return nil, fmt.Errorf("pcp: response opcode: %s, whose body this package does not know, with %d octets after the header", r.Opcode, len(rest))
		}
		return r, nil
	case len(rest) < size:
		// An error response to a request cut short has no body.
		if r.Result != Success && len(rest) == 0 {
			return r, nil
		}
		return nil, fmt.Errorf("pcp: response length: %d octets, %s needs %d", len(b), r.Opcode, headerSize+size)
	}
	switch r.Opcode {
	case OpMap:
		m := decodeMap(rest)
		r.Map = &m
	case OpPeer:
		p := decodePeer(rest)
		r.Peer = &p
	}
	rest = rest[size:]
	for offset := headerSize + size; len(rest) > 0; {
		code := OptionCode(rest[0])
		length := int(binary.BigEndian.Uint16(rest[2:]))
		total := optionHeader + length + padding(length)
		if total > len(rest) {
			return nil, fmt.Errorf("pcp: response option length: %s at offset %d has length %d (%d octets padded) but %d octets remain", code, offset, length, total, len(rest))
		}
		d := rest[optionHeader : optionHeader+length]
		var o Option = &UnknownOption{OptionCode: code, Data: append([]byte(nil), d...)}
		if rule, ok := optionRules[code]; ok && length == rule.length {
			o, _ = decodeKnownOption(code, d, offset)
			if o == nil {
				o = &UnknownOption{OptionCode: code, Data: append([]byte(nil), d...)}
			}
		}
		r.Options = append(r.Options, o)
		rest = rest[total:]
		offset += total
	}
	return r, nil
}

func decodeNATPMPResponse(b []byte) (Response, error) {
	op := b[1] &^ responseBit
	if len(b) < natpmpErrorResponseSize {
		return nil, fmt.Errorf("pcp: NAT-PMP response length: %d octets, fewer than %d", len(b), natpmpErrorResponseSize)
	}
	result := NATPMPResult(binary.BigEndian.Uint16(b[2:]))
	epoch := binary.BigEndian.Uint32(b[4:])
	switch {
	case len(b) == natpmpPublicAddressResponseSize && NATPMPOpcode(op) == NATPMPOpPublicAddress:
		r := &PublicAddressResponse{Result: result, Epoch: epoch}
		r.ExternalIP = getAddr(append([]byte{0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff}, b[8:12]...))
		return r, nil
	case len(b) == natpmpMappingResponseSize && (NATPMPOpcode(op) == NATPMPOpMapUDP || NATPMPOpcode(op) == NATPMPOpMapTCP):
		return &MappingResponse{
			Opcode:       NATPMPOpcode(op),
			Result:       result,
			Epoch:        epoch,
			InternalPort: binary.BigEndian.Uint16(b[8:]),
			ExternalPort: binary.BigEndian.Uint16(b[10:]),
			Lifetime:     binary.BigEndian.Uint32(b[12:]),
		}, nil
	case len(b) == natpmpErrorResponseSize && result != NATPMPSuccess:
		// What a NAT-PMP-only server sends a PCP client (Unsupported
		// Version), and the answer to an unknown opcode.
		return &NATPMPErrorResponse{Opcode: op, Result: result, Epoch: epoch}, nil
	}
	return nil, fmt.Errorf("pcp: NAT-PMP response length: %d octets for opcode %d with %s", len(b), op, result)
}

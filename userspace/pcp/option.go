package pcp

import (
	"encoding/binary"
	"net/netip"
)

// Option is a PCP option (RFC 6887 §7.3): *ThirdParty, *PreferFailure,
// *Filter, or *UnknownOption for an optional-to-process option this
// package does not know.
type Option interface {
	Code() OptionCode
	// data is the option's payload without padding.
	data() []byte
}

// ThirdParty asks for a mapping on behalf of another host (RFC 6887
// §13.1); whether that is allowed is the server's policy.
type ThirdParty struct {
	InternalIP netip.Addr
}

// PreferFailure asks for an error rather than an external port other than
// the suggested one (RFC 6887 §13.2).
type PreferFailure struct{}

// Filter limits which remote peers may use a mapping (RFC 6887 §13.3).
type Filter struct {
	PrefixLength uint8
	RemotePort   uint16 // 0 for all ports
	RemoteIP     netip.Addr
}

// UnknownOption keeps an optional-to-process option the server will
// ignore, so that a decoded request encodes back to what was sent.
type UnknownOption struct {
	OptionCode OptionCode
	Data       []byte
}

func (*ThirdParty) Code() OptionCode      { return OptThirdParty }
func (*PreferFailure) Code() OptionCode   { return OptPreferFailure }
func (*Filter) Code() OptionCode          { return OptFilter }
func (o *UnknownOption) Code() OptionCode { return o.OptionCode }

func (o *ThirdParty) data() []byte {
	b := make([]byte, 16)
	putAddr(b, o.InternalIP)
	return b
}

func (*PreferFailure) data() []byte { return nil }

func (o *Filter) data() []byte {
	b := make([]byte, 20)
	b[1] = o.PrefixLength
	binary.BigEndian.PutUint16(b[2:], o.RemotePort)
	putAddr(b[4:], o.RemoteIP)
	return b
}

func (o *UnknownOption) data() []byte { return o.Data }

func appendOptions(b []byte, opts []Option) []byte {
	for _, o := range opts {
		d := o.data()
		b = append(b, byte(o.Code()), 0, 0, 0)
		binary.BigEndian.PutUint16(b[len(b)-2:], uint16(len(d)))
		b = append(b, d...)
		b = append(b, make([]byte, padding(len(d)))...)
	}
	return b
}

// padding is what brings an option's data to a multiple of 4 octets; the
// Option Length field does not count it (RFC 6887 §7.3).
func padding(n int) int { return (4 - n%4) % 4 }

// optionRule is what RFC 6887 §13 says of each option it defines.
type optionRule struct {
	length  int
	repeats bool
	opcodes []Opcode
}

var optionRules = map[OptionCode]optionRule{
	OptThirdParty:    {length: 16, opcodes: []Opcode{OpMap, OpPeer}},
	OptPreferFailure: {length: 0, opcodes: []Opcode{OpMap}},
	OptFilter:        {length: 20, repeats: true, opcodes: []Opcode{OpMap}},
}

func (r optionRule) validFor(op Opcode) bool {
	for _, o := range r.opcodes {
		if o == op {
			return true
		}
	}
	return false
}

// decodeOptions walks the options after the opcode body. Errors name the
// option's offset in the datagram, since a request may carry several of
// the same code.
func decodeOptions(b []byte, offset int, op Opcode) ([]Option, *RequestError) {
	var opts []Option
	seen := map[OptionCode]bool{}
	for len(b) > 0 {
		if len(b) < optionHeader {
			return nil, newError(MalformedOption, "option header", "%d octets left at offset %d, an option header needs %d", len(b), offset, optionHeader)
		}
		code := OptionCode(b[0])
		length := int(binary.BigEndian.Uint16(b[2:]))
		total := optionHeader + length + padding(length)
		if total > len(b) {
			return nil, newError(MalformedOption, "option length", "%s at offset %d has length %d (%d octets padded) but %d octets remain", code, offset, length, total, len(b))
		}
		d := b[optionHeader : optionHeader+length]
		rule, known := optionRules[code]
		switch {
		case !known && code.Mandatory():
			return nil, newError(UnsuppOption, "option code", "%s at offset %d is mandatory-to-process and not supported", code, offset)
		case !known:
			opts = append(opts, &UnknownOption{OptionCode: code, Data: append([]byte(nil), d...)})
		case !rule.validFor(op):
			return nil, newError(MalformedOption, "option code", "%s at offset %d is not valid for %s", code, offset, op)
		case length != rule.length:
			return nil, newError(MalformedOption, "option length", "%s at offset %d has length %d, want %d", code, offset, length, rule.length)
		case seen[code] && !rule.repeats:
			return nil, newError(MalformedOption, "option code", "%s at offset %d appears more than once", code, offset)
		default:
			o, err := decodeKnownOption(code, d, offset)
			if err != nil {
				return nil, err
			}
			opts = append(opts, o)
		}
		seen[code] = true
		b = b[total:]
		offset += total
	}
	return opts, nil
}

func decodeKnownOption(code OptionCode, d []byte, offset int) (Option, *RequestError) {
	switch code {
	case OptThirdParty:
		return &ThirdParty{InternalIP: getAddr(d)}, nil
	case OptPreferFailure:
		return &PreferFailure{}, nil
	}
	f := &Filter{
		PrefixLength: d[1],
		RemotePort:   binary.BigEndian.Uint16(d[2:]),
		RemoteIP:     getAddr(d[4:]),
	}
	// Only the bound of a 128-bit address is checked here: what a prefix
	// of an IPv4-mapped address means is the server's to judge.
	if f.PrefixLength > 128 {
		return nil, newError(MalformedOption, "filter prefix length", "FILTER at offset %d has prefix length %d, more than 128", offset, f.PrefixLength)
	}
	return f, nil
}

package pcp

import (
	"bytes"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"net/netip"
	"testing"
)

// FuzzDecode holds Decode to three things whatever arrives on port 5351:
// it does not panic, a refusal is a *RequestError with an answer unless it
// is dropped, and an accepted request encodes back to the octets received
// (once the reserved fields and padding the RFCs tell a receiver to
// ignore are zeroed, since the encoder sends them as zero).
func FuzzDecode(f *testing.F) {
	f.Add([]byte{0, 0})
	f.Add([]byte{0, 1, 0, 0, 0x13, 0xc4, 0x9c, 0x40, 0, 0, 0x1c, 0x20})
	f.Add([]byte{0, 9})
	f.Add(cat(mapRequestHeader(), mapBody()))
	f.Add(cat(mapRequestHeader(), mapBody(), []byte{2, 0, 0, 0}, []byte{3, 0, 0, 20}, []byte{0, 32, 1, 0xbb}, mapped198512100))
	f.Add(cat(mapRequestHeader(), mapBody(), []byte{1, 0, 0, 16}, mapped100640008, []byte{0x80, 0, 0, 3}, []byte{1, 2, 3, 0}))
	f.Add(cat([]byte{2, 2, 0, 0}, []byte{0, 0, 0, 1}, mapped100640007, mapBody(), []byte{0, 80, 0, 0}, mapped198512100))
	f.Add(cat([]byte{2, 0, 0, 0}, []byte{0, 0, 0, 0}, mapped100640007))
	f.Add([]byte{1, 1})
	f.Fuzz(func(t *testing.T, in []byte) {
		source := subscriber
		if len(in) >= headerSize {
			// Mostly let the client IP match, so that the fuzzer gets
			// past ADDRESS_MISMATCH to the options.
			source = netip.AddrFrom16([16]byte(in[8:24]))
		}
		req, err := Decode(in, source)
		if err != nil {
			var re *RequestError
			if !errors.As(err, &re) {
				t.Fatalf("Decode error %T %v, want a *RequestError", err, err)
			}
			if re.Field == "" || re.Reason == "" {
				t.Fatalf("Decode error %q does not say what is wrong", re)
			}
			resp := re.Response(60, 1)
			if (resp == nil) != re.Drop {
				t.Fatalf("Response = %v with Drop %v", resp, re.Drop)
			}
			if resp != nil && len(resp.Encode()) > MaxMessageSize {
				t.Fatalf("error response of %d octets", len(resp.Encode()))
			}
			return
		}
		if got, want := req.Encode(), canonical(t, in); !bytes.Equal(got, want) {
			t.Fatalf("accepted %#v\n%s\nbut it encodes as\n%s", req, hex.Dump(want), hex.Dump(got))
		}
	})
}

// canonical zeroes the reserved octets and option padding of an accepted
// request, walking it with the RFCs' layouts rather than the decoder's.
func canonical(t *testing.T, in []byte) []byte {
	t.Helper()
	b := append([]byte(nil), in...)
	if b[0] == VersionNATPMP {
		if len(b) == 12 {
			b[2], b[3] = 0, 0 // RFC 6886 §3.3 reserved
		}
		return b
	}
	b[2], b[3] = 0, 0 // RFC 6887 §7.1 reserved
	next := headerSize
	switch Opcode(b[1]) {
	case OpMap:
		clear(b[headerSize+13 : headerSize+16]) // §11.1 reserved after protocol
		next += mapBodySize
	case OpPeer:
		clear(b[headerSize+13 : headerSize+16]) // §12.1 reserved after protocol
		clear(b[headerSize+38 : headerSize+40]) // §12.1 reserved after remote peer port
		next += peerBodySize
	}
	for next < len(b) {
		code := b[next]
		length := int(binary.BigEndian.Uint16(b[next+2:]))
		b[next+1] = 0 // §7.3 reserved
		if code == byte(OptFilter) {
			b[next+4] = 0 // §13.3 reserved
		}
		end := next + 4 + length
		for end%4 != 0 {
			b[end] = 0 // §7.3 padding
			end++
		}
		next = end
	}
	return b
}

// FuzzDecodeResponse holds the client side to not panicking, and to
// reading back what it encodes from whatever it accepted.
func FuzzDecodeResponse(f *testing.F) {
	f.Add([]byte{0, 128, 0, 0, 0, 0, 0, 1, 198, 51, 100, 1})
	f.Add([]byte{0, 130, 0, 0, 0, 0, 0, 5, 0, 22, 0x9c, 0x56, 0, 0, 0x0e, 0x10})
	f.Add([]byte{0, 0x81, 0, 1, 0, 0, 0x30, 0x39})
	f.Add(cat([]byte{2, 0x81, 0, 0}, make([]byte, 20), mapBody(), []byte{3, 0, 0, 20}, make([]byte, 20)))
	f.Add(cat([]byte{2, 0x82, 0, 0}, make([]byte, 20), make([]byte, peerBodySize), []byte{1, 0, 0, 16}, mapped100640008))
	f.Fuzz(func(t *testing.T, in []byte) {
		r, err := DecodeResponse(in)
		if err != nil {
			return
		}
		out := r.Encode()
		again, err := DecodeResponse(out)
		if err != nil {
			t.Fatalf("accepted\n%s\nbut not its own encoding\n%s\n%v", hex.Dump(in), hex.Dump(out), err)
		}
		if !bytes.Equal(again.Encode(), out) {
			t.Fatalf("encoding of\n%s\nis not stable:\n%s", hex.Dump(in), hex.Dump(out))
		}
	})
}

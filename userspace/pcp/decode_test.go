package pcp

import (
	"bytes"
	"encoding/hex"
	"errors"
	"net/netip"
	"reflect"
	"testing"
)

// The vectors below are written out octet by octet from the field layouts
// of RFC 6887 (§7.1, §7.2, §7.3, §11.1, §12.1, §13) and RFC 6886 (§3.2,
// §3.3, §3.5), never produced by this package's encoders, so that a shared
// misreading cannot make encoder and decoder agree with each other.

var (
	subscriber = netip.MustParseAddr("100.64.0.7")
	other      = netip.MustParseAddr("100.64.0.8")
)

// cat joins the octets of the fields a vector is written as.
func cat(fields ...[]byte) []byte {
	var b []byte
	for _, f := range fields {
		b = append(b, f...)
	}
	return b
}

var (
	mapped100640007 = []byte{0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 100, 64, 0, 7} // ::ffff:100.64.0.7
	mapped100640008 = []byte{0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 100, 64, 0, 8} // ::ffff:100.64.0.8
	mappedAny       = []byte{0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 0, 0, 0, 0}    // ::ffff:0.0.0.0
	mapped198512100 = []byte{0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 198, 51, 100, 1}
	nonce           = []byte{1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12}
)

// mapRequestHeader is a version 2 MAP request for 7200 s from 100.64.0.7.
func mapRequestHeader() []byte {
	return cat(
		[]byte{2},                // version
		[]byte{0x01},             // R=0, opcode MAP
		[]byte{0, 0},             // reserved
		[]byte{0, 0, 0x1c, 0x20}, // requested lifetime 7200
		mapped100640007,          // client IP
	)
}

// mapBody asks for UDP internal port 5060, suggesting external port 40000.
func mapBody() []byte {
	return cat(
		nonce,              // mapping nonce
		[]byte{17},         // protocol UDP
		[]byte{0, 0, 0},    // reserved
		[]byte{0x13, 0xc4}, // internal port 5060
		[]byte{0x9c, 0x40}, // suggested external port 40000
		mappedAny,          // suggested external IP: none
	)
}

func wantMapBody() *MapBody {
	return &MapBody{
		Nonce:        Nonce{1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12},
		Protocol:     17,
		InternalPort: 5060,
		ExternalPort: 40000,
		ExternalIP:   netip.IPv4Unspecified(),
	}
}

func TestDecodeAccepted(t *testing.T) {
	tests := []struct {
		name string
		in   []byte
		want Request
	}{
		{
			name: "MAP without options",
			in:   cat(mapRequestHeader(), mapBody()),
			want: &PCPRequest{Opcode: OpMap, Lifetime: 7200, ClientIP: subscriber, Map: wantMapBody()},
		},
		{
			name: "MAP with PREFER_FAILURE, two FILTERs and an unknown optional option",
			in: cat(mapRequestHeader(), mapBody(),
				[]byte{2, 0, 0, 0},                       // PREFER_FAILURE, reserved, length 0
				[]byte{3, 0, 0, 20},                      // FILTER, reserved, length 20
				[]byte{0, 32},                            // reserved, prefix length 32
				[]byte{0x01, 0xbb},                       // remote peer port 443
				mapped198512100,                          // remote peer IP
				[]byte{3, 0, 0, 20},                      // FILTER again: it may repeat
				[]byte{0, 0},                             // reserved, prefix length 0: no filter
				[]byte{0, 0},                             // all ports
				mappedAny,                                // remote peer IP
				[]byte{0x80, 0, 0, 5},                    // option 128 (optional-to-process), length 5
				[]byte{'h', 'e', 'l', 'l', 'o', 0, 0, 0}, // data and 3 octets of padding
			),
			want: &PCPRequest{Opcode: OpMap, Lifetime: 7200, ClientIP: subscriber, Map: wantMapBody(), Options: []Option{
				&PreferFailure{},
				&Filter{PrefixLength: 32, RemotePort: 443, RemoteIP: netip.MustParseAddr("198.51.100.1")},
				&Filter{RemoteIP: netip.IPv4Unspecified()},
				&UnknownOption{OptionCode: 128, Data: []byte("hello")},
			}},
		},
		{
			name: "MAP with THIRD_PARTY",
			in: cat(mapRequestHeader(), mapBody(),
				[]byte{1, 0, 0, 16}, // THIRD_PARTY, reserved, length 16
				mapped100640008,     // internal IP
			),
			want: &PCPRequest{Opcode: OpMap, Lifetime: 7200, ClientIP: subscriber, Map: wantMapBody(), Options: []Option{
				&ThirdParty{InternalIP: other},
			}},
		},
		{
			name: "PEER",
			in: cat(
				[]byte{2, 0x02, 0, 0},    // version, opcode PEER, reserved
				[]byte{0, 0, 0x0e, 0x10}, // requested lifetime 3600
				mapped100640007,          // client IP
				nonce,                    // mapping nonce
				[]byte{6, 0, 0, 0},       // protocol TCP, reserved
				[]byte{0x1f, 0x90},       // internal port 8080
				[]byte{0, 0},             // suggested external port: any
				mappedAny,                // suggested external IP: any
				[]byte{0x01, 0xbb, 0, 0}, // remote peer port 443, reserved
				mapped198512100,          // remote peer IP
			),
			want: &PCPRequest{Opcode: OpPeer, Lifetime: 3600, ClientIP: subscriber, Peer: &PeerBody{
				MapBody:    MapBody{Nonce: Nonce{1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12}, Protocol: 6, InternalPort: 8080, ExternalIP: netip.IPv4Unspecified()},
				RemotePort: 443,
				RemoteIP:   netip.MustParseAddr("198.51.100.1"),
			}},
		},
		{
			name: "ANNOUNCE",
			in: cat(
				[]byte{2, 0x00, 0, 0}, // version, opcode ANNOUNCE, reserved
				[]byte{0, 0, 0, 0},    // lifetime 0
				mapped100640007,       // client IP
			),
			want: &PCPRequest{Opcode: OpAnnounce, ClientIP: subscriber},
		},
		{
			name: "NAT-PMP public address",
			in:   []byte{0, 0}, // version 0, opcode 0
			want: &PublicAddressRequest{},
		},
		{
			name: "NAT-PMP UDP mapping",
			in: []byte{
				0, 1, // version 0, opcode 1 (UDP)
				0, 0, // reserved
				0x13, 0xc4, // internal port 5060
				0x9c, 0x40, // suggested external port 40000
				0, 0, 0x1c, 0x20, // requested lifetime 7200
			},
			want: &MappingRequest{Opcode: NATPMPOpMapUDP, InternalPort: 5060, SuggestedExternalPort: 40000, Lifetime: 7200},
		},
		{
			name: "NAT-PMP delete every TCP mapping",
			in: []byte{
				0, 2, // version 0, opcode 2 (TCP)
				0, 0, // reserved
				0, 0, // internal port 0: all
				0, 0, // external port 0
				0, 0, 0, 0, // lifetime 0: delete
			},
			want: &MappingRequest{Opcode: NATPMPOpMapTCP},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := Decode(tt.in, subscriber)
			if err != nil {
				t.Fatalf("Decode:\n%s\nerror: %v", hex.Dump(tt.in), err)
			}
			if !reflect.DeepEqual(got, tt.want) {
				t.Fatalf("Decode = %#v\nwant %#v", got, tt.want)
			}
			if out := got.Encode(); !bytes.Equal(out, tt.in) {
				t.Fatalf("Encode does not give the request back:\n%s\nwant\n%s", hex.Dump(out), hex.Dump(tt.in))
			}
		})
	}
}

func TestDecodeAcceptsIPv4MappedSource(t *testing.T) {
	in := cat(mapRequestHeader(), mapBody())
	if _, err := Decode(in, netip.MustParseAddr("::ffff:100.64.0.7")); err != nil {
		t.Fatalf("a dual-stack socket's mapped source must match the client IP: %v", err)
	}
}

func TestDecodeRejected(t *testing.T) {
	withOptions := func(opts ...[]byte) []byte {
		return cat(append([][]byte{mapRequestHeader(), mapBody()}, opts...)...)
	}
	announce := cat([]byte{2, 0, 0, 0}, []byte{0, 0, 0, 0}, mapped100640007)
	tests := []struct {
		name       string
		in         []byte
		wantDrop   bool
		wantResult ResultCode
		wantField  string
	}{
		{name: "empty", in: nil, wantDrop: true, wantField: "length"},
		{name: "one octet", in: []byte{2}, wantDrop: true, wantField: "length"},
		{name: "R bit set (a PCP response)", in: cat([]byte{2, 0x81, 0, 0}, make([]byte, 20)), wantDrop: true, wantField: "opcode"},
		{name: "R bit set (a NAT-PMP response)", in: []byte{0, 0x80, 0, 0, 0, 0, 0, 0}, wantDrop: true, wantField: "opcode"},
		{name: "version 1", in: cat([]byte{1, 1, 0, 0}, make([]byte, 20)), wantResult: UnsuppVersion, wantField: "version"},
		{name: "version 3, short", in: []byte{3, 1}, wantResult: UnsuppVersion, wantField: "version"},
		{name: "shorter than the header", in: announce[:20], wantResult: MalformedRequest, wantField: "length"},
		{name: "not a multiple of 4", in: append(append([]byte(nil), announce...), 0, 0), wantResult: MalformedRequest, wantField: "length"},
		{name: "longer than 1100 octets", in: withOptions([]byte{0x80, 0, 0x04, 0x10}, make([]byte, 1040)), wantResult: MalformedRequest, wantField: "length"},
		{name: "unknown opcode", in: cat([]byte{2, 0x05, 0, 0}, []byte{0, 0, 0, 0}, mapped100640007), wantResult: UnsuppOpcode, wantField: "opcode"},
		{name: "MAP body cut short", in: cat(mapRequestHeader(), mapBody()[:32]), wantResult: MalformedRequest, wantField: "length"},
		{name: "PEER with only a MAP body", in: cat([]byte{2, 0x02, 0, 0}, []byte{0, 0, 0, 0}, mapped100640007, mapBody()), wantResult: MalformedRequest, wantField: "length"},
		{name: "client IP is not the source", in: cat([]byte{2, 0x01, 0, 0}, []byte{0, 0, 0, 60}, mapped100640008, mapBody()), wantResult: AddressMismatch, wantField: "client IP"},
		{name: "option longer than the packet", in: withOptions([]byte{3, 0, 0, 20}, make([]byte, 16)), wantResult: MalformedOption, wantField: "option length"},
		{name: "option padding missing", in: withOptions([]byte{0x80, 0, 0, 1}, []byte{}), wantResult: MalformedOption, wantField: "option length"},
		{name: "PREFER_FAILURE with data", in: withOptions([]byte{2, 0, 0, 4}, []byte{0, 0, 0, 0}), wantResult: MalformedOption, wantField: "option length"},
		{name: "THIRD_PARTY too short", in: withOptions([]byte{1, 0, 0, 4}, mapped100640008[12:]), wantResult: MalformedOption, wantField: "option length"},
		{name: "PREFER_FAILURE twice", in: withOptions([]byte{2, 0, 0, 0}, []byte{2, 0, 0, 0}), wantResult: MalformedOption, wantField: "option code"},
		{name: "THIRD_PARTY twice", in: withOptions([]byte{1, 0, 0, 16}, mapped100640008, []byte{1, 0, 0, 16}, mapped100640008), wantResult: MalformedOption, wantField: "option code"},
		{name: "FILTER prefix longer than an address", in: withOptions([]byte{3, 0, 0, 20}, []byte{0, 129, 0, 0}, mappedAny), wantResult: MalformedOption, wantField: "filter prefix length"},
		{name: "FILTER on ANNOUNCE", in: cat(announce, []byte{3, 0, 0, 20}, []byte{0, 0, 0, 0}, mappedAny), wantResult: MalformedOption, wantField: "option code"},
		{name: "PREFER_FAILURE on PEER", in: cat([]byte{2, 0x02, 0, 0}, []byte{0, 0, 0, 0}, mapped100640007, mapBody(), []byte{0, 0, 0, 0}, mappedAny, []byte{2, 0, 0, 0}), wantResult: MalformedOption, wantField: "option code"},
		{name: "unknown mandatory option", in: withOptions([]byte{4, 0, 0, 0}), wantResult: UnsuppOption, wantField: "option code"},
		{name: "option code 0 is mandatory and unknown", in: withOptions([]byte{0, 0, 0, 0}), wantResult: UnsuppOption, wantField: "option code"},
		{name: "THIRD_PARTY naming the sender", in: withOptions([]byte{1, 0, 0, 16}, mapped100640007), wantResult: MalformedRequest, wantField: "THIRD_PARTY internal IP"},
		{name: "NAT-PMP unknown opcode", in: []byte{0, 3}, wantResult: UnsuppOpcode, wantField: "opcode"},
		{name: "NAT-PMP public address request too long", in: []byte{0, 0, 0, 0}, wantDrop: true, wantField: "length"},
		{name: "NAT-PMP mapping request too short", in: []byte{0, 1, 0, 0, 0x13, 0xc4, 0x9c, 0x40}, wantDrop: true, wantField: "length"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := Decode(tt.in, subscriber)
			var re *RequestError
			if !errors.As(err, &re) {
				t.Fatalf("Decode = %#v, %v; want a *RequestError\n%s", got, err, hex.Dump(tt.in))
			}
			if re.Drop != tt.wantDrop || (!tt.wantDrop && re.Result != tt.wantResult) || re.Field != tt.wantField {
				t.Fatalf("Decode error %q: drop %v result %s field %q; want drop %v result %s field %q",
					re, re.Drop, re.Result, re.Field, tt.wantDrop, tt.wantResult, tt.wantField)
			}
			if resp := re.Response(0, 0); (resp == nil) != tt.wantDrop {
				t.Fatalf("Response = %#v, want one only when not dropped", resp)
			}
		})
	}
}

func TestDecodeErrorsSayWhatIsWrong(t *testing.T) {
	tests := []struct {
		in   []byte
		want string
	}{
		{[]byte{7, 1}, "pcp: version: version 7, this server speaks 2 and NAT-PMP's 0 (UNSUPP_VERSION)"},
		{cat(mapRequestHeader(), mapBody(), []byte{0x42, 0, 0, 0}), "pcp: option code: option 66 at offset 60 is mandatory-to-process and not supported (UNSUPP_OPTION)"},
		{cat([]byte{2, 0x01, 0, 0}, []byte{0, 0, 0, 60}, mapped100640008, mapBody()), "pcp: client IP: 100.64.0.8 in the request, the packet came from 100.64.0.7 (ADDRESS_MISMATCH)"},
		{[]byte{0, 9}, "pcp: opcode: NAT-PMP opcode 9 is not 0, 1 or 2 (NAT-PMP Unsupported opcode)"},
		{[]byte{2, 0x81}, "pcp: opcode: R bit set (octet 0x81): a response, not a request (dropped)"},
	}
	for _, tt := range tests {
		_, err := Decode(tt.in, subscriber)
		if err == nil || err.Error() != tt.want {
			t.Errorf("Decode(% x) error = %v\nwant %s", tt.in, err, tt.want)
		}
	}
}

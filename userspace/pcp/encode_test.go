package pcp

import (
	"bytes"
	"encoding/hex"
	"errors"
	"net/netip"
	"reflect"
	"testing"
)

func TestEncodeResponses(t *testing.T) {
	tests := []struct {
		name string
		in   Response
		want []byte
		// lossy is set where Encode leaves out what the RFC says not to
		// send, so the octets do not decode back to the value.
		lossy bool
	}{
		{
			name: "MAP success",
			in: &PCPResponse{Opcode: OpMap, Result: Success, Lifetime: 7200, Epoch: 1234, Map: &MapBody{
				Nonce: Nonce{1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12}, Protocol: 17, InternalPort: 5060, ExternalPort: 40001,
				ExternalIP: netip.MustParseAddr("198.51.100.1"),
			}, Options: []Option{&PreferFailure{}}},
			want: cat(
				[]byte{2},                // version
				[]byte{0x81},             // R=1, opcode MAP
				[]byte{0},                // reserved
				[]byte{0},                // result SUCCESS
				[]byte{0, 0, 0x1c, 0x20}, // lifetime 7200
				[]byte{0, 0, 0x04, 0xd2}, // epoch 1234
				make([]byte, 12),         // reserved
				nonce,                    // mapping nonce
				[]byte{17, 0, 0, 0},      // protocol UDP, reserved
				[]byte{0x13, 0xc4},       // internal port 5060
				[]byte{0x9c, 0x41},       // assigned external port 40001
				mapped198512100,          // assigned external IP
				[]byte{2, 0, 0, 0},       // PREFER_FAILURE, length 0
			),
		},
		{
			name: "ANNOUNCE after a restart",
			in:   &PCPResponse{Opcode: OpAnnounce, Epoch: 0},
			want: cat([]byte{2, 0x80, 0, 0}, make([]byte, 20)), // version, R|ANNOUNCE, reserved, SUCCESS; lifetime, epoch, reserved all 0
		},
		{
			name: "PEER with THIRD_PARTY and FILTER-free IPv6 remote",
			in: &PCPResponse{Opcode: OpPeer, Result: NoResources, Lifetime: 30, Epoch: 7, Peer: &PeerBody{
				MapBody:    MapBody{Protocol: 6, InternalPort: 80, ExternalIP: netip.IPv6Unspecified()},
				RemotePort: 443, RemoteIP: netip.MustParseAddr("2001:db8::1"),
			}, Options: []Option{&ThirdParty{InternalIP: netip.MustParseAddr("100.64.0.8")}}},
			want: cat(
				[]byte{2, 0x82, 0, 8},    // version, R|PEER, reserved, NO_RESOURCES
				[]byte{0, 0, 0, 30},      // lifetime 30
				[]byte{0, 0, 0, 7},       // epoch 7
				make([]byte, 12),         // reserved
				make([]byte, 12),         // nonce
				[]byte{6, 0, 0, 0},       // protocol TCP, reserved
				[]byte{0, 80, 0, 0},      // internal port 80, assigned external port 0
				make([]byte, 16),         // assigned external IP ::
				[]byte{0x01, 0xbb, 0, 0}, // remote peer port 443, reserved
				[]byte{0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1}, // 2001:db8::1
				[]byte{1, 0, 0, 16}, // THIRD_PARTY, length 16
				mapped100640008,     // internal IP
			),
		},
		{
			name: "NAT-PMP public address",
			in:   &PublicAddressResponse{Epoch: 86400, ExternalIP: netip.MustParseAddr("198.51.100.1")},
			want: []byte{
				0, 128, // version 0, opcode 128+0
				0, 0, // result Success
				0, 0x01, 0x51, 0x80, // seconds since start of epoch 86400
				198, 51, 100, 1, // external IPv4 address
			},
		},
		{
			name:  "NAT-PMP public address refused: the address is not told",
			in:    &PublicAddressResponse{Result: NATPMPNetworkFailure, Epoch: 1, ExternalIP: netip.MustParseAddr("198.51.100.1")},
			want:  []byte{0, 128, 0, 3, 0, 0, 0, 1, 0, 0, 0, 0}, // R|0, Network Failure, epoch 1, address 0.0.0.0
			lossy: true,
		},
		{
			name: "NAT-PMP TCP mapping",
			in:   &MappingResponse{Opcode: NATPMPOpMapTCP, Epoch: 5, InternalPort: 22, ExternalPort: 40022, Lifetime: 3600},
			want: []byte{
				0, 130, // version 0, opcode 128+2
				0, 0, // result Success
				0, 0, 0, 5, // epoch 5
				0, 22, // internal port 22
				0x9c, 0x56, // mapped external port 40022
				0, 0, 0x0e, 0x10, // lifetime 3600
			},
		},
		{
			name: "NAT-PMP refused mapping",
			in:   &MappingResponse{Opcode: NATPMPOpMapUDP, Result: NATPMPNotAuthorized, Epoch: 5, InternalPort: 5060},
			want: []byte{0, 129, 0, 2, 0, 0, 0, 5, 0x13, 0xc4, 0, 0, 0, 0, 0, 0}, // R|UDP, Not Authorized, epoch 5, internal port 5060, rest 0
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := tt.in.Encode(); !bytes.Equal(got, tt.want) {
				t.Fatalf("Encode:\n%s\nwant\n%s", hex.Dump(got), hex.Dump(tt.want))
			}
			if tt.lossy {
				return
			}
			back, err := DecodeResponse(tt.want)
			if err != nil {
				t.Fatalf("DecodeResponse: %v", err)
			}
			if !reflect.DeepEqual(back, tt.in) {
				t.Fatalf("DecodeResponse = %#v\nwant %#v", back, tt.in)
			}
		})
	}
}

// TestErrorResponses checks the answer each refusal earns, as octets: the
// server sends these without looking inside.
func TestErrorResponses(t *testing.T) {
	tests := []struct {
		name     string
		in       []byte
		lifetime uint32
		want     []byte
	}{
		{
			name:     "unsupported version is answered in version 2",
			in:       cat([]byte{1, 0x01, 0, 0}, []byte{0, 0, 0, 0}, mapped100640007, make([]byte, 36)),
			lifetime: 1800,
			want: cat(
				[]byte{2, 0x81, 0, 1},    // version 2, R|MAP, reserved, UNSUPP_VERSION
				[]byte{0, 0, 0x07, 0x08}, // lifetime 1800
				[]byte{0, 0, 0, 99},      // epoch 99
				mapped100640007[4:],      // reserved: the client IP's last 96 bits, as it did not parse
			),
		},
		{
			name:     "unsupported opcode",
			in:       cat([]byte{2, 0x09, 0, 0}, []byte{0, 0, 0, 0}, mapped100640007),
			lifetime: 1800,
			want:     cat([]byte{2, 0x89, 0, 4}, []byte{0, 0, 0x07, 0x08}, []byte{0, 0, 0, 99}, mapped100640007[4:]),
		},
		{
			name:     "a MAP error copies the request's body",
			in:       cat(mapRequestHeader(), mapBody(), []byte{0x10, 0, 0, 0}),
			lifetime: 1800,
			want: cat(
				[]byte{2, 0x81, 0, 5},    // R|MAP, UNSUPP_OPTION
				[]byte{0, 0, 0x07, 0x08}, // lifetime 1800
				[]byte{0, 0, 0, 99},      // epoch 99
				mapped100640007[4:],      // the client IP's last 96 bits: the options did not parse
				mapBody(),                // nonce, protocol, ports and address as asked
			),
		},
		{
			name:     "an address mismatch parsed, so its reserved field stays zero",
			in:       cat([]byte{2, 0x01, 0, 0}, []byte{0, 0, 0, 60}, mapped100640008, mapBody()),
			lifetime: 1800,
			want: cat(
				[]byte{2, 0x81, 0, 12},   // R|MAP, ADDRESS_MISMATCH
				[]byte{0, 0, 0x07, 0x08}, // lifetime 1800
				[]byte{0, 0, 0, 99},      // epoch 99
				make([]byte, 12),         // reserved
				mapBody(),                // the request's MAP body
			),
		},
		{
			name:     "a request too short for a header keeps what it had of the client IP",
			in:       []byte{2, 0x01, 0, 0, 0, 0, 0, 60, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff},
			lifetime: 1800,
			want: cat(
				[]byte{2, 0x81, 0, 3},                            // R|MAP, MALFORMED_REQUEST
				[]byte{0, 0, 0x07, 0x08},                         // lifetime 1800
				[]byte{0, 0, 0, 99},                              // epoch 99
				[]byte{0, 0, 0, 0, 0, 0, 0xff, 0xff, 0, 0, 0, 0}, // octets 12-19 of the request, then nothing
			),
		},
		{
			name: "NAT-PMP unsupported opcode",
			in:   []byte{0, 4},
			want: []byte{0, 132, 0, 5, 0, 0, 0, 99}, // version 0, 128+4, Unsupported opcode, epoch 99
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Decode(tt.in, subscriber)
			var re *RequestError
			if !errors.As(err, &re) {
				t.Fatalf("Decode error %v, want a *RequestError", err)
			}
			resp := re.Response(tt.lifetime, 99)
			if got := resp.Encode(); !bytes.Equal(got, tt.want) {
				t.Fatalf("error response:\n%s\nwant\n%s", hex.Dump(got), hex.Dump(tt.want))
			}
			// A client must be able to read every error a server sends.
			if back, err := DecodeResponse(tt.want); err != nil || !reflect.DeepEqual(back, resp) {
				t.Fatalf("DecodeResponse = %#v, %v; want %#v", back, err, resp)
			}
		})
	}
}

// TestResultCodes pins every result code of RFC 6887 §7.4 to its number
// and name, and the short-lifetime ones §7.4 names.
func TestResultCodes(t *testing.T) {
	want := []struct {
		code  ResultCode
		value uint8
		name  string
		short bool
	}{
		{Success, 0, "SUCCESS", false},
		{UnsuppVersion, 1, "UNSUPP_VERSION", false},
		{NotAuthorized, 2, "NOT_AUTHORIZED", false},
		{MalformedRequest, 3, "MALFORMED_REQUEST", false},
		{UnsuppOpcode, 4, "UNSUPP_OPCODE", false},
		{UnsuppOption, 5, "UNSUPP_OPTION", false},
		{MalformedOption, 6, "MALFORMED_OPTION", false},
		{NetworkFailure, 7, "NETWORK_FAILURE", true},
		{NoResources, 8, "NO_RESOURCES", true},
		{UnsuppProtocol, 9, "UNSUPP_PROTOCOL", false},
		{UserExQuota, 10, "USER_EX_QUOTA", true},
		{CannotProvideExternal, 11, "CANNOT_PROVIDE_EXTERNAL", true},
		{AddressMismatch, 12, "ADDRESS_MISMATCH", false},
		{ExcessiveRemotePeers, 13, "EXCESSIVE_REMOTE_PEERS", false},
	}
	for _, w := range want {
		if uint8(w.code) != w.value || w.code.String() != w.name || w.code.ShortLifetime() != w.short {
			t.Errorf("%s: value %d short %v, want %s %d short %v", w.code, uint8(w.code), w.code.ShortLifetime(), w.name, w.value, w.short)
		}
	}
	if got := ResultCode(14).String(); got != "result code 14" {
		t.Errorf("ResultCode(14) = %q", got)
	}
}

// TestNATPMPAsPCP checks the translation RFC 6887 Appendix A describes: a
// NAT-PMP mapping is a MAP for the sender, and PCP's verdicts come back in
// NAT-PMP's fewer codes.
func TestNATPMPAsPCP(t *testing.T) {
	req, err := Decode([]byte{0, 2, 0, 0, 0, 22, 0x9c, 0x56, 0, 0, 0x0e, 0x10}, subscriber)
	if err != nil {
		t.Fatal(err)
	}
	got := req.(*MappingRequest).PCP(netip.MustParseAddr("::ffff:100.64.0.7"))
	want := &PCPRequest{Opcode: OpMap, Lifetime: 3600, ClientIP: subscriber, Map: &MapBody{
		Protocol: 6, InternalPort: 22, ExternalPort: 40022, ExternalIP: netip.IPv4Unspecified(),
	}}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("PCP() = %#v %#v, want %#v %#v", got, got.Map, want, want.Map)
	}
	results := map[ResultCode]NATPMPResult{
		Success:               NATPMPSuccess,
		UnsuppVersion:         NATPMPUnsuppVersion,
		NotAuthorized:         NATPMPNotAuthorized,
		MalformedRequest:      NATPMPNotAuthorized,
		UnsuppOpcode:          NATPMPUnsuppOpcode,
		UnsuppOption:          NATPMPNotAuthorized,
		MalformedOption:       NATPMPNotAuthorized,
		NetworkFailure:        NATPMPNetworkFailure,
		NoResources:           NATPMPOutOfResources,
		UnsuppProtocol:        NATPMPNotAuthorized,
		UserExQuota:           NATPMPOutOfResources,
		CannotProvideExternal: NATPMPOutOfResources,
		AddressMismatch:       NATPMPNotAuthorized,
		ExcessiveRemotePeers:  NATPMPOutOfResources,
	}
	for pcp, natpmp := range results {
		if got := NATPMPResultFor(pcp); got != natpmp {
			t.Errorf("NATPMPResultFor(%s) = %s, want %s", pcp, got, natpmp)
		}
	}
}

func TestDecodeResponseRejects(t *testing.T) {
	tests := []struct {
		name string
		in   []byte
		want string
	}{
		{"empty", nil, "pcp: response length: 0 octets, fewer than the 2 of a version and opcode"},
		{"a request", []byte{2, 1}, "pcp: response opcode: R bit clear (octet 0x01): a request, not a response"},
		{"version 1", []byte{1, 0x81}, "pcp: response version: version 1, neither PCP's 2 nor NAT-PMP's 0"},
		{"PCP header cut", cat([]byte{2, 0x80, 0, 0}, make([]byte, 16)), "pcp: response length: 20 octets, want a multiple of 4 from 24 to 1100"},
		{"MAP success without its body", cat([]byte{2, 0x81, 0, 0}, make([]byte, 20)), "pcp: response length: 24 octets, MAP needs 60"},
		{"option past the end", cat([]byte{2, 0x80, 0, 0}, make([]byte, 20), []byte{0x80, 0, 0, 8}, make([]byte, 4)), "pcp: response option length: option 128 at offset 24 has length 8 (12 octets padded) but 8 octets remain"},
		{"NAT-PMP cut", []byte{0, 128, 0, 0, 0, 0}, "pcp: NAT-PMP response length: 6 octets, fewer than 8"},
		{"NAT-PMP success of 8 octets", []byte{0, 129, 0, 0, 0, 0, 0, 1}, "pcp: NAT-PMP response length: 8 octets for opcode 1 with Success"},
	}
	for _, tt := range tests {
		_, err := DecodeResponse(tt.in)
		if err == nil || err.Error() != tt.want {
			t.Errorf("%s: DecodeResponse error = %v\nwant %s", tt.name, err, tt.want)
		}
	}
}

// TestDecodeResponseFromNATPMPOnlyServer reads what a server that speaks
// only NAT-PMP sends a PCP client (RFC 6887 Appendix A, RFC 6886 §3.5):
// version 0, the request's opcode with the R bit, Unsupported Version.
func TestDecodeResponseFromNATPMPOnlyServer(t *testing.T) {
	got, err := DecodeResponse([]byte{0, 0x81, 0, 1, 0, 0, 0x30, 0x39}) // version 0, R|1, result 1, epoch 12345
	if err != nil {
		t.Fatal(err)
	}
	want := &NATPMPErrorResponse{Opcode: 1, Result: NATPMPUnsuppVersion, Epoch: 12345}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("DecodeResponse = %#v, want %#v", got, want)
	}
}

package pcp

import (
	"encoding/binary"
	"fmt"
	"net/netip"
)

// NATPMPOpcode is a NAT-PMP request opcode (RFC 6886 §3).
type NATPMPOpcode uint8

const (
	NATPMPOpPublicAddress NATPMPOpcode = 0
	NATPMPOpMapUDP        NATPMPOpcode = 1
	NATPMPOpMapTCP        NATPMPOpcode = 2
)

// Protocol is the IANA protocol number a mapping opcode stands for, the
// number PCP's MAP carries instead.
func (o NATPMPOpcode) Protocol() uint8 {
	switch o {
	case NATPMPOpMapUDP:
		return protoUDP
	case NATPMPOpMapTCP:
		return protoTCP
	}
	return 0
}

// IANA protocol numbers NAT-PMP's two mapping opcodes stand for.
const (
	protoTCP = 6
	protoUDP = 17
)

// NATPMPResult is a NAT-PMP result code (RFC 6886 §3.5), 16 bits on the
// wire.
type NATPMPResult uint16

const (
	NATPMPSuccess        NATPMPResult = 0
	NATPMPUnsuppVersion  NATPMPResult = 1
	NATPMPNotAuthorized  NATPMPResult = 2 // "Not Authorized/Refused"
	NATPMPNetworkFailure NATPMPResult = 3
	NATPMPOutOfResources NATPMPResult = 4
	NATPMPUnsuppOpcode   NATPMPResult = 5
)

func (r NATPMPResult) String() string {
	switch r {
	case NATPMPSuccess:
		return "Success"
	case NATPMPUnsuppVersion:
		return "Unsupported Version"
	case NATPMPNotAuthorized:
		return "Not Authorized/Refused"
	case NATPMPNetworkFailure:
		return "Network Failure"
	case NATPMPOutOfResources:
		return "Out of resources"
	case NATPMPUnsuppOpcode:
		return "Unsupported opcode"
	}
	return fmt.Sprintf("NAT-PMP result code %d", uint16(r))
}

// NATPMPResultFor is the NAT-PMP answer to a version 0 request the server
// processed as PCP (RFC 6887 Appendix A). NAT-PMP has fewer codes: quota
// and exhaustion are all "out of resources", and whatever else PCP would
// refuse is "refused".
func NATPMPResultFor(r ResultCode) NATPMPResult {
	switch r {
	case Success:
		return NATPMPSuccess
	case UnsuppVersion:
		return NATPMPUnsuppVersion
	case NetworkFailure:
		return NATPMPNetworkFailure
	case NoResources, UserExQuota, CannotProvideExternal, ExcessiveRemotePeers:
		return NATPMPOutOfResources
	case UnsuppOpcode:
		return NATPMPUnsuppOpcode
	}
	return NATPMPNotAuthorized
}

const (
	natpmpPublicAddressRequestSize  = 2
	natpmpMappingRequestSize        = 12
	natpmpErrorResponseSize         = 8
	natpmpPublicAddressResponseSize = 12
	natpmpMappingResponseSize       = 16
)

// PublicAddressRequest asks for the NAT's external IPv4 address (RFC 6886
// §3.2).
type PublicAddressRequest struct{}

// MappingRequest asks for, renews or deletes a UDP or TCP mapping (RFC
// 6886 §3.3). Lifetime 0 deletes; lifetime and internal port both 0
// delete every mapping of the protocol (§3.4).
type MappingRequest struct {
	Opcode                NATPMPOpcode // NATPMPOpMapUDP or NATPMPOpMapTCP
	InternalPort          uint16
	SuggestedExternalPort uint16
	Lifetime              uint32
}

// PublicAddressResponse answers a PublicAddressRequest.
type PublicAddressResponse struct {
	Result     NATPMPResult
	Epoch      uint32 // seconds since start of epoch
	ExternalIP netip.Addr
}

// MappingResponse answers a MappingRequest. On an error RFC 6886 leaves
// the external port and lifetime undefined; a server sends them as zero.
type MappingResponse struct {
	Opcode       NATPMPOpcode // the request's
	Result       NATPMPResult
	Epoch        uint32
	InternalPort uint16
	ExternalPort uint16
	Lifetime     uint32
}

// NATPMPErrorResponse is the short answer to a request that has no
// response format of its own: an unsupported opcode, and the Unsupported
// Version a NAT-PMP-only server sends a PCP client. For the opcode RFC
// 6886 §3.5 asks for the request back with the R bit set and result 5;
// the 8 octets of a NAT-PMP response header are that for every request
// NAT-PMP defines.
type NATPMPErrorResponse struct {
	Opcode uint8 // the request's, without the R bit
	Result NATPMPResult
	Epoch  uint32
}

func (*PublicAddressRequest) isRequest()   {}
func (*MappingRequest) isRequest()         {}
func (*PublicAddressResponse) isResponse() {}
func (*MappingResponse) isResponse()       {}
func (*NATPMPErrorResponse) isResponse()   {}

func (*PublicAddressRequest) Encode() []byte {
	return []byte{VersionNATPMP, byte(NATPMPOpPublicAddress)}
}

func (r *MappingRequest) Encode() []byte {
	b := make([]byte, natpmpMappingRequestSize)
	b[1] = byte(r.Opcode)
	binary.BigEndian.PutUint16(b[4:], r.InternalPort)
	binary.BigEndian.PutUint16(b[6:], r.SuggestedExternalPort)
	binary.BigEndian.PutUint32(b[8:], r.Lifetime)
	return b
}

func natpmpHeader(size int, opcode uint8, result NATPMPResult, epoch uint32) []byte {
	b := make([]byte, size)
	b[1] = opcode | responseBit
	binary.BigEndian.PutUint16(b[2:], uint16(result))
	binary.BigEndian.PutUint32(b[4:], epoch)
	return b
}

// Encode writes the external address only with success, since RFC 6886
// §3.2 has an error's address sent as zero; one that is not IPv4 goes out
// as 0.0.0.0 too, NAT-PMP having room for nothing else.
func (r *PublicAddressResponse) Encode() []byte {
	b := natpmpHeader(natpmpPublicAddressResponseSize, byte(NATPMPOpPublicAddress), r.Result, r.Epoch)
	if a := r.ExternalIP.Unmap(); a.Is4() && r.Result == NATPMPSuccess {
		a4 := a.As4()
		copy(b[8:], a4[:])
	}
	return b
}

func (r *MappingResponse) Encode() []byte {
	b := natpmpHeader(natpmpMappingResponseSize, byte(r.Opcode), r.Result, r.Epoch)
	binary.BigEndian.PutUint16(b[8:], r.InternalPort)
	binary.BigEndian.PutUint16(b[10:], r.ExternalPort)
	binary.BigEndian.PutUint32(b[12:], r.Lifetime)
	return b
}

func (r *NATPMPErrorResponse) Encode() []byte {
	return natpmpHeader(natpmpErrorResponseSize, r.Opcode, r.Result, r.Epoch)
}

// PCP is the MAP request a server that speaks PCP handles this request as
// (RFC 6887 Appendix A), for the client at source. NAT-PMP has no nonce,
// so the nonce is zero: a server must not hold NAT-PMP renewals to one.
func (r *MappingRequest) PCP(source netip.Addr) *PCPRequest {
	return &PCPRequest{
		Opcode:   OpMap,
		Lifetime: r.Lifetime,
		ClientIP: source.Unmap(),
		Map: &MapBody{
			Protocol:     r.Opcode.Protocol(),
			InternalPort: r.InternalPort,
			ExternalPort: r.SuggestedExternalPort,
			ExternalIP:   netip.IPv4Unspecified(),
		},
	}
}

// decodeNATPMP takes a version 0 request whose R bit Decode has checked.
// NAT-PMP has no result code for a malformed request, so a request of the
// wrong length is dropped: an answer could only mislead the client.
func decodeNATPMP(b []byte) (Request, error) {
	op := NATPMPOpcode(b[1])
	want := natpmpMappingRequestSize
	switch op {
	case NATPMPOpPublicAddress:
		want = natpmpPublicAddressRequestSize
	case NATPMPOpMapUDP, NATPMPOpMapTCP:
	default:
		e := &RequestError{
			Result:       UnsuppOpcode,
			NATPMPResult: NATPMPUnsuppOpcode,
			Field:        "opcode",
			Reason:       fmt.Sprintf("NAT-PMP opcode %d is not 0, 1 or 2", uint8(op)),
		}
		e.natpmp = &NATPMPErrorResponse{Opcode: uint8(op), Result: NATPMPUnsuppOpcode}
		return nil, e
	}
	if len(b) != want {
		return nil, dropped("length", "NAT-PMP opcode %d request of %d octets, want %d", uint8(op), len(b), want)
	}
	if op == NATPMPOpPublicAddress {
		return &PublicAddressRequest{}, nil
	}
	return &MappingRequest{
		Opcode:                op,
		InternalPort:          binary.BigEndian.Uint16(b[4:]),
		SuggestedExternalPort: binary.BigEndian.Uint16(b[6:]),
		Lifetime:              binary.BigEndian.Uint32(b[8:]),
	}, nil
}

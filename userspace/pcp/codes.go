package pcp

import "fmt"

// Port is the UDP port PCP and NAT-PMP servers listen on (RFC 6887 §19.1,
// RFC 6886 §3).
const Port = 5351

// Versions on the wire. Both protocols share the port and the first
// octet, which is how a server tells them apart (RFC 6887 Appendix A).
const (
	VersionNATPMP = 0
	VersionPCP    = 2
)

// MaxMessageSize bounds every PCP message (RFC 6887 §7).
const MaxMessageSize = 1100

const (
	headerSize   = 24 // RFC 6887 §7.1 and §7.2, requests and responses alike
	mapBodySize  = 36 // RFC 6887 §11.1
	peerBodySize = 56 // RFC 6887 §12.1
	optionHeader = 4  // RFC 6887 §7.3
	responseBit  = 0x80
)

// Opcode is a PCP opcode without the R bit (RFC 6887 §19.2).
type Opcode uint8

const (
	OpAnnounce Opcode = 0
	OpMap      Opcode = 1
	OpPeer     Opcode = 2
)

func (o Opcode) String() string {
	switch o {
	case OpAnnounce:
		return "ANNOUNCE"
	case OpMap:
		return "MAP"
	case OpPeer:
		return "PEER"
	}
	return fmt.Sprintf("opcode %d", uint8(o))
}

// bodySize is the length of the opcode-specific information, and false
// for an opcode this package does not know.
func (o Opcode) bodySize() (int, bool) {
	switch o {
	case OpAnnounce:
		return 0, true
	case OpMap:
		return mapBodySize, true
	case OpPeer:
		return peerBodySize, true
	}
	return 0, false
}

// ResultCode is a PCP result code (RFC 6887 §7.4).
type ResultCode uint8

const (
	Success               ResultCode = 0
	UnsuppVersion         ResultCode = 1
	NotAuthorized         ResultCode = 2
	MalformedRequest      ResultCode = 3
	UnsuppOpcode          ResultCode = 4
	UnsuppOption          ResultCode = 5
	MalformedOption       ResultCode = 6
	NetworkFailure        ResultCode = 7
	NoResources           ResultCode = 8
	UnsuppProtocol        ResultCode = 9
	UserExQuota           ResultCode = 10
	CannotProvideExternal ResultCode = 11
	AddressMismatch       ResultCode = 12
	ExcessiveRemotePeers  ResultCode = 13
)

var resultNames = [...]string{
	Success:               "SUCCESS",
	UnsuppVersion:         "UNSUPP_VERSION",
	NotAuthorized:         "NOT_AUTHORIZED",
	MalformedRequest:      "MALFORMED_REQUEST",
	UnsuppOpcode:          "UNSUPP_OPCODE",
	UnsuppOption:          "UNSUPP_OPTION",
	MalformedOption:       "MALFORMED_OPTION",
	NetworkFailure:        "NETWORK_FAILURE",
	NoResources:           "NO_RESOURCES",
	UnsuppProtocol:        "UNSUPP_PROTOCOL",
	UserExQuota:           "USER_EX_QUOTA",
	CannotProvideExternal: "CANNOT_PROVIDE_EXTERNAL",
	AddressMismatch:       "ADDRESS_MISMATCH",
	ExcessiveRemotePeers:  "EXCESSIVE_REMOTE_PEERS",
}

func (r ResultCode) String() string {
	if int(r) < len(resultNames) {
		return resultNames[r]
	}
	return fmt.Sprintf("result code %d", uint8(r))
}

// ShortLifetime reports whether a client may retry soon: RFC 6887 §7.4
// calls these the short lifetime errors, every other error is long, and
// the server picks the error's Lifetime accordingly.
func (r ResultCode) ShortLifetime() bool {
	switch r {
	case NetworkFailure, NoResources, UserExQuota, CannotProvideExternal:
		return true
	}
	return false
}

// OptionCode is a PCP option code (RFC 6887 §19.3).
type OptionCode uint8

const (
	OptThirdParty    OptionCode = 1
	OptPreferFailure OptionCode = 2
	OptFilter        OptionCode = 3
)

func (c OptionCode) String() string {
	switch c {
	case OptThirdParty:
		return "THIRD_PARTY"
	case OptPreferFailure:
		return "PREFER_FAILURE"
	case OptFilter:
		return "FILTER"
	}
	return fmt.Sprintf("option %d", uint8(c))
}

// Mandatory reports whether a server that does not know the option must
// refuse the request rather than ignore it: the top bit clear means
// mandatory-to-process (RFC 6887 §7.3).
func (c OptionCode) Mandatory() bool { return c&0x80 == 0 }

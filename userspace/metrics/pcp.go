package metrics

import (
	"github.com/blocknat/blocknat/userspace/pcp"
	"github.com/blocknat/blocknat/userspace/wire"
)

// PCPFigures are the PCP server's counters (pcp.enabled): the mappings it
// holds and what it did with the requests it received. Like every figure
// here they are aggregates; none names a subscriber or an address.
type PCPFigures struct {
	// Mappings counts the mappings held, by protocol name (PCPProtos).
	Mappings map[string]int
	// Requests counts the answers sent, by what they answered.
	Requests map[PCPRequest]uint64
	// Dropped counts the requests left unanswered, by reason
	// (PCPDropReasons).
	Dropped map[string]uint64
	// Suspect counts the requests that arrived on the suspect port, having
	// failed the inside source validation; each is also counted under
	// Requests or Dropped.
	Suspect uint64
	// Announcements counts the ANNOUNCE messages sent.
	Announcements uint64
}

// PCPRequest names a counter of answered requests: Version is "pcp" or
// "natpmp", Opcode and Result the protocol's own names, so that an
// operator reads them as in the RFC.
type PCPRequest struct {
	Version, Opcode, Result string
}

// PCPProtos are the proto label values of blocknat_pcp_mappings, each
// exported while the server is on, 0 included, so that a dashboard's
// series do not come and go with the mappings.
var PCPProtos = []string{"tcp", "udp"}

// PCPDropReasons are the reasons the PCP server leaves a request
// unanswered (pcpserver.DropReason), each exported while the server is on,
// 0 included, so that a rate starts at the first drop. A reason the server
// adds later is exported too, once it counts.
var PCPDropReasons = []string{"malformed", "rate_limited", "refusal_rate_limited", "send_failed", "internal"}

// PCPSuccess reports whether result is an answer that granted the request:
// PCP's SUCCESS or NAT-PMP's, which the RFCs spell differently.
func PCPSuccess(result string) bool {
	return result == pcp.Success.String() || result == pcp.NATPMPSuccess.String()
}

// PCPStatusOf is what `blocknat status` shows of f: nil when the server is
// off (f is nil). Successful answers, PCP's and NAT-PMP's, are counted
// under one result, wire.PCPResultSuccess, so that the client tells a
// refusal without knowing either protocol's spelling.
func PCPStatusOf(f *PCPFigures) *wire.PCPStatus {
	if f == nil {
		return nil
	}
	st := &wire.PCPStatus{Mappings: map[string]int{}, Results: map[string]uint64{},
		Suspect: f.Suspect, Announcements: f.Announcements}
	for _, proto := range PCPProtos {
		st.Mappings[proto] = 0
	}
	for proto, n := range f.Mappings {
		st.Mappings[proto] = n
	}
	for req, n := range f.Requests {
		st.RequestsAnswered += n
		result := req.Result
		if PCPSuccess(result) {
			result = wire.PCPResultSuccess
		} else {
			st.Refused += n
		}
		st.Results[result] += n
	}
	for reason, n := range f.Dropped {
		st.Dropped += n
		if n > 0 {
			if st.DroppedBy == nil {
				st.DroppedBy = map[string]uint64{}
			}
			st.DroppedBy[reason] = n
		}
	}
	return st
}

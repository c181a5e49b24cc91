package pcpserver

import (
	"maps"

	"github.com/blocknat/blocknat/userspace/pcp"
)

// DropReason says why a request got no answer.
type DropReason string

const (
	// DropMalformed: not a request, or one the RFCs say to ignore (a
	// response, a NAT-PMP request of the wrong length).
	DropMalformed DropReason = "malformed"
	// DropRateLimited: a subscriber beyond its bucket and beyond the one
	// error answer a second it still gets.
	DropRateLimited DropReason = "rate_limited"
	// DropRefusalRate: a refusal (no subscriber, or a suspect request)
	// beyond the global refusal bucket.
	DropRefusalRate DropReason = "refusal_rate_limited"
	// DropSendFailed: the answer could not be sent.
	DropSendFailed DropReason = "send_failed"
	// DropInternal: the handler failed; the log has the stack.
	DropInternal DropReason = "internal"
)

// RequestKey names a counter of answered requests. Version is "pcp" or
// "natpmp"; Opcode and Result are the protocol's own names, so that an
// operator reads them as in the RFC.
type RequestKey struct {
	Version string
	Opcode  string
	Result  string
}

// Stats is what /metrics and blocknat status show. It holds no
// per-subscriber or per-address figure.
type Stats struct {
	// Mappings counts the mappings held, by IANA protocol number.
	Mappings map[uint8]int
	// Requests counts the answers sent, by what they answered.
	Requests map[RequestKey]uint64
	// Dropped counts the requests left unanswered, by why.
	Dropped map[DropReason]uint64
	// Suspect counts the requests that arrived at the suspect port (all
	// refused or dropped, and counted under Requests or Dropped too).
	Suspect uint64
	// Announcements counts the unsolicited announcements sent.
	Announcements uint64
}

type counters struct {
	requests      map[RequestKey]uint64
	dropped       map[DropReason]uint64
	suspect       uint64
	announcements uint64
}

func newCounters() counters {
	return counters{requests: map[RequestKey]uint64{}, dropped: map[DropReason]uint64{}}
}

// Stats copies the counters.
func (s *Server) Stats() Stats {
	s.mu.Lock()
	defer s.mu.Unlock()
	st := Stats{
		Mappings:      map[uint8]int{},
		Requests:      maps.Clone(s.stats.requests),
		Dropped:       maps.Clone(s.stats.dropped),
		Suspect:       s.stats.suspect,
		Announcements: s.stats.announcements,
	}
	for proto, n := range s.byProto {
		if n > 0 {
			st.Mappings[proto] = n
		}
	}
	return st
}

func requestKey(resp pcp.Response) RequestKey {
	switch r := resp.(type) {
	case *pcp.PCPResponse:
		op := "other" // an unknown opcode, so that labels stay few
		switch r.Opcode {
		case pcp.OpAnnounce, pcp.OpMap, pcp.OpPeer:
			op = r.Opcode.String()
		}
		return RequestKey{Version: "pcp", Opcode: op, Result: r.Result.String()}
	case *pcp.MappingResponse:
		op := "map_udp"
		if r.Opcode == pcp.NATPMPOpMapTCP {
			op = "map_tcp"
		}
		return RequestKey{Version: "natpmp", Opcode: op, Result: r.Result.String()}
	case *pcp.PublicAddressResponse:
		return RequestKey{Version: "natpmp", Opcode: "public_address", Result: r.Result.String()}
	case *pcp.NATPMPErrorResponse:
		return RequestKey{Version: "natpmp", Opcode: "other", Result: r.Result.String()}
	}
	return RequestKey{Version: "other", Opcode: "other", Result: "other"}
}

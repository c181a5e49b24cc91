package api

// Label values of Counters.ConnsOverCap, named here so that the metrics
// package and the server cannot drift apart.
const (
	// OverCapPerUID: the peer uid already held MaxConnsPerUID connections
	// on the unix socket.
	OverCapPerUID = "per_uid"
	// OverCapTotal: MaxConns connections were open over every listener.
	// A connection over both caps counts here.
	OverCapTotal = "total"
)

// Counters are cumulative counts, since NewServer, of what the server
// turned away without an audit entry of its own, for the agent's /metrics.
// Every key is present, zero or not, so that a series exists before its
// first event.
type Counters struct {
	// Rejected counts the requests net/http answered itself, before any
	// handler ran, by reason (RejectBadRequest, RejectHeadersTooLarge,
	// RejectBadVersion, RejectTLSHandshake, RejectOther). On the unix
	// socket and for plain HTTP sent to the TLS listener they are told
	// apart by the status net/http sent; a failed TLS handshake by the
	// line net/http logs for it. A malformed request sent inside TLS, by
	// a peer that completed the handshake with a verified certificate,
	// is not counted: net/http writes that answer into the TLS stream,
	// where nothing of ours can read it.
	Rejected map[string]uint64
	// ConnsOverCap counts the connections closed at accept, unread, for
	// being over a connection cap, by OverCapPerUID and OverCapTotal.
	ConnsOverCap map[string]uint64
	// RefusalsSummarised counts the refusals of operators without a role
	// that were past the budget (RefusalBurst, RefusalsPerMinute): each
	// was answered 429 and is in the count of a later wire.ActionRefusals
	// entry instead of an entry of its own. It grows when the 429 is
	// sent, before the summary is written.
	RefusalsSummarised uint64
}

// Counters returns the counts so far. It is safe for concurrent use and
// takes no lock, so a scrape never waits on a flood.
func (s *Server) Counters() Counters {
	return Counters{
		Rejected:           s.rejections.counts(),
		ConnsOverCap:       s.conns.overCap(),
		RefusalsSummarised: s.refusals.summarised.Load(),
	}
}

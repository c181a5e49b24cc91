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
	// ConnsOverCap counts the connections closed at accept, unread, for
	// being over a connection cap, by OverCapPerUID and OverCapTotal.
	ConnsOverCap map[string]uint64
	// RefusalsSummarised counts the refusals of operators without a role
	// that were past the budget (RefusalBurst, RefusalsPerMinute): each
	// was answered 429 and is in the count of a later ActionRefusals
	// entry instead of an entry of its own. It grows when the 429 is
	// sent, before the summary is written.
	RefusalsSummarised uint64
}

// Counters returns the counts so far. It is safe for concurrent use and
// takes no lock, so a scrape never waits on a flood.
func (s *Server) Counters() Counters {
	return Counters{
		ConnsOverCap:       s.conns.overCap(),
		RefusalsSummarised: s.refusals.summarised.Load(),
	}
}

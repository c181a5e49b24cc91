package wire

import (
	"net/netip"
	"time"
)

// LookupRequest is the body of POST /v1/lookup. Times are RFC 3339 with an
// explicit zone; Tolerance is a Go duration ("2s"), empty meaning zero.
type LookupRequest struct {
	IP        string `json:"ip"`
	Port      uint16 `json:"port"`
	Time      string `json:"time"`
	Tolerance string `json:"tolerance,omitempty"`
	Purpose   string `json:"purpose"`
}

// HistoryRequest is the body of POST /v1/history. Exactly one of
// Subscriber (the subscriber's inside IPv4 address) and MAC (a device's
// hardware address, resolved through the lease history) is given.
type HistoryRequest struct {
	Subscriber string `json:"subscriber,omitempty"`
	MAC        string `json:"mac,omitempty"`
	From       string `json:"from"`
	To         string `json:"to"`
	Purpose    string `json:"purpose"`
}

// ExportRequest is the body of POST /v1/export. Format is FormatCSV or
// FormatJSONL.
//
// Subscriber or MAC narrow it to one subscriber's inside address or one
// device (through its leases); at most one of them is given.
type ExportRequest struct {
	From       string `json:"from"`
	To         string `json:"to"`
	Format     string `json:"format"`
	Subscriber string `json:"subscriber,omitempty"`
	MAC        string `json:"mac,omitempty"`
	Purpose    string `json:"purpose"`
}

// LookupQuery echoes what a lookup searched. A stated time covers its
// precision: "12:00:01Z" is the whole second [12:00:01, 12:00:02), and
// "12:00:01.7Z" the tenth of a second [12:00:01.7, 12:00:01.8). The
// tolerance widens that interval on both sides, giving [From, To): From is
// included, To is not.
type LookupQuery struct {
	IP   netip.Addr `json:"ip"`
	Port uint16     `json:"port"`
	// Time is the stated time as parsed, in UTC.
	Time time.Time `json:"time"`
	// Precision is the width the stated time covers, a Go duration ("1s",
	// "100ms", "1ms").
	Precision string    `json:"precision"`
	Tolerance string    `json:"tolerance"` // a Go duration, "0s" when none
	From      time.Time `json:"from"`
	To        time.Time `json:"to"` // exclusive
}

// LookupResponse answers a lookup. Candidates are the block records that
// meet the searched interval; Owners says, for each epoch in force during
// it, whom the deterministic mapping gives the port to, so that an answer
// never reads "nobody" where the mapping names an owner. No candidate is an
// answer too (outcome "empty").
type LookupResponse struct {
	// AuditSeq is the audit entry this lookup made. It is not part of the
	// hashed answer (the entry names the answer's hash, so the answer
	// cannot name the entry); the client fills it in from the envelope.
	AuditSeq   uint64      `json:"audit_seq,omitempty"`
	Query      LookupQuery `json:"query"`
	Candidates []Record    `json:"candidates"`
	Owners     []Owner     `json:"owners"`
	// Clock is the router's clock as the agent read it when it gave this
	// answer; null from a server that does not read it (a test's). The
	// clock when each epoch was recorded is in the epoch's summary.
	Clock *ClockState `json:"clock,omitempty"`
	// Evidence is the answer exactly as audited, with its proof; the
	// client fills it in. It is what `lookup --evidence` writes.
	Evidence *Evidence `json:"-"`
}

// Coverage says how much of a searched interval a record or lease covers.
const (
	CoverageAll  = "all"  // it held for the whole searched interval
	CoveragePart = "part" // only for part of it
)

// Owner is what one epoch's deterministic mapping says about the public
// address and port.
type Owner struct {
	// Router (a fleet's answers only) is the router whose epoch this is:
	// every router has its own epochs, so a fleet has one row per epoch
	// of each router in force during the searched interval. A router
	// whose epochs do not have the address in their pool is left out
	// when another router's do.
	Router string       `json:"router,omitempty"`
	Epoch  EpochSummary `json:"epoch"`
	// From and To are the part of the searched interval during which this
	// epoch was in force, [From, To).
	From time.Time `json:"from"`
	To   time.Time `json:"to"`
	// Mapped is false when this epoch maps the address and port to nobody
	// (the address is not in its pool, or the port in no assigned block);
	// Reason then says why.
	Mapped bool   `json:"mapped"`
	Reason string `json:"reason,omitempty"`
	// Subscriber, Inside and the block are the mapping's owner.
	Subscriber uint32     `json:"subscriber"`
	Inside     netip.Addr `json:"inside,omitzero"`
	Public     netip.Addr `json:"public,omitzero"`
	PortLo     uint16     `json:"port_lo,omitempty"`
	PortHi     uint16     `json:"port_hi,omitempty"`
	// Active is true when a candidate of this epoch shows the owner's
	// block active during [From, To).
	Active bool `json:"active"`
	// Before and After are, when no record shows the block active, the
	// nearest records of the owner's block on either side.
	Before *Nearest `json:"before,omitempty"`
	After  *Nearest `json:"after,omitempty"`
}

// Nearest is a record of the owner's block close to, but outside, the
// searched interval.
type Nearest struct {
	// Router (a fleet's answers only) is the router that recorded it.
	Router string `json:"router,omitempty"`
	// Start and End are to the millisecond, rounded outward, as in Record.
	Start time.Time  `json:"start"`
	End   *time.Time `json:"end"`
	// Gap is the time between the record and the searched interval: from
	// the record's end to From (before), or from To to the record's start
	// (after); a Go duration.
	Gap string `json:"gap"`
}

// HistoryQuery echoes what a history searched, in UTC. Either Subscriber
// or MAC is set, as asked.
type HistoryQuery struct {
	Subscriber netip.Addr `json:"subscriber,omitzero"`
	MAC        string     `json:"mac,omitempty"`
	From       time.Time  `json:"from"`
	To         time.Time  `json:"to"`
}

// HistoryResponse answers a history request, ordered by start. A history by
// MAC lists the device's leases as well, and each record the leases that
// held its inside address.
type HistoryResponse struct {
	AuditSeq uint64       `json:"audit_seq,omitempty"` // see LookupResponse.AuditSeq
	Query    HistoryQuery `json:"query"`
	Records  []Record     `json:"records"`
	Leases   []LeaseInfo  `json:"leases,omitempty"` // history by MAC: the device's leases in the interval
	Clock    *ClockState  `json:"clock,omitempty"`  // see LookupResponse.Clock
	Evidence *Evidence    `json:"-"`
}

// Record is one block record as every answer lists it: a lookup's
// candidates, a history's records and each line of a JSONL export (a CSV
// export has the columns CSVHeader names).
//
// A lookup and a history also say which epoch was in force when the record
// began and over which interval its leases were resolved; an export line
// leaves EpochInForce, Coverage, LeasesFrom and LeasesTo out.
type Record struct {
	Subscriber uint32     `json:"subscriber"` // index in configuration order
	Inside     netip.Addr `json:"inside"`
	Public     netip.Addr `json:"public"`
	PortLo     uint16     `json:"port_lo"`
	PortHi     uint16     `json:"port_hi"`
	// Start and End are kept to the millisecond and rounded outward
	// (Start down, End up), so the interval holds the block's true one
	// and is less than a millisecond wider at each end.
	Start time.Time  `json:"start"`
	End   *time.Time `json:"end"` // null while the block is still held
	// Epoch is the epoch the record names.
	Epoch uint32 `json:"epoch"`
	// EpochInForce (lookup and history) is the epoch the store holds as in
	// force at Start; absent when the store has none (never written, or
	// removed by retention). Its ID differs from Epoch only if the store is
	// inconsistent, which a reader must then be told.
	EpochInForce *EpochSummary `json:"epoch_in_force,omitempty"`
	Flags        []string      `json:"flags"` // FlagRecovered
	// Coverage (lookup only) says whether the record covers all of the
	// searched interval or only part of it.
	Coverage string `json:"coverage,omitempty"`
	// LeasesFrom and LeasesTo (lookup and history) are the interval over
	// which the inside address was resolved to leases: the part of the
	// record's interval that lies in the searched one.
	LeasesFrom time.Time `json:"leases_from,omitzero"`
	LeasesTo   time.Time `json:"leases_to,omitzero"`
	// Leases are the DHCP leases that held the inside address during
	// [LeasesFrom, LeasesTo] (an export: during the part of the record's
	// interval it covers), in order of start; empty when the lease history
	// knows of none (a static address, or no DHCP hook).
	Leases []LeaseInfo `json:"leases"`
	// Router and Intervals are set in a fleet service's answers only; a
	// router's own answers leave both out.
	//
	// A fleet merges the records of one subscriber (number and inside
	// address) holding one block (public address, PortLo, PortHi) into
	// one candidate, whichever routers recorded them: a subscriber who
	// moved from router A to router B (a failover between two routers
	// with the same mapping) is named once. Start is then the earliest
	// record's start, End the latest end (null if any record is still
	// open), Epoch and EpochInForce those of the earliest record, and
	// Intervals lists every record, in order of start, with its router.
	// Router names the router when every interval comes from the same
	// one, and is empty when they come from several. An export line is
	// one record and carries its Router without Intervals.
	Router    string             `json:"router,omitempty"`
	Intervals []RecordedInterval `json:"intervals,omitempty"`
}

// RecordedInterval is one router's record within a fleet's merged
// candidate: when that router held the block for the subscriber.
type RecordedInterval struct {
	Router string     `json:"router"`
	Start  time.Time  `json:"start"`
	End    *time.Time `json:"end"` // null while the block is still held
	Epoch  uint32     `json:"epoch"`
	Flags  []string   `json:"flags"`
}

// LeaseInfo is one DHCP lease of an inside address.
type LeaseInfo struct {
	Inside   netip.Addr `json:"inside"`
	MAC      string     `json:"mac"`
	ClientID string     `json:"client_id,omitempty"` // hex
	Hostname string     `json:"hostname,omitempty"`
	Start    time.Time  `json:"start"`
	// End is the release or expiry; null for an infinite lease still held.
	End *time.Time `json:"end"`
	// Ended is false while the lease may still be renewed: End is then its
	// current expiry.
	Ended  bool   `json:"ended"`
	Source string `json:"source"`
	// Coverage says whether the lease covers all of the interval it was
	// resolved over, or part of it.
	Coverage string `json:"coverage"`
	// Routers (a fleet's answers only) are the routers whose DHCP hooks
	// reported this lease; one lease (inside, MAC and start) reported by
	// an active and a standby router is listed once, naming both.
	Routers []string `json:"routers,omitempty"`
}

// FlagRecovered marks a record the reconciler found in the kernel rather
// than the ring buffer announcing it. Start is when the kernel marked the
// block active, or, if the kernel had no time for it, when the agent
// noticed, which may be after the block became active. A flag this version
// does not know is spelt "unknown:0x" and its bits in hex.
const FlagRecovered = "recovered"

// EpochSummary is the mapping configuration of one epoch (RFC 7422 §3).
type EpochSummary struct {
	ID        uint32         `json:"id"`
	Start     time.Time      `json:"start"`
	Prefixes  []netip.Prefix `json:"prefixes"`
	Pool      []netip.Addr   `json:"pool"`
	PortLo    uint16         `json:"port_lo"`
	PortHi    uint16         `json:"port_hi"`
	BlockSize uint16         `json:"block_size"`
	Ratio     uint32         `json:"ratio"`
	Hash      string         `json:"hash"` // hex SHA-256 of the parameters
	// Clock is the router's clock as the agent read it when it recorded
	// this copy of the epoch (re-recorded at every start, reload and
	// daily); absent in epochs recorded before the clock was.
	Clock *ClockState `json:"clock,omitempty"`
}

// CSVHeader is the first line of a CSV export. end is empty for a block
// still held; flags are separated by "|"; macs lists the MAC of every lease
// that held the inside address during the record, separated by "|".
var CSVHeader = []string{"subscriber", "inside", "public", "port_lo", "port_hi", "start", "end", "epoch", "flags", "macs"}

// CSVHeaderFleet is the first line of a fleet service's CSV export: the
// columns of CSVHeader and a trailing router, the router that recorded
// the line's record. A router's own export keeps CSVHeader, so that what
// reads it is unchanged.
var CSVHeaderFleet = append(append([]string(nil), CSVHeader...), "router")

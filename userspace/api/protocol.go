package api

import (
	"encoding/hex"
	"encoding/json"
	"net/netip"
	"time"

	"github.com/blocknat/blocknat/userspace/audit"
	"github.com/blocknat/blocknat/userspace/leasehook"
	"github.com/blocknat/blocknat/userspace/store"
)

// Paths of the API. The version prefix lets a later protocol live beside
// this one.
const (
	PathLookup       = "/v1/lookup"
	PathHistory      = "/v1/history"
	PathExport       = "/v1/export"
	PathStatus       = "/v1/status"
	PathAudit        = "/v1/audit"
	PathAuditVerify  = "/v1/audit/verify"
	PathAuditSubject = "/v1/audit/subject"
	PathLeases       = "/v1/leases"
)

// Headers the server sets.
const (
	// HeaderAuditSeq carries the sequence number of the audit entry the
	// request caused, on every response except a 503 (no entry was written).
	HeaderAuditSeq = "X-Blocknat-Audit-Seq"
	// HeaderRecords is the number of records an export announces. It is
	// counted, and audited, before the first record is sent.
	HeaderRecords = "X-Blocknat-Records"
	// TrailerRecordsWritten is an HTTP trailer of the export: the number of
	// records actually sent. It is missing when the stream broke off, and a
	// client must treat the export as failed unless it equals HeaderRecords.
	TrailerRecordsWritten = "X-Blocknat-Records-Written"
)

// Limits of the protocol.
const (
	// MaxBodyBytes caps a request body; a query is a few hundred bytes.
	MaxBodyBytes = 64 << 10
	// MaxTolerance caps a lookup's clock-skew tolerance. A wider window no
	// longer answers "who was it at T" but "who was it that day".
	MaxTolerance = 24 * time.Hour
	// DefaultAuditLimit and MaxAuditLimit bound GET /v1/audit.
	DefaultAuditLimit = 50
	MaxAuditLimit     = 1000
	// MaxLeaseEvents caps one POST /v1/leases: a hook delivers its queue
	// in batches of at most this many.
	MaxLeaseEvents = 256
	// MaxSubjectWindow caps an audit subject search; a subject-access
	// request names a period, and a wider one reads the whole log.
	MaxSubjectWindow = 10 * 366 * 24 * time.Hour
	// MaxPurposeBytes caps a purpose (case reference) in bytes of UTF-8.
	// A longer one is malformed (400), audited with its first
	// MaxPurposeBytes bytes.
	MaxPurposeBytes = 256
)

// Export formats.
const (
	FormatCSV   = "csv"
	FormatJSONL = "jsonl"
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

// ErrorResponse is the body of every response that is not an answer.
type ErrorResponse struct {
	Error    string `json:"error"`
	Outcome  string `json:"outcome,omitempty"`   // the audited outcome; empty on 503
	AuditSeq uint64 `json:"audit_seq,omitempty"` // absent on 503: nothing was audited
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
	Candidates []Candidate `json:"candidates"`
	Owners     []Owner     `json:"owners"`
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
	Epoch EpochSummary `json:"epoch"`
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
	Records  []Candidate  `json:"records"`
	Leases   []LeaseInfo  `json:"leases,omitempty"` // history by MAC: the device's leases in the interval
	Evidence *Evidence    `json:"-"`
}

// Candidate is one block record with the mapping that was in force when it
// began.
type Candidate struct {
	Subscriber uint32     `json:"subscriber"` // index in configuration order
	Inside     netip.Addr `json:"inside"`
	Public     netip.Addr `json:"public"`
	PortLo     uint16     `json:"port_lo"`
	PortHi     uint16     `json:"port_hi"`
	Start      time.Time  `json:"start"`
	End        *time.Time `json:"end"` // null while the block is still held
	// Epoch is the epoch the record names.
	Epoch uint32 `json:"epoch"`
	// EpochInForce is the epoch the store holds as in force at Start; null
	// when the store has none (never written, or removed by retention). Its
	// ID differs from Epoch only if the store is inconsistent, which a
	// reader must then be told.
	EpochInForce *EpochSummary `json:"epoch_in_force"`
	Flags        []string      `json:"flags"` // FlagRecovered
	// Coverage (lookup only) says whether the record covers all of the
	// searched interval or only part of it.
	Coverage string `json:"coverage,omitempty"`
	// LeasesFrom and LeasesTo are the interval over which the inside
	// address was resolved to leases: the part of the record's interval
	// that lies in the searched one.
	LeasesFrom time.Time `json:"leases_from"`
	LeasesTo   time.Time `json:"leases_to"`
	// Leases are the DHCP leases that held the inside address during
	// [LeasesFrom, LeasesTo], in order of start; empty when the lease
	// history knows of none (a static address, or no DHCP hook).
	Leases []LeaseInfo `json:"leases"`
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
}

// FlagRecovered names store.FlagRecovered on the wire: the reconciler found
// the block in the kernel rather than the ring buffer announcing it. Start is
// when the kernel marked the block active, or, if the kernel had no time for
// it, when the agent noticed, which may be after the block became active.
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
}

// ExportRecord is one line of a JSONL export; a CSV export has the same
// columns (see CSVHeader).
type ExportRecord struct {
	Subscriber uint32     `json:"subscriber"`
	Inside     netip.Addr `json:"inside"`
	Public     netip.Addr `json:"public"`
	PortLo     uint16     `json:"port_lo"`
	PortHi     uint16     `json:"port_hi"`
	Start      time.Time  `json:"start"`
	End        *time.Time `json:"end"`
	Epoch      uint32     `json:"epoch"`
	Flags      []string   `json:"flags"`
	// Leases held the inside address during the record's interval.
	Leases []LeaseInfo `json:"leases"`
}

// CSVHeader is the first line of a CSV export. end is empty for a block
// still held; flags are separated by "|"; macs lists the MAC of every lease
// that held the inside address during the record, separated by "|".
var CSVHeader = []string{"subscriber", "inside", "public", "port_lo", "port_hi", "start", "end", "epoch", "flags", "macs"}

// StatusResponse answers GET /v1/status.
type StatusResponse struct {
	AuditSeq uint64      `json:"audit_seq"`
	Store    StoreStatus `json:"store"`
	Audit    AuditStatus `json:"audit"`
	// Agent is the agent's own status document; null when it has none.
	Agent any `json:"agent"`
}

// StoreStatus mirrors store.Stats.
type StoreStatus struct {
	OpenRecords       int        `json:"open_records"`
	Epochs            int        `json:"epochs"`
	Partitions        int        `json:"partitions"`
	OldestPartition   *time.Time `json:"oldest_partition"`
	OldestRetained    *time.Time `json:"oldest_retained"`
	UnmatchedReleases uint64     `json:"unmatched_releases"`
	DiskBytes         uint64     `json:"disk_bytes"`
	RecordBytes       uint64     `json:"record_bytes"`
	IndexBytes        uint64     `json:"index_bytes"`
	OpenBytes         uint64     `json:"open_bytes"`
}

// AuditStatus summarises the audit log.
type AuditStatus struct {
	Entries uint64 `json:"entries"`
}

func candidateOf(r store.Record) Candidate {
	c := Candidate{
		Subscriber: r.Subscriber,
		Inside:     r.Inside,
		Public:     r.Public,
		PortLo:     r.PortLo,
		PortHi:     r.PortHi,
		Start:      r.Start.UTC(),
		End:        endOf(r),
		Epoch:      r.Epoch,
		Flags:      flagNames(r.Flags),
		Leases:     []LeaseInfo{},
	}
	return c
}

func exportRecordOf(r store.Record, leases []LeaseInfo) ExportRecord {
	return ExportRecord{
		Subscriber: r.Subscriber,
		Inside:     r.Inside,
		Public:     r.Public,
		PortLo:     r.PortLo,
		PortHi:     r.PortHi,
		Start:      r.Start.UTC(),
		End:        endOf(r),
		Epoch:      r.Epoch,
		Flags:      flagNames(r.Flags),
		Leases:     leases,
	}
}

func endOf(r store.Record) *time.Time {
	if r.Open() {
		return nil
	}
	end := r.End.UTC()
	return &end
}

// flagNames never returns nil, so that JSON shows [] rather than null.
func flagNames(f store.Flags) []string {
	names := []string{}
	if f&store.FlagRecovered != 0 {
		names = append(names, FlagRecovered)
		f &^= store.FlagRecovered
	}
	if f != 0 {
		// A flag this version does not know must still reach the reader.
		names = append(names, "unknown:0x"+hex.EncodeToString([]byte{byte(f >> 24), byte(f >> 16), byte(f >> 8), byte(f)}))
	}
	return names
}

func epochSummaryOf(e store.Epoch) *EpochSummary {
	return &EpochSummary{
		ID:        e.ID,
		Start:     e.Start.UTC(),
		Prefixes:  e.Prefixes,
		Pool:      e.Pool,
		PortLo:    e.PortLo,
		PortHi:    e.PortHi,
		BlockSize: e.BlockSize,
		Ratio:     e.Ratio,
		Hash:      hex.EncodeToString(e.Hash[:]),
	}
}

func storeStatusOf(st store.Stats) StoreStatus {
	optional := func(t time.Time) *time.Time {
		if t.IsZero() {
			return nil
		}
		t = t.UTC()
		return &t
	}
	return StoreStatus{
		OpenRecords:       st.OpenRecords,
		Epochs:            st.Epochs,
		Partitions:        st.Partitions,
		OldestPartition:   optional(st.OldestPartition),
		OldestRetained:    optional(st.OldestRetained),
		UnmatchedReleases: st.UnmatchedReleases,
		DiskBytes:         st.DiskBytes,
		RecordBytes:       st.RecordBytes,
		IndexBytes:        st.IndexBytes,
		OpenBytes:         st.OpenBytes,
	}
}

// LeasesRequest is the body of POST /v1/leases (role dhcp): lease events
// from a DHCP server's hook, oldest first.
type LeasesRequest struct {
	Events []leasehook.Event `json:"events"`
}

// LeasesResponse acknowledges lease events: all of them are on disk.
type LeasesResponse struct {
	AuditSeq uint64 `json:"audit_seq"`
	Accepted int    `json:"accepted"`
}

// AuditSubjectRequest is the body of POST /v1/audit/subject (auditor): the
// requests that named one subscriber (by inside address) or one device (by
// MAC) in [From, To], for a data subject's access request.
type AuditSubjectRequest struct {
	Subscriber string `json:"subscriber,omitempty"`
	MAC        string `json:"mac,omitempty"`
	From       string `json:"from"`
	To         string `json:"to"`
}

// AuditSubjectResponse lists those requests, oldest first.
type AuditSubjectResponse struct {
	AuditSeq uint64       `json:"audit_seq"`
	Subject  string       `json:"subject"` // "inside:ADDR" or "mac:MAC"
	From     time.Time    `json:"from"`
	To       time.Time    `json:"to"`
	Uses     []SubjectUse `json:"uses"`
}

// SubjectUse is one request that named the subject. It says when, the kind
// of use, the role, the purpose and the outcome; it leaves out which
// operator asked, which a data subject is not owed (CJEU C-579/21) and
// which the auditor can read in the entry itself.
type SubjectUse struct {
	Seq     uint64    `json:"seq"`
	Time    time.Time `json:"time"`
	Action  string    `json:"action"`
	Role    string    `json:"role"`
	Purpose string    `json:"purpose"`
	Outcome string    `json:"outcome"`
	// Named says how the request named the subject: "criteria" (it was
	// asked about), "answer" (the answer named it), or both.
	Named []string `json:"named"`
}

// Evidence is an answer exactly as it was audited: the answer's bytes, their
// SHA-256 (which the audit entry holds), and the proof that the entry is in
// the signed audit chain. `blocknat evidence verify` checks it offline.
type Evidence struct {
	AnswerSHA256 string          `json:"answer_sha256"`
	Answer       json.RawMessage `json:"answer"`
	Proof        audit.Proof     `json:"proof"`
}

// Answered is the body of an answered lookup or history: the answer
// document, byte for byte as hashed into its audit entry, and the proof.
type Answered struct {
	AuditSeq uint64 `json:"audit_seq"`
	Evidence
}

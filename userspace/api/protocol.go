package api

import (
	"encoding/hex"
	"net/netip"
	"time"

	"github.com/blocknat/blocknat/userspace/store"
)

// Paths of the API. The version prefix lets a later protocol live beside
// this one.
const (
	PathLookup      = "/v1/lookup"
	PathHistory     = "/v1/history"
	PathExport      = "/v1/export"
	PathStatus      = "/v1/status"
	PathAudit       = "/v1/audit"
	PathAuditVerify = "/v1/audit/verify"
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

// HistoryRequest is the body of POST /v1/history. Subscriber is the
// subscriber's inside IPv4 address.
type HistoryRequest struct {
	Subscriber string `json:"subscriber"`
	From       string `json:"from"`
	To         string `json:"to"`
	Purpose    string `json:"purpose"`
}

// ExportRequest is the body of POST /v1/export. Format is FormatCSV or
// FormatJSONL.
type ExportRequest struct {
	From    string `json:"from"`
	To      string `json:"to"`
	Format  string `json:"format"`
	Purpose string `json:"purpose"`
}

// ErrorResponse is the body of every response that is not an answer.
type ErrorResponse struct {
	Error    string `json:"error"`
	Outcome  string `json:"outcome,omitempty"`   // the audited outcome; empty on 503
	AuditSeq uint64 `json:"audit_seq,omitempty"` // absent on 503: nothing was audited
}

// LookupQuery echoes what a lookup searched: the time as parsed, in UTC,
// and the interval [From, To] it widened to.
type LookupQuery struct {
	IP        netip.Addr `json:"ip"`
	Port      uint16     `json:"port"`
	Time      time.Time  `json:"time"`
	Tolerance string     `json:"tolerance"` // a Go duration, "0s" when none
	From      time.Time  `json:"from"`
	To        time.Time  `json:"to"`
}

// LookupResponse answers a lookup. No candidate is an answer too (outcome
// "empty"): Candidates is then an empty list.
type LookupResponse struct {
	AuditSeq   uint64      `json:"audit_seq"`
	Query      LookupQuery `json:"query"`
	Candidates []Candidate `json:"candidates"`
}

// HistoryQuery echoes what a history searched, in UTC.
type HistoryQuery struct {
	Subscriber netip.Addr `json:"subscriber"`
	From       time.Time  `json:"from"`
	To         time.Time  `json:"to"`
}

// HistoryResponse answers a history request, ordered by start.
type HistoryResponse struct {
	AuditSeq uint64       `json:"audit_seq"`
	Query    HistoryQuery `json:"query"`
	Records  []Candidate  `json:"records"`
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
}

// CSVHeader is the first line of a CSV export. end is empty for a block
// still held; flags are separated by "|".
var CSVHeader = []string{"subscriber", "inside", "public", "port_lo", "port_hi", "start", "end", "epoch", "flags"}

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
	}
	return c
}

func exportRecordOf(r store.Record) ExportRecord {
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

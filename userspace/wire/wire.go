// Package wire is the contract of blocknat's query API: every request and
// response body, the agent's typed status, the record every answer lists,
// the audit entries and proofs as the API sends them, and the evidence file
// a lookup writes. The server (userspace/api) converts its own types into
// these; the client (userspace/api/client) and the CLI use nothing else.
//
// It imports only the standard library, so that the command line an
// investigator or an auditor runs links none of the agent's dependencies
// (the eBPF loader, the record store, the metrics library).
//
// JSON field names are the protocol: operators' scripts and the operator
// guide depend on them, and an answer's bytes are hashed into its audit
// entry. Change one only together with the API's version (the /v1 prefix).
package wire

import "time"

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

// Actions as audited: the Action of the entry each request makes.
const (
	ActionLookup       = "lookup"
	ActionHistory      = "history"
	ActionExport       = "export"
	ActionStatus       = "status"
	ActionAuditShow    = "audit.show"
	ActionAuditVerify  = "audit.verify"
	ActionAuditSubject = "audit.subject"
	ActionLeases       = "leases.add"
	// ActionRefusals is the entry that counts the refusals of an operator
	// without a role past the rate limit.
	ActionRefusals = "refusals"
	// ActionUnknown is a request for a path the API does not serve.
	ActionUnknown = "unknown"
)

// ErrorResponse is the body of every response that is not an answer.
type ErrorResponse struct {
	Error    string `json:"error"`
	Outcome  string `json:"outcome,omitempty"`   // the audited outcome; empty on 503
	AuditSeq uint64 `json:"audit_seq,omitempty"` // absent on 503: nothing was audited
}

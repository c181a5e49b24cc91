package wire

import "time"

// Outcome says how a request ended, as its audit entry records it.
type Outcome string

// Outcomes, as userspace/audit defines them.
const (
	OutcomeAnswered  Outcome = "answered"  // data returned
	OutcomeEmpty     Outcome = "empty"     // authorised, nothing matched
	OutcomeRefused   Outcome = "refused"   // not authorised (role) or missing purpose
	OutcomeMalformed Outcome = "malformed" // request could not be parsed/validated
	OutcomeError     Outcome = "error"     // internal failure
)

// AuditEntry is one audit log entry exactly as the log holds it, so that a
// reader can recompute its hash (userspace/audit's package doc specifies
// the canonical encoding the hash is taken over).
type AuditEntry struct {
	Seq      uint64            `json:"seq"`
	Time     time.Time         `json:"time"`
	Operator string            `json:"operator"`
	Role     string            `json:"role"`
	Action   string            `json:"action"`
	Criteria map[string]string `json:"criteria,omitempty"`
	Purpose  string            `json:"purpose,omitempty"`
	Outcome  Outcome           `json:"outcome"`
	Detail   string            `json:"detail,omitempty"`
	// Subjects are the subscribers and devices the request or its answer
	// named ("inside:ADDR", "mac:MAC").
	Subjects     []string `json:"subjects,omitempty"`
	AnswerSHA256 string   `json:"answer_sha256,omitempty"`
	Prev         string   `json:"prev"`
	Hash         string   `json:"hash"`
}

// SignedRecord is a checkpoint, anchor or signed head of the audit log.
type SignedRecord struct {
	Kind string    `json:"kind"`
	Seq  uint64    `json:"seq"`
	Hash string    `json:"hash"`
	Time time.Time `json:"time"`
	Sig  string    `json:"sig"`
}

// AuditProof shows that Entry is in the signed audit chain: Chain runs from
// Entry to the entry Signed names (left out when Signed names Entry
// itself).
type AuditProof struct {
	Entry  AuditEntry   `json:"entry"`
	Chain  []AuditEntry `json:"chain,omitempty"`
	Signed SignedRecord `json:"signed"`
}

// AuditShowResponse answers GET /v1/audit: entries exactly as the log holds
// them. The entry of this very request is appended after the entries are
// read, so it is not among them.
type AuditShowResponse struct {
	AuditSeq uint64 `json:"audit_seq"`
	// Total is the number of entries in the log before this request.
	Total   uint64       `json:"total"`
	Entries []AuditEntry `json:"entries"`
}

// AuditVerifyResponse answers POST /v1/audit/verify. It describes the log
// as it was before this request's own entry was appended. An offline
// verification (`blocknat audit verify --dir`) reads the same, AuditSeq 0.
type AuditVerifyResponse struct {
	AuditSeq    uint64         `json:"audit_seq,omitempty"` // absent for an offline verification
	OK          bool           `json:"ok"`
	Entries     uint64         `json:"entries"`
	Checkpoints int            `json:"checkpoints"`
	Anchors     int            `json:"anchors"`
	FirstSeq    uint64         `json:"first_seq"`
	LastSeq     uint64         `json:"last_seq"`
	HeadSeq     uint64         `json:"head_seq"`
	Problems    []AuditProblem `json:"problems"`
}

// AuditProblem is one finding of a verification.
type AuditProblem struct {
	Seq    uint64 `json:"seq"`
	File   string `json:"file"`
	Line   int    `json:"line"`
	Reason string `json:"reason"`
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

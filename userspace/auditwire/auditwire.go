// Package auditwire converts between the audit log's types and their wire
// form: entries, proofs and verification reports the API sends, both ways,
// and checks an evidence file offline against the audit log's public key.
//
// The server converts into wire with it; the CLI uses it for what it does
// without the agent (`evidence verify`, `audit verify --dir`). Like
// userspace/audit and userspace/wire it links none of the agent's
// dependencies.
package auditwire

import (
	"crypto/ed25519"
	"fmt"

	"github.com/blocknat/blocknat/userspace/audit"
	"github.com/blocknat/blocknat/userspace/wire"
)

// EntryOf is an entry's wire form: the same fields, so the same JSON.
func EntryOf(e audit.Entry) wire.AuditEntry {
	return wire.AuditEntry{
		Seq: e.Seq, Time: e.Time, Operator: e.Operator, Role: e.Role, Action: e.Action,
		Criteria: e.Criteria, Purpose: e.Purpose, Outcome: wire.Outcome(e.Outcome), Detail: e.Detail,
		Subjects: e.Subjects, AnswerSHA256: e.AnswerSHA256, Prev: e.Prev, Hash: e.Hash,
	}
}

// EntriesOf converts entries; it never returns nil, so that JSON shows []
// rather than null.
func EntriesOf(entries []audit.Entry) []wire.AuditEntry {
	out := make([]wire.AuditEntry, len(entries))
	for i, e := range entries {
		out[i] = EntryOf(e)
	}
	return out
}

// ProofOf is a proof's wire form.
func ProofOf(p audit.Proof) wire.AuditProof {
	out := wire.AuditProof{Entry: EntryOf(p.Entry), Signed: wire.SignedRecord(p.Signed)}
	if p.Chain != nil {
		out.Chain = EntriesOf(p.Chain)
	}
	return out
}

// AuditEntry is the audit log's form of a wire entry, for checking its hash.
func AuditEntry(e wire.AuditEntry) audit.Entry {
	return audit.Entry{
		Seq: e.Seq, Time: e.Time, Operator: e.Operator, Role: e.Role, Action: e.Action,
		Criteria: e.Criteria, Purpose: e.Purpose, Outcome: audit.Outcome(e.Outcome), Detail: e.Detail,
		Subjects: e.Subjects, AnswerSHA256: e.AnswerSHA256, Prev: e.Prev, Hash: e.Hash,
	}
}

// AuditProof is the audit log's form of a wire proof, for audit.VerifyProof.
func AuditProof(p wire.AuditProof) audit.Proof {
	out := audit.Proof{Entry: AuditEntry(p.Entry), Signed: audit.SignedRecord(p.Signed)}
	if p.Chain != nil {
		out.Chain = make([]audit.Entry, len(p.Chain))
		for i, e := range p.Chain {
			out.Chain[i] = AuditEntry(e)
		}
	}
	return out
}

// ReportOf converts a verification report to its wire form (AuditSeq 0),
// so that an offline verification reads like one done by the agent.
func ReportOf(report audit.Report) wire.AuditVerifyResponse {
	resp := wire.AuditVerifyResponse{
		OK: report.OK(), Entries: report.Entries, Checkpoints: report.Checkpoints, Anchors: report.Anchors,
		FirstSeq: report.FirstSeq, LastSeq: report.LastSeq, HeadSeq: report.HeadSeq,
		Problems: make([]wire.AuditProblem, 0, len(report.Problems)),
	}
	for _, p := range report.Problems {
		resp.Problems = append(resp.Problems, wire.AuditProblem{Seq: p.Seq, File: p.File, Line: p.Line, Reason: p.Reason})
	}
	return resp
}

// VerifyEvidence checks an evidence file offline with the audit log's
// public key: the answer is the one its entry names, byte for byte, and the
// entry is in the chain the key signed.
func VerifyEvidence(f *wire.EvidenceFile, pub ed25519.PublicKey) error {
	if err := f.CheckAnswer(); err != nil {
		return err
	}
	if err := audit.VerifyProof(AuditProof(f.Proof), pub); err != nil {
		return fmt.Errorf("evidence: audit proof: %w", err)
	}
	return nil
}
